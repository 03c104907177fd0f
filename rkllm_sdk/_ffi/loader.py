"""Finding librkllmrt, detecting its version and ABI, and loading it.

Resolution of the library (first that applies):

1. the ``runtime=`` argument: a path to the library, or ``"fake"`` for the bundled emulator;
2. the ``RKLLM_RUNTIME`` environment variable, with the same values;
3. ``librkllmrt.so`` in ``LD_LIBRARY_PATH``, the dynamic loader's cache, ``/usr/lib``,
   ``/usr/lib64``, ``/usr/local/lib``.

The library API never falls back to the fake by itself.

Resolution of the ABI: the ``abi=`` argument, then ``RKLLM_ABI``, then the version the
library file embeds (the vendor's ``rkllm-runtime version: X.Y.Z`` line). An explicit ABI that
disagrees with the embedded version is refused before any struct crosses the boundary.
Runtimes older than 1.2.1 are refused by name.

Everything here does file I/O or dlopen and is meant to run in a worker thread.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import attrs

from .. import _fake
from ..errors import RuntimeNotFoundError, RuntimeVersionError
from . import ABIS, FAKE_SYMBOLS, OPTIONAL_SYMBOLS, ffi_for
from .protocols import BridgeLib, RuntimeLib, TypedFFI

__all__ = [
    "DEFAULT_FAKE_ABI",
    "LIBRARY_NAME",
    "SUPPORTED_VERSIONS",
    "SYSTEM_DIRS",
    "Runtime",
    "abi_for_version",
    "detect_version",
    "load_runtime",
    "locate_runtime",
    "resolve_abi",
]

LIBRARY_NAME = "librkllmrt.so"
SYSTEM_DIRS: tuple[str, ...] = ("/usr/lib", "/usr/lib64", "/usr/local/lib")
#: The runtime releases each ABI covers.
SUPPORTED_VERSIONS: dict[str, tuple[str, ...]] = {
    "1.2": ("1.2.1", "1.2.2", "1.2.3"),
    "1.3": ("1.3.x",),
}
#: The fake's ABI when neither ``abi=`` nor ``RKLLM_ABI`` says otherwise.
DEFAULT_FAKE_ABI = "1.3"

_VERSION_RE = re.compile(rb"rkllm-runtime version: ?v?(\d+)\.(\d+)\.(\d+)")
_CHUNK = 1 << 20


@attrs.frozen(kw_only=True)
class Runtime:
    """A loaded runtime library and what is known about it.

    Attributes:
        path: the library file.
        found_by: how it was found ("runtime= argument", "RKLLM_RUNTIME", "/usr/lib", ...).
        version: the version embedded in the file, or None when it has none.
        abi: "1.2" or "1.3".
        abi_source: "abi= argument", "RKLLM_ABI" or "detected from the library".
        is_fake: the bundled fake runtime.
        optional_symbols: the undocumented / fake-only functions this library exports.
        ffi, lib, bridge: the cffi objects behind typed faces (hazmat; see
            ``rkllm_sdk.lowlevel``): the ABI's FFI, the runtime library and the SDK's C
            bridge (``_ffi.protocols`` lists their functions).
    """

    path: Path
    found_by: str
    version: str | None
    abi: str
    abi_source: str
    is_fake: bool
    optional_symbols: frozenset[str]
    ffi: TypedFFI = attrs.field(repr=False, eq=False)
    lib: RuntimeLib = attrs.field(repr=False, eq=False)
    bridge: BridgeLib = attrs.field(repr=False, eq=False)  # loaded with this ffi


# ---- locating the library ----------------------------------------------------------------


def _fake_path(abi: str | None) -> Path:
    chosen = abi or os.environ.get("RKLLM_ABI") or DEFAULT_FAKE_ABI
    if chosen not in ABIS:
        raise RuntimeVersionError(
            f"the fake runtime exists for ABIs {', '.join(ABIS)}, not {chosen!r}"
        )
    try:
        return _fake.library_path(chosen)
    except FileNotFoundError as exc:
        raise RuntimeNotFoundError(str(exc)) from None


def _loader_cache() -> Iterator[Path]:
    """librkllmrt.so entries of the dynamic loader's cache (ldconfig -p)."""
    try:
        out = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ")[0] == LIBRARY_NAME and target:
            yield Path(target)


