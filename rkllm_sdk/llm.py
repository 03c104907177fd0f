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

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _native as native
from ._ffi.loader import load_runtime
from ._handle import HandleCore, HandleInfo, finish_even_if_cancelled, open_handles
from .arrays import FloatArray, IntArray
from .chat import ChatSession
from .errors import InvalidParamsError
from .metrics import MetricsSnapshot
from .models import CrossAttention, InferMode, Input, LoraAdapter, ModelParams
from .options import RunOptions
from .results import Generation, RuntimeInfo
from .stream import PromptLike, TokenStream, collect_arrays, open_stream
from .tools import ToolLike

__all__ = ["AsyncLLM", "HandleInfo", "PromptLike", "handle_core", "open_handles"]


class AsyncLLM:
    """One loaded model on the NPU (one runtime handle). Create it with :meth:`load`."""

    def __init__(self, core: HandleCore) -> None:
        """Internal: use ``await AsyncLLM.load(...)``."""
        self._core = core

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

        Cancelled while ``rkllm_init`` runs, it waits for the init to return and destroys
        the handle it made before the cancellation propagates: nothing leaks.

        Raises:
            RuntimeNotFoundError: no runtime library found.
            RuntimeVersionError: the runtime's version or ABI is not supported.
            ModelLoadError: ``rkllm_init`` failed (a bad model file, a fault).
            InvalidParamsError: parameters the runtime or this ABI cannot take.

        >>> llm = await AsyncLLM.load("model.json", runtime="fake")  # doctest: +SKIP
        """
        path = os.fspath(model_path)
        rt = await anyio.to_thread.run_sync(functools.partial(load_runtime, runtime, abi=abi))
        init = functools.partial(
            native.init,
            rt,
            path,
            params or ModelParams(),
            tokenizer=tokenizer,
            embedder=embedder,
        )
        # A real init takes seconds: a cancellation meanwhile must not lose the handle. The
        # init runs to its end whatever cancels this call; a handle nobody waits for any
        # more is destroyed.
        made: list[native.NativeHandle] = []
        abandoned = False

        async def init_job() -> None:
            handle = await anyio.to_thread.run_sync(init)
            if abandoned:
                await anyio.to_thread.run_sync(native.destroy, handle)
            else:
                made.append(handle)

        try:
            await finish_even_if_cancelled(init_job, anyio.Event())
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            abandoned = True
            with anyio.CancelScope(shield=True):
                for handle in made:
                    await anyio.to_thread.run_sync(native.destroy, handle)
            raise
        return cls(HandleCore(made[0], path))

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
        await self._core.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun.

        >>> llm.closed  # doctest: +SKIP
        """
        return self._core.closed

    # ---- information -----------------------------------------------------------------------

    @property
    def model_path(self) -> str:
        """The model file this handle was loaded from.

        >>> llm.model_path  # doctest: +SKIP
        """
        return self._core.model_path

    @property
    def runtime(self) -> RuntimeInfo:
        """The runtime library this handle runs on (path, version, ABI, fake or not).

        >>> llm.runtime.abi, llm.runtime.version  # doctest: +SKIP
        """
        return self._core.runtime

    @property
    def params(self) -> ModelParams:
        """The init parameters in force (runtime defaults plus the ones given to load).

        >>> llm.params.max_context_len  # doctest: +SKIP
        """
        return self._core.native_handle.params

    @property
    def n_batch(self) -> int:
        """Inputs per run (``ExtendParams.n_batch``).

        >>> llm.n_batch  # doctest: +SKIP
        """
        return self._core.native_handle.n_batch

    def metrics(self) -> MetricsSnapshot:
        """This handle's counters and timings (see :mod:`rkllm_sdk.metrics`).

        >>> llm.metrics().generate_tokens_per_s  # doctest: +SKIP
        """
        return self._core.recorder.snapshot()

    def timings(self) -> Generation | None:
        """The last finished run: the runtime's perf plus the SDK's time to first token,
        duration and decode rate (``Generation.tokens_per_s``). None before any run.

        The supported replacement for the undocumented ``rkllm_get_timings`` /
        ``rkllm_print_timings``.

        >>> llm.timings().ttft_ms  # doctest: +SKIP
        """
        return self._core.last

    def is_running(self) -> bool:
        """Whether the runtime reports a task in progress (a quick C call).

        >>> llm.is_running()  # doctest: +SKIP
        """
        return native.is_running(self._core.native_handle)

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._core.state_name()
        return f"<AsyncLLM {Path(self.model_path).name} abi={self.runtime.abi} {state}>"

    # ---- runs ------------------------------------------------------------------------------

    def stream(self, prompt: PromptLike, **options: Unpack[RunOptions]) -> TokenStream:
        """Stream a reply: ``async with llm.stream(...) as s: async for chunk in s``.

        Args:
            prompt: text, an input model (``TokenInput``, ``EmbedInput``,
                ``MultimodalInput``, ...), or one input per batch.
            **options: see :class:`RunOptions` (``max_new_tokens``, ``sampling``,
                ``keep_history``, ``lora``, ``prompt_cache``, ``stop``, ``role``,
                ``thinking``, ``wait``).

        >>> async with llm.stream("Hello", max_new_tokens=32) as s:  # doctest: +SKIP
        ...     async for chunk in s:
        ...         print(chunk.text, end="")
        """
        return open_stream(self._core, prompt, **options)

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
        return ChatSession(
            self._core, system=system, tools=tools, thinking=thinking, template=template
        )

    async def generate(self, prompt: PromptLike, **options: Unpack[RunOptions]) -> Generation:
        """Run to the end and return the :class:`Generation` (options as :meth:`stream`).

        A run stopped by :meth:`abort` returns what it produced, with ``finish_reason``
        ``"abort"``.

        >>> gen = await llm.generate("Hello")  # doctest: +SKIP
        >>> gen.text, gen.finish_reason, gen.perf.generate_tokens_per_s  # doctest: +SKIP
        """
        async with self.stream(prompt, **options) as s:
            return await s.final()

    async def generate_batch(
        self, prompts: Sequence[Input], **options: Unpack[RunOptions]
    ) -> list[Generation]:
        """One batched run (``n_batch`` inputs); one :class:`Generation` per input.

        >>> inputs = [rk.Prompt(text="a"), rk.Prompt(text="b")]  # doctest: +SKIP
        >>> gens = await llm.generate_batch(inputs)  # doctest: +SKIP
        """
        async with self.stream(list(prompts), **options) as s:
            await s.final()
            return s.results()

    async def logits(
        self, prompt: PromptLike, *, all_tokens: bool = False, keep_history: bool = False
    ) -> FloatArray:
        """Logits of the input's last token (``[1, vocab]``), or of every token (``[n, vocab]``).

        Raises:
            AbortedError: :meth:`abort` stopped the run before the logits were complete.

        >>> (await llm.logits("The capital of France is")).argmax()  # doctest: +SKIP
        """
        return await collect_arrays(
            self._core,
            prompt,
            InferMode.GET_LOGITS,
            all_tokens=all_tokens,
            keep_history=keep_history,
        )

    async def hidden_states(
        self, prompt: PromptLike, *, all_tokens: bool = True, keep_history: bool = False
    ) -> FloatArray:
        """Last-layer hidden states of every input token (``[n, hidden]``), or the last one.

        Raises:
            AbortedError: :meth:`abort` stopped the run before the states were complete.

        >>> (await llm.hidden_states("Hello")).shape  # doctest: +SKIP
        """
        return await collect_arrays(
            self._core,
            prompt,
            InferMode.GET_LAST_HIDDEN_LAYER,
            all_tokens=all_tokens,
            keep_history=keep_history,
        )

    def abort(self) -> None:
        """Abort the run in progress, if any, without waiting (as :meth:`TokenStream.abort`).

        A stream or ``generate`` then ends with finish_reason ``"abort"``; ``logits`` and
        ``hidden_states`` raise :class:`AbortedError`.

        >>> llm.abort()  # doctest: +SKIP
        """
        self._core.abort()

    # ---- KV cache, adapters, templates -----------------------------------------------------

    async def clear_kv_cache(
        self, *, keep_system_prompt: bool = False, ranges: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Clear the KV cache (keeping the system prompt if asked), or ranges per batch.

        >>> await llm.clear_kv_cache(keep_system_prompt=True)  # doctest: +SKIP
        """
        await self._core.call(
            native.clear_kv_cache, keep_system_prompt=keep_system_prompt, ranges=ranges
        )
        self._core.history_owner = None  # no chat session's conversation is in it any more

    async def kv_cache_size(self) -> list[int]:
        """Tokens in the KV cache, one count per batch.

        >>> await llm.kv_cache_size()  # doctest: +SKIP
        """
        return await self._core.call(native.kv_cache_size)

    async def load_lora(self, adapter: LoraAdapter) -> None:
        """Load (or replace) a LoRA adapter; runs select it with ``lora=name``.

        >>> await llm.load_lora(rk.LoraAdapter(path="style.rkllm", name="style"))  # doctest: +SKIP
        """
        await self._core.call(native.load_lora, adapter)

    async def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Load a prompt cache saved by a run with ``prompt_cache=path``.

        >>> await llm.load_prompt_cache("prefix.cache")  # doctest: +SKIP
        """
        await self._core.call(native.load_prompt_cache, path)

    async def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache.

        >>> await llm.release_prompt_cache()  # doctest: +SKIP
        """
        await self._core.call(native.release_prompt_cache)

    async def set_chat_template(self, system_prompt: str, prefix: str, postfix: str) -> None:
        """Replace the model's chat template.

        >>> await llm.set_chat_template("", "<|user|>", "<|assistant|>")  # doctest: +SKIP
        """
        await self._core.call(native.set_chat_template, system_prompt, prefix, postfix)
        self._core.set_own(template=(system_prompt, prefix, postfix))

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
        await self._core.call(native.set_function_tools, system_prompt, tools, tool_response_str)
        self._core.set_own(tools=(system_prompt, tools, tool_response_str))

    async def set_cross_attention(self, cross: CrossAttention | None) -> None:
        """Set (or clear with None) the cross-attention encoder arrays.

        >>> cross = rk.CrossAttention(k_cache=k, v_cache=v, mask=m, positions=p)  # doctest: +SKIP
        >>> await llm.set_cross_attention(cross)  # doctest: +SKIP
        """
        if cross is not None and not isinstance(cross, CrossAttention):
            raise InvalidParamsError("set_cross_attention takes a CrossAttention or None")
        await self._core.call(native.set_cross_attention, cross)


def handle_core(llm: AsyncLLM) -> HandleCore:
    """Internal (``lowlevel`` builds its hazmat accessors on it): the core behind ``llm``."""
    return llm._core
