"""TokenStream: one run's tokens as an async iterator, and what it produced.

A stream is a context manager over one run on one handle::

    async with llm.stream("Hello") as s:
        async for chunk in s:
            print(chunk.text, end="")
    generation = s.result()

Entering queues for the handle (FIFO) and starts the run on a worker thread; the runtime's
callbacks go to the C bridge, never to Python. Iterating drains everything the bridge holds
at once and waits on its file descriptor when it is empty. Leaving early (break, an
exception, cancellation, a timeout, or :meth:`TokenStream.aclose` from another task) aborts
the run on the NPU and returns only once ``rkllm_run`` has returned, so the runtime is done
with every buffer; then the handle serves the next caller.

Text is never split inside a UTF-8 character: bytes the runtime delivers with
``RKLLM_RUN_WAITING`` are held until the character is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import threading
import time
import warnings
from codecs import utf_8_decode as codecs_utf_8_decode
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.lowlevel
import attrs
import numpy as np

from . import _native as native
from .arrays import FloatArray
from .errors import GenerationError, InvalidParamsError, RKLLMError
from .models import CallState, InferOptions, Input, PerfStats
from .tools import ToolCall, parse_tool_calls

if TYPE_CHECKING:
    from .llm import AsyncLLM

__all__ = ["Chunk", "Generation", "TokenStream"]

_utf8_decode = codecs_utf_8_decode
_TERMINAL = int(CallState.FINISH)  # FINISH and ERROR are the states >= this

#: Events the bridge may hold before the runtime thread waits for the consumer. Small enough
#: that processing one page keeps the event loop responsive (a few ms of Python work).
MAX_PENDING = 512
#: The consumer lets other tasks run at least every this many chunks, even when the bridge
#: always has more ready (an ``async for`` that never awaits would starve the loop).
CHECKPOINT_EVERY = 256

#: How long closing a stream waits for the runtime to return after an abort before giving
#: up on it (the channel is then leaked rather than freed under the runtime's feet).
ABORT_GRACE_S = 30.0
#: While closing, rkllm_abort is repeated this often until the run has ended.
ABORT_RETRY_S = 0.02


class Chunk(NamedTuple):
    """One piece of streamed text, in order.

    A NamedTuple rather than an attrs class: one is built per token on the hot path, and a
    tuple is several times cheaper to create while being just as immutable and typed.

    Attributes:
        seq: position of this chunk in the stream (0, 1, 2, ...).
        text: complete UTF-8 characters (may be "" on the final chunk).
        token_ids: the tokens whose bytes this text completes.
        batch: which input of a batched run it belongs to.
        finish_reason: on each batch's last chunk: "stop", "length", "abort", "pause" or
            "error".
        perf: on each batch's last chunk: the runtime's measurements.
        thinking: the text is part of the model's ``<think>...</think>`` block (tags included).
        in_tool_call: the text is part of a ``<tool_call>...</tool_call>`` block.
        tool_calls: on the chunk that closes a tool-call block, the calls parsed from it
            (JSON repaired; checked against schemas by :class:`ChatSession`).
    """

    seq: int
    text: str
    token_ids: tuple[int, ...]
    batch: int = 0
    finish_reason: str | None = None
    perf: PerfStats | None = None
    thinking: bool = False
    in_tool_call: bool = False
    tool_calls: tuple[ToolCall, ...] = ()

    def to_openai(
        self, *, model: str = "rkllm", completion_id: str = "chatcmpl-rkllm", created: int = 0
    ) -> dict[str, Any]:
        """This chunk as an OpenAI ``chat.completion.chunk`` dict (reasoning as
        ``reasoning_content``; "abort" / "pause" end as "stop", "error" as None)."""
        text = _strip_think_tags(self.text) if self.thinking else self.text
        delta: dict[str, Any] = {}
        if self.seq == 0:
            delta["role"] = "assistant"
        if text and not self.in_tool_call:
            delta["reasoning_content" if self.thinking else "content"] = text
        if self.tool_calls:
            delta["tool_calls"] = [
                {
                    "index": i,
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": json.dumps(c.arguments, ensure_ascii=False),
                    },
                }
                for i, c in enumerate(self.tool_calls)
            ]
        reason = _OPENAI_REASONS.get(self.finish_reason) if self.finish_reason else None
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": self.batch, "delta": delta, "finish_reason": reason}],
        }

    def to_ha_delta(self) -> dict[str, Any]:
        """This chunk as a Home Assistant conversation delta (``role`` on the first,
        ``content`` or ``thinking_content``)."""
        delta: dict[str, Any] = {"role": "assistant"} if self.seq == 0 else {}
        if self.thinking:
            text = _strip_think_tags(self.text)
            if text:
                delta["thinking_content"] = text
        elif self.text and not self.in_tool_call:
            delta["content"] = self.text
        if self.tool_calls:
            delta["tool_calls"] = [
                {"id": c.id, "tool_name": c.name, "tool_args": c.arguments} for c in self.tool_calls
            ]
        return delta


@attrs.frozen(kw_only=True)
class Generation:
    """The whole result of a run (one per input of a batched run).

    Attributes:
        text: everything generated (stop strings trimmed).
        token_ids: every generated token id.
        finish_reason: "stop", "length", "abort", "pause" or "error".
        perf: the runtime's measurements (prefill / generate times and tokens, memory).
        ttft_ms: time from the start of the run to the first token, measured by the SDK.
        duration_ms: time from the start of the run to its end, measured by the SDK.
        chunks: how many text chunks were streamed.
        batch: index of the input in a batched run.
        tool_calls: the tool calls in the text, parsed (unchecked against schemas).
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    perf: PerfStats | None
    ttft_ms: float | None
    duration_ms: float
    chunks: int
    batch: int = 0
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second after the first token, measured by the SDK."""
        if self.ttft_ms is None or len(self.token_ids) < 2 or self.duration_ms <= self.ttft_ms:
            return 0.0
        return (len(self.token_ids) - 1) / (self.duration_ms - self.ttft_ms) * 1e3

    def _repr_html_(self) -> str:
        """A compact table for notebooks."""
        rows = [
            ("text", html.escape(self.text)),
            ("finish", self.finish_reason),
            ("tokens", str(len(self.token_ids))),
            ("time to first token", f"{self.ttft_ms:.1f} ms" if self.ttft_ms is not None else "-"),
            ("decode", f"{self.tokens_per_s:.1f} tok/s"),
        ]
        if self.perf is not None:
            rows += [
                (
                    "prefill (runtime)",
                    f"{self.perf.prefill_tokens} tok, {self.perf.prefill_time_ms:.1f} ms",
                ),
                ("memory (runtime)", f"{self.perf.memory_usage_mb:.1f} MB"),
            ]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"


_NO_CALLS: tuple[ToolCall, ...] = ()
_OPENAI_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "abort": "stop",
    "pause": "stop",
    "error": None,
}


def _strip_think_tags(text: str) -> str:
    return text.replace("<think>", "").replace("</think>", "")


class _Batch:
    """Accumulated state of one batch entry."""

    __slots__ = (
        "arrays",
        "chunks",
        "held",
        "ids",
        "partial",
        "pending",
        "pending_calls",
        "stopped",
        "text",
        "text_blocks",
        "thinking",
        "tool_calls",
        "tool_text",
    )

    def __init__(self) -> None:
        self.partial = b""  # bytes of a character that is not complete yet
        self.thinking = False  # inside <think>...</think>
        self.tool_text: list[str] | None = None  # the open <tool_call> block's text so far
        self.tool_calls: list[ToolCall] = []
        self.pending_calls: list[ToolCall] = []  # parsed, not yet attached to a chunk
        self.text: list[str] = []
        self.ids: list[int] = []
        # Long runs: the text is folded into blocks as it streams, so that finishing the run
        # does not join hundreds of thousands of pieces in one go on the event loop.
        self.text_blocks: list[str] = []
        self.pending: list[int] = []  # ids not yet attached to a chunk
        self.held = ""  # text held back while it could be the start of a stop string
        self.chunks = 0
        self.stopped = False
        self.arrays: list[FloatArray] = []

    def compact(self) -> None:
        """Fold the text pieces so far into one block (called every few thousand pieces)."""
        self.text_blocks.append("".join(self.text))
        self.text.clear()

    async def assemble(self) -> tuple[str, tuple[int, ...]]:
        """The whole text and ids. After a long run, in steps that let other tasks run."""
        if not self.text_blocks:
            return "".join(self.text), tuple(self.ids)
        # Each step costs milliseconds for a run of 100k+ tokens: yield between them (never
        # raising cancellation: the run is over, its result is being recorded).
        self.compact()
        blocks = self.text_blocks
        while len(blocks) > 1:
            merged = []
            for i in range(0, len(blocks), 8):
                await anyio.lowlevel.cancel_shielded_checkpoint()
                merged.append("".join(blocks[i : i + 8]))
            blocks = merged
        self.text_blocks = blocks
        await anyio.lowlevel.cancel_shielded_checkpoint()
        ids = tuple(self.ids)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return self.text_blocks[0], ids


#: Text pieces per batch after which they are folded into a block.
COMPACT_EVERY = 4096


class _Wakeups:
    """Waits for a run's channel fd, re-arming it (``ack``) as it wakes.

    On asyncio the fd stays registered with the loop for the whole run: ``anyio``'s
    ``wait_readable`` registers and unregisters it at every wait, which on a slow core costs
    tens of microseconds per token of a paced run. Elsewhere (trio) it is that call.
    """

    def __init__(self, channel: native.Channel) -> None:
        self._channel = channel
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._waiter: asyncio.Future[None] | None = None
        if self._loop is not None:
            self._loop.add_reader(channel.fd, self._ready)

    def _ready(self) -> None:
        self._channel.ack()  # level-triggered: re-arm at once, or the loop keeps calling
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if self._loop is None:
            await anyio.wait_readable(self._channel.fd)
            self._channel.ack()
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Unregister the fd (before the channel goes back to the handle's pool)."""
        if self._loop is not None:
            self._loop.remove_reader(self._channel.fd)
            self._loop = None


