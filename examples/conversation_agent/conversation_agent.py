"""A Home Assistant style conversation agent on rkllm-sdk: chat + tools switch lights.

The shape follows Home Assistant's conversation agents: the integration creates the agent
once (``async_setup``), calls ``async_process(text)`` for every utterance from the event
loop, and ``async_close`` on unload. Nothing here blocks the loop: the SDK loads the model
in a worker thread and streams tokens through its C bridge.

The lights are simulated (:class:`Home`); a real integration would call its services.
Errors are mapped the way an integration would: a model that cannot be loaded is "not
ready" (retry later), a failed generation is an error response, never an exception into
the event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs

import rkllm_sdk as rk

SYSTEM_PROMPT = (
    "You are a voice assistant for a home. Use the tools to switch lights; "
    "answer in one short sentence."
)
MAX_TOOL_ROUNDS = 3  # model -> tools -> model ... at most this many times per utterance


@attrs.define
class Home:
    """Simulated lights: entity id -> on / off."""

    lights: dict[str, bool] = attrs.field(
        factory=lambda: {"light.kitchen": False, "light.living_room": False}
    )

    def set_light(self, entity_id: str, on: bool) -> dict[str, Any]:
        """Switch a light on or off."""
        if entity_id not in self.lights:
            return {"error": f"no light called {entity_id}", "known": sorted(self.lights)}
        self.lights[entity_id] = on
        return {"entity_id": entity_id, "state": "on" if on else "off"}

    def list_lights(self) -> dict[str, str]:
        """Every light and its state."""
        return {name: "on" if on else "off" for name, on in self.lights.items()}


@attrs.frozen(kw_only=True)
class AgentResponse:
    """What the agent says back (Home Assistant's intent response, reduced).

    Attributes:
        speech: the text to say.
        success: False when the agent could not do what was asked.
        error_code: the SDK error's JSON-RPC code when something failed.
        actions: the tool calls executed, in order, with their results.
    """

    speech: str
    success: bool = True
    error_code: int | None = None
    actions: tuple[dict[str, Any], ...] = ()


class NotReadyError(Exception):
    """The model could not be loaded now (Home Assistant: ConfigEntryNotReady)."""


class ConversationAgent:
    """One model, one conversation; ``async_process`` answers an utterance."""

    def __init__(self, llm: rk.AsyncLLM, home: Home | None = None) -> None:
        self.llm = llm
        self.home = home or Home()
        self._tools: dict[str, Callable[..., Any]] = {
            "set_light": self.home.set_light,
            "list_lights": self.home.list_lights,
        }
        self.chat = llm.chat(system=SYSTEM_PROMPT, tools=list(self._tools.values()))

    @classmethod
    async def async_setup(
        cls,
        model_path: str | os.PathLike[str],
        *,
        runtime: str | os.PathLike[str] | None = None,
        abi: str | None = None,
        home: Home | None = None,
    ) -> ConversationAgent:
        """Load the model (in a worker thread); NotReadyError when that fails."""
        try:
            llm = await rk.AsyncLLM.load(model_path, runtime=runtime, abi=abi)
        except (rk.RuntimeNotFoundError, rk.RuntimeVersionError, rk.ModelLoadError) as exc:
            raise NotReadyError(str(exc)) from exc
        return cls(llm, home)

    async def async_close(self) -> None:
        """Stop anything running and release the model."""
        await self.llm.aclose()

    async def async_process(self, text: str) -> AgentResponse:
        """Answer one utterance, running the tools the model asks for."""
        actions: list[dict[str, Any]] = []
        try:
            reply = await self.chat.send(text)
            for _ in range(MAX_TOOL_ROUNDS):
                if not reply.tool_calls:
                    break
                results = {}
                for call in reply.tool_calls:
                    result = self._run_tool(call)
                    actions.append({"tool": call.name, "arguments": call.arguments, **result})
                    results[call.id] = result
                reply = await self.chat.send_tool_results(results)
            else:
                if reply.tool_calls:  # still asking for tools: give up rather than loop
                    return AgentResponse(
                        speech="Sorry, I could not finish that.",
                        success=False,
                        actions=tuple(actions),
                    )
        except rk.RKLLMError as exc:
            return AgentResponse(
                speech="Sorry, I could not do that.",
                success=False,
                error_code=rk.jsonrpc_code(exc),
                actions=tuple(actions),
            )
        return AgentResponse(speech=reply.text.strip(), actions=tuple(actions))

    def _run_tool(self, call: rk.ToolCall) -> dict[str, Any]:
        if call.error is not None:  # not a known tool, or arguments that do not fit
            return {"result": {"error": call.error}}
        result = self._tools[call.name](**call.arguments)
        return {"result": json.loads(json.dumps(result))}

    async def async_reset(self) -> None:
        """Forget the conversation (a new dialogue)."""
        await self.chat.reset()
