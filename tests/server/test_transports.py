"""The proxy over real sockets on 127.0.0.1, a Unix socket, and a spawned stdio server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from rkllm_sdk import AsyncLLM
from rkllm_sdk.server import Server
from rkllm_sdk.server.outbox import Outbox
from rkllm_sdk.server.transports import open_unix, serve_listener

from .conftest import DEADLINE_S, LineClient, live_handles, serve_cmd, wait_until_idle

pytestmark = pytest.mark.anyio

PROMPT = {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"}


async def test_full_sequence_over_tcp(
    tcp: tuple[str, int], models_dir: Path, abi: str, server: Server
) -> None:
    """Default params, init, a streamed run, KV cache size and clear, destroy: over TCP."""
    baseline = live_handles(abi)
    async with await anyio.connect_tcp(*tcp) as stream:
        client = LineClient(stream)
        param = (await client.ok("rkllm_createDefaultParam"))["param"]
        param["model_path"] = "m.json"
        handle = (await client.ok("rkllm_init", param=param))["handle"]
        notes, reply = await client.request(
            "rkllm_run",
            handle=handle,
            rkllm_input=PROMPT,
            rkllm_infer_params={"mode": "RKLLM_INFER_GENERATE", "keep_history": 1},
        )
        result = reply["result"]
        assert notes and [n["params"]["seq"] for n in notes] == list(range(len(notes)))
        assert all(n["params"]["id"] == reply["id"] for n in notes)
        assert "".join(n["params"]["text"] for n in notes) == result["text"]
        async with await AsyncLLM.load(models_dir / "m.json", runtime="fake", abi=abi) as llm:
            assert (await llm.generate("Hello")).text == result["text"]
        assert (await client.ok("rkllm_get_kv_cache_size", handle=handle))["cache_sizes"][0] > 0
        await client.ok("rkllm_clear_kv_cache", handle=handle, keep_system_prompt=True)
        await client.ok("rkllm_destroy", handle=handle)
        stats = await client.ok("stats")
        assert (stats["handles"], stats["runs"], stats["connections"]) == (0, 0, 1)
        await client.send("x" * (server.config.max_message_bytes + 10))
        reply = await client.recv()
        assert reply["error"]["code"] == -32600 and reply["id"] is None
    await wait_until_idle(server, abi, baseline)


async def test_disconnect_mid_stream_frees_everything(
    tcp: tuple[str, int], abi: str, server: Server
) -> None:
    """A client that leaves mid-run gets its run aborted and handles destroyed in time."""
    baseline = live_handles(abi)
    async with await anyio.connect_tcp(*tcp) as stream:
        client = LineClient(stream)
        handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
        await client.ok("rkllm_init", param={"model_path": "m.json"})
        await client.send(
            {
                "jsonrpc": "2.0",
                "id": 99,
                "method": "rkllm_run",
                "params": {"handle": handle, "rkllm_input": PROMPT},
            }
        )
        for _ in range(3):
            note = await client.recv()
            assert note["method"] == "rkllm_result"
        assert server.sessions.stats()["runs"] == 1
    await wait_until_idle(server, abi, baseline)
    assert server.sessions.stats()["connections"] == 0


async def test_two_clients_share_the_process_not_the_handles(
    tcp: tuple[str, int], abi: str, server: Server
) -> None:
    """Two TCP clients see one process; neither can use the other's handle."""
    baseline = live_handles(abi)
    async with await anyio.connect_tcp(*tcp) as s1, await anyio.connect_tcp(*tcp) as s2:
        a, b = LineClient(s1), LineClient(s2)
        handle = (await a.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
        _, reply = await b.request("rkllm_run", handle=handle, rkllm_input=PROMPT)
        assert reply["error"]["code"] == -32602 and reply["error"]["data"]["path"] == "handle"
        assert (await b.ok("stats"))["handles"] == 1
    await wait_until_idle(server, abi, baseline)


async def test_unix_socket(server: Server, tmp_path: Path, abi: str) -> None:
    """A Unix socket serves the same methods; a message over the limit is refused and closed."""
    path = tmp_path / "rkllm.sock"
    listener = await open_unix(path)
    assert path.stat().st_mode & 0o777 == 0o600
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_listener, server, listener)
        async with await anyio.connect_unix(path) as stream:
            client = LineClient(stream)
            doc = await client.ok("rpc.discover")
            assert any(m["name"] == "rkllm_run" for m in doc["methods"])
        with anyio.fail_after(DEADLINE_S):
            while server.sessions.connections:  # noqa: ASYNC110  # polling a counter
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


