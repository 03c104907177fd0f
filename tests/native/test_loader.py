"""Finding the runtime, detecting its version and ABI, and refusing mismatches before loading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rkllm_sdk import RuntimeNotFoundError, RuntimeVersionError
from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi import loader


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the environment overrides and with no system runtime."""
    for var in ("RKLLM_RUNTIME", "RKLLM_ABI", "LD_LIBRARY_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loader, "_loader_cache", lambda: iter(()))
    monkeypatch.setattr(loader, "SYSTEM_DIRS", ())


def copy_fake(abi: str, directory: Path, name: str = "librkllmrt.so") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(library_path(abi), directory / name))


def test_detects_the_embedded_version(abi: str) -> None:
    """The fake embeds the vendor's version line; detection maps it to the ABI."""
    version = loader.detect_version(library_path(abi))
    assert version == {"1.2": "1.2.3", "1.3": "1.3.0"}[abi]
    assert loader.abi_for_version(version) == abi


def test_version_line_split_across_read_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version line straddling two read chunks is still found."""
    monkeypatch.setattr(loader, "_CHUNK", 1000)
    f = tmp_path / "lib.so"
    f.write_bytes(b"\0" * 990 + b"rkllm-runtime version: 1.2.2" + b"\0" * 100)
    assert loader.detect_version(f) == "1.2.2"


def test_version_cache_is_per_path_size_and_mtime(tmp_path: Path) -> None:
    """Detection is cached; a changed file (size or mtime) is read again."""
    f = tmp_path / "lib.so"
    f.write_bytes(b"rkllm-runtime version: 1.2.1\0")
    stamp = f.stat().st_mtime_ns
    assert loader.detect_version(f) == "1.2.1"
    f.write_bytes(b"rkllm-runtime version: 1.2.2\0")  # same size
    os.utime(f, ns=(stamp, stamp))
    assert loader.detect_version(f) == "1.2.1"  # cached
    os.utime(f, ns=(stamp + 10**9, stamp + 10**9))
    assert loader.detect_version(f) == "1.2.2"


@pytest.mark.parametrize(
    ("version", "abi", "message"),
    [
        ("1.2.1", "1.2", None),
        ("1.2.3", "1.2", None),
        ("1.3.0", "1.3", None),
        ("1.3.7", "1.3", None),
        ("1.2.0", None, "too old"),
        ("1.1.4", None, "too old"),
        ("1.0.1", None, "too old"),
        ("1.2.4", None, "newer than this SDK knows"),
        ("2.0.0", None, "newer than this SDK knows"),
        ("x.y", None, "unrecognised"),
    ],
)
def test_version_to_abi(version: str, abi: str | None, message: str | None) -> None:
    """1.2.1-1.2.3 -> 1.2, 1.3.x -> 1.3; anything else is refused by name."""
    if abi is not None:
        assert loader.abi_for_version(version) == abi
    else:
        with pytest.raises(RuntimeVersionError, match=message) as info:
            loader.abi_for_version(version)
        assert version in str(info.value)


def test_explicit_path_file_or_directory(tmp_path: Path) -> None:
    """runtime= takes the library file or its directory."""
    lib = copy_fake("1.2", tmp_path / "lib")
    assert loader.locate_runtime(lib) == (lib, "runtime= argument", False)
    assert loader.locate_runtime(tmp_path / "lib")[0] == lib
    with pytest.raises(RuntimeNotFoundError, match="no runtime library there"):
        loader.locate_runtime(tmp_path / "missing.so")


def test_fake_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """runtime="fake" picks the bundled fake of the ABI; RKLLM_RUNTIME works the same way."""
    path, how, fake = loader.locate_runtime("fake", abi="1.2")
    assert (path, fake) == (library_path("1.2"), True)
    assert "bundled fake" in how
    assert loader.locate_runtime("fake")[0] == library_path(loader.DEFAULT_FAKE_ABI)
    lib = copy_fake("1.3", tmp_path)
    monkeypatch.setenv("RKLLM_RUNTIME", str(lib))
    assert loader.locate_runtime() == (lib, "RKLLM_RUNTIME", False)
    monkeypatch.setenv("RKLLM_RUNTIME", "fake")
    monkeypatch.setenv("RKLLM_ABI", "1.2")
    assert loader.locate_runtime()[0] == library_path("1.2")
    monkeypatch.setenv("RKLLM_ABI", "9.9")
    with pytest.raises(RuntimeVersionError, match=r"not '9\.9'"):
        loader.locate_runtime()


def test_search_order_and_not_found_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LD_LIBRARY_PATH, then the system directories; nothing found lists every place."""
    system = tmp_path / "usr-lib"
    monkeypatch.setattr(loader, "SYSTEM_DIRS", (str(system),))
    with pytest.raises(RuntimeNotFoundError) as info:
        loader.locate_runtime()
    msg = str(info.value)
    assert str(system / "librkllmrt.so") in msg
    assert "ldconfig" in msg
    assert "runtime='fake'" in msg
    copy_fake("1.2", system)
    assert loader.locate_runtime() == (system / "librkllmrt.so", str(system), False)
    ld = copy_fake("1.3", tmp_path / "ld")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{ld.parent}")
    assert loader.locate_runtime() == (ld, "LD_LIBRARY_PATH", False)


