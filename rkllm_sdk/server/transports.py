"""Transports: newline-delimited JSON over stdio, TCP and Unix sockets (anyio).

A transport frames messages and nothing else: each line in is one message for
:class:`~.connection.Connection`, each reply or notification goes out as one line. All of
them serve the same :class:`~.jsonrpc.Server`, so one process holds one set of handles.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

from .connection import Connection, MessageTooLargeError
from .jsonrpc import Server, error_response
from .outbox import dumps

__all__ = [
    "lines",
    "open_tcp",
    "open_unix",
    "serve_listener",
    "serve_stdio",
    "serve_stream",
]


async def lines(stream: anyio.abc.ByteReceiveStream, max_bytes: int) -> AsyncIterator[bytes]:
    """The newline-delimited messages of ``stream`` (a last one without newline included).

    Raises:
        MessageTooLargeError: ``max_bytes`` read without a newline.
    """
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            line = await buffered.receive_until(b"\n", max_bytes + 1)
        except anyio.IncompleteRead:
            if buffered.buffer.strip():
                yield bytes(buffered.buffer)
            return
        except anyio.DelimiterNotFound:
            raise MessageTooLargeError from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        yield line


async def serve_stream(server: Server, stream: anyio.abc.ByteStream) -> None:
    """Serve one client on a byte stream (a TCP or Unix connection) until it ends."""
    async with stream:
        if server.sessions.connections >= server.config.max_connections:
            busy = error_response(None, -32004, "too many connections: try again later")
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await stream.send(dumps(busy).encode() + b"\n")
            return

        async def send(line: str) -> None:
            await stream.send(line.encode("utf-8") + b"\n")

        try:
            await Connection(server).serve(lines(stream, server.config.max_message_bytes), send)
        finally:
            # A read cancelled just now leaves its future for a done-callback to clear;
            # closing a Unix stream before that callback ran raised InvalidStateError on
            # asyncio (anyio#1267, fixed in anyio 4.16). One shielded checkpoint lets it run.
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()


async def serve_listener(
    server: Server, listener: anyio.abc.Listener[anyio.abc.SocketStream]
) -> None:
    """Accept clients on ``listener`` and serve each in its own task, until cancelled."""
    async with listener:
        await listener.serve(lambda stream: serve_stream(server, stream))


async def open_tcp(host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """A TCP listener (port 0: any free port; see :func:`listener_address`)."""
    return await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)


async def open_unix(path: str | os.PathLike[str]) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """A Unix socket listener at ``path`` (a stale socket file is replaced), mode 0600."""
    p = anyio.Path(path)
    if await p.is_socket():
        await p.unlink()
    listener = await anyio.create_unix_listener(path)
    await p.chmod(0o600)
    return listener


class _Stdin(anyio.abc.ByteReceiveStream):
    """Standard input as a byte stream. Each read runs in a worker thread that a
    cancellation abandons (a blocked read must not keep the server from exiting)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await anyio.to_thread.run_sync(
                os.read, self._fd, max_bytes, abandon_on_cancel=True
            )
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def serve_stdio(server: Server) -> None:
    """Serve one client on standard input / output (a parent that spawned us).

    Nothing else may write to stdout: logs go to stderr.
    """
    out = sys.stdout.fileno()

    async def send(line: str) -> None:
        await anyio.to_thread.run_sync(_write_all, out, line.encode("utf-8") + b"\n")

    stdin = _Stdin(sys.stdin.fileno())
    await Connection(server).serve(lines(stdin, server.config.max_message_bytes), send)
