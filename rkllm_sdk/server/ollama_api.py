"""Ollama's HTTP API (``/api/*``) on ``rkllm serve``, over the one chat engine.

What Home Assistant's Ollama integration, Open WebUI's Ollama connection and the official
``ollama`` clients call, answered the way Ollama answers it:

- ``GET /api/version``, ``GET /api/tags`` (every configured model; ``name`` and ``model``
  are its tag exactly, e.g. ``qwen3:latest``), ``GET /api/ps`` (the loaded ones),
  ``POST /api/show``, ``POST /api/pull`` (success for a configured model; never downloads).
- ``POST /api/chat`` and ``POST /api/generate``: NDJSON streaming by default
  (``application/x-ndjson``, one object per piece, the last with ``done: true``, its
  ``done_reason`` and the nanosecond timings), one object with ``stream: false``. Tools in,
  ``message.tool_calls[].function.arguments`` out as objects, ``think`` ->
  ``message.thinking``, ``keep_alive``, ``options``. An empty prompt (or message list) loads
  the model, or unloads it with ``keep_alive: 0``.
- ``POST /api/embed`` and the older ``POST /api/embeddings``.
- ``GET /`` and ``HEAD /``: ``Ollama is running`` (clients probe it; no key needed).

Errors are ``{"error": "..."}`` with Ollama's status codes: 400 (a field this server cannot
honour, named in the message), 401 (no or wrong API key), 404 (``model "x" not found, try
pulling it first``), 503 (the model's queue is full), 500. A failure after a stream has
started is one more line ``{"error": "..."}``, as Ollama sends it. A client that
disconnects, before or during its answer, aborts the run on the NPU.

What is refused (``format``, images, custom templates, ...), ignored (``num_ctx``, options
the runtime has no use for) or mapped is in the compatibility table of
``docs/guides/home-assistant.md``. The request translation (:func:`chat_request`,
:func:`generate_request`, :func:`normalise_messages`, :func:`parse_keep_alive`) is plain
functions; the engine runs in the response's own task, so a client gone cancels it.

Mount with :meth:`HttpFace.add <rkllm_sdk.server.http.HttpFace.add>` (the catalog's
lifespan running around the server)::

    face.add(ollama_routes(engine, face.authorized))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from ..errors import InvalidParamsError
from .catalog import ModelInfo, ModelNotFoundError, ModelSpec, QueueFullError
from .chat_engine import ChatDelta, ChatDone, ChatEngine, ChatRequest, RequestError
from .templates import ChatTemplate, TemplateError, load_template

__all__ = [
    "BUSY_MESSAGE",
    "MAX_BODY_BYTES",
    "OLLAMA_VERSION",
    "OllamaError",
    "chat_request",
    "generate_request",
    "normalise_messages",
    "ollama_routes",
    "parse_keep_alive",
]

#: The Ollama release whose API this face follows (``GET /api/version``): clients gate
#: features (tools, thinking) on it, so it is Ollama's number, not the SDK's.
OLLAMA_VERSION = "0.12.6"
#: A request body larger than this is refused (413): a Home Assistant system prompt with
#: every entity is tens of kilobytes.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Ollama's own text for a full queue (503).
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
#: ``expires_at`` of a model kept loaded forever (``keep_alive: -1``), as Ollama shows it:
#: a date far in the future.
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
_NDJSON = "application/x-ndjson"
#: Options that map onto a ChatRequest field: option -> (field, kind).
_SAMPLING: Mapping[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
}
#: ``think`` levels (gpt-oss style): any of them turns thinking on.
_THINK_LEVELS = frozenset({"high", "medium", "low"})
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_UNIT_S |= {"m": 60.0, "h": 3600.0}
_PARAMETER_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")
_QUANTIZATION = re.compile(r"w\d+a\d+(?:_g\d+)?", re.IGNORECASE)
#: Vectors, prompt tokens, milliseconds.
_EmbedResult = tuple[list[list[float]], int, float]


class OllamaError(Exception):
    """A request answered with ``{"error": message}`` and ``status``.

    Args:
        status: the HTTP status.
        message: what went wrong, for the client.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The error as Ollama sends it."""
        return JSONResponse({"error": self.message}, self.status, headers=self.headers)


def _bad(message: str) -> OllamaError:
    return OllamaError(400, message)


def _not_found(model: str) -> OllamaError:
    return OllamaError(404, f'model "{model}" not found, try pulling it first')


def _mapped(exc: Exception, model: str) -> OllamaError | None:
    """The Ollama error for what the engine or catalog raised (None: a bug, 500)."""
    if isinstance(exc, OllamaError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return _not_found(model)
    if isinstance(exc, QueueFullError):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return OllamaError(503, BUSY_MESSAGE, {"Retry-After": retry})
    if isinstance(exc, (RequestError, InvalidParamsError)):
        return _bad(str(exc))
    return None


# ---- request fields -----------------------------------------------------------------------


def parse_keep_alive(value: object) -> float | None:
    """``keep_alive`` in seconds: -1 forever, 0 unload after this request, None the default.

    Takes what Ollama takes: a number of seconds, or a Go duration string (``"300s"``,
    ``"5m"``, ``"1h30m"``, ``"-1"``); any negative value means forever.

    >>> parse_keep_alive("5m"), parse_keep_alive(-1), parse_keep_alive("0"), parse_keep_alive(None)
    (300.0, -1.0, 0.0, None)

    Raises:
        OllamaError: 400, not a number or duration.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_s(value.strip())
    else:
        raise _bad(f"keep_alive: expected a number of seconds or a duration, got {value!r}")
    if not math.isfinite(seconds):
        raise _bad(f"keep_alive: not a finite duration: {value!r}")
    return -1.0 if seconds < 0 else seconds