def test_spawned_stdio_server_discovers_and_streams(models_dir: Path, abi: str) -> None:
    """`rkllm serve --stdio` answers rpc.discover and streams a run; logs go to stderr only."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "rkllm_init",
            "params": {"param": {"model_path": "m.json"}},
        },
    ]
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    cmd = serve_cmd(abi, models_dir, "--stdio")
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdin and proc.stdout
        for r in requests:
            proc.stdin.write(json.dumps(r).encode() + b"\n")
        proc.stdin.flush()
        replies = [json.loads(proc.stdout.readline()) for _ in requests]
        assert {m["name"] for m in replies[0]["result"]["methods"]} >= {"rkllm_run", "stats"}
        handle = replies[1]["result"]["handle"]
        run = {
            "jsonrpc": "2.0",
            "id": "run",
            "method": "rkllm_run",
            "params": {"handle": handle, "rkllm_input": PROMPT},
        }
        proc.stdin.write(json.dumps(run).encode() + b"\n")
        proc.stdin.close()
        lines = [json.loads(line) for line in proc.stdout]
        assert proc.stderr
        err = proc.stderr.read()
        proc.wait(timeout=DEADLINE_S)
    assert proc.returncode == 0
    notes, final = lines[:-1], lines[-1]
    assert final["id"] == "run" and final["result"]["finish_reason"] == "stop"
    assert "".join(n["params"]["text"] for n in notes) == final["result"]["text"]
    assert b"rkllm_run" in err and b"ms ok" in err


def test_sigterm_ends_stdio_while_its_client_is_connected_and_silent(
    models_dir: Path, abi: str
) -> None:
    """SIGTERM stops `rkllm serve --stdio` (exit 0) while its client keeps standard input
    open and sends nothing: the blocked read (a daemon thread) does not keep it alive."""
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    cmd = serve_cmd(abi, models_dir, "--stdio")
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdin and proc.stdout and proc.stderr
        proc.stdin.write(b'{"jsonrpc": "2.0", "id": 1, "method": "stats"}\n')
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1  # serving: signals handled
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE_S)
        assert b"SIGTERM" in proc.stderr.read()
        proc.stdin.close()
    assert proc.returncode == 0


class _Run:
    """A run as the outbox sees it: any object it can hold a weak reference to."""


def _note(text: str, token: int, batch: int | None = None) -> dict[str, object]:
    note: dict[str, object] = {"id": 7, "text": text, "token_id": token, "token_ids": [token]}
    if batch is not None:
        note["batch"] = batch
    return note


async def test_outbox_merges_a_chunk_into_its_runs_queued_result() -> None:
    """Coalescing (every transport): a chunk whose run and batch entry has a result still
    queued joins it, wherever it is in the queue; one sent starts a new one; seq contiguous."""
    outbox = Outbox(8)
    run, other = _Run(), _Run()
    outbox.put_result(run, _note("a", 1))
    await outbox.put('{"id":1}')
    outbox.put_result(other, _note("x", 9))
    outbox.put_result(run, _note("b", 2))
    outbox.put_result(run, _note("c", 3, batch=1))
    outbox.put_result(run, _note("d", 4, batch=1))
    assert len(outbox) == 4 and outbox.merged == 2
    first = json.loads(await outbox.get())["params"]
    assert (first["text"], first["token_ids"], first["token_id"], first["seq"]) == (
        "ab",
        [1, 2],
        2,
        0,
    )
    assert await outbox.get() == '{"id":1}'
    outbox.put_result(run, _note("e", 5))  # its queued result has gone: a new one
    sent = [json.loads(await outbox.get())["params"] for _ in range(3)]
    assert [(p["text"], p["seq"]) for p in sent] == [("x", 0), ("cd", 1), ("e", 2)]
    assert sent[1]["batch"] == 1 and sent[1]["token_ids"] == [3, 4]


async def test_outbox_without_coalescing_merges_only_when_full() -> None:
    """``coalesce=False``: chunks queue one by one until the queue is full, then merge."""
    outbox = Outbox(2, coalesce=False)
    run = _Run()
    for i in range(4):
        outbox.put_result(run, _note(str(i), i))
    assert len(outbox) == 2 and outbox.merged == 2
    texts = [json.loads(await outbox.get())["params"]["text"] for _ in range(2)]
    assert texts == ["0", "123"]


async def test_outbox_wakes_a_waiting_writer_and_ends_on_close() -> None:
    """A writer waiting on an empty queue gets the next result at once; close ends it."""
    outbox = Outbox(4)
    got: list[str] = []

    async def writer() -> None:
        while True:
            try:
                got.append(json.loads(await outbox.get())["params"]["text"])
            except anyio.EndOfStream:
                return

    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            outbox.put_result(_Run(), _note("a", 1))
            await anyio.wait_all_tasks_blocked()
            assert got == ["a"]
            outbox.close()
