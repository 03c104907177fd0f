"""The C structs as JSON Schema, and their conversion to the SDK's models.

Keys are the C field names of ``rkllm.h`` (``RKLLMParam``, ``RKLLMInput``,
``RKLLMInferParam``, ...); enums go by C name or number. The schemas here are validated by
:mod:`.schema` (which also decodes arrays); the ``*_model`` functions then build the SDK's
attrs models, whose own checks name the field on failure.
"""

from __future__ import annotations

from typing import Any

from ..models import (
    CrossAttention,
    EmbedInput,
    ExtendParams,
    ImageInput,
    Input,
    InputType,
    ModelParams,
    MultimodalInput,
    Prompt,
    Sampling,
    TokenInput,
    VideoInput,
)
from .schema import (
    Schema,
    boolean,
    enum,
    integer,
    ndarray,
    nullable,
    number,
    obj,
    string,
)
from .wire import ParamsError

__all__ = [
    "CROSS_ATTN",
    "HANDLE",
    "INFER_PARAM",
    "INPUT",
    "LORA_ADAPTER",
    "RKLLM_PARAM",
    "cross_model",
    "input_models",
    "param_json",
    "param_model",
    "sampling_model",
]

SIZE = (0, 2**63 - 1)
HANDLE = string("an opaque handle returned by rkllm_init", max_length=64)

_SAMPLING_FIELDS: dict[str, Schema] = {
    "top_k": integer(0),
    "top_p": number(),
    "temperature": number(),
    "repeat_penalty": number(),
    "frequency_penalty": number(),
    "presence_penalty": number(),
    "mirostat": integer(0, 2),
    "mirostat_tau": number(),
    "mirostat_eta": number(),
}

EXTEND_PARAM = obj(
    {
        "base_domain_id": integer(0),
        "embed_flash": boolean(),
        "enabled_cpus_num": integer(0, 8, "derived from the mask; checked when given"),
        "enabled_cpus_mask": integer(0, 255, "CPU0 = 1 ... CPU7 = 128"),
        "n_batch": integer(1, 8),
        "use_cross_attn": boolean(),
    },
    description="RKLLMExtendParam",
)

RKLLM_PARAM = obj(
    {
        "model_path": string("model file, relative to --models-dir"),
        "max_context_len": integer(1),
        "max_new_tokens": integer(-1),
        "n_keep": integer(-1),
        **_SAMPLING_FIELDS,
        "skip_special_token": boolean(),
        "is_async": boolean(),
        "ignore_eos_token": boolean("runtime 1.3 only"),
        "img_start": string("runtime 1.2 only"),
        "img_end": string("runtime 1.2 only"),
        "img_content": string("runtime 1.2 only"),
        "extend_param": EXTEND_PARAM,
    },
    description="RKLLMParam",
)

_IMAGE_FIELDS: dict[str, Schema] = {
    "image_embed": ndarray("float32", ["n_image", "n_image_tokens", "embed_dim"]),
    "n_image_tokens": integer(*SIZE),
    "n_image": integer(*SIZE),
    "image_width": integer(*SIZE),
    "image_height": integer(*SIZE),
}
_IMAGE13 = obj(
    {
        **_IMAGE_FIELDS,
        "image_start": string(),
        "image_end": string(),
        "image_content": string(),
    },
    "image_embed",
)
_VIDEO13 = obj(
    {
        "video_embed": ndarray(
            "float32", ["n_video", "n_frame_per_video", "n_frame_tokens", "embed_dim"]
        ),
        "n_frame_tokens": integer(*SIZE),
        "n_frame_per_video": integer(*SIZE),
        "n_video": integer(*SIZE),
        "video_start": string(),
        "video_end": string(),
        "video_content": string(),
        "frame_width": integer(*SIZE),
        "frame_height": integer(*SIZE),
    },
    "video_embed",
)

