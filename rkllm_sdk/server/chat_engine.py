"""The one place that runs chats for the OpenAI and Ollama faces: templates, runs, KV reuse.

Both HTTP APIs are stateless: every request carries the whole conversation. The runtime is
stateful: a handle's KV cache holds what it has read and written. :class:`ChatEngine` joins
the two:

1. It renders the conversation with the model's :class:`~rkllm_sdk.server.templates.ChatTemplate`
   (the runtime's own template is switched off once per load), or takes a raw prompt as is.
2. It remembers, per loaded model (``Loaded.engine_state``, a :class:`~.kv_reuse.KVRecord`),
   exactly the text the KV cache holds: what was sent plus every token the model produced,
   including text past a stop string or a token limit (the run is *paused* there, never
   aborted, so the cache ends exactly where the delivered tokens end).
3. **Continuation**: when the newly rendered prompt starts with what the cache stands for,
   only the rest is sent, with ``keep_history``. The cache "stands for" its exact text, or
   the same text with the latest reply's ``<think>`` block removed (chat templates drop past
   reasoning; the model keeps seeing its own, as a runtime chat session would).
4. Otherwise the cache is cleared and everything is sent. If the text before the first
   user message's content (system turn, tools, headers) is long
   (:attr:`ChatEngine.prefix_min_chars` characters or more), the first such run saves a
   prompt cache into ``CACHE_SUBDIR`` of the catalog's cache directory (bounded, least
   recently used deleted first) and later fresh runs load it: the runtime skips the
   longest common prefix. Only files this engine saved and measured (their tokens) are
   loaded: a run on a prompt cache is proven free of context shifts by the file's size
   plus the tokens computed and generated; a file of unknown size (an earlier server's)
   is saved anew, and a loaded one released before a fresh run.
5. Lines of the system message that change on every request (Home Assistant starts it with
   "Current time is 18:42:07. ...") would defeat both: they move to the start of the newest
   user turn, and stay with that turn in later requests (:attr:`ChatEngine.volatile_patterns`).
6. A run that does not end cleanly (client gone, abort, error, a context shift) leaves the
   record *unknown*: the next request clears the cache and prefills everything.

Deltas stream as the NPU yields them: ``<think>`` text as ``reasoning`` (tags stripped),
``<tool_call>`` blocks as parsed :class:`~rkllm_sdk.ToolCall` s when a block closes (and a
reply that is bare JSON naming a shown tool, Llama 3's format, when it ends), the rest as
``content`` (:mod:`.reply_parser`); :class:`~.chat_types.ChatDone` comes last with the usage
(``cached_tokens``: prompt tokens not prefilled thanks to reuse).

The request and reply types are in :mod:`.chat_types`, the KV record, reuse plans and the
prompt-cache directory in :mod:`.kv_reuse`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from ..errors import GenerationError
from ..models import Sampling
from ..results import Generation
from .chat_types import (
    ChatDelta,
    ChatDone,
    ChatRequest,
    ContextLengthError,
    FinishReason,
    RequestError,
    check_request,
    sampling_values,
)
from .kv_reuse import (
    HOME_ASSISTANT_TIME,
    KVRecord,
    ReusePlan,
    apply_plan,
    bound_prompt_caches,
    cache_views,
    continuation,
    kv_record,
    prompt_cache_path,
    release_prompt_cache,
    split_volatile,
)
from .reply_parser import ReplyParser

if TYPE_CHECKING:
    from ..llm import AsyncLLM
    from ..options import RunOptions
    from .catalog import Loaded, ModelCatalog
    from .templates import ChatTemplate

__all__ = ["REQUIRED_TOOL_INSTRUCTION", "ChatEngine"]

#: ``tool_choice="required"`` is honoured by this instruction at the end of the system turn
#: (the runtime has no constrained decoding, so a model may still answer in plain text).
REQUIRED_TOOL_INSTRUCTION = "Answer by calling one or more of the tools above."


@attrs.define(kw_only=True)
class _Run:
    """One chat run's parts."""

    plan: ReusePlan
    options: RunOptions
    reply: ReplyParser
    think: tuple[str, str] | None
    load_ms: float
    notes: dict[int, str]


