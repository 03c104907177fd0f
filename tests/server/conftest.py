"""Fixtures of the proxy's tests: a server on the fake runtime, in process or on TCP."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from rkllm_sdk import _native
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.server import Connection, Server, ServerConfig
from rkllm_sdk.server.http import HttpFace, bind, serve_http
from rkllm_sdk.server.transports import open_tcp, serve_listener
from rkllm_sdk.testing import FakeModel

DEADLINE_S = 10.0


def serve_cmd(abi: str, models_dir: Path, *args: str) -> list[str]:
    """The command line of ``rkllm serve`` on the fake runtime over ``models_dir``, then
    ``args`` (its faces and options)."""
    return [
        sys.executable,
        "-m",
        "rkllm_sdk",
        "serve",
        "--runtime",
        "fake",
        "--abi",
        abi,
        "--models-dir",
        str(models_dir),
        *args,
    ]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models directory holding ``m.json`` (a fast fake model with a scripted reply)."""
    d = tmp_path / "models"
    d.mkdir()
    FakeModel(replies={"Hello": "Hi there, friend!"}, hidden_size=8, vocab_size=64).write(
        d / "m.json"
    )
    FakeModel(decode_ms=20, natural_end=False).write(d / "slow.json")
    return d


@pytest.fixture
def server(abi: str, models_dir: Path) -> Server:
    """A proxy on the fake runtime of the test's ABI, confined to ``models_dir``."""
    return Server(
        ServerConfig(runtime="fake", abi=abi, models_dir=models_dir, max_message_bytes=65536)
    )


def live_handles(abi: str) -> int:
    """The fake runtime's count of live handles."""
    return _native.fake_stats(load_runtime("fake", abi=abi))["live_handles"]


class InProcess:
    """Calls the dispatcher directly (no sockets): replies plus the notifications sent."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn = Connection(server)
        self.next_id = 0

    async def raw(self, text: str | bytes) -> Any:
        reply = await self.server.handle_text(self.conn, text)
        return None if reply is None else json.loads(reply)

    async def notes(self) -> list[dict[str, Any]]:
        out = []
        while len(self.conn.outbox):
            out.append(json.loads(await self.conn.outbox.get()))
        return out

    async def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        return await self.raw(json.dumps(req))

    async def ok(self, method: str, **params: Any) -> Any:
        reply = await self.call(method, **params)
        assert "result" in reply, reply
        return reply["result"]

    async def close(self) -> None:
        await self.server.sessions.close_connection(self.conn)


@pytest.fixture
async def inproc(server: Server) -> AsyncIterator[InProcess]:
    """An in-process client; its handles are destroyed after the test."""
    client = InProcess(server)
    yield client
    await client.close()


class LineClient:
    """A newline-delimited JSON client over a byte stream, every read under a deadline."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.next_id = 0

    async def send(self, message: Any) -> None:
        data = message if isinstance(message, str) else json.dumps(message)
        await self.stream.send(data.encode() + b"\n")

    async def recv(self) -> Any:
        with anyio.fail_after(DEADLINE_S):
            return json.loads(await self.reader.receive_until(b"\n", 64 * 1024 * 1024))

    async def request(self, method: str, **params: Any) -> tuple[list[Any], Any]:
        """Send a request; returns (notifications before the response, the response)."""
        self.next_id += 1
        rid = f"r{self.next_id}"
        await self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        notes = []
        for _ in range(10_000):
            msg = await self.recv()
            if msg.get("id") == rid and "method" not in msg:
                return notes, msg
            notes.append(msg)
        raise AssertionError("no response")

    async def ok(self, method: str, **params: Any) -> Any:
        _, reply = await self.request(method, **params)
        assert "result" in reply, reply
        return reply["result"]


@pytest.fixture
async def tcp(server: Server) -> AsyncIterator[tuple[str, int]]:
    """The server listening on 127.0.0.1 (a free port); stopped after the test."""
    listener = await open_tcp("127.0.0.1", 0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_listener, server, listener)
        yield "127.0.0.1", port
        tg.cancel_scope.cancel()


async def wait_until_idle(server: Server, abi: str, baseline: int) -> None:
    """Wait (bounded) until stats count nothing (no connection either) and the fake
    holds ``baseline`` handles."""
    with anyio.fail_after(DEADLINE_S):
        while True:
            s = server.sessions.stats()
            idle = (s["connections"], s["handles"], s["runs"], s["array_bytes"]) == (0, 0, 0, 0)
            if idle and live_handles(abi) == baseline:
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def running(face: HttpFace) -> AsyncIterator[str]:
    """``face`` served by uvicorn on 127.0.0.1 (a free port) in this event loop (asyncio:
    uvicorn); its ``host:port``. Leaving stops it (and its lifespans)."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    ready = anyio.Event()

    async def started() -> None:
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve_http, face, sock, started=started))
        with anyio.fail_after(DEADLINE_S):
            await ready.wait()
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()
