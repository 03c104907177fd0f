"""Logits and last-hidden-layer modes, buffer poisoning, and callback return 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import ModelFactory
from .driver import FINISH, HIDDEN, LOGITS, NORMAL, Driver, Event, hidden_formula, logits_formula


def test_logits_mode_delivers_every_prefill_row(drv: Driver, model: ModelFactory) -> None:
    """GET_LOGITS: one NORMAL callback with num_tokens x vocab floats, then FINISH, no text."""
    h = drv.init(model(vocab_size=4096))
    run = h.run("score this", mode=LOGITS)
    assert [e.state for e in run.events] == [NORMAL, FINISH]
    item = run.events[0].items[0]
    n = h.last_input()["inputs"][0]["prefill_tokens"]
    assert item.text == b""
    assert item.hidden is None
    assert item.logits is not None
    assert item.logits.shape == (n, 4096)
    np.testing.assert_array_equal(item.logits, logits_formula(0, n, 4096))
    assert run.terminal.items[0].perf["generate_tokens"] == 0


def test_hidden_mode_delivers_hidden_states(drv: Driver, model: ModelFactory) -> None:
    """GET_LAST_HIDDEN_LAYER: num_tokens x hidden_size floats with the documented values."""
    h = drv.init(model(hidden_size=24))
    run = h.run("embed me", mode=HIDDEN)
    item = run.events[0].items[0]
    n = h.last_input()["inputs"][0]["prefill_tokens"]
    assert item.logits is None
    assert item.hidden is not None
    np.testing.assert_array_equal(item.hidden, hidden_formula(0, n, 24))


def test_rows_follow_kv_positions_with_history(drv: Driver, model: ModelFactory) -> None:
    """With keep_history the second run's rows start at the cache position it extends."""
    h = drv.init(model(vocab_size=512))
    h.run("first", mode=LOGITS, keep_history=1)
    start = h.kv_sizes()[0]
    run = h.run("second", mode=LOGITS, keep_history=1)
    rows = run.events[0].items[0].logits
    assert rows is not None
    np.testing.assert_array_equal(rows, logits_formula(start, rows.shape[0], 512))


def test_full_vocabulary_logits(drv: Driver, model: ModelFactory) -> None:
    """The default vocabulary (151,936) is delivered whole."""
    h = drv.init(model(vocab_size=151936))
    rows = h.run("hi", mode=LOGITS).events[0].items[0].logits
    assert rows is not None
    assert rows.shape[1] == 151936
    np.testing.assert_array_equal(rows[-1], logits_formula(rows.shape[0] - 1, 1, 151936)[0])


def test_text_and_arrays_are_poisoned_after_each_callback(drv: Driver, model: ModelFactory) -> None:
    """A pointer kept past its callback reads poison ('~' text, NaN floats), never stale data."""
    kept: list[tuple[object, object]] = []

    def keep_raw(_i: int, e: Event) -> int:
        r = e.raw[0]
        kept.append((r.text, r.logits.logits))
        return 0

    h = drv.init(model(vocab_size=256), reply=keep_raw, retain=True)
    h.run("poison check")
    text_ptr = kept[0][0]
    assert drv.ffi.string(text_ptr).startswith(b"~~~~")
    h.run("poison check", mode=LOGITS)
    logits_ptr = kept[-2][1]
    floats = np.frombuffer(drv.ffi.buffer(logits_ptr, 4 * 256), dtype=np.float32)
    assert np.isnan(floats).all()


def test_return_2_releases_the_output_buffer_on_13(drv: Driver, model: ModelFactory) -> None:
    """1.3: returning 2 frees the logits buffer at once (counted); the run still finishes."""
    if drv.abi != "1.3":
        pytest.skip("callback return value 2 is 1.3 behaviour")
    h = drv.init(model(vocab_size=1024), reply=lambda i, e: 2 if e.state == NORMAL else 0)
    before = drv.stats()["buffer_releases"]
    run = h.run("release", mode=LOGITS)
    assert [e.state for e in run.events] == [NORMAL, FINISH]
    assert drv.stats()["buffer_releases"] == before + 1
    again = h.run("release", mode=LOGITS)
    assert again.events[0].items[0].logits is not None
    assert not math.isnan(float(again.events[0].items[0].logits[0, 0]))


def test_return_2_just_continues_on_12(drv: Driver, model: ModelFactory) -> None:
    """1.2 knows only 0 and 1: 2 continues the run like 0."""
    if drv.abi != "1.2":
        pytest.skip("1.2 behaviour")
    h = drv.init(model(natural_end=False), max_new_tokens=5, reply=lambda i, e: 2)
    before = drv.stats()["buffer_releases"]
    run = h.run("x")
    assert len(run.tokens) == 5
    assert drv.stats()["buffer_releases"] == before