INPUT = obj(
    {
        "role": string('"user" or "tool"', max_length=256),
        "enable_thinking": boolean(),
        "input_type": enum("RKLLMInputType"),
        "prompt_input": string(),
        "token_input": obj(
            {"input_ids": ndarray("int32", ["n_tokens"]), "n_tokens": integer(*SIZE)},
            "input_ids",
        ),
        "embed_input": obj(
            {"embed": ndarray("float32", ["n_tokens", "embed_dim"]), "n_tokens": integer(*SIZE)},
            "embed",
        ),
        "multimodal_input": obj(
            {
                "prompt": string(),
                **_IMAGE_FIELDS,
                "image": _IMAGE13,
                "video": _VIDEO13,
            },
            "prompt",
            description="1.2 fields flat (image_embed, ...); 1.3 nested (image, video)",
        ),
    },
    "input_type",
    description="RKLLMInput",
)

LORA_ADAPTER = obj(
    {
        "lora_adapter_path": string("relative to --models-dir"),
        "lora_adapter_name": string(max_length=256),
        "scale": number(),
    },
    "lora_adapter_path",
    "lora_adapter_name",
    description="RKLLMLoraAdapter",
)

INFER_PARAM = obj(
    {
        "mode": enum("RKLLMInferMode"),
        "lora_params": nullable(obj({"lora_adapter_name": string()}, "lora_adapter_name")),
        "prompt_cache_params": nullable(
            obj(
                {
                    "save_prompt_cache": boolean(),
                    "prompt_cache_path": string("relative to --cache-dir"),
                },
                "prompt_cache_path",
            )
        ),
        "sampling_params": nullable(obj(_SAMPLING_FIELDS, description="runtime 1.3 only")),
        "keep_history": boolean(),
        "max_new_tokens": integer(0, description="runtime 1.3 only; 0: the init value"),
    },
    description="RKLLMInferParam",
)

CROSS_ATTN = obj(
    {
        "encoder_k_cache": ndarray(
            "float32", ["num_layers", "num_tokens", "num_kv_heads", "head_dim"]
        ),
        "encoder_v_cache": ndarray(
            "float32", ["num_layers", "num_kv_heads", "head_dim", "num_tokens"]
        ),
        "encoder_mask": ndarray("float32", ["num_tokens"]),
        "encoder_pos": ndarray("int32", ["num_tokens"]),
        "num_tokens": integer(1),
    },
    "encoder_k_cache",
    "encoder_v_cache",
    "encoder_mask",
    "encoder_pos",
    description="RKLLMCrossAttnParam",
)

_EXTEND = ("base_domain_id", "embed_flash", "n_batch", "use_cross_attn")
_PLAIN = (
    "max_context_len",
    "max_new_tokens",
    "n_keep",
    *_SAMPLING_FIELDS,
    "skip_special_token",
    "is_async",
    "ignore_eos_token",
    "img_start",
    "img_end",
    "img_content",
)


def _model(path: str, cls: Any, **fields: Any) -> Any:
    """``cls(**fields)``, its InvalidParamsError re-raised with the field's path."""
    try:
        return cls(**fields)
    except ValueError as exc:  # InvalidParamsError is a ValueError
        raise ParamsError(path, str(exc)) from None


def param_model(param: dict[str, Any], path: str) -> ModelParams:
    """``RKLLMParam`` (validated JSON, without model_path) as :class:`ModelParams`."""
    ext = param.get("extend_param", {})
    mask = ext.get("enabled_cpus_mask") or None
    if "enabled_cpus_num" in ext and ext["enabled_cpus_num"] != (mask or 0).bit_count():
        raise ParamsError(
            f"{path}.extend_param.enabled_cpus_num", "must equal the bits set in the mask"
        )
    extend = _model(
        f"{path}.extend_param",
        ExtendParams,
        enabled_cpus=mask,
        **{k: ext[k] for k in _EXTEND if k in ext},
    )
    fields = {k: param[k] for k in _PLAIN if k in param}
    return _model(path, ModelParams, extend=extend, **fields)  # type: ignore[no-any-return]


def param_json(params: ModelParams) -> dict[str, Any]:
    """:class:`ModelParams` as ``RKLLMParam`` JSON (fields this ABI lacks left out)."""
    out: dict[str, Any] = {"model_path": None}
    out.update({k: getattr(params, k) for k in _PLAIN if getattr(params, k) is not None})
    e = params.extend
    mask = e.enabled_cpus_mask or 0
    out["extend_param"] = {
        "base_domain_id": e.base_domain_id,
        "embed_flash": e.embed_flash,
        "enabled_cpus_num": mask.bit_count(),
        "enabled_cpus_mask": mask,
        "n_batch": e.n_batch,
        "use_cross_attn": e.use_cross_attn,
    }
    return out


