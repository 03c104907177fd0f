"""doctor(): runtime, driver, platform and model checks, each problem with a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

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


# ---- simulated boards: every board file read goes through _doctor._read_text ---------------

MODULE_VERSION, DEBUGFS_VERSION = _doctor.DRIVER_VERSION_PATHS
RK3588_TREE = "radxa,rock-5b\x00rockchip,rk3588\x00"
RK3576_TREE = "rockchip,rk3576-evb1-v10\x00rockchip,rk3576\x00"


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture) -> dict[str, str]:
    """An aarch64 machine whose board files are this dict (path -> text; absent = missing)."""
    for var in ("RKLLM_RUNTIME", "RKLLM_ABI", "LD_LIBRARY_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loader, "_loader_cache", lambda: iter(()))
    monkeypatch.setattr(loader, "SYSTEM_DIRS", ())
    files: dict[str, str] = {}
    mocker.patch.object(_doctor, "_read_text", side_effect=files.get)
    mocker.patch("platform.machine", return_value="aarch64")
    return files


def test_rk3588_board_with_a_good_driver(board: dict[str, str]) -> None:
    """RK3588 with driver 0.9.8 in /sys/module: on a board, SoC named, no problems, no notes."""
    board[MODULE_VERSION] = "0.9.8\n"
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3588_TREE
    report = rk.doctor(runtime="fake")
    assert (report.on_board, report.platform, report.machine) == (True, "RK3588", "aarch64")
    assert (report.driver_version, report.driver_ok) == ("0.9.8", True)
    assert (report.problems, report.notes) == ((), ())
    rows = dict(report.lines())
    assert (rows["driver"], rows["platform"]) == ("0.9.8", "RK3588")
    assert rows["machine"].startswith("aarch64, ")
    assert str(report).endswith("no problems found")


def test_the_module_driver_file_wins_over_debugfs(
    board: dict[str, str], mocker: MockerFixture
) -> None:
    """With both driver files present, /sys/module is read and debugfs is never opened."""
    board[MODULE_VERSION] = "0.9.8"
    board[DEBUGFS_VERSION] = "RKNPU driver: v0.9.6"
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3588_TREE
    report = rk.doctor(runtime="fake")
    assert report.driver_version == "0.9.8"
    read = _doctor._read_text
    assert isinstance(read, mocker.Mock)
    assert [c.args[0] for c in read.call_args_list] == [
        MODULE_VERSION,
        _doctor.DEVICE_TREE_COMPATIBLE,
    ]


def test_rk3576_board_with_the_driver_in_debugfs(board: dict[str, str]) -> None:
    """RK3576 whose driver reports only in debugfs ("RKNPU driver: v0.9.8"): found and OK."""
    board[DEBUGFS_VERSION] = "RKNPU driver: v0.9.8\n"
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3576_TREE
    report = rk.doctor(runtime="fake")
    assert (report.platform, report.driver_version, report.driver_ok) == ("RK3576", "0.9.8", True)
    assert report.ok


@pytest.mark.parametrize(
    ("version", "ok"),
    [("0.8.9", False), ("0.9.7", False), ("0.9.8", True), ("0.10.0", True), ("1.0.0", True)],
)
def test_driver_versions_compare_as_numbers(board: dict[str, str], version: str, ok: bool) -> None:
    """The 0.9.8 minimum compares numerically (0.10.0 passes), older is exactly one problem."""
    board[MODULE_VERSION] = version
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3588_TREE
    report = rk.doctor(runtime="fake")
    assert (report.driver_version, report.driver_ok, report.ok) == (version, ok, ok)
    if not ok:
        (problem,) = report.problems
        assert problem == rk.Problem(
            what=f"the RKNPU driver is {version}; runtimes 1.2.x and 1.3.0 need 0.9.8 or newer",
            fix="update the board's kernel / rknpu driver to 0.9.8 or newer",
        )
        assert dict(report.lines())["driver"] == f"{version} (older than 0.9.8)"


def test_runtime_newer_than_the_sdk_knows(board: dict[str, str], mocker: MockerFixture) -> None:
    """On a good board, a runtime reporting 1.4.0 is one problem suggesting an explicit ABI."""
    board[MODULE_VERSION] = "0.9.8"
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3588_TREE
    detect = mocker.patch.object(_doctor, "detect_version", return_value="1.4.0")
    report = rk.doctor(runtime="fake")
    detect.assert_called_once_with(library_path("1.3"))
    assert (report.runtime_version, report.abi, report.abi_source) == ("1.4.0", None, None)
    (problem,) = report.problems
    assert problem.what.startswith("runtime 1.4.0 is newer than this SDK knows")
    assert problem.fix == (
        "use runtime 1.2.1-1.2.3 or 1.3.0, or pass abi='1.2' / abi='1.3' "
        "if you know which API your runtime speaks"
    )
    assert report.driver_ok is True


def test_board_with_no_driver_file(board: dict[str, str]) -> None:
    """An RK3588 device tree but neither driver file: one problem naming both paths."""
    board[_doctor.DEVICE_TREE_COMPATIBLE] = RK3588_TREE
    report = rk.doctor(runtime="fake")
    assert (report.on_board, report.platform) == (True, "RK3588")
    assert (report.driver_version, report.driver_ok) == (None, None)
    (problem,) = report.problems
    assert problem.what == (
        "no RKNPU driver version at /sys/module/rknpu/version or /sys/kernel/debug/rknpu/version"
    )
    assert dict(report.lines())["driver"] == "-"


def test_driver_without_device_tree_is_still_a_board(board: dict[str, str]) -> None:
    """A driver version but no device tree (e.g. a container): on a board, SoC unknown, OK."""
    board[MODULE_VERSION] = "0.9.8"
    report = rk.doctor(runtime="fake")
    assert (report.on_board, report.platform, report.ok) == (True, None, True)


def test_unreadable_board_files_count_as_missing(mocker: MockerFixture) -> None:
    """_read_text, the one place board files are read, turns an OSError into None."""
    mocker.patch.object(Path, "read_text", side_effect=PermissionError("denied"))
    assert _doctor._read_text(MODULE_VERSION) is None
