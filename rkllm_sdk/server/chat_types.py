"""What the chat engine takes and gives: requests, reply pieces, the end of a reply, errors.

The OpenAI, Ollama and MCP faces normalise their requests into a :class:`ChatRequest`;
:meth:`~.chat_engine.ChatEngine.chat` yields :class:`ChatDelta` s then one :class:`ChatDone`.
:func:`check_request` makes the checks that need no model (before the request queues) and
says which tools the template shows; a request the engine cannot honour is a
:class:`RequestError` (HTTP 400) naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from ..errors import InvalidParamsError
from ..models import Sampling
from ..results import ToolCall

__all__ = [
    "ChatDelta",
    "ChatDone",
    "ChatRequest",
    "ContextLengthError",
    "FinishReason",
    "RequestError",
    "check_request",
    "sampling_values",
]

#: Request fields that map onto the runtime's sampling parameters (same names as Sampling).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
)

_ROLES = frozenset({"system", "user", "assistant", "tool"})

#: Why a reply ended (:attr:`ChatDone.finish_reason`).
FinishReason = Literal["stop", "length", "tool_calls"]


def _mappings(items: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    return tuple(items)


def _strings(items: str | Iterable[str]) -> tuple[str, ...]:
    return (items,) if isinstance(items, str) else tuple(items)


class RequestError(ValueError):
    """A request the engine cannot honour (HTTP 400); ``field`` names the request field.

    >>> str(RequestError("top_p", "top_p must be in [0, 1]"))
    'top_p must be in [0, 1]'
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ContextLengthError(RequestError):
    """The prompt (system prompt and tools included) does not fit the model's context: the
    runtime refused it before generating anything (HTTP 400).

    Attributes:
        field: the request field holding the prompt (``messages``, ``raw_prompt``, ``input[i]``).
        context_len: the model's ``max_context_len`` (fixed when it loads).
        cause: the runtime's refusal, as the SDK reported it.
    """

    def __init__(self, field: str, context_len: int, cause: str) -> None:
        super().__init__(
            field,
            f"the prompt does not fit the model's context of {context_len} tokens "
            "(max_context_len, fixed when the model loads)",
        )
        self.context_len = context_len
        self.cause = cause


@attrs.frozen(kw_only=True)
class ChatRequest:
    """One chat (or raw completion) request, as the faces normalise it.

    Attributes:
        model: the catalog's model name (``"qwen3"`` means ``"qwen3:latest"``).
        messages: normalised messages (``role``, ``content``, ``tool_calls``,
            ``tool_call_id``, ``name``, ``reasoning_content``).
        tools: OpenAI-style tool definitions.
        tool_choice: ``"auto"``, ``"none"`` (tools not shown to the model; a call it
            writes anyway is content), ``"required"``
            (an instruction in the system turn; not enforced by decoding), or
            ``{"type": "function", "function": {"name": ...}}`` (only that tool is shown).
        max_tokens: generated-token limit (runtime 1.3 per run; on 1.2 the engine pauses
            the run there).
        stop: stop strings, on top of the template's end-of-turn strings.
        temperature, top_p, top_k, repeat_penalty, frequency_penalty, presence_penalty:
            per-run sampling (runtime 1.3; on 1.2 a value differing from the model's init
            value is a :class:`RequestError`).
        seed: accepted only when sampling is greedy (``top_k`` 1), where it changes nothing:
            the runtime has no seed.
        thinking: ask a thinking model to think (None: the template's default).
        keep_alive_s: the model's keep-alive after this request (-1 forever, 0 unload now).
        raw_prompt: send this text as is (no template; the reply is all ``content``).
    """

    model: str
    messages: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_mappings)
    tools: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_mappings)
    tool_choice: str | Mapping[str, Any] = "auto"
    max_tokens: int | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    thinking: bool | None = None
    keep_alive_s: float | None = None
    raw_prompt: str | None = None


@attrs.frozen(kw_only=True)
class ChatDelta:
    """A piece of the reply, in order: visible text, reasoning, or finished tool calls.

    One chunk of the run (usually one token) gives at most one content delta and one
    reasoning delta.

    Attributes:
        tokens: generated tokens this delta counts, each token once: those since the
            previous delta (those that showed nothing too: think tags, a tool-call block),
            but while text is held back (it might start a stop string) the newest one, which
            the delta releasing that text counts. Summed over the deltas so far: the tokens
            generated so far (one fewer while text is held back). Of one chunk's deltas the
            last counts them; it counts at least one unless its text starts a token whose
            rest is held back.
    """

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tokens: int = 0


