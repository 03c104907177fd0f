"""The proxy over HTTP (buffered and SSE), WebSocket, auth and metrics: real uvicorn on
127.0.0.1, in the test's event loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from rkllm_sdk import AsyncLLM
from rkllm_sdk.cli._common import UsageError
from rkllm_sdk.cli.serve import check_binds
from rkllm_sdk.server import Server
from rkllm_sdk.server.http import HttpConfig, HttpFace, bind

from .conftest import DEADLINE_S, live_handles, running, serve_cmd, wait_until_idle

pytestmark = pytest.mark.anyio

PROMPT = {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"}
KEY = "s3cret-key"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def base(server: Server) -> AsyncIterator[str]:
    """An open (no key) HTTP face of ``server``; ``host:port``."""
    async with running(HttpFace(server, HttpConfig(ping_s=1))) as where:
        yield where


def request(rid: Any, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def rpc(client: httpx.AsyncClient, rid: Any, method: str, **params: Any) -> Any:
    reply = (await client.post("/rpc", json=request(rid, method, **params))).json()
    assert "result" in reply, reply
    return reply["result"]


def client(where: str, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{where}", headers=headers, timeout=DEADLINE_S)


async def sdk_text(models_dir: Path, abi: str) -> str:
    async with await AsyncLLM.load(models_dir / "m.json", runtime="fake", abi=abi) as llm:
        return (await llm.generate("Hello")).text


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, decoded data) of an SSE response; pings (comments) skipped."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_health_answers_without_auth(server: Server) -> None:
    """/health answers 200 without a key even when the server has one."""
    async with running(HttpFace(server, HttpConfig(api_key=KEY))) as where, client(where) as c:
        r = await c.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_plain_rpc_discover_and_buffered_run(
    base: str, models_dir: Path, abi: str, server: Server
) -> None:
    """rpc.discover, then a run answered in one JSON body holding every chunk; batches and
    notifications per JSON-RPC 2.0."""
    baseline = live_handles(abi)
    async with client(base) as c:
        doc = await rpc(c, 1, "rpc.discover")
        assert any(m["name"] == "rkllm_run" for m in doc["methods"])
        handle = (await rpc(c, 2, "rkllm_init", param={"model_path": "m.json"}))["handle"]
        result = await rpc(c, "run", "rkllm_run", handle=handle, rkllm_input=PROMPT)
        chunks = result["chunks"]
        assert [ch["seq"] for ch in chunks] == list(range(len(chunks))) and chunks
        assert all(ch["id"] == "run" for ch in chunks)
        assert "".join(ch["text"] for ch in chunks) == result["text"]
        assert result["text"] == await sdk_text(models_dir, abi)
        batch = [request(3, "health"), {"jsonrpc": "2.0", "method": "stats"}, request(4, "stats")]
        replies = (await c.post("/rpc", json=batch)).json()
        assert sorted(r["id"] for r in replies) == [3, 4]
        r = await c.post("/rpc", json={"jsonrpc": "2.0", "method": "stats"})
        assert r.status_code == 204 and not r.content
        r = await c.post("/rpc", content=b"{nope")
        assert r.json()["error"]["code"] == -32700
        r = await c.post("/rpc", content=b"x" * (server.config.max_message_bytes + 1))
        assert r.status_code == 413
        await rpc(c, 5, "rkllm_destroy", handle=handle)
    await wait_until_idle(server, abi, baseline)


async def test_handles_belong_to_their_session(base: str, abi: str, server: Server) -> None:
    """A handle made in one X-RKLLM-Session is unknown to another one."""
    baseline = live_handles(abi)
    async with client(base, **{"X-RKLLM-Session": "a"}) as a, client(base) as b:
        handle = (await rpc(a, 1, "rkllm_init", param={"model_path": "m.json"}))["handle"]
        reply = (await b.post("/rpc", json=request(2, "rkllm_is_running", handle=handle))).json()
        assert reply["error"]["code"] == -32602 and reply["error"]["data"]["path"] == "handle"
        assert (await rpc(a, 3, "rkllm_is_running", handle=handle)) == {"is_running": False}
        bad = await b.post("/rpc", json=request(4, "stats"), headers={"X-RKLLM-Session": "a b"})
        assert bad.status_code == 400
        await rpc(a, 5, "rkllm_destroy", handle=handle)
    await wait_until_idle(server, abi, baseline)


async def test_sse_streams_chunks_then_the_response(
    base: str, models_dir: Path, abi: str, server: Server
) -> None:
    """With Accept: text/event-stream each chunk is an event in order, the response last."""
    baseline = live_handles(abi)
    async with client(base) as c:
        handle = (await rpc(c, 1, "rkllm_init", param={"model_path": "m.json"}))["handle"]
        body = request(7, "rkllm_run", handle=handle, rkllm_input=PROMPT)
        headers = {"Accept": "text/event-stream"}
        async with c.stream("POST", "/rpc", json=body, headers=headers) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [e async for e in sse_events(r)]
        names = [name for name, _ in events]
        assert names[-1] == "response" and set(names[:-1]) == {"rkllm_result"}
        notes, final = [d for _, d in events[:-1]], events[-1][1]
        assert [n["params"]["seq"] for n in notes] == list(range(len(notes)))
        assert final["id"] == 7 and "chunks" not in final["result"]
        assert "".join(n["params"]["text"] for n in notes) == final["result"]["text"]
        assert final["result"]["text"] == await sdk_text(models_dir, abi)
        await rpc(c, 2, "rkllm_destroy", handle=handle)
    await wait_until_idle(server, abi, baseline)


async def test_sse_disconnect_aborts_the_run_and_idle_sessions_lose_handles(
    server: Server, abi: str
) -> None:
    """A client leaving mid-stream gets its run aborted; its idle session's handle dies."""
    baseline = live_handles(abi)
    face = HttpFace(server, HttpConfig(idle_timeout_s=0.5))
    async with running(face) as where, client(where) as c:
        handle = (await rpc(c, 1, "rkllm_init", param={"model_path": "slow.json"}))["handle"]
        body = request(2, "rkllm_run", handle=handle, rkllm_input=PROMPT)
        async with c.stream(
            "POST", "/rpc", json=body, headers={"Accept": "text/event-stream"}
        ) as r:
            seen = 0
            async for name, _ in sse_events(r):
                assert name == "rkllm_result"
                seen += 1
                if seen == 3:
                    break
            assert server.sessions.stats()["runs"] == 1
        with anyio.fail_after(DEADLINE_S):
            while server.sessions.stats()["runs"]:  # noqa: ASYNC110  # polling a counter
                await anyio.sleep(0.02)
        await wait_until_idle(server, abi, baseline)  # the idle timeout destroyed the handle
        assert not face.sessions.peers


