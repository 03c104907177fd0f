"""MCP's tools: their definitions, and each call served through the registry or the engine.

- ``generate`` and ``chat``: a named model of the catalog, through the
  :class:`~.chat_engine.ChatEngine` the OpenAI and Ollama faces use (:func:`call_chat`).
- one tool per registry method (``rkllm_init``, ``rkllm_run``, ..., ``stats``), named as the
  method but for a dot (``rpc_discover``: :func:`tool_name`), whose ``inputSchema`` is the
  method's params schema; the call goes through
  :meth:`.jsonrpc.Server.handle_message` (:func:`call_method`), so validation, error codes
  and data, metrics and the request log are the proxy's own.

A failed call is a tool result with ``isError`` whose ``structuredContent`` is the
JSON-RPC error object the proxy would have answered (``code``, ``message``, ``data``).

Streaming: every chunk of a run goes out as a ``notifications/progress`` as soon as it is
produced (``message``: the new text; ``progress``: tokens generated so far; for
``generate`` and ``chat`` the engine's count, :attr:`~.chat_types.ChatDelta.tokens`: text
held back at a possible stop string comes with a later token); the result then holds the
whole text, finish reason and perf.

The MCP server itself (transports, handle ownership, resources) is :mod:`.mcp_server`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import anyio
from mcp import types
from mcp.server.session import ServerSession

from ..errors import ERROR_CODES, BusyError, RKLLMError, jsonrpc_code
from .catalog import ModelNotFoundError, QueueFullError
from .chat_types import ChatDone, ChatRequest, RequestError
from .http_sessions import SessionError
from .jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Server
from .outbox import Outbox, dumps
from .registry import Peer
from .schema import Schema, boolean, integer, number, obj, string, validate
from .templates import TemplateError
from .wire import ParamsError

if TYPE_CHECKING:
    from .chat_engine import ChatEngine

__all__ = [
    "CHAT_SCHEMA",
    "CHAT_TOOL",
    "GENERATE_SCHEMA",
    "GENERATE_TOOL",
    "METHOD_META",
    "Owner",
    "call_chat",
    "call_method",
    "error_result",
    "tool_definitions",
    "tool_name",
]

#: Who serves a registry call: given the call's outbox, a context holding the owner of the
#: handles it creates (the stream connection's, or an HTTP session's).
Owner = Callable[[Outbox], AbstractContextManager[Peer]]

# -- the schemas of generate and chat -------------------------------------------------------

_SAMPLING = obj(
    {
        "temperature": number("0 picks the most likely token"),
        "top_p": number("nucleus sampling, in (0, 1]"),
        "top_k": integer(0, description="sample among the k most likely tokens (0: all)"),
        "repeat_penalty": number("penalty for repeating recent tokens (1: none)"),
        "frequency_penalty": number(),
        "presence_penalty": number(),
        "seed": integer(description="random seed"),
    },
    description="sampling settings (the model's defaults for those left out)",
)
_STOP: Schema = {
    "type": "array",
    "items": string(max_length=256),
    "maxItems": 16,
    "description": "stop when one of these strings is generated (it is not returned)",
}
_COMMON: dict[str, Schema] = {
    "model": string(
        "a model name from rkllm://models (e.g. qwen3 or qwen3:latest)", max_length=256
    ),
    "max_new_tokens": integer(1, description="stop after this many tokens"),
    "sampling": _SAMPLING,
    "thinking": boolean("let a thinking model think (its reasoning is returned apart)"),
    "stop": _STOP,
}
_TOOL_CALL = obj(
    {
        "id": string(max_length=256),
        "type": string(max_length=32),
        "function": obj(
            {
                "name": string(max_length=256),
                "arguments": {
                    "oneOf": [{"type": "object"}, {"type": "string"}],
                    "description": "an object, or its JSON text",
                },
            },
            "name",
        ),
    },
    "function",
)
_MESSAGE = obj(
    {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": string(),
        "tool_calls": {"type": "array", "items": _TOOL_CALL, "maxItems": 64},
        "tool_call_id": string(max_length=256),
        "name": string(max_length=256),
    },
    "role",
)
_ROLES = ("system", "user", "assistant", "tool")

GENERATE_SCHEMA = obj(
    {
        **_COMMON,
        "prompt": string("the user's message"),
        "system": string("a system prompt"),
        "raw": boolean("send the prompt as is, without the model's chat template"),
    },
    "model",
    "prompt",
)
CHAT_SCHEMA = obj(
    {
        **_COMMON,
        "messages": {
            "type": "array",
            "items": _MESSAGE,
            "maxItems": 1024,
            "description": "the conversation, oldest first (roles system, user, assistant, "
            "tool; a tool message answers the assistant's tool call of tool_call_id)",
        },
        "tools": {
            "type": "array",
            "items": {"type": "object"},
            "maxItems": 128,
            "description": "functions the model may call, OpenAI style: "
            '{"type": "function", "function": {"name", "description", "parameters"}}',
        },
        "tool_choice": {
            "oneOf": [{"type": "string"}, {"type": "object"}],
            "description": 'auto, none, required, or {"type": "function", "function": '
            '{"name": ...}}',
        },
    },
    "model",
    "messages",
)

GENERATE_TOOL = types.Tool(
    name="generate",
    title="Generate text",
    description="Generate a reply to one prompt with a named model on the NPU. Returns the "
    "text, the reasoning (thinking models), the finish reason (stop, length), token counts "
    "and timings. With a progress token, the text streams as progress messages.",
    input_schema=GENERATE_SCHEMA,
)
CHAT_TOOL = types.Tool(
    name="chat",
    title="Chat",
    description="Continue a conversation with a named model on the NPU, optionally offering "
    "it tools (OpenAI style). Returns the reply text, its reasoning, the tool calls it made "
    "(finish reason tool_calls), token counts and timings. With a progress token, the text "
    "streams as progress messages.",
    input_schema=CHAT_SCHEMA,
)


#: The ``_meta`` key naming the registry method a tool serves.
METHOD_META = "rkllm/method"


def tool_name(method: str) -> str:
    """The tool of registry method ``method``: its name, with any character outside
    ``[A-Za-z0-9_-]`` as ``_`` (``rpc.discover`` is ``rpc_discover``).

    MCP allows dots in tool names (SEP-986), but strict clients do not (Windsurf refuses
    the tool, GitHub Copilot CLI fails every prompt), nor do the model APIs they pass tools
    on to (OpenAI and Anthropic: ``^[a-zA-Z0-9_-]{1,64}$``).
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", method)


