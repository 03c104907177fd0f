"""MCP on ``rkllm serve``: the board's models and every runtime function as MCP tools.

Built on the official ``mcp`` package's low-level :class:`mcp.server.lowlevel.Server`, not
its ``MCPServer``: the proxy's registry already holds each method's JSON Schema, and here it
becomes the tool's ``inputSchema`` verbatim, while the registry's own validator and handlers
serve the call. ``MCPServer`` derives a tool's schema from a Python signature and validates
with pydantic: every function would be described a second time, differently.

One :class:`McpFace` per process, served by the same process as the proxy, sharing its
:class:`~.jsonrpc.Server` (handles, limits, counters):

- Streamable HTTP at ``/mcp`` on the ``--http`` port (:meth:`McpFace.mount` adds the route and
  the session manager's lifespan to the :class:`~.http.HttpFace`), behind the same API key;
- stdio (:meth:`McpFace.serve_stdio`, ``rkllm serve --mcp-stdio``), what a desktop client
  spawns.

Both protocol revisions the SDK speaks are served, the SDK picking per client: the
handshake era (``initialize``; 2024-11-05 to 2025-11-25; over HTTP an ``Mcp-Session-Id``
session) and the 2026-07-28 per-request envelope (no handshake, no session).

Tools:

- ``generate`` and ``chat``: a named model of the catalog, through the
  :class:`~.chat_engine.ChatEngine` the OpenAI and Ollama faces use.
- one tool per registry method (``rkllm_init``, ``rkllm_run``, ..., ``stats``), named as the
  method but for a dot (``rpc_discover``: :func:`tool_name`), whose ``inputSchema`` is the
  method's params schema; the call goes through
  :meth:`.jsonrpc.Server.handle_message`, so validation, error codes and data, metrics and
  the request log are the proxy's own.

A failed call is a tool result with ``isError`` whose ``structuredContent`` is the
JSON-RPC error object the proxy would have answered (``code``, ``message``, ``data``).

Streaming: when the caller sends a progress token, every chunk of a run goes out as a
``notifications/progress`` as soon as it is produced (``message``: the new text;
``progress``: tokens generated so far; for ``generate`` and ``chat`` the engine's count,
:attr:`~.chat_types.ChatDelta.tokens`: text held back at a possible stop string comes with
a later token); the result then holds the whole text, finish reason and perf.
Cancelling the request cancels the handler, which aborts the run on the NPU.

Who owns the handles a client creates with ``rkllm_init``:

- over a stream (stdio, in-process), the connection: :meth:`mcp.server.lowlevel.Server.run`
  enters the lifespan once per connection, and the lifespan's owner destroys its handles
  when the stream ends, in either protocol era;
- over HTTP, as on ``/rpc``, an HTTP session of :mod:`.http_sessions`: the API key and the
  ``Mcp-Session-Id`` of a handshake-era session (its handles die on ``DELETE /mcp`` or
  after the idle timeout), or, for 2026-07-28 requests which have no session, the
  ``X-RKLLM-Session`` header (``default`` when absent), until idle.

Resources: ``rkllm://models`` (the catalog), ``rkllm://metrics`` (the Prometheus text of
``GET /metrics``) and ``rkllm://openrpc`` (the proxy's OpenRPC document).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import attrs
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server as LowLevelServer
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from .. import metrics
from ..errors import ERROR_CODES, BusyError, RKLLMError, jsonrpc_code
from .catalog import ModelNotFoundError, QueueFullError
from .chat_types import ChatDone, ChatRequest, RequestError
from .http_sessions import SESSION_HEADER, SessionError
from .jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Server
from .outbox import Outbox, dumps
from .registry import Peer
from .schema import Schema, boolean, integer, number, obj, string, validate
from .sessions import Sessions
from .templates import TemplateError
from .transports import FdReader
from .wire import ParamsError

if TYPE_CHECKING:
    from .catalog import ModelCatalog
    from .chat_engine import ChatEngine
    from .http import HttpFace

__all__ = ["CHAT_TOOL", "GENERATE_TOOL", "McpFace", "tool_definitions", "tool_name"]

#: The MCP path on the HTTP port.
MCP_PATH = "/mcp"
_MCP_SESSION_HEADER = "mcp-session-id"
#: The scope key of the event set when an ``/mcp`` request's client disconnects.
_GONE = "rkllm.mcp.client_gone"
_MODELS_URI, _METRICS_URI, _OPENRPC_URI = "rkllm://models", "rkllm://metrics", "rkllm://openrpc"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

_INSTRUCTIONS = (
    "Text generation on a Rockchip NPU (RKLLM runtime). Use `generate` (a prompt) or `chat` "
    "(messages, optional tools) with a model named in the rkllm://models resource. The "
    "rkllm_* tools are the runtime's C functions with the C parameter names (rkllm_init "
    "returns a handle owned by this session; rkllm_destroy it when done). Send a progress "
    "token to receive the text as it is generated."
)

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


def _error(code: int, message: str, data: dict[str, Any]) -> types.CallToolResult:
    return _failed({"code": code, "message": message, "data": data})


# -- who owns the handles --------------------------------------------------------------------

#: The outbox of the request the current task serves (a stream connection's peer).
_OUTBOX: contextvars.ContextVar[Outbox] = contextvars.ContextVar("rkllm_mcp_outbox")


class _StreamPeer:
    """The owner of one stream connection's handles (stdio, in-process); the outbox is the
    current request's."""

    def __init__(self, sessions: Sessions, tasks: anyio.abc.TaskGroup) -> None:
        self.sessions = sessions
        self._tasks = tasks

    @property
    def outbox(self) -> Outbox:
        """The outbox of the request being served."""
        return _OUTBOX.get()

    @outbox.setter
    def outbox(self, value: Outbox) -> None:
        _OUTBOX.set(value)

    @property
    def tasks(self) -> anyio.abc.TaskGroup | None:
        """The lifespan's task group: it drives the connection's ``rkllm_run_async`` runs."""
        return self._tasks


