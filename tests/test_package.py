"""The package surface: exports, import cost, bundled files, and the README's demo."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import pytest

import rkllm_sdk
from rkllm_sdk import _fake
from rkllm_sdk._ffi import ABIS, cdef_source

from .conftest import skip_if_runtime_installed
from .fake_runtime.driver import reference_pieces

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_exact() -> None:
    """__all__ lists exactly the public names the package defines, once each."""
    public = {
        n
        for n, v in vars(rkllm_sdk).items()
        if not n.startswith("_") and not isinstance(v, ModuleType)
    }
    assert set(rkllm_sdk.__all__) == public | {"__version__"}
    for name in rkllm_sdk.__all__:
        assert getattr(rkllm_sdk, name) is not None
    assert len(rkllm_sdk.__all__) == len(set(rkllm_sdk.__all__))  # (ruff's RUF022 keeps it sorted)


def test_version_is_the_installed_distribution_version() -> None:
    """__version__ comes from the installed metadata."""
    assert rkllm_sdk.__version__ == version("rkllm-sdk")


def test_import_loads_no_native_library_and_reads_no_files() -> None:
    """Importing rkllm_sdk opens no runtime and no file besides Python's own module files."""
    code = (
        "import sys\n"
        "opened = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and not args[0].endswith(\n"
        "            ('.py', '.pyc', '.so', '.pth')) and '__pycache__' not in args[0]:\n"
        "        opened.append(args[0])\n"
        "sys.addaudithook(hook)\n"
        "import rkllm_sdk\n"
        "own = [p for p in opened if 'rkllm_sdk' in p or 'rkllm' in p.lower()]\n"
        "assert not own, own\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'librkllmrt' not in maps, 'a runtime was loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cdef_source_per_abi() -> None:
    """Each ABI gets its own declarations; fake-only symbols only when asked for."""
    s12, s13 = cdef_source("1.2"), cdef_source("1.3")
    assert "img_start" in s12 and "ignore_eos_token" not in s12
    assert "ignore_eos_token" in s13 and "RKLLMSamplingParam" in s13
    assert "rkllm_fake_stats" not in s13
    assert "rkllm_fake_stats" in cdef_source("1.3", fake=True)
    with pytest.raises(ValueError, match=r"unsupported runtime ABI '1\.1'"):
        cdef_source("1.1")


def test_fake_library_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The build put one library per ABI in the package; RKLLM_FAKE_LIBDIR redirects."""
    monkeypatch.delenv(_fake.LIBDIR_ENV, raising=False)
    for abi in ABIS:
        assert _fake.library_path(abi).is_file()
    with pytest.raises(ValueError, match="unsupported runtime ABI"):
        _fake.library_path("2.0")
    monkeypatch.setenv(_fake.LIBDIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="reinstall rkllm-sdk"):
        _fake.library_path("1.3")
    (tmp_path / "librkllmrt-fake-1.3.so").write_bytes(b"")
    assert _fake.library_path("1.3") == tmp_path / "librkllmrt-fake-1.3.so"


@pytest.mark.parametrize("abi", ABIS)
def test_readme_main_job_streams_the_demo_reply(abi: str) -> None:
    """`rkllm run "Hello"` (the README's main job) streams the demo model's reply from the fake."""
    skip_if_runtime_installed()
    env = {k: v for k, v in os.environ.items() if k != "RKLLM_RUNTIME"}
    env.update(RKLLM_FAKE_QUIET="1", RKLLM_ABI=abi)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "rkllm"), "run", "Hello"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert proc.stdout.startswith("Hello! I am the rkllm-sdk fake runtime")
    assert "你好 🙂" in proc.stdout
    reply = proc.stdout.rstrip("\n")
    assert f"{len(reference_pieces(reply))} tokens" in proc.stderr
    assert "bundled fake runtime" in proc.stderr and f"(ABI {abi})" in proc.stderr


def test_readme_python_example_runs() -> None:
    """The README's Python example streams the demo reply and prints doctor()'s report."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert proc.stdout.startswith("Hello! I am the rkllm-sdk fake runtime")
    assert "PerfStats(" in proc.stdout
    assert "no problems found" in proc.stdout
