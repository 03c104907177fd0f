"""LLM: the blocking twin of AsyncLLM, for scripts and notebooks.

Same method names and results as :class:`~rkllm_sdk.AsyncLLM`; ``for chunk in
llm.stream(...)`` instead of ``async for``. The async core runs on an event loop in a
background thread (an anyio blocking portal), so it also works where a loop is already
running, such as a Jupyter kernel, without ``nest_asyncio``.

>>> with LLM.load("model.json", runtime="fake") as llm:        # doctest: +SKIP
...     print(llm.generate("Hello").text)
...     with llm.stream("Hello") as s:
...         for chunk in s:
...             print(chunk.text, end="")
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, Unpack

from anyio.from_thread import BlockingPortal

from ._portal import blocking, interrupts_deferred, open_on_new_loop
from .arrays import FloatArray
from .chat import ChatReply, ChatSession
from .errors import ClosedError
from .llm import AsyncLLM
from .metrics import MetricsSnapshot
from .models import CrossAttention, Input, LoraAdapter, ModelParams
from .options import RunOptions, TurnOptions
from .results import Chunk, Generation, RuntimeInfo
from .stream import PromptLike, TokenStream, next_chunks
from .tools import ToolLike

__all__ = ["LLM", "SyncChatSession", "SyncTokenStream"]

T = TypeVar("T")


class SyncTokenStream:
    """A :class:`TokenStream` used with ``for`` (and ``with``); same results and semantics.

    ``for chunk in llm.stream(...)`` starts the run and closes it when the loop ends, also
    by ``break`` or an exception (the run is aborted); ``with llm.stream(...) as s`` does
    the same and keeps ``s`` for ``result()`` afterwards.
    """

    def __init__(self, portal: BlockingPortal, stream: TokenStream) -> None:
        self._portal = portal
        self._stream = stream
        self._ready: list[Chunk] = []
        self._pos = 0
        self._entered = False

    def __enter__(self) -> SyncTokenStream:
        self._portal.call(self._stream.__aenter__)
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Chunk]:
        return self if self._entered else self._iter_closing()

    def _iter_closing(self) -> Iterator[Chunk]:
        # Closing the generator (a finished or abandoned loop) leaves the `with`: the run
        # is aborted if it is still going.
        with self:
            yield from self  # entered now: iter(self) is self

    def __next__(self) -> Chunk:
        if self._pos == len(self._ready):
            # One hop to the loop thread fetches every chunk ready, not one.
            self._ready = self._portal.call(next_chunks, self._stream)
            self._pos = 0
            if not self._ready:
                raise StopIteration
        chunk = self._ready[self._pos]
        self._pos += 1
        return chunk

    def close(self) -> None:
        """Abort if still running and wait for the runtime (see :meth:`TokenStream.aclose`).

        >>> s.close()  # doctest: +SKIP
        """
        self._portal.call(self._stream.aclose)

    def abort(self) -> None:
        """Ask the runtime to stop; iteration ends with finish_reason "abort".

        >>> s.abort()  # doctest: +SKIP
        """
        self._portal.call(self._stream.abort)

    def pause(self) -> None:
        """Pause after the next token, keeping the KV cache.

        >>> s.pause()  # doctest: +SKIP
        """
        self._portal.call(self._stream.pause)

    @property
    def finished(self) -> bool:
        """True once the run has ended and every chunk has been produced.

        >>> s.finished  # doctest: +SKIP
        """
        return self._stream.finished

    def result(self, batch: int = 0) -> Generation:
        """The finished run's :class:`Generation`.

        >>> s.result().finish_reason  # doctest: +SKIP
        """
        return self._stream.result(batch)

    def results(self) -> list[Generation]:
        """Every batch's :class:`Generation`.

        >>> [g.text for g in s.results()]  # doctest: +SKIP
        """
        return self._stream.results()

    def final(self) -> Generation:
        """Consume the rest and return the :class:`Generation`.

        >>> s.final().text  # doctest: +SKIP
        """
        for _ in self:
            pass
        return self.result()


class SyncChatSession:
    """A :class:`ChatSession` with blocking calls (see ``LLM.chat()``)."""

    def __init__(
        self, portal: BlockingPortal, session: ChatSession, closed: Callable[[], bool]
    ) -> None:
        """Internal: use ``llm.chat(...)``."""
        self._portal = portal
        self.session = session
        self._closed = closed

    @property
    def system(self) -> str | None:
        """The session's system prompt.

        >>> chat.system  # doctest: +SKIP
        """
        return self.session.system

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The session's tools, as OpenAI-format dicts.

        >>> [t["function"]["name"] for t in chat.tools]  # doctest: +SKIP
        """
        return self.session.tools

    @property
    def thinking(self) -> bool:
        """Whether the session asks the model to think.

        >>> chat.thinking  # doctest: +SKIP
        """
        return self.session.thinking

    @property
    def turns(self) -> list[ChatReply]:
        """The replies so far.

        >>> chat.turns[-1].text  # doctest: +SKIP
        """
        return self.session.turns

    def stream(
        self, text: str, *, role: str = "user", **options: Unpack[TurnOptions]
    ) -> SyncTokenStream:
        """The next turn as a :class:`SyncTokenStream` (see ChatSession.stream); then
        ``chat.reply_from(s.result())``.

        >>> with chat.stream("Hi") as s: print("".join(c.text for c in s))  # doctest: +SKIP
        """
        if self._closed():
            raise ClosedError("the model handle is closed")
        stream: TokenStream = self._portal.call(
            functools.partial(self.session.stream, text, role=role, **options)
        )
        return SyncTokenStream(self._portal, stream)

    def reply_from(self, generation: Generation) -> ChatReply:
        """Split a finished turn's :class:`Generation` into a :class:`ChatReply`.

        >>> reply = chat.reply_from(s.result())  # doctest: +SKIP
        """
        return self.session.reply_from(generation)

    def send(self, text: str, **options: Unpack[TurnOptions]) -> ChatReply:
        """Send a user message and return the reply (see ChatSession.send).

        >>> chat.send("Turn on the kitchen light").tool_calls  # doctest: +SKIP
        """
        return blocking(self._portal, self._closed, self.session.send, text, **options)

    def send_tool_results(
        self, results: Mapping[str, Any] | Sequence[Any], **options: Unpack[TurnOptions]
    ) -> ChatReply:
        """Send tool results back and return the reply (see ChatSession.send_tool_results).

        >>> chat.send_tool_results([21.5]).text  # doctest: +SKIP
        """
        return blocking(
            self._portal, self._closed, self.session.send_tool_results, results, **options
        )

    def reset(self) -> None:
        """Forget the conversation.

        >>> chat.reset()  # doctest: +SKIP
        """
        blocking(self._portal, self._closed, self.session.reset)


