"""Pause, abort, busy handles, destroy while running, bad handles, many handles, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ModelFactory
from .driver import ERROR, FINISH, NORMAL, WAITING, Driver, Handle


def start_async(h: Handle, text: str = "x", **infer: object) -> None:
    keep: list[object] = []
    inp = h.prompt(text, keep)
    h.rec.done.clear()
    h._keep.extend(keep)  # the runtime reads them on its thread
    assert h.run_input(inp, h.infer(h._keep, **infer), asynchronous=True) == 0


def wait_tokens(h: Handle, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.state in (NORMAL, WAITING) for e in h.rec.events) < n:
        assert time.monotonic() < deadline, "tokens did not arrive"
        time.sleep(0.001)


def test_pause_ends_the_run_with_finish(drv: Driver, model: ModelFactory) -> None:
    """Returning 1 stops after that token; one FINISH follows; the cache is kept."""
    h = drv.init(model(natural_end=False), reply=lambda i, e: 1 if i == 3 else 0)
    run = h.run("x", keep_history=0)
    assert [e.state for e in run.events][-1] == FINISH
    assert len(run.tokens) == 4
    assert h.kv_sizes()[0] > 0


def test_abort_from_another_thread_stops_within_one_token(drv: Driver, model: ModelFactory) -> None:
    """rkllm_abort ends a decoding run at once: FINISH, at most one more token, counted."""
    h = drv.init(model(decode_ms=5, natural_end=False), max_new_tokens=10_000)
    before = drv.stats()["aborts"]
    start_async(h)
    wait_tokens(h, 3)
    seen = len(h.rec.events)
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert h.rec.done.wait(5)
    assert h.rec.events[-1].state == FINISH
    assert len(h.rec.events) - 1 - seen <= 1
    assert drv.stats()["aborts"] == before + 1


def test_abort_during_prefill(drv: Driver, model: ModelFactory) -> None:
    """An abort while prefilling ends the run before any token, with FINISH."""
    h = drv.init(model(prefill_ms=10_000))  # minutes of prefill unless aborted
    start_async(h)
    time.sleep(0.02)
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert h.rec.done.wait(10)
    assert [e.state for e in h.rec.events] == [FINISH]


def test_abort_when_idle_is_a_no_op(drv: Driver, model: ModelFactory) -> None:
    """Aborting an idle handle succeeds and does not affect the next run."""
    h = drv.init(model())
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert len(h.run("x").tokens) > 0


def test_hang_fault_holds_until_aborted(drv: Driver, model: ModelFactory) -> None:
    """hang_after=N: N tokens, then nothing until rkllm_abort; then FINISH."""
    h = drv.init(model(faults="hang_after=2"))
    start_async(h)
    wait_tokens(h, 2)
    time.sleep(0.05)
    assert len(h.rec.events) == 2
    assert h.is_running()
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert h.rec.done.wait(5)
    assert h.rec.events[-1].state == FINISH


def test_second_run_on_a_busy_handle_is_refused(drv: Driver, model: ModelFactory) -> None:
    """While a run is in progress rkllm_run/rkllm_run_async and config calls return -1."""
    h = drv.init(model(faults="hang_after=1"))
    start_async(h)
    wait_tokens(h, 1)
    keep: list[object] = []
    assert h.run_input(h.prompt("y", keep), h.infer(keep)) == -1
    assert h.run_input(h.prompt("y", keep), h.infer(keep), asynchronous=True) == -1
    sizes = drv.ffi.new("int[]", 1)
    assert drv.lib.rkllm_get_kv_cache_size(h.ptr, sizes) == -1
    assert drv.lib.rkllm_clear_kv_cache(h.ptr, 0, drv.ffi.NULL, drv.ffi.NULL) == -1
    e = drv.ffi.new("char[]", b"")
    assert drv.lib.rkllm_set_chat_template(h.ptr, e, e, e) == -1
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert h.rec.done.wait(5)


def test_destroy_while_running_aborts_and_joins(drv: Driver, model: ModelFactory) -> None:
    """rkllm_destroy on a running handle stops the run, delivers FINISH, frees everything."""
    base = drv.stats()
    h = drv.init(model(decode_ms=5, natural_end=False), max_new_tokens=10_000)
    start_async(h)
    wait_tokens(h, 2)
    assert h.destroy() == 0
    assert h.rec.events[-1].state == FINISH
    n = len(h.rec.events)
    time.sleep(0.02)
    assert len(h.rec.events) == n  # nothing after destroy returned
    assert drv.stats()["live_allocations"] == base["live_allocations"]


def test_destroy_while_a_blocking_run_waits(drv: Driver, model: ModelFactory) -> None:
    """A thread blocked in rkllm_run returns when another thread destroys the handle."""
    h = drv.init(model(faults="hang_after=1"))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(h.run("x").rc))
    t.start()
    wait_tokens(h, 1)
    assert h.destroy() == 0
    t.join(5)
    assert result == [0]


def test_destroy_from_its_own_callback_is_refused(drv: Driver, model: ModelFactory) -> None:
    """The runtime thread cannot join itself: destroy inside the callback returns -1."""
    got: list[int] = []

    def reply(i: int, _e: object) -> int:
        if i == 0:
            got.append(int(drv.lib.rkllm_destroy(h.ptr)))
        return 0

    h = drv.init(model(), reply=reply)
    assert h.run("x").rc == 0
    assert got == [-1]


def test_every_function_rejects_null_and_destroyed_handles(
    drv: Driver, model: ModelFactory
) -> None:
    """NULL or destroyed handles: -1 from every function, no crash."""
    h = drv.init(model())
    dead = h.ptr
    assert h.destroy() == 0
    ffi, lib = drv.ffi, drv.lib
    keep: list[object] = []
    live = drv.init(model())
    inp, infer = live.prompt("x", keep), live.infer(keep)
    lora = ffi.new("RKLLMLoraAdapter*")
    cross = ffi.new("RKLLMCrossAttnParam*")
    s = ffi.new("char[]", b"x")
    sizes = ffi.new("int[]", 8)
    for bad in (ffi.NULL, dead):
        calls = [
            lib.rkllm_load_lora(bad, lora),
            lib.rkllm_load_prompt_cache(bad, s),
            lib.rkllm_release_prompt_cache(bad),
            lib.rkllm_destroy(bad),
            lib.rkllm_run(bad, inp, infer, ffi.NULL),
            lib.rkllm_run_async(bad, inp, infer, ffi.NULL),
            lib.rkllm_abort(bad),
            lib.rkllm_is_running(bad),
            lib.rkllm_clear_kv_cache(bad, 0, ffi.NULL, ffi.NULL),
            lib.rkllm_get_kv_cache_size(bad, sizes),
            lib.rkllm_set_chat_template(bad, s, s, s),
            lib.rkllm_set_function_tools(bad, s, s, s),
            lib.rkllm_set_cross_attn_params(bad, cross),
            lib.rkllm_fake_last_input(bad, ffi.NULL, 0),
        ]
        assert calls == [-1] * len(calls)


def test_many_handles_run_side_by_side(drv: Driver, model: ModelFactory) -> None:
    """Eight handles decode at once, each on its own runtime thread, each output intact."""
    m = model(decode_ms=1, natural_end=False)
    handles = [drv.init(m, max_new_tokens=30) for _ in range(8)]
    expected = [h.run(f"prompt {k}").text() for k, h in enumerate(handles)]
    for h in handles:
        h.rec.events.clear()
    for k, h in enumerate(handles):
        start_async(h, f"prompt {k}")
    for h in handles:
        assert h.rec.done.wait(10)
    texts = [b"".join(e.items[0].text or b"" for e in h.rec.events).decode() for h in handles]
    assert texts == expected
    threads = [{e.thread for e in h.rec.events} for h in handles]
    assert all(len(t) == 1 for t in threads)
    assert len(set().union(*threads)) == 8


def test_run_fail_fault(drv: Driver, model: ModelFactory) -> None:
    """run_fail=CODE: rkllm_run returns CODE before any callback."""
    h = drv.init(model(faults="run_fail=-3"))
    run = h.run("x")
    assert (run.rc, run.events) == (-3, [])


def test_error_after_fault_keeps_the_handle_usable(drv: Driver, model: ModelFactory) -> None:
    """After an injected ERROR the handle is idle and serves the next run (which fails again)."""
    h = drv.init(model(natural_end=False, faults="error_after=0"))
    run = h.run("x")
    assert (run.rc, [e.state for e in run.events]) == (-1, [ERROR])
    assert not h.is_running()
    assert h.run("x").rc == -1


def test_slow_prefill_fault(drv: Driver, model: ModelFactory) -> None:
    """slow_prefill_ms adds that much prefill time."""
    h = drv.init(model(faults="slow_prefill_ms=60"))
    perf = h.run("x").terminal.items[0].perf
    assert perf["prefill_time_ms"] >= 59


def test_millisecond_faults_take_fractions(drv: Driver, model: ModelFactory) -> None:
    """slow_prefill_ms and start_delay_ms take fractional milliseconds, as testing.Faults
    writes them (Faults(slow_prefill_ms=2.5) is "slow_prefill_ms=2.5"); rkllm_init refused
    them as not integers."""
    h = drv.init(model(faults="slow_prefill_ms=40.5,start_delay_ms=0.5"))
    perf = h.run("x").terminal.items[0].perf
    assert perf["prefill_time_ms"] >= 40


def test_start_delay_fault_holds_the_run_back_so_an_early_abort_is_lost(
    drv: Driver, model: ModelFactory
) -> None:
    """start_delay_ms=MS: rkllm_run takes MS before its run counts as running; an rkllm_abort
    meanwhile finds the handle idle and does nothing (the SDK must repeat it); one after the
    run has started ends it."""
    h = drv.init(model(faults="hang_after=1,start_delay_ms=300"))
    runs: list[object] = []
    t = threading.Thread(target=lambda: runs.append(h.run("x")))
    t.start()
    time.sleep(0.05)
    assert not h.is_running()
    assert drv.lib.rkllm_abort(h.ptr) == 0  # lost: the run has not started
    wait_tokens(h, 1)
    assert h.is_running()
    assert drv.lib.rkllm_abort(h.ptr) == 0
    t.join(5)
    assert not t.is_alive()
    assert [e.state for e in h.rec.events][-1] == FINISH


def test_env_faults_override_the_model_file(
    drv: Driver, model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RKLLM_FAKE_FAULTS is read at init, with the model file's syntax."""
    monkeypatch.setenv("RKLLM_FAKE_FAULTS", "run_fail=-9")
    h = drv.init(model())
    assert h.run("x").rc == -9


CRASH_SCRIPT = """
import sys
from tests.fake_runtime.driver import Driver
d = Driver(sys.argv[1])
h = d.init(sys.argv[2])
h.run("x")
print("survived")
"""


def test_crash_fault_aborts_the_process(abi: str, model: ModelFactory) -> None:
    """crash_after=N kills the process with SIGABRT after N tokens (for isolation tests)."""
    path = model(natural_end=False, faults="crash_after=2")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, abi, str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":handle_abort=0"},
    )
    assert proc.returncode == -signal.SIGABRT
    assert "survived" not in proc.stdout
    assert "injected fault: crash after 2 tokens" in proc.stderr
