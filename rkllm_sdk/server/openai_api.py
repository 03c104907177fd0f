"""The OpenAI-compatible API of ``rkllm serve``: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``.

A translation layer only: requests become :class:`~.chat_engine.ChatRequest` objects (or
embedding calls), the :class:`~.chat_engine.ChatEngine` runs them (queueing, templates, KV
cache reuse), and its events become OpenAI's objects. Mount it on the HTTP face::

    face.add(openai_routes(engine, face.authorized), lifespan=catalog.lifespan)

Decisions (the table in ``docs/guides/openai-clients.md`` lists every field):

- **Unknown fields are ignored**, as most OpenAI-compatible servers do (clients such as
  LiteLLM send extras); fields that are known but cannot be honoured are refused with 400 and
  ``param`` naming them: ``n`` > 1, ``logprobs``, ``top_logprobs``, ``logit_bias``,
  ``response_format`` other than text, audio, image parts, ``functions``, ...
- ``parallel_tool_calls: false`` is honoured by returning only the model's first tool call.
- Thinking: ``chat_template_kwargs.enable_thinking`` (wins), a top-level ``enable_thinking``,
  or ``reasoning_effort`` (``none`` / ``minimal``: off; ``low`` / ``medium`` / ``high``:
  on); the thoughts come as ``reasoning_content``.
- Extra sampling fields: ``top_k``, ``repeat_penalty`` (alias ``repetition_penalty``),
  ``seed``.
- A streamed reply's headers go out with its first event, or after ``ping_s`` without one
  (queue, load, long prefill), with a ping comment (then one every ``ping_s``). An error
  before that is an HTTP error; after it, an SSE event ``{"error": {...}}`` then
  ``[DONE]``. A client that disconnects has its run aborted (the engine's generator is
  closed), streaming or not.
- Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400
  ``invalid_request_error``, 401 ``invalid_api_key``, 404 ``model_not_found``, 413, 429
  (queue full: ``Retry-After`` and ``retry-after-ms``), 5xx ``server_error``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
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

from ..errors import RKLLMError, http_status
from ..results import ToolCall
from .catalog import ModelInfo, ModelNotFoundError, QueueFullError
from .chat_engine import ChatDelta, ChatDone, ChatEngine, ChatRequest, RequestError
from .templates import TemplateError

__all__ = [
    "MAX_BODY_BYTES",
    "OpenAIError",
    "ParsedChat",
    "ParsedEmbedding",
    "error_from",
    "openai_routes",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
]

#: A request body larger than this is refused (413).
MAX_BODY_BYTES = 16 * 1024 * 1024
_MAX_STOP = 4
_INT32_MAX = 2**31 - 1  # token counts and top_k reach the runtime as C ints
_DONE = "data: [DONE]\n\n"
_CHUNK_EVENTS = 256  # engine events already queued are written out together, up to this many
_REASONING_EFFORT = {
    "none": False,
    "minimal": False,
    "low": True,
    "medium": True,
    "high": True,
    "xhigh": True,
    "max": True,
}
_IMAGE_PARTS = {"image_url", "input_image", "image"}
_AUDIO_PARTS = {"input_audio", "audio"}

Event: TypeAlias = ChatDelta | ChatDone
Run: TypeAlias = Callable[[], AsyncGenerator[Event, None]]


# ---- errors ------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: the HTTP status.
        message: what went wrong, for a person.
        kind: the error ``type`` (``invalid_request_error``, ``server_error``, ...).
        param: the request field at fault, as a path (``messages[2].content``), or None.
        code: a machine-readable code (``model_not_found``, ...), or None.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        error = {"message": self.message, "type": self.kind, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def response(self) -> Response:
        """The JSON error response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _invalid(param: str | None, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def _unsupported(param: str, what: str) -> OpenAIError:
    return _invalid(param, f"`{param}`: {what} is not supported by this server")


def _unauthorized() -> Response:
    error = OpenAIError(
        401,
        "Incorrect API key provided: send `Authorization: Bearer <API key>`.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
    )
    return error.response()


def error_from(exc: BaseException, params: Mapping[str, str] | None = None) -> OpenAIError:
    """The OpenAI error for an exception of the engine or the runtime.

    Args:
        exc: what the engine (or the runtime below it) raised.
        params: engine field names (``max_tokens``) -> the client's (``max_completion_tokens``).
    """
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        message = f"The model `{exc.name}` does not exist here (GET /v1/models lists them)"
        return OpenAIError(404, message, param="model", code="model_not_found")
    if isinstance(exc, QueueFullError):
        return _queue_full(exc)
    if isinstance(exc, RequestError):
        return _invalid(_client_param(exc.field, params or {}), str(exc))
    if isinstance(exc, TemplateError):
        return _invalid("messages", f"the model's chat template refused the request: {exc}")
    return _runtime_error(exc)


def _queue_full(exc: QueueFullError) -> OpenAIError:
    wait = max(exc.retry_after_s, 0.0)
    headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": f"{wait * 1000:.0f}"}
    return OpenAIError(429, str(exc), kind="requests", code="rate_limit_exceeded", headers=headers)


def _runtime_error(exc: BaseException) -> OpenAIError:
    """The error for what the runtime (or a bug) raised: the SDK's own HTTP status."""
    if not isinstance(exc, RKLLMError):
        message = f"internal error: {type(exc).__name__}: {exc}"
        return OpenAIError(500, message, kind="server_error")
    status = http_status(exc)
    if status == 400:
        return _invalid(None, str(exc))
    if status == 429:
        return OpenAIError(429, str(exc), kind="requests", code="rate_limit_exceeded")
    return OpenAIError(status, str(exc), kind="server_error")


def _client_param(field: str, params: Mapping[str, str]) -> str:
    """The client's name for an engine field (``raw_prompt`` -> ``prompt``), path kept."""
    head = field.split(".", 1)[0].split("[", 1)[0]
    return params.get(head, head) + field[len(head) :] if head else field


# ---- reading fields ----------------------------------------------------------------------


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(param, f"`{param}` must be an object")
    return value


def _array(value: Any, param: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _invalid(param, f"`{param}` must be an array")
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(param, f"`{param}` must be a string")
    return value


def _boolean(value: Any, param: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _invalid(param, f"`{param}` must be true or false")
    return value


def _integer(value: Any, param: str, low: int, high: int = _INT32_MAX) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(param, f"`{param}` must be an integer")
    if not low <= value <= high:
        raise _invalid(param, f"`{param}` must be between {low} and {high}, got {value}")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(param, f"`{param}` must be a number")
    if not low <= value <= high:  # NaN fails too; a huge integer compares exactly
        raise _invalid(param, f"`{param}` must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "`model` must be the name of a model (see GET /v1/models)")
    return model


def _refuse_unless(
    body: Mapping[str, Any], param: str, allowed: Callable[[Any], bool], what: str
) -> None:
    if param in body and not allowed(body[param]):
        raise _unsupported(param, what)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("stop", "`stop` must be a string or an array of strings")
    if len(stops) > _MAX_STOP:
        raise _invalid("stop", f"`stop` holds at most {_MAX_STOP} strings, got {len(stops)}")
    if any(not s for s in stops):
        raise _invalid("stop", "`stop` strings must not be empty")
    return tuple(stops)


def _sampling(body: Mapping[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """The sampling fields shared by chat and completions, as ChatRequest keywords."""
    penalty_name = "repeat_penalty" if "repeat_penalty" in body else "repetition_penalty"
    if penalty_name != "repeat_penalty":
        params["repeat_penalty"] = penalty_name
    top_k = _integer(body.get("top_k"), "top_k", -1)
    out: dict[str, Any] = {
        "temperature": _number(body.get("temperature"), "temperature", 0.0, 2.0),
        "top_p": _number(body.get("top_p"), "top_p", 0.0, 1.0),
        "frequency_penalty": _number(body.get("frequency_penalty"), "frequency_penalty", -2, 2),
        "presence_penalty": _number(body.get("presence_penalty"), "presence_penalty", -2, 2),
        "top_k": None if top_k == -1 else top_k,  # -1: "off", as vLLM spells it
        "repeat_penalty": _number(body.get(penalty_name), penalty_name, 0.01, 10.0),
        "seed": _integer(body.get("seed"), "seed", -(2**63), 2**64 - 1),
        "stop": _stop(body.get("stop")),
    }
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins
        if body.get(name) is not None:
            out["max_tokens"] = _integer(body[name], name, 1)
            params["max_tokens"] = name
            break
    return out


def _stream_options(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(_boolean(body.get("stream"), "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    include = _object(options, "stream_options").get("include_usage")
    return stream, bool(_boolean(include, "stream_options.include_usage"))


def _refuse_common(body: Mapping[str, Any]) -> None:
    """Fields of chat and completions this server cannot honour."""
    _refuse_unless(body, "n", lambda v: v is None or v == 1, "more than one choice (`n` > 1)")
    _refuse_unless(body, "logit_bias", lambda v: not v, "`logit_bias`")
    _refuse_unless(body, "top_logprobs", lambda v: not v, "`top_logprobs`")


# ---- chat completions: request -----------------------------------------------------------


@attrs.frozen(kw_only=True)
class ParsedChat:
    """A chat (or completions) request, translated.

    Attributes:
        request: what the engine runs.
        stream: answer with SSE.
        include_usage: a last chunk with ``usage`` (``stream_options.include_usage``).
        first_tool_only: ``parallel_tool_calls: false``: only the first tool call is kept.
        params: engine field names -> the names the client used, for the ``param`` of an
            engine's :class:`~.chat_engine.RequestError`.
    """

    request: ChatRequest
    stream: bool = False
    include_usage: bool = False
    first_tool_only: bool = False
    params: Mapping[str, str] = attrs.field(factory=dict)


def parse_chat(body: Mapping[str, Any]) -> ParsedChat:
    """Translate a ``POST /v1/chat/completions`` body.

    Raises:
        OpenAIError: 400 naming the field that is missing, malformed or not supported.
    """
    model = _model(body)
    _refuse_common(body)
    _refuse_unless(body, "logprobs", lambda v: not v, "`logprobs`")
    _refuse_unless(body, "response_format", _text_format, "a `response_format` other than text")
    _refuse_unless(body, "modalities", lambda v: v in (None, ["text"]), "output other than text")
    _refuse_unless(body, "audio", lambda v: v is None, "audio output")
    _refuse_unless(body, "functions", lambda v: v is None, "`functions` (use `tools`)")
    _refuse_unless(
        body, "function_call", lambda v: v is None, "`function_call` (use `tool_choice`)"
    )
    _refuse_unless(body, "web_search_options", lambda v: v is None, "web search")
    params: dict[str, str] = {}
    fields = _sampling(body, params)
    stream, include_usage = _stream_options(body)
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    parallel = _boolean(body.get("parallel_tool_calls"), "parallel_tool_calls")
    thinking, params["thinking"] = _thinking(body)
    request = ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        **fields,
    )
    return ParsedChat(
        request=request,
        stream=stream,
        include_usage=include_usage,
        first_tool_only=parallel is False,
        params=params,
    )


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and value.get("type") == "text")


def _thinking(body: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(thinking on / off / the template's default, the field that said so)."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        for key in _object(kwargs, "chat_template_kwargs"):
            if key != "enable_thinking":
                param = f"chat_template_kwargs.{key}"
                raise _unsupported(param, "a chat template argument other than `enable_thinking`")
        param = "chat_template_kwargs.enable_thinking"
        if kwargs.get("enable_thinking") is not None:
            return _boolean(kwargs["enable_thinking"], param), param
    if body.get("enable_thinking") is not None:
        return _boolean(body["enable_thinking"], "enable_thinking"), "enable_thinking"
    effort = body.get("reasoning_effort")
    if effort is None:
        return None, "reasoning_effort"
    if not isinstance(effort, str) or effort not in _REASONING_EFFORT:
        choices = ", ".join(_REASONING_EFFORT)
        raise _invalid("reasoning_effort", f"`reasoning_effort` must be one of {choices}")
    return _REASONING_EFFORT[effort], "reasoning_effort"


def _tools(value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    tools = []
    for i, item in enumerate(_array(value, "tools")):
        where = f"tools[{i}]"
        tool = _object(item, where)
        if tool.get("type") != "function":
            raise _unsupported(f"{where}.type", "a tool other than `function`")
        function = _object(tool.get("function"), f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.function.name", f"`{where}.function.name` must be a string")
        spec: dict[str, Any] = {"name": name}
        if function.get("description") is not None:
            spec["description"] = _string(function["description"], f"{where}.function.description")
        parameters = function.get("parameters")
        spec["parameters"] = (
            dict(_object(parameters, f"{where}.function.parameters"))
            if parameters is not None
            else {"type": "object", "properties": {}}
        )
        tools.append({"type": "function", "function": spec})
    return tuple(tools)


def _tool_choice(value: Any, tools: Sequence[Mapping[str, Any]]) -> str | Mapping[str, Any]:
    if value is None:
        return "auto"
    if value in ("auto", "none"):
        return str(value)
    if not tools:
        raise _invalid("tool_choice", "`tool_choice` other than auto / none needs `tools`")
    if value == "required":
        return "required"
    names = {t["function"]["name"] for t in tools}
    if isinstance(value, Mapping) and value.get("type") == "function":
        name = _object(value.get("function"), "tool_choice.function").get("name")
        if name not in names:
            raise _invalid("tool_choice.function.name", f"no tool named {name!r} in `tools`")
        return {"type": "function", "function": {"name": name}}
    raise _invalid(
        "tool_choice", '`tool_choice` must be "auto", "none", "required" or a named function'
    )


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    messages = _array(value, "messages")
    if not messages:
        raise _invalid("messages", "`messages` must hold at least one message")
    tool_names: dict[str, str] = {}  # tool call id -> function name, for tool results
    return tuple(_message(i, m, tool_names) for i, m in enumerate(messages))


def _message(i: int, value: Any, tool_names: dict[str, str]) -> Mapping[str, Any]:
    where = f"messages[{i}]"
    message = _object(value, where)
    role = message.get("role")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    if role in ("system", "user"):
        return {"role": role, "content": _content(message.get("content"), f"{where}.content")}
    if role == "assistant":
        return _assistant(message, where, tool_names)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{where}.tool_call_id", f"`{where}.tool_call_id` must be a string")
        out = {"role": "tool", "content": _content(message.get("content"), f"{where}.content")}
        out["tool_call_id"] = call_id
        name = message.get("name") or tool_names.get(call_id)
        return {**out, "name": name} if isinstance(name, str) else out
    if role == "function":
        raise _unsupported(f"{where}.role", 'the legacy "function" role (use "tool")')
    raise _invalid(
        f"{where}.role", f"`{where}.role` must be system, developer, user, assistant or tool"
    )


def _assistant(
    message: Mapping[str, Any], where: str, tool_names: dict[str, str]
) -> Mapping[str, Any]:
    if message.get("function_call") is not None:
        raise _unsupported(f"{where}.function_call", "`function_call` (use `tool_calls`)")
    content = message.get("content")
    out: dict[str, Any] = {
        "role": "assistant",
        "content": "" if content is None else _content(content, f"{where}.content"),
    }
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        out["reasoning_content"] = reasoning
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            _tool_call(call, f"{where}.tool_calls[{j}]", tool_names)
            for j, call in enumerate(_array(calls, f"{where}.tool_calls"))
        ]
    return out


def _tool_call(value: Any, where: str, tool_names: dict[str, str]) -> Mapping[str, Any]:
    call = _object(value, where)
    function = _object(call.get("function"), f"{where}.function")
    name = _string(function.get("name"), f"{where}.function.name")
    raw = function.get("arguments")
    param = f"{where}.function.arguments"
    if isinstance(raw, Mapping):  # some clients send the object itself: accept it
        arguments: Any = dict(raw)
    else:
        try:
            arguments = json.loads(_string(raw, param)) if raw else {}
        except ValueError as exc:
            raise _invalid(param, f"`{param}` is not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise _invalid(param, f"`{param}` must encode a JSON object")
    call_id = call.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{secrets.token_hex(8)}"
    tool_names[call_id] = name
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _content(value: Any, where: str) -> str:
    """A message's content as text: a string, or an array of text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid(where, f"`{where}` must be a string or an array of text parts")
    texts = []
    for j, item in enumerate(value):
        at = f"{where}[{j}]"
        part = _object(item, at)
        kind = part.get("type")
        if kind in ("text", "input_text", "refusal"):
            texts.append(_string(part.get("text", part.get("refusal")), f"{at}.text"))
        elif kind in _IMAGE_PARTS:
            raise _unsupported(f"{at}.type", "image input (RKLLM text models read text only)")
        elif kind in _AUDIO_PARTS or kind == "file":
            raise _unsupported(f"{at}.type", f"a `{kind}` content part (text only)")
        else:
            raise _invalid(f"{at}.type", f"`{at}.type` must be text")
    return "\n".join(texts)


# ---- completions and embeddings: requests ------------------------------------------------


def parse_completion(body: Mapping[str, Any]) -> ParsedChat:
    """Translate a ``POST /v1/completions`` body: the prompt is sent as is (no template).

    Raises:
        OpenAIError: 400 naming the field that is missing, malformed or not supported.
    """
    model = _model(body)
    _refuse_common(body)
    _refuse_unless(body, "logprobs", lambda v: v in (None, 0), "`logprobs`")
    _refuse_unless(body, "echo", lambda v: not v, "`echo`")
    _refuse_unless(body, "best_of", lambda v: v in (None, 1), "`best_of` > 1")
    _refuse_unless(body, "suffix", lambda v: not v, "`suffix` (fill in the middle)")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        raise _unsupported("prompt", "a prompt of token ids")
    if isinstance(prompt, list):
        raise _unsupported("prompt", "more than one prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _invalid("prompt", "`prompt` must be a non-empty string")
    params = {"raw_prompt": "prompt"}
    fields = _sampling(body, params)
    stream, include_usage = _stream_options(body)
    request = ChatRequest(model=model, messages=(), raw_prompt=prompt, **fields)
    return ParsedChat(request=request, stream=stream, include_usage=include_usage, params=params)


@attrs.frozen(kw_only=True)
class ParsedEmbedding:
    """A ``POST /v1/embeddings`` request, translated.

    Attributes:
        model: the model's name.
        inputs: the texts, in order.
        base64: ``encoding_format: base64`` (little-endian float32 bytes).
        dimensions: the vector length the client asked for (checked against the model's).
    """

    model: str
    inputs: tuple[str, ...]
    base64: bool = False
    dimensions: int | None = None


def parse_embedding(body: Mapping[str, Any]) -> ParsedEmbedding:
    """Translate a ``POST /v1/embeddings`` body.

    Raises:
        OpenAIError: 400 naming the field that is missing, malformed or not supported.
    """
    model = _model(body)
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs):
        if not all(inputs):
            raise _invalid("input", "`input` strings must not be empty")
    elif isinstance(inputs, list) and inputs and all(isinstance(t, int | list) for t in inputs):
        raise _unsupported("input", "token-id input (send text)")
    else:
        raise _invalid("input", "`input` must be a non-empty string or array of strings")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _invalid("encoding_format", '`encoding_format` must be "float" or "base64"')
    return ParsedEmbedding(
        model=model,
        inputs=tuple(inputs),
        base64=encoding == "base64",
        dimensions=_integer(body.get("dimensions"), "dimensions", 1),
    )


# ---- answers -----------------------------------------------------------------------------


def _usage(done: ChatDone) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _tool_call_out(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    out = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }
    return out if index is None else {"index": index, **out}


class _Answer:
    """Engine events -> OpenAI objects, for one response (its id, time, model)."""

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

    def delta(self, event: ChatDelta) -> list[dict[str, Any]]:
        """The chunks of one delta."""
        raise NotImplementedError

    def done(self, event: ChatDone) -> list[dict[str, Any]]:
        """The last chunks: the finish reason, then usage if asked for."""
        last = self._finish(event)
        return (
            [last, self._object(self.kind, [], usage=_usage(event))]
            if self.include_usage
            else [last]
        )

    def _finish(self, event: ChatDone) -> dict[str, Any]:
        raise NotImplementedError

    def whole(self, event: ChatDone) -> dict[str, Any]:
        """The non-streamed response."""
        raise NotImplementedError


class _ChatAnswer(_Answer):
    prefix = "chatcmpl"
    kind = "chat.completion.chunk"

    def __init__(self, parsed: ParsedChat) -> None:
        super().__init__(parsed)
        self.first_tool_only = parsed.first_tool_only
        self.sent_calls: list[str] = []

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
            out.append(_tool_call_out(call, len(self.sent_calls)))
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
            message["tool_calls"] = [_tool_call_out(c) for c in calls]
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


async def _produce(run: Run, params: Mapping[str, str], out: MemoryObjectSendStream[_Item]) -> None:
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
                await out.send(_Failure(error_from(exc, params)))


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client disconnects (its request body already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


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
        params: Mapping[str, str],
        ping_s: float,
        done: Callable[[str], None],
    ) -> None:
        super().__init__(status_code=200)
        self.run = run
        self.answer = answer
        self.params = params
        self.ping_s = ping_s
        self.done = done
        self.outcome = "client gone"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run, wait for the first event or the grace time, then answer."""
        send_items, items = anyio.create_memory_object_stream[_Item](_CHUNK_EVENTS)
        async with anyio.create_task_group() as tg, items:
            tg.start_soon(_produce, self.run, self.params, send_items)
            first: _Item | None = None
            async with anyio.create_task_group() as waiting:
                waiting.start_soon(_watch_disconnect, receive, tg.cancel_scope)
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


async def _run_whole(request: Request, run: Run, params: Mapping[str, str]) -> ChatDone | None:
    """Run to the end (None: the client disconnected, and the run was aborted).

    Raises:
        OpenAIError: the run failed.
    """
    result: ChatDone | OpenAIError | None = None  # None: still running
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_disconnect, request.receive, tg.cancel_scope)
        try:
            async with contextlib.aclosing(run()) as events:
                async for event in events:
                    if isinstance(event, ChatDone):
                        result = event
            result = result or _ended().error
        except Exception as exc:  # every failure is answered to the client
            result = error_from(exc, params)
        tg.cancel_scope.cancel()
    if isinstance(result, OpenAIError):
        raise result
    return result


# ---- routes ------------------------------------------------------------------------------


async def _json_body(request: Request) -> Mapping[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise OpenAIError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise OpenAIError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid(None, "We could not parse the JSON body of your request.") from None
    if not isinstance(decoded, dict):
        raise _invalid(None, "the request body must be a JSON object")
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
        infos = [i for i in self.engine.catalog.models() if i.name == name]
        if not infos:
            return self._answer(request, error_from(ModelNotFoundError(name)).response())
        return self._answer(request, JSONResponse(self._model_object(infos[0])))

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

        def run() -> AsyncGenerator[Event, None]:
            return self.engine.chat(parsed.request)

        if parsed.stream:
            return _RunResponse(
                run, answer, parsed.params, self.ping_s, partial(self._log, request)
            )
        try:
            done = await _run_whole(request, run, parsed.params)
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
                raise _invalid("dimensions", message)
        except Exception as exc:  # every failure is answered to the client
            return self._answer(request, error_from(exc).response())
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