def tool_definitions(server: Server, *, chat: bool = True) -> list[types.Tool]:
    """The tools: ``generate`` and ``chat`` (when ``chat``), then one per registry method
    whose input schema is the method's params schema, unchanged; a tool whose name is not
    its method's (:func:`tool_name`) says which in its description, and every one in its
    ``_meta`` (``rkllm/method``)."""
    tools = [GENERATE_TOOL, CHAT_TOOL] if chat else []
    for m in server.registry.methods.values():
        name = tool_name(m.name)
        note = "" if name == m.name else f" (the proxy's JSON-RPC method {m.name})"
        tools.append(
            types.Tool(
                name=name,
                description=m.summary + note,
                input_schema=m.params,
                _meta={METHOD_META: m.name},
            )
        )
    return tools


# -- results ---------------------------------------------------------------------------------


def _ok(result: dict[str, Any], text: str | None = None) -> types.CallToolResult:
    """A tool result: ``result`` as structured content, and as text (or ``text``)."""
    return types.CallToolResult(
        content=[types.TextContent(text=dumps(result) if text is None else text)],
        structured_content=result,
    )


def _failed(error: Mapping[str, Any]) -> types.CallToolResult:
    """An ``isError`` result holding a JSON-RPC error object (code, message, data)."""
    return types.CallToolResult(
        content=[types.TextContent(text=dumps(error))],
        structured_content=dict(error),
        is_error=True,
    )


def error_result(code: int, message: str, data: dict[str, Any]) -> types.CallToolResult:
    """An ``isError`` result holding the JSON-RPC error ``code``, ``message``, ``data``."""
    return _failed({"code": code, "message": message, "data": data})


# -- calls -----------------------------------------------------------------------------------


async def call_method(
    server: Server,
    session: ServerSession,
    request_id: int | str | None,
    name: str,
    arguments: dict[str, Any],
    owner: Owner,
) -> types.CallToolResult:
    """Registry method ``name``, dispatched as the proxy does; its ``rkllm_result``
    notifications become progress notifications."""
    outbox = Outbox(server.config.outbox_size)
    request_id = request_id if request_id is not None else 0
    message = {"jsonrpc": "2.0", "id": request_id, "method": name, "params": arguments}

    async def progress() -> None:
        tokens = 0
        while True:
            try:
                note = json.loads(await outbox.get())["params"]
            except anyio.EndOfStream:
                return
            tokens += max(1, len(note.get("token_ids") or ()))
            await session.report_progress(tokens, None, note.get("text", ""))

    try:
        with owner(outbox) as peer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(progress)
                try:
                    reply = await server.handle_message(peer, message)
                finally:
                    outbox.close()
    except SessionError as exc:  # as POST /rpc: a bad name is the client's, else busy
        code = INVALID_REQUEST if exc.status == 400 else ERROR_CODES[BusyError].jsonrpc
        return error_result(code, str(exc), {"function": name})
    assert reply is not None  # a request (it has an id) always gets a response
    if "error" in reply:
        return _failed(reply["error"])
    return _ok(reply["result"])