async def test_websocket_init_run_destroy(
    base: str, models_dir: Path, abi: str, server: Server
) -> None:
    """Over /ws a run's notifications arrive as frames before its response."""
    baseline = live_handles(abi)
    async with websockets.connect(f"ws://{base}/ws") as ws:

        async def call(rid: Any, method: str, **params: Any) -> tuple[list[Any], Any]:
            await ws.send(json.dumps(request(rid, method, **params)))
            notes = []
            with anyio.fail_after(DEADLINE_S):
                for _ in range(10_000):
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == rid and "method" not in msg:
                        return notes, msg
                    notes.append(msg)
            raise AssertionError("no response")

        _, reply = await call(1, "rkllm_init", param={"model_path": "m.json"})
        handle = reply["result"]["handle"]
        notes, reply = await call(2, "rkllm_run", handle=handle, rkllm_input=PROMPT)
        assert notes and all(n["method"] == "rkllm_result" for n in notes)
        assert [n["params"]["seq"] for n in notes] == list(range(len(notes)))
        assert "".join(n["params"]["text"] for n in notes) == reply["result"]["text"]
        assert reply["result"]["text"] == await sdk_text(models_dir, abi)
        assert server.sessions.stats()["connections"] == 1
        _, reply = await call(3, "rkllm_destroy", handle=handle)
        assert "result" in reply
    await wait_until_idle(server, abi, baseline)


