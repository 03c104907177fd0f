"""rkllm_destroy while rkllm_run is blocked: from a SIGINT handler on the same thread (the
vendor's C demo) and from another thread, in plain C (fake_runtime/tests/destroy_during_run.c).

The program links the fake in use (``RKLLM_FAKE_LIBDIR``: the ASan/UBSan build in CI's
sanitizer job), and is also compiled with the fake's sources under AddressSanitizer (leaks
on) and ThreadSanitizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_sdk._fake import library_path

from .test_native_stress import require_sanitizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fake_runtime"))
import build_fake  # noqa: E402

SOURCE = ROOT / "fake_runtime" / "tests" / "destroy_during_run.c"
_built: dict[tuple[str, str], Path] = {}


def program(abi: str, build: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test program for ``abi``, built once per session: "library" or a sanitizer name."""
    key = (abi, build)
    if key not in _built:
        out = tmp_path_factory.mktemp("destroy") / f"destroy-{abi}-{build}"
        if build == "library":
            build_fake.build_test_program(abi, SOURCE, out, library=library_path(abi))
        else:
            build_fake.build_test_program(abi, SOURCE, out, sanitizer=build)
        _built[key] = out
    return _built[key]


def environment(build: str) -> dict[str, str]:
    """The program's environment: the sanitizer job's LD_PRELOAD only for the library build."""
    env = dict(os.environ, RKLLM_FAKE_QUIET="1")
    if build != "library":
        env.pop("LD_PRELOAD", None)
        env.update(
            ASAN_OPTIONS="detect_leaks=1:exitcode=66",
            UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
            TSAN_OPTIONS="halt_on_error=1:exitcode=66",
        )
    elif "libasan" in env.get("LD_PRELOAD", ""):
        env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=66:abort_on_error=0"
    return env


def model_file(tmp_path: Path, *, hang: bool) -> Path:
    """A model that decodes long enough (1 ms a token, no natural end) to be interrupted."""
    body = {
        "format": "rkllm-fake/1",
        "vocab_size": 4096,
        "hidden_size": 8,
        "decode_ms": 1,
        "prefill_ms": 0,
        "natural_end": False,
    }
    if hang:
        body["faults"] = "hang_after=5"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(body))
    return path


@pytest.fixture(params=["library", "address,undefined", "thread"])
def build(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """How the program gets the fake: linked to the built library, or compiled under a sanitizer."""
    name = str(request.param)
    if name != "library":
        require_sanitizer(name, tmp_path)
    return name


@pytest.mark.parametrize("mode", ["signal", "thread"])
@pytest.mark.parametrize("hang", [False, True], ids=["decoding", "hung"])
def test_destroy_during_a_blocked_run_aborts_it_and_frees_everything(
    abi: str,
    build: str,
    mode: str,
    hang: bool,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Destroy from a SIGINT handler on the blocked thread or from another thread aborts the run,
    rkllm_run returns after one FINISH, the handle is gone (destroy again: -1), nothing leaks."""
    exe = program(abi, build, tmp_path_factory)
    proc = subprocess.run(
        [str(exe), str(model_file(tmp_path, hang=hang)), mode],
        capture_output=True,
        text=True,
        env=environment(build),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith(f"ok mode={mode} ")


def test_destroy_then_exit_from_the_handler_like_the_vendor_demo(
    abi: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The vendor demo's handler (rkllm_destroy, then exit) gets 0 from destroy at once, exits."""
    exe = program(abi, "library", tmp_path_factory)
    proc = subprocess.run(
        [str(exe), str(model_file(tmp_path, hang=False)), "signal-exit"],
        capture_output=True,
        text=True,
        env=environment("library"),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 42, proc.stderr[-4000:]
