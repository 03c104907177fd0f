"""doctor(): runtime, driver, platform and model checks, each problem with a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rkllm_sdk as rk
from rkllm_sdk import _doctor
from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi import loader


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine with no runtime installed, no environment overrides and no board files."""
    for var in ("RKLLM_RUNTIME", "RKLLM_ABI", "LD_LIBRARY_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loader, "_loader_cache", lambda: iter(()))
    monkeypatch.setattr(loader, "SYSTEM_DIRS", ())
    monkeypatch.setattr(_doctor, "DRIVER_VERSION_PATHS", (str(tmp_path / "rknpu-version"),))
    monkeypatch.setattr(_doctor, "DEVICE_TREE_COMPATIBLE", str(tmp_path / "compatible"))
    return tmp_path


def test_this_machine_with_the_fake(machine: Path) -> None:
    """With the fake: runtime found, ABI detected, no problems, and it says this is no board."""
    report = rk.doctor(runtime="fake")
    assert report.ok
    assert (report.runtime_version, report.abi, report.is_fake) == ("1.3.0", "1.3", True)
    assert report.abi_source == "detected from the library"
    assert "rkllm_fake_stats" in report.optional_symbols
    assert not report.on_board
    assert any("not an RKLLM board" in n for n in report.notes)
    text = str(report)
    assert "version:   1.3.0" in text
    assert "no problems found" in text
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_no_runtime_is_a_problem_with_a_fix(machine: Path) -> None:
    """Nothing installed: one problem listing where it looked, with the way out."""
    report = rk.doctor()
    assert not report.ok
    assert report.runtime_path is None
    (problem,) = report.problems
    assert "no RKLLM runtime" in problem.what
    assert "runtime='fake'" in problem.fix
    assert "fix: install librkllmrt.so" in str(report)


def test_version_problems_are_reported(machine: Path) -> None:
    """An ABI override that the library contradicts is a problem, not an exception."""
    report = rk.doctor(runtime=library_path("1.2"), abi="1.3")
    assert report.runtime_version == "1.2.3"
    assert any("says ABI 1.3" in p.what for p in report.problems)


def test_board_with_a_current_driver(machine: Path) -> None:
    """A Rockchip device tree and driver 0.9.8: on a board, driver OK, SoC named."""
    (machine / "rknpu-version").write_text("RKNPU driver: v0.9.8\n")
    (machine / "compatible").write_bytes(b"radxa,rock-5b\x00rockchip,rk3588\x00")
    report = rk.doctor(runtime="fake")
    assert report.on_board
    assert (report.driver_version, report.driver_ok, report.platform) == ("0.9.8", True, "RK3588")
    assert report.ok
    assert not report.notes


def test_old_driver_is_a_problem(machine: Path) -> None:
    """A driver older than 0.9.8 is named with the fix."""
    (machine / "rknpu-version").write_text("0.9.6")
    report = rk.doctor(runtime="fake")
    assert report.driver_ok is False
    (problem,) = report.problems
    assert "0.9.6" in problem.what
    assert "0.9.8" in problem.fix
    assert "(older than 0.9.8)" in str(report)


def test_board_without_driver_is_a_problem(machine: Path) -> None:
    """A Rockchip device tree but no rknpu driver version."""
    (machine / "compatible").write_bytes(b"rockchip,rk3576\x00")
    report = rk.doctor(runtime="fake")
    assert report.platform == "RK3576"
    assert any("no RKNPU driver" in p.what for p in report.problems)


def test_vendor_runtime_without_board(machine: Path) -> None:
    """A real (non-fake) runtime on a machine without an NPU is flagged."""
    data = library_path("1.3").read_bytes().replace(b"rkllm_fake_version", b"rkllm_xxxx_version")
    lib = machine / "vendor" / "librkllmrt.so"
    lib.parent.mkdir()
    lib.write_bytes(data)
    report = rk.doctor(runtime=lib)
    assert not report.is_fake
    assert any("no RKNPU driver to run it on" in p.what for p in report.problems)


def test_model_file_checks(machine: Path) -> None:
    """Missing and empty model files are problems; a present one reports its size."""
    missing = rk.doctor(machine / "nope.rkllm", runtime="fake")
    assert missing.model is not None and not missing.model.exists
    assert any("does not exist" in p.what for p in missing.problems)
    empty = machine / "empty.rkllm"
    empty.write_bytes(b"")
    assert any("is empty" in p.what for p in rk.doctor(empty, runtime="fake").problems)
    good = machine / "good.rkllm"
    good.write_bytes(b"x" * 1234)
    report = rk.doctor(good, runtime="fake")
    assert report.ok
    assert report.model == rk.ModelFileCheck(
        path=str(good), exists=True, readable=True, size_bytes=1234
    )
    assert "1,234 bytes" in str(report)
