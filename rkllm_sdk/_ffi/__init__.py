"""The native boundary: C declarations of librkllmrt per runtime ABI, and their cffi objects.

This package and ``rkllm_sdk._native`` are the only code that touches cffi. Nothing here
runs at import time: FFI objects are built on first use and cached.
"""

from __future__ import annotations

import threading
from importlib import resources

import cffi

#: The runtime ABIs this SDK speaks: 1.2 (runtime 1.2.1-1.2.3) and 1.3 (runtime 1.3.0).
ABIS: tuple[str, ...] = ("1.2", "1.3")

#: Functions some builds export and none documents (probed, never required).
OPTIONAL_SYMBOLS: tuple[str, ...] = (
    "rkllm_get_timings",
    "rkllm_print_timings",
    "rkllm_print_memorys",
    "rkllm_accuracy_analysis",
)
#: Functions only the bundled fake runtime exports.
FAKE_SYMBOLS: tuple[str, ...] = (
    "rkllm_fake_stats",
    "rkllm_fake_version",
    "rkllm_fake_last_input",
    "rkllm_fake_kv_text",
)

_lock = threading.Lock()
_ffis: dict[str, cffi.FFI] = {}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("cdef", name).read_text(encoding="utf-8")


def _check_abi(abi: str) -> None:
    if abi not in ABIS:
        raise ValueError(f"unsupported runtime ABI {abi!r}; supported: {', '.join(ABIS)}")


def cdef_source(abi: str, *, fake: bool = False, optional: bool = False) -> str:
    """Return the cffi ``cdef`` text of the runtime API for ``abi``.

    Args:
        abi: ``"1.2"`` or ``"1.3"``.
        fake: also declare the ``rkllm_fake_*`` symbols only the bundled fake exports.
        optional: also declare the undocumented symbols some builds export.

    Raises:
        ValueError: ``abi`` is not one of :data:`ABIS`.
    """
    _check_abi(abi)
    parts = ["base.cdef", f"abi-{abi}.cdef", "api.cdef"]
    if fake:
        parts.append("fake.cdef")
    if optional:
        parts.append("optional.cdef")
    return "\n".join(_read(p) for p in parts)


_BOTH = ("1.2", "1.3")
#: Type strings the native layer uses at run time, and the ABIs that declare them.
_RUN_TYPES: dict[str, tuple[str, ...]] = {
    "RKLLMInput[]": _BOTH,
    "RKLLMInferParam*": _BOTH,
    "RKLLMLoraParam*": _BOTH,
    "RKLLMPromptCacheParam*": _BOTH,
    "RKLLMSamplingParam*": ("1.3",),
    "RKLLMCrossAttnParam*": _BOTH,
    "RKLLMParam*": _BOTH,
    "RKLLMCallback*": ("1.3",),
    "LLMHandle*": _BOTH,
    "rkb_page*": _BOTH,
    "rkb_event": _BOTH,
    "char[]": _BOTH,
    "int[]": _BOTH,
    "float*": _BOTH,
}


def ffi_for(abi: str) -> cffi.FFI:
    """The cffi FFI of ``abi``: every public, optional and fake-only declaration, and the bridge.

    Declaring a function does not require the library to export it: a missing one fails
    only when it is used, which is how optional symbols are probed.
    """
    _check_abi(abi)
    with _lock:
        if abi not in _ffis:
            ffi = cffi.FFI()
            ffi.cdef(cdef_source(abi, fake=True, optional=True) + _read("bridge.cdef"))
            # cffi parses a type string (with pycparser) the first time it is used: several
            # ms each. Parse the ones runs use now (loading runs in a worker thread) rather
            # than on the event loop at the first run.
            for name, abis in _RUN_TYPES.items():
                if abi in abis:
                    ffi.typeof(name)
            _ffis[abi] = ffi
        return _ffis[abi]
