"""The pure part of a stream: the runtime's events in, chunks and generations out.

A :class:`Decoder` knows nothing of threads, file descriptors or handles. It takes the
columns the bridge drained (states, batch indices, token ids, text bytes, arrays), and
produces :class:`~rkllm_sdk.results.Chunk` s in order: UTF-8 reassembled across callbacks
(never half a character), stop strings held back and trimmed, ``<think>`` and
``<tool_call>`` blocks marked, tool calls parsed as their blocks close. At the end of the
run it builds one :class:`~rkllm_sdk.results.Generation` per input.
"""

from __future__ import annotations

import time
from codecs import utf_8_decode
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio.lowlevel
import numpy as np

from .arrays import FloatArray
from .errors import GenerationError
from .models import CallState
from .results import Chunk, FinishReason, Generation, PerfStats, ToolCall
from .tools import parse_tool_calls

__all__ = ["COMPACT_EVERY", "Decoder", "Events"]

_TERMINAL = int(CallState.FINISH)  # FINISH and ERROR are the states >= this
_NO_CALLS: tuple[ToolCall, ...] = ()

#: Text pieces per batch after which they are folded into a block.
COMPACT_EVERY = 4096


class Events(Protocol):
    """What the decoder reads of one drain of the bridge (``_native.Drained`` has it)."""

    @property
    def states(self) -> Sequence[int]: ...
    @property
    def batches(self) -> Sequence[int]: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def texts(self) -> Sequence[bytes | None]: ...
    @property
    def callback_ns(self) -> Sequence[int]: ...
    @property
    def arrays(self) -> dict[int, FloatArray]: ...


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


def _stops(stop: str | Sequence[str]) -> tuple[str, ...]:
    # A plain string is one stop sequence (as in the OpenAI API), never its characters.
    if isinstance(stop, str):
        return (stop,) if stop else ()
    return tuple(s for s in stop if s)


