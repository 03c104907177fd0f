"""An unscripted fake model calls a tool through the chat engine: the engine renders the
tools into the prompt text itself (the runtime's template and tools switched off), and the
fake reads them from that text's <tools> block (fake_runtime/README.md, rule 3)."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest

from rkllm_sdk import ModelParams
from rkllm_sdk.server.catalog import ModelCatalog
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.chat_types import ChatDone, ChatRequest
from rkllm_sdk.server.model_specs import ModelSpec
from rkllm_sdk.testing import FakeModel, last_input

from .conftest import DEADLINE_S

pytestmark = pytest.mark.anyio

LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Switch a light.",
        "parameters": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
        },
    },
}


async def _done(engine: ChatEngine, req: ChatRequest) -> ChatDone:
    with anyio.fail_after(DEADLINE_S):
        async with aclosing(engine.chat(req)) as it:
            items = [item async for item in it]
    assert isinstance(items[-1], ChatDone)
    return items[-1]


async def test_an_unscripted_fake_model_answers_a_tool_naming_question_with_a_call(
    tmp_path: Path, abi: str
) -> None:
    """No script, no rkllm_set_function_tools: the question naming set_light gets a
    set_light call (finish_reason "tool_calls"); one naming no tool gets text."""
    path = FakeModel().write(tmp_path / "m.json")
    spec = ModelSpec(
        name="m:latest", path=path, params=ModelParams(max_context_len=2048), template="qwen2.5"
    )
    catalog = ModelCatalog([spec], runtime="fake", abi=abi, cache_dir=tmp_path / "cache")
    async with catalog.lifespan():
        engine = ChatEngine(catalog)
        messages: tuple[dict[str, Any], ...] = (
            {"role": "user", "content": "Please use set_light to switch the kitchen on."},
        )
        done = await _done(engine, ChatRequest(model="m", messages=messages, tools=(LIGHT_TOOL,)))
        assert done.finish_reason == "tool_calls"
        assert [(c.name, c.arguments) for c in done.tool_calls] == [("set_light", {"on": True})]
        async with catalog.use("m") as loaded:
            sent = last_input(loaded.llm).input.text
        assert "<tools>" in sent  # the tools went in the prompt text, not through the runtime

        plain = ({"role": "user", "content": "How are you today?"},)
        other = await _done(engine, ChatRequest(model="m", messages=plain, tools=(LIGHT_TOOL,)))
        assert other.finish_reason == "stop" and other.tool_calls == () and other.content
