"""The one place that runs chats for the OpenAI and Ollama faces: templates, runs, KV reuse.

Both HTTP APIs are stateless: every request carries the whole conversation. The runtime is
stateful: a handle's KV cache holds what it has read and written. :class:`ChatEngine` joins
the two:

1. It renders the conversation with the model's :class:`~rkllm_sdk.server.templates.ChatTemplate`
   (the runtime's own template is switched off once per load), or takes a raw prompt as is.
2. It remembers, per loaded model (``Loaded.engine_state``, a :class:`KVRecord`), exactly the
   text the KV cache holds: what was sent plus every token the model produced, including
   text past a stop string or a token limit (the run is *paused* there, never aborted, so
   the cache ends exactly where the delivered tokens end).
3. **Continuation**: when the newly rendered prompt starts with what the cache stands for,
   only the rest is sent, with ``keep_history``. The cache "stands for" its exact text, or
   the same text with the latest reply's ``<think>`` block removed (chat templates drop past
   reasoning; the model keeps seeing its own, as a runtime chat session would).
4. Otherwise the cache is cleared and everything is sent. If the text before the first
   user message's own (system turn, tools, headers) is long
   (:attr:`ChatEngine.prefix_min_chars` characters or more), the first such run saves a
   prompt cache into ``CACHE_SUBDIR`` of the catalog's cache directory (bounded, least
   recently used deleted first) and later fresh runs load it: the runtime skips the
   longest common prefix.
5. Lines of the system message that change on every request (Home Assistant starts it with
   "Current time is 18:42:07. ...") would defeat both: they move to the start of the newest
   user turn, and stay with that turn in later requests (:attr:`ChatEngine.volatile_patterns`).
6. A run that does not end cleanly (client gone, abort, error, a context shift) leaves the
   record *unknown*: the next request clears the cache and prefills everything.

Deltas stream as the NPU yields them: ``<think>`` text as ``reasoning`` (tags stripped),
``<tool_call>`` blocks as parsed :class:`~rkllm_sdk.ToolCall` s when a block closes (and a
reply that is bare JSON naming a shown tool, Llama 3's format, when it ends), the rest as
``content``; :class:`ChatDone` comes last with the usage (``cached_tokens``: prompt tokens
not prefilled thanks to reuse).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
import numpy as np

from ..errors import InvalidParamsError, RKLLMError
from ..models import Sampling
from ..results import Chunk, Generation, ToolCall

if TYPE_CHECKING:
    from ..llm import AsyncLLM
    from ..options import RunOptions
    from .catalog import Loaded, ModelCatalog
    from .templates import ChatTemplate

__all__ = [
    "CACHE_SUBDIR",
    "HOME_ASSISTANT_TIME",
    "REQUIRED_TOOL_INSTRUCTION",
    "ChatDelta",
    "ChatDone",
    "ChatEngine",
    "ChatRequest",
    "KVRecord",
    "RequestError",
]

#: ``tool_choice="required"`` is honoured by this instruction at the end of the system turn
#: (the runtime has no constrained decoding, so a model may still answer in plain text).
REQUIRED_TOOL_INSTRUCTION = "Answer by calling one or more of the tools above."

#: Home Assistant's first system line (``homeassistant.helpers.llm.BASE_PROMPT``), rendered
#: anew with the current time for every request of a conversation.
HOME_ASSISTANT_TIME = (
    r"Current time is \d{1,2}:\d{2}(?::\d{2})?(?: ?[AP]M)?\. "
    r"Today's date is \d{4}-\d{2}-\d{2}\.\n?"
)

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
#: The engine's prompt caches: this directory inside the catalog's ``cache_dir`` holds
#: nothing else (the bound deletes its least recently used files).
CACHE_SUBDIR = "chat-prefix-cache"
_CACHE_SUFFIX = ".prompt-cache"

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


@attrs.frozen(kw_only=True)
class ChatRequest:
    """One chat (or raw completion) request, as the faces normalise it.

    Attributes:
        model: the catalog's model name (``"qwen3"`` means ``"qwen3:latest"``).
        messages: normalised messages (``role``, ``content``, ``tool_calls``,
            ``tool_call_id``, ``name``, ``reasoning_content``).
        tools: OpenAI-style tool definitions.
        tool_choice: ``"auto"``, ``"none"`` (tools not shown to the model), ``"required"``
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
    """A piece of the reply, in order: visible text, reasoning, or finished tool calls."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


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


@attrs.define
class KVRecord:
    """What one loaded model's KV cache holds (``Loaded.engine_state``).

    Attributes:
        text: exactly the text in the cache (the prompts sent plus every generated token);
            None when unknown (then the next request clears the cache).
        views: rendered conversations the cache stands for, ``text``'s render first, then
            the same with the latest reply's think block removed. A new prompt that starts
            with one of them sends only the rest.
        tokens: tokens in the cache (as ``kv_cache_size`` reported after the last run).
        prompt_cache: the prompt-cache file loaded on the handle, if any.
        notes: volatile system lines moved into user turns, by message index (see
            :attr:`ChatEngine.volatile_patterns`), as the cache holds them.
    """

    text: str | None = None
    views: tuple[str, ...] = ()
    tokens: int = 0
    prompt_cache: Path | None = None
    notes: dict[int, str] = attrs.field(factory=dict)
    lock: anyio.Lock = attrs.field(factory=anyio.Lock, repr=False)

    def forget(self) -> None:
        """The cache's contents are no longer known."""
        self.text = None
        self.views = ()
        self.tokens = 0
        self.notes = {}


