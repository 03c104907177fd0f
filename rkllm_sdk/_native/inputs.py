"""A run's inputs and options as C structs (``RKLLMInput[]``, ``RKLLMInferParam``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..errors import InvalidParamsError, UnsupportedOnABIError
from ..models import (
    EmbedInput,
    InferMode,
    InferOptions,
    Input,
    InputType,
    MultimodalInput,
    Prompt,
    TokenInput,
    as_inputs,
    input_list,
)
from ._util import assign, buffer, cstr, only_on, writable_file
from .handle import NativeHandle
from .params import SAMPLING_FIELDS

__all__ = ["RunKeepalive", "embedding_arrays", "prepare_run"]

#: Roles the fake runtime takes (assumption A6 of fake_runtime/README.md; the vendor documents
#: "user" and "tool" without saying others are refused, so the SDK does not refuse them).
_KNOWN_ROLES = ("user", "tool")


def embedding_arrays(item: object) -> list[tuple[str, tuple[int, ...]]]:
    """The embedding-carrying arrays of one input: ``(name, shape)`` for each (the last
    dimension is the model's embedding width)."""
    if isinstance(item, EmbedInput):
        return [("EmbedInput.embeddings", item.embeddings.shape)]
    if isinstance(item, MultimodalInput):
        found = []
        if item.image is not None:
            found.append(("ImageInput.embeddings", item.image.embeddings.shape))
        if item.video is not None:
            found.append(("VideoInput.embeddings", item.video.embeddings.shape))
        return found
    return []


def _check_input(h: NativeHandle, index: int, item: Input) -> None:
    """What the SDK knows before the call: embedding widths (once learned) and token counts
    against ``max_context_len`` (text is tokenized inside the runtime: its count is unknown)."""
    where = f" (batch entry {index})" if h.n_batch > 1 else ""
    width = h.embed_width
    tokens = 0
    for name, shape in embedding_arrays(item):
        if width is not None and shape[-1] != width:
            raise InvalidParamsError(
                f"{name}{where}: each token's embedding has {shape[-1]} floats, the model's "
                f"embedding width is {width}: expected shape [..., {width}], got {shape}"
            )
        tokens += int(np.prod(shape[:-1]))
    if isinstance(item, TokenInput):
        tokens = int(item.ids.shape[0])
    limit = h.params.max_context_len
    if limit is not None and tokens > limit:
        raise InvalidParamsError(
            f"the input{where} holds {tokens} tokens, more than max_context_len ({limit}): "
            f"the runtime cannot fit it (raise ModelParams.max_context_len at load)"
        )


def _fill_input(rt: Runtime, c: CData, item: Input, keep: list[object]) -> None:
    c.role = cstr(rt, keep, item.role, "role")
    c.enable_thinking = item.enable_thinking
    if isinstance(item, Prompt):
        c.input_type = InputType.PROMPT
        c.prompt_input = cstr(rt, keep, item.text, "prompt")
    elif isinstance(item, TokenInput):
        c.input_type = InputType.TOKEN
        c.token_input.input_ids = buffer(rt, keep, item.ids, "int32_t")
        c.token_input.n_tokens = item.ids.shape[0]
    elif isinstance(item, EmbedInput):
        c.input_type = InputType.EMBED
        c.embed_input.embed = buffer(rt, keep, item.embeddings, "float")
        c.embed_input.n_tokens = item.embeddings.shape[0]
    elif isinstance(item, MultimodalInput):
        c.input_type = InputType.MULTIMODAL
        _fill_multimodal(rt, c.multimodal_input, item, keep)
    else:
        raise InvalidParamsError(f"not an input model: {type(item).__name__}")


def _fill_multimodal(rt: Runtime, mm: CData, item: MultimodalInput, keep: list[object]) -> None:
    mm.prompt = cstr(rt, keep, item.prompt, "prompt")
    image, video = item.image, item.video
    if rt.abi == "1.2":
        if video is not None:
            only_on(rt, "1.3", "video input")
        if image is not None:
            if any(x is not None for x in (image.start, image.end, image.content)):
                raise UnsupportedOnABIError(
                    "ImageInput.start / end / content exist only in runtime ABI 1.3; on 1.2 set "
                    "ModelParams.img_start / img_end / img_content"
                )
            mm.image_embed = buffer(rt, keep, image.embeddings, "float")
            mm.n_image, mm.n_image_tokens = image.embeddings.shape[0], image.embeddings.shape[1]
            mm.image_width, mm.image_height = image.width, image.height
        return
    if image is not None:
        im = mm.image
        im.image_embed = buffer(rt, keep, image.embeddings, "float")
        im.n_image, im.n_image_tokens = image.embeddings.shape[0], image.embeddings.shape[1]
        im.image_start = cstr(rt, keep, image.start, "ImageInput.start")
        im.image_end = cstr(rt, keep, image.end, "ImageInput.end")
        im.image_content = cstr(rt, keep, image.content, "ImageInput.content")
        im.image_width, im.image_height = image.width, image.height
    if video is not None:
        vd = mm.video
        shape = video.embeddings.shape
        vd.video_embed = buffer(rt, keep, video.embeddings, "float")
        vd.n_video, vd.n_frame_per_video, vd.n_frame_tokens = shape[0], shape[1], shape[2]
        vd.video_start = cstr(rt, keep, video.start, "VideoInput.start")
        vd.video_end = cstr(rt, keep, video.end, "VideoInput.end")
        vd.video_content = cstr(rt, keep, video.content, "VideoInput.content")
        vd.frame_width, vd.frame_height = video.frame_width, video.frame_height


def _infer_struct(h: NativeHandle, options: InferOptions, keep: list[object]) -> CData:
    rt = h.runtime
    p = rt.ffi.new("RKLLMInferParam*")
    keep.append(p)
    p.mode = InferMode(options.mode)
    p.keep_history = int(options.keep_history)
    if options.lora is not None:
        if options.lora not in h.lora_names:
            loaded = ", ".join(repr(n) for n in sorted(h.lora_names)) or "none"
            raise InvalidParamsError(
                f"LoRA adapter {options.lora!r} is not loaded on this handle (loaded: {loaded}); "
                f"load it first with load_lora(LoraAdapter(path=..., name={options.lora!r}))"
            )
        lp = rt.ffi.new("RKLLMLoraParam*")
        lp.lora_adapter_name = cstr(rt, keep, options.lora, "lora")
        keep.append(lp)
        p.lora_params = lp
    if options.prompt_cache is not None:
        if options.prompt_cache.save:
            writable_file(options.prompt_cache.path, "prompt cache file")
        pc = rt.ffi.new("RKLLMPromptCacheParam*")
        pc.save_prompt_cache = int(options.prompt_cache.save)
        pc.prompt_cache_path = cstr(rt, keep, options.prompt_cache.path, "prompt cache path")
        keep.append(pc)
        p.prompt_cache_params = pc
    if rt.abi == "1.2":
        if options.sampling is not None:
            only_on(rt, "1.3", "per-run sampling (the sampling= option)")
        if options.max_new_tokens is not None:
            only_on(rt, "1.3", "per-run max_new_tokens (the max_new_tokens= option)")
        return p
    if options.max_new_tokens is not None:
        assign(p, "max_new_tokens", options.max_new_tokens, "max_new_tokens")
    if options.sampling is not None:
        sp = rt.ffi.new("RKLLMSamplingParam*")
        for name in SAMPLING_FIELDS:
            value = getattr(options.sampling, name)
            chosen = value if value is not None else getattr(h.params, name)
            assign(sp, name, chosen, f"Sampling.{name}")
        keep.append(sp)
        p.sampling_params = sp
    return p


class RunKeepalive:
    """Owns the C structs, strings and arrays of a run; keep it until the run has ended.

    Attributes:
        notes: what the SDK could not check before the call and might explain a refusal
            (an unusual role, text whose token count only the runtime knows), for the
            message of a failed run.
    """

    __slots__ = ("_keep", "infer", "inputs", "notes")

    def __init__(
        self, inputs: CData, infer: CData, keep: list[object], notes: tuple[str, ...] = ()
    ) -> None:
        self.inputs = inputs  # RKLLMInput[]
        self.infer = infer  # RKLLMInferParam*
        self.notes = notes
        self._keep = keep


def _notes(h: NativeHandle, items: list[Input]) -> tuple[str, ...]:
    notes = []
    roles = sorted({i.role for i in items if i.role not in _KNOWN_ROLES})
    if roles:
        notes.append(
            f"the role {', '.join(map(repr, roles))} (runtimes are known to take "
            f"{' and '.join(map(repr, _KNOWN_ROLES))})"
        )
    if any(isinstance(i, Prompt | MultimodalInput) for i in items):
        notes.append(
            f"text longer than max_context_len ({h.params.max_context_len} tokens; the SDK "
            f"cannot count a text's tokens, the runtime tokenizes it)"
        )
    return tuple(notes)


def prepare_run(
    h: NativeHandle, inputs: Input | Sequence[Input], options: InferOptions
) -> RunKeepalive:
    """Check and convert a run's inputs and options to C, without calling the runtime.

    Checks everything the SDK can know before the call: input types, the batch size, each
    embedding / image / video array's width against the model's (once learned: see
    :func:`~rkllm_sdk._native.embed_width`), token and embedding counts against
    ``max_context_len``, that a named LoRA adapter is loaded, that a prompt cache to save
    can be written. A text is counted only by the runtime.

    Raises:
        InvalidParamsError / UnsupportedOnABIError: inputs the handle or its ABI cannot take.
    """
    if not isinstance(options, InferOptions):
        raise InvalidParamsError(f"options must be InferOptions, got {type(options).__name__}")
    items = input_list(as_inputs(inputs, "user", False) if isinstance(inputs, str) else inputs)
    if len(items) != h.n_batch:
        raise InvalidParamsError(
            f"this handle runs batches of {h.n_batch} inputs, got {len(items)}"
        )
    for index, item in enumerate(items):
        _check_input(h, index, item)
    keep: list[object] = []
    arr = h.runtime.ffi.new("RKLLMInput[]", len(items))
    keep.append(arr)
    for c, item in zip(arr, items, strict=True):
        _fill_input(h.runtime, c, item, keep)
    return RunKeepalive(arr, _infer_struct(h, options, keep), keep, _notes(h, items))
