"""TokenStream: one run's chunks as an async iterator, and what it produced.

A stream is a context manager over one run on one handle::

    async with llm.stream("Hello") as s:
        async for chunk in s:
            print(chunk.text, end="")
    generation = s.result()

Entering queues for the handle (FIFO) and starts the run on a worker thread; the runtime's
callbacks go to the C bridge, never to Python. Iterating drains everything the bridge holds
at once (the pure :mod:`~rkllm_sdk._decoder` turns it into chunks) and waits on its file
descriptor when it is empty. Leaving early (break, an exception, cancellation, a timeout, or
:meth:`TokenStream.aclose` from another task) aborts the run on the NPU and returns only
once ``rkllm_run`` has returned, so the runtime is done with every buffer; then the handle
serves the next caller.

Text is never split inside a UTF-8 character, whatever the runtime puts in its
``RKLLM_RUN_WAITING`` callbacks.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Unpack

import anyio
import anyio.lowlevel
import numpy as np

from . import _native as native
from ._decoder import Decoder
from ._handle import HandleCore, finish_even_if_cancelled
from ._wakeups import Wakeups
from .arrays import FloatArray
from .errors import AbortedError, ClosedError, GenerationError, InvalidParamsError, RKLLMError
from .models import (
    CallState,
    InferMode,
    InferOptions,
    Input,
    PromptCache,
    PromptLike,
    as_inputs,
)
from .options import RunOptions
from .results import Chunk, Generation

__all__ = ["PromptLike", "TokenStream", "collect_arrays", "next_chunks", "open_stream"]

#: The consumer lets other tasks run at least every this many chunks, even when the bridge
#: always has more ready (an ``async for`` that never awaits would starve the loop).
CHECKPOINT_EVERY = 256

#: How long closing a stream waits for the runtime to return after an abort before giving
#: up on it (the channel is then leaked rather than freed under the runtime's feet).
ABORT_GRACE_S = 30.0
#: Once a stream stops its run (an abort, a stop string, closing), rkllm_abort is repeated
#: this often until the run has ended: one that reached the runtime before the run had
#: started was lost (docs/assumptions.md, S10).
ABORT_RETRY_S = 0.02


def open_stream(
    core: HandleCore,
    prompt: PromptLike,
    *,
    mode: InferMode = InferMode.GENERATE,
    array_rows: int = 0,
    setup: Callable[[], Awaitable[None]] | None = None,
    **options: Unpack[RunOptions],
) -> TokenStream:
    """A stream for one run on ``core`` (what ``AsyncLLM.stream`` and chat sessions build).

    Refused arguments raise here, before the stream exists, and count as failed calls.

    Raises:
        TypeError: an option that :class:`RunOptions` does not have (a misspelling), as
            Python does for an unknown keyword argument.
    """
    unknown = sorted(options.keys() - RunOptions.__optional_keys__)
    if unknown:
        known = ", ".join(sorted(RunOptions.__optional_keys__))
        raise TypeError(f"unknown run option(s) {', '.join(unknown)}; the options are {known}")
    try:
        max_new_tokens = options.get("max_new_tokens")
        prompt_cache = options.get("prompt_cache")
        infer = InferOptions(
            mode=mode,
            lora=options.get("lora"),
            prompt_cache=PromptCache(path=prompt_cache) if prompt_cache is not None else None,
            sampling=options.get("sampling"),
            keep_history=options.get("keep_history", False),
            max_new_tokens=max_new_tokens,
        )
        init_limit = core.native_handle.params.max_new_tokens
        limit = infer.max_new_tokens or (init_limit if init_limit and init_limit > 0 else None)
        inputs = as_inputs(prompt, options.get("role", "user"), options.get("thinking", False))
    except RKLLMError as exc:
        core.recorder.refused(exc)
        raise
    return TokenStream(
        core,
        inputs,
        infer,
        stop=options.get("stop", ()),
        wait=options.get("wait", True),
        limit=limit,
        array_rows=array_rows,
        # A plain run puts the handle's own template / tools back if a chat session's are set.
        setup=setup if setup is not None else core.use_own_configuration,
    )


async def collect_arrays(
    core: HandleCore, prompt: PromptLike, mode: InferMode, *, all_tokens: bool, keep_history: bool
) -> FloatArray:
    """One run in a logits / hidden-state mode: the rows of its input (``[rows, width]``),
    or of every input of a batched run, stacked (``[inputs, rows, width]``).

    Raises:
        AbortedError: the run was aborted before its arrays were complete.
        InvalidParamsError: a batch whose inputs gave different row counts (all tokens of
            inputs of different lengths): they cannot stack.
    """
    stream = open_stream(
        core, prompt, mode=mode, array_rows=2 if all_tokens else 1, keep_history=keep_history
    )
    async with stream as s:
        await s.final()
        assert s._decoder is not None
        if len(s._decoder.batches) == 1:
            return s._arrays(0)
        rows = [s._arrays(b) for b in range(len(s._decoder.batches))]
    if len({r.shape for r in rows}) != 1:
        shapes = ", ".join("x".join(map(str, r.shape)) for r in rows)
        raise InvalidParamsError(
            f"the batch's inputs gave rows of different shapes ({shapes}); with all_tokens, "
            "give inputs of equal length, or one call per input"
        )
    return np.stack(rows)


async def next_chunks(stream: TokenStream) -> list[Chunk]:
    """Every chunk ready now (waiting for at least one); [] at the end. For the sync twin:
    one hop to the loop's thread fetches them all."""
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return []
    ready = [first]
    assert stream._decoder is not None
    chunks = stream._decoder.chunks
    while chunks:
        ready.append(chunks.popleft())
    return ready


