"""Leaving a stream early, cancellation, closing, FIFO queueing, busy handles, failures."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _handle, _native
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.llm import open_handles

from ..conftest import ModelFactory
from .conftest import LoadLLM

pytestmark = pytest.mark.anyio


async def aborts(llm: rk.llm.AsyncLLM) -> int:
    return _native.fake_stats(load_runtime("fake", abi=llm.runtime.abi))["aborts"]


async def test_break_aborts_and_the_handle_serves_the_next_call(load: LoadLLM) -> None:
    """Breaking out of the loop aborts the run; the next request runs at once."""
    llm = await load(decode_ms=2, natural_end=False)
    before = await aborts(llm)
    async with llm.stream("long") as s:
        async for chunk in s:
            if chunk.seq == 2:
                break
    assert await aborts(llm) == before + 1
    assert not llm.is_running()
    gen = await llm.generate("next", max_new_tokens=3) if llm.runtime.abi == "1.3" else None
    if gen is not None:
        assert gen.finish_reason == "length"


async def test_timeout_mid_stream_aborts(load: LoadLLM) -> None:
    """A caller's timeout cancels the consumer; the run is aborted and cleaned up, and the
    stream has no result (AbortedError)."""
    llm = await load(faults="hang_after=2")
    with anyio.move_on_after(0.2) as scope:
        async with llm.stream("x") as s:
            async for _ in s:
                pass
    assert scope.cancelled_caught
    assert not llm.is_running()
    with pytest.raises(rk.AbortedError, match="closed before the run finished"):
        s.result()


async def test_cancel_during_prefill(load: LoadLLM) -> None:
    """Cancellation before the first token (a very long prefill) aborts the prefill."""
    llm = await load(prefill_ms=10_000)
    with anyio.move_on_after(0.1) as scope:
        await llm.generate("x")
    assert scope.cancelled_caught
    assert not llm.is_running()


async def test_exception_in_the_loop_aborts(load: LoadLLM) -> None:
    """An exception raised while iterating propagates after the run is aborted."""
    llm = await load(decode_ms=1, natural_end=False)

    async def consume() -> None:
        async with llm.stream("x") as s:
            async for _ in s:
                raise KeyError("boom")

    with pytest.raises(KeyError):
        await consume()
    assert not llm.is_running()


async def test_aclose_from_another_task(load: LoadLLM) -> None:
    """A stream closed from another task ends the consumer's loop cleanly."""
    llm = await load(faults="hang_after=3")
    seen: list[str] = []
    three = anyio.Event()
    async with llm.stream("x") as s, anyio.create_task_group() as tg:

        async def consume() -> None:
            async for chunk in s:
                seen.append(chunk.text)
                if len(seen) == 3:
                    three.set()

        tg.start_soon(consume)
        await three.wait()
        await s.aclose()
        await s.aclose()  # idempotent
    assert len(seen) == 3
    assert not llm.is_running()


async def test_pause_keeps_the_cache_for_the_next_run(load: LoadLLM) -> None:
    """pause() ends the run after the next token with the KV cache kept."""
    llm = await load(natural_end=False, decode_ms=1)
    async with llm.stream("x", keep_history=False) as s:
        async for chunk in s:
            if chunk.seq == 0:
                s.pause()
    assert s.result().finish_reason == "pause"
    assert (await llm.kv_cache_size())[0] > 0


async def test_fifo_queue_of_eight_callers(load: LoadLLM) -> None:
    """Eight concurrent callers on one handle are served one at a time, in arrival order."""
    llm = await load(
        decode_ms=1, script=[{"match": f"q{k}", "reply": f"answer {k}"} for k in range(8)]
    )
    finished: list[int] = []
    results: dict[int, str] = {}

    async def ask(k: int) -> None:
        gen = await llm.generate(f"q{k}")
        results[k] = gen.text
        finished.append(k)

    async with anyio.create_task_group() as tg:
        for k in range(8):
            tg.start_soon(ask, k)
            await anyio.sleep(0.005)  # arrive in order
    assert finished == list(range(8))
    assert results == {k: f"answer {k}" for k in range(8)}


async def test_wait_false_raises_busy(load: LoadLLM) -> None:
    """With a stream open, wait=False raises BusyError at once."""
    llm = await load(faults="hang_after=1")
    async with llm.stream("x") as s:
        async for _ in s:
            with pytest.raises(rk.BusyError):
                async with llm.stream("y", wait=False):
                    pass
            break


async def test_four_handles_stream_at_once(load: LoadLLM) -> None:
    """Several handles run side by side, each reply intact."""
    llms = [
        await load(decode_ms=1, script=[{"match": "x", "reply": f"reply of handle {k} 完了"}])
        for k in range(4)
    ]
    texts: dict[int, str] = {}

    async def run(k: int) -> None:
        texts[k] = (await llms[k].generate("x")).text

    async with anyio.create_task_group() as tg:
        for k in range(4):
            tg.start_soon(run, k)
    assert texts == {k: f"reply of handle {k} 完了" for k in range(4)}


