"""Typed models of the runtime's structs and enums.

Frozen, slotted, keyword-only attrs classes with cheap validators. They hold Python values
and numpy arrays only; conversion to and from C structs lives in ``_native`` (per ABI).

Parameters that mirror ``RKLLMParam`` are optional: ``None`` means "the runtime's own
default" (``rkllm_createDefaultParam``; ``AsyncLLM.params`` shows the values in force).
Fields that exist in one runtime ABI only (``ignore_eos_token`` and ``Sampling`` on 1.3;
``img_start`` / ``img_end`` / ``img_content`` on 1.2; video input and per-image markers on
1.3) are accepted here and refused with :class:`~rkllm_sdk.errors.UnsupportedOnABIError`
when they reach a runtime of the other ABI, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import TypeAlias

import attrs
import numpy as np

from . import _validators as v
from . import arrays
from .arrays import FloatArray, IntArray
from .errors import InvalidParamsError
from .results import PerfStats

__all__ = [
    "CallState",
    "CrossAttention",
    "EmbedInput",
    "ExtendParams",
    "ImageInput",
    "InferMode",
    "InferOptions",
    "Input",
    "InputType",
    "LoraAdapter",
    "ModelParams",
    "MultimodalInput",
    "PerfStats",
    "Prompt",
    "PromptCache",
    "PromptLike",
    "Result",
    "Sampling",
    "TokenInput",
    "VideoInput",
    "as_inputs",
    "input_list",
]


class CallState(IntEnum):
    """``LLMCallState``: the state a result callback reports."""

    NORMAL = 0
    WAITING = 1  # the bytes end inside a UTF-8 character
    FINISH = 2
    ERROR = 3


class InputType(IntEnum):
    """``RKLLMInputType``."""

    PROMPT = 0
    TOKEN = 1
    EMBED = 2
    MULTIMODAL = 3


class InferMode(IntEnum):
    """``RKLLMInferMode``."""

    GENERATE = 0
    GET_LAST_HIDDEN_LAYER = 1
    GET_LOGITS = 2


# ---- init parameters ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ExtendParams:
    """``RKLLMExtendParam``. ``None`` keeps the runtime's default.

    ``enabled_cpus`` takes core numbers (``{4, 5, 6, 7}``) or a mask (``0xF0``); the runtime's
    ``enabled_cpus_num`` is derived from it.
    """

    base_domain_id: int | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE_INT
    )
    embed_flash: bool | None = attrs.field(default=None, converter=v.scalar, validator=v.opt_bool)
    enabled_cpus: frozenset[int] | None = attrs.field(default=None, converter=v.cpus)
    n_batch: int | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_int(lambda x: 1 <= x <= 8, "in 1..8")
    )
    use_cross_attn: bool | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_bool
    )

    @property
    def enabled_cpus_mask(self) -> int | None:
        """The cores as the runtime's bit mask (``None`` when not set)."""
        if self.enabled_cpus is None:
            return None
        return sum(1 << c for c in self.enabled_cpus)


@attrs.frozen(kw_only=True)
class ModelParams:
    """``RKLLMParam`` without the model path. ``None`` keeps the runtime's default.

    >>> ModelParams(max_context_len=4096, temperature=0.7).max_context_len
    4096
    """

    max_context_len: int | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_int(lambda x: x > 0, "> 0")
    )
    max_new_tokens: int | None = attrs.field(
        default=None,
        converter=v.scalar,
        validator=v.opt_int(lambda x: x > 0 or x == -1, "> 0 (or -1: no limit)"),
    )
    top_k: int | None = attrs.field(default=None, converter=v.scalar, validator=v.NON_NEGATIVE_INT)
    n_keep: int | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_int(lambda x: x >= -1, ">= -1")
    )
    top_p: float | None = attrs.field(default=None, converter=v.scalar, validator=v.TOP_P)
    temperature: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )
    repeat_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.POSITIVE
    )
    frequency_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.FINITE
    )
    presence_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.FINITE
    )
    mirostat: int | None = attrs.field(default=None, converter=v.scalar, validator=v.MIROSTAT)
    mirostat_tau: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )
    mirostat_eta: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )
    skip_special_token: bool | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_bool
    )
    is_async: bool | None = attrs.field(default=None, converter=v.scalar, validator=v.opt_bool)
    ignore_eos_token: bool | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_bool
    )  # 1.3 only
    img_start: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.2 only
    img_end: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.2 only
    img_content: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.2 only
    extend: ExtendParams = attrs.field(factory=ExtendParams)


@attrs.frozen(kw_only=True)
class LoraAdapter:
    """``RKLLMLoraAdapter``: a LoRA file, the name runs select it by, and its scale."""

    path: str = attrs.field(converter=v.path)
    name: str = attrs.field(validator=v.role)
    scale: float = attrs.field(default=1.0, converter=v.scalar, validator=v.FINITE)


