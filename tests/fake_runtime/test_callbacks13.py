"""Runtime 1.3 tokenizer and embedding callbacks, for models without their own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from .conftest import ModelFactory
from .driver import ERROR, FINISH, Driver, fnv1a


@pytest.fixture
def drv13(drv: Driver) -> Driver:
    if drv.abi != "1.3":
        pytest.skip("tokenizer / embedding callbacks exist in runtime 1.3 only")
    return drv


def test_tokenizer_callback_tokenizes_the_templated_prompt(
    drv13: Driver, model: ModelFactory
) -> None:
    """No internal tokenizer: the fake calls ours on its thread with the templated text."""
    calls: list[tuple[bytes, int, int]] = []

    def tokenizer(_ud: object, text: object, n: int, tokens: object, cap: int) -> int:
        data = drv13.ffi.string(text, n)
        calls.append((data, cap, threading.get_ident()))
        ids = [b % 200 for b in data[:10]]
        for k, t in enumerate(ids):
            tokens[k] = t
        return len(ids)

    base = drv13.stats()["tokenizer_calls"]
    h = drv13.init(model(internal_tokenizer=False), tokenizer=tokenizer, max_context_len=128)
    run = h.run("hello")
    assert run.rc == 0
    assert calls[0][0].decode() == h.last_input()["inputs"][0]["templated"]
    assert calls[0][1] == 128
    assert calls[0][2] != threading.get_ident()
    expected = np.array([b % 200 for b in calls[0][0][:10]], dtype=np.int32)
    assert run.text().startswith(f"[tokenizer n=10 fnv={fnv1a(expected)}] ")
    assert run.terminal.items[0].perf["prefill_tokens"] == 10
    assert drv13.stats()["tokenizer_calls"] == base + 1


@pytest.mark.parametrize("result", [-1, 10_000])
def test_tokenizer_callback_failure_fails_the_run(
    drv13: Driver, model: ModelFactory, result: int
) -> None:
    """A negative count or one above the capacity ends the run with ERROR."""
    h = drv13.init(model(internal_tokenizer=False), tokenizer=lambda *a: result)
    run = h.run("x")
    assert (run.rc, [e.state for e in run.events]) == (-1, [ERROR])


def test_embedding_callback_feeds_prefill_and_each_token(
    drv13: Driver, model: ModelFactory
) -> None:
    """No internal embedding: called once for the prefill and once per generated token."""
    calls: list[tuple[list[int], int]] = []

    def embed(_ud: object, tokens: object, n: int, out: object, length: int) -> int:
        ids = [tokens[k] for k in range(n)]
        calls.append((ids, length))
        buf = np.frombuffer(drv13.ffi.buffer(out, length), dtype=np.float32)
        buf[:] = np.repeat(np.array(ids, dtype=np.float32), length // 4 // n)
        return 0

    h = drv13.init(
        model(internal_embedding=False, hidden_size=8, natural_end=False),
        embed=embed,
        max_new_tokens=40,
    )
    run = h.run("hi")
    assert run.rc == 0
    prefill_ids, prefill_len = calls[0]
    assert prefill_len == len(prefill_ids) * 8 * 4
    rows = np.repeat(np.array(prefill_ids, dtype=np.float32), 8)
    assert f"[embed_callback n={len(prefill_ids)}x8 fnv={fnv1a(rows)}] " in run.text()
    assert [c[0] for c in calls[1:]] == [[t] for t in run.token_ids()]


def test_embedding_callback_failure_fails_the_run(drv13: Driver, model: ModelFactory) -> None:
    """A non-zero return from the embedding callback ends the run with ERROR."""
    h = drv13.init(model(internal_embedding=False), embed=lambda *a: 1)
    run = h.run("x")
    assert run.rc == -1
    assert run.terminal.state == ERROR
    ok = drv13.init(model(internal_embedding=False), embed=lambda *a: 0)
    assert ok.run("x").terminal.state == FINISH
