"""Measure the SDK's token path against its baselines, all in one run, on the fake runtime.

    python -m benchmarks            # a table
    python -m benchmarks --json     # one JSON object

Figures (fake at decode_ms = 0 unless stated; medians of --repeat runs):

- ceiling_c_tokens_per_s: the fake driven by a compiled no-op C callback
  (benchmarks/ceiling.c): the most any binding can get.
- baseline_pycallback_chunks_per_s: the fake through a plain cffi Python callback that
  hands each token to asyncio with call_soon_threadsafe, consumed with async for (what
  peers do).
- stream_chunks_per_s: ``async for`` over ``AsyncLLM.stream`` (the C bridge).
- busy_rate_ratio: decode_ms = 2; decode rate with a CPU-busy Python thread / idle rate
  (runtime's own perf). Reported for the SDK and for the Python-callback baseline.
- latency_p99_us: decode_ms = 2, idle loop: runtime callback -> chunk in user code.
  Its floor, latency_floor_p50_us / _p99_us: a thread writing an eventfd every 2 ms and a
  task woken by the loop (a reader registered once): what the OS and asyncio cost alone.
- loop_lag_idle_max_ms: the same ticker on an idle loop for as long (the machine's jitter).
- loop_lag_max_ms / loop_lag_p99_ms: lateness of a 1 ms ticker task while streaming at full
  rate (worst, and 99th percentile over every tick of every run).
- logits_bandwidth_ratio: logits of every token (vocab 151,936) delivered as numpy, bytes/s,
  over a plain numpy copy of the same bytes.
- rss_growth_mb: process RSS after 10,000 generate calls minus after a warm-up.
- fake_live_allocations_after_close / bridge_live_objects_after_close: what is left.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import cffi
import numpy as np

from rkllm_sdk import AsyncLLM, ModelParams, Prompt, TokenInput, TokenStream, _native
from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi import ABIS, cdef_source
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.llm import handle_core
from rkllm_sdk.models import InferMode, InferOptions
from rkllm_sdk.testing import FakeModel

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151936


def model_file(directory: Path, **fields: Any) -> Path:
    base: dict[str, Any] = {"name": "bench", "vocab_size": VOCAB, "hidden_size": 64}
    spec = FakeModel(**{**base, "natural_end": False, **fields})
    return spec.write(directory / f"bench-{abs(hash(repr(spec)))}.json")


# ---- baselines ----------------------------------------------------------------------------


def build_ceiling(abi: str, out: Path) -> Path:
    exe = out / f"ceiling-{abi}"
    lib = library_path(abi)
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-DRKLLM_ABI={abi.replace('.', '')}",
            f"-I{ROOT / 'fake_runtime' / 'include'}",
            str(ROOT / "benchmarks" / "ceiling.c"),
            str(lib),
            f"-Wl,-rpath,{lib.parent}",
            "-o",
            str(exe),
        ],
        check=True,
    )
    return exe


def ceiling_rate(exe: Path, model: Path, tokens: int) -> float:
    out = subprocess.run(
        [str(exe), str(model), str(tokens)], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out)
    assert result["tokens"] == tokens, result
    return float(result["tokens"] / result["seconds"])


class PyCallbackBaseline:
    """The design peers use: a cffi Python callback posting each token to asyncio."""

    def __init__(self, abi: str, model: Path, max_new_tokens: int) -> None:
        self.abi = abi
        self.ffi = cffi.FFI()
        self.ffi.cdef(cdef_source(abi))
        self.lib = cast(Any, self.ffi.dlopen(str(library_path(abi))))  # cffi libs are untyped
        self.on_token: Callable[[bytes | None, int], None] = lambda text, state: None
        self.callback = self.ffi.callback("LLMResultCallback", self._callback)
        self.keep = [
            self.ffi.new("char[]", str(model).encode()),
            self.ffi.new("char[]", b"user"),
            self.ffi.new("char[]", b"benchmark"),
        ]
        param: Any = self.ffi.new("RKLLMParam*", self.lib.rkllm_createDefaultParam())
        param.model_path, param.max_new_tokens, param.max_context_len = (
            self.keep[0],
            max_new_tokens,
            4096,
        )
        handle: Any = self.ffi.new("LLMHandle*")
        cbs = (
            self.callback
            if abi == "1.2"
            else self.ffi.new("RKLLMCallback*", {"result_callback": self.callback})
        )
        init: Any = self.lib.rkllm_init
        assert init(handle, param, cbs) == 0
        self.handle = handle[0]
        self.perf: dict[str, float] = {}

    def _callback(self, result: Any, _ud: Any, state: int) -> int:
        if state in (0, 1):
            self.on_token(self.ffi.string(result.text), state)  # type: ignore[arg-type]
        else:
            p = result.perf
            self.perf = {
                "generate_tokens": p.generate_tokens,
                "generate_time_ms": p.generate_time_ms,
            }
            self.on_token(None, state)
        return 0

    def run(self) -> int:
        inp: Any = self.ffi.new("RKLLMInput*")
        inp.role, inp.input_type, inp.prompt_input = self.keep[1], 0, self.keep[2]
        return int(
            self.lib.rkllm_run(self.handle, inp, self.ffi.new("RKLLMInferParam*"), self.ffi.NULL)
        )

    async def stream(self) -> int:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def post(text: bytes | None, _state: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        self.on_token = post
        run = loop.run_in_executor(None, self.run)
        chunks = 0
        while await queue.get() is not None:
            chunks += 1
        await run
        return chunks

    def close(self) -> None:
        self.lib.rkllm_destroy(self.handle)


# ---- measurements -------------------------------------------------------------------------


@contextmanager
def busy_thread() -> Iterator[None]:
    """A thread keeping the interpreter busy with pure-Python work (it holds the GIL)."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(10_000):
                x += i * i

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