def _duration_s(text: str) -> float:
    with contextlib.suppress(ValueError):
        return float(text)  # a bare number is seconds (Ollama reads "300" so too)
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise _bad(f'keep_alive: not a duration: {text!r} (use seconds or e.g. "300s", "5m")')
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def _number(value: object, name: str, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _bad(f"{name}: not a finite number")
    if kind is int:
        if value != int(value):
            raise _bad(f"{name}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """ChatRequest fields from ``options`` (what is ignored: see the guide's table)."""
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _bad("options: expected an object")
    fields: dict[str, Any] = {}
    for option, (field, kind) in _SAMPLING.items():
        if options.get(option) is not None:
            fields[field] = _number(options[option], f"options.{option}", kind)
    if (predict := options.get("num_predict")) is not None:
        # Ollama: -1 no limit, -2 until the context is full, 0 no limit either.
        n = int(_number(predict, "options.num_predict", int))
        if n > 0:
            fields["max_tokens"] = n
        elif n < -2:  # -2 is Ollama's "fill the context"
            raise _bad("options.num_predict: expected a positive count, -1 or -2")
    # The context is fixed when the model loads (max_context_len): a request cannot change
    # it, so num_ctx is checked and otherwise ignored (Ollama caps it at the model's too).
    ctx = options.get("num_ctx")
    if ctx is not None and _number(ctx, "options.num_ctx", int) <= 0:
        raise _bad("options.num_ctx: expected a positive integer")
    if (stop := options.get("stop")) is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("options.stop: expected a list of strings")
        fields["stop"] = tuple(s for s in stop if s)
    return fields


def _think(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _THINK_LEVELS:
        return True
    raise _bad(f'think: expected true, false, "high", "medium" or "low", got {value!r}')


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ChatRequest fields /api/chat and /api/generate share; refuses what cannot be
    honoured."""
    fmt = body.get("format")
    if fmt not in (None, ""):
        raise _bad(
            "format: rkllm serve cannot constrain decoding to JSON or a schema (the runtime "
            "has no grammar sampling); leave format out and ask for JSON in the prompt"
        )
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("logprobs: the runtime does not return log probabilities")
    return {
        "model": _model_name(body),
        "thinking": _think(body.get("think")),
        "keep_alive_s": parse_keep_alive(body.get("keep_alive")),
        **_options(body),
    }


def _model_name(body: Mapping[str, Any]) -> str:
    name = body.get("model") or body.get("name")  # "name": older clients
    if not isinstance(name, str) or not name:
        raise _bad("model is required")
    return name


def _stream(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise _bad("stream: expected true or false")
    return stream


def _refuse_images(images: object, where: str) -> None:
    if images:
        raise _bad(f"{where}images: rkllm serve serves text models; images are not supported")


def _text(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{name}: expected a string")
    return value


def _arguments(value: object, where: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):  # some clients send the JSON text, as OpenAI does
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad(f"{where}.arguments: not a JSON object") from None
    if not isinstance(value, dict):
        raise _bad(f"{where}.arguments: expected an object")
    return value


def _assistant_calls(raw: object, index: int) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(f"messages[{index}].tool_calls: expected a list")
    calls = []
    for j, call in enumerate(raw):
        where = f"messages[{index}].tool_calls[{j}].function"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{where}.name: expected a string")
        # Ollama's messages carry no call ids: a stable one per position keeps the
        # rendered history identical from one request to the next (prefix reuse).
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{index}_{j}"
        arguments = _arguments(function.get("arguments"), where)
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls


def normalise_messages(raw: object) -> tuple[dict[str, Any], ...]:
    """Ollama chat messages in the engine's normalised form.

    A tool result names its call with ``tool_name`` (or ``name``, or ``tool_call_id``);
    without one it answers the oldest unanswered call of the assistant message before it,
    as Ollama's templates assume.

    >>> normalise_messages([
    ...     {"role": "assistant", "content": "", "tool_calls": [
    ...         {"function": {"name": "light", "arguments": {"on": True}}}]},
    ...     {"role": "tool", "content": "ok"},
    ... ])[1]
    {'role': 'tool', 'content': 'ok', 'tool_call_id': 'call_0_0', 'name': 'light'}

    Raises:
        OllamaError: 400, naming the message and field.
    """
    if not isinstance(raw, list):
        raise _bad("messages: expected a list")
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the last assistant message not answered
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]: expected an object")
        role = message.get("role")
        content = _text(message.get("content"), f"messages[{i}].content")
        _refuse_images(message.get("images"), f"messages[{i}].")
        item: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            calls = _assistant_calls(message.get("tool_calls"), i)
            if calls:
                item["tool_calls"] = calls
            thinking = _text(message.get("thinking"), f"messages[{i}].thinking")
            if thinking:
                item["reasoning_content"] = thinking
            pending = list(calls)
        elif role == "tool":
            name = message.get("tool_name") or message.get("name")
            call_id = message.get("tool_call_id")
            call = _answered(pending, name, call_id)
            if call is not None:
                call_id = call_id or call["id"]
                name = name or call["function"]["name"]
            if isinstance(call_id, str) and call_id:
                item["tool_call_id"] = call_id
            if isinstance(name, str) and name:
                item["name"] = name
        elif role not in ("system", "user"):
            raise _bad(
                f"messages[{i}].role: expected system, user, assistant or tool, got {role!r}"
            )
        out.append(item)
    return tuple(out)


def _answered(pending: list[dict[str, Any]], name: object, call_id: object) -> Any:
    """Take the pending call a tool result answers (by id, by name, else the oldest)."""
    for k, call in enumerate(pending):
        if (call_id and call["id"] == call_id) or (
            not call_id and (not name or call["function"]["name"] == name)
        ):
            return pending.pop(k)
    return None


def _tools(raw: object) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("tools: expected a list")
    tools = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"tools[{i}].function.name: expected a string")
        if tool.get("type", "function") != "function":
            raise _bad(f"tools[{i}].type: only function tools are supported")
        spec = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            spec["description"] = function["description"]
        spec["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": spec})
    return tuple(tools)


def chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """The engine's request for an ``/api/chat`` body.

    Raises:
        OllamaError: 400, a field this server cannot honour (named in the message).
    """
    return ChatRequest(
        messages=normalise_messages(body.get("messages") or []),
        tools=_tools(body.get("tools")),
        **_common(body),
    )


def generate_request(body: Mapping[str, Any]) -> ChatRequest:
    """The engine's request for an ``/api/generate`` body: the prompt as one user turn
    (after ``system``) in the model's template, or sent as is with ``raw``.

    Raises:
        OllamaError: 400, a field this server cannot honour (named in the message).
    """
    if body.get("template"):
        raise _bad(
            "template: a template per request is not supported (the model's own is used; "
            "rkllm serve --chat-template chooses another)"
        )
    if body.get("suffix"):
        raise _bad("suffix: fill-in-the-middle is not supported")
    if body.get("context"):
        raise _bad("context: token context is not supported; send the text (or use /api/chat)")
    _refuse_images(body.get("images"), "")
    prompt = _text(body.get("prompt"), "prompt")
    system = _text(body.get("system"), "system")
    raw = body.get("raw")
    if raw is not None and not isinstance(raw, bool):
        raise _bad("raw: expected true or false")
    if raw:
        return ChatRequest(messages=(), raw_prompt=prompt, **_common(body))
    turns = ({"role": "system", "content": system},) if system else ()
    return ChatRequest(messages=(*turns, {"role": "user", "content": prompt}), **_common(body))


# ---- responses ----------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(ms: float) -> int:
    return round(ms * 1e6)


def _final(done: ChatDone) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "length" if done.finish_reason == "length" else "stop",
        "total_duration": _ns(done.total_ms),
        "load_duration": _ns(done.load_ms),
        # Like Ollama: the prompt tokens evaluated for this request (reused ones excluded).
        "prompt_eval_count": max(0, done.prompt_tokens - done.cached_tokens),
        "prompt_eval_duration": _ns(done.prefill_ms),
        "eval_count": done.completion_tokens,
        "eval_duration": _ns(done.generate_ms),
    }


def _tool_calls_json(calls: Sequence[Any], first: int) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "function": {"index": first + k, "name": call.name, "arguments": call.arguments},
        }
        for k, call in enumerate(calls)
    ]


def _message(content: str, thinking: str, calls: Sequence[Any], first: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = _tool_calls_json(calls, first)
    return message


async def _chat_parts(
    engine: ChatEngine, req: ChatRequest, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """/api/chat's objects: one per delta then the final one (streaming), or the final one
    holding the whole answer."""
    calls = 0
    async with contextlib.aclosing(engine.chat(req)) as events:
        async for event in events:
            if isinstance(event, ChatDelta):
                if stream and (event.content or event.reasoning or event.tool_calls):
                    message = _message(event.content, event.reasoning, event.tool_calls, calls)
                    calls += len(event.tool_calls)
                    yield {
                        "model": req.model,
                        "created_at": _now(),
                        "message": message,
                        "done": False,
                    }
                continue
            message = (
                {"role": "assistant", "content": ""}
                if stream
                else _message(event.content, event.reasoning, event.tool_calls, 0)
            )
            yield {"model": req.model, "created_at": _now(), "message": message, **_final(event)}


async def _generate_parts(
    engine: ChatEngine, req: ChatRequest, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """/api/generate's objects (``response`` and ``thinking`` instead of a message)."""
    async with contextlib.aclosing(engine.chat(req)) as events:
        async for event in events:
            if isinstance(event, ChatDelta):
                if stream and (event.content or event.reasoning):
                    chunk = {"model": req.model, "created_at": _now(), "response": event.content}
                    if event.reasoning:
                        chunk["thinking"] = event.reasoning
                    yield {**chunk, "done": False}
                continue
            last: dict[str, Any] = {"model": req.model, "created_at": _now()}
            last["response"] = "" if stream else event.content
            if event.reasoning and not stream:
                last["thinking"] = event.reasoning
            yield {**last, **_final(event)}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _EngineResponse(Response):
    """An answer the engine produces in this response's own task.

    The status is known only once the first object is ready (a full queue or an unknown
    model raises before it), so the headers wait for it. With ``stream`` each object is one
    NDJSON line, sent as soon as it is made; without it ``parts`` yields one object, the
    JSON body. A client that disconnects cancels the work: closing the engine's generator
    aborts the run on the NPU.
    """

    def __init__(self, parts: AsyncGenerator[dict[str, Any]], *, model: str, stream: bool):
        super().__init__()
        self.parts = parts
        self.model = model
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            try:
                await self._send(scope, send)
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.parts.aclose()

    async def _send(self, scope: Scope, send: Send) -> None:
        try:
            first = await anext(self.parts)
        except Exception as exc:
            await _error_response(exc, self.model)(scope, _no_receive, send)
            return
        if not self.stream:
            async for _ in self.parts:  # the engine's run ends normally (frees the model)
                pass
            await JSONResponse(first)(scope, _no_receive, send)
            return
        headers = [(b"content-type", _NDJSON.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _dumps(first), "more_body": True})
        try:
            async for obj in self.parts:
                await send({"type": "http.response.body", "body": _dumps(obj), "more_body": True})
        except Exception as exc:  # after the headers: Ollama's in-stream error line
            error = _mapped(exc, self.model)
            line = {"error": error.message if error else str(exc) or type(exc).__name__}
            await send({"type": "http.response.body", "body": _dumps(line), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_response(exc: Exception, model: str) -> Response:
    error = _mapped(exc, model)
    if error is None:  # a load that failed, a runtime error, a bug
        return JSONResponse({"error": str(exc) or type(exc).__name__}, 500)
    return error.response()


async def _no_receive() -> Message:  # pragma: no cover  # JSON responses never read
    return {"type": "http.disconnect"}


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the client disconnects (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


# ---- model listings -----------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _digest(path: Path, size: int, modified: datetime) -> str:
    """A stable stand-in for Ollama's manifest digest: sha256 of path, size and mtime (the
    file itself is gigabytes; hashing it on every listing is not worth it)."""
    key = f"{path}\0{size}\0{modified.timestamp():.6f}"
    return hashlib.sha256(key.encode()).hexdigest()


def _family(template_option: str | None, path: Path) -> tuple[str, ChatTemplate | None]:
    """The model's template family (``qwen3``, ``llama3``, ...) and its template."""
    try:
        template = load_template(template_option, path)
    except (TemplateError, OSError):
        return "", None
    return ("" if template.name.startswith("file:") else template.name), template


def _details(path: Path, family: str) -> dict[str, Any]:
    stem = path.stem
    size = _PARAMETER_SIZE.search(stem)
    quant = _QUANTIZATION.search(stem)
    return {
        "parent_model": "",
        "format": path.suffix.lstrip(".") or "rkllm",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": size.group(1).upper() + "B" if size else "",
        "quantization_level": quant.group(0).upper() if quant else "",
    }


def _context_length(info: ModelInfo) -> int | None:
    return None if info.params is None else info.params.max_context_len


# ---- routes -------------------------------------------------------------------------------


def ollama_routes(
    engine: ChatEngine,
    authorized: Callable[[Any], bool] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> list[BaseRoute]:
    """Ollama's API as Starlette routes, to mount with ``HttpFace.add``.

    Args:
        engine: runs chats and embeddings; its catalog lists the models.
        authorized: checks a request's headers for the API key (``HttpFace.authorized``);
            None: open. Every route but ``GET /`` and ``HEAD /`` wants it.
        log: called with one line per refused or failed request.
    """
    return _OllamaFace(engine, authorized, log).routes()


class _OllamaFace:
    """The handlers, sharing the engine, its catalog and the key check."""

    def __init__(
        self,
        engine: ChatEngine,
        authorized: Callable[[Any], bool] | None,
        log: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self.catalog = engine.catalog
        self.authorized = authorized
        self.log = log

    def routes(self) -> list[BaseRoute]:
        api: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/api/version", self.version, ["GET"]),
            ("/api/tags", self.tags, ["GET"]),
            ("/api/ps", self.ps, ["GET"]),
            ("/api/show", self.show, ["POST"]),
            ("/api/pull", self.pull, ["POST"]),
            ("/api/chat", self.chat, ["POST"]),
            ("/api/generate", self.generate, ["POST"]),
            ("/api/embed", self.embed, ["POST"]),
            ("/api/embeddings", self.embeddings, ["POST"]),
            ("/api/create", self.unsupported, ["POST"]),
            ("/api/copy", self.unsupported, ["POST"]),
            ("/api/delete", self.unsupported, ["DELETE"]),
            ("/api/push", self.unsupported, ["POST"]),
            ("/api/blobs/{digest}", self.unsupported, ["HEAD", "POST"]),
        ]
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            *(Route(path, self._guarded(fn), methods=methods) for path, fn, methods in api),
        ]

    def _note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def _guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the key, its errors in Ollama's shape."""

        async def run(request: Request) -> Response:
            where = f"{request.method} {request.url.path}"
            if self.authorized is not None and not self.authorized(request.headers):
                self._note(f"ollama {where} 401 (no or wrong API key)")
                return JSONResponse(
                    {"error": "unauthorized"},
                    401,
                    headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
                )
            try:
                return await handler(request)
            except OllamaError as exc:
                self._note(f"ollama {where} {exc.status}: {exc.message}")
                return exc.response()
            except Exception as exc:
                self._note(f"ollama {where} 500: {exc!r}")
                return _error_response(exc, "")

        return run

    async def _body(self, request: Request) -> dict[str, Any]:
        too_large = OllamaError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_large
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > MAX_BODY_BYTES:
                raise too_large
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _bad(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        return body

    def _resolve(self, name: str) -> ModelSpec:
        try:
            return self.catalog.resolve(name)
        except ModelNotFoundError:
            raise _not_found(name) from None

    def _listing(self, info: ModelInfo) -> dict[str, Any]:
        family, _ = _family(info.template, info.path)
        return {
            "name": info.name,
            "model": info.name,
            "modified_at": _iso(info.modified),
            "size": info.size_bytes,
            "digest": _digest(Path(info.path), info.size_bytes, info.modified),
            "details": _details(info.path, family),
        }

    # -- listings -------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        """``GET /``, ``HEAD /``: the probe clients make before anything else."""
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        """``GET /api/version``."""
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        """``GET /api/tags``: every configured model, loaded or not."""
        return JSONResponse({"models": [self._listing(i) for i in self.catalog.models()]})

    async def ps(self, request: Request) -> Response:
        """``GET /api/ps``: the loaded models and when their keep-alive ends."""
        models = []
        for info in self.catalog.models():
            if not info.loaded:
                continue
            entry = self._listing(info)
            del entry["modified_at"]
            entry["expires_at"] = _iso(info.expires_at or _FOREVER)
            entry["size_vram"] = 0  # the NPU works from system memory
            if (ctx := _context_length(info)) is not None:
                entry["context_length"] = ctx
            models.append(entry)
        return JSONResponse({"models": models})

    async def show(self, request: Request) -> Response:
        """``POST /api/show``: template, stop strings, details, capabilities."""
        spec = self._resolve(_model_name(await self._body(request)))
        info = next((i for i in self.catalog.models() if i.name == spec.name), None)
        family, template = _family(spec.template, spec.path)
        source = "" if template is None else template.source
        capabilities = ["completion"]
        if "tools" in source:
            capabilities.append("tools")
        if template is not None and template.think_tags is not None:
            capabilities.append("thinking")
        stops = () if template is None else template.stop
        parameters = "\n".join(f"stop {json.dumps(s)}" for s in stops)
        arch = family or "rkllm"
        model_info: dict[str, Any] = {"general.architecture": arch}
        if info is not None and (ctx := _context_length(info)) is not None:
            model_info[f"{arch}.context_length"] = ctx
        modelfile = f"# Modelfile generated by rkllm serve\nFROM {spec.path}\n"
        modelfile += f'TEMPLATE """{source}"""\n'
        modelfile += "".join(f"PARAMETER {line}\n" for line in parameters.splitlines())
        reply: dict[str, Any] = {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": source,
            "details": _details(spec.path, family),
            "model_info": model_info,
            "capabilities": capabilities,
        }
        if info is not None:
            reply["modified_at"] = _iso(info.modified)
        return JSONResponse(reply)

    async def pull(self, request: Request) -> Response:
        """``POST /api/pull``: success for a configured model; nothing is ever downloaded."""
        body = await self._body(request)
        name, stream = _model_name(body), _stream(body)
        try:
            self.catalog.resolve(name)
        except ModelNotFoundError:
            raise OllamaError(
                404,
                f'model "{name}" not found: rkllm serve never downloads models; give the '
                ".rkllm file with --model NAME=PATH or put it in --models-dir",
            ) from None
        steps = ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
        if stream:
            lines = b"".join(_dumps({"status": s}) for s in steps)
            return Response(lines, media_type=_NDJSON)
        return JSONResponse({"status": "success"})

    async def unsupported(self, request: Request) -> Response:
        """Model management: refused."""
        raise OllamaError(
            501,
            f"{request.url.path}: rkllm serve serves the model files it was given (--model, "
            "--models-dir); it does not create, copy, delete or push models",
        )

    # -- generation -------------------------------------------------------------------------

    async def _load_or_unload(self, req: ChatRequest, key: str) -> Response:
        """An empty prompt: load the model (or unload it, keep_alive 0), as Ollama does."""
        reason = "unload" if req.keep_alive_s == 0 else "load"
        try:
            if reason == "unload":
                self._resolve(req.model)
                await self.catalog.unload(req.model)
            else:
                async with self.catalog.use(req.model, keep_alive_s=req.keep_alive_s):
                    pass
        except Exception as exc:
            if (error := _mapped(exc, req.model)) is None:
                raise
            raise error from None
        empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
        reply = {"model": req.model, "created_at": _now(), key: empty}
        return JSONResponse({**reply, "done": True, "done_reason": reason})

    async def chat(self, request: Request) -> Response:
        """``POST /api/chat``."""
        body = await self._body(request)
        req = chat_request(body)
        if not req.messages:
            return await self._load_or_unload(req, "message")
        stream = _stream(body)
        parts = _chat_parts(self.engine, req, stream)
        return _EngineResponse(parts, model=req.model, stream=stream)

    async def generate(self, request: Request) -> Response:
        """``POST /api/generate``."""
        body = await self._body(request)
        req = generate_request(body)
        if not body.get("prompt") and not body.get("system"):
            return await self._load_or_unload(req, "response")
        stream = _stream(body)
        parts = _generate_parts(self.engine, req, stream)
        return _EngineResponse(parts, model=req.model, stream=stream)

    async def _embed(self, name: str, inputs: list[str], keep_alive: object) -> _EmbedResult:
        keep_alive_s = parse_keep_alive(keep_alive)
        if not inputs:
            return [], 0, 0.0
        started = time.perf_counter()
        try:
            vectors, tokens = await self.engine.embed(name, inputs, keep_alive_s=keep_alive_s)
        except Exception as exc:
            if (error := _mapped(exc, name)) is None:
                raise
            raise error from None
        return vectors, tokens, (time.perf_counter() - started) * 1e3

    async def embed(self, request: Request) -> Response:
        """``POST /api/embed``: one normalised vector per input."""
        body = await self._body(request)
        name = _model_name(body)
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise _bad("input: expected a string or a list of strings")
        if body.get("dimensions") is not None:
            raise _bad("dimensions: vectors cannot be shortened (they have the model's width)")
        vectors, tokens, ms = await self._embed(name, inputs, body.get("keep_alive"))
        return JSONResponse(
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": _ns(ms),
                "load_duration": 0,
                "prompt_eval_count": tokens,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        """``POST /api/embeddings`` (Ollama's older endpoint): ``prompt`` -> ``embedding``."""
        body = await self._body(request)
        name = _model_name(body)
        prompt = _text(body.get("prompt"), "prompt")
        inputs = [prompt] if prompt else []
        vectors, _, _ = await self._embed(name, inputs, body.get("keep_alive"))
        return JSONResponse({"embedding": vectors[0] if vectors else []})
