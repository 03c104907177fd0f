"""Polling: rkllm_run_async answers at once; rkllm_get_run_results reads with a cursor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rkllm_sdk.server import Server, ServerConfig

from .conftest import DEADLINE_S, InProcess, LineClient, live_handles, wait_until_idle

pytestmark = pytest.mark.anyio

PROMPT = {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"}


def make_server(abi: str, models_dir: Path, **limits: Any) -> Server:
    """A proxy on the fake runtime with the given limits."""
    return Server(ServerConfig(runtime="fake", abi=abi, models_dir=models_dir, **limits))


@pytest.fixture
def limits() -> dict[str, Any]:
    """Config overrides a test asks for with ``@pytest.mark.parametrize('limits', ...)``."""
    return {}


@pytest.fixture
def server(abi: str, models_dir: Path, limits: dict[str, Any]) -> Server:
    """A proxy on the fake runtime of the test's ABI, with the test's limits."""
    return make_server(abi, models_dir, **limits)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[InProcess]:
    """An in-process client whose async runs are driven by a task group of the test."""
    c = InProcess(server)
    async with anyio.create_task_group() as tg:
        c.conn.tasks = tg
        yield c
        await c.close()
        tg.cancel_scope.cancel()


async def poll_all(
    fetch: Any, run: str, *, most: int = 3, wait_ms: int = 2000
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fetch ``run`` with cursors until done (bounded); (every result, the final state)."""
    results: list[dict[str, Any]] = []
    cursor = 0
    with anyio.fail_after(DEADLINE_S):
        for _ in range(10_000):
            reply = await fetch(run=run, cursor=cursor, max=most, wait_ms=wait_ms)
            assert len(reply["results"]) <= most
            results += reply["results"]
            cursor = reply["cursor"]
            if reply["done"]:
                return results, reply["final"]
    raise AssertionError("the run never finished")


async def wait_for(predicate: Any) -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    with anyio.fail_after(DEADLINE_S):
        while not predicate():  # noqa: ASYNC110  # polling server counters
            await anyio.sleep(0.02)


async def test_polled_results_equal_rkllm_run(client: InProcess) -> None:
    """Polling with cursors yields contiguous results whose text equals rkllm_run's."""
    handle = (await client.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    expected = await client.ok("rkllm_run", handle=handle, rkllm_input=PROMPT)
    await client.notes()
    started = await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT)
    assert set(started) == {"run"}
    results, final = await poll_all(
        lambda **p: client.ok("rkllm_get_run_results", **p), started["run"]
    )
    assert [r["seq"] for r in results] == list(range(len(results)))
    assert "".join(r["text"] for r in results) == final["text"] == expected["text"]
    assert final["state"] == "RKLLM_RUN_FINISH" and final["finish_reason"] == "stop"
    assert "generate_tokens" in final["perf"]
    assert await client.notes() == []  # polling sends no notifications
    again = await client.ok("rkllm_get_run_results", run=started["run"], cursor=len(results))
    assert (again["results"], again["done"], again["final"]) == ([], True, final)
    stats = await client.ok("stats")
    assert (stats["async_runs"], stats["async_results"], stats["runs"]) == (1, 0, 0)
    doc = await client.ok("rpc.discover")
    names = {m["name"] for m in doc["methods"]}
    assert {"rkllm_run_async", "rkllm_get_run_results"} <= names


@pytest.mark.parametrize("limits", [{"run_buffer": 4}])
async def test_long_poll_returns_early_and_empty_at_deadline(client: InProcess) -> None:
    """A long poll returns as soon as a result exists, and empty (not done) at its deadline."""
    handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
    first = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    t0 = time.monotonic()
    reply = await client.ok("rkllm_get_run_results", run=first, cursor=0, wait_ms=5000)
    assert reply["results"] and time.monotonic() - t0 < 2.5
    # The second run queues behind the first, which pauses once its buffer is full.
    second = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    t0 = time.monotonic()
    reply = await client.ok("rkllm_get_run_results", run=second, cursor=0, wait_ms=300)
    assert 0.25 < time.monotonic() - t0 < 2.5
    assert (reply["results"], reply["cursor"], reply["done"]) == ([], 0, False)


@pytest.mark.parametrize("limits", [{"run_buffer": 4}])
async def test_full_buffer_pauses_the_run_and_loses_nothing(
    client: InProcess, server: Server
) -> None:
    """A full buffer pauses the run (paused, nothing merged or dropped) until fetched."""
    param = {"model_path": "slow.json", "max_new_tokens": 12}
    handle = (await client.ok("rkllm_init", param=param))["handle"]
    run = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    await wait_for(lambda: server.sessions.stats()["async_results"] == 4)
    await anyio.sleep(0.2)  # 10 decode steps' time: the run would have gone on
    assert server.sessions.stats()["async_results"] == 4
    peek = await client.ok("rkllm_get_run_results", run=run, cursor=0, max=1)
    assert peek["paused"] and peek["cursor"] == 1
    results, final = await poll_all(
        lambda **p: client.ok("rkllm_get_run_results", **p), run, most=4
    )
    assert [r["seq"] for r in results] == list(range(12))
    assert final["finish_reason"] == "length"
    assert "".join(r["text"] for r in results) == final["text"]
    # Fetched results are dropped; asking below them is an error naming the run.
    reply = await client.call("rkllm_get_run_results", run=run, cursor=0)
    assert reply["error"]["code"] == -32602 and run in reply["error"]["message"]