class ChatEngine:
    """Runs chats and embeddings on the catalog's models (see the module docstring).

    Args:
        catalog: the named models (queueing, loading, counters, cache directory).
        reuse: False re-prefills every request from scratch (no continuation, no prompt
            caches): the baseline peers use, for benchmarks.
        prefix_min_chars: the text before the first user message's content (system turn,
            tools, headers) gets a prompt cache when at least this long.
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
        # Tokens in each prompt-cache file this engine saved (its run's prompt, measured
        # when the run ended cleanly): what bounds a later run that loads it (see _finish).
        self._prompt_cache_tokens: dict[Path, int] = {}

    # ---- chat ------------------------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> AsyncGenerator[ChatDelta | ChatDone, None]:
        """Deltas as the NPU yields them, then one :class:`ChatDone`.

        Close the generator early (``aclose``, e.g. the client left) to abort the run on
        the NPU; the model stays usable. Use it as ``async with aclosing(engine.chat(req))
        as items``: a generator left suspended mid-run keeps the model's turn until it is
        garbage-collected. ChatDone comes after the turn has ended. Raises before the
        first delta:
        ``ModelNotFoundError``, ``QueueFullError``, :class:`RequestError` (a
        :class:`ContextLengthError` for a prompt longer than the model's context).
        """
        t0 = time.perf_counter()
        tools = check_request(req)
        async with self.catalog.use(req.model, keep_alive_s=req.keep_alive_s) as loaded:
            state = kv_record(loaded)
            async with state.lock:
                run = await self._start(loaded, state, req, tools)
                reply = run.reply
                state.forget()  # until the run has ended cleanly
                try:
                    field = "messages" if req.raw_prompt is None else "raw_prompt"
                    with _refused_for_length(loaded, field):
                        async with loaded.llm.stream(run.plan.send, **run.options) as s:
                            async for chunk in s:
                                deltas = reply.feed(chunk)
                                if reply.finish is not None and not reply.pause_requested:
                                    reply.pause_requested = True
                                    s.pause()  # the cache ends exactly at the delivered tokens
                                for delta in deltas:
                                    yield delta
                            gen = s.result()
                    last: list[ChatDelta | ChatDone] = [*reply.end()]
                    last.append(await self._finish(loaded, state, req, run, gen, t0))
                finally:
                    if run.plan.save is not None:  # however the run ended, it may have saved
                        self._bound_prompt_caches(run.plan.save)
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
        plan, notes = self._render_and_plan(loaded, state, req, tools)
        prompt = plan.prompt
        load_ms = float(loaded.load_ms) if loaded.uses == 1 else 0.0  # this request loaded it
        await apply_plan(llm, state, plan)
        if plan.save is not None:
            options["prompt_cache"] = os.fspath(plan.save)
        think = None if raw else template.think_tags
        reply = ReplyParser(
            think_tags=think,
            in_think=not raw and template.starts_thinking(prompt),
            stops=req.stop if raw else (*template.stop, *req.stop),
            # Runtime 1.2 has no per-run limit: the engine pauses the run there instead.
            limit=req.max_tokens if llm.runtime.abi != "1.3" else None,
            show_reasoning=req.thinking is not False,
            tools=bool(tools),  # no tools shown (tool_choice "none"): a call is just text
            tool_names=frozenset(str(t["function"]["name"]) for t in tools or ()),
        )
        return _Run(
            plan=plan, options=options, reply=reply, think=think, load_ms=load_ms, notes=notes
        )

    def _render_and_plan(
        self,
        loaded: Loaded,
        state: KVRecord,
        req: ChatRequest,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[ReusePlan, dict[int, str]]:
        """The prompt's reuse plan, and the volatile notes its user turns carry (by index).

        Volatile system lines go to the newest user turn; earlier turns keep the notes the
        cache was built with, unless the cache is not continued anyway: then only the
        newest turn gets its note."""
        if req.raw_prompt is not None:
            return self._plan(loaded, state, req, (), tools, req.raw_prompt), {}
        volatile = split_volatile(self.volatile_patterns, req.messages)
        if volatile is None:
            prompt = _render(loaded.template, req, req.messages, tools)
            return self._plan(loaded, state, req, req.messages, tools, prompt), {}

        def planned(notes: Mapping[int, str]) -> ReusePlan:
            messages = volatile.annotated(notes)
            prompt = _render(loaded.template, req, messages, tools)
            return self._plan(loaded, state, req, messages, tools, prompt)

        fresh = {volatile.last_user: volatile.note}
        notes = {**fresh, **state.notes} if state.text is not None and self.reuse else fresh
        plan = planned(notes)
        if plan.base_tokens == 0 and notes != fresh:  # not a continuation
            notes = fresh
            plan = planned(notes)
        return plan, notes

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
        # token of slack: an end-of-sequence token may or may not stay in the cache), so the
        # prompt is base + computed tokens. With one, the prompt is at most the file's
        # tokens plus those computed; a file of unknown size proves nothing. A prompt and
        # reply that may not fit the context may have been shifted (the cache lost tokens
        # while kv_cache_size and the counts still look plausible): not reused.
        exact = plan.base_tokens > 0 or state.prompt_cache is None
        reused_max: int | None = 0
        if not exact and state.prompt_cache is not None:
            reused_max = self._prompt_cache_tokens.get(state.prompt_cache)
        consistent = (
            reply.complete
            and sent_tokens >= 1
            and reused_max is not None
            and (abs(sent_tokens - computed) <= 1 if exact else sent_tokens + 1 >= computed)
            and plan.base_tokens + reused_max + computed + generated
            <= (llm.params.max_context_len or 0)
        )
        if consistent and self.reuse:
            state.text = plan.base_text + plan.send + reply.raw
            state.views = cache_views(plan.prompt + reply.raw, len(plan.prompt), run.think)
            state.tokens = n1
            state.notes = run.notes
        if plan.save is not None and consistent:  # the file holds sent_tokens (+-1), no shift
            self._prompt_cache_tokens[plan.save] = sent_tokens + 1
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

    def _bound_prompt_caches(self, keep: Path) -> None:
        """The prompt-cache directory's bound, after a run that saved ``keep``."""
        bound_prompt_caches(
            keep, max_files=self.prompt_cache_max_files, max_bytes=self.prompt_cache_max_bytes
        )
        for path in [p for p in self._prompt_cache_tokens if not p.exists()]:
            del self._prompt_cache_tokens[path]

    # ---- embeddings ------------------------------------------------------------------------

    async def embed(
        self, model: str, inputs: Sequence[str], *, keep_alive_s: float | None = None
    ) -> tuple[list[list[float]], int]:
        """One vector per input, and the prompt tokens read.

        Pooling: the mean of the last hidden layer over the input's tokens (the text as
        is, no template), L2-normalised. The run empties the KV cache, so the next chat
        request prefills in full.

        Raises:
            RequestError: no input, or an empty / non-string one (field ``input``);
                ContextLengthError: an input longer than the model's context.
        """
        if isinstance(inputs, str) or not inputs:
            raise RequestError("input", "input must be a non-empty list of strings")
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text:
                raise RequestError("input", f"input[{i}] must be a non-empty string")
        async with self.catalog.use(model, keep_alive_s=keep_alive_s) as loaded:
            state = kv_record(loaded)
            async with state.lock:
                llm = loaded.llm
                state.forget()
                await llm.clear_kv_cache()
                await release_prompt_cache(llm, state)
                vectors: list[list[float]] = []
                tokens = 0
                for i, text in enumerate(inputs):
                    with _refused_for_length(loaded, f"input[{i}]"):
                        rows = await llm.hidden_states(text, all_tokens=True)
                    mean = np.asarray(rows, dtype=np.float64).reshape(-1, rows.shape[-1])
                    tokens += mean.shape[0]
                    vector = mean.mean(axis=0)
                    norm = float(np.linalg.norm(vector))
                    vectors.append((vector / norm if norm > 0 else vector).tolist())
                self.catalog.counters(loaded.spec.name).prompt_tokens += tokens
                return vectors, tokens

    # ---- reuse plans -----------------------------------------------------------------------

    def _plan(
        self,
        loaded: Loaded,
        state: KVRecord,
        req: ChatRequest,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        prompt: str,
    ) -> ReusePlan:
        """Continue the cache, or clear it (and load or save a prompt cache)."""
        if self.reuse and (plan := continuation(state, prompt)) is not None:
            return plan
        cache = self._prefix_cache(loaded, req, messages, tools, prompt) if self.reuse else None
        load = save = None
        if cache is not None:
            # A file this engine did not measure (an earlier process's, or one whose
            # saving run did not end cleanly) is saved anew rather than loaded.
            if cache.exists() and cache in self._prompt_cache_tokens:
                load = cache
            else:
                save = cache
        return ReusePlan(
            prompt=prompt,
            send=prompt,
            base_text="",
            base_tokens=0,
            clear=state.text != "" or state.tokens != 0,
            load=load,
            save=save,
            # A loaded file this engine did not measure would leave the run unprovable.
            release=self.reuse and state.prompt_cache not in self._prompt_cache_tokens,
        )

    def _prefix_cache(
        self,
        loaded: Loaded,
        req: ChatRequest,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        prompt: str,
    ) -> Path | None:
        """The prompt-cache file for the prompt's system turn, if it is long enough."""
        cache_dir = self.catalog.cache_dir
        if cache_dir is None or req.raw_prompt is not None:
            return None
        head = _shared_prefix(loaded.template, req, messages, tools)
        if head is None or len(head) < self.prefix_min_chars or not prompt.startswith(head):
            return None
        try:
            path = prompt_cache_path(cache_dir, loaded.spec.name, loaded.spec.path, head)
        except OSError:  # a directory that cannot be made (read-only): no prompt caches
            return None
        # The runtime fails a run whose prompt cache it cannot write: not in such a place.
        return path if os.access(path.parent, os.W_OK) else None


# ---- rendering and run options ----------------------------------------------------------


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
    given = sampling_values(req)
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


@contextlib.contextmanager
def _refused_for_length(loaded: Loaded, field: str) -> Iterator[None]:
    """Turn the runtime's refusal of a prompt longer than the context into
    :class:`ContextLengthError` naming ``field``.

    RKLLM tokenizes text itself and refuses a prompt that does not fit ``max_context_len``
    with a failed ``rkllm_run`` before the first token; the SDK's GenerationError then names
    ``max_context_len`` among the causes it could not check, and nothing was generated.
    The one place that reads that error: the faces map ContextLengthError.
    """
    try:
        yield
    except GenerationError as exc:
        gen = exc.generation
        nothing = gen is None or (not gen.text and not gen.token_ids)
        if not (nothing and "max_context_len" in str(exc)):
            raise
        context_len = loaded.llm.params.max_context_len or 0
        raise ContextLengthError(field, context_len, str(exc)) from exc
