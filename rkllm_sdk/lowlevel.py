"""Hazmat: the cffi objects behind the SDK, for what the typed API does not cover.

Everything here speaks C directly. Structs must match the runtime's ABI exactly, pointers
handed to the runtime must outlive its use of them, and nothing is checked for you: a
mistake here crashes the process instead of raising. Prefer ``AsyncLLM`` / ``LLM``.

>>> ffi = ffi_for("1.3")
>>> ffi.sizeof("RKLLMParam")
184
"""

from __future__ import annotations

from ._ffi import ABIS, FAKE_SYMBOLS, OPTIONAL_SYMBOLS, cdef_source, ffi_for
from ._ffi.loader import Runtime, detect_version, load_runtime, locate_runtime

__all__ = [
    "ABIS",
    "FAKE_SYMBOLS",
    "OPTIONAL_SYMBOLS",
    "Runtime",
    "cdef_source",
    "detect_version",
    "ffi_for",
    "load_runtime",
    "locate_runtime",
]
