"""abort() on the client: what each kind of call gives when its run is aborted."""

from __future__ import annotations

import contextlib

import anyio
import pytest
from anyio import wait_all_tasks_blocked

import rkllm_sdk as rk
from rkllm_sdk import _native as native
from rkllm_sdk.llm import handle_core
from rkllm_sdk.stream import open_stream

from .conftest import LoadLLM

pytestmark = pytest.mark.anyio


async def _abort_when_running(llm: rk.AsyncLLM) -> None:
    # The caller's task blocks on the run's events once the run has started.
    await wait_all_tasks_blocked()
    llm.abort()


async def _aborted(llm: rk.AsyncLLM, method: str) -> BaseException | None:
    error = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_abort_when_running, llm)
        try:
            await getattr(llm, method)("a prompt of several tokens")
        except rk.RKLLMError as exc:
            error = exc
    return error


async def test_generate_ended_by_abort_returns_with_finish_reason_abort(load: LoadLLM) -> None:
    """generate() stopped by llm.abort() returns what was produced, finish_reason "abort"."""
    full = await (await load()).generate("x")
    llm = await load(faults="hang_after=3")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_abort_when_running, llm)
        gen = await llm.generate("x")
    assert gen.finish_reason == "abort"
    n = len(gen.token_ids)
    assert n <= 3 and gen.token_ids == full.token_ids[:n]
    assert full.text.startswith(gen.text)
    assert llm.metrics().calls_ok == 1 and llm.metrics().calls_failed == 0


@pytest.mark.parametrize("method", ["logits", "hidden_states"])
async def test_aborted_array_calls_raise_aborted_error(load: LoadLLM, method: str) -> None:
    """logits() / hidden_states() have no result when aborted: AbortedError, counted as a
    failed call of that type; the handle serves the next call."""
    llm = await load(prefill_ms=100)
    error = await _aborted(llm, method)
    assert isinstance(error, rk.AbortedError)
    snap = llm.metrics()
    assert snap.failures == {"AbortedError": 1} and snap.calls_ok == 0
    assert (await llm.generate(rk.TokenInput(ids=[1]))).finish_reason == "stop"


async def test_abort_without_a_run_does_nothing_and_on_a_closed_handle_raises(
    load: LoadLLM,
) -> None:
    """abort() with nothing running is a no-op; on a closed handle it raises ClosedError."""
    llm = await load()
    llm.abort()
    await llm.aclose()
    with pytest.raises(rk.ClosedError):
        llm.abort()


async def test_result_of_a_stream_closed_by_the_handle_raises_closed_error(load: LoadLLM) -> None:
    """A run cut short because its handle was closed has no result: ClosedError (documented),
    not a bare RuntimeError."""
    llm = await load(faults="hang_after=2")
    async with anyio.create_task_group() as tg:

        async def close_soon() -> None:
            await wait_all_tasks_blocked()
            await llm.aclose()

        tg.start_soon(close_soon)
        try:
            await llm.generate("x")
        except rk.ClosedError as exc:
            error: BaseException | None = exc
        else:
            error = None
    assert isinstance(error, rk.ClosedError)


async def _watchdog(handle: native.NativeHandle, done: anyio.Event, fired: list[bool]) -> None:
    # A test of a hang fails instead of hanging: if `done` is not set within 10 s, end the
    # run with the runtime's own abort (and say so in `fired`).
    with anyio.move_on_after(10):
        await done.wait()
        return
    fired.append(True)
    with contextlib.suppress(rk.RKLLMError):
        native.abort(handle)


async def test_abort_before_the_runtime_started_the_run_is_repeated_until_it_ends(
    load: LoadLLM,
) -> None:
    """llm.abort() while rkllm_run has not yet made its run running is a no-op in the runtime
    (an idle handle). A run that then makes no event (here hang_after=0: no token ever; on a
    board, a long prefill) would go on, with the stream's consumer waiting for events: the
    abort wakes it, and it repeats the abort until the run ends. generate() returns "abort".

    The fake's start_delay_ms fault holds the run back from running long enough for the abort
    to land in that window every time."""
    llm = await load(faults="hang_after=0,start_delay_ms=500")
    handle = handle_core(llm).native_handle
    done, fired = anyio.Event(), list[bool]()

    async def abort_soon() -> None:
        await wait_all_tasks_blocked()
        assert not native.is_running(handle)  # the first abort reaches an idle runtime
        llm.abort()

    async with anyio.create_task_group() as tg:
        tg.start_soon(_watchdog, handle, done, fired)
        tg.start_soon(abort_soon)
        gen = await llm.generate("x")
        done.set()
    assert not fired, "the abort was never repeated: the run was only ended by the watchdog"
    assert gen.finish_reason == "abort" and not gen.token_ids


async def test_closing_the_handle_before_the_runtime_started_the_run_does_not_hang(
    load: LoadLLM,
) -> None:
    """aclose() while rkllm_run has not yet made its run running: the close's first abort
    is a no-op in the runtime (an idle handle), and from then on the closed channel drops
    every event, so nothing would wake the stream's consumer, which holds the lock the close
    waits for before it repeats the abort. Closing the channel wakes that consumer: the
    close repeats the abort once the run is going, and returns.

    start_delay_ms holds the run back from running (as above); hang_after=2 keeps it going
    until it is aborted."""
    llm = await load(faults="hang_after=2,start_delay_ms=500")
    handle = handle_core(llm).native_handle
    done, fired = anyio.Event(), list[bool]()

    async def close_soon() -> None:
        await wait_all_tasks_blocked()
        assert not native.is_running(handle)  # the close's abort reaches an idle runtime
        await llm.aclose()
        done.set()

    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watchdog, handle, done, fired)
        tg.start_soon(close_soon)
        try:
            await llm.generate("x")
        except rk.ClosedError as exc:
            error = exc
    assert not fired, "the close never returned: the run was only ended by the watchdog"
    assert isinstance(error, rk.ClosedError)


async def test_runtime_is_a_public_info_object(load: LoadLLM) -> None:
    """llm.runtime describes the library (path, version, ABI, fake) without the hazmat."""
    llm = await load()
    info = llm.runtime
    assert isinstance(info, rk.RuntimeInfo)
    assert info.is_fake and info.abi in ("1.2", "1.3") and info.path.is_file()
    assert info.version == {"1.2": "1.2.3", "1.3": "1.3.0"}[info.abi]
    assert not hasattr(info, "lib") and not hasattr(info, "ffi")


async def test_abort_while_a_run_is_being_set_up_is_applied_when_it_starts(load: LoadLLM) -> None:
    """abort() that arrives while a turn holds the handle but has not started its run (a chat
    session configuring the template) is not lost: the run ends "abort"."""
    llm = await load(faults="hang_after=2")  # without the abort, the run would never end

    async def setup() -> None:
        llm.abort()

    stream = open_stream(handle_core(llm), "x", setup=setup)
    with anyio.fail_after(10):
        async with stream as s:
            gen = await s.final()
    assert gen.finish_reason == "abort" and len(gen.token_ids) <= 2
