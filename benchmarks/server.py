"""The proxy's figures against baselines measured in the same run, per ABI.

    python -m benchmarks.server            # a table
    python -m benchmarks.server --json     # one JSON object

The proxy runs as a separate process (``rkllm serve`` on the fake runtime with ``--tcp``,
``--unix`` and ``--http 127.0.0.1:PORT``), the clients here; every client parses each
message as JSON (what any client must do). Medians (or pooled samples) of ``--repeat`` runs:

- in_process_tokens_per_s: ``async for`` over ``AsyncLLM.stream`` in this process
  (``decode_ms`` 0, ``--tokens`` tokens): the baseline of every ``*_ratio``.
- tcp / unix / sse / ws_tokens_per_s and ``*_ratio``: the same run through the server over
  TCP, a Unix socket, ``POST /rpc`` with ``Accept: text/event-stream`` (httpx, streaming)
  and ``/ws`` (the ``websockets`` client). Targets: ratio >= 0.3, SSE >= 0.2. The runs go
  in rounds (in-process, then each transport) and ``*_ratio`` is the median of each
  round's ratio, so a machine whose speed drifts during the run (a shared VM) compares
  figures taken a second apart, not a minute apart.
- Latency, ``*_latency_p50_us`` / ``_p99_us``: the fake paced at ``decode_ms`` 2 (one token
  at a time, an idle server), ``--latency-tokens`` per run, samples of all runs pooled. The
  server is started by :mod:`benchmarks.server_stamp`, which stamps each ``rkllm_result``
  with ``t_ns = time.monotonic_ns()`` when the handler gets the chunk from the SDK; the
  client subtracts it from its own ``time.monotonic_ns()`` once it has parsed the message.
  CLOCK_MONOTONIC is one clock for all processes on Linux, so this is the one-way delay
  SDK chunk -> client, through the server's outbox, serialization, the kernel and the
  client's parsing: what the proxy adds on top of the SDK's own callback -> chunk latency
  (``python -m benchmarks``). It does not include that, nor the runtime itself.
  ``*_gap_p99_ms``: the 99th percentile of the inter-arrival time at the client, against
  the 2 ms pacing (needs no stamp; shows jitter and bunching, not delay).
  Floors: ``floor_eventfd_*``, a thread's eventfd write -> a task woken by this loop (no
  SDK, one process, as in ``python -m benchmarks``); ``floor_pipe_*``, another process
  writing its ``monotonic_ns`` into a pipe every 2 ms -> this loop has parsed it (the
  cheapest cross-process wake-up).
- peer_latency_*: the peer baseline (:mod:`benchmarks.server_peer`, the vendor's Flask
  demo design on Starlette + the SDK: a global buffer, an endpoint polling it every 5 ms),
  stamped and measured as our SSE; ``sse_over_peer_p50`` is our SSE p50 over its p50
  (target < 0.2).
- concurrent_*: 64 clients over 4 handles on TCP. A handle belongs to its connection and
  queues at most 4 runs (one more is refused with BusyError -32004, at once), so: 4
  connections, each owning one handle and shared by 16 clients (told apart by request
  id), every client sending its run at once; a refused client resends after another run on
  its connection has ended (``concurrent_busy_retries`` counts them). Each client's
  concatenated notification text must equal the model's reply (the in-process text) and
  the response's text: ``concurrent_clients_intact`` of 64. ``--concurrent-tokens`` each.
- rss_growth_mb: the server's VmRSS (``/proc/<pid>/status``) after ``--rss-requests``
  mixed requests (cycles of init, 6 x ``rkllm_is_running``, 2 runs of 8 tokens, destroy)
  minus after a warm-up of a tenth as many (target < 5 MB).

Any error fails the whole benchmark loudly: each step (a run through one transport, the
concurrency figure, ...) has a deadline (``--step-timeout``), the servers' stderr is kept
and its end shown when they fail or exit early, and the command prints the step and the
error on stderr and exits 1 (printing no figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import numpy as np
from websockets.asyncio.client import connect as ws_connect

from rkllm_sdk import AsyncLLM, ModelParams, TokenInput
from rkllm_sdk._ffi import ABIS
from rkllm_sdk.testing import FakeModel

from .__main__ import wakeup_floor
from .server_clients import LineRpc, Rpc, Run, WsRpc, init, peer_run, sse_run, stream_run
from .server_load import concurrent, rss_growth

ENV = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
ROOT = str(Path(__file__).resolve().parents[1])  # the cwd of the -m children
#: Seconds one step may take (``--step-timeout``); a whole run takes about a minute.
STEP_S = 120.0


class BenchmarkError(Exception):
    """A step of the benchmark failed: the message names it."""


_STEP_S: ContextVar[float] = ContextVar("step_s", default=STEP_S)


@contextmanager
def _step(name: str) -> Iterator[None]:
    """One step: fails after the step timeout (a hang is an error too); errors name it."""
    seconds = _STEP_S.get()
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise BenchmarkError(f"{name}: no result after {seconds:g} s") from None
    except BenchmarkError:
        raise
    except Exception as exc:
        raise BenchmarkError(f"{name}: {type(exc).__name__}: {exc}") from exc


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's stderr file, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    | {line}" for line in text)


@asynccontextmanager
async def _child(name: str, cmd: list[str], log: Path) -> AsyncIterator[anyio.abc.Process]:
    """A child process with its stderr in ``log``: an error while it serves, or its exit
    before it is told to stop, raises :class:`BenchmarkError` with the end of that stderr."""
    with log.open("wb") as err:
        proc = await anyio.open_process(
            cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
        )
    async with proc:
        try:
            yield proc
        except Exception as exc:
            with anyio.move_on_after(0.5):  # has it died? (a client saw it go first)
                await proc.wait()
            died = "" if proc.returncode is None else f" (it exited {proc.returncode})"
            raise BenchmarkError(f"{exc}\n  {name}'s stderr{died}:\n{_tail(log)}") from exc
        finally:
            early = proc.returncode
            if early is None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    proc.terminate()
                with anyio.move_on_after(10):
                    await proc.wait()
        if early is not None:
            raise BenchmarkError(f"{name} exited {early} while in use:\n{_tail(log)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)), 1)


async def _in_process(model: Path, abi: str, tokens: int) -> tuple[float, str]:
    params = ModelParams(max_new_tokens=tokens)
    async with await AsyncLLM.load(model, runtime="fake", abi=abi, params=params) as llm:
        t0 = time.perf_counter()
        n, text = 0, []
        async with llm.stream(TokenInput(ids=[1, 2, 3])) as s:
            async for chunk in s:
                n += len(chunk.token_ids)
                text.append(chunk.text)
        return n / (time.perf_counter() - t0), "".join(text)


class _Server:
    def __init__(self, proc: anyio.abc.Process, port: int, unix: str, http: int) -> None:
        self.proc, self.port, self.unix, self.http = proc, port, unix, http

    @asynccontextmanager
    async def rpc(self, transport: str) -> AsyncIterator[Rpc]:
        if transport == "ws":
            async with ws_connect(f"ws://127.0.0.1:{self.http}/ws", max_size=None) as ws:
                yield WsRpc(ws)
            return
        if transport == "tcp":
            stream: anyio.abc.ByteStream = await anyio.connect_tcp("127.0.0.1", self.port)
        else:
            stream = await anyio.connect_unix(self.unix)
        async with stream:
            yield LineRpc(stream)

    @asynccontextmanager
    async def http_client(self) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.http}",
            headers={"X-RKLLM-Session": "bench"},
            timeout=120,
        ) as client:
            yield client


async def _wait_http(port: int, path: str = "/health") -> None:
    with anyio.fail_after(30):
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    await client.get(f"http://127.0.0.1:{port}{path}")
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.05)


@asynccontextmanager
async def _serve(abi: str, models: Path, *, stamped: bool) -> AsyncIterator[_Server]:
    port, http, unix = _free_port(), _free_port(), str(models / f"rkllm-{abi}-{stamped}.sock")
    exe = (
        [sys.executable, "-m", "benchmarks.server_stamp"]
        if stamped
        else [str(Path(sys.executable).parent / "rkllm")]
    )
    cmd = [*exe, "serve", "--runtime", "fake", "--abi", abi, "--models-dir", str(models)]
    cmd += ["--tcp", f"127.0.0.1:{port}", "--unix", unix, "--http", f"127.0.0.1:{http}"]
    log = models / f"serve-{abi}-{stamped}.log"
    async with _child(f"rkllm serve (ABI {abi})", cmd, log) as proc:
        with _step(f"ABI {abi}: starting rkllm serve"):
            while not await anyio.Path(unix).exists():  # another process
                if proc.returncode is not None:
                    raise BenchmarkError(f"rkllm serve exited {proc.returncode}")
                await anyio.sleep(0.05)
            await _wait_http(http)
        yield _Server(proc, port, unix, http)


async def _run_on(server: _Server, transport: str, model: str, tokens: int) -> Run:
    if transport == "sse":
        async with server.http_client() as client:
            reply = await client.post("/rpc", json=_init_body(model, tokens))
            handle = reply.json()["result"]["handle"]
            try:
                return await sse_run(client, handle)
            finally:
                await client.post("/rpc", json=_destroy_body(handle))
    async with server.rpc(transport) as rpc:
        handle = await init(rpc, model, tokens)
        return await stream_run(rpc, handle)  # the connection's end destroys the handle


def _init_body(model: str, tokens: int) -> dict[str, Any]:
    param = {"model_path": model, "max_new_tokens": tokens}
    return {"jsonrpc": "2.0", "id": 1, "method": "rkllm_init", "params": {"param": param}}


def _destroy_body(handle: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 9, "method": "rkllm_destroy", "params": {"handle": handle}}


async def _pipe_floor(n: int = 300) -> list[float]:
    """Microseconds from another process's pipe write of its monotonic_ns to here."""
    code = (
        "import os,time\n"
        f"for _ in range({n}):\n"
        "    time.sleep(0.002); os.write(1, b'%d\\n' % time.monotonic_ns())\n"
    )
    lat: list[float] = []
    async with await anyio.open_process([sys.executable, "-c", code]) as proc:
        assert proc.stdout is not None
        buf = b""
        async for data in proc.stdout:
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lat.append((time.monotonic_ns() - int(line)) / 1e3)
    return lat


