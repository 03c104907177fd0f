"""Ollama's JSON, in and out: request bodies to the engine's :class:`ChatRequest`, the
engine's results and the catalog's facts to the objects Ollama sends, errors to
:class:`OllamaError`. Plain functions: no engine, no sockets (the routes that use them are
in :mod:`.ollama_api`).

- Requests: :func:`chat_request` (``/api/chat``), :func:`generate_request`
  (``/api/generate``: the prompt as one user turn after ``system``, or as is with ``raw``),
  :func:`normalise_messages` (tool results matched to their calls), :func:`parse_keep_alive`
  (seconds or Go durations). A field this server cannot honour (``format``, images,
  ``template``, ``suffix``, ``context``, ``logprobs``) or a malformed one is an
  :class:`OllamaError` 400 naming it; ``options`` are mapped, ``num_ctx`` checked and ignored.
- Responses: :func:`assistant_message`, :func:`done_fields` (``done_reason`` and the
  nanosecond timings), :func:`ndjson_line`, :func:`model_details` and the other listing
  fields.
- Errors: :func:`error_for` maps what the engine or catalog raised to Ollama's status codes
  (404 unknown model, 503 with ``Retry-After`` for a full queue or a server shutting down,
  400 a bad request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.responses import Response

from ..errors import InvalidParamsError
from .catalog import DrainingError, ModelNotFoundError, QueueFullError
from .chat_types import ChatDone, ChatRequest, ContextLengthError, RequestError
from .http_api import AsciiJSON

__all__ = [
    "BUSY_MESSAGE",
    "OllamaError",
    "assistant_message",
    "bad_request",
    "chat_request",
    "done_fields",
    "error_for",
    "generate_request",
    "iso_time",
    "model_details",
    "model_digest",
    "model_name",
    "nanoseconds",
    "ndjson_line",
    "normalise_messages",
    "not_found",
    "parse_keep_alive",
    "text_field",
    "timestamp",
    "wants_stream",
]

#: Ollama's own text for a full queue (503).
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
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
        return AsciiJSON({"error": self.message}, self.status, headers=self.headers)


def bad_request(message: str) -> OllamaError:
    """A 400: a field this server cannot honour, or a malformed one."""
    return OllamaError(400, message)


def not_found(model: str) -> OllamaError:
    """Ollama's 404 for an unknown model."""
    return OllamaError(404, f'model "{model}" not found, try pulling it first')


def error_for(exc: Exception, model: str) -> OllamaError | None:
    """The Ollama error for what the engine or catalog raised (None: a bug, 500); a prompt
    longer than the context is a 400, as Ollama answers it."""
    if isinstance(exc, OllamaError):
        return exc
    if isinstance(exc, ContextLengthError):
        return bad_request(
            f"the input length exceeds the context length: {model}'s context is "
            f"{exc.context_len} tokens (max_context_len, fixed when it loads; options.num_ctx "
            "cannot change it), and the runtime refused the prompt before generating "
            "anything. Send fewer or shorter messages, or load the model with a larger "
            f"max_context_len. The runtime: {exc.cause}"
        )
    if isinstance(exc, ModelNotFoundError):
        return not_found(model)
    if isinstance(exc, QueueFullError):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        message = str(exc) if isinstance(exc, DrainingError) else BUSY_MESSAGE
        return OllamaError(503, message, {"Retry-After": retry})
    if isinstance(exc, (RequestError, InvalidParamsError)):
        return bad_request(str(exc))
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
        raise bad_request(f"keep_alive: expected a number of seconds or a duration, got {value!r}")
    if not math.isfinite(seconds):
        raise bad_request(f"keep_alive: not a finite duration: {value!r}")
    return -1.0 if seconds < 0 else seconds


