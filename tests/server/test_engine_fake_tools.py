"""An unscripted fake model calls a tool through the chat engine: the engine renders the
tools into the prompt text itself (the runtime's template and tools switched off), and the
fake reads them from that text's <tools> block (fake_runtime/README.md, rule 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllm_sdk.testing import FakeModel

from .test_chat_engine import LIGHT_TOOL, harness, user

pytestmark = pytest.mark.anyio


async def test_an_unscripted_fake_model_answers_a_tool_naming_question_with_a_call(
    tmp_path: Path, abi: str
) -> None:
    """No script, no rkllm_set_function_tools: the question naming set_light gets a
    set_light call (finish_reason "tool_calls"); one naming no tool gets text."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        question = user("Please use set_light to switch the kitchen on.")
        done = await h.done(question, tools=(LIGHT_TOOL,))
        assert done.finish_reason == "tool_calls"
        assert [(c.name, c.arguments) for c in done.tool_calls] == [("set_light", {"on": True})]
        _, _, run = await h.record()
        assert "<tools>" in run.input.text  # the tools went in the prompt text, not the runtime

        other = await h.done(user("How are you today?"), tools=(LIGHT_TOOL,))
        assert other.finish_reason == "stop" and other.tool_calls == () and other.content