def _explicit(value: str | os.PathLike[str], how: str, abi: str | None) -> tuple[Path, str, bool]:
    if os.fspath(value) == "fake":
        return _fake_path(abi), f"{how} (bundled fake runtime)", True
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / LIBRARY_NAME
    if not path.is_file():
        raise RuntimeNotFoundError(
            f"{how} names {os.fspath(value)!r}, but there is no runtime library there; "
            f'point it at {LIBRARY_NAME} (or use "fake" for the bundled emulator)'
        )
    return path, how, False


def locate_runtime(
    runtime: str | os.PathLike[str] | None = None, *, abi: str | None = None
) -> tuple[Path, str, bool]:
    """Find the runtime library: ``(path, how it was found, is the fake)``.

    Raises:
        RuntimeNotFoundError: nothing found; the message lists where it looked.
    """
    if runtime is not None:
        return _explicit(runtime, "runtime= argument", abi)
    env = os.environ.get("RKLLM_RUNTIME")
    if env:
        return _explicit(env, "RKLLM_RUNTIME", abi)
    looked: list[str] = []
    for d in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":")):
        candidate = Path(d) / LIBRARY_NAME
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate, "LD_LIBRARY_PATH", False
    looked.append("the dynamic loader cache (ldconfig -p)")
    for candidate in _loader_cache():
        if candidate.is_file():
            return candidate, "dynamic loader cache", False
    for d in SYSTEM_DIRS:
        candidate = Path(d) / LIBRARY_NAME
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate, d, False
    raise RuntimeNotFoundError(
        f"no RKLLM runtime ({LIBRARY_NAME}) found; looked in: {', '.join(looked)}. "
        f"Install the runtime from Rockchip's rknn-llm release, or pass runtime='/path/to/"
        f"{LIBRARY_NAME}' (or set RKLLM_RUNTIME); runtime='fake' uses the bundled emulator"
    )


# ---- version and ABI ---------------------------------------------------------------------

_version_cache: dict[tuple[str, int, int], str | None] = {}
_cache_lock = threading.Lock()


