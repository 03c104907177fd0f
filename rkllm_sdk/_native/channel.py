"""The C bridge's per-run channel, and reading ``RKLLMResult`` inside a callback.

Runs deliver results into a :class:`Channel`: its pointer is the run's userdata, which only
this package hands to the runtime (:func:`userdata_for`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..arrays import FloatArray
from ..errors import ClosedError, NativeCallError
from ..models import CallState, PerfStats, Result

__all__ = ["Channel", "Drained", "bridge_live_objects", "read_results", "userdata_for"]

# ---- results ------------------------------------------------------------------------------


def _floats(rt: Runtime, ptr: CData, rows: int, cols: int) -> FloatArray | None:
    if ptr == rt.ffi.NULL or rows <= 0 or cols <= 0:
        return None
    view = np.frombuffer(memoryview(rt.ffi.buffer(ptr, 4 * rows * cols)), dtype=np.float32)
    return view.reshape(rows, cols).copy()  # the runtime frees its buffer after the callback


def _perf(p: CData) -> PerfStats:  # an RKLLMPerfStat
    return PerfStats(
        prefill_time_ms=float(p.prefill_time_ms),
        prefill_tokens=int(p.prefill_tokens),
        generate_time_ms=float(p.generate_time_ms),
        generate_tokens=int(p.generate_tokens),
        memory_usage_mb=float(p.memory_usage_mb),
    )


def read_results(rt: Runtime, result: CData, n_batch: int, state: CallState) -> list[Result]:
    """Copy the ``n_batch`` entries of an ``RKLLMResult*`` inside its callback."""
    out = []
    terminal = state in (CallState.FINISH, CallState.ERROR)
    for b in range(n_batch):
        r = result[b]
        perf = _perf(r.perf) if terminal else None
        text = rt.ffi.string(r.text) if r.text != rt.ffi.NULL else None
        out.append(
            Result(
                text=bytes(text) if text is not None else None,
                token_id=int(r.token_id),
                logits=_floats(rt, r.logits.logits, r.logits.num_tokens, r.logits.vocab_size),
                hidden_states=_floats(
                    rt,
                    r.last_hidden_layer.hidden_states,
                    r.last_hidden_layer.num_tokens,
                    r.last_hidden_layer.embd_size,
                ),
                perf=perf,
            )
        )
    return out


# ---- the C bridge's channel --------------------------------------------------------------


class Drained(NamedTuple):
    """What one drain of a channel gave, as parallel columns (one entry per event)."""

    states: list[int]
    batches: list[int]
    token_ids: list[int]
    texts: list[bytes | None]  # None: the runtime gave NULL text
    arrays: dict[int, FloatArray]  # event index -> logits / hidden rows copied by the bridge
    callback_ns: list[int]  # time.monotonic_ns() clock when each callback ran
    finished: bool  # the terminal callback has been drained
    run_done: bool  # rkllm_run returned (the runtime is done with every buffer)
    run_rc: int
    perf: list[PerfStats]  # per batch, once finished


#: Drains of at most this many events read them field by field instead of through numpy.
_FEW_EVENTS = 4


class Channel:
    """One run's event channel in the C bridge; its pointer is the run's userdata.

    The bridge's result callback (``rkb_result_callback``, pure C) fills it on the runtime
    thread; the consumer drains it and waits on :attr:`fd` when it is empty.
    """

    __slots__ = ("_bridge", "_dtype", "_ffi", "_page", "_ptr", "fd", "n_batch")

    def __init__(
        self,
        rt: Runtime,
        n_batch: int,
        *,
        array_rows: int = 0,
        release_buffers: bool = False,
        max_pending: int = 65536,
    ) -> None:
        self._ffi = rt.ffi
        self._bridge = rt.bridge
        ptr = rt.bridge.rkb_channel_new(n_batch, array_rows, int(release_buffers), max_pending)
        if ptr == rt.ffi.NULL:
            raise NativeCallError("rkb_channel_new failed (out of memory or file descriptors)")
        self._ptr: CData = ptr
        self.fd: int = int(rt.bridge.rkb_channel_fd(ptr))
        self.n_batch = n_batch
        self._page = rt.ffi.new("rkb_page*")
        fields = (
            "state",
            "batch",
            "token_id",
            "text_off",
            "text_len",
            "array_kind",
            "rows",
            "cols",
            "array",
            "t_ns",
        )
        self._dtype = np.dtype(
            {
                "names": list(fields),
                "formats": ["<i4", "<i4", "<i4", "<u4", "<u4", "<i4", "<i4", "<i4", "<u8", "<i8"],
                "offsets": [rt.ffi.offsetof("rkb_event", f) for f in fields],
                "itemsize": rt.ffi.sizeof("rkb_event"),
            }
        )

    def drain(self) -> Drained:
        """Take every pending event (never blocks). Empty: the next event will wake :attr:`fd`."""
        ffi, page = self._ffi, self._page
        n = int(self._bridge.rkb_channel_drain(self._ptr, page))
        states: list[int] = []
        batches: list[int] = []
        tokens: list[int] = []
        texts: list[bytes | None] = []
        arrays: dict[int, FloatArray] = {}
        stamps: list[int] = []
        if 0 < n <= _FEW_EVENTS:
            # A consumer keeping up (a paced NPU) wakes for one or two events: reading them
            # field by field costs less than setting up the numpy columns below.
            text: bytes = ffi.buffer(page.text, page.text_len)[:] if page.text_len else b""
            for i in range(n):
                ev = page.events[i]
                states.append(ev.state)
                batches.append(ev.batch)
                tokens.append(ev.token_id)
                stamps.append(ev.t_ns)
                off, ln = ev.text_off, ev.text_len
                texts.append(None if ln == 0xFFFFFFFF else text[off : off + ln])
                if ev.array != ffi.NULL:
                    arrays[i] = self._owned_rows(ev.array, ev.rows, ev.cols)
        elif n:
            # Columns straight from the C event array: one pass, no per-event tuple.
            text = ffi.buffer(page.text, page.text_len)[:] if page.text_len else b""
            table = np.frombuffer(
                memoryview(ffi.buffer(page.events, n * self._dtype.itemsize)), dtype=self._dtype
            )
            states = table["state"].tolist()
            batches = table["batch"].tolist()
            tokens = table["token_id"].tolist()
            stamps = table["t_ns"].tolist()
            offsets = table["text_off"].tolist()
            lengths = table["text_len"].tolist()
            texts = [
                None if ln == 0xFFFFFFFF else text[off : off + ln]
                for off, ln in zip(offsets, lengths, strict=True)
            ]
            for idx in np.flatnonzero(table["array"]).tolist():
                row = table[idx]
                pointer = ffi.cast("float*", int(row["array"]))
                arrays[idx] = self._owned_rows(pointer, int(row["rows"]), int(row["cols"]))
        perf = [_perf(page.perf[b]) for b in range(self.n_batch)] if page.finished else []
        return Drained(
            states,
            batches,
            tokens,
            texts,
            arrays,
            stamps,
            bool(page.finished),
            bool(page.run_done),
            int(page.run_rc),
            perf,
        )

    def _owned_rows(self, pointer: CData, rows: int, cols: int) -> FloatArray:
        # The bridge malloc'ed this copy for us: numpy owns it now (freed with it).
        owned = self._ffi.gc(pointer, self._bridge.rkb_free)
        raw = memoryview(self._ffi.buffer(owned, 4 * rows * cols))
        return np.frombuffer(raw, dtype=np.float32).reshape(rows, cols)

    def ack(self) -> None:
        """Reset the fd after a wakeup."""
        self._bridge.rkb_channel_ack(self._ptr)

    def wake(self) -> None:
        """Wake a consumer waiting on :attr:`fd` now, as an event would (it then drains
        nothing and decides again; the fd is an eventfd, re-armed by :meth:`ack`)."""
        os.eventfd_write(self.fd, 1)

    def pause(self) -> None:
        """Make the next result callback return 1 (pause)."""
        self._bridge.rkb_channel_pause(self._ptr)

    def close(self) -> None:
        """The consumer is gone: drop later events, release a blocked runtime thread."""
        self._bridge.rkb_channel_close(self._ptr)

    def reset(self, *, array_rows: int = 0, release_buffers: bool = False) -> None:
        """Ready this channel for another run on the same handle, keeping its buffers.

        Only once the previous run's ``rkllm_run`` has returned.
        """
        self._bridge.rkb_channel_reset(self._ptr, array_rows, int(release_buffers))

    def set_done(self, rc: int) -> None:
        """Called by the thread that ran rkllm_run, after it returned."""
        self._bridge.rkb_channel_set_done(self._ptr, rc)

    def free(self) -> None:
        """Free the channel. Only after rkllm_run has returned (the runtime is done with it)."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._bridge.rkb_channel_free(ptr)


def bridge_live_objects(rt: Runtime) -> int:
    """Channels and arrays the bridge has allocated and not freed (for leak tests)."""
    return int(rt.bridge.rkb_live_objects())


def userdata_for(rt: Runtime, channel: Channel | None) -> CData:
    """The userdata a run on ``rt`` gets: the channel's pointer (NULL: results are dropped).

    Raises:
        ClosedError: the channel was freed.
    """
    if channel is None:
        return rt.ffi.NULL
    ptr = channel._ptr
    if ptr is None:
        raise ClosedError("the channel is freed")
    return ptr
