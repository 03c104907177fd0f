"""OpenAI's JSON in, and its errors: request bodies to the engine's :class:`ChatRequest`,
what the engine or the runtime raised to :class:`OpenAIError`. Plain functions: no engine,
no sockets (the routes, the streamed answers and the response objects are in
:mod:`.openai_api`).

- Requests: :func:`parse_chat` (``/v1/chat/completions``), :func:`parse_completion`
  (``/v1/completions``: the prompt as is, no template), :func:`parse_embedding`
  (``/v1/embeddings``). A field that is missing or malformed is an :class:`OpenAIError` 400
  with ``param`` naming it (a path: ``messages[2].content``).
- **Unknown fields are ignored**, as most OpenAI-compatible servers do (clients such as
  LiteLLM send extras); fields that are known but cannot be honoured are refused with 400 and
  ``param`` naming them: ``n`` > 1, ``logprobs``, ``top_logprobs``, ``logit_bias``,
  ``response_format`` other than text, audio, image parts, ``functions``, ...
- ``parallel_tool_calls: false`` is passed on as :attr:`ParsedChat.first_tool_only`.
- Thinking: ``chat_template_kwargs.enable_thinking`` (wins), a top-level ``enable_thinking``,
  or ``reasoning_effort`` (``none`` / ``minimal``: off; ``low`` / ``medium`` / ``high``:
  on).
- Extra sampling fields: ``top_k``, ``repeat_penalty`` (alias ``repetition_penalty``),
  ``seed``.
- Errors: :func:`error_from` maps what the engine, the catalog or the runtime raised to
  OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400
  ``invalid_request_error``, 404 ``model_not_found``, 429 (queue full or shutting down:
  ``Retry-After`` and ``retry-after-ms``), 5xx ``server_error``.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from starlette.responses import Response

from ..errors import RKLLMError, http_status
from .catalog import ModelNotFoundError, QueueFullError
from .chat_types import ChatRequest, ContextLengthError, RequestError
from .http_api import AsciiJSON
from .templates import TemplateError

__all__ = [
    "OpenAIError",
    "ParsedChat",
    "ParsedEmbedding",
    "error_from",
    "invalid_request",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
]

_MAX_STOP = 4
_INT32_MAX = 2**31 - 1  # token counts and top_k reach the runtime as C ints
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
        return AsciiJSON(self.body(), status_code=self.status, headers=self.headers)


def invalid_request(param: str | None, message: str) -> OpenAIError:
    """A 400 ``invalid_request_error``, ``param`` naming the field at fault (or None)."""
    return OpenAIError(400, message, param=param)


def _unsupported(param: str, what: str) -> OpenAIError:
    return invalid_request(param, f"`{param}`: {what} is not supported by this server")


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
        return _request_error(exc, params or {})
    if isinstance(exc, TemplateError):
        return invalid_request("messages", f"the model's chat template refused the request: {exc}")
    return _runtime_error(exc)


def _request_error(exc: RequestError, params: Mapping[str, str]) -> OpenAIError:
    """A 400 naming the client's field; a prompt longer than the context is OpenAI's
    ``context_length_exceeded`` (LiteLLM's ContextWindowExceededError)."""
    param = _client_param(exc.field, params)  # completions: prompt; embeddings: input[i]
    if not isinstance(exc, ContextLengthError):
        return invalid_request(param, str(exc))
    message = (
        f"This model's maximum context length is {exc.context_len} tokens (max_context_len, "
        "fixed when it loads), and the runtime refused the prompt before generating "
        "anything: the conversation, with its system prompt and tools, is longer than that. "
        "Shorten it, or load the model with a larger context "
        f"(--model NAME=PATH,max_context_len=N). The runtime: {exc.cause}"
    )
    return OpenAIError(400, message, param=param, code="context_length_exceeded")


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
        return invalid_request(None, str(exc))
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
        raise invalid_request(param, f"`{param}` must be an object")
    return value


def _array(value: Any, param: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise invalid_request(param, f"`{param}` must be an array")
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise invalid_request(param, f"`{param}` must be a string")
    return value


def _boolean(value: Any, param: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise invalid_request(param, f"`{param}` must be true or false")
    return value


def _integer(value: Any, param: str, low: int, high: int = _INT32_MAX) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(param, f"`{param}` must be an integer")
    if not low <= value <= high:
        raise invalid_request(param, f"`{param}` must be between {low} and {high}, got {value}")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_request(param, f"`{param}` must be a number")
    if not low <= value <= high:  # NaN fails too; a huge integer compares exactly
        raise invalid_request(param, f"`{param}` must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model", "`model` must be the name of a model (see GET /v1/models)")
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
        raise invalid_request("stop", "`stop` must be a string or an array of strings")
    if len(stops) > _MAX_STOP:
        raise invalid_request("stop", f"`stop` holds at most {_MAX_STOP} strings, got {len(stops)}")
    if any(not s for s in stops):
        raise invalid_request("stop", "`stop` strings must not be empty")
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
            engine's :class:`~.chat_types.RequestError`.
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
        raise invalid_request("reasoning_effort", f"`reasoning_effort` must be one of {choices}")
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
            raise invalid_request(
                f"{where}.function.name", f"`{where}.function.name` must be a string"
            )
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
        raise invalid_request("tool_choice", "`tool_choice` other than auto / none needs `tools`")
    if value == "required":
        return "required"
    names = {t["function"]["name"] for t in tools}
    if isinstance(value, Mapping) and value.get("type") == "function":
        name = _object(value.get("function"), "tool_choice.function").get("name")
        if name not in names:
            raise invalid_request("tool_choice.function.name", f"no tool named {name!r} in `tools`")
        return {"type": "function", "function": {"name": name}}
    raise invalid_request(
        "tool_choice", '`tool_choice` must be "auto", "none", "required" or a named function'
    )


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    messages = _array(value, "messages")
    if not messages:
        raise invalid_request("messages", "`messages` must hold at least one message")
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
            raise invalid_request(
                f"{where}.tool_call_id", f"`{where}.tool_call_id` must be a string"
            )
        out = {"role": "tool", "content": _content(message.get("content"), f"{where}.content")}
        out["tool_call_id"] = call_id
        name = message.get("name") or tool_names.get(call_id)
        return {**out, "name": name} if isinstance(name, str) else out
    if role == "function":
        raise _unsupported(f"{where}.role", 'the legacy "function" role (use "tool")')
    raise invalid_request(
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
            raise invalid_request(param, f"`{param}` is not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise invalid_request(param, f"`{param}` must encode a JSON object")
    call_id = call.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{secrets.token_hex(8)}"
    tool_names[call_id] = name
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _content(value: Any, where: str) -> str:
    """A message's content as text: a string, or an array of text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid_request(where, f"`{where}` must be a string or an array of text parts")
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
            raise invalid_request(f"{at}.type", f"`{at}.type` must be text")
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
        raise invalid_request("prompt", "`prompt` must be a non-empty string")
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
            raise invalid_request("input", "`input` strings must not be empty")
    elif isinstance(inputs, list) and inputs and all(isinstance(t, int | list) for t in inputs):
        raise _unsupported("input", "token-id input (send text)")
    else:
        raise invalid_request("input", "`input` must be a non-empty string or array of strings")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid_request("encoding_format", '`encoding_format` must be "float" or "base64"')
    return ParsedEmbedding(
        model=model,
        inputs=tuple(inputs),
        base64=encoding == "base64",
        dimensions=_integer(body.get("dimensions"), "dimensions", 1),
    )