async def stream_rate(llm: AsyncLLM) -> tuple[float, Any]:
    t0 = time.perf_counter()
    chunks = 0
    async with llm.stream("benchmark") as s:
        async for _ in s:
            chunks += 1
    return chunks / (time.perf_counter() - t0), s.result()


async def loop_lag(llm: AsyncLLM | None, seconds: float = 0.0) -> list[float]:
    """Lateness (ms) of every tick of a 1 ms ticker task while a full-rate stream runs
    (or, without ``llm``, on an idle loop for ``seconds``)."""
    lags: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await anyio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1e3)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        if llm is not None:
            await stream_rate(llm)
        else:
            await anyio.sleep(seconds)
        done.set()
    return lags


async def wakeup_floor(n: int = 300, period_s: float = 0.002) -> list[float]:
    """Microseconds from a thread's eventfd write to a task woken by the loop (no SDK).

    One sample per write: writes that piled up while the loop was late (an eventfd adds
    them up and wakes once) each count from their own stamp.
    """
    loop = asyncio.get_running_loop()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    stamps: list[int] = []
    waiter: asyncio.Future[None] | None = None
    received = 0  # writes read so far

    def ready() -> None:
        nonlocal received
        received += os.eventfd_read(fd)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def writer() -> None:
        for _ in range(n):
            time.sleep(period_s)
            stamps.append(time.monotonic_ns())
            os.eventfd_write(fd, 1)

    lat: list[float] = []
    loop.add_reader(fd, ready)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # Counting wake-ups instead waited forever once two writes had been read as one.
        while received < n:
            waiter = loop.create_future()
            await waiter
            now = time.monotonic_ns()
            lat += [(now - stamp) / 1e3 for stamp in stamps[len(lat) : received]]
    finally:
        loop.remove_reader(fd)
        thread.join()
        os.close(fd)
    return lat


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(  # noqa: PLR0915  # one linear script of measurements
    abi: str, tmp: Path, tokens: int, repeat: int, calls: int
) -> dict[str, Any]:
    r: dict[str, Any] = {}
    fast = model_file(tmp)
    exe = build_ceiling(abi, tmp)
    r["ceiling_c_tokens_per_s"] = round(
        statistics.median(ceiling_rate(exe, fast, tokens) for _ in range(repeat))
    )

    base = PyCallbackBaseline(abi, fast, tokens)
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = await base.stream()
        rates.append(n / (time.perf_counter() - t0))
    base.close()
    r["baseline_pycallback_chunks_per_s"] = round(statistics.median(rates))

    async with await AsyncLLM.load(
        fast,
        runtime="fake",
        abi=abi,
        params=ModelParams(max_new_tokens=tokens, max_context_len=4096),
    ) as llm:
        r["stream_chunks_per_s"] = round(
            statistics.median([(await stream_rate(llm))[0] for _ in range(repeat)])
        )
        t0 = time.perf_counter()
        lags = [lag for _ in range(repeat) for lag in await loop_lag(llm)]
        r["loop_lag_max_ms"] = round(max(lags), 2)
        r["loop_lag_p99_ms"] = round(float(np.percentile(lags, 99)), 2)
        idle_lags = await loop_lag(None, time.perf_counter() - t0)
        r["loop_lag_idle_max_ms"] = round(max(idle_lags), 2)
    r["stream_vs_baseline"] = round(
        r["stream_chunks_per_s"] / r["baseline_pycallback_chunks_per_s"], 2
    )
    r["stream_vs_ceiling"] = round(r["stream_chunks_per_s"] / r["ceiling_c_tokens_per_s"], 3)

    # Decode rate at 2 ms/token, idle vs a CPU-busy interpreter (runtime's own timing).
    paced = model_file(tmp, decode_ms=2)
    async with await AsyncLLM.load(
        paced, runtime="fake", abi=abi, params=ModelParams(max_new_tokens=300)
    ) as llm:
        idle_perf = (await llm.generate("x")).perf
        with busy_thread():
            busy_perf = (await llm.generate("x")).perf
        assert idle_perf is not None and busy_perf is not None
        idle, busy = idle_perf.generate_tokens_per_s, busy_perf.generate_tokens_per_s
        # The stream's private measuring hooks (benchmarks only).
        core = handle_core(llm)
        stream = TokenStream(core, Prompt(text="x"), InferOptions(), measure_latency=True)
        async with stream as s:
            async for _ in s:
                pass
        lat = np.array(s._latencies_ns) / 1e3
    r["decode_rate_idle_tok_s"] = round(idle, 1)
    r["busy_rate_ratio"] = round(busy / idle, 3)
    r["latency_p50_us"] = round(float(np.percentile(lat, 50)), 1)
    r["latency_p99_us"] = round(float(np.percentile(lat, 99)), 1)
    floor = await wakeup_floor()
    r["latency_floor_p50_us"] = round(float(np.percentile(floor, 50)), 1)
    r["latency_floor_p99_us"] = round(float(np.percentile(floor, 99)), 1)

    base = PyCallbackBaseline(abi, paced, 300)
    await base.stream()
    b_idle = base.perf["generate_tokens"] / base.perf["generate_time_ms"] * 1e3
    with busy_thread():
        await base.stream()
    b_busy = base.perf["generate_tokens"] / base.perf["generate_time_ms"] * 1e3
    base.close()
    r["baseline_busy_rate_ratio"] = round(b_busy / b_idle, 3)

    # Logits of every token of a 64-token input, vocabulary 151,936 (39 MB per call): the
    # bytes over the time from the runtime's callback to the array in the caller's hands
    # (the fake's own computing of the values is not the SDK's cost), against numpy copying
    # the same bytes.
    async with await AsyncLLM.load(fast, runtime="fake", abi=abi) as llm:
        ids = TokenInput(ids=np.arange(64, dtype=np.int32))
        got, copy = [], []
        for _ in range(repeat + 1):
            stream = TokenStream(
                handle_core(llm),
                ids,
                InferOptions(mode=InferMode.GET_LOGITS),
                array_rows=2,
                measure_latency=True,
            )
            async with stream as s:
                await s.final()
                arr = s._arrays(0)
            received = time.monotonic_ns()
            assert s._decoder is not None and s._decoder.array_callback_ns
            got.append(arr.nbytes / ((received - s._decoder.array_callback_ns[0]) / 1e9))
            t0 = time.perf_counter()
            dup = arr.copy()
            copy.append(dup.nbytes / (time.perf_counter() - t0))
            del arr, dup
        got, copy = got[1:], copy[1:]  # the first run warms up allocations
        del s, stream  # the last stream still holds its array
    r["logits_mb_per_s"] = round(statistics.median(got) / 1e6)
    r["numpy_copy_mb_per_s"] = round(statistics.median(copy) / 1e6)
    r["logits_bandwidth_ratio"] = round(statistics.median(got) / statistics.median(copy), 3)

    # Memory over many calls.
    small = model_file(tmp, replies={"ping": "pong"}, natural_end=True)
    async with await AsyncLLM.load(small, runtime="fake", abi=abi) as llm:
        for _ in range(200):
            await llm.generate("ping")
        gc.collect()
        before = rss_mb()
        for _ in range(calls):
            await llm.generate("ping")
        gc.collect()
        r["rss_growth_mb"] = round(rss_mb() - before, 2)
        r["generate_calls"] = calls
    gc.collect()
    rt = load_runtime("fake", abi=abi)
    r["fake_live_allocations_after_close"] = _native.fake_stats(rt)["live_allocations"]
    r["bridge_live_objects_after_close"] = _native.bridge_live_objects(rt)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rkllm-sdk benchmarks")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--calls", type=int, default=10_000, help="generate calls for rss_growth_mb"
    )
    parser.add_argument("--abi", choices=ABIS, action="append", help="default: both")
    args = parser.parse_args(argv)
    os.environ["RKLLM_FAKE_QUIET"] = "1"
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "tokens": args.tokens,
        "repeat": args.repeat,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for abi in args.abi or ABIS:
            results[abi] = anyio.run(measure, abi, Path(tmp), args.tokens, args.repeat, args.calls)
    if args.json:
        print(json.dumps(results))
        return 0
    abis = [a for a in ABIS if a in results]
    machine = results["machine"]
    print(f"{args.tokens} tokens per streaming run, median of {args.repeat}; machine {machine}")
    for key in results[abis[0]]:
        print(f"{key:<36}" + "".join(f"{results[a][key]!s:>16}" for a in abis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