async def test_websocket_closed_mid_run_frees_everything(
    base: str, abi: str, server: Server
) -> None:
    """Closing the socket mid-run aborts the run and destroys the connection's handles."""
    baseline = live_handles(abi)
    async with websockets.connect(f"ws://{base}/ws") as ws:
        await ws.send(json.dumps(request(1, "rkllm_init", param={"model_path": "slow.json"})))
        with anyio.fail_after(DEADLINE_S):
            handle = json.loads(await ws.recv())["result"]["handle"]
            await ws.send(json.dumps(request(2, "rkllm_run", handle=handle, rkllm_input=PROMPT)))
            for _ in range(3):
                assert json.loads(await ws.recv())["method"] == "rkllm_result"
        assert server.sessions.stats()["runs"] == 1
    await wait_until_idle(server, abi, baseline)


async def test_api_key_guards_everything_but_health(server: Server) -> None:
    """With a key: 401 without it or with a wrong one (HTTP and WebSocket), 200 with it."""
    async with running(HttpFace(server, HttpConfig(api_key=KEY))) as where:
        body = request(1, "health")
        async with client(where) as c:
            assert (await c.post("/rpc", json=body)).status_code == 401
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/health")).status_code == 200
        async with client(where, Authorization="Bearer wrong") as c:
            r = await c.post("/rpc", json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        async with client(where, Authorization=f"Bearer {KEY}") as c:
            r = await c.post("/rpc", json=body)
            assert r.status_code == 200 and "result" in r.json()
            assert (await c.get("/metrics")).status_code == 200
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{where}/ws"):
                pass
        assert refused.value.response.status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        async with websockets.connect(f"ws://{where}/ws", additional_headers=auth) as ws:
            await ws.send(json.dumps(body))
            with anyio.fail_after(DEADLINE_S):
                assert "result" in json.loads(await ws.recv())


async def test_metrics_parse_as_prometheus_text(base: str) -> None:
    """/metrics is Prometheus text that prometheus_client's parser reads."""
    async with client(base) as c:
        await rpc(c, 1, "rkllm_init", param={"model_path": "m.json"})
        r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(r.text))
    assert all(f.name for f in families)


def test_non_loopback_http_needs_a_key_or_insecure_no_auth(models_dir: Path, abi: str) -> None:
    """A non-loopback --http without a key exits 2 before binding, unless --insecure-no-auth."""
    env = {k: v for k, v in os.environ.items() if k != "RKLLM_API_KEY"}
    cmd = serve_cmd(abi, models_dir, "--http", "0.0.0.0:0")  # refused, never bound
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=DEADLINE_S, check=False)
    assert proc.returncode == 2
    assert b"is not loopback: give an API key" in proc.stderr
    ns = argparse.Namespace(http=["0.0.0.0:8080"], tcp=["10.0.0.1:1"], insecure_no_auth=False)
    with pytest.raises(UsageError, match="TCP has no authentication"):
        check_binds(ns, "key")
    check_binds(argparse.Namespace(http=ns.http, tcp=ns.tcp, insecure_no_auth=True), None)


def test_spawned_http_server_serves_then_exits_0_on_sigterm(
    models_dir: Path, abi: str, tmp_path: Path
) -> None:
    """`rkllm serve --http 127.0.0.1:0 --api-key-file F` serves a run, then SIGTERM exits 0."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    cmd = serve_cmd(abi, models_dir, "--http", "127.0.0.1:0", "--api-key-file", str(key_file))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stderr and proc.stdout
        port = None
        for _ in range(50):
            found = re.search(rb"listening on http 127\.0\.0\.1:(\d+)", proc.stderr.readline())
            if found:
                port = int(found.group(1))
                break
        assert port, "no listening line"
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as c:
            init = request(1, "rkllm_init", param={"model_path": "m.json"})
            handle = c.post("/rpc", json=init).json()["result"]["handle"]
            run = request(2, "rkllm_run", handle=handle, rkllm_input=PROMPT)
            result = c.post("/rpc", json=run).json()["result"]
            assert result["finish_reason"] == "stop" and result["chunks"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE_S)
        err = proc.stderr.read()
        assert proc.stdout.read() == b""
    assert proc.returncode == 0
    assert b"rkllm_run id=2" in err and b"SIGTERM" in err


async def test_bind_turns_nagle_off_on_accepted_sockets() -> None:
    """Accepted sockets have TCP_NODELAY: no ~40 ms delayed-ACK stall on small writes."""
    sock = bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("socket")
        accepted.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        with anyio.fail_after(DEADLINE_S):
            assert await accepted != 0
        writer.close()
