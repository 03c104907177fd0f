"""Batches (n_batch > 1): arrays of inputs in, arrays of results out, per-batch end."""

from __future__ import annotations

from .conftest import ModelFactory
from .driver import FINISH, Driver


def test_batches_run_together_and_finish_independently(drv: Driver, model: ModelFactory) -> None:
    """Each batch gets its own reply; a finished batch reports token -1 and NULL text."""
    replies = ["short", "a somewhat longer reply here", "mid size one"]
    h = drv.init(
        model(script=[{"match": f"q{k}", "reply": r} for k, r in enumerate(replies)]),
        extend={"n_batch": 3},
    )
    keep: list[object] = []
    run = h.batch([h.prompt(f"q{k}", keep) for k in range(3)], h.infer(keep))
    assert run.rc == 0
    assert [run.text(b) for b in range(3)] == replies
    assert run.terminal.state == FINISH
    first_done = next(i for i, e in enumerate(run.tokens) if e.items[0].token_id < 0)
    after = run.tokens[first_done]
    assert (after.items[0].text, after.items[0].token_id) == (None, -1)
    assert after.items[1].token_id >= 0
    assert all(any(it.token_id >= 0 for it in e.items) for e in run.tokens)
    perfs = [run.terminal.items[b].perf for b in range(3)]
    assert [p["generate_tokens"] for p in perfs] == [len(run.token_ids(b)) for b in range(3)]


def test_batch_kv_sizes_are_per_batch(drv: Driver, model: ModelFactory) -> None:
    """rkllm_get_kv_cache_size fills one size per batch."""
    h = drv.init(
        model(script=[{"match": "a", "reply": "one two"}, {"match": "b", "reply": "x"}]),
        extend={"n_batch": 2},
    )
    keep: list[object] = []
    run = h.batch([h.prompt("a", keep), h.prompt("bb", keep)], h.infer(keep, keep_history=1))
    sizes = h.kv_sizes()
    perfs = [run.terminal.items[b].perf for b in range(2)]
    assert sizes == [p["prefill_tokens"] + p["generate_tokens"] for p in perfs]
    assert sizes[0] != sizes[1]


def test_a_bad_input_in_any_batch_refuses_the_run(drv: Driver, model: ModelFactory) -> None:
    """Every batch's input is checked before the run starts."""
    h = drv.init(model(), extend={"n_batch": 2})
    keep: list[object] = []
    run = h.batch([h.prompt("fine", keep), h.prompt(None, keep)], h.infer(keep))
    assert (run.rc, run.events) == (-1, [])


def test_batched_waiting_state_marks_any_split_character(drv: Driver, model: ModelFactory) -> None:
    """With several batches, WAITING means some batch's bytes end inside a character."""
    h = drv.init(
        model(script=[{"match": "a", "reply": "日本語日本語"}, {"match": "b", "reply": "plain"}]),
        extend={"n_batch": 2},
    )
    keep: list[object] = []
    run = h.batch([h.prompt("a", keep), h.prompt("b", keep)], h.infer(keep))
    assert run.text(0) == "日本語日本語"
    assert run.text(1) == "plain"
    assert any(e.state == 1 for e in run.tokens)
    # held (the default): a WAITING callback carries "" for every batch still running, so
    # the plain batch's text is not lost by a consumer that reads NORMAL callbacks only
    for e in run.tokens:
        if e.state == 1:
            assert all(i.text == b"" for i in e.items if i.token_id >= 0)
    for b, want in ((0, "日本語日本語"), (1, "plain")):
        normal = [e.items[b].text or b"" for e in run.tokens if e.state == 0]
        assert "".join(t.decode("utf-8") for t in normal) == want