async def test_error_mid_stream_keeps_what_was_generated(load: LoadLLM) -> None:
    """RKLLM_RUN_ERROR: earlier chunks arrive, then GenerationError with the partial text."""
    llm = await load(natural_end=False, faults="error_after=4")
    chunks: list[str] = []

    async def consume() -> None:
        async with llm.stream("x") as s:
            async for chunk in s:
                chunks.append(chunk.text)

    with pytest.raises(rk.GenerationError) as info:
        await consume()
    partial = info.value.generation
    assert partial is not None
    assert partial.finish_reason == "error"
    assert partial.text == "".join(chunks)
    assert len(partial.token_ids) == 4
    assert not llm.is_running()


async def test_run_refused_by_the_runtime(load: LoadLLM) -> None:
    """rkllm_run returning an error code is a GenerationError carrying that code."""
    llm = await load(faults="run_fail=-5")
    with pytest.raises(rk.GenerationError) as info:
        await llm.generate("x")
    assert info.value.code == -5


async def test_aclose_is_idempotent_and_fails_queued_callers(load: LoadLLM) -> None:
    """Closing aborts the running stream, fails queued callers, and later calls."""
    llm = await load(faults="hang_after=1")
    outcome: list[str] = []

    async def queued() -> None:
        try:
            await llm.generate("second")
        except rk.ClosedError:
            outcome.append("closed")

    async with anyio.create_task_group() as tg:

        async def first() -> None:
            async with llm.stream("first") as s:
                async for _ in s:
                    pass
            outcome.append(s.result().finish_reason if s.finished else "ended")

        tg.start_soon(first)
        await anyio.sleep(0.05)
        tg.start_soon(queued)
        await anyio.sleep(0.05)
        await llm.aclose()
        await llm.aclose()
    assert sorted(outcome) == ["abort", "closed"] or sorted(outcome) == ["closed", "ended"]
    assert llm.closed
    assert open_handles() == []
    with pytest.raises(rk.ClosedError):
        await llm.generate("x")


async def test_streams_are_entered_once_and_iterated_inside(load: LoadLLM) -> None:
    """Iterating before entering, or entering twice, is a usage error."""
    llm = await load()
    s = llm.stream("x")
    with pytest.raises(RuntimeError, match="enter the stream first"):
        await s.__anext__()
    async with s:
        await s.final()
    with pytest.raises(RuntimeError, match="only once"):
        await s.__aenter__()


async def test_aclose_with_an_unconsumed_stream(load: LoadLLM) -> None:
    """Closing the handle while a stream is open but not iterated does not deadlock."""
    llm = await load(faults="hang_after=1")
    s = llm.stream("x")
    await s.__aenter__()
    await llm.aclose()
    assert llm.closed
    await s.__aexit__(None, None, None)


async def test_concurrent_aclose_calls_both_wait(load: LoadLLM) -> None:
    """Two tasks closing the same stream both return only once it is closed."""
    llm = await load(faults="hang_after=1")
    returned: list[bool] = []
    async with llm.stream("x") as s:
        async for _ in s:
            break

        async def close() -> None:
            await s.aclose()
            returned.append(not llm.is_running())

        async with anyio.create_task_group() as tg:
            tg.start_soon(close)
            tg.start_soon(close)
    assert returned == [True, True]


async def test_stop_strings_need_a_single_batch(load: LoadLLM) -> None:
    """Stop strings with a batched handle are refused before the run starts."""
    llm = await load(rk.ModelParams(extend=rk.ExtendParams(n_batch=2)))
    with pytest.raises(rk.InvalidParamsError, match="single-batch"):
        async with llm.stream([rk.Prompt(text="a"), rk.Prompt(text="b")], stop=["x"]):
            pass
    assert (await llm.kv_cache_size()) == [0, 0]


EXIT_SCRIPT = """
import sys, anyio, rkllm_sdk as rk

async def main():
    llm = await rk.AsyncLLM.load(sys.argv[1], runtime="fake", abi=sys.argv[2])
    s = llm.stream("x")
    await s.__aenter__()   # a run left going, a handle never closed
    async for _ in s:
        break
    print("leaving", len(rk.open_handles()), flush=True)

anyio.run(main)
"""


def test_exit_with_open_handles_does_not_hang(abi: str, model: ModelFactory) -> None:
    """A process that forgets an open handle and a running stream still exits promptly."""
    path = model(faults="hang_after=2")
    env = {**os.environ, "RKLLM_FAKE_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(path), abi],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "leaving 1"


async def _cancel_soon(
    anyio_backend: str, fn: Callable[[], Awaitable[object]], delay: float
) -> None:
    """Run fn() and cancel it after `delay` s: asyncio's own task.cancel() (wait_for) on
    asyncio, which anyio's shields do not hold off, an anyio cancel scope on trio."""
    if anyio_backend == "asyncio":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fn(), delay)
    else:
        with anyio.move_on_after(delay):
            await fn()


