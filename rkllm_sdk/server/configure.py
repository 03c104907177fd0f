"""The runtime's configuration functions as JSON-RPC methods: LoRA adapters, prompt caches,
the KV cache, chat templates, function tools, cross attention (runs and handles are in
:mod:`.functions`)."""

from __future__ import annotations

from typing import Any

from ..models import LoraAdapter
from .functions import EMPTY, HANDLE_ONLY, owned_entry
from .params import CROSS_ATTN, HANDLE, LORA_ADAPTER, cross_model
from .registry import REGISTRY, Call
from .schema import boolean, integer, nullable, obj, string
from .sessions import confine
from .wire import ParamsError

__all__: list[str] = []


@REGISTRY.method(
    "rkllm_load_lora",
    "Load a LoRA adapter (path inside --models-dir); runs select it by name.",
    params=obj({"handle": HANDLE, "lora_adapter": LORA_ADAPTER}, "handle", "lora_adapter"),
    result=EMPTY,
)
async def rkllm_load_lora(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    entry = owned_entry(call, params)
    lora = params["lora_adapter"]
    where = "lora_adapter.lora_adapter_path"
    path = confine(lora["lora_adapter_path"], entry_config(call).models_dir, where)
    try:
        adapter = LoraAdapter(
            path=path, name=lora["lora_adapter_name"], scale=lora.get("scale", 1.0)
        )
    except ValueError as exc:
        raise ParamsError("lora_adapter", str(exc)) from None
    await entry.llm.load_lora(adapter)
    return {}


def entry_config(call: Call) -> Any:
    """The server's configuration."""
    return call.connection.sessions.config


@REGISTRY.method(
    "rkllm_load_prompt_cache",
    "Load a prompt cache (path inside --cache-dir).",
    params=obj({"handle": HANDLE, "prompt_cache_path": string()}, "handle", "prompt_cache_path"),
    result=EMPTY,
)
async def rkllm_load_prompt_cache(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    entry = owned_entry(call, params)
    path = confine(
        params["prompt_cache_path"], entry_config(call).prompt_cache_dir, "prompt_cache_path"
    )
    await entry.llm.load_prompt_cache(path)
    return {}


@REGISTRY.method(
    "rkllm_release_prompt_cache",
    "Release the loaded prompt cache.",
    params=HANDLE_ONLY,
    result=EMPTY,
)
async def rkllm_release_prompt_cache(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    await owned_entry(call, params).llm.release_prompt_cache()
    return {}


_POSITIONS = nullable({"type": "array", "items": integer(0), "maxItems": 8})


@REGISTRY.method(
    "rkllm_clear_kv_cache",
    "Clear the KV cache (keeping the system prompt if asked), or [start_pos, end_pos) "
    "ranges, one per batch entry.",
    params=obj(
        {
            "handle": HANDLE,
            "keep_system_prompt": boolean(),
            "start_pos": _POSITIONS,
            "end_pos": _POSITIONS,
        },
        "handle",
    ),
    result=EMPTY,
)
async def rkllm_clear_kv_cache(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    entry = owned_entry(call, params)
    start, end = params.get("start_pos"), params.get("end_pos")
    if (start is None) != (end is None) or (start is not None and len(start) != len(end or ())):
        raise ParamsError("end_pos", "start_pos and end_pos go together, one entry per batch")
    ranges = list(zip(start, end, strict=True)) if start is not None and end is not None else None
    await entry.llm.clear_kv_cache(
        keep_system_prompt=params.get("keep_system_prompt", False), ranges=ranges
    )
    return {}


@REGISTRY.method(
    "rkllm_get_kv_cache_size",
    "Tokens in the KV cache, one count per batch entry.",
    params=HANDLE_ONLY,
    result=obj({"cache_sizes": {"type": "array", "items": integer(0)}}),
)
async def rkllm_get_kv_cache_size(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"cache_sizes": await owned_entry(call, params).llm.kv_cache_size()}


@REGISTRY.method(
    "rkllm_set_chat_template",
    "Replace the model's chat template.",
    params=obj(
        {"handle": HANDLE, "system_prompt": string(), "prefix": string(), "postfix": string()},
        "handle",
        "system_prompt",
        "prefix",
        "postfix",
    ),
    result=EMPTY,
)
async def rkllm_set_chat_template(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    await owned_entry(call, params).llm.set_chat_template(
        params["system_prompt"], params["prefix"], params["postfix"]
    )
    return {}


@REGISTRY.method(
    "rkllm_set_function_tools",
    "Give the model OpenAI-format tools (a JSON array, or its text).",
    params=obj(
        {
            "handle": HANDLE,
            "system_prompt": string(),
            "tools": {
                "oneOf": [
                    string(),
                    {"type": "array", "items": {"type": "object"}, "maxItems": 256},
                ]
            },
            "tool_response_str": string(max_length=256),
        },
        "handle",
        "system_prompt",
        "tools",
    ),
    result=EMPTY,
)
async def rkllm_set_function_tools(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    await owned_entry(call, params).llm.set_function_tools(
        params["system_prompt"], params["tools"], params.get("tool_response_str", "tool_response")
    )
    return {}


@REGISTRY.method(
    "rkllm_set_cross_attn_params",
    "Set (or clear with null) the cross-attention encoder arrays; the handle keeps them.",
    params=obj({"handle": HANDLE, "cross_attn_params": nullable(CROSS_ATTN)}, "handle"),
    result=EMPTY,
)
async def rkllm_set_cross_attn_params(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    entry = owned_entry(call, params)
    value = params.get("cross_attn_params")
    cross = cross_model(value, "cross_attn_params") if value is not None else None
    await entry.llm.set_cross_attention(cross)
    entry.array_bytes = (
        sum(a.nbytes for a in (cross.k_cache, cross.v_cache, cross.mask, cross.positions))
        if cross is not None
        else 0
    )
    return {}