def _duration_s(text: str) -> float:
    with contextlib.suppress(ValueError):
        return float(text)  # a bare number is seconds (Ollama reads "300" so too)
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise bad_request(
            f'keep_alive: not a duration: {text!r} (use seconds or e.g. "300s", "5m")'
        )
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def _number(value: object, name: str, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise bad_request(f"{name}: not a finite number")
    if kind is int:
        if value != int(value):
            raise bad_request(f"{name}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """ChatRequest fields from ``options`` (what is ignored: see the guide's table)."""
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_request("options: expected an object")
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
            raise bad_request("options.num_predict: expected a positive count, -1 or -2")
    # The context is fixed when the model loads (max_context_len): a request cannot change
    # it, so num_ctx is checked and otherwise ignored (Ollama caps it at the model's too).
    ctx = options.get("num_ctx")
    if ctx is not None and _number(ctx, "options.num_ctx", int) <= 0:
        raise bad_request("options.num_ctx: expected a positive integer")
    if (stop := options.get("stop")) is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("options.stop: expected a list of strings")
        fields["stop"] = tuple(s for s in stop if s)
    return fields


def _think(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _THINK_LEVELS:
        return True
    raise bad_request(f'think: expected true, false, "high", "medium" or "low", got {value!r}')


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ChatRequest fields /api/chat and /api/generate share; refuses what cannot be
    honoured."""
    fmt = body.get("format")
    if fmt not in (None, ""):
        raise bad_request(
            "format: rkllm serve cannot constrain decoding to JSON or a schema (the runtime "
            "has no grammar sampling); leave format out and ask for JSON in the prompt"
        )
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad_request("logprobs: the runtime does not return log probabilities")
    return {
        "model": model_name(body),
        "thinking": _think(body.get("think")),
        "keep_alive_s": parse_keep_alive(body.get("keep_alive")),
        **_options(body),
    }


def model_name(body: Mapping[str, Any]) -> str:
    """The body's ``model`` (or ``name``, as older clients send it); 400 without one."""
    name = body.get("model") or body.get("name")  # "name": older clients
    if not isinstance(name, str) or not name:
        raise bad_request("model is required")
    return name


def wants_stream(body: Mapping[str, Any]) -> bool:
    """The body's ``stream``: true unless it says false, as in Ollama."""
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise bad_request("stream: expected true or false")
    return stream


def _refuse_images(images: object, where: str) -> None:
    if images:
        raise bad_request(
            f"{where}images: rkllm serve serves text models; images are not supported"
        )


def text_field(value: object, name: str) -> str:
    """A string field (``""`` when absent); 400 naming ``name`` otherwise."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name}: expected a string")
    return value


def _arguments(value: object, where: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):  # some clients send the JSON text, as OpenAI does
        try:
            value = json.loads(value)
        except ValueError:
            raise bad_request(f"{where}.arguments: not a JSON object") from None
    if not isinstance(value, dict):
        raise bad_request(f"{where}.arguments: expected an object")
    return value


def _assistant_calls(raw: object, index: int) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request(f"messages[{index}].tool_calls: expected a list")
    calls = []
    for j, call in enumerate(raw):
        where = f"messages[{index}].tool_calls[{j}].function"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}.name: expected a string")
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
        raise bad_request("messages: expected a list")
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the last assistant message not answered
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}]: expected an object")
        role = message.get("role")
        content = text_field(message.get("content"), f"messages[{i}].content")
        _refuse_images(message.get("images"), f"messages[{i}].")
        item: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            calls = _assistant_calls(message.get("tool_calls"), i)
            if calls:
                item["tool_calls"] = calls
            thinking = text_field(message.get("thinking"), f"messages[{i}].thinking")
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
            raise bad_request(
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
        raise bad_request("tools: expected a list")
    tools = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"tools[{i}].function.name: expected a string")
        if tool.get("type", "function") != "function":
            raise bad_request(f"tools[{i}].type: only function tools are supported")
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
        raise bad_request(
            "template: a template per request is not supported (the model's own is used; "
            "rkllm serve --chat-template chooses another)"
        )
    if body.get("suffix"):
        raise bad_request("suffix: fill-in-the-middle is not supported")
    if body.get("context"):
        raise bad_request(
            "context: token context is not supported; send the text (or use /api/chat)"
        )
    _refuse_images(body.get("images"), "")
    prompt = text_field(body.get("prompt"), "prompt")
    system = text_field(body.get("system"), "system")
    raw = body.get("raw")
    if raw is not None and not isinstance(raw, bool):
        raise bad_request("raw: expected true or false")
    if raw:
        return ChatRequest(messages=(), raw_prompt=prompt, **_common(body))
    turns = ({"role": "system", "content": system},) if system else ()
    return ChatRequest(messages=(*turns, {"role": "user", "content": prompt}), **_common(body))


# ---- responses ----------------------------------------------------------------------------


def timestamp() -> str:
    """Now, as Ollama writes ``created_at`` (:func:`iso_time`)."""
    return iso_time(datetime.now(UTC))


def nanoseconds(ms: float) -> int:
    """Milliseconds as Ollama's durations: integer nanoseconds."""
    return round(ms * 1e6)


def done_fields(done: ChatDone) -> dict[str, Any]:
    """The fields of the last object of an answer: ``done``, ``done_reason``, counts, timings."""
    return {
        "done": True,
        "done_reason": "length" if done.finish_reason == "length" else "stop",
        "total_duration": nanoseconds(done.total_ms),
        "load_duration": nanoseconds(done.load_ms),
        # Like Ollama: the prompt tokens evaluated for this request (reused ones excluded).
        "prompt_eval_count": max(0, done.prompt_tokens - done.cached_tokens),
        "prompt_eval_duration": nanoseconds(done.prefill_ms),
        "eval_count": done.completion_tokens,
        "eval_duration": nanoseconds(done.generate_ms),
    }


def _tool_calls_json(calls: Sequence[Any], first: int) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "function": {"index": first + k, "name": call.name, "arguments": call.arguments},
        }
        for k, call in enumerate(calls)
    ]


def assistant_message(
    content: str, thinking: str, calls: Sequence[Any], first: int
) -> dict[str, Any]:
    """An assistant ``message``; tool calls numbered from ``first``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = _tool_calls_json(calls, first)
    return message


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON line (compact, UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# ---- model listings -----------------------------------------------------------------------


def iso_time(moment: datetime) -> str:
    """``moment`` as Ollama writes times (UTC, ISO 8601, ``Z``)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def model_digest(path: Path, size: int, modified: datetime) -> str:
    """A stable stand-in for Ollama's manifest digest: sha256 of path, size and mtime (the
    file itself is gigabytes; hashing it on every listing is not worth it)."""
    key = f"{path}\0{size}\0{modified.timestamp():.6f}"
    return hashlib.sha256(key.encode()).hexdigest()


def model_details(path: Path, family: str) -> dict[str, Any]:
    """A listing's ``details``: format, family, size and quantisation from the file name."""
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
