"""Hazmat: the cffi objects behind the SDK, for what the typed API does not cover.

Everything here speaks C directly. Structs must match the runtime's ABI exactly, pointers
handed to the runtime must outlive its use of them, and nothing is checked for you: a
mistake here crashes the process instead of raising. Prefer ``AsyncLLM`` / ``LLM``.

>>> ffi = ffi_for("1.3")
>>> ffi.sizeof("RKLLMParam")
184
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._ffi import ABIS, FAKE_SYMBOLS, OPTIONAL_SYMBOLS, cdef_source, ffi_for
from ._ffi.loader import Runtime, detect_version, load_runtime, locate_runtime

if TYPE_CHECKING:
    from ._native import NativeHandle
    from .llm import AsyncLLM
    from .sync import LLM

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
    "native_handle",
    "runtime_of",
]


def native_handle(llm: AsyncLLM | LLM) -> NativeHandle:
    """The native handle behind a client (its ``ptr`` is the runtime's ``LLMHandle``).

    Raises:
        ClosedError: the client is closed.

    >>> native_handle(llm).ptr  # doctest: +SKIP
    """
    from .llm import handle_core  # noqa: PLC0415  # hazmat: the core modules load on use
    from .sync import LLM  # noqa: PLC0415

    target = llm.async_llm if isinstance(llm, LLM) else llm
    return handle_core(target).native_handle


def runtime_of(llm: AsyncLLM | LLM) -> Runtime:
    """The loaded runtime library (``ffi``, ``lib``) behind a client.

    >>> runtime_of(llm).lib.rkllm_is_running  # doctest: +SKIP
    """
    return native_handle(llm).runtime
