"""HTTP and WebSocket: ``POST /rpc`` (buffered or SSE), ``/ws``, ``/health``, ``/metrics``.

Starlette routes, sse-starlette for Server-Sent Events, uvicorn run inside the caller's
event loop (:func:`serve_http`): no hand-written HTTP. Every face dispatches through the one
:class:`~.jsonrpc.Server` of the process, so HTTP, WebSocket, TCP, Unix and stdio clients
share its handles, limits and counters.

- ``POST /rpc``: a JSON-RPC request, notification or batch as the body.
  *Buffered* (the default): one JSON reply; the response of every method that streams
  (``rkllm_run``) carries its ``rkllm_result`` notifications' params in ``result.chunks``.
  *Push* (``Accept: text/event-stream``): each notification is an SSE event
  ``rkllm_result`` as soon as it is produced, the reply the last event, ``response``;
  pings keep the stream alive; a client that disconnects has its requests cancelled (runs
  aborted on the NPU). A body of notifications only gets ``204 No Content`` either way.
- ``/ws``: JSON-RPC text frames both ways (notifications pushed as frames, without
  permessage-deflate); the connection owns its handles like a TCP connection does.
- ``GET /health``: ``200 {"status": "ok", "handles": n, "runs": n, ...}`` (the faces' fields
  too), never behind the key; 503 ``"draining"`` after SIGTERM, ``"loading"`` while a
  face is not ready (the only named model loading).
- ``GET /metrics``: Prometheus text: the SDK's handle metrics, the server's own and the
  faces'.

Other faces (MCP, the OpenAI and Ollama APIs) mount their routes, lifespans, metrics and
health parts on the same port with :meth:`HttpFace.add`.

With an API key, every route but ``/health`` wants ``Authorization: Bearer <key>`` (the
WebSocket handshake too), compared in constant time; 401 otherwise. Handles created over
HTTP belong to the (key, ``X-RKLLM-Session``) pair (:mod:`.http_sessions`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import attrs
import sniffio
import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import metrics
from ..errors import ERROR_CODES, BusyError
from .connection import Connection
from .http_sessions import SESSION_HEADER, HttpSessions, SessionError
from .jsonrpc import INVALID_REQUEST, Server, error_response
from .outbox import Outbox, dumps

__all__ = ["HttpConfig", "HttpFace", "bind", "serve_http"]

_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
# One SSE event, as sse-starlette writes it (its separator: CRLF). The data is one line of
# JSON (:func:`~.outbox.dumps` escapes CR and LF), so one ``data:`` field holds it.
_RESULT_EVENT = "event: rkllm_result\r\ndata: "
_EVENT_END = "\r\n\r\n"
#: The events already queued are gathered into one chunk up to about this many characters.
_CHUNK_CHARS = 64 * 1024


class _BodyTooLargeError(Exception):
    pass


@attrs.frozen(kw_only=True)
class HttpConfig:
    """What the HTTP face was told.

    Attributes:
        api_key: the key every route but ``/health`` wants as a Bearer token (None: open).
        idle_timeout_s: an HTTP session serving no request this long loses its handles.
        ping_s: seconds between SSE pings.
        max_sessions: HTTP sessions holding handles at once.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    idle_timeout_s: float = 600.0
    ping_s: float = 15.0
    max_sessions: int = 64