async def call_chat(
    engine: ChatEngine, session: ServerSession, name: str, arguments: dict[str, Any]
) -> types.CallToolResult:
    """``generate`` or ``chat`` through the engine; the text streams as progress."""
    try:
        request = _chat_request(name, arguments)
    except ParamsError as exc:
        data = {"type": "InvalidParamsError", "path": exc.path, "function": name}
        return error_result(INVALID_PARAMS, f"Invalid params: {exc}", data)
    done: ChatDone | None = None
    tokens = reported = 0
    text = ""
    try:
        async with contextlib.aclosing(engine.chat(request)) as events:
            async for event in events:
                if isinstance(event, ChatDone):
                    done = event
                    continue
                tokens += event.tokens
                text += event.reasoning + event.content
                # Progress must increase: text of a delta that counts no token (another
                # of the same chunk follows at once) goes with the next one.
                if text and tokens > reported:
                    await session.report_progress(tokens, None, text)
                    reported, text = tokens, ""
        if text:  # text counting no token at the very end (not with the runtime's chunks)
            await session.report_progress(max(tokens, reported + 1), None, text)
    except (ModelNotFoundError, QueueFullError, RequestError, TemplateError, RKLLMError) as exc:
        return _engine_error(exc, name)
    if done is None:  # the engine always ends with ChatDone: a bug of ours
        return error_result(INTERNAL_ERROR, "Internal error", {"function": name})
    return _ok(_done_json(done), done.content)


# -- generate / chat arguments ---------------------------------------------------------------


def _tool_call(call: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A tool call of an assistant message in the normalised form (arguments a dict)."""
    function = call["function"]
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ParamsError(f"{path}.function.arguments", "not JSON") from None
        if not isinstance(arguments, dict):
            raise ParamsError(f"{path}.function.arguments", "expected a JSON object")
    return {
        "id": call.get("id", ""),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _messages(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The chat tool's messages, normalised for the engine."""
    if not messages:
        raise ParamsError("messages", "at least one message")
    out = []
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if m["role"] not in _ROLES:
            raise ParamsError(f"{path}.role", f"expected one of {', '.join(_ROLES)}")
        message: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
        if m.get("tool_calls"):
            calls = m["tool_calls"]
            message["tool_calls"] = [
                _tool_call(c, f"{path}.tool_calls[{j}]") for j, c in enumerate(calls)
            ]
        for key in ("tool_call_id", "name"):
            if key in m:
                message[key] = m[key]
        out.append(message)
    return tuple(out)


def _chat_request(name: str, arguments: dict[str, Any]) -> ChatRequest:
    """The engine's request for a ``generate`` or ``chat`` call.

    Raises:
        ParamsError: an argument that does not fit the tool's schema (its path named).
    """
    args = validate(GENERATE_SCHEMA if name == "generate" else CHAT_SCHEMA, arguments, "")
    sampling = args.get("sampling", {})
    common: dict[str, Any] = {
        "model": args["model"],
        "max_tokens": args.get("max_new_tokens"),
        "stop": tuple(args.get("stop", ())),
        "thinking": args.get("thinking"),
        **{k: sampling.get(k) for k in _SAMPLING["properties"]},
    }
    if name == "generate":
        messages: list[dict[str, Any]] = []
        if "system" in args:
            messages.append({"role": "system", "content": args["system"]})
        messages.append({"role": "user", "content": args["prompt"]})
        common["messages"] = tuple(messages)
        common["raw_prompt"] = args["prompt"] if args.get("raw") else None
    else:
        common["messages"] = _messages(args["messages"])
        common["tools"] = tuple(args.get("tools", ()))
        common["tool_choice"] = args.get("tool_choice", "auto")
    return ChatRequest(**common)


def _engine_error(exc: Exception, name: str) -> types.CallToolResult:
    """The error result of a ``generate`` / ``chat`` the engine refused or failed: the
    proxy's codes (-32602 naming the field, BusyError's code for a full queue)."""
    data: dict[str, Any] = {"type": type(exc).__name__, "function": name}
    if isinstance(exc, RKLLMError):
        return error_result(jsonrpc_code(exc), str(exc), {**data, "code": exc.code})
    if isinstance(exc, QueueFullError):
        data["retry_after_s"] = exc.retry_after_s
        return error_result(ERROR_CODES[BusyError].jsonrpc, str(exc), data)
    if isinstance(exc, ModelNotFoundError):
        data["path"] = "model"
    elif isinstance(exc, RequestError):
        data["path"] = _argument(name, exc.field)
    else:  # a template that cannot render these messages
        data["path"] = "messages"
    return error_result(INVALID_PARAMS, str(exc), data)


def _argument(tool: str, field: str) -> str:
    """The ``generate`` / ``chat`` argument holding the engine's request field ``field``:
    ``temperature`` is ``sampling.temperature``; generate's ``messages`` and ``raw_prompt``
    are its ``prompt``."""
    if field in _SAMPLING["properties"]:
        return f"sampling.{field}"
    if tool == "generate" and field in ("messages", "raw_prompt"):
        return "prompt"
    return field


def _done_json(done: ChatDone) -> dict[str, Any]:
    """The structured result of a finished ``generate`` / ``chat``."""
    return {
        "text": done.content,
        "reasoning": done.reasoning,
        "finish_reason": done.finish_reason,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in done.tool_calls
        ],
        "usage": {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "cached_tokens": done.cached_tokens,
        },
        "perf": {
            "load_ms": done.load_ms,
            "prefill_ms": done.prefill_ms,
            "generate_ms": done.generate_ms,
            "total_ms": done.total_ms,
        },
    }