TRANSPORTS = ("tcp", "unix", "sse", "ws")


async def _latency(abi: str, models: Path, tokens: int, repeat: int) -> dict[str, Any]:
    r: dict[str, Any] = {}
    runs: dict[str, list[Run]] = {}
    async with _serve(abi, models, stamped=True) as server:
        for transport in TRANSPORTS:
            with _step(f"ABI {abi}: latency through {transport}"):
                await _run_on(server, transport, "paced.json", 20)  # warm-up
                runs[transport] = [
                    await _run_on(server, transport, "paced.json", tokens) for _ in range(repeat)
                ]
    port = _free_port()
    cmd = [sys.executable, "-m", "benchmarks.server_peer", "--port", str(port)]
    cmd += ["--model", str(models / "paced.json"), "--abi", abi]
    async with _child(f"the peer (ABI {abi})", cmd, models / f"peer-{abi}.log"):
        with _step(f"ABI {abi}: the peer's latency"):
            await _wait_http(port, "/")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                await peer_run(c, tokens)  # warm-up (loads the model)
                runs["peer"] = [await peer_run(c, tokens) for _ in range(repeat)]
    for name, rs in runs.items():
        lat = [x for run in rs for x in run.latencies_us]
        gaps = [float(b - a) / 1e6 for run in rs for a, b in pairwise(run.arrivals_ns)]
        # A client that lags gets merged notifications (one stamp, its first token's): fewer
        # samples, never fewer tokens.
        got = [run.tokens for run in rs]
        if got != [tokens] * repeat or not lat:
            raise BenchmarkError(f"{name} latency runs: {got} tokens of {tokens} each")
        r[f"{name}_latency_samples"] = len(lat)
        r[f"{name}_latency_p50_us"] = _pct(lat, 50)
        r[f"{name}_latency_p99_us"] = _pct(lat, 99)
        r[f"{name}_gap_p99_ms"] = round(float(np.percentile(gaps, 99)), 2)
    r["sse_over_peer_p50"] = round(r["sse_latency_p50_us"] / r["peer_latency_p50_us"], 3)
    return r


