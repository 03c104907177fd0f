"""JSON-RPC 2.0: the codec and the dispatcher, knowing nothing of sockets.

:class:`Server` is the one protocol object of a process (pygls style): it holds the
registry, the sessions and the configuration, and turns one incoming message (a request, a
notification or a batch, as text) into at most one reply text. Transports only frame
messages (see :mod:`.transports`); :class:`~.connection.Connection` runs one client.

The rules kept exactly: ids (string, number, null) are echoed unchanged; a notification
(no ``id``) gets no reply, not even an error; a batch gets one array of the replies to its
requests (none when it held only notifications); every request gets one response, ever.
Errors: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid
params (``error.data.path`` names the field), -32603 internal error; the SDK's errors carry
:func:`~rkllm_sdk.errors.jsonrpc_code` with ``error.data`` = ``{type, code, function}``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..errors import RKLLMError, jsonrpc_code
from . import configure, functions, service  # noqa: F401  # importing them registers the methods
from .outbox import dumps
from .registry import REGISTRY, Call, Peer, Registry
from .schema import validate
from .sessions import INVALID_MESSAGE, UNKNOWN_METHOD, ServerConfig, Sessions
from .wire import ParamsError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Server",
    "error_response",
]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND = -32700, -32600, -32601
INVALID_PARAMS, INTERNAL_ERROR = -32602, -32603
MAX_BATCH = 256

_NO_ID = object()  # a message without "id": a notification


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _valid_id(value: Any) -> bool:
    # json.loads accepts NaN, Infinity and 1e999 (inf): such an id cannot be echoed in JSON.
    if isinstance(value, float):
        return math.isfinite(value)
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    )


class Server:
    """The proxy: configuration, sessions and registry; dispatches messages of any transport.

    Args:
        config: runtime, directories and limits.
        log: called with one line per request (method, id, duration, outcome).
        registry: the methods (default: every method of the proxy).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        log: Callable[[str], None] | None = None,
        registry: Registry = REGISTRY,
    ) -> None:
        self.config = config or ServerConfig()
        self.sessions = Sessions(self.config)
        self.registry = registry
        self.log = log

    def prometheus_text(self) -> str:
        """The proxy's metrics in the Prometheus text exposition format (version 0.0.4).

        Series are named ``rkllm_proxy_*`` so that this text can follow
        :func:`rkllm_sdk.metrics.render_prometheus` in one exposition (that one already
        has ``rkllm_process_resident_megabytes``); see :mod:`.service` for the list.
        """
        from .service import prometheus_text  # noqa: PLC0415  # imports prometheus_client

        return prometheus_text(self.sessions)

    def _invalid(self, code: int, message: str, started: float) -> str:
        """An error reply to a message that was no request (counted as ``_invalid``)."""
        self.sessions.metrics.record(INVALID_MESSAGE, code, time.perf_counter() - started)
        return dumps(error_response(None, code, message))

    async def handle_text(self, peer: Peer, text: str | bytes) -> str | None:
        """Serve one message (a request, notification or batch); the reply text or None."""
        started = time.perf_counter()
        if len(text) > self.config.max_message_bytes:
            limit = self.config.max_message_bytes
            return self._invalid(INVALID_REQUEST, f"message larger than {limit} bytes", started)
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return self._invalid(PARSE_ERROR, "Parse error", started)
        if isinstance(message, list):
            return await self._batch(peer, message, started)
        reply = await self.handle_message(peer, message)
        return None if reply is None else self._encode(reply)

    async def _batch(self, peer: Peer, batch: list[Any], started: float) -> str | None:
        if not batch:
            return self._invalid(INVALID_REQUEST, "Invalid Request: empty batch", started)
        if len(batch) > MAX_BATCH:
            message = f"a batch holds at most {MAX_BATCH}"
            return self._invalid(INVALID_REQUEST, message, started)
        replies: list[dict[str, Any] | None] = [None] * len(batch)

        async def one(i: int, message: Any) -> None:
            replies[i] = await self.handle_message(peer, message)

        async with anyio.create_task_group() as tg:
            for i, message in enumerate(batch):
                tg.start_soon(one, i, message)
        out = [r for r in replies if r is not None]
        return self._encode(out) if out else None

    def _encode(self, reply: Any) -> str:
        try:
            return dumps(reply)
        except (TypeError, ValueError):  # a result that is not JSON (NaN, ...): our fault
            request_id = reply.get("id") if isinstance(reply, dict) else None
            return dumps(error_response(request_id, INTERNAL_ERROR, "Internal error"))

    async def handle_message(self, peer: Peer, message: Any) -> dict[str, Any] | None:
        """Serve one decoded request or notification; the response object, or None."""
        started = time.perf_counter()
        metrics = self.sessions.metrics
        if not isinstance(message, dict):
            metrics.record(INVALID_MESSAGE, INVALID_REQUEST, time.perf_counter() - started)
            return error_response(None, INVALID_REQUEST, "Invalid Request: not an object")
        request_id = message.get("id", _NO_ID)
        if request_id is not _NO_ID and not _valid_id(request_id):
            metrics.record(INVALID_MESSAGE, INVALID_REQUEST, time.perf_counter() - started)
            return error_response(None, INVALID_REQUEST, "Invalid Request: bad id")
        method_name = message.get("method")
        params = message.get("params", {})
        if (
            message.get("jsonrpc") != "2.0"
            or not isinstance(method_name, str)
            or not isinstance(params, dict | list)
            or set(message) - {"jsonrpc", "method", "params", "id"}
        ):
            reply_id = None if request_id is _NO_ID else request_id
            metrics.record(INVALID_MESSAGE, INVALID_REQUEST, time.perf_counter() - started)
            return error_response(reply_id, INVALID_REQUEST, "Invalid Request")
        notification = request_id is _NO_ID
        response = await self._call(peer, request_id, method_name, params, notification)
        self.sessions.requests += 1
        seconds = time.perf_counter() - started
        code = None if "result" in response else int(response["error"]["code"])
        label = method_name if method_name in self.registry.methods else UNKNOWN_METHOD
        metrics.record(label, code, seconds)
        if self.log is not None:
            outcome = "ok" if code is None else f"error {code}"
            kind = "notification" if notification else f"id={json.dumps(request_id)}"
            self.log(f"{method_name} {kind} {seconds * 1e3:.1f}ms {outcome}")
        return None if notification else response

    async def _call(
        self, peer: Peer, request_id: Any, name: str, params: Any, notification: bool
    ) -> dict[str, Any]:
        reply_id = None if notification else request_id
        method = self.registry.methods.get(name)
        if method is None:
            return error_response(reply_id, METHOD_NOT_FOUND, f"Method not found: {name}")
        try:
            if isinstance(params, list):
                raise ParamsError("", "params must be an object of named parameters")
            checked = validate(method.params, params, "")
            call = Call(connection=peer, request_id=reply_id, method=name, silent=notification)
            result = await method.handler(call, checked)
        except ParamsError as exc:
            data: dict[str, Any] = {
                "type": "InvalidParamsError",
                "path": exc.path,
                "function": name,
            }
            return error_response(reply_id, INVALID_PARAMS, f"Invalid params: {exc}", data)
        except RKLLMError as exc:
            data = {"type": type(exc).__name__, "code": exc.code, "function": name}
            return error_response(reply_id, jsonrpc_code(exc), str(exc), data)
        except Exception as exc:  # anything else is a bug of ours: no details leak
            data = {"type": type(exc).__name__, "function": name}
            return error_response(reply_id, INTERNAL_ERROR, "Internal error", data)
        return {"jsonrpc": "2.0", "id": reply_id, "result": result}
