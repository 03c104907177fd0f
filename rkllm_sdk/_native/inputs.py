"""A run's inputs and options as C structs (``RKLLMInput[]``, ``RKLLMInferParam``)."""

from __future__ import annotations

from collections.abc import Sequence

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
)
from ._util import buffer, cstr, only_on
from .handle import NativeHandle
from .params import SAMPLING_FIELDS

__all__ = ["RunKeepalive", "prepare_run"]


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
        lp = rt.ffi.new("RKLLMLoraParam*")
        lp.lora_adapter_name = cstr(rt, keep, options.lora, "lora")
        keep.append(lp)
        p.lora_params = lp
    if options.prompt_cache is not None:
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
        p.max_new_tokens = options.max_new_tokens
    if options.sampling is not None:
        sp = rt.ffi.new("RKLLMSamplingParam*")
        for name in SAMPLING_FIELDS:
            value = getattr(options.sampling, name)
            setattr(sp, name, value if value is not None else getattr(h.params, name))
        keep.append(sp)
        p.sampling_params = sp
    return p


class RunKeepalive:
    """Owns the C structs, strings and arrays of a run; keep it until the run has ended."""

    __slots__ = ("_keep", "infer", "inputs")

    def __init__(self, inputs: CData, infer: CData, keep: list[object]) -> None:
        self.inputs = inputs  # RKLLMInput[]
        self.infer = infer  # RKLLMInferParam*
        self._keep = keep


def prepare_run(
    h: NativeHandle, inputs: Input | Sequence[Input], options: InferOptions
) -> RunKeepalive:
    """Check and convert a run's inputs and options to C, without calling the runtime.

    Raises:
        InvalidParamsError / UnsupportedOnABIError: inputs the handle or its ABI cannot take.
    """
    items = [inputs] if not isinstance(inputs, Sequence) else list(inputs)
    if len(items) != h.n_batch:
        raise InvalidParamsError(
            f"this handle runs batches of {h.n_batch} inputs, got {len(items)}"
        )
    keep: list[object] = []
    arr = h.runtime.ffi.new("RKLLMInput[]", len(items))
    keep.append(arr)
    for c, item in zip(arr, items, strict=True):
        _fill_input(h.runtime, c, item, keep)
    return RunKeepalive(arr, _infer_struct(h, options, keep), keep)