class HttpFace:
    """The Starlette app of one :class:`~.jsonrpc.Server`, with its HTTP sessions.

    Args:
        server: the process's dispatcher.
        config: key, timeouts.
        log: called with one line per HTTP request that is not a JSON-RPC call (those the
            server logs itself): health, metrics, WebSocket opening and closing, refusals.
    """

    def __init__(
        self,
        server: Server,
        config: HttpConfig | None = None,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.server = server
        self.config = config or HttpConfig()
        self.log = log
        self.sessions = HttpSessions(
            server.sessions, self.config.idle_timeout_s, self.config.max_sessions
        )
        #: What other faces added (:meth:`add`): entered by :func:`serve_http` around
        #: uvicorn, left after it stops (their own background tasks, session managers).
        self.lifespans: list[Callable[[], AbstractAsyncContextManager[object]]] = []
        #: Extra Prometheus text renderers (each returns whole lines) for ``/metrics``.
        self.metric_texts: list[Callable[[], str]] = []
        #: Extra ``/health`` parts: each returns (ready, fields); fields join the body, and
        #: one not ready makes it 503 (e.g. the only model still loading).
        self.health_parts: list[Callable[[], tuple[bool, dict[str, Any]]]] = []
        self.app = Starlette(
            routes=[
                Route("/rpc", self.rpc, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
                WebSocketRoute("/ws", self.websocket),
            ]
        )

    def add(
        self,
        routes: Sequence[BaseRoute],
        *,
        lifespan: Callable[[], AbstractAsyncContextManager[object]] | None = None,
        metrics_text: Callable[[], str] | None = None,
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    ) -> None:
        """Serve more routes on this port (the OpenAI, Ollama and MCP faces).

        Args:
            routes: Starlette routes, mounted after the proxy's own.
            lifespan: entered before uvicorn starts serving, left after it stops.
            metrics_text: more Prometheus text for ``GET /metrics``.
            health: more of ``GET /health``: (ready, fields); not ready answers 503.
        """
        self.app.router.routes.extend(routes)
        if lifespan is not None:
            self.lifespans.append(lifespan)
        if metrics_text is not None:
            self.metric_texts.append(metrics_text)
        if health is not None:
            self.health_parts.append(health)

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    # -- auth ---------------------------------------------------------------------------

    def authorized(self, headers: Any) -> bool:
        """Whether ``headers`` carry the API key (always, when there is none); the other
        faces mounted here (:meth:`add`) check with it too."""
        if self.config.api_key is None:
            return True
        scheme, _, token = str(headers.get("authorization", "")).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.config.api_key.encode()
        )

    def _refuse(self, where: str) -> Response:
        self._log(f"http {where} 401 (no or wrong API key)")
        return JSONResponse(
            {"error": "unauthorized", "message": "send Authorization: Bearer <API key>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
        )

    # -- plain routes -------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /health``: 200 while serving; 503 once draining, or while a face is not
        ready (the only named model loading); no key needed."""
        stats = self.server.sessions.stats()
        body: dict[str, Any] = {"handles": stats["handles"], "runs": stats["runs"]}
        ready = True
        for part in self.health_parts:
            part_ready, fields = part()
            ready = ready and part_ready
            body.update(fields)
        status = "draining" if stats["draining"] else "ok" if ready else "loading"
        code = 200 if status == "ok" else 503
        self._log(f"http GET /health {code}")
        return JSONResponse({"status": status, **body}, status_code=code)

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text exposition (behind the key)."""
        if not self.authorized(request.headers):
            return self._refuse("GET /metrics")
        # The SDK's per-model series, then the proxy's own (rkllm_proxy_*): no name clashes.
        parts = [metrics.render_prometheus(), self.server.prometheus_text()]
        parts += [render() for render in self.metric_texts]
        self._log("http GET /metrics 200")
        return Response(
            "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts),
            media_type=_PROMETHEUS,
        )

    # -- POST /rpc ----------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        limit = self.server.config.max_message_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _BodyTooLargeError
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _BodyTooLargeError
        return bytes(body)

    async def rpc(self, request: Request) -> Response:
        """``POST /rpc``: buffered JSON, or SSE with ``Accept: text/event-stream``."""
        if not self.authorized(request.headers):
            return self._refuse("POST /rpc")
        try:
            key = self.sessions.key(self.config.api_key, request.headers.get(SESSION_HEADER))
            body = await self._body(request)
        except SessionError as exc:
            return JSONResponse(error_response(None, INVALID_REQUEST, str(exc)), exc.status)
        except _BodyTooLargeError:
            limit = self.server.config.max_message_bytes
            self._log("http POST /rpc 413")
            message = f"message larger than {limit} bytes"
            return JSONResponse(error_response(None, INVALID_REQUEST, message), 413)
        streaming = _streaming_ids(self.server, body)
        wants_sse = "text/event-stream" in request.headers.get("accept", "")
        if wants_sse and streaming is not None:
            return self._sse(key, body)
        return await self._buffered(key, body, request, streaming or set())

    async def _buffered(
        self, key: tuple[str, str], body: bytes, request: Request, streaming: set[str]
    ) -> Response:
        outbox = Outbox(self.server.config.outbox_size)
        chunks: dict[str, list[Any]] = {}
        reply: str | None = None

        async def collect() -> None:
            while True:
                try:
                    note = json.loads(await outbox.get())
                except anyio.EndOfStream:
                    return
                chunks.setdefault(_id_key(note["params"].get("id")), []).append(note["params"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, request, tg.cancel_scope)
            async with anyio.create_task_group() as work:
                work.start_soon(collect)
                reply = await self._dispatch(key, body, outbox)
                outbox.close()
            tg.cancel_scope.cancel()
        if reply is None:  # notifications only (or the client has gone)
            return Response(status_code=204)
        if streaming:
            reply = _attach_chunks(reply, streaming, chunks)
        return Response(reply, media_type=_JSON)

    def _sse(self, key: tuple[str, str], body: bytes) -> Response:
        # sse-starlette runs `produce` and iterates `events` in its own task group, and
        # cancels both when the client disconnects: the run is then aborted on the NPU.
        outbox = Outbox(self.server.config.outbox_size)
        replies: list[str] = []

        async def produce() -> None:
            reply = await self._dispatch(key, body, outbox)
            if reply is not None:
                replies.append(reply)
            outbox.close()

        async def events() -> AsyncIterator[bytes]:
            # Whatever is queued when the writer comes round goes out in one chunk of the
            # body: several events per write, not one write (and one pass through
            # sse-starlette, uvicorn and h11) per token. A lone notification is sent alone.
            while True:
                try:
                    parts = [_RESULT_EVENT, await outbox.get(), _EVENT_END]
                except anyio.EndOfStream:
                    break
                size = len(parts[1])
                while len(outbox) and size < _CHUNK_CHARS:  # ready now: get() won't wait
                    data = await outbox.get()
                    parts += (_RESULT_EVENT, data, _EVENT_END)
                    size += len(data)
                yield "".join(parts).encode()
            for reply in replies:
                yield f"event: response\r\ndata: {reply}\r\n\r\n".encode()

        return EventSourceResponse(
            events(),
            data_sender_callable=produce,
            ping=self.config.ping_s,
            headers={"Cache-Control": "no-store"},
        )

    async def _dispatch(self, key: tuple[str, str], body: bytes, outbox: Outbox) -> str | None:
        try:
            with self.sessions.request(key, outbox) as peer:
                return await self.server.handle_text(peer, body)
        except SessionError as exc:
            return dumps(error_response(None, ERROR_CODES[BusyError].jsonrpc, str(exc)))

    # -- /ws ----------------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        """``/ws``: one JSON-RPC client; its handles die with the socket."""
        if not self.authorized(ws.headers):
            with contextlib.suppress(RuntimeError):
                await ws.send_denial_response(self._refuse("GET /ws"))
            return
        if self.server.sessions.connections >= self.server.config.max_connections:
            await ws.close(code=1013, reason="too many connections: try again later")
            return
        await ws.accept()
        self._log("ws open")
        started = time.perf_counter()

        async def send(text: str) -> None:
            try:
                await ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError) as exc:
                raise anyio.BrokenResourceError from exc

        async with anyio.create_task_group() as tg:

            async def frames() -> AsyncIterator[bytes]:
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    text = message.get("text")
                    yield text.encode("utf-8") if text is not None else message.get("bytes", b"")
                tg.cancel_scope.cancel()  # the client has gone: abort what it started

            await Connection(self.server).serve(frames(), send)
        # The client may have closed first: closing again is then WebSocketDisconnect.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.close()
        self._log(f"ws closed after {time.perf_counter() - started:.1f}s")


def _id_key(request_id: Any) -> str:
    return json.dumps(request_id)


def _streaming_ids(server: Server, body: bytes) -> set[str] | None:
    """The ids of the requests in ``body`` whose method streams notifications; None when
    the body holds notifications only (nothing to answer, nothing to stream)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    messages = message if isinstance(message, list) and message else [message]
    if all(isinstance(m, dict) and "id" not in m and m.get("jsonrpc") == "2.0" for m in messages):
        return None
    ids = set()
    for m in messages:
        if isinstance(m, dict) and "id" in m:
            method = server.registry.methods.get(str(m.get("method")))
            if method is not None and method.notifications:
                ids.add(_id_key(m["id"]))
    return ids


def _attach_chunks(reply: str, streaming: set[str], chunks: dict[str, list[Any]]) -> str:
    """``reply`` with each streaming response's chunks in ``result.chunks``."""
    decoded = json.loads(reply)
    for response in decoded if isinstance(decoded, list) else [decoded]:
        key = _id_key(response.get("id"))
        if key in streaming and isinstance(response.get("result"), dict):
            response["result"]["chunks"] = chunks.get(key, [])
    return dumps(decoded)


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client of ``request`` disconnects (its body read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: ``rkllm serve`` handles SIGTERM / SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), Nagle off.

    Every accepted socket gets ``TCP_NODELAY``: asyncio sets it on the sockets it accepts
    only when the listener's ``proto`` is ``IPPROTO_TCP``, and :func:`socket.create_server`
    leaves it 0. Without it, a small write (one SSE event, one WebSocket frame) sent while
    the previous one is unacknowledged waits for the client's delayed ACK, about 40 ms.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited on Linux too
    return sock


async def serve_http(
    face: HttpFace,
    sock: socket.socket | Sequence[socket.socket],
    *,
    started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``face`` on ``sock`` (one or several listening sockets) with uvicorn in this
    event loop, until cancelled. Call it once per face: it enters the face's lifespans.

    The faces' lifespans (:meth:`HttpFace.add`) are entered before uvicorn starts. Cancellation
    stops uvicorn gracefully (listeners closed, connections ended, at most 3 s), leaves the
    lifespans, then destroys the handles of every HTTP session. uvicorn's own lifespan
    protocol is off, and WebSocket frames go uncompressed (no permessage-deflate).

    Raises:
        RuntimeError: not on asyncio (uvicorn runs on asyncio only).
    """
    if sniffio.current_async_library() != "asyncio":
        raise RuntimeError("the HTTP face runs on asyncio only (uvicorn)")
    config = uvicorn.Config(
        face.app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws_max_size=face.server.config.max_message_bytes,
        # No permessage-deflate: a token's frame is ~100 bytes, so compressing it saves
        # little and cost ~12% of the server's CPU (WebSocket 0.32 -> 0.44 of the
        # in-process rate without it, benchmarks.server); the board's CPU is the scarcer.
        ws_per_message_deflate=False,
        h11_max_incomplete_event_size=64 * 1024,
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    server = _Uvicorn(config)
    socks = [sock] if isinstance(sock, socket.socket) else list(sock)
    try:
        # The faces' lifespans (which may run task groups of their own) are entered before
        # this task group and left after it, so their cancel scopes nest properly.
        async with AsyncExitStack() as faces:
            for lifespan in face.lifespans:
                await faces.enter_async_context(lifespan())
            await _serve_uvicorn(face, server, socks, started)
    finally:
        face.sessions.tasks = None
        with anyio.CancelScope(shield=True):
            await face.sessions.close_all()


async def _serve_uvicorn(
    face: HttpFace,
    server: uvicorn.Server,
    socks: list[socket.socket],
    started: Callable[[], Awaitable[None]] | None,
) -> None:
    """Run ``server`` on ``socks`` until cancelled, with the HTTP sessions' reaper."""
    async with anyio.create_task_group() as tg:

        async def stop_when_cancelled() -> None:
            try:
                if started is not None:
                    while not server.started:  # noqa: ASYNC110  # uvicorn's own flag
                        await anyio.sleep(0.01)
                    await started()
                await anyio.sleep_forever()
            finally:
                server.should_exit = True

        tg.start_soon(stop_when_cancelled)
        tg.start_soon(face.sessions.reap_forever)
        face.sessions.tasks = tg  # drives rkllm_run_async runs
        with anyio.CancelScope(shield=True):
            await server.serve(sockets=socks)
        tg.cancel_scope.cancel()