@attrs.define(kw_only=True)
class _Run:
    """One chat run's parts."""

    plan: _Plan
    options: RunOptions
    reply: _Reply
    think: tuple[str, str] | None
    load_ms: float
    notes: dict[int, str]


@attrs.frozen(kw_only=True)
class _Plan:
    """How one prompt reaches the runtime."""

    prompt: str  # the whole rendered prompt
    send: str  # what the runtime gets (prompt, or its remainder)
    base_text: str  # what the cache holds before the run ("" after a clear)
    base_tokens: int
    clear: bool  # clear the KV cache first
    load: Path | None = None  # load this prompt cache first
    save: Path | None = None  # this run saves a prompt cache here


@attrs.frozen(kw_only=True)
class _Volatile:
    """A conversation whose system message had volatile lines (taken out into ``note``)."""

    messages: tuple[Mapping[str, Any], ...]
    note: str
    last_user: int

    def annotated(self, notes: Mapping[int, str]) -> list[Mapping[str, Any]]:
        """The messages with each note at the start of its user turn."""
        out: list[Mapping[str, Any]] = list(self.messages)
        for i, note in notes.items():
            if 0 <= i < len(out) and out[i].get("role") == "user":
                out[i] = {**out[i], "content": f"{note}\n\n{out[i].get('content', '')}"}
        return out


