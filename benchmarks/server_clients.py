"""Clients of the proxy's transports for :mod:`benchmarks.server`: each parses every message.

One streaming run through any transport gives a :class:`Run`: the tokens and text received,
the seconds from sending the request to its response, and, when notifications carry
``t_ns`` (the stamped server, :mod:`benchmarks.server_stamp`, or the peer), each one's
latency: the client's ``time.monotonic_ns()`` once it has parsed the message, minus ``t_ns``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs
import httpx
from websockets.asyncio.client import ClientConnection

PROMPT = {"input_type": "RKLLM_INPUT_TOKEN", "token_input": {"input_ids": [1, 2, 3], "n_tokens": 3}}
INFER = {"mode": "RKLLM_INFER_GENERATE", "keep_history": 0}


@attrs.define
class Run:
    tokens: int = 0
    text: str = ""
    seconds: float = 0.0
    latencies_us: list[float] = attrs.Factory(list)
    arrivals_ns: list[int] = attrs.Factory(list)
    reply_text: str = ""

    def note(self, params: dict[str, Any], now: int) -> None:
        self.tokens += len(params["token_ids"])
        self.text += params["text"]
        self.arrivals_ns.append(now)
        if "t_ns" in params:
            self.latencies_us.append((now - params["t_ns"]) / 1e3)


class Rpc(Protocol):
    async def send(self, msg: dict[str, Any]) -> None: ...
    async def recv(self) -> dict[str, Any]: ...


class LineRpc:
    """Newline-delimited JSON over a TCP or Unix stream."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buf = b""
        self.lock = anyio.Lock()  # clients sharing a connection (the concurrency figure)

    async def send(self, msg: dict[str, Any]) -> None:
        async with self.lock:
            await self.stream.send(json.dumps(msg).encode() + b"\n")

    async def recv(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            self.buf += await self.stream.receive(1 << 16)
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg


class WsRpc:
    """One JSON-RPC message per WebSocket text frame (the ``websockets`` client)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(await self.ws.recv())
        return msg


async def call(rpc: Rpc, id_: int, method: str, **params: Any) -> dict[str, Any]:
    """Send one request and return its response (no notification is expected)."""
    await rpc.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
    while True:
        msg = await rpc.recv()
        if msg.get("id") == id_:
            if "error" in msg:
                raise RuntimeError(f"{method} failed: {msg['error']}")
            return msg


async def init(rpc: Rpc, model: str, tokens: int) -> str:
    param = {"model_path": model, "max_new_tokens": tokens}
    return str((await call(rpc, 1, "rkllm_init", param=param))["result"]["handle"])


async def stream_run(rpc: Rpc, handle: str, id_: int = 2) -> Run:
    """One generation over a line or WebSocket transport."""
    run = Run()
    params = {"handle": handle, "rkllm_input": PROMPT, "rkllm_infer_params": INFER}
    t0 = time.perf_counter()
    await rpc.send({"jsonrpc": "2.0", "id": id_, "method": "rkllm_run", "params": params})
    while True:
        msg = await rpc.recv()
        if msg.get("method") == "rkllm_result":
            run.note(msg["params"], time.monotonic_ns())
        elif msg.get("id") == id_:
            if "error" in msg:
                raise RuntimeError(f"the run failed: {msg['error']}")
            run.reply_text = msg["result"]["text"]
            break
    run.seconds = time.perf_counter() - t0
    return run


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """``(event, parsed data)`` of a Server-Sent Events response (comments skipped)."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


async def sse_run(client: httpx.AsyncClient, handle: str, id_: int = 2) -> Run:
    """One generation through ``POST /rpc`` with ``Accept: text/event-stream``."""
    run = Run()
    params = {"handle": handle, "rkllm_input": PROMPT, "rkllm_infer_params": INFER}
    body = {"jsonrpc": "2.0", "id": id_, "method": "rkllm_run", "params": params}
    headers = {"Accept": "text/event-stream"}
    t0 = time.perf_counter()
    async with client.stream("POST", "/rpc", json=body, headers=headers) as response:
        async for event, msg in sse_events(response):
            if event == "rkllm_result":
                run.note(msg["params"], time.monotonic_ns())
            elif event == "response":
                if "error" in msg:
                    raise RuntimeError(f"the run failed: {msg['error']}")
                run.reply_text = msg["result"]["text"]
    run.seconds = time.perf_counter() - t0
    return run


async def peer_run(client: httpx.AsyncClient, tokens: int) -> Run:
    """One generation through the peer baseline (:mod:`benchmarks.server_peer`)."""
    run = Run()
    t0 = time.perf_counter()
    async with client.stream("POST", "/generate", json={"tokens": tokens}) as response:
        async for event, msg in sse_events(response):
            if event == "message":
                run.note({**msg, "token_ids": [0] * msg["tokens"]}, time.monotonic_ns())
    run.seconds = time.perf_counter() - t0
    return run
