"""Chat sessions, thinking, and tool calls.

A :class:`ChatSession` keeps the conversation in the runtime's KV cache (``keep_history``),
so each turn sends only the new message. Replies are split into the model's thinking
(``<think>...</think>``), its answer, and its tool calls (``<tool_call>{json}</tool_call>``,
the format the runtime's function calling produces), with the JSON repaired when a small
model gets it slightly wrong and checked against the tool's schema.

Tools are OpenAI-format dicts or plain typed Python functions::

    def set_light(entity_id: str, brightness: int = 255) -> None:
        '''Switch a light on.'''

    chat = llm.chat(system="You control a home.", tools=[set_light])
    reply = await chat.send("Turn on the kitchen light")
    for call in reply.tool_calls:
        result = run(call.name, call.arguments)
    reply = await chat.send_tool_results({reply.tool_calls[0].id: result})
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import attrs

from . import _handle
from . import _native as native
from ._handle import HandleCore
from .errors import InvalidParamsError
from .options import TurnOptions
from .results import FinishReason, Generation, ToolCall
from .stream import TokenStream, open_stream
from .tools import ToolLike, parse_tool_calls, split_thinking, tool_dicts

__all__ = ["ChatReply", "ChatSession"]


@attrs.frozen(kw_only=True)
class ChatReply:
    """One assistant turn, split up.

    Attributes:
        text: the answer, without the thinking and the tool-call blocks.
        thinking: what the model wrote inside ``<think>...</think>`` ("" if nothing).
        tool_calls: the tool calls, in order.
        finish_reason: "tool_calls" when there are tool calls, else the run's reason.
        generation: the underlying :class:`Generation` (raw text, tokens, perf).
    """

    text: str
    thinking: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    generation: Generation


# ---- sessions -----------------------------------------------------------------------------

#: The chat template used to give a system prompt when no tools are set (ChatML, the
#: format of the Qwen models RKLLM is mostly used with). Pass ``template=`` otherwise.
CHATML = _handle.CHATML


class ChatSession:
    """A conversation on one handle, its history kept in the KV cache. See ``llm.chat()``."""

    def __init__(
        self,
        core: HandleCore,
        *,
        system: str | None = None,
        tools: Sequence[ToolLike] = (),
        thinking: bool = False,
        template: tuple[str, str, str] | None = None,
        tool_response_str: str = "tool_response",
    ) -> None:
        """Internal: use ``llm.chat(...)``."""
        self._core = core
        self.system = system
        self.tools = tool_dicts(tools)
        self.thinking = thinking
        self._template = template
        self._tool_response = tool_response_str
        #: True once a turn began after something else used the handle's KV cache (a plain
        #: run, another session, ``clear_kv_cache``): the model no longer saw the earlier
        #: turns; ``turns`` still lists them.
        self.history_lost = False
        self.turns: list[ChatReply] = []

    async def _configure(self) -> None:
        # Runs inside the turn's hold on the handle, so nothing can run in between. Another
        # session's template / tools, or a plain run, may have been on the handle since the
        # last turn: this session's are put back, and a KV cache that no longer holds this
        # conversation is noticed (``history_lost``) and cleared.
        tools = template = None
        if self.tools:
            tools = (self.system or "", self.tools, self._tool_response)
        elif self.system is not None or self._template is not None:
            system, prefix, postfix = self._template or CHATML
            template = (system.format(system=self.system or ""), prefix, postfix)
        core = self._core
        changed = await core.configure(self, template=template, tools=tools)
        if changed or core.history_owner is not self:
            if self.turns:
                self.history_lost = True
            await core.call_held(native.clear_kv_cache)
            core.history_owner = self

    def reply_from(self, generation: Generation) -> ChatReply:
        """Split a finished turn's :class:`Generation` into a :class:`ChatReply`.

        >>> reply = chat.reply_from(s.result())  # doctest: +SKIP
        """
        thinking, rest = split_thinking(generation.text)
        text, calls = parse_tool_calls(rest, self.tools or None)
        reason = (
            "tool_calls"
            if calls and generation.finish_reason == "stop"
            else generation.finish_reason
        )
        reply = ChatReply(
            text=text,
            thinking=thinking,
            tool_calls=tuple(calls),
            finish_reason=reason,
            generation=generation,
        )
        self.turns.append(reply)
        return reply

    def stream(
        self, text: str, *, role: str = "user", **options: Unpack[TurnOptions]
    ) -> TokenStream:
        """The next turn as a :class:`TokenStream`, used like ``llm.stream()``; then
        ``reply_from(s.result())`` splits it into a :class:`ChatReply`.

        >>> async with chat.stream("Hi") as s: ...  # doctest: +SKIP
        """
        return open_stream(
            self._core,
            text,
            setup=self._configure,
            role=role,
            thinking=self.thinking,
            keep_history=True,
            **options,
        )

    async def send(self, text: str, **options: Unpack[TurnOptions]) -> ChatReply:
        """Send a user message and return the assistant's reply.

        >>> (await chat.send("Turn on the kitchen light")).tool_calls  # doctest: +SKIP
        """
        async with self.stream(text, **options) as s:
            return self.reply_from(await s.final())

    async def send_tool_results(
        self, results: Mapping[str, Any] | Sequence[Any], **options: Unpack[TurnOptions]
    ) -> ChatReply:
        """Send tool results back: ``{call id or name: result}``, or a list in call order.

        >>> await chat.send_tool_results({call.id: {"ok": True}})  # doctest: +SKIP
        """
        if isinstance(results, Mapping):
            payload = [{"id": key, "result": value} for key, value in results.items()]
        else:
            payload = [{"result": value} for value in results]
        try:
            text = json.dumps(
                payload if len(payload) != 1 else payload[0]["result"], ensure_ascii=False
            )
        except (TypeError, ValueError) as exc:
            raise InvalidParamsError(f"tool results are not JSON-serialisable: {exc}") from None
        async with self.stream(text, role="tool", **options) as s:
            return self.reply_from(await s.final())

    async def reset(self) -> None:
        """Forget the conversation (the system prompt and tools stay).

        >>> await chat.reset()  # doctest: +SKIP
        """
        await self._core.call(native.clear_kv_cache)
        self.turns.clear()
