"""The blocking twin's hops to its event loop, with Ctrl-C handled the way the async side
handles cancellation (used by :mod:`rkllm_sdk.sync`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .errors import ClosedError

__all__ = ["INTERRUPT_GRACE_S", "blocking", "interrupts_deferred", "open_on_new_loop"]

T = TypeVar("T")

#: After Ctrl-C, how long a blocking call waits for its run to be aborted and the runtime to
#: let go before KeyboardInterrupt propagates (a second Ctrl-C leaves at once).
INTERRUPT_GRACE_S = 30.0


class _Interrupts:
    """Ctrl-C noted instead of raised (see :func:`interrupts_deferred`)."""

    def __init__(self) -> None:
        self.received = False
        self.on_interrupt: Callable[[], object] | None = None

    def handler(self, signum: int, frame: object) -> None:
        self.received = True
        if self.on_interrupt is not None:
            self.on_interrupt()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[_Interrupts]:
    """Ctrl-C is noted, not raised, inside the block (``on_interrupt`` is called at once),
    and raised as KeyboardInterrupt when the block ends.

    For loading and closing, which must not stop half-way: anyio's portal interrupted
    half-started leaves its thread running and its start waiting for ever, and a handle
    loaded just before a KeyboardInterrupt would be lost. Only the main thread receives
    SIGINT, and only there can the handler be swapped; elsewhere the block runs as is.
    """
    noted = _Interrupts()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield noted
        return
    previous = signal.signal(signal.SIGINT, noted.handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted.received:
        raise KeyboardInterrupt


def blocking(
    portal: BlockingPortal,
    closed: Callable[[], bool],
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    **kwargs: Any,
) -> T:
    """``portal.call`` for the twin's async calls, with Ctrl-C handled as the async side
    handles cancellation: KeyboardInterrupt cancels the call on the loop (its run is
    aborted on the NPU) and propagates once that is done, so the next call does not wait
    for an abandoned run. A closed twin raises :class:`ClosedError`."""
    if closed():
        raise ClosedError("the model handle is closed")
    finished = threading.Event()

    async def call() -> T:
        try:
            return await fn(*args, **kwargs)
        finally:
            finished.set()

    future = portal.start_task_soon(call)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()  # cancels the task on the loop: streams abort and wait, shielded
        finished.wait(INTERRUPT_GRACE_S)
        raise


def open_on_new_loop(
    backend: str,
    open_: Callable[[], Awaitable[T]],
    close: Callable[[T], Awaitable[object]],
) -> tuple[AbstractContextManager[BlockingPortal], BlockingPortal, T]:
    """Start an event loop in a thread (an anyio portal) and open something on it.

    Ctrl-C meanwhile cancels the opening (``AsyncLLM.load`` then destroys a handle its
    init made), or closes what was opened if it finished first, and stops the loop; then
    KeyboardInterrupt is raised. Nothing is left open, no thread left running.
    """
    cm = start_blocking_portal(backend)
    with interrupts_deferred() as interrupts:
        portal = cm.__enter__()
        finished = threading.Event()
        opened: list[T] = []  # an opening can finish after its future was cancelled

        async def run() -> T:
            try:
                value = await open_()
                opened.append(value)
                return value
            finally:
                finished.set()

        future = portal.start_task_soon(run)
        interrupts.on_interrupt = future.cancel
        try:
            future.result()
        except BaseException as exc:  # a failed opening, or one cancelled by Ctrl-C
            finished.wait(INTERRUPT_GRACE_S)
            for value in opened:
                portal.call(close, value)
            cm.__exit__(type(exc), exc, exc.__traceback__)
            if interrupts.received:
                raise KeyboardInterrupt from None
            raise
        if interrupts.received:  # after the opening had finished
            portal.call(close, opened[0])
            cm.__exit__(None, None, None)
            raise KeyboardInterrupt
        return cm, portal, opened[0]