@attrs.frozen(kw_only=True)
class ChatDone:
    """The end of a reply: why it ended, all of it, usage and timings.

    Attributes:
        finish_reason: ``"stop"`` (end of turn or a stop string), ``"length"``
            (``max_tokens`` or the model's limit), ``"tool_calls"``.
        content / reasoning / tool_calls: the whole reply, as the deltas gave it.
        prompt_tokens: tokens of the whole prompt (conversation), reused ones included.
        completion_tokens: tokens generated (those shown; past a stop string not counted).
        cached_tokens: prompt tokens not prefilled thanks to reuse (KV cache, prompt cache).
        load_ms: time the model took to load, when this request loaded it (else 0).
        prefill_ms / generate_ms: the runtime's measurements.
        total_ms: from the request's start to its end, queueing included.
    """

    finish_reason: FinishReason
    content: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    load_ms: float
    prefill_ms: float
    generate_ms: float
    total_ms: float


# ---- checks that need no model (before the request queues) ---------------------------------


def sampling_values(req: ChatRequest) -> dict[str, Any]:
    """The request's sampling values, each checked as the runtime's ``Sampling`` takes it."""
    given: dict[str, Any] = {
        name: getattr(req, name) for name in SAMPLING_FIELDS if getattr(req, name) is not None
    }
    for name, value in given.items():
        try:
            Sampling(**{name: value})
        except (InvalidParamsError, TypeError, ValueError) as exc:
            raise RequestError(name, f"{name}: {exc}") from exc
    return given


def check_request(req: ChatRequest) -> list[Mapping[str, Any]] | None:
    """Static checks (before queueing); the tools the template shows (None: none)."""
    sampling_values(req)
    if req.seed is not None and not _is_int(req.seed):
        raise RequestError("seed", "seed must be an integer")
    if req.max_tokens is not None and (not _is_int(req.max_tokens) or req.max_tokens < 1):
        raise RequestError("max_tokens", "max_tokens must be a positive integer")
    keep_alive = req.keep_alive_s
    if keep_alive is not None and (
        not isinstance(keep_alive, int | float)
        or isinstance(keep_alive, bool)
        or math.isnan(keep_alive)
    ):
        raise RequestError("keep_alive", "keep_alive must be a number of seconds")
    for s in req.stop:
        if not isinstance(s, str):
            raise RequestError("stop", "stop must be a string or a list of strings")
    if req.raw_prompt is not None:
        if not isinstance(req.raw_prompt, str) or not req.raw_prompt:
            raise RequestError("prompt", "the prompt must be a non-empty string")
        return None
    if not req.messages:
        raise RequestError("messages", "messages must not be empty")
    _check_messages(req.messages)
    _check_tools(req.tools)
    return _shown_tools(req)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tools(tools: Sequence[Mapping[str, Any]]) -> None:
    for i, t in enumerate(tools):
        function = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RequestError(
                "tools", f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}'
            )


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RequestError("messages", f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(
                "messages", f"messages[{i}].role {role!r} is not one of {sorted(_ROLES)}"
            )
        if not isinstance(m.get("content", ""), str):
            raise RequestError("messages", f"messages[{i}].content must be a string")


def _shown_tools(req: ChatRequest) -> list[Mapping[str, Any]] | None:
    """The tools the template shows, after ``tool_choice`` (None: none)."""
    choice = req.tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        if choice == "required" and not req.tools:
            raise RequestError("tool_choice", 'tool_choice "required" needs tools')
        return list(req.tools) or None
    if isinstance(choice, Mapping):
        name = (
            (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        )
        if not isinstance(name, str):
            raise RequestError(
                "tool_choice",
                'tool_choice must be "auto", "none", "required" or '
                '{"type": "function", "function": {"name": ...}}',
            )
        chosen = [t for t in req.tools if (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise RequestError("tool_choice", f"tool_choice names {name!r}, which is not in tools")
        return chosen
    raise RequestError(
        "tool_choice", f'tool_choice {choice!r} is not "auto", "none", "required" or a function'
    )
