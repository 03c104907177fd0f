"""The proxy under load: connection limit, a slow client, FIFO runs, several handles,
shutdown with clients connected, and SIGTERM while a run streams."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from rkllm_sdk.server import Connection, Server, ServerConfig
from rkllm_sdk.server.transports import open_tcp, open_unix, serve_listener
from rkllm_sdk.testing import FakeModel

from .conftest import DEADLINE_S, LineClient, live_handles, serve_cmd, wait_until_idle

pytestmark = pytest.mark.anyio


def prompt(text: str) -> dict[str, Any]:
    """A user prompt input."""
    return {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": text}


def request(rid: Any, method: str, **params: Any) -> dict[str, Any]:
    """A JSON-RPC request object."""
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


@pytest.fixture
def replies_dir(models_dir: Path) -> Path:
    """``models_dir`` plus ``r.json``: a fake model with one scripted reply per prompt."""
    replies = {f"q{i}": f"answer number {i} " + "word " * (i + 3) for i in range(8)}
    FakeModel(replies=replies, decode_ms=1, hidden_size=8, vocab_size=64).write(
        models_dir / "r.json"
    )
    return models_dir


async def serve_tcp(server: Server, tg: anyio.abc.TaskGroup) -> tuple[str, int]:
    """Start serving ``server`` on 127.0.0.1 (a free port) in ``tg``."""
    listener = await open_tcp("127.0.0.1", 0)
    tg.start_soon(serve_listener, server, listener)
    return "127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port)


async def test_one_client_over_the_limit_is_told_and_closed(models_dir: Path, abi: str) -> None:
    """With max_connections=2 a third client gets -32004 and EOF; the first two keep working."""
    server = Server(ServerConfig(runtime="fake", abi=abi, models_dir=models_dir, max_connections=2))
    baseline = live_handles(abi)
    async with anyio.create_task_group() as tg:
        addr = await serve_tcp(server, tg)
        async with await anyio.connect_tcp(*addr) as s1, await anyio.connect_tcp(*addr) as s2:
            a, b = LineClient(s1), LineClient(s2)
            assert (await a.ok("stats"))["connections"] >= 1
            assert (await b.ok("stats"))["connections"] == 2
            async with await anyio.connect_tcp(*addr) as s3:
                c = LineClient(s3)
                refused = await c.recv()
                assert refused["error"]["code"] == -32004 and refused["id"] is None
                assert "too many connections" in refused["error"]["message"]
                with anyio.fail_after(DEADLINE_S), pytest.raises(anyio.EndOfStream):
                    await s3.receive()
            handle = (await a.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
            assert (await a.ok("rkllm_run", handle=handle, rkllm_input=prompt("Hello")))["text"]
            assert (await b.ok("stats"))["connections"] == 2
        await wait_until_idle(server, abi, baseline)
        tg.cancel_scope.cancel()


async def test_slow_client_gets_coalesced_results_nothing_lost(models_dir: Path, abi: str) -> None:
    """A client that reads nothing during a long run gets merged notifications, a bounded
    queue, contiguous seq, and text that adds up to the response."""
    FakeModel(natural_end=False, hidden_size=8, vocab_size=64).write(models_dir / "long.json")
    size = 8
    server = Server(ServerConfig(runtime="fake", abi=abi, models_dir=models_dir, outbox_size=size))
    conn = Connection(server)
    to_server, from_client = anyio.create_memory_object_stream[bytes](16)
    reading = anyio.Event()
    lines: list[dict[str, Any]] = []
    peak = 0

    async def send(line: str) -> None:
        nonlocal peak
        await reading.wait()  # the client reads nothing until the run has finished
        peak = max(peak, len(conn.outbox))
        lines.append(json.loads(line))

    async def messages() -> Any:
        async with from_client:
            async for item in from_client:
                yield item

    baseline = live_handles(abi)
    init = request(1, "rkllm_init", param={"model_path": "long.json", "max_new_tokens": 300})
    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.serve, messages(), send)
            await to_server.send(json.dumps(init).encode())
            while not server.sessions.handles:  # noqa: ASYNC110  # polling a dict
                await anyio.sleep(0.005)
            (handle,) = server.sessions.handles
            run = request("run", "rkllm_run", handle=handle, rkllm_input=prompt("go"))
            await to_server.send(json.dumps(run).encode())
            while server.sessions.metrics.runs_finished < 1:
                assert len(conn.outbox) <= size + 1  # bounded while the client sleeps
                await anyio.sleep(0.005)
            merged = conn.outbox.merged
            reading.set()
            await to_server.aclose()
    assert merged > 0 and peak <= size + 1
    replies = {m["id"]: m for m in lines if "method" not in m}
    notes = [m["params"] for m in lines if m.get("method") == "rkllm_result"]
    final = replies["run"]["result"]
    assert final["finish_reason"] == "length" and len(final["token_ids"]) == 300
    assert [n["seq"] for n in notes] == list(range(len(notes)))
    assert len(notes) < 300
    assert "".join(n["text"] for n in notes) == final["text"]
    assert [t for n in notes for t in n["token_ids"]] == final["token_ids"]
    await wait_until_idle(server, abi, baseline)


async def test_eight_runs_on_one_handle_are_served_fifo(replies_dir: Path, abi: str) -> None:
    """Eight runs queued on one handle answer in the order they were queued, each with
    its own notifications, never interleaved."""
    server = Server(
        ServerConfig(runtime="fake", abi=abi, models_dir=replies_dir, max_queued_runs=8)
    )
    baseline = live_handles(abi)
    async with anyio.create_task_group() as tg:
        addr = await serve_tcp(server, tg)
        async with await anyio.connect_tcp(*addr) as stream:
            client = LineClient(stream)
            handle = (await client.ok("rkllm_init", param={"model_path": "r.json"}))["handle"]
            with anyio.fail_after(DEADLINE_S):
                for i in range(8):  # one at a time: each queued before the next is sent
                    await client.send(
                        request(i, "rkllm_run", handle=handle, rkllm_input=prompt(f"q{i}"))
                    )
                    while server.sessions.runs + server.sessions.metrics.runs_finished <= i:  # noqa: ASYNC110
                        await anyio.sleep(0.001)
            order: list[Any] = []
            texts: dict[int, str] = dict.fromkeys(range(8), "")
            current = 0
            while len(order) < 8:
                msg = await client.recv()
                if msg.get("method") == "rkllm_result":
                    assert msg["params"]["id"] == current  # no interleaving
                    texts[current] += msg["params"]["text"]
                else:
                    assert msg["result"]["text"] == texts[msg["id"]]
                    order.append(msg["id"])
                    current += 1
            assert order == list(range(8))
            assert all(texts[i].startswith(f"answer number {i}") for i in range(8))
        await wait_until_idle(server, abi, baseline)
        tg.cancel_scope.cancel()


async def test_four_handles_run_at_once(replies_dir: Path, abi: str) -> None:
    """Four handles on one connection run concurrently; each reply matches its prompt."""
    server = Server(ServerConfig(runtime="fake", abi=abi, models_dir=replies_dir))
    baseline = live_handles(abi)
    async with anyio.create_task_group() as tg:
        addr = await serve_tcp(server, tg)
        async with await anyio.connect_tcp(*addr) as stream:
            client = LineClient(stream)
            handles = [
                (await client.ok("rkllm_init", param={"model_path": "r.json"}))["handle"]
                for _ in range(4)
            ]
            for i, h in enumerate(handles):
                await client.send(request(i, "rkllm_run", handle=h, rkllm_input=prompt(f"q{i}")))
            texts: dict[int, str] = dict.fromkeys(range(4), "")
            seqs: dict[int, list[int]] = {i: [] for i in range(4)}
            finals: dict[int, str] = {}
            peak_runs = 0
            while len(finals) < 4:
                msg = await client.recv()
                peak_runs = max(peak_runs, server.sessions.runs)
                if msg.get("method") == "rkllm_result":
                    texts[msg["params"]["id"]] += msg["params"]["text"]
                    seqs[msg["params"]["id"]].append(msg["params"]["seq"])
                else:
                    finals[msg["id"]] = msg["result"]["text"]
            assert peak_runs > 1  # they overlapped
            for i in range(4):
                assert finals[i] == texts[i] and finals[i].startswith(f"answer number {i}")
                assert seqs[i] == list(range(len(seqs[i])))
            assert (await client.ok("stats"))["handles"] == 4
        await wait_until_idle(server, abi, baseline)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_cancelling_a_listener_with_clients_reading_is_clean(
    server: Server, tmp_path: Path, abi: str, kind: str
) -> None:
    """Stopping a listener while a client is connected (its read pending) raises nothing
    and frees the client's handle."""
    baseline = live_handles(abi)
    path = tmp_path / "s.sock"
    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            if kind == "unix":
                tg.start_soon(serve_listener, server, await open_unix(path))
                stream: anyio.abc.ByteStream = await anyio.connect_unix(path)
            else:
                stream = await anyio.connect_tcp(*await serve_tcp(server, tg))
            client = LineClient(stream)
            await client.ok("rkllm_init", param={"model_path": "slow.json"})
            await client.send(request(1, "stats"))  # in flight as the server stops
            tg.cancel_scope.cancel()
        await stream.aclose()
    await wait_until_idle(server, abi, baseline)