async def _no_handle_left(deadline: float = 10) -> None:
    with anyio.fail_after(deadline):
        while open_handles():  # noqa: ASYNC110  # closing jobs finish in the background
            await anyio.sleep(0.001)


async def test_cancelled_stream_closes_never_wedge_the_handle(
    load: LoadLLM, anyio_backend: str
) -> None:
    """aclose() cancelled at random moments (0-2 ms), once or with a second aclose, and a
    consumer task cancelled twice inside `async with`: every run is aborted and the handle
    serves the next call, 100 times over."""
    rng = random.Random(11)
    llm = await load(faults="hang_after=3")  # every run needs its abort to end
    for i in range(100):
        if i % 3 == 2:  # a consumer task cancelled twice
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async with llm.stream("x") as s:
                        async for _ in s:
                            pass

                tg.start_soon(consume)
                await anyio.sleep(rng.random() * 0.002)
                tg.cancel_scope.cancel()
                tg.cancel_scope.cancel()
            continue
        s = llm.stream("x")
        await s.__aenter__()
        await _cancel_soon(anyio_backend, s.aclose, rng.random() * 0.002)
        if i % 2:
            with anyio.fail_after(10):
                await s.aclose()
    with anyio.fail_after(10):  # the handle still serves: a new run streams
        async with llm.stream("x") as s:
            first = await s.__anext__()
    assert first.seq == 0 and first.text


async def test_cancelled_handle_closes_still_destroy_the_handle(
    load: LoadLLM, anyio_backend: str, abi: str
) -> None:
    """AsyncLLM.aclose() cancelled at random moments, with a run going or not, with a
    second aclose() or none: the runtime handle is destroyed every time (100 handles)."""
    rng = random.Random(12)
    rt = load_runtime("fake", abi=abi)
    before = _native.fake_stats(rt)["live_handles"]
    llms = []
    for i in range(100):
        llm = await load(faults="hang_after=2")
        llms.append(llm)
        if i % 2:
            s = llm.stream("x")
            await s.__aenter__()
        await _cancel_soon(anyio_backend, llm.aclose, rng.random() * 0.002)
        if i % 4 < 2:
            with anyio.fail_after(10):
                await llm.aclose()
            assert llm.closed
    await _no_handle_left()
    assert _native.fake_stats(rt)["live_handles"] == before


async def test_a_handle_used_from_another_event_loop_fails_at_once(load: LoadLLM) -> None:
    """A handle used from a second thread's event loop (asyncio there) raises EventLoopError
    at once instead of hanging both loops; it still serves its own loop afterwards."""
    llm = await load()

    def other_loop() -> BaseException | None:
        async def use() -> None:
            await llm.generate("x")

        try:
            asyncio.run(use())
        except BaseException as exc:  # returned to the test
            return exc
        return None

    with anyio.fail_after(10):
        error = await anyio.to_thread.run_sync(other_loop)
    assert isinstance(error, rk.EventLoopError)
    assert "another event loop" in str(error)
    assert (await llm.generate("x")).finish_reason == "stop"


async def test_a_forgotten_handle_stays_listed_and_is_destroyed_at_exit(
    abi: str, model: ModelFactory, no_leaks: None
) -> None:
    """An AsyncLLM dropped without aclose() keeps its runtime handle (the model's NPU
    memory), so it stays in open_handles() by its model path until the exit-time cleanup
    destroys it."""
    rt = load_runtime("fake", abi=abi)
    before = _native.fake_stats(rt)["live_handles"]
    llm = await rk.AsyncLLM.load(model(), runtime="fake", abi=abi)
    path = llm.model_path
    del llm
    gc.collect()
    assert [(h.model_path, h.state) for h in open_handles()] == [(path, "idle")]
    assert _native.fake_stats(rt)["live_handles"] == before + 1
    _handle._close_all_at_exit()  # what atexit runs
    assert open_handles() == []
    assert _native.fake_stats(rt)["live_handles"] == before


async def test_cancelled_loads_leave_no_handle(
    abi: str, model: ModelFactory, no_leaks: None, anyio_backend: str
) -> None:
    """AsyncLLM.load() cancelled at random moments (0-3 ms: finding the runtime, in
    rkllm_init, after it), 100 times: whatever the init made is destroyed; a load that
    finished is closed by its caller."""
    rng = random.Random(13)
    path = model()
    loaded: list[rk.AsyncLLM] = []

    async def load() -> None:
        loaded.append(await rk.AsyncLLM.load(path, runtime="fake", abi=abi))

    for _ in range(100):
        await _cancel_soon(anyio_backend, load, rng.random() * 0.003)
    for llm in loaded:
        await llm.aclose()
    rt = load_runtime("fake", abi=abi)
    with anyio.fail_after(10):  # an init abandoned mid-way is destroyed when it returns
        while _native.fake_stats(rt)["live_handles"]:  # noqa: ASYNC110
            await anyio.sleep(0.001)
    assert open_handles() == []
