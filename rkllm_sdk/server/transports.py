"""Transports: newline-delimited JSON over stdio, TCP and Unix sockets (anyio).

A transport frames messages and nothing else: each line in is one message for
:class:`~.connection.Connection`, each reply or notification goes out as one line. All of
them serve the same :class:`~.jsonrpc.Server`, so one process holds one set of handles.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

from .connection import Connection, MessageTooLargeError
from .jsonrpc import Server, error_response
from .outbox import dumps

__all__ = [
    "FdReader",
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


class FdReader(anyio.abc.ByteReceiveStream):
    """A file descriptor (standard input) as a byte stream, read by a daemon thread.

    A read blocked in a worker thread would keep the interpreter from exiting (SIGTERM
    while the client that spawned us stays connected and silent: worker threads are
    joined at exit) and cannot be cancelled; a daemon thread does neither. It reads ahead
    at most a few chunks (a bounded memory stream), and stops at end of file, on a read
    error, or once the stream is closed.
    """

    def __init__(self, fd: int, chunk: int = 65536) -> None:
        self._fd = fd
        self._chunk = chunk
        self._send, self._receive = anyio.create_memory_object_stream[bytes](4)
        self._pending = b""
        self._started = False

    def _read(self, token: anyio.lowlevel.EventLoopToken) -> None:
        while True:
            try:
                data = os.read(self._fd, self._chunk)
            except OSError:
                data = b""
            try:
                anyio.from_thread.run(self._send.send, data, token=token)
            except Exception:  # closed, or the event loop has ended: nobody listens
                return
            if not data:
                return

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._started:
            self._started = True
            token = anyio.lowlevel.current_token()
            threading.Thread(
                target=self._read, args=(token,), name="rkllm-stdin", daemon=True
            ).start()
        if not self._pending:
            try:
                self._pending = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise anyio.EndOfStream from None
            if not self._pending:
                raise anyio.EndOfStream
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()


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

    async with FdReader(sys.stdin.fileno()) as stdin:
        await Connection(server).serve(lines(stdin, server.config.max_message_bytes), send)
