"""Waiting for a run's bridge channel to have events, without blocking the event loop."""

from __future__ import annotations

import asyncio
from typing import Protocol

import anyio

__all__ = ["Wakeups"]


class _Signalling(Protocol):
    """What a wake-up source needs of the channel: its fd and a way to re-arm it."""

    @property
    def fd(self) -> int: ...
    def ack(self) -> None: ...


class Wakeups:
    """Waits for a run's channel fd, re-arming it (``ack``) as it wakes.

    On asyncio the fd stays registered with the loop for the whole run: ``anyio``'s
    ``wait_readable`` registers and unregisters it at every wait, which on a slow core costs
    tens of microseconds per token of a paced run. Elsewhere (trio) it is that call.
    """

    def __init__(self, channel: _Signalling) -> None:
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
        """Return once the channel has signalled (at least once) since the last wait."""
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