class TokenStream:
    """An async iterator of :class:`Chunk` over one run; use it as ``async with``.

    Created by :meth:`AsyncLLM.stream` and :meth:`ChatSession.stream`; see the module
    docstring for the lifecycle.
    """

    def __init__(
        self,
        core: HandleCore,
        inputs: Input | Sequence[Input],
        options: InferOptions,
        *,
        stop: str | Sequence[str] = (),
        wait: bool = True,
        limit: int | None = None,
        array_rows: int = 0,
        setup: Callable[[], Awaitable[None]] | None = None,
        measure_latency: bool = False,
    ) -> None:
        """Internal: use ``llm.stream(...)``."""
        self._core = core
        self._inputs = inputs
        self._options = options
        self._stop = stop
        self._wait = wait
        self._limit = limit
        self._array_rows = array_rows
        self._setup = setup
        self._measure = measure_latency
        self._state = "new"
        self._abort_requested = False
        self._decoder: Decoder | None = None
        self._channel: native.Channel | None = None
        self._prepared: native.RunKeepalive | None = None
        self._worker_error: BaseException | None = None
        self._run_error: GenerationError | None = None  # rkllm_run's failure, with its causes
        self._result: list[Generation] | None = None
        self._error: RKLLMError | None = None
        self._pump_lock = anyio.Lock(fast_acquire=True)  # no extra loop pass per token
        self._wakeups: Wakeups | None = None
        self._closed: anyio.Event | None = None  # set once closing has finished
        #: Benchmarks only: callback -> consumer delay of each chunk (with measure_latency).
        self._latencies_ns: list[int] = []
        self._since_checkpoint = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> TokenStream:
        if self._state != "new":
            raise RuntimeError("a TokenStream can be entered only once")
        self._state = "starting"
        recorder = self._core.recorder
        try:
            await self._core.acquire(self._wait, self)
        except RKLLMError as exc:
            recorder.refused(exc)
            raise
        try:
            if self._setup is not None:
                await self._setup()
            handle = self._core.native_handle
            if handle.embed_width is None and native.needs_embed_width(self._inputs):
                # Learned once per handle by a one-token run (it empties the KV cache, so
                # only when this run would not keep what the cache holds).
                await self._core.call_held(
                    native.embed_width, cache_disposable=not self._options.keep_history
                )
            self._prepared = native.prepare_run(handle, self._inputs, self._options)
            if self._stop and handle.n_batch > 1:
                raise InvalidParamsError("stop strings need a single-batch handle")
            release = handle.runtime.abi == "1.3" and self._array_rows > 0
            self._channel = self._core.take_channel(self._array_rows, release)
            self._decoder = Decoder(
                handle.n_batch,
                stop=self._stop,
                limit=self._limit,
                on_stop=self._core.abort_native,
                measure=self._measure,
            )
            thread = threading.Thread(
                target=self._worker, args=(handle,), name="rkllm-run", daemon=True
            )
            self._state = "running"
            thread.start()
            recorder.run_started()
            if self._abort_requested:  # abort() came while the run was being set up
                self.abort()
        except BaseException as exc:
            self._state = "closed"
            self._release_channel()
            self._core.release()
            if isinstance(exc, RKLLMError):
                recorder.refused(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _worker(self, handle: native.NativeHandle) -> None:
        # Runs rkllm_run on its own thread; the callbacks never come back into Python. The
        # channel and inputs are held locally: the stream may drop its references meanwhile.
        channel, prepared = self._channel, self._prepared
        assert channel is not None and prepared is not None
        rc = 0
        try:
            native.run_prepared(handle, prepared, channel)
        except GenerationError as exc:
            rc = exc.code if exc.code is not None else -1
            self._run_error = exc
        except BaseException as exc:  # surfaced to the consumer, never lost on this thread
            self._worker_error = exc
            rc = -1
        finally:
            channel.set_done(rc)

    async def aclose(self) -> None:
        """Stop the run if it is still going and wait until the runtime has let go of it.

        Idempotent, and safe from any task. Never interrupted by cancellation.

        >>> await s.aclose()  # doctest: +SKIP
        """
        if self._state in ("new", "starting"):
            self._state = "closed"
            return
        if self._state == "closing":  # another task is closing it: wait for that to end
            assert self._closed is not None
            with anyio.CancelScope(shield=True):
                await self._closed.wait()
            return
        if self._state in ("finished", "closed"):
            return
        self._state = "closing"
        self._closed = anyio.Event()
        # Finishes even if this call is cancelled: the handle is free afterwards, whatever.
        await finish_even_if_cancelled(self._close_running, self._closed)

    async def _close_running(self) -> None:
        channel, decoder = self._channel, self._decoder
        assert channel is not None and decoder is not None
        with anyio.CancelScope(shield=True):
            decoder.request_stop("abort")
            self._core.abort_native()
            channel.close()
            async with self._pump_lock:  # a pump waiting for events wakes (close signals)
                if self._channel is None:  # a concurrent pump saw the run end meanwhile
                    return
                with anyio.move_on_after(ABORT_GRACE_S) as scope:
                    while not channel.drain().run_done:
                        with anyio.move_on_after(ABORT_RETRY_S):
                            await self._wait_events(channel)
                        # An abort that reached the runtime before the run had started was a
                        # no-op (rkllm_abort on an idle handle): repeat it until the run ends.
                        self._core.abort_native()
            if scope.cancelled_caught:
                warnings.warn(
                    f"the runtime did not return within {ABORT_GRACE_S} s of an abort; its "
                    "buffers are left allocated so it cannot touch freed memory",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._channel = None
            self._release_channel()
            self._core.release()
            self._record(error="AbortedError")
        self._state = "closed"

    def _record(self, *, error: str | None) -> None:
        decoder = self._decoder
        assert decoder is not None
        self._core.recorder.run_finished(
            seconds=time.perf_counter() - decoder.t0,
            ttft_ms=decoder.ttft_ms,
            perf=self._result[0].perf if self._result else None,
            error=error,
        )

    def _release_channel(self) -> None:
        # Only once rkllm_run has returned (or the run never started): back to the handle's pool.
        if self._wakeups is not None:
            self._wakeups.close()
            self._wakeups = None
        if self._channel is not None:
            self._core.return_channel(self._channel)
            self._channel = None
        self._prepared = None

    def abort(self) -> None:
        """Ask the runtime to stop; iteration then ends with finish_reason ``"abort"``.

        Unlike :meth:`aclose` it does not wait; the remaining chunks can still be read.

        >>> s.abort()  # doctest: +SKIP
        """
        if self._state == "starting":  # queued or setting up: applied once the run starts
            self._abort_requested = True
        elif self._state == "running" and self._decoder is not None:
            self._decoder.request_stop("abort")
            self._core.abort_native()
            if self._channel is not None:
                # A pump waiting for events wakes and, until the run ends, repeats the abort
                # (this one is lost if the runtime has not started the run yet).
                self._channel.wake()

    def pause(self) -> None:
        """Ask the runtime to pause after the next token (the callback returns 1).

        The run ends (FINISH) with the KV cache kept; the next run continues from it.

        >>> s.pause()  # doctest: +SKIP
        """
        if self._channel is not None and self._decoder is not None and self._state == "running":
            self._decoder.request_stop("pause")
            self._channel.pause()

    # ---- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> Chunk:
        decoder = self._decoder
        while decoder is None or not decoder.chunks:
            if self._state == "running":
                await self._pump()
                decoder = self._decoder
                continue
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._state in ("new", "starting"):
                raise RuntimeError("enter the stream first: `async with llm.stream(...) as s`")
            raise StopAsyncIteration
        if decoder.stamps:
            self._latencies_ns.append(time.monotonic_ns() - decoder.stamps.popleft())
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await anyio.lowlevel.checkpoint()
        return decoder.chunks.popleft()

    async def _pump(self) -> None:
        # Drains until it has chunks (or the run ended), waiting on the fd when empty.
        async with self._pump_lock:
            while True:
                channel, decoder = self._channel, self._decoder
                if self._state != "running" or channel is None or decoder is None:
                    return
                drained = channel.drain()
                if drained.states:
                    decoder.process(drained)
                stopping = decoder.abort_reason in ("abort", "stop") and not drained.run_done
                if stopping:
                    # An abort that reached the runtime before it had started the run was a
                    # no-op (rkllm_abort on an idle handle), and the run may make no event
                    # for long (a long prefill) or ever (a hang): repeat it until the run ends.
                    self._core.abort_native()
                # run_done is read under the same lock as the events: once it is set, this
                # drain holds everything the run produced (a refused run makes no callback).
                if drained.run_done:
                    await self._finish(drained)
                    return
                if drained.states:
                    return
                if stopping:
                    with anyio.move_on_after(ABORT_RETRY_S):
                        await self._wait_events(channel)
                else:
                    await self._wait_events(channel)

    async def _wait_events(self, channel: native.Channel) -> None:
        # Under the pump lock: the only task waiting on the channel's fd.
        if self._wakeups is None:
            self._wakeups = Wakeups(channel)
        await self._wakeups.wait()

    async def _finish(self, drained: native.Drained) -> None:
        decoder = self._decoder
        assert decoder is not None
        failed = (
            decoder.terminal_state == CallState.ERROR
            or drained.run_rc != 0
            or self._worker_error is not None
        )
        results = await decoder.finish(drained.perf, failed=failed)
        self._result = results
        self._core.last = results[0]
        self._state = "finished"
        self._release_channel()
        self._core.release()
        incomplete = self._array_rows > 0 and results[0].finish_reason in ("abort", "pause")
        if failed:
            self._record(error="GenerationError")
            cause = self._worker_error or self._core.take_callback_error()
            detail = (
                str(self._run_error)
                if self._run_error is not None
                else f"rkllm_run returned {drained.run_rc}"
            )
            error = GenerationError(
                f"the run failed ({detail}); "
                f"{len(results[0].text)} characters were generated before the error",
                code=drained.run_rc or -1,
                generation=results[0],
            )
            if cause is not None:
                error.__cause__ = cause
            self._error = error
        elif incomplete:
            # Logits / hidden states of an aborted run are partial: there is no result (and
            # the rows delivered so far are let go at once: they hold the bridge's memory).
            for b in decoder.batches:
                b.arrays.clear()
            self._record(error="AbortedError")
            self._error = AbortedError("the run was aborted before it produced its arrays")
        else:
            self._record(error=None)

    # ---- results ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the run has ended and every chunk has been produced.

        >>> s.finished  # doctest: +SKIP
        """
        return self._state == "finished"

    def result(self, batch: int = 0) -> Generation:
        """The finished run's :class:`Generation` (of ``batch`` for batched runs).

        Raises:
            AbortedError: the stream was closed before the run finished (no result).
            ClosedError: the handle was closed while the run was going on.
            RuntimeError: the run has not finished yet: iterate it to the end first.

        >>> s.result().text  # doctest: +SKIP
        """
        if self._result is None:
            if self._state in ("closing", "closed") and self._decoder is not None:
                if self._core.closed:
                    raise ClosedError("the model handle was closed during the run")
                raise AbortedError("the stream was closed before the run finished")
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result[batch]

    def results(self) -> list[Generation]:
        """Every batch's :class:`Generation`.

        >>> [g.text for g in s.results()]  # doctest: +SKIP
        """
        self.result()
        assert self._result is not None
        return list(self._result)

    async def final(self) -> Generation:
        """Consume the rest of the stream and return its :class:`Generation`.

        >>> gen = await s.final()  # doctest: +SKIP
        """
        async for _ in self:
            pass
        return self.result()

    def _arrays(self, batch: int) -> FloatArray:
        assert self._decoder is not None
        return self._decoder.arrays(batch)
