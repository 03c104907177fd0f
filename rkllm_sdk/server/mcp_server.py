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

Tools (:mod:`.mcp_tools`: their definitions, and how a call is served): ``generate`` and
``chat`` on a named model, and one per registry method (``rkllm_init``, ..., ``stats``).
A failed call is a tool result with ``isError`` holding the JSON-RPC error object the
proxy would have answered. When the caller sends a progress token, the text of a run
streams as ``notifications/progress``. Cancelling the request cancels the handler, which
aborts the run on the NPU.

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
import functools
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
from .http_sessions import SESSION_HEADER, SessionError
from .jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, Server
from .mcp_tools import call_chat, call_method, error_result, tool_definitions, tool_name
from .outbox import Outbox, dumps
from .registry import Peer
from .sessions import Sessions
from .transports import FdReader

if TYPE_CHECKING:
    from .catalog import ModelCatalog
    from .chat_engine import ChatEngine
    from .http import HttpFace

__all__ = ["McpFace"]

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
            return error_result(INTERNAL_ERROR, "the client disconnected", {"function": name})
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
        owner = functools.partial(self._owner, ctx)
        method = self._methods[name]
        return await call_method(self.server, ctx.session, ctx.request_id, method, arguments, owner)

    async def _chat_tool(
        self, ctx: _Context, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        """``generate`` or ``chat`` through the engine, recorded in the proxy's metrics."""
        assert self.engine is not None
        started = time.perf_counter()
        result = await call_chat(self.engine, ctx.session, name, arguments)
        code = None
        if result.is_error and isinstance(result.structured_content, dict):
            code = int(result.structured_content.get("code", INTERNAL_ERROR))
        seconds = time.perf_counter() - started
        self.server.sessions.metrics.record(name, code, seconds)
        if self.log is not None:
            outcome = "ok" if code is None else f"error {code}"
            self.log(f"mcp {name} {seconds * 1e3:.1f}ms {outcome}")
        return result

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
