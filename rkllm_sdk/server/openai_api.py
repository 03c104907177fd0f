"""The OpenAI-compatible API of ``rkllm serve``: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``.

A translation layer only: requests become :class:`~.chat_types.ChatRequest` objects (or
embedding calls) in :mod:`.openai_wire`, the :class:`~.chat_engine.ChatEngine` runs them
(queueing, templates, KV cache reuse), and its events become OpenAI's objects here. Mount it
on the HTTP face::

    face.add(openai_routes(engine, face.authorized), lifespan=catalog.lifespan)

Decisions (the table in ``docs/guides/openai-clients.md`` lists every field; the request
fields' are in :mod:`.openai_wire`):

- ``parallel_tool_calls: false`` is honoured by returning only the model's first tool call.
- The thoughts come as ``reasoning_content``.
- A streamed reply's headers go out with its first event, or after ``ping_s`` without one
  (queue, load, long prefill), with a ping comment (then one every ``ping_s``). An error
  before that is an HTTP error; after it, an SSE event ``{"error": {...}}`` then
  ``[DONE]``. A client that disconnects has its run aborted (the engine's generator is
  closed), streaming or not.
- Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400
  ``invalid_request_error`` (``context_length_exceeded`` for a prompt longer than the
  model's context), 401 ``invalid_api_key``, 404 ``model_not_found``, 413, 429 (queue full
  or shutting down: ``Retry-After`` and ``retry-after-ms``), 5xx ``server_error``; a client
  gone before its body was read is logged as 499.
- Tool calls go out with ids of their own, new for every call of every response.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeAlias

import anyio
import attrs
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sse_starlette import EventSourceResponse
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..results import ToolCall
from .catalog import ModelInfo, ModelNotFoundError
from .chat_engine import ChatEngine
from .chat_types import ChatDelta, ChatDone
from .http_api import read_body, watch_disconnect
from .openai_wire import (
    OpenAIError,
    ParsedChat,
    error_from,
    invalid_request,
    parse_chat,
    parse_completion,
    parse_embedding,
)

__all__ = ["MAX_BODY_BYTES", "openai_routes"]

#: A request body larger than this is refused (413).
MAX_BODY_BYTES = 16 * 1024 * 1024
_DONE = "data: [DONE]\n\n"
_CHUNK_EVENTS = 256  # engine events already queued are written out together, up to this many

Event: TypeAlias = ChatDelta | ChatDone
Run: TypeAlias = Callable[[], AsyncGenerator[Event, None]]
#: What the engine or the runtime raised -> the error answered (the request's field names
#: bound in).
ToError: TypeAlias = Callable[[BaseException], OpenAIError]


# ---- errors ------------------------------------------------------------------------------


def _unauthorized() -> Response:
    error = OpenAIError(
        401,
        "Incorrect API key provided: send `Authorization: Bearer <API key>`.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
    )
    return error.response()


# ---- answers -----------------------------------------------------------------------------


def _usage(done: ChatDone) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _tool_call_out(call: ToolCall, call_id: str, index: int | None = None) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    out = {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }
    return out if index is None else {"index": index, **out}


class _Answer(abc.ABC):
    """Engine events -> OpenAI objects, for one response (its id, time, model).

    Abstract: :class:`_ChatAnswer` and :class:`_CompletionAnswer` give the shapes."""

    prefix = ""
    kind = ""

    def __init__(self, parsed: ParsedChat) -> None:
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = parsed.request.model
        self.include_usage = parsed.include_usage

    def _object(self, kind: str, choices: list[Any], **more: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        usage = {"usage": None} if self.include_usage and "usage" not in more else {}
        return {**head, "choices": choices, **usage, **more}

    def start(self) -> list[dict[str, Any]]:
        """The chunks sent before any event."""
        return []

    @abc.abstractmethod
    def delta(self, event: ChatDelta) -> list[dict[str, Any]]:
        """The chunks of one delta."""

    def done(self, event: ChatDone) -> list[dict[str, Any]]:
        """The last chunks: the finish reason, then usage if asked for."""
        last = self._finish(event)
        return (
            [last, self._object(self.kind, [], usage=_usage(event))]
            if self.include_usage
            else [last]
        )

    @abc.abstractmethod
    def _finish(self, event: ChatDone) -> dict[str, Any]:
        """The streamed chunk carrying the finish reason."""

    @abc.abstractmethod
    def whole(self, event: ChatDone) -> dict[str, Any]:
        """The non-streamed response."""


class _ChatAnswer(_Answer):
    prefix = "chatcmpl"
    kind = "chat.completion.chunk"

    def __init__(self, parsed: ParsedChat) -> None:
        super().__init__(parsed)
        self.first_tool_only = parsed.first_tool_only
        self.sent_calls: list[str] = []
        self.call_ids: dict[str, str] = {}

    def _call_id(self, call: ToolCall) -> str:
        """The id a call goes out with: new for every call of every response, as OpenAI's
        are (the engine's is a hash of the call: the same call later in a conversation
        would repeat it, and clients key calls and results by id)."""
        if call.id not in self.call_ids:
            self.call_ids[call.id] = f"call_{secrets.token_hex(12)}"
        return self.call_ids[call.id]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._object(self.kind, [choice])

    def start(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def _calls(self, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            if call.id in self.sent_calls or (self.first_tool_only and self.sent_calls):
                continue
            out.append(_tool_call_out(call, self._call_id(call), len(self.sent_calls)))
            self.sent_calls.append(call.id)
        return out

    def delta(self, event: ChatDelta) -> list[dict[str, Any]]:
        chunks = []
        if event.reasoning:
            chunks.append(self._chunk({"reasoning_content": event.reasoning}))
        if event.content:
            chunks.append(self._chunk({"content": event.content}))
        calls = self._calls(event.tool_calls)
        if calls:
            chunks.append(self._chunk({"tool_calls": calls}))
        return chunks

    def done(self, event: ChatDone) -> list[dict[str, Any]]:
        calls = self._calls(event.tool_calls)  # calls the deltas did not carry
        return ([self._chunk({"tool_calls": calls})] if calls else []) + super().done(event)

    def _finish(self, event: ChatDone) -> dict[str, Any]:
        return self._chunk({}, event.finish_reason)

    def whole(self, event: ChatDone) -> dict[str, Any]:
        calls = event.tool_calls[:1] if self.first_tool_only else event.tool_calls
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not event.content else event.content,
            "refusal": None,
        }
        if event.reasoning:
            message["reasoning_content"] = event.reasoning
        if calls:
            message["tool_calls"] = [_tool_call_out(c, self._call_id(c)) for c in calls]
        choice = {"index": 0, "message": message, "logprobs": None}
        choice["finish_reason"] = event.finish_reason
        return self._object("chat.completion", [choice], usage=_usage(event))


class _CompletionAnswer(_Answer):
    prefix = "cmpl"
    kind = "text_completion"

    def _chunk(self, text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return self._object(self.kind, [choice])

    def delta(self, event: ChatDelta) -> list[dict[str, Any]]:
        text = event.reasoning + event.content
        return [self._chunk(text)] if text else []

    def _finish(self, event: ChatDone) -> dict[str, Any]:
        return self._chunk("", event.finish_reason)

    def whole(self, event: ChatDone) -> dict[str, Any]:
        choice = {"text": event.reasoning + event.content, "index": 0, "logprobs": None}
        choice["finish_reason"] = event.finish_reason
        return self._object(self.kind, [choice], usage=_usage(event))


# ---- running -----------------------------------------------------------------------------


@attrs.frozen
class _Failure:
    error: OpenAIError


_Item: TypeAlias = ChatDelta | ChatDone | _Failure


async def _produce(run: Run, to_error: ToError, out: MemoryObjectSendStream[_Item]) -> None:
    """Iterate the engine's generator (in this one task) into ``out``; an error is the last
    item. Cancelled (or ``out``'s reader gone): the generator is closed, the run aborted."""
    async with out:
        try:
            async with contextlib.aclosing(run()) as events:
                async for event in events:
                    await out.send(event)
        except anyio.BrokenResourceError:
            return
        except Exception as exc:  # every failure is answered to the client
            with contextlib.suppress(anyio.BrokenResourceError):
                await out.send(_Failure(to_error(exc)))


def _data(chunk: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _ended() -> _Failure:
    return _Failure(OpenAIError(500, "the run ended without a result", kind="server_error"))


class _RunResponse(Response):
    """One engine run answered as SSE, or as an error status when it fails at once.

    The engine's generator is iterated by one producer task (its cancel scopes never move
    between tasks). The response waits up to ``ping_s`` for the first event: an error by
    then is an HTTP error; otherwise the SSE stream starts (with a ping, when nothing came).
    ``done`` is called once with the outcome (a status, or why the stream ended).
    """

    def __init__(
        self,
        run: Run,
        answer: _Answer,
        to_error: ToError,
        ping_s: float,
        done: Callable[[str], None],
    ) -> None:
        super().__init__(status_code=200)
        self.run = run
        self.answer = answer
        self.to_error = to_error
        self.ping_s = ping_s
        self.done = done
        self.outcome = "client gone"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run, wait for the first event or the grace time, then answer."""
        send_items, items = anyio.create_memory_object_stream[_Item](_CHUNK_EVENTS)
        async with anyio.create_task_group() as tg, items:
            tg.start_soon(_produce, self.run, self.to_error, send_items)
            first: _Item | None = None
            async with anyio.create_task_group() as waiting:
                waiting.start_soon(watch_disconnect, receive, tg.cancel_scope)
                with anyio.move_on_after(self.ping_s):
                    first = await _receive(items)
                waiting.cancel_scope.cancel()
            try:
                if isinstance(first, _Failure):
                    self.outcome = str(first.error.status)
                    await first.error.response()(scope, receive, send)
                elif not tg.cancel_scope.cancel_called:
                    body = self._events(first, items)
                    sse = EventSourceResponse(body, ping=self.ping_s, sep="\n")
                    await sse(scope, receive, send)
            finally:
                self.done(self.outcome)
            tg.cancel_scope.cancel()  # the client has gone, or the run is over: stop it

    async def _events(
        self, item: _Item | None, items: MemoryObjectReceiveStream[_Item]
    ) -> AsyncIterator[bytes]:
        """The SSE body: everything queued goes out in one write."""
        out = [_data(c) for c in self.answer.start()]
        if item is None:  # nothing yet: the stream starts with the ping
            yield b": ping\n\n" + "".join(out).encode()
            out = []
            item = await _receive(items)
        while True:  # one pass per engine event; the run's token limit ends it
            if isinstance(item, _Failure):
                self.outcome = f"200, then {item.error.status} in the stream"
                yield ("".join(out) + _data(item.error.body()) + _DONE).encode()
                return
            if isinstance(item, ChatDone):
                self.outcome = f"200 {item.finish_reason}"
                yield ("".join([*out, *map(_data, self.answer.done(item))]) + _DONE).encode()
                return
            out += map(_data, self.answer.delta(item))
            try:
                if len(out) >= _CHUNK_EVENTS:
                    raise anyio.WouldBlock
                item = items.receive_nowait()
            except anyio.WouldBlock:
                if out:
                    yield "".join(out).encode()
                    out = []
                item = await _receive(items)
            except anyio.EndOfStream:
                item = _ended()


async def _receive(items: MemoryObjectReceiveStream[_Item]) -> _Item:
    try:
        return await items.receive()
    except anyio.EndOfStream:
        return _ended()


async def _run_whole(request: Request, run: Run, to_error: ToError) -> ChatDone | None:
    """Run to the end (None: the client disconnected, and the run was aborted).

    Raises:
        OpenAIError: the run failed.
    """
    result: ChatDone | OpenAIError | None = None  # None: still running
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_disconnect, request.receive, tg.cancel_scope)
        try:
            async with contextlib.aclosing(run()) as events:
                async for event in events:
                    if isinstance(event, ChatDone):
                        result = event
            result = result or _ended().error
        except Exception as exc:  # every failure is answered to the client
            result = to_error(exc)
        tg.cancel_scope.cancel()
    if isinstance(result, OpenAIError):
        raise result
    return result


# ---- routes ------------------------------------------------------------------------------


async def _json_body(request: Request) -> Mapping[str, Any]:
    body = await read_body(request, MAX_BODY_BYTES, OpenAIError)
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        raise invalid_request(None, "We could not parse the JSON body of your request.") from None
    if not isinstance(decoded, dict):
        raise invalid_request(None, "the request body must be a JSON object")
    return decoded


def _embedding_out(vector: Sequence[float], index: int, as_base64: bool) -> dict[str, Any]:
    data: Any = list(vector)
    if as_base64:
        data = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return {"object": "embedding", "index": index, "embedding": data}


class _OpenAIFace:
    """The route handlers, over one engine."""

    def __init__(
        self,
        engine: ChatEngine,
        authorized: Callable[[Headers], bool] | None,
        ping_s: float,
        log: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self.authorized = authorized or (lambda headers: True)
        self.ping_s = ping_s
        self.log = log

    def _answer(self, request: Request, response: Response) -> Response:
        self._log(request, str(response.status_code))
        return response

    def _log(self, request: Request, outcome: str) -> None:
        if self.log is not None:
            self.log(f"openai {request.method} {request.url.path} {outcome}")

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: every model of the catalog."""
        if not self.authorized(request.headers):
            return self._answer(request, _unauthorized())
        data = [self._model_object(info) for info in self.engine.catalog.models()]
        return self._answer(request, JSONResponse({"object": "list", "data": data}))

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``: one model, or 404."""
        if not self.authorized(request.headers):
            return self._answer(request, _unauthorized())
        try:
            name = self.engine.catalog.resolve(request.path_params["model"]).name
        except ModelNotFoundError as exc:
            return self._answer(request, error_from(exc).response())
        info = next(i for i in self.engine.catalog.models() if i.name == name)  # resolved
        return self._answer(request, JSONResponse(self._model_object(info)))

    @staticmethod
    def _model_object(info: ModelInfo) -> dict[str, Any]:
        return {
            "id": info.name,
            "object": "model",
            "created": int(info.modified.timestamp()),
            "owned_by": "rkllm",
        }

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._run(request, parse_chat, _ChatAnswer)

    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``."""
        return await self._run(request, parse_completion, _CompletionAnswer)

    async def _run(
        self,
        request: Request,
        parse: Callable[[Mapping[str, Any]], ParsedChat],
        answer_type: type[_Answer],
    ) -> Response:
        if not self.authorized(request.headers):
            return self._answer(request, _unauthorized())
        try:
            parsed = parse(await _json_body(request))
        except OpenAIError as exc:
            return self._answer(request, exc.response())
        answer = answer_type(parsed)
        to_error = partial(error_from, params=parsed.params)

        def run() -> AsyncGenerator[Event, None]:
            return self.engine.chat(parsed.request)

        if parsed.stream:
            return _RunResponse(run, answer, to_error, self.ping_s, partial(self._log, request))
        try:
            done = await _run_whole(request, run, to_error)
        except OpenAIError as exc:
            return self._answer(request, exc.response())
        if done is None:
            return self._answer(request, Response(status_code=499))  # nobody is listening
        return self._answer(request, JSONResponse(answer.whole(done)))

    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: L2-normalised vectors from the last hidden layer."""
        if not self.authorized(request.headers):
            return self._answer(request, _unauthorized())
        try:
            parsed = parse_embedding(await _json_body(request))
            vectors, tokens = await self.engine.embed(parsed.model, parsed.inputs)
            size = len(vectors[0]) if vectors else 0
            if parsed.dimensions is not None and parsed.dimensions != size:
                message = f"`dimensions`: this model's embeddings have {size} dimensions only"
                raise invalid_request("dimensions", message)
        except Exception as exc:  # every failure is answered to the client
            error = error_from(exc)
            return self._answer(request, error.response())
        body = {
            "object": "list",
            "data": [_embedding_out(v, i, parsed.base64) for i, v in enumerate(vectors)],
            "model": parsed.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._answer(request, JSONResponse(body))

    async def unknown(self, request: Request) -> Response:
        """Any other ``/v1/...`` path: 404 in OpenAI's shape (``unknown_url``)."""
        message = f"Invalid URL ({request.method} {request.url.path}): this server offers "
        message += "/v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings"
        return self._answer(request, OpenAIError(404, message, code="unknown_url").response())


def openai_routes(
    engine: ChatEngine,
    authorized: Callable[[Headers], bool] | None = None,
    *,
    ping_s: float = 15.0,
    log: Callable[[str], None] | None = None,
) -> list[BaseRoute]:
    """The OpenAI API's routes, to mount with :meth:`~.http.HttpFace.add`.

    Args:
        engine: runs the chats and embeddings.
        authorized: the API key check (:meth:`~.http.HttpFace.authorized`); None: open.
        ping_s: SSE pings while a run prepares (queue, load, prefill); also how long a
            streamed reply's status waits for the first event.
        log: called with one line per request (method, path, status).

    >>> routes = openai_routes(engine, face.authorized)  # doctest: +SKIP
    >>> face.add(routes, lifespan=catalog.lifespan)  # doctest: +SKIP
    """
    face = _OpenAIFace(engine, authorized, ping_s, log)
    return [
        Route("/v1/models", face.models, methods=["GET"]),
        Route("/v1/models/{model:path}", face.model, methods=["GET"]),
        Route("/v1/chat/completions", face.chat_completions, methods=["POST"]),
        Route("/v1/completions", face.completions, methods=["POST"]),
        Route("/v1/embeddings", face.embeddings, methods=["POST"]),
        Route("/v1/{path:path}", face.unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
