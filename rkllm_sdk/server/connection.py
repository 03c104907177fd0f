"""One client's connection, whatever carries it: requests in, replies and results out.

:meth:`Connection.serve` reads framed messages from an async iterator and writes reply
lines through a send function; a transport supplies both and nothing else. Requests are
served concurrently (``rkllm_abort`` while ``rkllm_run`` streams), at most
``max_inflight`` at once (reading pauses beyond). Everything sent goes through one
:class:`~.outbox.Outbox`, so a run's notifications precede its response (chunks that pile
up while the writer is busy merge into one notification).

The end of the input (EOF) lets the requests in progress finish and their replies go out
(``echo '{...}' | rkllm serve --stdio`` works); a failed write means the client is gone:
everything is cancelled. Either way the connection's runs (its ``rkllm_run_async`` runs
too, driven in :attr:`Connection.tasks`) are aborted on the NPU and its handles destroyed
before :meth:`serve` returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.abc

from .jsonrpc import INVALID_REQUEST, Server, error_response
from .outbox import Outbox, dumps

__all__ = ["Connection", "MessageTooLargeError"]

#: What a transport's write may raise when the client has gone.
GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class MessageTooLargeError(Exception):
    """A transport read more than ``max_message_bytes`` without a message boundary."""


class Connection:
    """One client of a :class:`~.jsonrpc.Server` (what handlers see as their ``Peer``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sessions = server.sessions
        self.outbox = Outbox(server.config.outbox_size)
        #: Drives this connection's async runs while it is served (cancelled when it ends).
        self.tasks: anyio.abc.TaskGroup | None = None

    async def serve(
        self, messages: AsyncIterator[bytes], send: Callable[[str], Awaitable[None]]
    ) -> None:
        """Serve messages until the input ends (and replies are out) or the client goes."""
        self.sessions.connections += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, send, tg.cancel_scope)
                async with anyio.create_task_group() as self.tasks:
                    await self._read(messages)
                    self.tasks.cancel_scope.cancel()  # its async runs end with it
                self.tasks = None
                self.outbox.close()
        finally:
            with anyio.CancelScope(shield=True):
                await self.sessions.close_connection(self)
            self.sessions.connections -= 1

    async def _read(self, messages: AsyncIterator[bytes]) -> None:
        slots = anyio.Semaphore(self.server.config.max_inflight)

        async def one(frame: bytes) -> None:
            try:
                reply = await self.server.handle_text(self, frame)
                if reply is not None:
                    await self.outbox.put(reply)
            finally:
                slots.release()

        async with anyio.create_task_group() as requests:
            try:
                async for frame in messages:
                    if not frame.strip():
                        continue
                    await slots.acquire()
                    requests.start_soon(one, frame)
            except MessageTooLargeError:
                limit = self.server.config.max_message_bytes
                message = f"message larger than {limit} bytes: closing"
                await self.outbox.put(dumps(error_response(None, INVALID_REQUEST, message)))
                requests.cancel_scope.cancel()

    async def _write(
        self, send: Callable[[str], Awaitable[None]], scope: anyio.CancelScope
    ) -> None:
        try:
            while True:
                try:
                    line = await self.outbox.get()
                except anyio.EndOfStream:
                    return
                await send(line)
        except GONE:
            scope.cancel()  # the client is gone: stop serving it