def test_the_fake_is_never_a_silent_fallback() -> None:
    """With no runtime anywhere the loader raises instead of loading the fake."""
    with pytest.raises(RuntimeNotFoundError):
        loader.load_runtime()


def test_mismatched_abi_is_refused_before_loading(tmp_path: Path, abi: str) -> None:
    """abi= that disagrees with the file's version: RuntimeVersionError, the file never mapped."""
    lib = copy_fake(abi, tmp_path / f"mismatch-{abi}")
    other = "1.3" if abi == "1.2" else "1.2"
    with pytest.raises(RuntimeVersionError, match=f"says ABI {other}.*would crash"):
        loader.load_runtime(lib, abi=other)
    assert str(lib) not in Path("/proc/self/maps").read_text()


def test_abi_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RKLLM_ABI applies when abi= is not given, and is checked like it."""
    monkeypatch.setenv("RKLLM_ABI", "1.2")
    rt = loader.load_runtime(library_path("1.2"))
    assert (rt.abi, rt.abi_source) == ("1.2", "RKLLM_ABI")
    with pytest.raises(RuntimeVersionError, match=r"RKLLM_ABI says ABI 1\.2"):
        loader.load_runtime(library_path("1.3"))
    monkeypatch.setenv("RKLLM_ABI", "1.9")
    with pytest.raises(RuntimeVersionError, match="supported ABIs"):
        loader.load_runtime(library_path("1.3"))


def test_undetectable_version_needs_an_explicit_abi(tmp_path: Path) -> None:
    """A library without a version line loads only with abi= (which is then trusted)."""
    data = library_path("1.3").read_bytes().replace(b"rkllm-runtime version: 1.3.0", b"x" * 28)
    lib = tmp_path / "librkllmrt.so"
    lib.write_bytes(data)
    with pytest.raises(RuntimeVersionError, match=r"pass abi='1\.2'.*or abi='1\.3'"):
        loader.load_runtime(lib)
    rt = loader.load_runtime(lib, abi="1.3")
    assert (rt.version, rt.abi, rt.abi_source) == (None, "1.3", "abi= argument")


def test_load_runtime_reports_what_it_found(abi: str) -> None:
    """The Runtime names path, version, ABI and the optional symbols present; dlopen is once."""
    rt = loader.load_runtime("fake", abi=abi)
    assert rt.is_fake
    assert rt.version == {"1.2": "1.2.3", "1.3": "1.3.0"}[abi]
    assert (rt.abi, rt.abi_source) == (abi, "abi= argument")
    assert rt.optional_symbols == {
        "rkllm_fake_stats",
        "rkllm_fake_version",
        "rkllm_fake_last_input",
        "rkllm_fake_kv_text",
    }
    again = loader.load_runtime("fake", abi=abi)
    assert again == rt
    assert again.lib is rt.lib


def test_files_that_are_not_runtimes(tmp_path: Path) -> None:
    """Not a shared library, or a library without rkllm_init: RuntimeNotFoundError."""
    junk = tmp_path / "junk" / "librkllmrt.so"
    junk.parent.mkdir()
    junk.write_bytes(b"rkllm-runtime version: 1.3.0\0 not an ELF file")
    with pytest.raises(RuntimeNotFoundError, match="cannot be loaded here"):
        loader.load_runtime(junk)
    libm = next(
        p
        for p in (
            Path("/lib/x86_64-linux-gnu/libm.so.6"),
            Path("/lib/aarch64-linux-gnu/libm.so.6"),
            Path("/usr/lib/libm.so.6"),
        )
        if p.exists()
    )
    with pytest.raises(RuntimeNotFoundError, match="does not export rkllm_init"):
        loader.load_runtime(libm, abi="1.3")