# ---- inputs -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Prompt:
    """A text prompt (``RKLLM_INPUT_PROMPT``)."""

    text: str = attrs.field(validator=v.text)
    role: str = attrs.field(default="user", validator=v.role)
    enable_thinking: bool = attrs.field(default=False, converter=v.scalar, validator=v.opt_bool)


@attrs.frozen(kw_only=True)
class TokenInput:
    """Token ids (``RKLLM_INPUT_TOKEN``), held as a 1-D ``int32`` array."""

    ids: IntArray = attrs.field(converter=arrays.token_ids, eq=False, repr=v.array_repr)
    role: str = attrs.field(default="user", validator=v.role)
    enable_thinking: bool = attrs.field(default=False, converter=v.scalar, validator=v.opt_bool)


@attrs.frozen(kw_only=True)
class EmbedInput:
    """Token embeddings ``[n_tokens, hidden]`` (``RKLLM_INPUT_EMBED``)."""

    embeddings: FloatArray = attrs.field(converter=arrays.embeddings, eq=False, repr=v.array_repr)
    role: str = attrs.field(default="user", validator=v.role)
    enable_thinking: bool = attrs.field(default=False, converter=v.scalar, validator=v.opt_bool)


@attrs.frozen(kw_only=True)
class ImageInput:
    """Image embeddings ``[n_image, n_image_tokens, hidden]`` of a multimodal input.

    ``start`` / ``end`` / ``content`` are the 1.3 per-input markers (1.2 takes them from
    ``ModelParams.img_start`` / ``img_end`` / ``img_content``).
    """

    embeddings: FloatArray = attrs.field(
        converter=arrays.image_embeddings, eq=False, repr=v.array_repr
    )
    width: int = attrs.field(default=0, converter=v.scalar, validator=v.NON_NEGATIVE_SIZE)
    height: int = attrs.field(default=0, converter=v.scalar, validator=v.NON_NEGATIVE_SIZE)
    start: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.3 only
    end: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.3 only
    content: str | None = attrs.field(default=None, validator=v.opt_text)  # 1.3 only


@attrs.frozen(kw_only=True)
class VideoInput:
    """Video embeddings ``[n_video, n_frames, n_frame_tokens, hidden]`` (runtime 1.3 only)."""

    embeddings: FloatArray = attrs.field(
        converter=arrays.video_embeddings, eq=False, repr=v.array_repr
    )
    frame_width: int = attrs.field(default=0, converter=v.scalar, validator=v.NON_NEGATIVE_SIZE)
    frame_height: int = attrs.field(default=0, converter=v.scalar, validator=v.NON_NEGATIVE_SIZE)
    start: str | None = attrs.field(default=None, validator=v.opt_text)
    end: str | None = attrs.field(default=None, validator=v.opt_text)
    content: str | None = attrs.field(default=None, validator=v.opt_text)


@attrs.frozen(kw_only=True)
class MultimodalInput:
    """Text with image and / or video embeddings (``RKLLM_INPUT_MULTIMODAL``).

    Put ``<image>`` (``<video>``) in the text where the embeddings belong.
    """

    prompt: str = attrs.field(validator=v.text)
    image: ImageInput | None = None
    video: VideoInput | None = None
    role: str = attrs.field(default="user", validator=v.role)
    enable_thinking: bool = attrs.field(default=False, converter=v.scalar, validator=v.opt_bool)


Input: TypeAlias = Prompt | TokenInput | EmbedInput | MultimodalInput

PromptLike: TypeAlias = str | Input | Sequence[Input]
"""What a run takes: text, one input model, or one input per batch entry."""


_INPUT_MODELS = (Prompt, TokenInput, EmbedInput, MultimodalInput)
_ACCEPTED = (
    "a str, an input model (rk.Prompt, rk.TokenInput, rk.EmbedInput, rk.MultimodalInput) "
    "or a list of input models (one per batch entry)"
)


def _hint(value: object) -> str:
    if isinstance(value, np.ndarray):
        return (
            "; wrap arrays in an input model: rk.TokenInput(ids=...) for token ids, "
            "rk.EmbedInput(embeddings=...) for embeddings"
        )
    if isinstance(value, bytes | bytearray | memoryview):
        return "; decode bytes to str first"
    if isinstance(value, str):
        return "; wrap each text in rk.Prompt(text=...)"
    if isinstance(value, dict):
        return "; a chat message dict is not a prompt: pass its text, or use llm.chat()"
    return ""


def input_list(inputs: object) -> list[Input]:
    """One run's inputs as a non-empty list of input models (one per batch entry).

    Raises:
        InvalidParamsError: anything else, naming the accepted types.
    """
    if isinstance(inputs, _INPUT_MODELS):
        return [inputs]
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes | bytearray):
        items = list(inputs)
        if not items:
            raise InvalidParamsError("a batch needs at least one input, got an empty sequence")
        for i, item in enumerate(items):
            if not isinstance(item, _INPUT_MODELS):
                raise InvalidParamsError(
                    f"entry {i} of the batch is a {type(item).__name__}, not an input model "
                    f"(rk.Prompt, rk.TokenInput, rk.EmbedInput, rk.MultimodalInput)"
                    f"{_hint(item)}"
                )
        return items
    raise InvalidParamsError(
        f"a prompt must be {_ACCEPTED}; got {type(inputs).__name__}{_hint(inputs)}"
    )