@pytest.mark.parametrize("limits", [{"run_buffer": 2}])
async def test_abort_ends_paused_and_queued_runs(client: InProcess, server: Server) -> None:
    """rkllm_abort ends a paused async run and a queued one; buffered results stay readable."""
    handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
    paused = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    queued = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    await wait_for(lambda: server.sessions.stats()["async_results"] == 2)
    await client.ok("rkllm_abort", handle=handle)
    results, final = await poll_all(lambda **p: client.ok("rkllm_get_run_results", **p), paused)
    assert len(results) == 2 and final["finish_reason"] == "abort"
    assert final["text"] == "".join(r["text"] for r in results)
    results, final = await poll_all(lambda **p: client.ok("rkllm_get_run_results", **p), queued)
    assert results == [] and final["finish_reason"] == "abort"
    await wait_for(lambda: server.sessions.stats()["runs"] == 0)


async def test_full_queue_answers_busy_at_once(client: InProcess) -> None:
    """A fifth run on a handle holding four answers BusyError's code at once."""
    handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
    for _ in range(4):
        await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT)
    with anyio.fail_after(1):
        reply = await client.call("rkllm_run_async", handle=handle, rkllm_input=PROMPT)
    assert reply["error"]["code"] == -32004
    await client.ok("rkllm_abort", handle=handle)


@pytest.mark.parametrize("limits", [{"run_expiry_s": 0.3}])
async def test_unfetched_run_expires(client: InProcess, server: Server, abi: str) -> None:
    """A run nobody fetches is aborted and forgotten; fetching it then says it expired."""
    handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
    run = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    await wait_for(lambda: server.sessions.stats()["async_runs"] == 0)
    await wait_for(lambda: server.sessions.stats()["runs"] == 0)
    reply = await client.call("rkllm_get_run_results", run=run)
    assert reply["error"]["code"] == -32602 and reply["error"]["data"]["path"] == "run"
    assert run in reply["error"]["message"] and "expired" in reply["error"]["message"]
    assert (await client.ok("rkllm_is_running", handle=handle)) == {"is_running": False}


async def test_unknown_and_foreign_runs_are_refused(client: InProcess, server: Server) -> None:
    """An unknown run, another connection's run and a cursor past the end get -32602."""
    reply = await client.call("rkllm_get_run_results", run="r_nope")
    assert reply["error"]["code"] == -32602 and "unknown run r_nope" in reply["error"]["message"]
    handle = (await client.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    run = (await client.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
    other = InProcess(server)
    reply = await other.call("rkllm_get_run_results", run=run)
    assert reply["error"]["code"] == -32602 and f"unknown run {run}" in reply["error"]["message"]
    reply = await client.call("rkllm_get_run_results", run=run, cursor=10_000)
    assert reply["error"]["code"] == -32602 and reply["error"]["data"]["path"] == "cursor"
    await poll_all(lambda **p: client.ok("rkllm_get_run_results", **p), run)


async def test_tcp_poll_then_disconnect_frees_everything(
    tcp: tuple[str, int], server: Server, abi: str
) -> None:
    """Over TCP a run polls to its end; a client that drops has its async runs freed."""
    baseline = live_handles(abi)
    async with await anyio.connect_tcp(*tcp) as stream:
        c = LineClient(stream)
        handle = (await c.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
        run = (await c.ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
        results, final = await poll_all(lambda **p: c.ok("rkllm_get_run_results", **p), run)
        assert "".join(r["text"] for r in results) == final["text"] == "Hi there, friend!"
        slow = (await c.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
        await c.ok("rkllm_run_async", handle=slow, rkllm_input=PROMPT)
        await c.ok("rkllm_run_async", handle=slow, rkllm_input=PROMPT)
        await wait_for(lambda: server.sessions.stats()["async_results"] > 0)
    await wait_until_idle(server, abi, baseline)
    stats = server.sessions.stats()
    assert (stats["async_runs"], stats["async_results"]) == (0, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio only
async def test_http_sessions_own_their_runs(server: Server, abi: str) -> None:
    """Over HTTP a session polls its run to the end; another session gets unknown run."""
    from rkllm_sdk.server.http import HttpConfig, HttpFace, bind, serve_http  # noqa: PLC0415

    baseline = live_handles(abi)
    sock = bind("127.0.0.1", 0)
    ready = anyio.Event()

    async def started() -> None:
        ready.set()

    face = HttpFace(server, HttpConfig())
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_http(face, sock, started=started))
        with anyio.fail_after(DEADLINE_S):
            await ready.wait()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE_S) as http:
            n = 0

            async def call(session: str, method: str, **params: Any) -> Any:
                nonlocal n
                n += 1
                body = {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
                reply = await http.post("/rpc", json=body, headers={"X-RKLLM-Session": session})
                return reply.json()

            async def ok(method: str, **params: Any) -> Any:
                reply = await call("cron", method, **params)
                assert "result" in reply, reply
                return reply["result"]

            handle = (await ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
            run = (await ok("rkllm_run_async", handle=handle, rkllm_input=PROMPT))["run"]
            reply = await call("someone-else", "rkllm_get_run_results", run=run)
            assert reply["error"]["code"] == -32602
            results, final = await poll_all(
                lambda **p: ok("rkllm_get_run_results", **p), run, wait_ms=500
            )
            assert "".join(r["text"] for r in results) == final["text"] == "Hi there, friend!"
        tg.cancel_scope.cancel()
    await wait_until_idle(server, abi, baseline)
