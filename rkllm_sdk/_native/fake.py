"""What only the bundled fake runtime exports: its counters, its record of the last run, and
the text its KV cache holds."""

from __future__ import annotations

import json
from typing import Any

from .._ffi.loader import Runtime
from ..errors import NativeCallError
from ._util import optional_symbol
from .handle import NativeHandle

__all__ = ["fake_kv_text", "fake_last_input", "fake_stats"]


def fake_stats(rt: Runtime) -> dict[str, int]:
    """The fake runtime's counters (``rkllm_fake_stats``).

    Raises:
        NativeCallError: ``rt`` is not the fake runtime.
    """
    if "rkllm_fake_stats" not in rt.optional_symbols:
        raise NativeCallError(f"{rt.path.name} is not the fake runtime")
    s = rt.ffi.new("RKLLMFakeStats*")
    rt.lib.rkllm_fake_stats(s)
    return {name: int(getattr(s, name)) for name, _ in rt.ffi.typeof("RKLLMFakeStats").fields}


def fake_last_input(
    h: NativeHandle,
) -> dict[str, Any]:  # Any: the fake's JSON record (any JSON value)
    """What the fake runtime received in this handle's last run (``rkllm_fake_last_input``).

    Raises:
        NativeCallError: not the fake runtime, or no run recorded on this handle.
    """
    fn = optional_symbol(h.runtime, "rkllm_fake_last_input")
    n = fn(h.ptr(), h.runtime.ffi.NULL, 0)
    if n < 0:
        raise NativeCallError("rkllm_fake_last_input: no run recorded on this handle", code=n)
    buf = h.runtime.ffi.new("char[]", n + 1)
    fn(h.ptr(), buf, n + 1)
    result: dict[str, Any] = json.loads(h.runtime.ffi.string(buf).decode("utf-8"))
    return result


def fake_kv_text(h: NativeHandle, batch: int = 0) -> bytes:
    """The bytes batch ``batch`` of the handle's KV cache stands for (``rkllm_fake_kv_text``).

    Call it with the handle idle.

    Raises:
        NativeCallError: not the fake runtime, ``batch`` outside the handle's batches, or a
            run in progress.
    """
    fn = optional_symbol(h.runtime, "rkllm_fake_kv_text")
    ffi = h.runtime.ffi
    n = fn(h.ptr(), batch, ffi.NULL, 0)
    for _ in range(8):  # the length changes only if a run slips in between the two calls
        if n < 0:
            raise NativeCallError(
                f"rkllm_fake_kv_text: batch {batch} is not one of this handle's "
                f"{h.n_batch}, or a run is in progress",
                code=n,
            )
        buf = ffi.new("char[]", n + 1)
        got = fn(h.ptr(), batch, buf, n + 1)
        if got == n:
            return bytes(ffi.buffer(buf, n))
        n = got
    raise NativeCallError("rkllm_fake_kv_text: the KV cache kept changing while being read")
