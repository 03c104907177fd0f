"""The channel-drained handle: runs on a :func:`rkllm_sdk._native.init` handle, observed through
the SDK's C bridge.

Its :class:`~rkllm_sdk._native.Channel` gives the states and texts of each callback as the
runtime gave them, while a scenario aborts, pauses, reads the KV cache or destroys the handle
during a run. Every ``rkllm_run`` runs in a worker thread and every wait has a timeout.
"""

from __future__ import annotations

import select
import threading
import time

import attrs

from .. import _native as native
from ..errors import GenerationError
from ..models import CallState, InferOptions, Prompt
from ..results import PerfStats
from . import guard
from .scenario import TERMINAL, TOKEN_STATES


@attrs.define
class Run:
    """One ``rkllm_run`` in a worker thread, delivering into a bridge channel."""

    channel: native.Channel
    thread: threading.Thread
    states: list[int] = attrs.field(factory=list)
    texts: list[bytes | None] = attrs.field(factory=list)
    stamps: list[int] = attrs.field(factory=list)  # CLOCK_MONOTONIC ns of each callback
    perf: list[PerfStats] = attrs.field(factory=list)  # per batch, at the end
    rc: int | None = None  # what rkllm_run returned (None: still running)
    returned_ns: int | None = None
    error: str | None = None  # anything else the call raised

    def pump(self, timeout: float) -> bool:
        """Take what is pending, or wait up to ``timeout`` for more; True once run_done."""
        drained = self.channel.drain()
        self.states += drained.states
        self.texts += drained.texts
        self.stamps += drained.callback_ns
        if drained.perf:
            self.perf = list(drained.perf)
        if drained.run_done:
            return True
        if not drained.states:  # an empty drain arms the fd: the next event wakes it
            select.select([self.channel.fd], [], [], timeout)
            self.channel.ack()
        return False

    def wait_tokens(self, timeout: float) -> bool:
        """Drain until a token callback has come: True, or False when the run ended first.

        With ``max_pending=1`` the runtime can then queue one more callback and blocks in
        the next one until the probe drains again: the run is certainly still going.
        """
        deadline = time.monotonic() + timeout
        while self.tokens == 0:
            if self.pump(0.05) or time.monotonic() > deadline:
                return False
        return True

    def release(self) -> None:
        """Once ``rkllm_run`` has returned: join its thread and free the channel."""
        self.thread.join()
        self.channel.free()

    @property
    def tokens(self) -> int:
        """Token callbacks (NORMAL and WAITING) seen so far."""
        return sum(s in TOKEN_STATES for s in self.states)

    @property
    def terminal(self) -> str | None:
        """The name of the terminal state seen, if any."""
        ends = [CallState(s).name for s in self.states if s in TERMINAL]
        return ends[-1] if ends else None


def start(
    h: native.NativeHandle,
    text: str,
    *,
    keep_history: bool = False,
    max_new_tokens: int | None = None,
    max_pending: int = 65536,
) -> Run:
    """Start ``rkllm_run`` of one prompt on a worker thread (daemon: it may never return)."""
    options = InferOptions(
        keep_history=keep_history,
        max_new_tokens=max_new_tokens if h.runtime.abi == "1.3" else None,
    )
    prepared = native.prepare_run(h, Prompt(text=text), options)
    channel = native.Channel(h.runtime, h.n_batch, max_pending=max_pending)
    box: list[Run] = []

    def work() -> None:
        run = box[0]
        rc = 0
        try:
            native.run_prepared(h, prepared, channel)
        except GenerationError as exc:
            rc = exc.code if exc.code is not None else -1
        except BaseException as exc:  # reported in the finding, never lost on this thread
            run.error = f"{type(exc).__name__}: {exc}"
            rc = -1
        finally:
            run.returned_ns = time.monotonic_ns()
            run.rc = rc
            channel.set_done(rc)

    run = Run(channel, threading.Thread(target=work, name="rkllm-probe-run", daemon=True))
    box.append(run)
    run.thread.start()
    return run


def finish(
    h: native.NativeHandle,
    run: Run,
    key: str,
    question: str,
    *,
    timeout: float = guard.RUN_TIMEOUT_S,
) -> Run:
    """Drain the run to its end; abort it after ``timeout``; raise :class:`~.guard.HungError`
    if stuck."""
    deadline = time.monotonic() + timeout
    while not run.pump(0.05):
        if time.monotonic() > deadline:
            guard.abort_quietly(h)
            grace = time.monotonic() + guard.GRACE_S
            while not run.pump(0.05):
                if time.monotonic() > grace:
                    run.channel.close()  # release a runtime thread blocked in the callback
                    raise guard.HungError(
                        key,
                        question,
                        f"rkllm_run did not return within {timeout:g} s nor "
                        f"{guard.GRACE_S:g} s after rkllm_abort",
                    )
            break
    run.release()
    return run


def raw_is_running(h: native.NativeHandle) -> int:
    """``rkllm_is_running`` as the runtime returned it (its polarity differs by ABI)."""
    return int(h.runtime.lib.rkllm_is_running(h.ptr()))