class ChatEngine:
    """Runs chats and embeddings on the catalog's models (see the module docstring).

    Args:
        catalog: the named models (queueing, loading, counters, cache directory).
        reuse: False re-prefills every request from scratch (no continuation, no prompt
            caches): the baseline peers use, for benchmarks.
        prefix_min_chars: a system turn at least this long gets a prompt cache.
        prompt_cache_max_files / prompt_cache_max_bytes: the cache directory's bound (its
            ``*.prompt-cache`` files, least recently used deleted first).
        volatile_patterns: regular expressions for lines of the system message that change
            on every request (Home Assistant's "Current time is ..." line by default). They
            move to the start of the newest user turn, where they stay in later turns, so
            the system turn is a stable prefix (prompt cache) and the history a stable
            continuation, while the model still reads the current time. ``()``: off.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        reuse: bool = True,
        prefix_min_chars: int = 256,
        prompt_cache_max_files: int = 8,
        prompt_cache_max_bytes: int = 2 << 30,
        volatile_patterns: Sequence[str] = (HOME_ASSISTANT_TIME,),
    ) -> None:
        self.catalog = catalog
        self.volatile_patterns = tuple(re.compile(p) for p in volatile_patterns)
        self.reuse = reuse
        self.prefix_min_chars = prefix_min_chars
        self.prompt_cache_max_files = prompt_cache_max_files
        self.prompt_cache_max_bytes = prompt_cache_max_bytes

    # ---- chat ------------------------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> AsyncGenerator[ChatDelta | ChatDone, None]:
        """Deltas as the NPU yields them, then one :class:`ChatDone`.

        Close the generator early (``aclose``, e.g. the client left) to abort the run on
        the NPU; the model stays usable. Use it as ``async with aclosing(engine.chat(req))
        as items``: a generator left suspended mid-run keeps the model's turn until it is
        garbage-collected. ChatDone comes after the turn has ended. Raises before the
        first delta:
        ``ModelNotFoundError``, ``QueueFullError``, :class:`RequestError`.
        """
        t0 = time.perf_counter()
        tools = _check_request(req)
        async with self.catalog.use(req.model, keep_alive_s=req.keep_alive_s) as loaded:
            state = self._state(loaded)
            async with state.lock:
                run = await self._start(loaded, state, req, tools)
                reply = run.reply
                state.forget()  # until the run has ended cleanly
                async with loaded.llm.stream(run.plan.send, **run.options) as s:
                    async for chunk in s:
                        deltas = reply.feed(chunk)
                        if reply.finish is not None and not reply.pause_requested:
                            reply.pause_requested = True
                            s.pause()  # the cache then ends exactly at the delivered tokens
                        for delta in deltas:
                            yield delta
                    gen = s.result()
                last: list[ChatDelta | ChatDone] = [*reply.end()]
                last.append(await self._finish(loaded, state, req, run, gen, t0))
        # The model's turn is over before the last items go out: a consumer that stops
        # at ChatDone without closing the generator holds nothing.
        for item in last:
            yield item

    async def _start(
        self,
        loaded: Loaded,
        state: KVRecord,
        req: ChatRequest,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> _Run:
        """Render, plan the reuse, check the options, prepare the handle's caches."""
        llm, template = loaded.llm, loaded.template
        options = _run_options(llm, req)
        raw = req.raw_prompt is not None
        notes: dict[int, str] = {}
        if req.raw_prompt is not None:
            prompt = req.raw_prompt
            plan = self._plan(loaded, state, req, (), tools, prompt)
        else:
            volatile = self._split_volatile(req.messages)
            if volatile is None:
                messages: Sequence[Mapping[str, Any]] = req.messages
            else:  # the notes this cache was built with, and the newest turn's
                notes = dict(state.notes) if state.text is not None and self.reuse else {}
                notes.setdefault(volatile.last_user, volatile.note)
                messages = volatile.annotated(notes)
            prompt = _render(template, req, messages, tools)
            plan = self._plan(loaded, state, req, messages, tools, prompt)
            fresh = {volatile.last_user: volatile.note} if volatile is not None else notes
            if volatile is not None and plan.base_tokens == 0 and notes != fresh:
                notes = fresh  # not a continuation: only the newest turn gets its note
                messages = volatile.annotated(notes)
                prompt = _render(template, req, messages, tools)
                plan = self._plan(loaded, state, req, messages, tools, prompt)
        load_ms = float(loaded.load_ms) if loaded.uses == 1 else 0.0  # this request loaded it
        await self._prepare(llm, state, plan)
        if plan.save is not None:
            options["prompt_cache"] = os.fspath(plan.save)
        think = None if raw else template.think_tags
        reply = _Reply(
            think_tags=think,
            in_think=not raw and template.starts_thinking(prompt),
            stops=req.stop if raw else (*template.stop, *req.stop),
            # Runtime 1.2 has no per-run limit: the engine pauses the run there instead.
            limit=req.max_tokens if llm.runtime.abi != "1.3" else None,
            show_reasoning=req.thinking is not False,
            tools=not raw,
            tool_names=frozenset(
                str((t.get("function") or {}).get("name")) for t in (tools or ()) if not raw
            ),
        )
        return _Run(
            plan=plan, options=options, reply=reply, think=think, load_ms=load_ms, notes=notes
        )

    async def _finish(
        self,
        loaded: Loaded,
        state: KVRecord,
        req: ChatRequest,
        run: _Run,
        gen: Generation,
        t0: float,
    ) -> ChatDone:
        """Usage, counters, and the KV record of a run that ended cleanly."""
        llm, plan, reply = loaded.llm, run.plan, run.reply
        perf = gen.perf
        computed = perf.prefill_tokens if perf is not None else 0
        generated = perf.generate_tokens if perf is not None else len(gen.token_ids)
        n1 = (await llm.kv_cache_size())[0]
        sent_tokens = n1 - plan.base_tokens - generated
        prompt_tokens = plan.base_tokens + max(sent_tokens, computed)
        cached = max(prompt_tokens - computed, 0)
        # Without a prompt cache in play the runtime computes exactly what was sent (one
        # token of slack: an end-of-sequence token may or may not stay in the cache). More
        # tokens than the context holds means it shifted: the cache lost its beginning.
        exact = plan.base_tokens > 0 or state.prompt_cache is None
        consistent = (
            reply.complete
            and sent_tokens >= 1
            and (abs(sent_tokens - computed) <= 1 if exact else sent_tokens + 1 >= computed)
            and plan.base_tokens + computed + generated <= (llm.params.max_context_len or 0)
        )
        if consistent and self.reuse:
            state.text = plan.base_text + plan.send + reply.raw
            state.views = _views(
                plan.prompt + reply.raw, len(plan.prompt) - len(plan.send), run.think
            )
            state.tokens = n1
            state.notes = run.notes
        if plan.save is not None:
            self._bound_cache_dir(keep=plan.save)
        completion = reply.shown_tokens if reply.finish is not None else generated
        if req.max_tokens is not None:
            completion = min(completion, req.max_tokens)
        counters = self.catalog.counters(loaded.spec.name)
        counters.prompt_tokens += prompt_tokens
        counters.generated_tokens += completion
        counters.prefill_tokens_saved += cached
        finish: FinishReason = reply.finish or (
            "length" if gen.finish_reason == "length" else "stop"
        )
        if finish == "stop" and reply.tool_calls:
            finish = "tool_calls"
        return ChatDone(
            finish_reason=finish,
            content="".join(reply.content),
            reasoning="".join(reply.reasoning).strip(),
            tool_calls=tuple(reply.tool_calls),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            cached_tokens=cached,
            load_ms=run.load_ms,
            prefill_ms=perf.prefill_time_ms if perf is not None else 0.0,
            generate_ms=perf.generate_time_ms if perf is not None else 0.0,
            total_ms=(time.perf_counter() - t0) * 1e3,
        )

    # ---- embeddings ------------------------------------------------------------------------

    async def embed(
        self, model: str, inputs: Sequence[str], *, keep_alive_s: float | None = None
    ) -> tuple[list[list[float]], int]:
        """One vector per input, and the prompt tokens read.

        Pooling: the mean of the last hidden layer over the input's tokens (the text as
        is, no template), L2-normalised. The run empties the KV cache, so the next chat
        request prefills in full.

        Raises:
            RequestError: no input, or an empty / non-string one (field ``input``).
        """
        if isinstance(inputs, str) or not inputs:
            raise RequestError("input", "input must be a non-empty list of strings")
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text:
                raise RequestError("input", f"input[{i}] must be a non-empty string")
        async with self.catalog.use(model, keep_alive_s=keep_alive_s) as loaded:
            state = self._state(loaded)
            async with state.lock:
                llm = loaded.llm
                state.forget()
                await llm.clear_kv_cache()
                if state.prompt_cache is not None:
                    state.prompt_cache = None
                    await llm.release_prompt_cache()
                vectors: list[list[float]] = []
                tokens = 0
                for text in inputs:
                    rows = await llm.hidden_states(text, all_tokens=True)
                    mean = np.asarray(rows, dtype=np.float64).reshape(-1, rows.shape[-1])
                    tokens += mean.shape[0]
                    vector = mean.mean(axis=0)
                    norm = float(np.linalg.norm(vector))
                    vectors.append((vector / norm if norm > 0 else vector).tolist())
                self.catalog.counters(loaded.spec.name).prompt_tokens += tokens
                return vectors, tokens

    # ---- the KV record and prompt caches ---------------------------------------------------

    def _split_volatile(self, messages: Sequence[Mapping[str, Any]]) -> _Volatile | None:
        """The system message's volatile lines, to move into the newest user turn."""
        if not self.volatile_patterns or not messages or messages[0].get("role") != "system":
            return None
        content = str(messages[0].get("content", ""))
        found = [m.group(0) for p in self.volatile_patterns for m in p.finditer(content)]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not found or not users:
            return None
        stripped = content
        for p in self.volatile_patterns:
            stripped = p.sub("", stripped)
        system = {**messages[0], "content": stripped.strip("\n")}
        note = "\n".join(f.strip() for f in found)
        return _Volatile(messages=(system, *messages[1:]), note=note, last_user=users[-1])

    @staticmethod
    def _state(loaded: Loaded) -> KVRecord:
        state = loaded.engine_state
        if not isinstance(state, KVRecord):
            state = KVRecord()
            loaded.engine_state = state
        return state

    def _plan(
        self,
        loaded: Loaded,
        state: KVRecord,
        req: ChatRequest,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        prompt: str,
    ) -> _Plan:
        if self.reuse and state.text is not None:
            for view in state.views:
                if len(prompt) > len(view) and prompt.startswith(view):
                    return _Plan(
                        prompt=prompt,
                        send=prompt[len(view) :],
                        base_text=state.text,
                        base_tokens=state.tokens,
                        clear=False,
                    )
        clear = state.text != "" or state.tokens != 0
        if not self.reuse:
            return _Plan(prompt=prompt, send=prompt, base_text="", base_tokens=0, clear=clear)
        cache = self._prefix_cache(loaded, req, messages, tools, prompt)
        load = save = None
        if cache is not None:
            if cache.exists():
                load = cache
            else:
                save = cache
        return _Plan(
            prompt=prompt,
            send=prompt,
            base_text="",
            base_tokens=0,
            clear=clear,
            load=load,
            save=save,
        )

    async def _prepare(self, llm: AsyncLLM, state: KVRecord, plan: _Plan) -> None:
        if plan.clear:
            state.forget()
            await llm.clear_kv_cache()
            state.text = ""
        if plan.load is not None and state.prompt_cache != plan.load:
            if state.prompt_cache is not None:
                state.prompt_cache = None
                await llm.release_prompt_cache()
            try:
                await llm.load_prompt_cache(plan.load)
            except RKLLMError:  # a damaged or foreign file: drop it, the run prefills all
                with suppress(OSError):
                    plan.load.unlink()
                return
            state.prompt_cache = plan.load
        if plan.load is not None:
            with suppress(OSError):
                os.utime(plan.load)  # recently used

    def _prefix_cache(
        self,
        loaded: Loaded,
        req: ChatRequest,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        prompt: str,
    ) -> Path | None:
        """The prompt-cache file for the prompt's system turn, if it is long enough."""
        cache_dir: Path | None = getattr(self.catalog, "cache_dir", None)
        if cache_dir is None or req.raw_prompt is not None:
            return None
        head = _shared_prefix(loaded.template, req, messages, tools)
        if head is None or len(head) < self.prefix_min_chars or not prompt.startswith(head):
            return None
        model = Path(loaded.spec.path)
        try:
            stamp = str(model.stat().st_mtime_ns)
        except OSError:
            stamp = ""
        key = hashlib.sha256(f"{model.resolve()}\0{stamp}\0{head}".encode()).hexdigest()[:32]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", loaded.spec.name)
        directory = Path(cache_dir) / CACHE_SUBDIR
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{slug}-{key}{_CACHE_SUFFIX}"

    def _bound_cache_dir(self, *, keep: Path) -> None:
        """At most ``prompt_cache_max_files`` files / ``_max_bytes`` bytes; LRU deleted."""
        entries = []
        for path in keep.parent.glob(f"*{_CACHE_SUFFIX}"):
            with suppress(OSError):
                st = path.stat()
                entries.append((st.st_mtime_ns, st.st_size, path))
        entries.sort(key=lambda e: (e[2] != keep, -e[0]))  # the new one, then newest first
        total = 0
        for n, (_, size, path) in enumerate(entries):
            total += size
            if path != keep and (
                n >= self.prompt_cache_max_files or total > self.prompt_cache_max_bytes
            ):
                with suppress(OSError):
                    path.unlink()