async def _bench_abi(abi: str, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {}
    tokens, repeat = args.tokens, args.repeat

    async def own() -> float:
        return (await _in_process(models / "bench.json", abi, tokens))[0]

    async def through(server: _Server, transport: str) -> float:
        run = await _run_on(server, transport, "bench.json", tokens)
        if run.tokens != tokens or run.text != run.reply_text:
            intact = run.text == run.reply_text
            raise BenchmarkError(f"{run.tokens} tokens of {tokens}, text intact: {intact}")
        return run.tokens / run.seconds

    with _step(f"ABI {abi}: the in-process reply"):
        _, expected = await _in_process(models / "bench.json", abi, args.concurrent_tokens)
    async with _serve(abi, models, stamped=False) as server:
        rates: dict[str, list[float]] = {name: [] for name in ("in_process", *TRANSPORTS)}
        for i in range(repeat):
            with _step(f"ABI {abi}: in-process async for, round {i + 1} of {repeat}"):
                rates["in_process"].append(await own())
            for transport in TRANSPORTS:
                with _step(f"ABI {abi}: through {transport}, round {i + 1} of {repeat}"):
                    rates[transport].append(await through(server, transport))
        own_rates = rates["in_process"]
        r["in_process_tokens_per_s"] = round(statistics.median(own_rates))
        for transport in TRANSPORTS:
            got = rates[transport]
            r[f"{transport}_tokens_per_s"] = round(statistics.median(got))
            ratios = [a / b for a, b in zip(got, own_rates, strict=True)]
            r[f"{transport}_ratio"] = round(statistics.median(ratios), 3)
        with _step(f"ABI {abi}: 64 concurrent clients"):
            r |= await concurrent(server.port, "bench.json", args.concurrent_tokens, expected)
        with _step(f"ABI {abi}: RSS over {args.rss_requests} requests"):
            r |= await rss_growth(server.port, server.proc.pid, "bench.json", args.rss_requests)
    r |= await _latency(abi, models, args.latency_tokens, repeat)
    with _step(f"ABI {abi}: wake-up floors"):
        eventfd, pipe = await wakeup_floor(), await _pipe_floor()
    r["floor_eventfd_p50_us"], r["floor_eventfd_p99_us"] = _pct(eventfd, 50), _pct(eventfd, 99)
    r["floor_pipe_p50_us"], r["floor_pipe_p99_us"] = _pct(pipe, 50), _pct(pipe, 99)
    return r


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of the module docstring, per ABI."""
    _STEP_S.set(args.step_timeout)
    abis = args.abi or list(ABIS)
    result: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("tokens", "repeat", "latency_tokens", "concurrent_tokens", "rss_requests")
    }
    with tempfile.TemporaryDirectory() as tmp:
        FakeModel(natural_end=False).write(Path(tmp) / "bench.json")
        FakeModel(natural_end=False, decode_ms=2).write(Path(tmp) / "paced.json")
        for abi in abis:
            result[abi] = await _bench_abi(abi, Path(tmp), args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument("--latency-tokens", type=int, default=250)
    parser.add_argument("--concurrent-tokens", type=int, default=2_000)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--abi", choices=ABIS, action="append", help="default: both")
    parser.add_argument(
        "--step-timeout", type=float, default=STEP_S, help="seconds one step may take"
    )
    args = parser.parse_args()
    os.environ.setdefault("RKLLM_FAKE_QUIET", "1")  # the in-process baselines' banner
    try:
        result = anyio.run(run, args)
    except BaseException as exc:  # every failure is reported, then exit 1
        traceback.print_exc()
        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for error in errors:
            print(f"benchmarks.server: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(result))
        return
    for abi in args.abi or ABIS:
        for key, value in result[abi].items():
            print(
                f"{abi:>4}  {key:<28} {value:>12,}"
                if isinstance(value, int)
                else f"{abi:>4}  {key:<28} {value:>12}"
            )


if __name__ == "__main__":
    main()