class LLM:
    """One loaded model, blocking API. Create it with :meth:`load`; close it (or ``with``)."""

    def __init__(
        self,
        portal_cm: AbstractContextManager[BlockingPortal],
        portal: BlockingPortal,
        llm: AsyncLLM,
    ) -> None:
        """Internal: use ``LLM.load(...)``."""
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = portal_cm
        self._portal = portal
        self._llm = llm

    @classmethod
    def load(
        cls,
        model_path: str | os.PathLike[str],
        *,
        runtime: str | os.PathLike[str] | None = None,
        abi: str | None = None,
        params: ModelParams | None = None,
        tokenizer: Callable[[str], Sequence[int]] | None = None,
        embedder: Callable[[Any], Any] | None = None,
        backend: str = "asyncio",
    ) -> LLM:
        """Load a model (see :meth:`AsyncLLM.load`); ``backend`` runs the portal's loop.

        >>> llm = LLM.load("model.rkllm")  # doctest: +SKIP
        """
        load = functools.partial(
            AsyncLLM.load,
            model_path,
            runtime=runtime,
            abi=abi,
            params=params,
            tokenizer=tokenizer,
            embedder=embedder,
        )
        cm, portal, llm = open_on_new_loop(backend, load, AsyncLLM.aclose)
        twin: LLM | None = None
        try:
            with interrupts_deferred():
                twin = cls(cm, portal, llm)
        except KeyboardInterrupt:  # noted while the twin was being made: it is closed
            if twin is not None:
                twin.close()
            raise
        return twin

    def __enter__(self) -> LLM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Abort, wait and destroy the handle, then stop the background loop. Idempotent.

        >>> llm.close()  # doctest: +SKIP
        """
        if self._portal_cm is None:
            return
        # Ctrl-C waits until the handle is destroyed and the loop stopped, then is raised.
        with interrupts_deferred():
            try:
                self._portal.call(self._llm.aclose)
            finally:
                cm, self._portal_cm = self._portal_cm, None
                cm.__exit__(None, None, None)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return blocking(self._portal, lambda: self._portal_cm is None, fn, *args, **kwargs)

    # The same surface as AsyncLLM, blocking.

    @property
    def async_llm(self) -> AsyncLLM:
        """The :class:`AsyncLLM` this twin drives (its calls must run on the twin's loop).

        >>> llm.async_llm.runtime  # doctest: +SKIP
        """
        return self._llm

    @property
    def model_path(self) -> str:
        """The model file this handle was loaded from.

        >>> llm.model_path  # doctest: +SKIP
        """
        return self._llm.model_path

    @property
    def runtime(self) -> RuntimeInfo:
        """The runtime library this handle runs on (path, version, ABI, fake or not).

        >>> llm.runtime.abi  # doctest: +SKIP
        """
        return self._llm.runtime

    @property
    def params(self) -> ModelParams:
        """The init parameters in force.

        >>> llm.params.top_p  # doctest: +SKIP
        """
        return self._llm.params

    @property
    def n_batch(self) -> int:
        """Inputs per run.

        >>> llm.n_batch  # doctest: +SKIP
        """
        return self._llm.n_batch

    @property
    def closed(self) -> bool:
        """True once close() has begun.

        >>> llm.closed  # doctest: +SKIP
        """
        return self._llm.closed

    def is_running(self) -> bool:
        """Whether the runtime reports a task in progress.

        >>> llm.is_running()  # doctest: +SKIP
        """
        return self._llm.is_running()

    def metrics(self) -> MetricsSnapshot:
        """This handle's counters and timings (see AsyncLLM.metrics).

        >>> llm.metrics().calls_ok  # doctest: +SKIP
        """
        return self._llm.metrics()

    def timings(self) -> Generation | None:
        """The last finished run (see AsyncLLM.timings).

        >>> llm.timings().tokens_per_s  # doctest: +SKIP
        """
        return self._llm.timings()

    def stream(self, prompt: PromptLike, **options: Unpack[RunOptions]) -> SyncTokenStream:
        """``with llm.stream(...) as s: for chunk in s`` (options as AsyncLLM.stream).

        >>> print("".join(c.text for c in llm.stream("Hi")))  # doctest: +SKIP
        """
        if self._portal_cm is None:
            raise ClosedError("the model handle is closed")
        # Built on the loop's thread: the stream's synchronisation primitives belong to it.
        stream: TokenStream = self._portal.call(
            functools.partial(self._llm.stream, prompt, **options)
        )
        return SyncTokenStream(self._portal, stream)

    def chat(
        self,
        *,
        system: str | None = None,
        tools: Sequence[ToolLike] = (),
        thinking: bool = False,
        template: tuple[str, str, str] | None = None,
    ) -> SyncChatSession:
        """A blocking chat session (see AsyncLLM.chat).

        >>> chat = llm.chat(system="You control a home.", tools=[set_light])  # doctest: +SKIP
        """
        session = self._llm.chat(system=system, tools=tools, thinking=thinking, template=template)
        return SyncChatSession(self._portal, session, lambda: self._portal_cm is None)

    def generate(self, prompt: PromptLike, **options: Unpack[RunOptions]) -> Generation:
        """Run to the end (options as AsyncLLM.stream).

        >>> llm.generate("Hi").text  # doctest: +SKIP
        """
        return self._call(self._llm.generate, prompt, **options)

    def generate_batch(
        self, prompts: Sequence[Input], **options: Unpack[RunOptions]
    ) -> list[Generation]:
        """One batched run; one Generation per input (see AsyncLLM.generate_batch).

        >>> llm.generate_batch([rk.Prompt(text="a"), rk.Prompt(text="b")])  # doctest: +SKIP
        """
        return self._call(self._llm.generate_batch, prompts, **options)

    def logits(
        self, prompt: PromptLike, *, all_tokens: bool = False, keep_history: bool = False
    ) -> FloatArray:
        """Logits of the last token, or of every token (see AsyncLLM.logits).

        >>> llm.logits("The capital of France is").argmax()  # doctest: +SKIP
        """
        return self._call(
            self._llm.logits, prompt, all_tokens=all_tokens, keep_history=keep_history
        )

    def hidden_states(
        self, prompt: PromptLike, *, all_tokens: bool = True, keep_history: bool = False
    ) -> FloatArray:
        """Last-layer hidden states (see AsyncLLM.hidden_states).

        >>> llm.hidden_states("Hello").shape  # doctest: +SKIP
        """
        return self._call(
            self._llm.hidden_states, prompt, all_tokens=all_tokens, keep_history=keep_history
        )

    def abort(self) -> None:
        """Abort the run in progress, if any, without waiting (see AsyncLLM.abort).

        >>> llm.abort()  # doctest: +SKIP
        """
        self._portal.call(self._llm.abort)

    def clear_kv_cache(
        self, *, keep_system_prompt: bool = False, ranges: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Clear the KV cache (see AsyncLLM.clear_kv_cache).

        >>> llm.clear_kv_cache()  # doctest: +SKIP
        """
        self._call(self._llm.clear_kv_cache, keep_system_prompt=keep_system_prompt, ranges=ranges)

    def kv_cache_size(self) -> list[int]:
        """Tokens in the KV cache, one count per batch.

        >>> llm.kv_cache_size()  # doctest: +SKIP
        """
        return self._call(self._llm.kv_cache_size)

    def load_lora(self, adapter: LoraAdapter) -> None:
        """Load (or replace) a LoRA adapter.

        >>> llm.load_lora(rk.LoraAdapter(path="style.rkllm", name="style"))  # doctest: +SKIP
        """
        self._call(self._llm.load_lora, adapter)

    def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Load a prompt cache saved by an earlier run.

        >>> llm.load_prompt_cache("prefix.cache")  # doctest: +SKIP
        """
        self._call(self._llm.load_prompt_cache, path)

    def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache.

        >>> llm.release_prompt_cache()  # doctest: +SKIP
        """
        self._call(self._llm.release_prompt_cache)

    def set_chat_template(self, system_prompt: str, prefix: str, postfix: str) -> None:
        """Replace the model's chat template.

        >>> llm.set_chat_template("", "<|user|>", "<|assistant|>")  # doctest: +SKIP
        """
        self._call(self._llm.set_chat_template, system_prompt, prefix, postfix)

    def set_function_tools(
        self,
        system_prompt: str,
        tools: str | Sequence[Mapping[str, Any]],
        tool_response_str: str = "tool_response",
    ) -> None:
        """Give the model OpenAI-format tools.

        >>> llm.set_function_tools("", [rk.tool_schema(set_light)])  # doctest: +SKIP
        """
        self._call(self._llm.set_function_tools, system_prompt, tools, tool_response_str)

    def set_cross_attention(self, cross: CrossAttention | None) -> None:
        """Set (or clear with None) the cross-attention arrays.

        >>> llm.set_cross_attention(None)  # doctest: +SKIP
        """
        self._call(self._llm.set_cross_attention, cross)

    def __repr__(self) -> str:
        return repr(self._llm).replace("AsyncLLM", "LLM", 1)
