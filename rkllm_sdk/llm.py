"""AsyncLLM: the async API over one model handle.

Every blocking runtime call (loading, init, runs, destroy, file-touching calls) runs in a
worker thread; nothing blocks the event loop. A handle runs one task at a time: runs and
configuration calls queue in FIFO order (``wait=False`` raises :class:`BusyError` instead).
Several handles run side by side. Works on asyncio and trio (anyio).

>>> async def main():                                           # doctest: +SKIP
...     async with await AsyncLLM.load("qwen.rkllm") as llm:
...         async with llm.stream("Hello") as s:
...             async for chunk in s:
...                 print(chunk.text, end="")
...         print((await llm.generate("Hi")).text)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from . import _native as native
from . import metrics
from ._ffi.loader import Runtime, load_runtime
from .arrays import FloatArray, IntArray
from .chat import ChatSession
from .errors import BusyError, ClosedError, InvalidParamsError, RKLLMError
from .models import (
    CrossAttention,
    InferMode,
    InferOptions,
    Input,
    LoraAdapter,
    ModelParams,
    Prompt,
    PromptCache,
    Sampling,
)
from .stream import MAX_PENDING, Generation, TokenStream
from .tools import ToolLike

__all__ = ["AsyncLLM", "HandleInfo", "open_handles"]

T = TypeVar("T")

PromptLike = str | Input | Sequence[Input]


@attrs.frozen(kw_only=True)
class HandleInfo:
    """A live handle, for leak hunting (see :func:`open_handles`)."""

    model_path: str
    abi: str
    age_s: float
    state: str  # "idle", "running" or "closing"


_live: weakref.WeakSet[AsyncLLM] = weakref.WeakSet()
_live_lock = threading.Lock()


def open_handles() -> list[HandleInfo]:
    """Every AsyncLLM / LLM handle not yet closed: model, age and state.

    >>> open_handles()
    []
    """
    with _live_lock:
        llms = list(_live)
    now = time.monotonic()
    return [
        HandleInfo(
            model_path=llm.model_path,
            abi=llm.runtime.abi,
            age_s=now - llm._opened_at,
            state=llm._state_name(),
        )
        for llm in llms
        if not llm.closed
    ]


@atexit.register
def _close_all_at_exit() -> None:
    # Abort and destroy what users forgot, before the interpreter finalizes. Only C calls:
    # the runtime's callbacks go to the C bridge, so nothing re-enters Python here.
    with _live_lock:
        llms = list(_live)
    for llm in llms:
        llm._destroy_now()


def _coerce(prompt: PromptLike, role: str, thinking: bool) -> Input | Sequence[Input]:
    if isinstance(prompt, str):
        return Prompt(text=prompt, role=role, enable_thinking=thinking)
    return prompt


class AsyncLLM:
    """One loaded model on the NPU (one runtime handle). Create it with :meth:`load`."""

    def __init__(self, handle: native.NativeHandle, model_path: str) -> None:
        """Internal: use ``await AsyncLLM.load(...)``."""
        self._handle: native.NativeHandle | None = handle
        self.model_path = model_path
        self._slot = anyio.Semaphore(1)  # FIFO: one task at a time on the handle
        self._closing = False
        self._busy = False
        self._current: TokenStream | None = None  # the stream running on the handle, if any
        self._last: Generation | None = None  # the last finished run (for timings())
        self._callback_errors: list[BaseException] = []  # from 1.3 tokenizer / embedder
        # The bridge channel of the last finished run, reused by the next (its buffers stay).
        self._spare_channel: native.Channel | None = None
        self._opened_at = time.monotonic()
        self._runtime = handle.runtime
        self._metrics = metrics.Recorder()
        metrics.register(self, self._metrics)
        with _live_lock:
            _live.add(self)

    # ---- lifetime --------------------------------------------------------------------------

    @classmethod
    async def load(
        cls,
        model_path: str | os.PathLike[str],
        *,
        runtime: str | os.PathLike[str] | None = None,
        abi: str | None = None,
        params: ModelParams | None = None,
        tokenizer: Callable[[str], Sequence[int]] | None = None,
        embedder: Callable[[IntArray], Any] | None = None,
    ) -> AsyncLLM:
        """Find the runtime, pick its ABI and load the model (all in a worker thread).

        Args:
            model_path: the ``.rkllm`` model file.
            runtime: the runtime library path, or ``"fake"`` for the bundled emulator
                (default: ``RKLLM_RUNTIME``, then the system locations).
            abi: ``"1.2"`` or ``"1.3"`` (default: ``RKLLM_ABI``, then detection).
            params: init parameters; unset fields keep the runtime's defaults.
            tokenizer: runtime 1.3, for models without their own tokenizer: text -> ids.
            embedder: runtime 1.3, for models without their own embedding layer:
                int32 ids ``[n]`` -> float32 ``[n, hidden]``. Both run on the runtime's
                thread with the GIL; their exceptions fail the run and become its cause.

        Raises:
            RuntimeNotFoundError: no runtime library found.
            RuntimeVersionError: the runtime's version or ABI is not supported.
            ModelLoadError: ``rkllm_init`` failed (a bad model file, a fault).
            InvalidParamsError: parameters the runtime or this ABI cannot take.

        >>> llm = await AsyncLLM.load("model.json", runtime="fake")  # doctest: +SKIP
        """
        path = os.fspath(model_path)
        rt = await anyio.to_thread.run_sync(functools.partial(load_runtime, runtime, abi=abi))
        errors: list[BaseException] = []
        callbacks: dict[str, Any] = {}
        if tokenizer is not None:
            callbacks["tokenizer_callback"] = native.python_tokenizer(rt, tokenizer, errors)
        if embedder is not None:
            callbacks["embed_callback"] = native.python_embedder(rt, embedder, errors)
        init = functools.partial(
            native.init,
            rt,
            path,
            params or ModelParams(),
            rt.bridge.rkb_result_callback,
            **callbacks,
        )
        handle = await anyio.to_thread.run_sync(init)
        llm = cls(handle, path)
        llm._callback_errors = errors
        return llm

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Abort what is running, wait for it, and destroy the handle. Idempotent.

        Callers still queued for the handle get :class:`ClosedError`.

        >>> await llm.aclose()  # doctest: +SKIP
        """
        if self._handle is None or self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            handle = self._handle
            if self._current is not None:
                # Aborts the run and waits for the runtime, even if nobody iterates the stream.
                await self._current.aclose()
            await self._slot.acquire()  # a configuration call in progress ends by itself
            try:
                await anyio.to_thread.run_sync(native.destroy, handle)
            finally:
                self._free_spare_channel()
                self._handle = None
                self._slot.release()
                with _live_lock:
                    _live.discard(self)

    def _destroy_now(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._closing = True
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                native.abort(handle)
                native.destroy(handle)
                self._free_spare_channel()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun.

        >>> llm.closed  # doctest: +SKIP
        """
        return self._handle is None or self._closing

    def _state_name(self) -> str:
        if self.closed:
            return "closing"
        return "running" if self._busy else "idle"

    # ---- the FIFO slot ---------------------------------------------------------------------

    async def _acquire(self, wait: bool, stream: TokenStream | None = None) -> None:
        if self.closed:
            raise ClosedError("the model handle is closed")
        if not wait and (self._busy or self._slot.value == 0):
            raise BusyError("the model handle is busy (wait=False)")
        self._metrics.queued += 1
        try:
            await self._slot.acquire()
        finally:
            self._metrics.queued -= 1
        if self.closed:
            self._slot.release()
            raise ClosedError("the model handle was closed while waiting for it")
        self._busy = True
        self._current = stream

    def _release(self) -> None:
        self._busy = False
        self._current = None
        self._slot.release()

    def _take_channel(self, array_rows: int, release_buffers: bool) -> native.Channel:
        """A bridge channel for the next run: the spare one reset, or a new one."""
        channel, self._spare_channel = self._spare_channel, None
        if channel is None:
            return native.Channel(
                self._runtime,
                self._native_handle().n_batch,
                array_rows=array_rows,
                release_buffers=release_buffers,
                max_pending=MAX_PENDING,
            )
        channel.reset(array_rows=array_rows, release_buffers=release_buffers)
        return channel

    def _return_channel(self, channel: native.Channel) -> None:
        if self._spare_channel is None and not self.closed:
            self._spare_channel = channel
        else:
            channel.free()

    def _free_spare_channel(self) -> None:
        channel, self._spare_channel = self._spare_channel, None
        if channel is not None:
            channel.free()

    def _native_handle(self) -> native.NativeHandle:
        if self._handle is None:
            raise ClosedError("the model handle is closed")
        return self._handle

    def _native_handle_or_none(self) -> native.NativeHandle | None:
        return self._handle

    async def _call(self, fn: Callable[..., T], *args: Any, wait: bool = True, **kwargs: Any) -> T:
        """Run a blocking native call in a worker thread, in the handle's FIFO order."""
        await self._acquire(wait)
        try:
            handle = self._native_handle()
            return await anyio.to_thread.run_sync(functools.partial(fn, handle, *args, **kwargs))
        finally:
            self._release()

    # ---- information -----------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The runtime library this handle runs on (path, version, ABI).

        >>> llm.runtime.abi, llm.runtime.version  # doctest: +SKIP
        """
        return self._runtime

    @property
    def params(self) -> ModelParams:
        """The init parameters in force (runtime defaults plus the ones given to load).

        >>> llm.params.max_context_len  # doctest: +SKIP
        """
        return self._native_handle().params

    @property
    def n_batch(self) -> int:
        """Inputs per run (``ExtendParams.n_batch``).

        >>> llm.n_batch  # doctest: +SKIP
        """
        return self._native_handle().n_batch

    def metrics(self) -> metrics.MetricsSnapshot:
        """This handle's counters and timings (see :mod:`rkllm_sdk.metrics`).

        >>> llm.metrics().generate_tokens_per_s  # doctest: +SKIP
        """
        return self._metrics.snapshot()

    def timings(self) -> Generation | None:
        """The last finished run: the runtime's perf plus the SDK's time to first token,
        duration and decode rate (``Generation.tokens_per_s``). None before any run.

        The supported replacement for the undocumented ``rkllm_get_timings`` /
        ``rkllm_print_timings``.

        >>> llm.timings().ttft_ms  # doctest: +SKIP
        """
        return self._last

    def is_running(self) -> bool:
        """Whether the runtime reports a task in progress (a quick C call).

        >>> llm.is_running()  # doctest: +SKIP
        """
        return native.is_running(self._native_handle())

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._state_name()
        return f"<AsyncLLM {Path(self.model_path).name} abi={self._runtime.abi} {state}>"

    # ---- runs ------------------------------------------------------------------------------

    def _options(
        self,
        *,
        mode: InferMode = InferMode.GENERATE,
        max_new_tokens: int | None,
        sampling: Sampling | None,
        keep_history: bool,
        lora: str | None,
        prompt_cache: str | os.PathLike[str] | None,
    ) -> tuple[InferOptions, int | None]:
        options = InferOptions(
            mode=mode,
            lora=lora,
            prompt_cache=PromptCache(path=os.fspath(prompt_cache))
            if prompt_cache is not None
            else None,
            sampling=sampling,
            keep_history=keep_history,
            max_new_tokens=max_new_tokens,
        )
        init_limit = self._native_handle().params.max_new_tokens
        limit = max_new_tokens or (init_limit if init_limit and init_limit > 0 else None)
        return options, limit

    def stream(
        self,
        prompt: PromptLike,
        *,
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        keep_history: bool = False,
        lora: str | None = None,
        prompt_cache: str | os.PathLike[str] | None = None,
        stop: Sequence[str] = (),
        role: str = "user",
        thinking: bool = False,
        wait: bool = True,
    ) -> TokenStream:
        """Stream a reply: ``async with llm.stream(...) as s: async for chunk in s``.

        Args:
            prompt: text, an input model (``TokenInput``, ``EmbedInput``,
                ``MultimodalInput``, ...), or one input per batch.
            max_new_tokens: per-run limit (runtime 1.3; on 1.2 set it in ``ModelParams``).
            sampling: per-run sampling (runtime 1.3).
            keep_history: keep this turn in the KV cache for the next run.
            lora: name of a loaded LoRA adapter.
            prompt_cache: save this run's prefill to this path.
            stop: strings that end the reply (trimmed from the text).
            role: ``"user"`` or ``"tool"`` for text prompts.
            thinking: ask a thinking model to think (``<think>...</think>``).
            wait: False raises :class:`BusyError` instead of queueing.

        >>> async with llm.stream("Hello", max_new_tokens=32) as s:  # doctest: +SKIP
        ...     async for chunk in s:
        ...         print(chunk.text, end="")
        """
        try:
            options, limit = self._options(
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                keep_history=keep_history,
                lora=lora,
                prompt_cache=prompt_cache,
            )
            inputs = _coerce(prompt, role, thinking)
        except RKLLMError as exc:  # a refused call counts as a failed one
            self._metrics.refused(exc)
            raise
        return TokenStream(self, inputs, options, stop=stop, wait=wait, limit=limit)

    def chat(
        self,
        *,
        system: str | None = None,
        tools: Sequence[ToolLike] = (),
        thinking: bool = False,
        template: tuple[str, str, str] | None = None,
    ) -> ChatSession:
        """A :class:`ChatSession` on this handle (history in the KV cache, tool calls parsed).

        >>> chat = llm.chat(system="You control a home.", tools=[set_light])  # doctest: +SKIP
        >>> reply = await chat.send("Turn on the kitchen light")  # doctest: +SKIP
        """
        return ChatSession(self, system=system, tools=tools, thinking=thinking, template=template)

    async def generate(self, prompt: PromptLike, **options: Any) -> Generation:
        """Run to the end and return the :class:`Generation` (options as :meth:`stream`).

        >>> gen = await llm.generate("Hello")  # doctest: +SKIP
        >>> gen.text, gen.finish_reason, gen.perf.generate_tokens_per_s  # doctest: +SKIP
        """
        async with self.stream(prompt, **options) as s:
            return await s.final()

    async def generate_batch(self, prompts: Sequence[Input], **options: Any) -> list[Generation]:
        """One batched run (``n_batch`` inputs); one :class:`Generation` per input.

        >>> inputs = [rk.Prompt(text="a"), rk.Prompt(text="b")]  # doctest: +SKIP
        >>> gens = await llm.generate_batch(inputs)  # doctest: +SKIP
        """
        async with self.stream(list(prompts), **options) as s:
            await s.final()
            return s.results()

    async def _array(
        self, prompt: PromptLike, mode: InferMode, all_tokens: bool, keep_history: bool
    ) -> FloatArray:
        options, _ = self._options(
            mode=mode,
            max_new_tokens=None,
            sampling=None,
            keep_history=keep_history,
            lora=None,
            prompt_cache=None,
        )
        stream = TokenStream(
            self, _coerce(prompt, "user", False), options, array_rows=2 if all_tokens else 1
        )
        async with stream as s:
            await s.final()
            return s._arrays(0)

    async def logits(
        self, prompt: PromptLike, *, all_tokens: bool = False, keep_history: bool = False
    ) -> FloatArray:
        """Logits of the input's last token (``[1, vocab]``), or of every token (``[n, vocab]``).

        >>> (await llm.logits("The capital of France is")).argmax()  # doctest: +SKIP
        """
        return await self._array(prompt, InferMode.GET_LOGITS, all_tokens, keep_history)

    async def hidden_states(
        self, prompt: PromptLike, *, all_tokens: bool = True, keep_history: bool = False
    ) -> FloatArray:
        """Last-layer hidden states of every input token (``[n, hidden]``), or the last one.

        >>> (await llm.hidden_states("Hello")).shape  # doctest: +SKIP
        """
        return await self._array(prompt, InferMode.GET_LAST_HIDDEN_LAYER, all_tokens, keep_history)

    async def abort(self) -> None:
        """Abort the run in progress, if any (its stream ends with finish_reason "abort").

        >>> await llm.abort()  # doctest: +SKIP
        """
        self._native_handle()
        if self._current is not None:
            self._current.abort()

    # ---- KV cache, adapters, templates -----------------------------------------------------

    async def clear_kv_cache(
        self, *, keep_system_prompt: bool = False, ranges: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Clear the KV cache (keeping the system prompt if asked), or ranges per batch.

        >>> await llm.clear_kv_cache(keep_system_prompt=True)  # doctest: +SKIP
        """
        await self._call(
            native.clear_kv_cache, keep_system_prompt=keep_system_prompt, ranges=ranges
        )

    async def kv_cache_size(self) -> list[int]:
        """Tokens in the KV cache, one count per batch.

        >>> await llm.kv_cache_size()  # doctest: +SKIP
        """
        return await self._call(native.kv_cache_size)

    async def load_lora(self, adapter: LoraAdapter) -> None:
        """Load (or replace) a LoRA adapter; runs select it with ``lora=name``.

        >>> await llm.load_lora(rk.LoraAdapter(path="style.rkllm", name="style"))  # doctest: +SKIP
        """
        await self._call(native.load_lora, adapter)

    async def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Load a prompt cache saved by a run with ``prompt_cache=path``.

        >>> await llm.load_prompt_cache("prefix.cache")  # doctest: +SKIP
        """
        await self._call(native.load_prompt_cache, path)

    async def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache.

        >>> await llm.release_prompt_cache()  # doctest: +SKIP
        """
        await self._call(native.release_prompt_cache)

    async def set_chat_template(self, system_prompt: str, prefix: str, postfix: str) -> None:
        """Replace the model's chat template.

        >>> await llm.set_chat_template("", "<|user|>", "<|assistant|>")  # doctest: +SKIP
        """
        await self._call(native.set_chat_template, system_prompt, prefix, postfix)

    async def set_function_tools(
        self,
        system_prompt: str,
        tools: str | Sequence[Mapping[str, Any]],
        tool_response_str: str = "tool_response",
    ) -> None:
        """Give the model OpenAI-format tools (function calling).

        >>> tools = [rk.tool_schema(set_light)]  # doctest: +SKIP
        >>> await llm.set_function_tools("You control a home.", tools)  # doctest: +SKIP
        """
        await self._call(native.set_function_tools, system_prompt, tools, tool_response_str)

    async def set_cross_attention(self, cross: CrossAttention | None) -> None:
        """Set (or clear with None) the cross-attention encoder arrays.

        >>> cross = rk.CrossAttention(k_cache=k, v_cache=v, mask=m, positions=p)  # doctest: +SKIP
        >>> await llm.set_cross_attention(cross)  # doctest: +SKIP
        """
        if cross is not None and not isinstance(cross, CrossAttention):
            raise InvalidParamsError("set_cross_attention takes a CrossAttention or None")
        await self._call(native.set_cross_attention, cross)
