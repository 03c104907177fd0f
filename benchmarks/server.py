"""Tokens per second through the proxy's transports, against the in-process rate, one run.

    python -m benchmarks.server            # a table
    python -m benchmarks.server --json     # one JSON object

The proxy runs as a separate process (``rkllm serve`` on the fake runtime, ``decode_ms`` 0),
the client here: it inits a handle, runs one generation of ``--tokens`` tokens and reads
every streamed notification and the response, parsing each line as JSON (what any client
must do). Figures are medians of ``--repeat`` runs per ABI:

- in_process_tokens_per_s: ``async for`` over ``AsyncLLM.stream`` in this process.
- tcp / unix_tokens_per_s: the same run through ``rkllm serve`` over TCP / a Unix socket;
  ``*_ratio`` is that over the in-process rate (design target >= 0.3).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from rkllm_sdk import AsyncLLM, ModelParams, TokenInput
from rkllm_sdk._ffi import ABIS
from rkllm_sdk.testing import FakeModel

PROMPT = {"input_type": "RKLLM_INPUT_TOKEN", "token_input": {"input_ids": [1, 2, 3], "n_tokens": 3}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _in_process(model: Path, abi: str, tokens: int) -> float:
    params = ModelParams(max_new_tokens=tokens)
    async with await AsyncLLM.load(model, runtime="fake", abi=abi, params=params) as llm:
        t0 = time.perf_counter()
        n = 0
        async with llm.stream(TokenInput(ids=[1, 2, 3])) as s:
            async for chunk in s:
                n += len(chunk.token_ids)
        return n / (time.perf_counter() - t0)


async def _through(stream: anyio.abc.ByteStream, model: str, tokens: int) -> float:
    buf = b""

    async def send(msg: dict[str, Any]) -> None:
        await stream.send(json.dumps(msg).encode() + b"\n")

    async def replies() -> Any:
        nonlocal buf
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield json.loads(line)
            buf += await stream.receive(1 << 16)

    messages = replies()
    param = {"model_path": model, "max_new_tokens": tokens}
    await send({"jsonrpc": "2.0", "id": 1, "method": "rkllm_init", "params": {"param": param}})
    handle = (await anext(messages))["result"]["handle"]
    infer = {"mode": "RKLLM_INFER_GENERATE", "keep_history": 0}
    run = {"handle": handle, "rkllm_input": PROMPT, "rkllm_infer_params": infer}
    t0 = time.perf_counter()
    await send({"jsonrpc": "2.0", "id": 2, "method": "rkllm_run", "params": run})
    n = 0
    async for msg in messages:
        if msg.get("method") == "rkllm_result":
            n += len(msg["params"].get("token_ids") or [msg["params"]["token_id"]])
        elif msg.get("id") == 2:
            if "error" in msg:
                raise RuntimeError(f"the run failed: {msg['error']}")
            break
    rate = n / (time.perf_counter() - t0)
    await send({"jsonrpc": "2.0", "id": 3, "method": "rkllm_destroy", "params": {"handle": handle}})
    await anext(messages)
    return rate


async def _median(fn: Callable[[], Awaitable[float]], repeat: int) -> float:
    return statistics.median([await fn() for _ in range(repeat)])


async def _bench_abi(abi: str, models: Path, tokens: int, repeat: int) -> dict[str, float]:
    port, sock = _free_port(), str(models / f"rkllm-{abi}.sock")
    rkllm = Path(sys.executable).parent / "rkllm"
    cmd = [str(rkllm), "serve", "--runtime", "fake", "--abi", abi, "--models-dir", str(models)]
    cmd += ["--tcp", f"127.0.0.1:{port}", "--unix", sock]
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    async with await anyio.open_process(cmd, env=env, stderr=subprocess.DEVNULL) as proc:
        try:
            with anyio.fail_after(30):
                while not await anyio.Path(sock).exists():  # noqa: ASYNC110  # another process
                    await anyio.sleep(0.05)

            async def tcp() -> float:
                async with await anyio.connect_tcp("127.0.0.1", port) as s:
                    return await _through(s, "bench.json", tokens)

            async def unix() -> float:
                async with await anyio.connect_unix(sock) as s:
                    return await _through(s, "bench.json", tokens)

            own = await _median(lambda: _in_process(models / "bench.json", abi, tokens), repeat)
            r: dict[str, float] = {"in_process_tokens_per_s": round(own)}
            for name, fn in (("tcp", tcp), ("unix", unix)):
                rate = await _median(fn, repeat)
                r[f"{name}_tokens_per_s"] = round(rate)
                r[f"{name}_ratio"] = round(rate / own, 3)
            return r
        finally:
            proc.terminate()


async def run(tokens: int, repeat: int, abis: list[str]) -> dict[str, Any]:
    """Every figure of the module docstring, per ABI."""
    result: dict[str, Any] = {"tokens": tokens, "repeat": repeat}
    with tempfile.TemporaryDirectory() as tmp:
        FakeModel(natural_end=False).write(Path(tmp) / "bench.json")
        for abi in abis:
            result[abi] = await _bench_abi(abi, Path(tmp), tokens, repeat)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument("--abi", choices=ABIS, action="append", help="default: both")
    args = parser.parse_args()
    result = anyio.run(run, args.tokens, args.repeat, args.abi or list(ABIS))
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