@attrs.frozen
class _State:
    """What the lifespan yields: the connection's owner (unused by HTTP requests)."""

    peer: _StreamPeer


_Context = ServerRequestContext[_State, Any]


def _jsonable(value: Any) -> Any:  # noqa: PLR0911  # one answer per kind of value
    """``value`` (attrs instances, paths, datetimes, containers) as JSON values."""
    if attrs.has(type(value)):
        return {f.name: _jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class _StdinLines:
    """The lines of a file descriptor (without their newline), for the ``mcp`` package's
    stdio server.

    :class:`~.transports.FdReader` reads (a daemon thread, as for the JSON-RPC ``--stdio``):
    a blocked read neither delays a cancellation nor, as a worker thread would, the
    interpreter's exit (SIGTERM while the client is silent). A line longer than
    ``max_bytes`` is dropped as it comes and replaced by an empty one (which the server
    rejects as not JSON): memory stays bounded.
    """

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd = fd
        self.max_bytes = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = bytearray()
        dropping = False
        # Closed when iteration ends: the reader thread's next hand-over fails, it stops.
        async with FdReader(self.fd) as stream:
            while True:
                try:
                    pending += await stream.receive()
                except anyio.EndOfStream:
                    break
                while (end := pending.find(b"\n")) >= 0:
                    too_long = dropping or end > self.max_bytes
                    line = b"" if too_long else bytes(pending[:end])
                    del pending[: end + 1]
                    dropping = False
                    yield line
                if len(pending) > self.max_bytes:
                    pending.clear()
                    dropping = True
        if pending.strip() and not dropping:
            yield bytes(pending)


class _Endpoint:
    """An ASGI callable as a route's endpoint (Starlette serves a function or method
    endpoint as a GET request handler, an object as a raw ASGI app)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class McpFace:
    """The MCP server of one proxy :class:`~.jsonrpc.Server`.

    Args:
        server: the process's dispatcher (its registry's methods become tools).
        engine: runs ``generate`` and ``chat`` (None: those two tools are not offered).
        catalog: the engine's models, for ``rkllm://models``.
        log: called with one line per ``generate`` / ``chat`` call (the registry's tools
            are logged by the server).
    """

    def __init__(
        self,
        server: Server,
        *,
        engine: ChatEngine | None = None,
        catalog: ModelCatalog | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from .. import __version__  # noqa: PLC0415  # reads distribution metadata

        self.server = server
        self.engine = engine
        self.catalog = catalog
        self.log = log
        self.http: HttpFace | None = None
        self._manager: StreamableHTTPSessionManager | None = None
        self.tools = tool_definitions(server, chat=engine is not None)
        self._schemas = {t.name: t.input_schema for t in self.tools}
        self._methods = {tool_name(m): m for m in server.registry.methods}
        #: The MCP server (the ``mcp`` package's low-level one).
        self.mcp: LowLevelServer[_State] = LowLevelServer(
            "rkllm",
            version=__version__,
            title="rkllm: LLMs on the Rockchip NPU",
            instructions=_INSTRUCTIONS,
            lifespan=self._lifespan,
            get_tool_input_schema=self._schemas.get,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
        )

    # -- transports -------------------------------------------------------------------------

    async def serve_stdio(self) -> None:
        """Serve one client on standard input / output until it closes them (or this is
        cancelled: SIGTERM).

        While serving, fd 1 points at stderr (the ``mcp`` package's stdio server claims
        it), so output of the runtime's own cannot corrupt the protocol. Standard input is
        read here by :class:`~.transports.FdReader`'s daemon thread: the package's reader,
        in a worker thread, would keep the process from exiting until the client sent
        another line.
        """
        lines = _StdinLines(sys.stdin.fileno(), self.server.config.max_message_bytes)
        stdin = cast("anyio.AsyncFile[str]", lines)  # it only iterates over the lines
        try:
            async with stdio_server(stdin=stdin) as (read, write):
                await self.mcp.run(read, write, self.mcp.create_initialization_options())
        except* (BrokenPipeError, ConnectionResetError):
            # The client closed its end of standard output (killed mid-stream): the
            # connection is over, as at EOF; its runs were cancelled, its handles freed.
            if self.log is not None:
                self.log("mcp stdio: the client has gone (standard output closed)")

    def mount(self, face: HttpFace, *, dns_rebinding_protection: bool = True) -> None:
        """Serve Streamable HTTP at ``/mcp`` on ``face`` (its API key, its HTTP sessions).

        Args:
            face: the HTTP face of the same server.
            dns_rebinding_protection: accept only loopback ``Host`` and ``Origin`` headers
                (for a server bound to loopback: a web page cannot reach it through a
                rebound DNS name).
        """
        security = None
        if dns_rebinding_protection:
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.http = face
        self._manager = StreamableHTTPSessionManager(
            app=self.mcp,
            security_settings=security,
            session_idle_timeout=face.config.idle_timeout_s,
            max_request_body_size=self.server.config.max_message_bytes,
            max_sessions=face.config.max_sessions,
        )
        routes: list[BaseRoute] = [Route(MCP_PATH, endpoint=_Endpoint(self._asgi))]
        # The session manager runs while the face serves: entered before uvicorn starts,
        # left after it stops (before the face's HTTP sessions, holding the handles, close).
        face.add(routes, lifespan=self._manager.run)

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/mcp``: the API key, then the session manager; a ``DELETE`` (the client ends
        its session) destroys the session's handles."""
        assert self.http is not None and self._manager is not None
        headers = Headers(scope=scope)
        if not self.http.authorized(headers):
            if self.http.log is not None:
                self.http.log(f"http {scope.get('method')} {MCP_PATH} 401 (no or wrong API key)")
            response = JSONResponse(
                {"error": "unauthorized", "message": "send Authorization: Bearer <API key>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
            )
            await response(scope, receive, send)
            return
        # The request's client disconnecting is seen by whoever reads ``receive`` (the SSE
        # response listens for it); the tool call it carries watches this event.
        gone = scope[_GONE] = anyio.Event()

        async def receive_watching() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        await self._manager.handle_request(scope, receive_watching, send)
        session_id = headers.get(_MCP_SESSION_HEADER)
        if scope.get("method") == "DELETE" and session_id:
            with contextlib.suppress(SessionError):
                key = self.http.sessions.key(self.http.config.api_key, f"mcp-{session_id}")
                peer = self.http.sessions.peers.pop(key, None)
                if peer is not None:
                    await self.server.sessions.close_connection(peer)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: LowLevelServer[_State]) -> AsyncIterator[_State]:
        """One connection's (stdio, in-process) owner; its handles die with it."""
        async with anyio.create_task_group() as tg:
            peer = _StreamPeer(self.server.sessions, tg)
            try:
                yield _State(peer)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.server.sessions.close_connection(peer)
                tg.cancel_scope.cancel()

    @contextlib.contextmanager
    def _owner(self, ctx: _Context, outbox: Outbox) -> Iterator[Peer]:
        """The owner serving this request, its messages going to ``outbox``.

        Raises:
            SessionError: a bad ``X-RKLLM-Session``, or too many HTTP sessions.
        """
        request = ctx.request
        if isinstance(request, Request) and self.http is not None:
            session_id = request.headers.get(_MCP_SESSION_HEADER)
            name = f"mcp-{session_id}" if session_id else request.headers.get(SESSION_HEADER)
            key = self.http.sessions.key(self.http.config.api_key, name)
            with self.http.sessions.request(key, outbox) as http_peer:
                yield http_peer
            return
        token = _OUTBOX.set(outbox)
        try:
            yield ctx.lifespan_context.peer
        finally:
            _OUTBOX.reset(token)

    # -- tools ------------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: _Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def _call_tool(
        self, ctx: _Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """A tool call; over HTTP, cancelled when its client disconnects.

        A handshake-era client whose POST stream closes mid-call (it crashed, the network
        dropped) sends no cancellation, and the ``mcp`` package lets the handler run on:
        a run would hold its handle or model to its end, for nobody (no event store here,
        so no client can resume the stream). The call is cancelled as MCP cancellation
        would, which aborts the run.
        """
        name, arguments = params.name, params.arguments or {}
        if name not in self._schemas:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        gone = ctx.request.scope.get(_GONE) if isinstance(ctx.request, Request) else None
        started = time.perf_counter()
        result: types.CallToolResult | None = None
        try:
            if not isinstance(gone, anyio.Event):
                return await self._dispatch(ctx, name, arguments)
            async with anyio.create_task_group() as tg:

                async def cancel_when_gone() -> None:
                    await gone.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_when_gone)
                result = await self._dispatch(ctx, name, arguments)
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():  # MCP cancellation, or the server stopping
            self._log_cancelled(name, started, "")
            raise
        if result is None:  # nobody is left to read this
            self._log_cancelled(name, started, " (the client closed its stream)")
            return _error(INTERNAL_ERROR, "the client disconnected", {"function": name})
        return result

    def _log_cancelled(self, name: str, started: float, why: str) -> None:
        """Log a call that was cancelled (a finished one is logged by its own path)."""
        if self.log is not None:
            ms = (time.perf_counter() - started) * 1e3
            self.log(f"mcp {name} cancelled after {ms:.1f}ms{why}")

    async def _dispatch(
        self, ctx: _Context, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        if name in ("generate", "chat"):
            return await self._chat_tool(ctx, name, arguments)
        return await self._registry_tool(ctx, self._methods[name], arguments)

    async def _registry_tool(
        self, ctx: _Context, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        """Registry method ``name``, dispatched as the proxy does; its ``rkllm_result``
        notifications become progress notifications."""
        outbox = Outbox(self.server.config.outbox_size, coalesce=True)
        request_id = ctx.request_id if ctx.request_id is not None else 0
        message = {"jsonrpc": "2.0", "id": request_id, "method": name, "params": arguments}

        async def progress() -> None:
            tokens = 0
            while True:
                try:
                    note = json.loads(await outbox.get())["params"]
                except anyio.EndOfStream:
                    return
                tokens += max(1, len(note.get("token_ids") or ()))
                await ctx.session.report_progress(tokens, None, note.get("text", ""))

        try:
            with self._owner(ctx, outbox) as peer:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(progress)
                    try:
                        reply = await self.server.handle_message(peer, message)
                    finally:
                        outbox.close()
        except SessionError as exc:  # as POST /rpc: a bad name is the client's, else busy
            code = INVALID_REQUEST if exc.status == 400 else ERROR_CODES[BusyError].jsonrpc
            return _error(code, str(exc), {"function": name})
        assert reply is not None  # a request (it has an id) always gets a response
        if "error" in reply:
            return _failed(reply["error"])
        return _ok(reply["result"])

    async def _chat_tool(
        self, ctx: _Context, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        """``generate`` or ``chat`` through the engine; the text streams as progress."""
        started = time.perf_counter()
        result = await self._chat_result(ctx, name, arguments)
        code = None
        if result.is_error and isinstance(result.structured_content, dict):
            code = int(result.structured_content.get("code", INTERNAL_ERROR))
        seconds = time.perf_counter() - started
        self.server.sessions.metrics.record(name, code, seconds)
        if self.log is not None:
            outcome = "ok" if code is None else f"error {code}"
            self.log(f"mcp {name} {seconds * 1e3:.1f}ms {outcome}")
        return result

    async def _chat_result(
        self, ctx: _Context, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        assert self.engine is not None
        try:
            request = _chat_request(name, arguments)
        except ParamsError as exc:
            data = {"type": "InvalidParamsError", "path": exc.path, "function": name}
            return _error(INVALID_PARAMS, f"Invalid params: {exc}", data)
        done: ChatDone | None = None
        tokens = reported = 0
        text = ""
        try:
            async with contextlib.aclosing(self.engine.chat(request)) as events:
                async for event in events:
                    if isinstance(event, ChatDone):
                        done = event
                        continue
                    tokens += event.tokens
                    text += event.reasoning + event.content
                    # Progress must increase: text of a delta that counts no token (another
                    # of the same chunk follows at once) goes with the next one.
                    if text and tokens > reported:
                        await ctx.session.report_progress(tokens, None, text)
                        reported, text = tokens, ""
            if text:  # text counting no token at the very end (not with the runtime's chunks)
                await ctx.session.report_progress(max(tokens, reported + 1), None, text)
        except (ModelNotFoundError, QueueFullError, RequestError, TemplateError, RKLLMError) as exc:
            return _engine_error(exc, name)
        if done is None:  # the engine always ends with ChatDone: a bug of ours
            return _error(INTERNAL_ERROR, "Internal error", {"function": name})
        return _ok(_done_json(done), done.content)

    # -- resources --------------------------------------------------------------------------

    async def _list_resources(
        self, ctx: _Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=_MODELS_URI,
                    name="models",
                    title="Models",
                    description="The models generate and chat can name: name, file, size, "
                    "whether loaded, parameters.",
                    mime_type="application/json",
                ),
                types.Resource(
                    uri=_METRICS_URI,
                    name="metrics",
                    title="Metrics",
                    description="Prometheus text: requests per method, latencies, tokens/s, "
                    "memory, live handles and queued runs (as GET /metrics).",
                    mime_type=_PROMETHEUS,
                ),
                types.Resource(
                    uri=_OPENRPC_URI,
                    name="openrpc",
                    title="OpenRPC document",
                    description="Every runtime function the rkllm_* tools serve: parameters "
                    "and results (the proxy's rpc.discover).",
                    mime_type="application/json",
                ),
            ]
        )

    async def _read_resource(
        self, ctx: _Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == _MODELS_URI:
            models = self.catalog.models() if self.catalog is not None else []
            text, mime = dumps({"models": _jsonable(models)}), "application/json"
        elif uri == _METRICS_URI:
            text, mime = self.metrics_text(), _PROMETHEUS
        elif uri == _OPENRPC_URI:
            from .. import __version__  # noqa: PLC0415

            text, mime = dumps(self.server.registry.openrpc(__version__)), "application/json"
        else:
            raise MCPError(code=-32002, message="Resource not found", data={"uri": uri})
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type=mime, text=text)]
        )

    def metrics_text(self) -> str:
        """The Prometheus text ``GET /metrics`` serves: the SDK's per-model series, the
        proxy's, then the other faces' (the catalog's)."""
        if self.http is not None:
            extra = list(self.http.metric_texts)
        else:
            extra = [self.catalog.metrics_text] if self.catalog is not None else []
        parts = [metrics.render_prometheus(), self.server.prometheus_text()]
        parts += [render() for render in extra]
        return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)


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
        return _error(jsonrpc_code(exc), str(exc), {**data, "code": exc.code})
    if isinstance(exc, QueueFullError):
        data["retry_after_s"] = exc.retry_after_s
        return _error(ERROR_CODES[BusyError].jsonrpc, str(exc), data)
    if isinstance(exc, ModelNotFoundError):
        data["path"] = "model"
    elif isinstance(exc, RequestError):
        data["path"] = _argument(name, exc.field)
    else:  # a template that cannot render these messages
        data["path"] = "messages"
    return _error(INVALID_PARAMS, str(exc), data)


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
