"""Thin synchronous wrappers, one per runtime function: models in, Python values out.

Contract of this boundary module:

- Every wrapper checks its arguments before the call (NUL bytes and non-UTF-8 text in
  strings, negative sizes, ABI-only fields on the other ABI) and raises
  :class:`~rkllm_sdk.errors.InvalidParamsError` / ``UnsupportedOnABIError`` without calling C.
- Every return code is checked at once; failure raises an error naming the function and code.
- Nothing returns cdata: handles are :class:`NativeHandle`, results are models and numpy
  arrays copied out of the runtime's buffers.
- Memory handed to the runtime (strings, arrays, structs) is owned by Python objects that the
  caller keeps alive while the runtime can read it: the call itself for ``run``, the returned
  :class:`RunKeepalive` for ``run_async``, the handle for init strings and cross-attention
  arrays.
- All calls block (some for seconds); the async layer runs them in worker threads.

``Any`` appears here because cffi's objects are untyped (mypy overrides are commented).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs
import numpy as np

from ._ffi.loader import Runtime
from .arrays import embeddings, token_ids
from .errors import (
    ClosedError,
    GenerationError,
    InvalidParamsError,
    ModelLoadError,
    NativeCallError,
    UnsupportedOnABIError,
)
from .models import (
    CallState,
    CrossAttention,
    EmbedInput,
    ExtendParams,
    InferMode,
    InferOptions,
    Input,
    InputType,
    LoraAdapter,
    ModelParams,
    MultimodalInput,
    PerfStats,
    Prompt,
    Result,
    TokenInput,
)

__all__ = [
    "Channel",
    "Drained",
    "NativeHandle",
    "RunKeepalive",
    "abort",
    "bridge_live_objects",
    "clear_kv_cache",
    "default_params",
    "destroy",
    "fake_last_input",
    "fake_stats",
    "init",
    "is_running",
    "kv_cache_size",
    "load_lora",
    "load_prompt_cache",
    "merge_params",
    "prepare_run",
    "print_memorys",
    "print_timings",
    "python_embedder",
    "python_tokenizer",
    "read_results",
    "release_prompt_cache",
    "run",
    "run_async",
    "run_prepared",
    "set_chat_template",
    "set_cross_attention",
    "set_function_tools",
]

_SAMPLING_FIELDS = (
    "top_k",
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
_PARAM_SCALARS = (
    "max_context_len",
    "max_new_tokens",
    "n_keep",
    *_SAMPLING_FIELDS,
    "skip_special_token",
    "is_async",
)


# ---- strings and checks ------------------------------------------------------------------


def _encode(value: str | os.PathLike[str], what: str) -> bytes:
    text = os.fspath(value)
    if not isinstance(text, str):
        raise InvalidParamsError(f"{what} must be a str, got {type(value).__name__}")
    if "\x00" in text:
        raise InvalidParamsError(f"{what} contains a NUL character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidParamsError(f"{what} is not valid Unicode text ({exc.reason})") from None


def _cstr(rt: Runtime, keep: list[Any], value: str | os.PathLike[str] | None, what: str) -> Any:
    if value is None:
        return rt.ffi.NULL
    buf = rt.ffi.new("char[]", _encode(value, what))
    keep.append(buf)
    return buf


def _check(
    function: str, rc: int, error: type[NativeCallError | GenerationError] = NativeCallError
) -> None:
    if rc != 0:
        raise error(f"{function} failed with return code {rc}", code=rc)


def _only_on(rt: Runtime, abi: str, what: str) -> None:
    if rt.abi != abi:
        raise UnsupportedOnABIError(
            f"{what} exists only in runtime ABI {abi}; "
            f"this runtime ({rt.path.name}) is ABI {rt.abi}"
        )


# ---- parameters --------------------------------------------------------------------------


def default_params(rt: Runtime) -> ModelParams:
    """``rkllm_createDefaultParam``, read into a fully filled :class:`ModelParams`."""
    p = rt.lib.rkllm_createDefaultParam()
    values: dict[str, Any] = {name: getattr(p, name) for name in _PARAM_SCALARS}
    for name in ("skip_special_token", "is_async"):
        values[name] = bool(values[name])
    for name in (
        "top_p",
        "temperature",
        "repeat_penalty",
        "frequency_penalty",
        "presence_penalty",
        "mirostat_tau",
        "mirostat_eta",
    ):
        # The shortest decimal that is the same C float (0.9, not 0.8999999761581421).
        values[name] = float(str(np.float32(values[name])))
    if rt.abi == "1.3":
        values["ignore_eos_token"] = bool(p.ignore_eos_token)
    else:
        for name in ("img_start", "img_end", "img_content"):
            ptr = getattr(p, name)
            values[name] = (
                None if ptr == rt.ffi.NULL else rt.ffi.string(ptr).decode("utf-8", "replace")
            )
    e = p.extend_param
    values["extend"] = ExtendParams(
        base_domain_id=int(e.base_domain_id),
        embed_flash=bool(e.embed_flash),
        enabled_cpus=int(e.enabled_cpus_mask) or None,
        n_batch=int(e.n_batch) or 1,
        use_cross_attn=bool(e.use_cross_attn),
    )
    return ModelParams(**values)


def merge_params(base: ModelParams, override: ModelParams) -> ModelParams:
    """``base`` with every field that ``override`` sets (not None) replaced."""
    changes = {
        f.name: getattr(override, f.name)
        for f in attrs.fields(ModelParams)
        if f.name != "extend" and getattr(override, f.name) is not None
    }
    ext = {
        f.name: getattr(override.extend, f.name)
        for f in attrs.fields(ExtendParams)
        if getattr(override.extend, f.name) is not None
    }
    return attrs.evolve(base, **changes, extend=attrs.evolve(base.extend, **ext))


def _fill_extend(e: Any, ext: ExtendParams) -> None:
    if ext.base_domain_id is not None:
        e.base_domain_id = ext.base_domain_id
    if ext.embed_flash is not None:
        e.embed_flash = int(ext.embed_flash)
    if ext.enabled_cpus is not None:
        e.enabled_cpus_mask = ext.enabled_cpus_mask
        e.enabled_cpus_num = len(ext.enabled_cpus)
    if ext.n_batch is not None:
        e.n_batch = ext.n_batch
    if ext.use_cross_attn is not None:
        e.use_cross_attn = int(ext.use_cross_attn)


def _param_struct(
    rt: Runtime, model_path: str | os.PathLike[str], params: ModelParams, keep: list[Any]
) -> Any:
    if rt.abi == "1.2" and params.ignore_eos_token is not None:
        _only_on(rt, "1.3", "ModelParams.ignore_eos_token")
    if rt.abi == "1.3":
        for name in ("img_start", "img_end", "img_content"):
            if getattr(params, name) is not None:
                raise UnsupportedOnABIError(
                    f"ModelParams.{name} exists only in runtime ABI 1.2; on 1.3 give the markers "
                    f"per input (ImageInput.start / end / content)"
                )
    p = rt.ffi.new("RKLLMParam*", rt.lib.rkllm_createDefaultParam())
    keep.append(p)
    p.model_path = _cstr(rt, keep, model_path, "model_path")
    for name in _PARAM_SCALARS:
        value = getattr(params, name)
        if value is not None:
            setattr(p, name, value)
    if rt.abi == "1.3":
        if params.ignore_eos_token is not None:
            p.ignore_eos_token = params.ignore_eos_token
    else:
        for name in ("img_start", "img_end", "img_content"):
            if getattr(params, name) is not None:
                setattr(p, name, _cstr(rt, keep, getattr(params, name), f"ModelParams.{name}"))
    _fill_extend(p.extend_param, params.extend)
    return p


# ---- handles -----------------------------------------------------------------------------


class NativeHandle:
    """An initialised runtime handle (opaque), with what must outlive the runtime's use.

    Attributes:
        runtime: the runtime it belongs to.
        params: the parameters in force (the runtime's defaults with the caller's overrides).
        n_batch: inputs per run.
    """

    __slots__ = ("_keep", "_lock", "_ptr", "n_batch", "params", "runtime")

    def __init__(self, runtime: Runtime, ptr: Any, params: ModelParams, keep: list[Any]) -> None:
        self.runtime = runtime
        self.params = params
        self.n_batch = params.extend.n_batch or 1
        self._ptr: Any = ptr
        self._keep: dict[str, Any] = {"init": keep}
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def ptr(self) -> Any:
        """The C handle (hazmat); raises ClosedError once destroyed."""
        ptr = self._ptr
        if ptr is None:
            raise ClosedError("the model handle is closed")
        return ptr

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<NativeHandle {state} abi={self.runtime.abi} n_batch={self.n_batch}>"


def init(
    rt: Runtime,
    model_path: str | os.PathLike[str],
    params: ModelParams,
    result_callback: Any,
    *,
    result_userdata: Any = None,
    tokenizer_callback: Any = None,
    tokenizer_userdata: Any = None,
    embed_callback: Any = None,
    embed_userdata: Any = None,
) -> NativeHandle:
    """``rkllm_init``. The callbacks are C function pointers (the bridge's, or cffi's).

    Raises:
        InvalidParamsError / UnsupportedOnABIError: bad or other-ABI parameters.
        ModelLoadError: the runtime refused (its log line says why).
    """
    keep: list[Any] = [result_callback]
    p = _param_struct(rt, model_path, params, keep)
    handle = rt.ffi.new("LLMHandle*")
    ffi = rt.ffi
    if rt.abi == "1.2":
        if any(x is not None for x in (tokenizer_callback, embed_callback, result_userdata)):
            _only_on(rt, "1.3", "tokenizer / embedding callbacks and result_userdata")
        rc = rt.lib.rkllm_init(handle, p, result_callback)
    else:
        cb = ffi.new("RKLLMCallback*")
        cb.result_callback = result_callback
        cb.result_userdata = result_userdata if result_userdata is not None else ffi.NULL
        if tokenizer_callback is not None:
            cb.tokenizer_callback = tokenizer_callback
            cb.tokenizer_userdata = (
                tokenizer_userdata if tokenizer_userdata is not None else ffi.NULL
            )
        if embed_callback is not None:
            cb.embed_callback = embed_callback
            cb.embed_userdata = embed_userdata if embed_userdata is not None else ffi.NULL
        keep += [cb, tokenizer_callback, embed_callback]
        rc = rt.lib.rkllm_init(handle, p, cb)
    if rc != 0:
        raise ModelLoadError(
            f"rkllm_init failed with return code {rc} for {os.fspath(model_path)!r} (runtime "
            f"{rt.version or 'unknown'}, ABI {rt.abi}); the runtime's log line above says why. "
            f"Common causes: a model converted for another runtime version or platform, an NPU "
            f"driver older than 0.9.8, not enough memory",
            code=rc,
        )
    effective = merge_params(default_params(rt), params)
    return NativeHandle(rt, handle[0], effective, keep)


def destroy(h: NativeHandle) -> None:
    """``rkllm_destroy`` (aborts a running task first). A second call does nothing."""
    with h._lock:
        ptr, h._ptr = h._ptr, None
    if ptr is None:
        return
    rc = h.runtime.lib.rkllm_destroy(ptr)
    h._keep.clear()
    _check("rkllm_destroy", rc)


# ---- inputs and runs ---------------------------------------------------------------------


def _buffer(rt: Runtime, keep: list[Any], arr: np.ndarray[Any, Any], ctype: str) -> Any:
    keep.append(arr)
    buf = rt.ffi.from_buffer(f"{ctype}[]", arr)
    keep.append(buf)
    return buf


def _fill_input(rt: Runtime, c: Any, item: Input, keep: list[Any]) -> None:
    c.role = _cstr(rt, keep, item.role, "role")
    c.enable_thinking = item.enable_thinking
    if isinstance(item, Prompt):
        c.input_type = InputType.PROMPT
        c.prompt_input = _cstr(rt, keep, item.text, "prompt")
    elif isinstance(item, TokenInput):
        c.input_type = InputType.TOKEN
        c.token_input.input_ids = _buffer(rt, keep, item.ids, "int32_t")
        c.token_input.n_tokens = item.ids.shape[0]
    elif isinstance(item, EmbedInput):
        c.input_type = InputType.EMBED
        c.embed_input.embed = _buffer(rt, keep, item.embeddings, "float")
        c.embed_input.n_tokens = item.embeddings.shape[0]
    elif isinstance(item, MultimodalInput):
        c.input_type = InputType.MULTIMODAL
        _fill_multimodal(rt, c.multimodal_input, item, keep)
    else:
        raise InvalidParamsError(f"not an input model: {type(item).__name__}")


def _fill_multimodal(rt: Runtime, mm: Any, item: MultimodalInput, keep: list[Any]) -> None:
    mm.prompt = _cstr(rt, keep, item.prompt, "prompt")
    image, video = item.image, item.video
    if rt.abi == "1.2":
        if video is not None:
            _only_on(rt, "1.3", "video input")
        if image is not None:
            if any(x is not None for x in (image.start, image.end, image.content)):
                raise UnsupportedOnABIError(
                    "ImageInput.start / end / content exist only in runtime ABI 1.3; on 1.2 set "
                    "ModelParams.img_start / img_end / img_content"
                )
            mm.image_embed = _buffer(rt, keep, image.embeddings, "float")
            mm.n_image, mm.n_image_tokens = image.embeddings.shape[0], image.embeddings.shape[1]
            mm.image_width, mm.image_height = image.width, image.height
        return
    if image is not None:
        im = mm.image
        im.image_embed = _buffer(rt, keep, image.embeddings, "float")
        im.n_image, im.n_image_tokens = image.embeddings.shape[0], image.embeddings.shape[1]
        im.image_start = _cstr(rt, keep, image.start, "ImageInput.start")
        im.image_end = _cstr(rt, keep, image.end, "ImageInput.end")
        im.image_content = _cstr(rt, keep, image.content, "ImageInput.content")
        im.image_width, im.image_height = image.width, image.height
    if video is not None:
        vd = mm.video
        shape = video.embeddings.shape
        vd.video_embed = _buffer(rt, keep, video.embeddings, "float")
        vd.n_video, vd.n_frame_per_video, vd.n_frame_tokens = shape[0], shape[1], shape[2]
        vd.video_start = _cstr(rt, keep, video.start, "VideoInput.start")
        vd.video_end = _cstr(rt, keep, video.end, "VideoInput.end")
        vd.video_content = _cstr(rt, keep, video.content, "VideoInput.content")
        vd.frame_width, vd.frame_height = video.frame_width, video.frame_height


def _infer_struct(h: NativeHandle, options: InferOptions, keep: list[Any]) -> Any:
    rt = h.runtime
    p = rt.ffi.new("RKLLMInferParam*")
    keep.append(p)
    p.mode = InferMode(options.mode)
    p.keep_history = int(options.keep_history)
    if options.lora is not None:
        lp = rt.ffi.new("RKLLMLoraParam*")
        lp.lora_adapter_name = _cstr(rt, keep, options.lora, "lora")
        keep.append(lp)
        p.lora_params = lp
    if options.prompt_cache is not None:
        pc = rt.ffi.new("RKLLMPromptCacheParam*")
        pc.save_prompt_cache = int(options.prompt_cache.save)
        pc.prompt_cache_path = _cstr(rt, keep, options.prompt_cache.path, "prompt cache path")
        keep.append(pc)
        p.prompt_cache_params = pc
    if rt.abi == "1.2":
        if options.sampling is not None:
            _only_on(rt, "1.3", "per-run sampling (InferOptions.sampling)")
        if options.max_new_tokens is not None:
            _only_on(rt, "1.3", "per-run max_new_tokens (InferOptions.max_new_tokens)")
        return p
    if options.max_new_tokens is not None:
        p.max_new_tokens = options.max_new_tokens
    if options.sampling is not None:
        sp = rt.ffi.new("RKLLMSamplingParam*")
        for name in _SAMPLING_FIELDS:
            value = getattr(options.sampling, name)
            setattr(sp, name, value if value is not None else getattr(h.params, name))
        keep.append(sp)
        p.sampling_params = sp
    return p


class RunKeepalive:
    """Owns the C structs, strings and arrays of a run; keep it until the run has ended."""

    __slots__ = ("_keep", "infer", "inputs")

    def __init__(self, inputs: Any, infer: Any, keep: list[Any]) -> None:
        self.inputs = inputs
        self.infer = infer
        self._keep = keep


def prepare_run(
    h: NativeHandle, inputs: Input | Sequence[Input], options: InferOptions
) -> RunKeepalive:
    """Check and convert a run's inputs and options to C, without calling the runtime."""
    items = [inputs] if not isinstance(inputs, Sequence) else list(inputs)
    if len(items) != h.n_batch:
        raise InvalidParamsError(
            f"this handle runs batches of {h.n_batch} inputs, got {len(items)}"
        )
    keep: list[Any] = []
    arr = h.runtime.ffi.new("RKLLMInput[]", len(items))
    keep.append(arr)
    for c, item in zip(arr, items, strict=True):
        _fill_input(h.runtime, c, item, keep)
    return RunKeepalive(arr, _infer_struct(h, options, keep), keep)


