"""KV cache: history, clearing (full, keeping the system prompt, ranged), sizes, shifting."""

from __future__ import annotations

from .conftest import ModelFactory
from .driver import ERROR, Driver, reference_pieces


def clear(
    drv: Driver, h: object, keep_system: int = 0, ranges: list[tuple[int, int]] | None = None
) -> int:
    if ranges is None:
        return int(drv.lib.rkllm_clear_kv_cache(h.ptr, keep_system, drv.ffi.NULL, drv.ffi.NULL))
    start = drv.ffi.new("int[]", [r[0] for r in ranges])
    end = drv.ffi.new("int[]", [r[1] for r in ranges])
    return int(drv.lib.rkllm_clear_kv_cache(h.ptr, keep_system, start, end))


def test_keep_history_accumulates_prefill_and_generated(drv: Driver, model: ModelFactory) -> None:
    """keep_history=1: the cache grows by each run's prefill plus its generated tokens."""
    h = drv.init(model())
    assert h.kv_sizes() == [0]
    r1 = h.run("one", keep_history=1)
    p1 = r1.terminal.items[0].perf
    assert h.kv_sizes() == [p1["prefill_tokens"] + p1["generate_tokens"]]
    r2 = h.run("two", keep_history=1)
    p2 = r2.terminal.items[0].perf
    total = (
        p1["prefill_tokens"] + p1["generate_tokens"] + p2["prefill_tokens"] + p2["generate_tokens"]
    )
    assert h.kv_sizes() == [total]


def test_single_turn_runs_leave_the_cache_empty(drv: Driver, model: ModelFactory) -> None:
    """keep_history=0 discards the history: before the run and after it."""
    h = drv.init(model())
    h.run("one", keep_history=1)
    assert h.kv_sizes()[0] > 0
    h.run("two", keep_history=0)
    assert h.kv_sizes() == [0]
    assert h.last_input()["inputs"][0]["templated"].startswith("<|im_start|>system")


def test_full_clear_with_and_without_the_system_prompt(drv: Driver, model: ModelFactory) -> None:
    """Clearing keeps exactly the system prompt's tokens when asked, else empties the cache."""
    h = drv.init(model())
    h.run("hello", keep_history=1)
    sys_tokens = len(
        reference_pieces("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    )
    assert clear(drv, h, keep_system=1) == 0
    assert h.kv_sizes() == [sys_tokens]
    h.run("again", keep_history=1)
    assert not h.last_input()["inputs"][0]["templated"].startswith("<|im_start|>system")
    assert clear(drv, h, keep_system=0) == 0
    assert h.kv_sizes() == [0]


def test_ranged_clear_needs_a_paused_single_turn_run(drv: Driver, model: ModelFactory) -> None:
    """A range is refused unless the last run paused with keep_history=0; then it removes it."""
    pause_at: list[int] = []  # callback index (within the run) that returns 1
    h = drv.init(
        model(natural_end=False),
        reply=lambda i, e: 1 if pause_at and i - pause_at[1] == pause_at[0] else 0,
    )

    def run(text: str, keep_history: int, pause: int | None) -> None:
        pause_at[:] = [pause, len(h.rec.events)] if pause is not None else []
        h.run(text, keep_history=keep_history)

    run("finished turn", 1, None)
    assert clear(drv, h, ranges=[(0, 2)]) == -1  # not paused
    run("paused multi-turn", 1, 2)
    assert clear(drv, h, ranges=[(0, 2)]) == -1  # paused, but keep_history=1
    assert clear(drv, h) == 0
    run("paused single turn", 0, 2)
    n = h.kv_sizes()[0]
    assert n > 5
    assert clear(drv, h, ranges=[(2, 5)]) == 0
    assert h.kv_sizes() == [n - 3]


def test_ranged_clear_validates_the_range(drv: Driver, model: ModelFactory) -> None:
    """Ranges outside [0, size], reversed ranges, or one NULL array are refused."""
    h = drv.init(model(natural_end=False), reply=lambda i, e: 1 if i == 0 else 0)
    h.run("x", keep_history=0)
    n = h.kv_sizes()[0]
    assert clear(drv, h, ranges=[(0, n + 1)]) == -1
    assert clear(drv, h, ranges=[(3, 2)]) == -1
    assert clear(drv, h, ranges=[(-1, 2)]) == -1
    one = drv.ffi.new("int[]", [0])
    assert drv.lib.rkllm_clear_kv_cache(h.ptr, 0, one, drv.ffi.NULL) == -1
    assert h.kv_sizes() == [n]


def test_paused_single_turn_run_is_resumed_by_the_next_run(
    drv: Driver, model: ModelFactory
) -> None:
    """After a pause the cache is kept even with keep_history=0, and the next run extends it."""
    h = drv.init(model(natural_end=False), reply=lambda i, e: 1 if i == 1 else 0)
    h.run("first", keep_history=0)
    n = h.kv_sizes()[0]
    assert n > 0
    h.run("continue", keep_history=0)
    assert h.last_input()["inputs"][0]["templated"].startswith("<|im_start|>user\ncontinue")
    assert h.kv_sizes() == [0]  # that one finished normally: single-turn history discarded


def test_context_overflow_shifts_the_window_keeping_n_keep(
    drv: Driver, model: ModelFactory
) -> None:
    """Generating past max_context_len drops old tokens after the first n_keep, and goes on."""
    h = drv.init(model(natural_end=False), max_context_len=64, n_keep=4, max_new_tokens=200)
    before = drv.stats()["kv_shifts"]
    run = h.run("x", keep_history=1)
    assert run.rc == 0
    assert len(run.tokens) == 200
    assert drv.stats()["kv_shifts"] > before
    assert 0 < h.kv_sizes()[0] <= 64


def test_input_longer_than_the_context_fails(drv: Driver, model: ModelFactory) -> None:
    """A prompt that cannot fit max_context_len ends the run with ERROR."""
    h = drv.init(model(), max_context_len=16)
    run = h.run("this prompt is much too long for a sixteen token context window")
    assert run.rc == -1
    assert [e.state for e in run.events] == [ERROR]


def test_kv_size_needs_an_output_array(drv: Driver, model: ModelFactory) -> None:
    """rkllm_get_kv_cache_size(NULL) is refused."""
    h = drv.init(model())
    assert drv.lib.rkllm_get_kv_cache_size(h.ptr, drv.ffi.NULL) == -1
