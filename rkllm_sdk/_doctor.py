"""``doctor()``: what runtime, driver and platform this machine has, and what is wrong.

Mismatched runtime, NPU driver and model versions are what RKLLM users hit most; the report
names each piece, where it was found, and gives a one-line fix for every problem.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

import attrs

from ._ffi.loader import detect_version, load_runtime, locate_runtime, resolve_abi
from .errors import RKLLMError, RuntimeNotFoundError, RuntimeVersionError

__all__ = [
    "DoctorReport",
    "ModelFileCheck",
    "Problem",
    "doctor",
    "looks_like_library",
    "model_file_problem",
]

#: Where the RKNPU kernel driver reports its version, in order.
DRIVER_VERSION_PATHS: tuple[str, ...] = (
    "/sys/module/rknpu/version",
    "/sys/kernel/debug/rknpu/version",
)
#: The device tree's compatible list (NUL-separated), naming the SoC on Rockchip boards.
DEVICE_TREE_COMPATIBLE = "/proc/device-tree/compatible"
#: The oldest NPU driver the 1.2.x / 1.3.0 runtimes accept.
MIN_DRIVER = (0, 9, 8)

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@attrs.frozen(kw_only=True)
class Problem:
    """Something that will stop the SDK from working, and how to fix it."""

    what: str
    fix: str


@attrs.frozen(kw_only=True)
class ModelFileCheck:
    """The model path given to doctor()."""

    path: str
    exists: bool
    readable: bool
    size_bytes: int | None


@attrs.frozen(kw_only=True)
class DoctorReport:
    """The findings of :func:`doctor`; ``str(report)`` renders them as text."""

    runtime_path: str | None
    found_by: str | None
    runtime_version: str | None
    abi: str | None
    abi_source: str | None
    is_fake: bool
    optional_symbols: tuple[str, ...]
    driver_version: str | None
    driver_ok: bool | None
    platform: str | None
    machine: str
    libc: str
    python: str
    model: ModelFileCheck | None
    on_board: bool
    problems: tuple[Problem, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing stands in the way."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        data: dict[str, object] = attrs.asdict(self)
        data["ok"] = self.ok
        return data

    def lines(self) -> list[tuple[str, str]]:
        """The findings as ``(label, value)`` pairs in display order (problems apart).

        >>> dict(doctor(runtime="fake").lines())["ABI"]
        '1.3 (detected from the library)'
        """

        def show(value: object) -> str:
            return "-" if value is None else str(value)

        runtime = show(self.runtime_path)
        if self.found_by:
            runtime += f" (found by {self.found_by})"
        driver = show(self.driver_version)
        if self.driver_ok is False:
            driver += " (older than 0.9.8)"
        rows = [
            ("runtime", runtime),
            ("version", show(self.runtime_version)),
            ("ABI", show(self.abi) + (f" ({self.abi_source})" if self.abi_source else "")),
            ("extras", ", ".join(self.optional_symbols) or "-"),
            ("driver", driver),
            ("platform", show(self.platform)),
            ("machine", f"{self.machine}, {self.libc}, Python {self.python}"),
        ]
        if self.model is not None:
            m = self.model
            state = (
                "missing"
                if not m.exists
                else ("unreadable" if not m.readable else f"{m.size_bytes:,} bytes")
            )
            rows.append(("model", f"{m.path} ({state})"))
        rows += [("note", n) for n in self.notes]
        return rows

    def __str__(self) -> str:
        lines = [f"{label + ':':<11}{value}" for label, value in self.lines()]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            for p in self.problems:
                lines += [f"  - {p.what}", f"    fix: {p.fix}"]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


@attrs.define
class _RuntimeFindings:
    """What doctor() learns about the runtime, step by step (each step may fail)."""

    runtime_path: str | None = None
    found_by: str | None = None
    runtime_version: str | None = None
    abi: str | None = None
    abi_source: str | None = None
    is_fake: bool = False
    optional_symbols: tuple[str, ...] = ()


def _read_text(path: str) -> str | None:
    """The text of a board file, None when it is missing or unreadable.

    Every board file (driver version, device tree) is read through here, so tests can
    simulate a board by substituting this one function.
    """
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _driver_version() -> str | None:
    for path in DRIVER_VERSION_PATHS:
        text = _read_text(path)
        if text is not None:
            m = _VERSION.search(text)
            return ".".join(m.groups()) if m else text.strip() or None
    return None


def _soc() -> str | None:
    text = _read_text(DEVICE_TREE_COMPATIBLE)
    if not text:
        return None
    for entry in text.split("\x00"):
        m = re.fullmatch(r"rockchip,(r[kv]\d+\w*)", entry.strip())
        if m:
            return m.group(1).upper()
    return None


def _libc() -> str:
    name, version = platform.libc_ver()
    if name:
        return f"{name} {version}".strip()
    if any(Path("/lib").glob("ld-musl-*.so.1")):
        return "musl"
    return "unknown libc"


#: What a shared library file starts with.
ELF_MAGIC = b"\x7fELF"
#: The format tag of the fake runtime's JSON model files.
FAKE_MODEL_FORMAT = "rkllm-fake/1"
#: Smaller than this cannot be an ``.rkllm`` model: the smallest real ones (0.5B parameters,
#: w4a16) are a few hundred MB. The SDK does not know the format's magic bytes, so a file
#: at least this big that is not a fake model is taken on trust.
MIN_RKLLM_BYTES = 1 << 20


def looks_like_library(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the ELF magic (or cannot be read: let dlopen say why)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return True


def model_file_problem(path: str | os.PathLike[str], *, fake_runtime: bool) -> Problem | None:
    """Why ``path`` cannot be a model file for the runtime, or None when it may be one.

    A fake model is a JSON object with ``"format": "rkllm-fake/1"``; a real ``.rkllm`` file is
    recognised by its size only (its magic is not documented).
    """
    p = Path(path)
    return _path_problem(p) or _content_problem(p, fake_runtime=fake_runtime)


_CONVERT = "pass the path of a .rkllm model converted for this runtime version"


def _path_problem(p: Path) -> Problem | None:
    if p.is_dir():
        return Problem(
            what=f"model file {p} is a directory", fix=f"pass the model file inside it; {_CONVERT}"
        )
    if not p.is_file():
        return Problem(what=f"model file {p} does not exist", fix=_CONVERT)
    if not os.access(p, os.R_OK):
        return Problem(
            what=f"model file {p} is not readable", fix=f"fix its permissions (chmod a+r {p})"
        )
    if p.stat().st_size == 0:
        return Problem(what=f"model file {p} is empty", fix="download or convert the model again")
    return None


def _content_problem(p: Path, *, fake_runtime: bool) -> Problem | None:
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(min(size, MIN_RKLLM_BYTES))
    if head.lstrip()[:1] == b"{":
        try:
            fmt = json.loads(head.decode("utf-8")).get("format")
        except (UnicodeDecodeError, ValueError, AttributeError):
            fmt = None
        if fmt == FAKE_MODEL_FORMAT:
            return None
        return Problem(
            what=f"model file {p} is JSON but not a fake runtime model "
            f'(no "format": "{FAKE_MODEL_FORMAT}")',
            fix=f"write fake models with rkllm_sdk.testing.FakeModel; {_CONVERT}",
        )
    if fake_runtime:
        return Problem(
            what=f"model file {p} is not a fake runtime model: the fake reads only its own "
            f'JSON files ("format": "{FAKE_MODEL_FORMAT}")',
            fix="use a .rkllm model with a vendor runtime, or a model file written by "
            "rkllm_sdk.testing.FakeModel with runtime='fake'",
        )
    if size < MIN_RKLLM_BYTES:
        return Problem(
            what=f"model file {p} is only {size:,} bytes: too small for an .rkllm model (real "
            "ones are hundreds of MB; the format's magic is undocumented, so only the size is "
            "checked)",
            fix=f"download or convert the model again; {_CONVERT}",
        )
    return None


def _model_check(path: str | os.PathLike[str]) -> ModelFileCheck:
    p = Path(path)
    exists = p.is_file()
    readable = exists and os.access(p, os.R_OK)
    return ModelFileCheck(
        path=str(p),
        exists=exists,
        readable=readable,
        size_bytes=p.stat().st_size if exists else None,
    )


def doctor(
    model: str | os.PathLike[str] | None = None,
    *,
    runtime: str | os.PathLike[str] | None = None,
    abi: str | None = None,
) -> DoctorReport:
    """Inspect the runtime, NPU driver, platform and (optionally) a model file.

    Blocking (reads files, may dlopen the runtime): from async code, run it in a thread.

    >>> report = doctor(runtime="fake")
    >>> report.abi, report.is_fake
    ('1.3', True)
    """
    problems: list[Problem] = []
    notes: list[str] = []
    found = _RuntimeFindings()
    try:
        path, found_by, is_fake = locate_runtime(runtime, abi=abi)
        found.runtime_path, found.found_by, found.is_fake = str(path), found_by, is_fake
        if not looks_like_library(path):
            raise RuntimeNotFoundError(
                f"{path} is not a shared library (no ELF header): it cannot be the runtime"
            )
        version = detect_version(path)
        found.runtime_version = version
        chosen, source = resolve_abi(abi, version, path)
        found.abi, found.abi_source = chosen, source
        rt = load_runtime(runtime, abi=abi)
        found.is_fake, found.optional_symbols = rt.is_fake, tuple(sorted(rt.optional_symbols))
    except RuntimeNotFoundError as exc:
        problems.append(
            Problem(
                what=str(exc),
                fix=(
                    "install librkllmrt.so (1.2.x or 1.3.0) from Rockchip's rknn-llm release "
                    "into /usr/lib, or pass runtime='/path/to/librkllmrt.so'; "
                    "use runtime='fake' to develop without a board"
                ),
            )
        )
    except RuntimeVersionError as exc:
        problems.append(
            Problem(
                what=str(exc),
                fix=(
                    "use runtime 1.2.1-1.2.3 or 1.3.0, or pass abi='1.2' / abi='1.3' "
                    "if you know which API your runtime speaks"
                ),
            )
        )
    except RKLLMError as exc:  # pragma: no cover - any other runtime trouble is still reported
        problems.append(Problem(what=str(exc), fix="see the message"))

    driver = _driver_version()
    soc = _soc()
    driver_ok = None
    if driver is not None:
        m = _VERSION.search(driver)
        driver_ok = m is not None and tuple(int(x) for x in m.groups()) >= MIN_DRIVER
        if not driver_ok:
            problems.append(
                Problem(
                    what=f"the RKNPU driver is {driver}; "
                    "runtimes 1.2.x and 1.3.0 need 0.9.8 or newer",
                    fix="update the board's kernel / rknpu driver to 0.9.8 or newer",
                )
            )
    on_board = driver is not None or soc is not None
    if not on_board:
        notes.append(
            "this machine is not an RKLLM board (no RKNPU driver, no Rockchip device tree): "
            "runtime='fake' runs everything here without an NPU"
        )
        if found.abi is not None and not found.is_fake:  # a library that could be loaded
            problems.append(
                Problem(
                    what="a vendor runtime was found but there is no RKNPU driver to run it on",
                    fix="run on a Rockchip board with the rknpu driver loaded, "
                    "or use runtime='fake'",
                )
            )
    elif driver is None:
        problems.append(
            Problem(
                what=f"no RKNPU driver version at {' or '.join(DRIVER_VERSION_PATHS)}",
                fix="load the rknpu kernel module (a Rockchip board image with NPU support)",
            )
        )

    check = _model_check(model) if model is not None else None
    if model is not None:
        # The path only: what the file holds is checked by model_file_problem (rkllm doctor).
        problem = _path_problem(Path(model))
        if problem is not None:
            problems.append(problem)

    return DoctorReport(
        **attrs.asdict(found),
        driver_version=driver,
        driver_ok=driver_ok,
        platform=soc,
        machine=platform.machine(),
        libc=_libc(),
        python=".".join(map(str, sys.version_info[:3])),
        model=check,
        on_board=on_board,
        problems=tuple(problems),
        notes=tuple(notes),
    )
