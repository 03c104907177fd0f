"""Load figures for :mod:`benchmarks.server`: concurrent clients, RSS over many requests."""

from __future__ import annotations

import time
from typing import Any

import anyio
import attrs

from .server_clients import INFER, PROMPT, LineRpc, Run, call, init, stream_run

BUSY = -32004


@attrs.define(eq=False)
class _Conn:
    """One TCP connection owning one handle, shared by several clients (told apart by id)."""

    rpc: LineRpc
    handle: str = ""
    inbox: dict[Any, Any] = attrs.Factory(dict)  # id -> memory send stream
    completions: int = 0
    changed: anyio.Event = attrs.Factory(anyio.Event)

    async def read(self) -> None:
        while True:
            msg = await self.rpc.recv()
            is_note = msg.get("method") == "rkllm_result"
            id_ = msg["params"]["id"] if is_note else msg.get("id")
            if not is_note:
                self.completions += 1  # a run ended (or was refused): a slot may be free
                self.changed.set()
                self.changed = anyio.Event()
            await self.inbox[id_].send((msg, self.completions))


async def _client(conn: _Conn, id_: int, out: list[tuple[Run, int]]) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[dict[str, Any], int]](1 << 16)
    conn.inbox[id_] = send
    params = {"handle": conn.handle, "rkllm_input": PROMPT, "rkllm_infer_params": INFER}
    retries = 0
    while True:
        run = Run()
        await conn.rpc.send({"jsonrpc": "2.0", "id": id_, "method": "rkllm_run", "params": params})
        async for msg, seen in receive:
            if msg.get("method") == "rkllm_result":
                run.note(msg["params"], 0)
                continue
            if "error" in msg and msg["error"]["code"] == BUSY:
                retries += 1  # the handle's queue is full: retry once another run ended
                while conn.completions <= seen:
                    await conn.changed.wait()
                break
            if "error" in msg:
                raise RuntimeError(f"run {id_} failed: {msg['error']}")
            run.reply_text = msg["result"]["text"]
            out.append((run, retries))
            return


async def concurrent(port: int, model: str, tokens: int, expected: str) -> dict[str, Any]:
    """64 clients over 4 TCP connections, each owning one handle (see the module docstring
    of :mod:`benchmarks.server`): every text checked, total tokens/s."""
    out: list[tuple[Run, int]] = []
    streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(4)]
    try:
        conns = [_Conn(LineRpc(s)) for s in streams]
        for c in conns:
            c.handle = await init(c.rpc, model, tokens)
        with anyio.fail_after(300):
            async with anyio.create_task_group() as readers:
                for c in conns:
                    readers.start_soon(c.read)
                t0 = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for i in range(64):
                        tg.start_soon(_client, conns[i % 4], 100 + i, out)
                seconds = time.perf_counter() - t0
                readers.cancel_scope.cancel()
    finally:
        for s in streams:
            await s.aclose()
    intact = sum(r.text == expected and r.reply_text == expected for r, _ in out)
    return {
        "concurrent_clients": 64,
        "concurrent_clients_intact": intact,
        "concurrent_busy_retries": sum(n for _, n in out),
        "concurrent_tokens_per_s": round(sum(r.tokens for r, _ in out) / seconds),
    }


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def rss_growth(port: int, pid: int, model: str, requests: int) -> dict[str, Any]:
    """Server VmRSS after ``requests`` mixed requests minus after a warm-up of a tenth:
    cycles of init, 6 x rkllm_is_running, 2 short runs (8 tokens), destroy."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        rpc = LineRpc(stream)
        ids = iter(range(10, 1 << 30))

        async def cycle() -> None:
            handle = await init(rpc, model, 8)
            for _ in range(6):
                await call(rpc, next(ids), "rkllm_is_running", handle=handle)
            for _ in range(2):
                await stream_run(rpc, handle, next(ids))
            await call(rpc, next(ids), "rkllm_destroy", handle=handle)

        for _ in range(requests // 100):
            await cycle()
        before = vm_rss_kb(pid)
        t0 = time.perf_counter()
        for _ in range(requests // 10):
            await cycle()
        seconds = time.perf_counter() - t0
        after = vm_rss_kb(pid)
    return {
        "rss_requests": requests,
        "rss_requests_per_s": round(requests / seconds),
        "rss_after_warmup_mb": round(before / 1024, 1),
        "rss_growth_mb": round((after - before) / 1024, 2),
    }