def sampling_model(fields: dict[str, Any], path: str) -> Sampling:
    """``RKLLMSamplingParam`` as :class:`Sampling`."""
    return _model(path, Sampling, **fields)  # type: ignore[no-any-return]


def _one_input(item: dict[str, Any], path: str) -> Input:
    kind = InputType(item["input_type"])
    common = {
        "role": item.get("role", "user"),
        "enable_thinking": item.get("enable_thinking", False),
    }
    key = {
        InputType.PROMPT: "prompt_input",
        InputType.TOKEN: "token_input",
        InputType.EMBED: "embed_input",
        InputType.MULTIMODAL: "multimodal_input",
    }[kind]
    if key not in item:
        raise ParamsError(f"{path}.{key}", f"required for RKLLM_INPUT_{kind.name}")
    body = item[key]
    where = f"{path}.{key}"
    if kind is InputType.PROMPT:
        return _model(path, Prompt, text=body, **common)  # type: ignore[no-any-return]
    if kind is InputType.TOKEN:
        ids = body["input_ids"]
        _check_count(body, "n_tokens", ids.shape[0], where)
        return _model(f"{where}.input_ids", TokenInput, ids=ids, **common)  # type: ignore[no-any-return]
    if kind is InputType.EMBED:
        embed = body["embed"]
        _check_count(body, "n_tokens", embed.shape[0], where)
        return _model(f"{where}.embed", EmbedInput, embeddings=embed, **common)  # type: ignore[no-any-return]
    image = video = None
    flat = body.get("image_embed")
    nested = body.get("image")
    if flat is not None and nested is not None:
        raise ParamsError(f"{where}.image", "give image_embed (1.2) or image (1.3), not both")
    if flat is not None or nested is not None:
        src, at = (body, where) if flat is not None else (nested, f"{where}.image")
        assert src is not None
        emb = src["image_embed"]
        _check_count(src, "n_image", emb.shape[0], at)
        _check_count(src, "n_image_tokens", emb.shape[1], at)
        image = _model(
            at,
            ImageInput,
            embeddings=emb,
            width=src.get("image_width", 0),
            height=src.get("image_height", 0),
            start=src.get("image_start"),
            end=src.get("image_end"),
            content=src.get("image_content"),
        )
    if "video" in body:
        v, at = body["video"], f"{where}.video"
        emb = v["video_embed"]
        for name, axis in (("n_video", 0), ("n_frame_per_video", 1), ("n_frame_tokens", 2)):
            _check_count(v, name, emb.shape[axis], at)
        video = _model(
            at,
            VideoInput,
            embeddings=emb,
            frame_width=v.get("frame_width", 0),
            frame_height=v.get("frame_height", 0),
            start=v.get("video_start"),
            end=v.get("video_end"),
            content=v.get("video_content"),
        )
    return _model(  # type: ignore[no-any-return]
        where, MultimodalInput, prompt=body["prompt"], image=image, video=video, **common
    )


def _check_count(body: dict[str, Any], name: str, actual: int, path: str) -> None:
    if name in body and body[name] != actual:
        raise ParamsError(f"{path}.{name}", f"is {body[name]}, the array has {actual}")


def input_models(value: dict[str, Any] | list[dict[str, Any]], path: str) -> list[Input]:
    """``rkllm_input`` (one ``RKLLMInput`` or one per batch entry) as input models."""
    if isinstance(value, dict):
        return [_one_input(value, path)]
    if not value:
        raise ParamsError(path, "a batch needs at least one input")
    return [_one_input(item, f"{path}[{i}]") for i, item in enumerate(value)]


def cross_model(value: dict[str, Any], path: str) -> CrossAttention:
    """``RKLLMCrossAttnParam`` as :class:`CrossAttention`."""
    _check_count(value, "num_tokens", value["encoder_mask"].shape[0], path)
    return _model(  # type: ignore[no-any-return]
        path,
        CrossAttention,
        k_cache=value["encoder_k_cache"],
        v_cache=value["encoder_v_cache"],
        mask=value["encoder_mask"],
        positions=value["encoder_pos"],
    )