def as_inputs(prompt: PromptLike, role: str, thinking: bool) -> Input | Sequence[Input]:
    """A run's prompt as input models (text becomes a :class:`Prompt` with ``role``).

    Raises:
        InvalidParamsError: a prompt of another type (naming the accepted ones), or a bad
            ``role`` / ``thinking`` for a text prompt.
    """
    if isinstance(prompt, str):
        return Prompt(text=prompt, role=role, enable_thinking=thinking)
    items = input_list(prompt)
    return items[0] if isinstance(prompt, _INPUT_MODELS) else items


# ---- per-run options ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Sampling:
    """``RKLLMSamplingParam``: per-run sampling (runtime 1.3 only). ``None`` keeps the handle's."""

    top_k: int | None = attrs.field(default=None, converter=v.scalar, validator=v.NON_NEGATIVE_INT)
    top_p: float | None = attrs.field(default=None, converter=v.scalar, validator=v.TOP_P)
    temperature: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )
    repeat_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.POSITIVE
    )
    frequency_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.FINITE
    )
    presence_penalty: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.FINITE
    )
    mirostat: int | None = attrs.field(default=None, converter=v.scalar, validator=v.MIROSTAT)
    mirostat_tau: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )
    mirostat_eta: float | None = attrs.field(
        default=None, converter=v.scalar, validator=v.NON_NEGATIVE
    )


@attrs.frozen(kw_only=True)
class PromptCache:
    """``RKLLMPromptCacheParam``: save this run's prefill to ``path``."""

    path: str = attrs.field(converter=v.path)
    save: bool = attrs.field(default=True, converter=v.scalar, validator=v.opt_bool)


@attrs.frozen(kw_only=True)
class InferOptions:
    """``RKLLMInferParam``: what one run does.

    ``max_new_tokens`` and ``sampling`` are runtime 1.3 per-run overrides.
    """

    mode: InferMode = attrs.field(default=InferMode.GENERATE, converter=InferMode)
    lora: str | None = attrs.field(default=None, validator=v.opt_text)
    prompt_cache: PromptCache | None = attrs.field(
        default=None, validator=v.instance_of(PromptCache, "rk.PromptCache(path=...)")
    )
    # A dict is refused, not converted: one spelling (typed, checked) for every entry point.
    sampling: Sampling | None = attrs.field(
        default=None, validator=v.instance_of(Sampling, "build it with rk.Sampling(**values)")
    )  # 1.3 only
    keep_history: bool = attrs.field(default=False, converter=v.scalar, validator=v.opt_bool)
    max_new_tokens: int | None = attrs.field(
        default=None, converter=v.scalar, validator=v.opt_int(lambda x: x > 0, "> 0")
    )  # 1.3


@attrs.frozen(kw_only=True)
class CrossAttention:
    """``RKLLMCrossAttnParam``: encoder K / V caches, mask and positions, checked together.

    Shapes: ``k_cache [num_layers, num_tokens, num_kv_heads, head_dim]``,
    ``v_cache [num_layers, num_kv_heads, head_dim, num_tokens]``, ``mask [num_tokens]``
    (float32), ``positions [num_tokens]`` (int32).
    """

    k_cache: FloatArray = attrs.field(eq=False, repr=v.array_repr)
    v_cache: FloatArray = attrs.field(eq=False, repr=v.array_repr)
    mask: FloatArray = attrs.field(eq=False, repr=v.array_repr)
    positions: IntArray = attrs.field(eq=False, repr=v.array_repr)

    def __attrs_post_init__(self) -> None:
        checked = arrays.cross_attention(self.k_cache, self.v_cache, self.mask, self.positions)
        for name, value in checked._asdict().items():
            object.__setattr__(self, name, value)  # frozen: store the converted arrays once

    @property
    def num_tokens(self) -> int:
        """The encoder's token count (length of mask and positions)."""
        return int(self.mask.shape[0])


# ---- results ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Result:
    """One batch entry of one result callback (``RKLLMResult``), copied out of the runtime.

    ``text`` is the raw bytes of the token (``None`` when the runtime gave NULL); it may end
    inside a UTF-8 character (state ``WAITING``). ``logits`` is ``[num_tokens, vocab_size]``
    and ``hidden_states`` ``[num_tokens, embd_size]`` when the run's mode asked for them.
    """

    text: bytes | None
    token_id: int
    logits: FloatArray | None = attrs.field(default=None, eq=False, repr=v.array_repr)
    hidden_states: FloatArray | None = attrs.field(default=None, eq=False, repr=v.array_repr)
    perf: PerfStats | None = None