class Decoder:
    """Turns one run's drained events into chunks (``chunks``) and, at the end, results.

    Args:
        n_batch: inputs of the run.
        stop: stop strings (a plain string is one).
        limit: the run's token limit, to tell "length" from "stop".
        on_stop: called at once when a stop string is met (the stream aborts the run).
        measure: keep the callback time of each chunk and array (benchmarks only).
    """

    def __init__(
        self,
        n_batch: int,
        *,
        stop: str | Sequence[str] = (),
        limit: int | None = None,
        on_stop: Callable[[], None] = lambda: None,
        measure: bool = False,
    ) -> None:
        self.batches = [_Batch() for _ in range(n_batch)]
        self.chunks: deque[Chunk] = deque()
        self.stop = _stops(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._limit = limit
        self._on_stop = on_stop
        self.seq = 0
        self.t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.terminal_state: int | None = None
        #: Why the run is being ended early ("abort", "pause", "stop"), set by the stream
        #: when it asks the runtime to stop, and by a stop string.
        self.abort_reason: FinishReason | None = None
        self._requested_ns: int | None = None  # when abort / pause was asked for
        self._terminal_ns: int | None = None  # when the runtime's terminal callback ran
        # Benchmarks only: the callback time of each queued chunk and of each array.
        self.stamps: deque[int] | None = deque() if measure else None
        self.array_callback_ns: list[int] | None = [] if measure else None

    def request_stop(self, reason: FinishReason) -> None:
        """The stream asks the runtime to stop (``"abort"``, ``"pause"``): the reason the run
        will end with, unless the runtime had already finished by itself (see _reason)."""
        if self.abort_reason is None:
            self.abort_reason = reason
            self._requested_ns = time.monotonic_ns()  # the bridge's callback clock

    def process(self, drained: Events) -> None:  # noqa: PLR0912, PLR0915
        """Decode one drain: chunks for every complete piece of text, in order."""
        # The hot path: one iteration per token, kept in one function on purpose (a call per
        # token costs more than the branches). Locals instead of attribute lookups, C-level
        # UTF-8 decoding, chunks built straight from tuples, one substring search for text
        # without tags, token-id tuples built directly when no token is pending.
        batches = self.batches
        chunks = self.chunks
        stop = bool(self.stop)
        new_chunk = tuple.__new__
        for idx, array in drained.arrays.items():
            batches[drained.batches[idx]].arrays.append(array)
            if self.array_callback_ns is not None:
                self.array_callback_ns.append(drained.callback_ns[idx])
        stamps = self.stamps
        seq = self.seq
        if self.ttft_ms is None and drained.states[0] < _TERMINAL and drained.token_ids[0] >= 0:
            self.ttft_ms = (time.perf_counter() - self.t0) * 1e3
        for state, batch, token, text, stamp in zip(
            drained.states,
            drained.batches,
            drained.token_ids,
            drained.texts,
            drained.callback_ns,
            strict=True,
        ):
            if state >= _TERMINAL:
                self.terminal_state = state
                self._terminal_ns = stamp
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
                piece, used = utf_8_decode(data, "replace", False)  # keeps an incomplete tail
                b.partial = data[used:]
            else:
                piece, used = utf_8_decode(text, "replace", False)
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
                self.seq = seq
                self._emit_text(b, batch, piece, thinking, in_tool)
                seq = self.seq
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
        self.seq = seq
        for b in batches:
            if len(b.text) >= COMPACT_EVERY:
                b.compact()

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
        cut = min((i for i in (held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            b.held = ""
            if cut:
                self._push(b, batch, held[:cut], thinking, in_tool)
            b.stopped = True
            self.abort_reason = "stop"
            self._on_stop()
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
        self.chunks.append(
            Chunk(self.seq, text, tuple(b.pending), batch, None, None, thinking, in_tool, calls)
        )
        self.seq += 1
        b.pending.clear()

    def _reason(self, b: _Batch, failed: bool) -> FinishReason:
        if failed:
            return "error"
        late = (  # asked after the runtime's terminal callback: the run had ended by itself
            self._requested_ns is not None
            and self._terminal_ns is not None
            and self._terminal_ns <= self._requested_ns
        )
        if self.abort_reason is not None and not late:
            return self.abort_reason
        if self._limit is not None and len(b.ids) >= self._limit:
            return "length"
        return "tool_calls" if b.tool_calls else "stop"

    async def finish(self, perf: Sequence[PerfStats | None], *, failed: bool) -> list[Generation]:
        """The run has ended: flush what was held back, add each batch's final chunk (not
        after a failure: the stream raises instead), and return one result per input."""
        results = []
        for index, b in enumerate(self.batches):
            # An incomplete character at the very end (a run cut inside one) is dropped:
            # never a replacement character.
            b.partial = b""
            if not b.stopped and b.held:
                rest, b.held = b.held, ""
                self._push(b, index, rest, b.thinking, b.tool_text is not None)
            reason = self._reason(b, failed)
            run_perf = perf[index] if index < len(perf) else None
            if not failed:
                calls = tuple(b.pending_calls)
                b.pending_calls.clear()
                self.chunks.append(
                    Chunk(self.seq, "", tuple(b.pending), index, reason, run_perf, tool_calls=calls)
                )
                self.seq += 1
                b.pending.clear()
            text, ids = await b.assemble()
            results.append(
                Generation(
                    text=text,
                    token_ids=ids,
                    finish_reason=reason,
                    perf=run_perf,
                    ttft_ms=self.ttft_ms,
                    duration_ms=(time.perf_counter() - self.t0) * 1e3,
                    chunks=b.chunks,
                    batch=index,
                    tool_calls=tuple(b.tool_calls),
                )
            )
        return results

    def arrays(self, batch: int) -> FloatArray:
        """The logits / hidden-state rows the runtime delivered for ``batch``."""
        rows = self.batches[batch].arrays
        if not rows:
            raise GenerationError("the runtime delivered no logits / hidden states for this run")
        return rows[0] if len(rows) == 1 else np.concatenate(rows)