def test_sigterm_drains_the_run_then_exits_0(models_dir: Path, abi: str) -> None:
    """SIGTERM lets a streaming run finish (its response arrives), then the process exits 0."""
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    cmd = serve_cmd(abi, models_dir, "--tcp", "127.0.0.1:0")
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stderr
            port = None
            for _ in range(20):  # the banner: a few lines, the bound address among them
                line = proc.stderr.readline().decode()
                if "listening on tcp" in line:
                    port = int(line.rsplit(":", 1)[1])
                    break
            assert port is not None
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
                f = sock.makefile("rwb")
                param = {"model_path": "slow.json", "max_new_tokens": 15}
                f.write(json.dumps(request(1, "rkllm_init", param=param)).encode() + b"\n")
                f.flush()
                handle = json.loads(f.readline())["result"]["handle"]
                run = request(2, "rkllm_run", handle=handle, rkllm_input=prompt("go"))
                f.write(json.dumps(run).encode() + b"\n")
                f.flush()
                assert json.loads(f.readline())["method"] == "rkllm_result"
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                messages = [json.loads(line) for line in f]  # until the server closes
            final = messages[-1]
            assert final["id"] == 2 and final["result"]["finish_reason"] == "length"
            assert len(final["result"]["token_ids"]) == 15
            assert proc.wait(timeout=DEADLINE_S) == 0
            assert time.monotonic() - started < DEADLINE_S
            assert b"SIGTERM: draining" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
