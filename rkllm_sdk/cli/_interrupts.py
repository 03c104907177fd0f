"""Ctrl-C: stop the current step of a command, or cancel the whole command."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import attrs

from ._common import EXIT_INTERRUPTED


@attrs.define
class Interrupts:
    """SIGINT handling for a command: stop the current step, or cancel the whole command.

    The first Ctrl-C calls ``stop`` when it is set (a stream's ``abort``, a scope's
    ``cancel``), else cancels ``main``; either way the run is aborted on the NPU and the
    runtime is waited for before anything is released. A second Ctrl-C cancels ``main``;
    a third leaves at once (exit code 130), for a runtime that does not answer its abort.
    """

    main: anyio.CancelScope
    stop: Callable[[], object] | None = None
    hits: int = 0

    def new_step(self) -> None:
        """A new step begins (a chat's next answer): Ctrl-Cs before it no longer count."""
        self.hits = 0

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Count SIGINTs and act on each (run as a task; started once the handler is in)."""
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.hits += 1
                if self.hits >= 3:
                    os._exit(EXIT_INTERRUPTED)  # the user insists; the runtime is stuck
                (self.stop if self.stop is not None and self.hits == 1 else self.main.cancel)()


async def with_interrupts(body: Callable[[Interrupts], Awaitable[int]]) -> int:
    """Run a command's body under Ctrl-C handling; 130 when Ctrl-C cancelled all of it."""
    code, error = EXIT_INTERRUPTED, None  # stays so when Ctrl-C outside a step cancels all
    async with anyio.create_task_group() as tg:
        interrupts = Interrupts(tg.cancel_scope)
        await tg.start(interrupts.watch)
        try:
            code = await body(interrupts)
        except Exception as exc:  # raised below, not wrapped in the task group's group
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return code
