"""The conversation agent's tests: only rkllm-sdk's pytest plugin, no board, no mocks.

Each test runs on both runtime ABIs (the plugin's ``rkllm_abi``); the fake runtime plays
the model from a scripted model file.
"""

from __future__ import annotations

import anyio
import pytest
from conversation_agent import (
    MAX_TOOL_ROUNDS,
    SYSTEM_PROMPT,
    ConversationAgent,
    Home,
    NotReadyError,
)

import rkllm_sdk as rk
from rkllm_sdk.testing import Faults, tool_call_reply
from rkllm_sdk.testing.plugin import FakeRuntime

pytestmark = pytest.mark.anyio

KITCHEN_ON = tool_call_reply("set_light", {"entity_id": "light.kitchen", "on": True})


async def test_switches_a_light_and_confirms(rkllm_fake: FakeRuntime) -> None:
    """A tool call switches the light, its result returns as a tool turn, the reply is spoken."""
    home = Home()
    llm = await rkllm_fake.load(
        replies={
            "kitchen light": KITCHEN_ON,
            '"state": "on"': "The kitchen light is on.",  # the model's turn after the tool
        }
    )
    agent = ConversationAgent(llm, home)
    try:
        response = await agent.async_process("Turn on the kitchen light")
        assert response.success and response.speech == "The kitchen light is on."
        assert home.lights == {"light.kitchen": True, "light.living_room": False}
        assert response.actions == (
            {
                "tool": "set_light",
                "arguments": {"entity_id": "light.kitchen", "on": True},
                "result": {"entity_id": "light.kitchen", "state": "on"},
            },
        )
        # The tool's result went back to the model as a tool turn, in the same conversation.
        sent = rkllm_fake.last_input(llm)
        assert sent.input.role == "tool" and sent.keep_history
        assert '"state": "on"' in sent.input.text
    finally:
        await agent.async_close()


async def test_answers_without_tools_and_sends_the_tools_to_the_model(
    rkllm_fake: FakeRuntime,
) -> None:
    """A plain reply is spoken as is; the system prompt and both tools reach the template."""
    llm = await rkllm_fake.load(replies={"weather": "I can only switch lights."})
    agent = ConversationAgent(llm)
    try:
        response = await agent.async_process("What is the weather?")
        assert response.speech == "I can only switch lights." and response.actions == ()
        sent = rkllm_fake.last_input(llm).input
        assert sent.role == "user" and sent.text == "What is the weather?"
        assert SYSTEM_PROMPT in sent.templated
        assert '"name": "set_light"' in sent.templated and '"name": "list_lights"' in sent.templated
    finally:
        await agent.async_close()


async def test_unknown_light_is_reported_to_the_model(rkllm_fake: FakeRuntime) -> None:
    """A call for a light the home lacks changes nothing; its error goes back to the model."""
    home = Home()
    garage = tool_call_reply("set_light", {"entity_id": "light.garage", "on": True})
    llm = await rkllm_fake.load(
        # The tool's error mentions the garage too: the more specific rule comes first.
        replies={"no light called": "There is no garage light.", "garage": garage}
    )
    agent = ConversationAgent(llm, home)
    try:
        response = await agent.async_process("Switch on the garage")
        assert response.speech == "There is no garage light."
        assert not any(home.lights.values())
        assert response.actions[0]["result"]["error"] == "no light called light.garage"
    finally:
        await agent.async_close()


async def test_a_call_that_does_not_fit_the_schema_is_not_executed(
    rkllm_fake: FakeRuntime,
) -> None:
    """A call missing a required argument is not executed; the schema error goes to the model."""
    home = Home()
    bad = tool_call_reply("set_light", {"entity_id": "light.kitchen"})  # "on" is missing
    llm = await rkllm_fake.load(replies={"kitchen": bad, "error": "Sorry, say that again?"})
    agent = ConversationAgent(llm, home)
    try:
        response = await agent.async_process("kitchen")
        assert response.speech == "Sorry, say that again?"
        assert home.lights["light.kitchen"] is False
        assert "on" in response.actions[0]["result"]["error"]
    finally:
        await agent.async_close()


async def test_generation_failure_becomes_an_error_response(rkllm_fake: FakeRuntime) -> None:
    """A runtime failure mid-generation is an unsuccessful response with its JSON-RPC code."""
    llm = await rkllm_fake.load(faults=Faults(error_after=2))
    agent = ConversationAgent(llm)
    try:
        response = await agent.async_process("Hello")
        assert not response.success
        assert response.error_code == rk.jsonrpc_code(rk.GenerationError("x"))
    finally:
        await agent.async_close()


async def test_model_that_cannot_load_is_not_ready(rkllm_fake: FakeRuntime) -> None:
    """async_setup on a model the runtime refuses to load raises NotReadyError."""
    path = rkllm_fake.model(faults=Faults(init_fail=-1))
    with pytest.raises(NotReadyError):
        await ConversationAgent.async_setup(path, runtime="fake", abi=rkllm_fake.abi)


async def test_setup_and_close(rkllm_fake: FakeRuntime) -> None:
    """async_setup loads the model and answers; async_close closes the handle."""
    path = rkllm_fake.model(replies={"hi": "Hello."})
    agent = await ConversationAgent.async_setup(path, runtime="fake", abi=rkllm_fake.abi)
    assert (await agent.async_process("hi")).speech == "Hello."
    await agent.async_close()
    assert agent.llm.closed


async def test_cancelled_utterance_leaves_the_agent_usable(rkllm_fake: FakeRuntime) -> None:
    """Cancelling an utterance aborts the run on the NPU and the agent answers the next one."""
    # A slow model that would talk for seconds; the caller gives up after 0.2 s.
    llm = await rkllm_fake.load(decode_ms=20, replies={"story": "Once " * 300, "quick": "Done."})
    agent = ConversationAgent(llm)
    try:
        with anyio.move_on_after(0.2) as scope:
            await agent.async_process("tell me a long story")
        assert scope.cancelled_caught
        assert not llm.is_running()  # the run was aborted on the NPU, not left going
        response = await agent.async_process("quick")
        assert response.speech == "Done."
    finally:
        await agent.async_close()


async def test_a_model_that_keeps_calling_tools_is_stopped(rkllm_fake: FakeRuntime) -> None:
    """A model calling tools on every turn is stopped after MAX_TOOL_ROUNDS, unsuccessfully."""
    # Every turn (the tool results included) asks for the tool again.
    llm = await rkllm_fake.load(replies={"kitchen": KITCHEN_ON})
    agent = ConversationAgent(llm)
    try:
        response = await agent.async_process("kitchen light")
        assert not response.success and len(response.actions) == MAX_TOOL_ROUNDS
    finally:
        await agent.async_close()