def run_prepared(h: NativeHandle, prepared: RunKeepalive, *, userdata: Any = None) -> None:
    """``rkllm_run`` on a prepared run (blocking). Raises GenerationError on failure."""
    rc = h.runtime.lib.rkllm_run(h.ptr(), prepared.inputs, prepared.infer, _userdata(h, userdata))
    _check("rkllm_run", rc, GenerationError)


def _userdata(h: NativeHandle, userdata: Any) -> Any:
    return h.runtime.ffi.NULL if userdata is None else userdata


def run(
    h: NativeHandle,
    inputs: Input | Sequence[Input],
    options: InferOptions | None = None,
    *,
    userdata: Any = None,
) -> None:
    """``rkllm_run``: blocks until the run's terminal callback has returned.

    Raises:
        GenerationError: the runtime returned non-zero (busy handle, bad input it refused,
            or a run that ended in RKLLM_RUN_ERROR).
    """
    run_prepared(h, prepare_run(h, inputs, options or InferOptions()), userdata=userdata)


def run_async(
    h: NativeHandle,
    inputs: Input | Sequence[Input],
    options: InferOptions | None = None,
    *,
    userdata: Any = None,
) -> RunKeepalive:
    """``rkllm_run_async``: returns at once; keep the result alive until the run ends."""
    prepared = prepare_run(h, inputs, options or InferOptions())
    rc = h.runtime.lib.rkllm_run_async(
        h.ptr(), prepared.inputs, prepared.infer, _userdata(h, userdata)
    )
    _check("rkllm_run_async", rc, GenerationError)
    return prepared


