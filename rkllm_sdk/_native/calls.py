"""The runtime's calls on a handle: runs, abort, KV cache, adapters, templates, tools."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .._ffi.protocols import CData
from ..errors import GenerationError, InvalidParamsError, NativeCallError
from ..models import CrossAttention, InferOptions, Input, LoraAdapter
from ._util import buffer, check, cstr, optional_symbol, readable_file
from .channel import Channel, userdata_for
from .handle import NativeHandle
from .inputs import RunKeepalive, prepare_run
from .probe import embed_width, needs_embed_width

__all__ = [
    "abort",
    "clear_kv_cache",
    "is_running",
    "load_lora",
    "load_prompt_cache",
    "print_memorys",
    "print_timings",
    "release_prompt_cache",
    "run",
    "run_async",
    "run_prepared",
    "set_chat_template",
    "set_cross_attention",
    "set_function_tools",
]

# ---- runs --------------------------------------------------------------------------------


def _userdata(h: NativeHandle, channel: Channel | None) -> CData:  # a void*
    if channel is not None and channel.n_batch != h.n_batch:
        raise InvalidParamsError(
            f"the channel takes batches of {channel.n_batch}, the handle runs {h.n_batch}"
        )
    return userdata_for(h.runtime, channel)


def _check_run(function: str, rc: int, prepared: RunKeepalive) -> None:
    """GenerationError for a failed run, naming what the SDK could not check before it."""
    if rc == 0:
        return
    message = f"{function} failed with return code {rc}"
    if prepared.notes:
        message += (
            "; the runtime's own log line (stderr, 'E rkllm: ...') says why. Causes the SDK "
            "cannot check before the call: " + "; ".join(prepared.notes)
        )
    raise GenerationError(message, code=rc)


def _prepare(
    h: NativeHandle, inputs: Input | Sequence[Input], options: InferOptions | None
) -> RunKeepalive:
    options = options or InferOptions()
    if h.embed_width is None and needs_embed_width(inputs):
        embed_width(h, cache_disposable=False)
    return prepare_run(h, inputs, options)


def run_prepared(
    h: NativeHandle,
    prepared: RunKeepalive,
    channel: Channel,
) -> None:
    """``rkllm_run`` on a prepared run (blocking), delivering into ``channel``.

    The caller reports the end with ``channel.set_done(rc)`` once this returns.

    Raises:
        GenerationError: the runtime returned non-zero.
        InvalidParamsError: the channel's batch size is not the handle's.
        ClosedError: the handle is destroyed or the channel freed.
    """
    ud = _userdata(h, channel)
    rc = h.runtime.lib.rkllm_run(h.ptr(), prepared.inputs, prepared.infer, ud)
    _check_run("rkllm_run", rc, prepared)


def run(
    h: NativeHandle,
    inputs: Input | Sequence[Input],
    options: InferOptions | None = None,
    *,
    channel: Channel | None = None,
) -> None:
    """``rkllm_run``: blocks until the run's terminal callback has returned.

    Results go to ``channel`` (without one they are dropped: useful for prefill only).
    Embedding-carrying inputs on a handle that does not know its model's embedding width
    yet learn it first (:func:`embed_width`, which needs an empty KV cache).

    Raises:
        InvalidParamsError: what :func:`prepare_run` refuses.
        GenerationError: the runtime returned non-zero (busy handle, bad input it refused,
            or a run that ended in RKLLM_RUN_ERROR).
    """
    prepared = _prepare(h, inputs, options)
    rc = h.runtime.lib.rkllm_run(h.ptr(), prepared.inputs, prepared.infer, _userdata(h, channel))
    _check_run("rkllm_run", rc, prepared)


def run_async(
    h: NativeHandle,
    inputs: Input | Sequence[Input],
    options: InferOptions | None = None,
    *,
    channel: Channel | None = None,
) -> RunKeepalive:
    """``rkllm_run_async``: returns at once; keep the result (and channel) until the run ends.

    Like :func:`run`, learns the embedding width first when the inputs need it (blocking).
    """
    prepared = _prepare(h, inputs, options)
    rc = h.runtime.lib.rkllm_run_async(
        h.ptr(), prepared.inputs, prepared.infer, _userdata(h, channel)
    )
    _check_run("rkllm_run_async", rc, prepared)
    return prepared


def abort(h: NativeHandle) -> None:
    """``rkllm_abort``: stop the running task (no-op when idle)."""
    check("rkllm_abort", h.runtime.lib.rkllm_abort(h.ptr()))


def is_running(h: NativeHandle) -> bool:
    """``rkllm_is_running`` as a bool (1.2 returns 0 while running, 1.3 returns 1)."""
    rc = int(h.runtime.lib.rkllm_is_running(h.ptr()))
    if h.runtime.abi == "1.2":
        return rc == 0
    if rc not in (0, 1):
        raise NativeCallError(f"rkllm_is_running failed with return code {rc}", code=rc)
    return rc == 1


# ---- KV cache, adapters, templates, tools, cross attention --------------------------------


def clear_kv_cache(
    h: NativeHandle,
    *,
    keep_system_prompt: bool = False,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> None:
    """``rkllm_clear_kv_cache``: all of it, or one ``(start, end)`` range per batch.

    Ranges work only after a paused single-turn run (``keep_history=False``).
    """
    ffi, lib = h.runtime.ffi, h.runtime.lib
    if ranges is None:
        rc = lib.rkllm_clear_kv_cache(h.ptr(), int(keep_system_prompt), ffi.NULL, ffi.NULL)
        check("rkllm_clear_kv_cache", rc)
        return
    pairs = list(ranges)
    if len(pairs) != h.n_batch:
        raise InvalidParamsError(
            f"need one (start, end) range per batch ({h.n_batch}), got {len(pairs)}"
        )
    checked = []
    for start, end in pairs:
        s, e = _index(start), _index(end)
        if s is None or e is None or not 0 <= s <= e:
            raise InvalidParamsError(
                f"KV range ({start!r}, {end!r}) must be ints with 0 <= start <= end"
            )
        if e > _INT_MAX:
            raise InvalidParamsError(
                f"KV range ({start!r}, {end!r}): positions are C ints, at most {_INT_MAX}"
            )
        checked.append((s, e))
    starts = ffi.new("int[]", [s for s, _ in checked])
    ends = ffi.new("int[]", [e for _, e in checked])
    rc = lib.rkllm_clear_kv_cache(h.ptr(), int(keep_system_prompt), starts, ends)
    check("rkllm_clear_kv_cache", rc)


_INT_MAX = 2**31 - 1


def _index(value: object) -> int | None:
    """An int or numpy integer as int; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def load_lora(h: NativeHandle, adapter: LoraAdapter) -> None:
    """``rkllm_load_lora``: load (or replace) an adapter; runs select it by name.

    The handle remembers the names loaded through here; a run naming another is refused.

    Raises:
        InvalidParamsError: the file does not exist or is not readable (checked first).
        NativeCallError: the runtime refused the adapter.
    """
    readable_file(adapter.path, "LoRA adapter file")
    keep: list[object] = []  # the C strings, alive until the call returns
    a = h.runtime.ffi.new("RKLLMLoraAdapter*")
    a.lora_adapter_path = cstr(h.runtime, keep, adapter.path, "LoraAdapter.path")
    a.lora_adapter_name = cstr(h.runtime, keep, adapter.name, "LoraAdapter.name")
    a.scale = adapter.scale
    check("rkllm_load_lora", h.runtime.lib.rkllm_load_lora(h.ptr(), a))
    h.lora_names.add(adapter.name)