# ---- requests -----------------------------------------------------------------------------


def _sampling_values(req: ChatRequest) -> dict[str, Any]:
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


def _check_request(req: ChatRequest) -> list[Mapping[str, Any]] | None:
    """Static checks (before queueing); the tools the template shows (None: none)."""
    _sampling_values(req)
    if req.seed is not None and not isinstance(req.seed, int):
        raise RequestError("seed", "seed must be an integer")
    if req.max_tokens is not None and (not isinstance(req.max_tokens, int) or req.max_tokens < 1):
        raise RequestError("max_tokens", "max_tokens must be a positive integer")
    for s in req.stop:
        if not isinstance(s, str):
            raise RequestError("stop", "stop must be a string or a list of strings")
    if req.raw_prompt is not None:
        if not req.raw_prompt:
            raise RequestError("prompt", "the prompt is empty")
        return None
    if not req.messages:
        raise RequestError("messages", "messages must not be empty")
    _check_messages(req.messages)
    return _shown_tools(req)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, m in enumerate(messages):
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


def _with_instruction(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``tool_choice="required"``: the instruction at the end of the system turn."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content', '')}\n\n{REQUIRED_TOOL_INSTRUCTION}".lstrip()
    else:
        out.insert(0, {"role": "system", "content": REQUIRED_TOOL_INSTRUCTION})
    return out


def _render(
    template: ChatTemplate,
    req: ChatRequest,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
) -> str:
    if req.thinking and template.think_tags is None:
        raise RequestError(
            "thinking", f"this model's chat template ({template.name}) does not support thinking"
        )
    if req.tool_choice == "required":
        messages = _with_instruction(messages)
    try:
        return template.render(messages, tools=tools, enable_thinking=req.thinking)
    except ValueError as exc:  # TemplateError: a conversation the template refuses
        raise RequestError("messages", f"the chat template cannot render this: {exc}") from exc


_SENTINEL = "\x00rkllm-first-user-message\x00"


def _shared_prefix(
    template: ChatTemplate,
    req: ChatRequest,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    """The prompt text before the first user message's content: the system turn, tools
    (wherever the template puts them: Llama 3 in the first user turn) and headers, which
    new conversations with the same system prompt share. None when there is no user
    message or the template cannot render it."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first is None:
        return None
    probe: Sequence[Mapping[str, Any]] = [
        *messages[:first],
        {"role": "user", "content": _SENTINEL},
    ]
    if req.tool_choice == "required":
        probe = _with_instruction(probe)
    try:
        text = template.render(
            probe, tools=tools, add_generation_prompt=False, enable_thinking=req.thinking
        )
    except ValueError:  # TemplateError
        return None
    cut = text.find(_SENTINEL)
    return text[:cut] if cut > 0 else None


def _same(a: float, b: float | None) -> bool:
    return b is not None and math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6)


def _run_options(llm: AsyncLLM, req: ChatRequest) -> RunOptions:
    """keep_history, max_new_tokens and sampling for this request on this runtime."""
    given = _sampling_values(req)
    params = llm.params
    abi = llm.runtime.abi
    if req.seed is not None:
        top_k = given.get("top_k", params.top_k)
        if top_k != 1:
            raise RequestError(
                "seed",
                "seed: the RKLLM runtime has no sampling seed, so only greedy sampling "
                f"(top_k 1) is reproducible; this request samples with top_k {top_k}",
            )
    options: RunOptions = {"keep_history": True}
    if abi == "1.3":
        if req.max_tokens is not None:
            options["max_new_tokens"] = req.max_tokens
        if given:
            options["sampling"] = Sampling(**given)
        return options
    for name, value in given.items():
        current = getattr(params, name)
        if not _same(value, current):
            raise RequestError(
                name,
                f"{name}={value} differs from the model's {name}={current}: per-request "
                f"sampling needs RKLLM runtime 1.3 and this runtime is ABI {abi}. Leave "
                f"{name} out, or load the model with it (rkllm serve --model "
                f"NAME=PATH,{name}={value})",
            )
    return options


# ---- the reply ----------------------------------------------------------------------------


def _views(full: str, turn_start: int, think: tuple[str, str] | None) -> tuple[str, ...]:
    """What the cache (holding ``full``) stands for: ``full``, then ``full`` with the
    latest turn's think block cut (as templates render past replies), with and without
    the newlines that followed it."""
    views = [full]
    if think is not None:
        i = full.find(think[0], turn_start)
        j = full.rfind(think[1])
        if 0 <= i < j:
            head, tail = full[:i], full[j + len(think[1]) :]
            for view in (head + tail, head + tail.lstrip("\n"), head + tail.lstrip()):
                if view not in views:
                    views.append(view)
    return tuple(views)


class _Reply:
    """One run's chunks -> deltas: think blocks, tool blocks, stop strings, a token limit.

    ``raw`` keeps every chunk's text (what lands in the KV cache), shown or not.
    """

    def __init__(
        self,
        *,
        think_tags: tuple[str, str] | None,
        in_think: bool,
        stops: Sequence[str],
        limit: int | None,
        show_reasoning: bool,
        tools: bool,
        tool_names: frozenset[str] = frozenset(),
    ) -> None:
        self._tags = think_tags
        self._in_think = in_think
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._held: list[tuple[str, str]] = []  # (kind, text) that could start a stop string
        self._limit = limit
        self._show_reasoning = show_reasoning
        self._tools = tools
        self._lead = False  # strip the whitespace that starts content after a think block
        self._reasoning_lead = True  # ... and that starts reasoning
        # Content that starts like a bare JSON tool call (Llama 3's format), while tools are
        # shown: held back and parsed at the end.
        self._tool_names = tool_names
        self._json: list[str] | None = None
        self.raw_parts: list[str] = []
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.tokens = 0
        self.shown_tokens = 0
        self.finish: Literal["stop", "length"] | None = None
        self.pause_requested = False
        #: Every generated token's text was delivered (none left pending at the end).
        self.complete = True

    @property
    def raw(self) -> str:
        return "".join(self.raw_parts)

    def feed(self, chunk: Chunk) -> list[ChatDelta]:
        self.raw_parts.append(chunk.text)
        self.tokens += len(chunk.token_ids)
        if chunk.finish_reason is not None and chunk.token_ids:
            self.complete = False  # tokens whose text never came: the cache holds more
        if self.finish is not None:
            return []
        self.shown_tokens = self.tokens
        out: list[ChatDelta] = []
        if self._tools and (chunk.in_tool_call or chunk.tool_calls):
            out += self._flush()
            if chunk.tool_calls:
                self.tool_calls.extend(chunk.tool_calls)
                out.append(ChatDelta(tool_calls=tuple(chunk.tool_calls)))
        elif chunk.text:
            for kind, text in self._split(chunk.text):
                out += self._scan(kind, text)
                if self.finish is not None:
                    break
        if self.finish is None and self._limit is not None and self.tokens >= self._limit:
            out += self._flush()
            self.finish = "length"
        return out

    def end(self) -> list[ChatDelta]:
        """The run has ended: what was held back (it did not start a stop string), and a
        held-back JSON reply as tool calls, or as content when it is not one."""
        out = [] if self.finish == "stop" else self._flush()
        if self._json is not None:
            text, self._json = "".join(self._json), None
            calls = _bare_tool_calls(text, self._tool_names, first_index=len(self.tool_calls))
            if calls:
                self.tool_calls.extend(calls)
                out.append(ChatDelta(tool_calls=tuple(calls)))
            else:
                self.content.append(text)
                out.append(ChatDelta(content=text))
        return out

    def _split(self, text: str) -> list[tuple[str, str]]:
        """(kind, text) pieces, think tags removed: "reasoning" inside a block, else "content"."""
        if self._tags is None:
            return [("content", text)]
        opened, closed = self._tags
        out = []
        while text:
            if self._in_think:
                i = text.find(closed)
                if i < 0:
                    out.append(("reasoning", text))
                    break
                out.append(("reasoning", text[:i]))
                text = text[i + len(closed) :]
                self._in_think = False
                self._lead = True
            else:
                i = text.find(opened)
                if i < 0:
                    out.append(("content", text))
                    break
                out.append(("content", text[:i]))
                text = text[i + len(opened) :]
                self._in_think = True
                self._reasoning_lead = True
        return [(k, t) for k, t in out if t]

    def _scan(self, kind: str, text: str) -> list[ChatDelta]:
        if not self._stops:
            return self._emit([(kind, text)])
        self._held.append((kind, text))
        joined = "".join(t for _, t in self._held)
        cuts = [i for i in (joined.find(s) for s in self._stops) if i >= 0]
        if cuts:
            out = self._emit(self._take(min(cuts)))
            self._held = []
            self.finish = "stop"
            return out
        keep = len(joined) - self._hold
        return self._emit(self._take(keep)) if keep > 0 else []

    def _take(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` held characters, as (kind, text) pieces."""
        out = []
        while n > 0 and self._held:
            kind, text = self._held[0]
            if len(text) <= n:
                out.append(self._held.pop(0))
                n -= len(text)
            else:
                out.append((kind, text[:n]))
                self._held[0] = (kind, text[n:])
                n = 0
        return out

    def _flush(self) -> list[ChatDelta]:
        held, self._held = self._held, []
        return self._emit(held)

    def _emit(self, pieces: Sequence[tuple[str, str]]) -> list[ChatDelta]:
        out = []
        for kind, piece in pieces:
            if kind == "reasoning":
                text = piece.lstrip() if self._reasoning_lead else piece
                if text:
                    self._reasoning_lead = False
                    self.reasoning.append(text)
                    if self._show_reasoning:
                        out.append(ChatDelta(reasoning=text))
            else:
                text = piece.lstrip() if self._lead else piece
                if (
                    self._json is None
                    and self._tool_names
                    and not self.content
                    and text.lstrip().startswith(("{", "["))
                ):
                    self._json = []
                if text and self._json is not None:
                    self._json.append(text)
                elif text:
                    self._lead = False
                    self.content.append(text)
                    out.append(ChatDelta(content=text))
        return out


def _bare_tool_calls(text: str, names: frozenset[str], *, first_index: int) -> list[ToolCall]:
    """Tool calls written as bare JSON (``{"name": ..., "parameters": {...}}``, Llama 3's
    format; several separated by ``;`` or new lines, or a list), or [] when ``text`` is
    anything else."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return []
        items.extend(value if isinstance(value, list) else [value])
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    calls = []
    for n, item in enumerate(items, start=first_index):
        if not isinstance(item, dict) or item.get("name") not in names:
            return []
        args = item.get("parameters", item.get("arguments", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return []
        if not isinstance(args, dict):
            return []
        digest = hashlib.sha1(json.dumps(item, sort_keys=True).encode()).hexdigest()[:8]
        calls.append(ToolCall(name=item["name"], arguments=args, id=f"call_{n}_{digest}"))
    return calls