def abort(h: NativeHandle) -> None:
    """``rkllm_abort``: stop the running task (no-op when idle)."""
    _check("rkllm_abort", h.runtime.lib.rkllm_abort(h.ptr()))


def is_running(h: NativeHandle) -> bool:
    """``rkllm_is_running`` as a bool (1.2 returns 0 while running, 1.3 returns 1)."""
    rc = int(h.runtime.lib.rkllm_is_running(h.ptr()))
    if h.runtime.abi == "1.2":
        return rc == 0
    if rc not in (0, 1):
        raise NativeCallError(f"rkllm_is_running failed with return code {rc}", code=rc)
    return rc == 1


# ---- KV cache, adapters, templates -------------------------------------------------------


def clear_kv_cache(
    h: NativeHandle,
    *,
    keep_system_prompt: bool = False,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> None:
    """``rkllm_clear_kv_cache``: all of it, or one ``(start, end)`` range per batch.

    Ranges work only after a paused single-turn run (``keep_history=False``).
    """
    ffi = h.runtime.ffi
    if ranges is None:
        rc = h.runtime.lib.rkllm_clear_kv_cache(
            h.ptr(), int(keep_system_prompt), ffi.NULL, ffi.NULL
        )
        _check("rkllm_clear_kv_cache", rc)
        return
    pairs = list(ranges)
    if len(pairs) != h.n_batch:
        raise InvalidParamsError(
            f"need one (start, end) range per batch ({h.n_batch}), got {len(pairs)}"
        )
    for start, end in pairs:
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start <= end:
            raise InvalidParamsError(
                f"KV range ({start!r}, {end!r}) must satisfy 0 <= start <= end"
            )
    starts = ffi.new("int[]", [s for s, _ in pairs])
    ends = ffi.new("int[]", [e for _, e in pairs])
    _check(
        "rkllm_clear_kv_cache",
        h.runtime.lib.rkllm_clear_kv_cache(h.ptr(), int(keep_system_prompt), starts, ends),
    )


def kv_cache_size(h: NativeHandle) -> list[int]:
    """``rkllm_get_kv_cache_size``: tokens in the KV cache, one count per batch."""
    sizes = h.runtime.ffi.new("int[]", h.n_batch)
    _check("rkllm_get_kv_cache_size", h.runtime.lib.rkllm_get_kv_cache_size(h.ptr(), sizes))
    return list(sizes)


def load_lora(h: NativeHandle, adapter: LoraAdapter) -> None:
    """``rkllm_load_lora``: load (or replace) an adapter; runs select it by name."""
    keep: list[Any] = []
    a = h.runtime.ffi.new("RKLLMLoraAdapter*")
    a.lora_adapter_path = _cstr(h.runtime, keep, adapter.path, "LoraAdapter.path")
    a.lora_adapter_name = _cstr(h.runtime, keep, adapter.name, "LoraAdapter.name")
    a.scale = adapter.scale
    _check("rkllm_load_lora", h.runtime.lib.rkllm_load_lora(h.ptr(), a))


def load_prompt_cache(h: NativeHandle, path: str | os.PathLike[str]) -> None:
    """``rkllm_load_prompt_cache``: later runs reuse the cached prefix."""
    keep: list[Any] = []
    c = _cstr(h.runtime, keep, path, "prompt cache path")
    _check("rkllm_load_prompt_cache", h.runtime.lib.rkllm_load_prompt_cache(h.ptr(), c))


def release_prompt_cache(h: NativeHandle) -> None:
    """``rkllm_release_prompt_cache``."""
    _check("rkllm_release_prompt_cache", h.runtime.lib.rkllm_release_prompt_cache(h.ptr()))


def set_chat_template(h: NativeHandle, system_prompt: str, prefix: str, postfix: str) -> None:
    """``rkllm_set_chat_template``: replaces the model's template (``""`` for an empty part)."""
    keep: list[Any] = []
    rt = h.runtime
    args = [
        _cstr(rt, keep, v, n)
        for v, n in ((system_prompt, "system_prompt"), (prefix, "prefix"), (postfix, "postfix"))
    ]
    _check("rkllm_set_chat_template", rt.lib.rkllm_set_chat_template(h.ptr(), *args))


def set_function_tools(
    h: NativeHandle,
    system_prompt: str,
    tools: str | Sequence[Mapping[str, Any]],
    tool_response_str: str = "tool_response",
) -> None:
    """``rkllm_set_function_tools``: OpenAI-format tools (a JSON string or a list of dicts)."""
    if not isinstance(tools, str):
        try:
            tools = json.dumps(list(tools), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParamsError(f"tools are not JSON-serialisable: {exc}") from None
    keep: list[Any] = []
    rt = h.runtime
    rc = rt.lib.rkllm_set_function_tools(
        h.ptr(),
        _cstr(rt, keep, system_prompt, "system_prompt"),
        _cstr(rt, keep, tools, "tools"),
        _cstr(rt, keep, tool_response_str, "tool_response_str"),
    )
    _check("rkllm_set_function_tools", rc)


def set_cross_attention(h: NativeHandle, cross: CrossAttention | None) -> None:
    """``rkllm_set_cross_attn_params``; None clears. The handle keeps the arrays alive."""
    rt = h.runtime
    keep: list[Any] = []
    p = rt.ffi.new("RKLLMCrossAttnParam*")
    keep.append(p)
    if cross is not None:
        p.encoder_k_cache = _buffer(rt, keep, cross.k_cache, "float")
        p.encoder_v_cache = _buffer(rt, keep, cross.v_cache, "float")
        p.encoder_mask = _buffer(rt, keep, cross.mask, "float")
        p.encoder_pos = _buffer(rt, keep, cross.positions, "int32_t")
        p.num_tokens = cross.num_tokens
    _check("rkllm_set_cross_attn_params", rt.lib.rkllm_set_cross_attn_params(h.ptr(), p))
    h._keep["cross"] = keep if cross is not None else None  # read by every later run


# ---- undocumented and fake-only symbols --------------------------------------------------


def _optional(h: NativeHandle, name: str) -> Any:
    if name not in h.runtime.optional_symbols:
        raise NativeCallError(f"this runtime ({h.runtime.path.name}) does not export {name}")
    return getattr(h.runtime.lib, name)


def print_timings(h: NativeHandle) -> None:
    """Undocumented ``rkllm_print_timings`` (the runtime prints to its log), when exported."""
    _optional(h, "rkllm_print_timings")(h.ptr())


def print_memorys(h: NativeHandle) -> None:
    """Undocumented ``rkllm_print_memorys`` (the runtime prints to its log), when exported."""
    _optional(h, "rkllm_print_memorys")(h.ptr())


def fake_stats(rt: Runtime) -> dict[str, int]:
    """The fake runtime's counters (``rkllm_fake_stats``)."""
    if "rkllm_fake_stats" not in rt.optional_symbols:
        raise NativeCallError(f"{rt.path.name} is not the fake runtime")
    s = rt.ffi.new("RKLLMFakeStats*")
    rt.lib.rkllm_fake_stats(s)
    return {name: int(getattr(s, name)) for name, _ in rt.ffi.typeof("RKLLMFakeStats").fields}


def fake_last_input(h: NativeHandle) -> dict[str, Any]:
    """What the fake runtime received in this handle's last run (``rkllm_fake_last_input``)."""
    fn = _optional(h, "rkllm_fake_last_input")
    n = fn(h.ptr(), h.runtime.ffi.NULL, 0)
    if n < 0:
        raise NativeCallError("rkllm_fake_last_input: no run recorded on this handle", code=n)
    buf = h.runtime.ffi.new("char[]", n + 1)
    fn(h.ptr(), buf, n + 1)
    result: dict[str, Any] = json.loads(h.runtime.ffi.string(buf).decode("utf-8"))
    return result


# ---- results -----------------------------------------------------------------------------


def _floats(
    rt: Runtime, ptr: Any, rows: int, cols: int
) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    if ptr == rt.ffi.NULL or rows <= 0 or cols <= 0:
        return None
    view = np.frombuffer(rt.ffi.buffer(ptr, 4 * rows * cols), dtype=np.float32)
    return view.reshape(rows, cols).copy()  # the runtime frees its buffer after the callback


def read_results(rt: Runtime, result: Any, n_batch: int, state: CallState) -> list[Result]:
    """Copy the ``n_batch`` entries of an ``RKLLMResult*`` inside its callback."""
    out = []
    terminal = state in (CallState.FINISH, CallState.ERROR)
    for b in range(n_batch):
        r = result[b]
        perf = None
        if terminal:
            p = r.perf
            perf = PerfStats(
                prefill_time_ms=float(p.prefill_time_ms),
                prefill_tokens=int(p.prefill_tokens),
                generate_time_ms=float(p.generate_time_ms),
                generate_tokens=int(p.generate_tokens),
                memory_usage_mb=float(p.memory_usage_mb),
            )
        text = rt.ffi.string(r.text) if r.text != rt.ffi.NULL else None
        out.append(
            Result(
                text=bytes(text) if text is not None else None,
                token_id=int(r.token_id),
                logits=_floats(rt, r.logits.logits, r.logits.num_tokens, r.logits.vocab_size),
                hidden_states=_floats(
                    rt,
                    r.last_hidden_layer.hidden_states,
                    r.last_hidden_layer.num_tokens,
                    r.last_hidden_layer.embd_size,
                ),
                perf=perf,
            )
        )
    return out


# ---- the C bridge's channel --------------------------------------------------------------

FloatRows = np.ndarray[Any, np.dtype[np.float32]]


class Drained(NamedTuple):
    """What one drain of a channel gave, as parallel columns (one entry per event)."""

    states: list[int]
    batches: list[int]
    token_ids: list[int]
    texts: list[bytes | None]  # None: the runtime gave NULL text
    arrays: dict[int, FloatRows]  # event index -> logits / hidden rows copied by the bridge
    callback_ns: list[int]  # time.monotonic_ns() clock when each callback ran
    finished: bool  # the terminal callback has been drained
    run_done: bool  # rkllm_run returned (the runtime is done with every buffer)
    run_rc: int
    perf: list[PerfStats]  # per batch, once finished


#: Drains of at most this many events read them field by field instead of through numpy.
_FEW_EVENTS = 4


class Channel:
    """One run's event channel in the C bridge; its pointer is the run's userdata.

    The bridge's result callback (``rkb_result_callback``, pure C) fills it on the runtime
    thread; the consumer drains it and waits on :attr:`fd` when it is empty.
    """

    __slots__ = ("_bridge", "_dtype", "_ffi", "_page", "_ptr", "fd", "n_batch")

    def __init__(
        self,
        rt: Runtime,
        n_batch: int,
        *,
        array_rows: int = 0,
        release_buffers: bool = False,
        max_pending: int = 65536,
    ) -> None:
        self._ffi = rt.ffi
        self._bridge = rt.bridge
        ptr = rt.bridge.rkb_channel_new(n_batch, array_rows, int(release_buffers), max_pending)
        if ptr == rt.ffi.NULL:
            raise NativeCallError("rkb_channel_new failed (out of memory or file descriptors)")
        self._ptr: Any = ptr
        self.fd: int = int(rt.bridge.rkb_channel_fd(ptr))
        self.n_batch = n_batch
        self._page = rt.ffi.new("rkb_page*")
        fields = (
            "state",
            "batch",
            "token_id",
            "text_off",
            "text_len",
            "array_kind",
            "rows",
            "cols",
            "array",
            "t_ns",
        )
        self._dtype = np.dtype(
            {
                "names": list(fields),
                "formats": ["<i4", "<i4", "<i4", "<u4", "<u4", "<i4", "<i4", "<i4", "<u8", "<i8"],
                "offsets": [rt.ffi.offsetof("rkb_event", f) for f in fields],
                "itemsize": rt.ffi.sizeof("rkb_event"),
            }
        )

    @property
    def userdata(self) -> Any:
        """The pointer to hand to rkllm_run as userdata."""
        return self._ptr

    def drain(self) -> Drained:
        """Take every pending event (never blocks). Empty: the next event will wake :attr:`fd`."""
        ffi, page = self._ffi, self._page
        n = int(self._bridge.rkb_channel_drain(self._ptr, page))
        states: list[int] = []
        batches: list[int] = []
        tokens: list[int] = []
        texts: list[bytes | None] = []
        arrays: dict[int, FloatRows] = {}
        stamps: list[int] = []
        if 0 < n <= _FEW_EVENTS:
            # A consumer keeping up (a paced NPU) wakes for one or two events: reading them
            # field by field costs less than setting up the numpy columns below.
            text = ffi.buffer(page.text, page.text_len)[:] if page.text_len else b""
            for i in range(n):
                ev = page.events[i]
                states.append(ev.state)
                batches.append(ev.batch)
                tokens.append(ev.token_id)
                stamps.append(ev.t_ns)
                off, ln = ev.text_off, ev.text_len
                texts.append(None if ln == 0xFFFFFFFF else text[off : off + ln])
                if ev.array != ffi.NULL:
                    arrays[i] = self._owned_rows(ev.array, ev.rows, ev.cols)
        elif n:
            # Columns straight from the C event array: one pass, no per-event tuple.
            text = ffi.buffer(page.text, page.text_len)[:] if page.text_len else b""
            table = np.frombuffer(
                ffi.buffer(page.events, n * self._dtype.itemsize), dtype=self._dtype
            )
            states = table["state"].tolist()
            batches = table["batch"].tolist()
            tokens = table["token_id"].tolist()
            stamps = table["t_ns"].tolist()
            offsets = table["text_off"].tolist()
            lengths = table["text_len"].tolist()
            texts = [
                None if ln == 0xFFFFFFFF else text[off : off + ln]
                for off, ln in zip(offsets, lengths, strict=True)
            ]
            for idx in np.flatnonzero(table["array"]).tolist():
                row = table[idx]
                pointer = ffi.cast("float*", int(row["array"]))
                arrays[idx] = self._owned_rows(pointer, int(row["rows"]), int(row["cols"]))
        perf = []
        if page.finished:
            for b in range(self.n_batch):
                p = page.perf[b]
                perf.append(
                    PerfStats(
                        prefill_time_ms=float(p.prefill_time_ms),
                        prefill_tokens=int(p.prefill_tokens),
                        generate_time_ms=float(p.generate_time_ms),
                        generate_tokens=int(p.generate_tokens),
                        memory_usage_mb=float(p.memory_usage_mb),
                    )
                )
        return Drained(
            states,
            batches,
            tokens,
            texts,
            arrays,
            stamps,
            bool(page.finished),
            bool(page.run_done),
            int(page.run_rc),
            perf,
        )

    def _owned_rows(self, pointer: Any, rows: int, cols: int) -> FloatRows:
        # The bridge malloc'ed this copy for us: numpy owns it now (freed with it).
        owned = self._ffi.gc(pointer, self._bridge.rkb_free)
        raw = self._ffi.buffer(owned, 4 * rows * cols)
        return np.frombuffer(raw, dtype=np.float32).reshape(rows, cols)

    def ack(self) -> None:
        """Reset the fd after a wakeup."""
        self._bridge.rkb_channel_ack(self._ptr)

    def pause(self) -> None:
        """Make the next result callback return 1 (pause)."""
        self._bridge.rkb_channel_pause(self._ptr)

    def close(self) -> None:
        """The consumer is gone: drop later events, release a blocked runtime thread."""
        self._bridge.rkb_channel_close(self._ptr)

    def reset(self, *, array_rows: int = 0, release_buffers: bool = False) -> None:
        """Ready this channel for another run on the same handle, keeping its buffers.

        Only once the previous run's ``rkllm_run`` has returned.
        """
        self._bridge.rkb_channel_reset(self._ptr, array_rows, int(release_buffers))

    def set_done(self, rc: int) -> None:
        """Called by the thread that ran rkllm_run, after it returned."""
        self._bridge.rkb_channel_set_done(self._ptr, rc)

    def free(self) -> None:
        """Free the channel. Only after rkllm_run has returned (the runtime is done with it)."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._bridge.rkb_channel_free(ptr)


def bridge_live_objects(rt: Runtime) -> int:
    """Channels and arrays the bridge has allocated and not freed (for leak tests)."""
    return int(rt.bridge.rkb_live_objects())


# ---- runtime 1.3 tokenizer / embedding callbacks from Python -------------------------------
# These call user Python code, so they take the GIL on the runtime thread (unlike results,
# which stay in C). Exceptions are kept in `errors` and the callback reports failure (-1 / 1),
# which ends the run with RKLLM_RUN_ERROR; the SDK then raises with the exception as cause.


def python_tokenizer(rt: Runtime, fn: Callable[[str], Any], errors: list[BaseException]) -> Any:
    """An ``LLMTokenizerCallback`` that calls ``fn(text) -> token ids``."""
    _only_on(rt, "1.3", "tokenizer callbacks")
    ffi = rt.ffi

    def callback(_ud: Any, text: Any, text_len: int, tokens: Any, n_max: int) -> int:
        try:
            ids = token_ids(fn(ffi.string(text, text_len).decode("utf-8", "replace")))
            if ids.shape[0] > n_max:
                raise InvalidParamsError(
                    f"the tokenizer gave {ids.shape[0]} tokens; the runtime takes {n_max}"
                )
            ffi.memmove(tokens, ffi.from_buffer(ids), ids.nbytes)
            return int(ids.shape[0])
        except BaseException as exc:  # reported to the caller of the run, never lost here
            errors.append(exc)
            return -1

    return ffi.callback("LLMTokenizerCallback", callback)


def python_embedder(rt: Runtime, fn: Callable[[Any], Any], errors: list[BaseException]) -> Any:
    """An ``LLMGetEmbedCallback`` that calls ``fn(token ids int32 [n]) -> float32 [n, hidden]``."""
    _only_on(rt, "1.3", "embedding callbacks")
    ffi = rt.ffi

    def callback(_ud: Any, tokens: Any, num_tokens: int, embed: Any, length: int) -> int:
        try:
            ids = np.frombuffer(ffi.buffer(tokens, 4 * num_tokens), dtype=np.int32).copy()
            rows = embeddings(fn(ids))
            if rows.shape[0] != num_tokens or rows.nbytes != length:
                raise InvalidParamsError(
                    f"the embedder gave {rows.shape} float32 for {num_tokens} tokens; "
                    f"the runtime wants {length} bytes"
                )
            ffi.memmove(embed, ffi.from_buffer(rows), length)
            return 0
        except BaseException as exc:  # reported to the caller of the run, never lost here
            errors.append(exc)
            return 1

    return ffi.callback("LLMGetEmbedCallback", callback)