def detect_version(path: str | os.PathLike[str]) -> str | None:
    """The ``X.Y.Z`` of the ``rkllm-runtime version:`` line embedded in the library file.

    Reads the file in chunks (cached per path, size and mtime); None when there is no such line.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _version_cache:
            return _version_cache[key]
    found: str | None = None
    overlap = 64
    with p.open("rb") as f:
        tail = b""
        while chunk := f.read(_CHUNK):
            m = _VERSION_RE.search(tail + chunk)
            if m:
                found = ".".join(g.decode() for g in m.groups())
                break
            tail = chunk[-overlap:]
    with _cache_lock:
        _version_cache[key] = found
    return found


def abi_for_version(version: str) -> str:
    """Map a runtime release to its ABI: 1.2.1-1.2.3 -> "1.2", 1.3.x -> "1.3".

    Raises:
        RuntimeVersionError: older, or newer than this SDK knows.
    """
    try:
        major, minor, patch = (int(x) for x in version.split("."))
    except ValueError:
        raise RuntimeVersionError(f"unrecognised runtime version {version!r}") from None
    if (major, minor) == (1, 3):
        return "1.3"
    if (major, minor) == (1, 2) and 1 <= patch <= 3:
        return "1.2"
    supported = "1.2.1, 1.2.2, 1.2.3 (ABI 1.2) and 1.3.x (ABI 1.3)"
    if (major, minor, patch) < (1, 2, 1):
        raise RuntimeVersionError(
            f"runtime {version} is too old: its API differs from what this SDK speaks "
            f"(supported: {supported}); update librkllmrt.so and the NPU driver from rknn-llm"
        )
    raise RuntimeVersionError(
        f"runtime {version} is newer than this SDK knows (supported: {supported}); if its API "
        f"matches one of them, pass abi='1.2' or abi='1.3' (or set RKLLM_ABI)"
    )


def resolve_abi(abi: str | None, version: str | None, path: Path) -> tuple[str, str]:
    """Pick the ABI: ``(abi, where it came from)``; see the module docstring for the order.

    Raises:
        RuntimeVersionError: unsupported ABI, a version this SDK refuses, an explicit ABI the
            embedded version contradicts, or nothing to go on.
    """
    source = "abi= argument"
    if abi is None and os.environ.get("RKLLM_ABI"):
        abi, source = os.environ["RKLLM_ABI"], "RKLLM_ABI"
    if abi is not None:
        if abi not in ABIS:
            raise RuntimeVersionError(f"{source} is {abi!r}; supported ABIs: {', '.join(ABIS)}")
        if version is not None:
            detected = abi_for_version(version)
            if detected != abi:
                raise RuntimeVersionError(
                    f"{source} says ABI {abi}, but {path} is runtime {version} (ABI {detected}); "
                    f"loading it with the wrong struct layouts would crash: drop the override or "
                    f"point at the matching library"
                )
        return abi, source
    if version is None:
        raise RuntimeVersionError(
            f"cannot tell which runtime version {path} is (no 'rkllm-runtime version' line in it); "
            f"pass abi='1.2' (runtime 1.2.1-1.2.3) or abi='1.3' (runtime 1.3.0), or set RKLLM_ABI"
        )
    return abi_for_version(version), "detected from the library"


# ---- loading -----------------------------------------------------------------------------

_loaded: dict[tuple[str, str], tuple[RuntimeLib, frozenset[str]]] = {}
_load_lock = threading.Lock()


def _exported(lib: object, name: str) -> bool:
    try:
        getattr(lib, name)
    except AttributeError:  # cffi: "function/symbol 'x' not found in library"
        return False
    return True


def _dlopen(path: Path, abi: str) -> tuple[RuntimeLib, frozenset[str]]:
    """dlopen once per library file and ABI: ``(lib, optional symbols present)``."""
    key = (str(path.resolve()), abi)
    with _load_lock:
        if key not in _loaded:
            try:
                lib = ffi_for(abi).dlopen(str(path))
            except OSError as exc:
                raise RuntimeNotFoundError(
                    f"{path} exists but cannot be loaded here ({exc}); the vendor library needs "
                    f"glibc on aarch64/armhf (musl-based containers cannot load it)"
                ) from exc
            if not _exported(lib, "rkllm_init"):
                raise RuntimeNotFoundError(
                    f"{path} does not export rkllm_init: not an RKLLM runtime"
                )
            found = frozenset(n for n in (*OPTIONAL_SYMBOLS, *FAKE_SYMBOLS) if _exported(lib, n))
            # The one place the untyped library object gets its typed face.
            _loaded[key] = (cast(RuntimeLib, lib), found)
        return _loaded[key]


_bridges: dict[str, BridgeLib] = {}
BRIDGE_PATH = Path(__file__).resolve().parent / "librkllm-bridge.so"
#: Development only: another build of the bridge (CI's sanitizer job uses it).
BRIDGE_ENV = "RKLLM_BRIDGE_LIBRARY"


def bridge_path() -> Path:
    """The bridge library in use: the package's, or ``RKLLM_BRIDGE_LIBRARY``."""
    return Path(os.environ.get(BRIDGE_ENV) or BRIDGE_PATH)


def _load_bridge(abi: str) -> BridgeLib:
    """The SDK's C bridge (built with the package), opened once per ABI's FFI."""
    with _load_lock:
        if abi not in _bridges:
            path = bridge_path()
            try:
                _bridges[abi] = cast(BridgeLib, ffi_for(abi).dlopen(str(path)))
            except OSError as exc:
                raise RuntimeNotFoundError(
                    f"the SDK's bridge library {path} is missing or broken ({exc}): "
                    f"reinstall rkllm-sdk so its build compiles it"
                ) from exc
        return _bridges[abi]


def load_runtime(
    runtime: str | os.PathLike[str] | None = None, *, abi: str | None = None
) -> Runtime:
    """Locate, check and dlopen the runtime (blocking: call it from a worker thread).

    A library file is opened once per ABI; later calls share its ``lib``.

    Raises:
        RuntimeNotFoundError: no library found, or it cannot be loaded on this machine.
        RuntimeVersionError: see :func:`resolve_abi`.
    """
    path, found_by, is_fake = locate_runtime(runtime, abi=abi)
    version = detect_version(path)
    chosen, abi_source = resolve_abi(abi, version, path)
    lib, found = _dlopen(path, chosen)
    return Runtime(
        path=path,
        found_by=found_by,
        version=version,
        abi=chosen,
        abi_source=abi_source,
        is_fake=is_fake or "rkllm_fake_version" in found,
        optional_symbols=found,
        ffi=cast(TypedFFI, ffi_for(chosen)),
        lib=lib,
        bridge=_load_bridge(chosen),
    )