def load_prompt_cache(h: NativeHandle, path: str | os.PathLike[str]) -> None:
    """``rkllm_load_prompt_cache``: later runs reuse the cached prefix.

    Raises:
        InvalidParamsError: the file does not exist or is not readable (checked first).
        NativeCallError: the runtime refused the file.
    """
    readable_file(path, "prompt cache file")
    keep: list[object] = []  # the C string, alive until the call returns
    c = cstr(h.runtime, keep, path, "prompt cache path")
    check("rkllm_load_prompt_cache", h.runtime.lib.rkllm_load_prompt_cache(h.ptr(), c))


def release_prompt_cache(h: NativeHandle) -> None:
    """``rkllm_release_prompt_cache``."""
    check("rkllm_release_prompt_cache", h.runtime.lib.rkllm_release_prompt_cache(h.ptr()))


def set_chat_template(h: NativeHandle, system_prompt: str, prefix: str, postfix: str) -> None:
    """``rkllm_set_chat_template``: replaces the model's template (``""`` for an empty part)."""
    keep: list[object] = []  # the C strings, alive until the call returns
    rt = h.runtime
    system, pre, post = (
        cstr(rt, keep, v, n)
        for v, n in ((system_prompt, "system_prompt"), (prefix, "prefix"), (postfix, "postfix"))
    )
    check("rkllm_set_chat_template", rt.lib.rkllm_set_chat_template(h.ptr(), system, pre, post))


def set_function_tools(
    h: NativeHandle,
    system_prompt: str,
    tools: str | Sequence[Mapping[str, object]],  # JSON values
    tool_response_str: str = "tool_response",
) -> None:
    """``rkllm_set_function_tools``: OpenAI-format tools (a JSON string or a list of dicts)."""
    if not isinstance(tools, str):
        try:
            tools = json.dumps(list(tools), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParamsError(f"tools are not JSON-serialisable: {exc}") from None
    keep: list[object] = []  # the C strings, alive until the call returns
    rt = h.runtime
    rc = rt.lib.rkllm_set_function_tools(
        h.ptr(),
        cstr(rt, keep, system_prompt, "system_prompt"),
        cstr(rt, keep, tools, "tools"),
        cstr(rt, keep, tool_response_str, "tool_response_str"),
    )
    check("rkllm_set_function_tools", rc)


def set_cross_attention(h: NativeHandle, cross: CrossAttention | None) -> None:
    """``rkllm_set_cross_attn_params``; None clears. The handle keeps the arrays alive."""
    rt = h.runtime
    keep: list[object] = []  # the struct and array views, read by every later run
    p = rt.ffi.new("RKLLMCrossAttnParam*")
    keep.append(p)
    if cross is not None:
        p.encoder_k_cache = buffer(rt, keep, cross.k_cache, "float")
        p.encoder_v_cache = buffer(rt, keep, cross.v_cache, "float")
        p.encoder_mask = buffer(rt, keep, cross.mask, "float")
        p.encoder_pos = buffer(rt, keep, cross.positions, "int32_t")
        p.num_tokens = cross.num_tokens
    check("rkllm_set_cross_attn_params", rt.lib.rkllm_set_cross_attn_params(h.ptr(), p))
    h.hold("cross", keep if cross is not None else None)  # read by every later run


# ---- undocumented symbols ----------------------------------------------------------------


def print_timings(h: NativeHandle) -> None:
    """Undocumented ``rkllm_print_timings`` (the runtime prints to its log), when exported."""
    optional_symbol(h.runtime, "rkllm_print_timings")(h.ptr())


def print_memorys(h: NativeHandle) -> None:
    """Undocumented ``rkllm_print_memorys`` (the runtime prints to its log), when exported."""
    optional_symbol(h.runtime, "rkllm_print_memorys")(h.ptr())