class TokenStream:
    """An async iterator of :class:`Chunk` over one run; use it as ``async with``.

    Created by :meth:`AsyncLLM.stream`; see the module docstring for the lifecycle.
    """

    def __init__(
        self,
        llm: AsyncLLM,
        inputs: Input | Sequence[Input],
        options: InferOptions,
        *,
        stop: Sequence[str] = (),
        wait: bool = True,
        limit: int | None = None,
        array_rows: int = 0,
        measure_latency: bool = False,
    ) -> None:
        self._llm = llm
        self._inputs = inputs
        self._options = options
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._wait = wait
        self._limit = limit
        self._array_rows = array_rows
        self._state = "new"
        self._chunks: deque[Chunk] = deque()
        self._seq = 0
        self._batches: list[_Batch] = []
        self._channel: native.Channel | None = None
        self._prepared: native.RunKeepalive | None = None
        self._abort_reason: str | None = None
        self._worker_error: BaseException | None = None
        self._result: list[Generation] | None = None
        self._error: RKLLMError | None = None
        self._pump_lock = anyio.Lock(fast_acquire=True)  # no extra loop pass per token
        self._wakeups: _Wakeups | None = None
        self._closed: anyio.Event | None = None  # set once closing has finished
        self._t0 = 0.0
        self._ttft_ms: float | None = None
        self._terminal_state: int | None = None
        # Benchmarks: the callback time of each queued chunk, and callback -> consumer delays.
        self._stamps: deque[int] | None = deque() if measure_latency else None
        self.latencies_ns: list[int] = []
        self.array_callback_ns: list[int] = []  # callback time of each logits / hidden array
        self._since_checkpoint = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> TokenStream:
        if self._state != "new":
            raise RuntimeError("a TokenStream can be entered only once")
        self._state = "starting"
        try:
            await self._llm._acquire(self._wait, self)
        except RKLLMError as exc:
            self._llm._metrics.refused(exc)
            raise
        try:
            handle = self._llm._native_handle()
            self._prepared = native.prepare_run(handle, self._inputs, self._options)
            if self._stop and handle.n_batch > 1:
                raise InvalidParamsError("stop strings need a single-batch handle")
            release = handle.runtime.abi == "1.3" and self._array_rows > 0
            self._channel = self._llm._take_channel(self._array_rows, release)
            self._batches = [_Batch() for _ in range(handle.n_batch)]
            thread = threading.Thread(
                target=self._worker, args=(handle,), name="rkllm-run", daemon=True
            )
            self._t0 = time.perf_counter()
            self._state = "running"
            thread.start()
            self._llm._metrics.active += 1
        except BaseException as exc:
            self._state = "closed"
            self._release_channel()
            self._llm._release()
            if isinstance(exc, RKLLMError):
                self._llm._metrics.refused(exc)
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
            native.run_prepared(handle, prepared, userdata=channel.userdata)
        except GenerationError as exc:
            rc = exc.code if exc.code is not None else -1
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
        self._closed = closed = anyio.Event()
        try:
            await self._close_running()
        finally:
            closed.set()

    async def _close_running(self) -> None:
        channel = self._channel
        assert channel is not None
        with anyio.CancelScope(shield=True):
            self._abort_reason = self._abort_reason or "abort"
            self._abort_run()
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
                        self._abort_run()
            if scope.cancelled_caught:
                warnings.warn(
                    f"the runtime did not return within {ABORT_GRACE_S} s of an abort; its "
                    "buffers are left allocated so it cannot touch freed memory",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._channel = None
            self._release_channel()
            self._llm._release()
            self._record(error="AbortedError", perf=None)
        self._state = "closed"

    def _record(self, *, error: str | None, perf: PerfStats | None) -> None:
        recorder = self._llm._metrics
        recorder.active -= 1
        recorder.finished(
            seconds=time.perf_counter() - self._t0, ttft_ms=self._ttft_ms, perf=perf, error=error
        )

    def _abort_run(self) -> None:
        handle = self._llm._native_handle_or_none()
        if handle is not None:
            with contextlib.suppress(RKLLMError):  # the run is ending anyway
                native.abort(handle)

    def _release_channel(self) -> None:
        # Only once rkllm_run has returned (or the run never started): back to the handle's pool.
        if self._wakeups is not None:
            self._wakeups.close()
            self._wakeups = None
        if self._channel is not None:
            self._llm._return_channel(self._channel)
            self._channel = None
        self._prepared = None

    def abort(self) -> None:
        """Ask the runtime to stop; iteration then ends with finish_reason "abort".

        Unlike :meth:`aclose` it does not wait; the remaining chunks can still be read.

        >>> s.abort()  # doctest: +SKIP
        """
        if self._state == "running":
            self._abort_reason = self._abort_reason or "abort"
            self._abort_run()

    def pause(self) -> None:
        """Ask the runtime to pause after the next token (the callback returns 1).

        The run ends (FINISH) with the KV cache kept; the next run continues from it.

        >>> s.pause()  # doctest: +SKIP
        """
        if self._channel is not None and self._state == "running":
            self._abort_reason = self._abort_reason or "pause"
            self._channel.pause()

    # ---- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> Chunk:
        while not self._chunks:
            if self._state == "running":
                await self._pump()
                continue
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._state in ("new", "starting"):
                raise RuntimeError("enter the stream first: `async with llm.stream(...) as s`")
            raise StopAsyncIteration
        if self._stamps:
            self.latencies_ns.append(time.monotonic_ns() - self._stamps.popleft())
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await anyio.lowlevel.checkpoint()
        return self._chunks.popleft()

    async def _next_many(self) -> list[Chunk]:
        """Every chunk ready now (waiting for at least one); [] at the end. For the sync twin."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        ready = [first]
        while self._chunks:
            ready.append(self._chunks.popleft())
        return ready

    async def _pump(self) -> None:
        # Drains until it has chunks (or the run ended), waiting on the fd when empty.
        async with self._pump_lock:
            while True:
                channel = self._channel
                if self._state != "running" or channel is None:
                    return
                drained = channel.drain()
                if drained.states:
                    self._process(drained)
                    for b in self._batches:
                        if len(b.text) >= COMPACT_EVERY:
                            b.compact()
                    if self._abort_reason in ("abort", "stop") and not drained.run_done:
                        self._abort_run()  # tokens after an abort: it came before the run began
                # run_done is read under the same lock as the events: once it is set, this
                # drain holds everything the run produced (a refused run makes no callback).
                if drained.run_done:
                    await self._finish(drained)
                    return
                if drained.states:
                    return
                await self._wait_events(channel)

    async def _wait_events(self, channel: native.Channel) -> None:
        # Under the pump lock: the only task waiting on the channel's fd.
        if self._wakeups is None:
            self._wakeups = _Wakeups(channel)
        await self._wakeups.wait()

    def _process(self, drained: native.Drained) -> None:  # noqa: PLR0912, PLR0915
        # The hot path: one iteration per token, kept in one function on purpose (a call per
        # token costs more than the branches). Locals instead of attribute lookups, C-level
        # UTF-8 decoding, chunks built straight from tuples, one substring search for text
        # without tags, token-id tuples built directly when no token is pending.
        batches = self._batches
        chunks = self._chunks
        stop = bool(self._stop)
        new_chunk = tuple.__new__
        for idx, array in drained.arrays.items():
            batches[drained.batches[idx]].arrays.append(array)
            self.array_callback_ns.append(drained.callback_ns[idx])
        stamps = self._stamps
        seq = self._seq
        if self._ttft_ms is None and drained.states[0] < _TERMINAL and drained.token_ids[0] >= 0:
            self._ttft_ms = (time.perf_counter() - self._t0) * 1e3
        for state, batch, token, text, stamp in zip(
            drained.states,
            drained.batches,
            drained.token_ids,
            drained.texts,
            drained.callback_ns,
            strict=True,
        ):
            if state >= _TERMINAL:
                self._terminal_state = state
                continue
            b = batches[batch]
            if token < 0 or b.stopped:
                continue
            b.ids.append(token)
            if not text:
                b.pending.append(token)
                continue
            if b.partial:
                data = b.partial + text
                piece, used = _utf8_decode(data, "replace", False)  # keeps an incomplete tail
                b.partial = data[used:]
            else:
                piece, used = _utf8_decode(text, "replace", False)
                if used != len(text):
                    b.partial = text[used:]
            if not piece:
                b.pending.append(token)
                continue
            thinking = b.thinking
            in_tool, calls = False, _NO_CALLS
            if "<" in piece or b.tool_text is not None:  # one search for the common case
                if "<think>" in piece:
                    thinking = b.thinking = True
                if "</think>" in piece:
                    thinking, b.thinking = True, False
                if b.tool_text is not None or "<tool_call>" in piece:
                    in_tool, calls = True, self._tool_text(b, piece)
            if stop:
                b.pending.append(token)
                b.pending_calls.extend(calls)
                self._seq = seq
                self._emit_text(b, batch, piece, thinking, in_tool)
                seq = self._seq
                continue
            if b.pending:
                ids = (*b.pending, token)
                b.pending.clear()
            else:
                ids = (token,)
            b.text.append(piece)
            b.chunks += 1
            chunks.append(
                new_chunk(Chunk, (seq, piece, ids, batch, None, None, thinking, in_tool, calls))
            )
            seq += 1
            if stamps is not None:
                stamps.append(stamp)
        self._seq = seq

    def _tool_text(self, b: _Batch, piece: str) -> tuple[ToolCall, ...]:
        """Follow a <tool_call> block; when it closes, the calls parsed from it."""
        if b.tool_text is None:
            b.tool_text = []
        b.tool_text.append(piece)
        if "</tool_call>" not in piece:
            return ()
        block = "".join(b.tool_text)
        b.tool_text = None
        _, calls = parse_tool_calls(block, first_index=len(b.tool_calls))
        b.tool_calls.extend(calls)
        return tuple(calls)

    def _emit_text(self, b: _Batch, batch: int, piece: str, thinking: bool, in_tool: bool) -> None:
        # With stop strings: hold back the text that could be the start of one.
        held = b.held + piece
        cut = min((i for i in (held.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            b.held = ""
            if cut:
                self._push(b, batch, held[:cut], thinking, in_tool)
            b.stopped = True
            self._abort_reason = "stop"
            self._abort_run()
            return
        keep = len(held) - self._hold
        if keep > 0:
            self._push(b, batch, held[:keep], thinking, in_tool)
            held = held[keep:]
        b.held = held

    def _push(self, b: _Batch, batch: int, text: str, thinking: bool, in_tool: bool) -> None:
        # The slow path (stop strings, end of run): tool calls parsed meanwhile ride along.
        b.text.append(text)
        b.chunks += 1
        calls = tuple(b.pending_calls)
        b.pending_calls.clear()
        self._chunks.append(
            Chunk(self._seq, text, tuple(b.pending), batch, None, None, thinking, in_tool, calls)
        )
        self._seq += 1
        b.pending.clear()

    async def _finish(self, drained: native.Drained) -> None:
        failed = (
            self._terminal_state == CallState.ERROR
            or drained.run_rc != 0
            or self._worker_error is not None
        )
        results = []
        for index, b in enumerate(self._batches):
            tail = b.partial.decode("utf-8", "replace")
            b.partial = b""
            if not b.stopped and (tail or b.held):
                b.held, rest = "", b.held + tail
                self._push(b, index, rest, b.thinking, b.tool_text is not None)
            if failed:
                reason = "error"
            elif self._abort_reason is not None:
                reason = self._abort_reason
            elif self._limit is not None and len(b.ids) >= self._limit:
                reason = "length"
            elif b.tool_calls:
                reason = "tool_calls"
            else:
                reason = "stop"
            perf = drained.perf[index] if index < len(drained.perf) else None
            if not failed:  # a failed run raises after its chunks instead of a final chunk
                calls = tuple(b.pending_calls)
                b.pending_calls.clear()
                self._chunks.append(
                    Chunk(self._seq, "", tuple(b.pending), index, reason, perf, tool_calls=calls)
                )
                self._seq += 1
                b.pending.clear()
            text, ids = await b.assemble()
            results.append(
                Generation(
                    text=text,
                    token_ids=ids,
                    finish_reason=reason,
                    perf=perf,
                    ttft_ms=self._ttft_ms,
                    duration_ms=(time.perf_counter() - self._t0) * 1e3,
                    chunks=b.chunks,
                    batch=index,
                    tool_calls=tuple(b.tool_calls),
                )
            )
        self._result = results
        self._llm._last = results[0]
        self._state = "finished"
        self._release_channel()
        self._llm._release()
        self._record(error="GenerationError" if failed else None, perf=results[0].perf)
        if failed:
            errors = self._llm._callback_errors
            cause = self._worker_error or (errors[-1] if errors else None)
            errors.clear()
            error = GenerationError(
                f"the run failed (rkllm_run returned {drained.run_rc}); "
                f"{len(results[0].text)} characters were generated before the error",
                code=drained.run_rc or -1,
                generation=results[0],
            )
            if cause is not None:
                error.__cause__ = cause
            self._error = error

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
            RuntimeError: the run has not finished (or was closed before it did).

        >>> s.result().text  # doctest: +SKIP
        """
        if self._result is None:
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
        rows = self._batches[batch].arrays
        if not rows:
            raise GenerationError("the runtime delivered no logits / hidden states for this run")
        return rows[0] if len(rows) == 1 else np.concatenate(rows)
