"""Generation: determinism, scripts, limits, UTF-8 splitting, threads, sync and async runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rkllm_sdk.testing import FakeModel

from .conftest import ModelFactory
from .driver import ERROR, FINISH, NORMAL, WAITING, Driver, reference_pieces


def test_same_input_same_output_and_different_input_different_output(
    drv: Driver, model: ModelFactory
) -> None:
    """Output is a pure function of model, input and sampling params."""
    m = model()
    a, b = drv.init(m), drv.init(m)
    first = a.run("tell me about the garden")
    assert first.rc == 0
    assert first.text() == b.run("tell me about the garden").text()
    assert first.token_ids() == a.run("tell me about the garden").token_ids()
    assert first.text() != a.run("tell me about the river").text()


def test_sampling_params_change_the_output(drv: Driver, model: ModelFactory) -> None:
    """Init-time sampling params (and 1.3 per-run overrides) feed the seed."""
    m = model()
    base = drv.init(m).run("same prompt").text()
    assert drv.init(m, temperature=0.2).run("same prompt").text() != base
    if drv.abi == "1.3":
        h = drv.init(m)
        override = {
            "top_k": 1,
            "top_p": 0.9,
            "temperature": 0.2,
            "repeat_penalty": 1.1,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "mirostat": 0,
            "mirostat_tau": 5.0,
            "mirostat_eta": 0.1,
        }
        assert h.run("same prompt", sampling=override).text() != base
        assert h.last_input()["sampling"]["temperature"] == pytest.approx(0.2)


def test_scripted_reply_is_emitted_exactly(drv: Driver, model: ModelFactory) -> None:
    """The first script rule whose match is in the prompt gives the reply, byte for byte."""
    reply = "Kitchen light is on. 台所 💡 done"
    h = drv.init(
        model(
            script=[
                {"match": "kitchen", "reply": reply},
                {"match": "light", "reply": "second rule"},
            ]
        )
    )
    run = h.run("please switch the kitchen light")
    assert run.text() == reply
    assert h.run("light please").text() == "second rule"


def test_every_run_ends_with_one_finish_carrying_perf(drv: Driver, model: ModelFactory) -> None:
    """Tokens arrive as NORMAL/WAITING, then exactly one FINISH with perf filled in."""
    h = drv.init(model())
    run = h.run("hello there")
    states = [e.state for e in run.events]
    assert states[-1] == FINISH
    assert all(s in (NORMAL, WAITING) for s in states[:-1])
    assert len(run.tokens) > 0
    fin = run.terminal.items[0]
    assert fin.text is None
    assert fin.token_id == -1
    assert fin.perf is not None
    assert fin.perf["generate_tokens"] == len(run.tokens)
    assert fin.perf["prefill_tokens"] == h.last_input()["inputs"][0]["prefill_tokens"]
    assert fin.perf["memory_usage_mb"] > 1.0  # VmHWM of this process


def test_prefill_counts_the_templated_prompt(drv: Driver, model: ModelFactory) -> None:
    """The default chat template wraps the prompt and its tokens count as prefill."""
    h = drv.init(model())
    run = h.run("hello")
    info = h.last_input()["inputs"][0]
    assert info["templated"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    n = len(reference_pieces(info["templated"]))
    assert info["prefill_tokens"] == n == 22
    assert run.terminal.items[0].perf["prefill_tokens"] == n


def test_output_pieces_follow_the_documented_tokenizer(drv: Driver, model: ModelFactory) -> None:
    """With "waiting_text": "partial", each callback carries exactly the next tokenizer piece."""
    h = drv.init(model(natural_end=False, waiting_text="partial"), max_new_tokens=300)
    run = h.run("pieces")
    data = run.raw_bytes()
    assert [e.items[0].text for e in run.tokens] == reference_pieces(data)


def test_callbacks_come_from_a_runtime_thread(drv: Driver, model: ModelFactory) -> None:
    """Callbacks run on the handle's own thread, never on the caller's."""
    h = drv.init(model())
    run = h.run("hi")
    threads = {e.thread for e in run.events}
    assert len(threads) == 1
    assert threading.get_ident() not in threads


def test_max_new_tokens_from_init_limits_the_reply(drv: Driver, model: ModelFactory) -> None:
    """A run stops at max_new_tokens (init value) when the reply is longer."""
    h = drv.init(model(natural_end=False), max_new_tokens=7)
    run = h.run("go on forever")
    assert len(run.tokens) == 7
    assert run.terminal.items[0].perf["generate_tokens"] == 7


def test_per_run_max_new_tokens_overrides_init_on_13(drv: Driver, model: ModelFactory) -> None:
    """1.3: RKLLMInferParam.max_new_tokens > 0 wins; <= 0 keeps the init value."""
    if drv.abi != "1.3":
        pytest.skip("per-run max_new_tokens is a 1.3 field")
    h = drv.init(model(natural_end=False), max_new_tokens=9)
    assert len(h.run("x", max_new_tokens=3).tokens) == 3
    assert len(h.run("x", max_new_tokens=0).tokens) == 9


def test_natural_end_comes_before_the_limit(drv: Driver, model: ModelFactory) -> None:
    """Without a limit the generated reply ends by itself after a few sentences."""
    h = drv.init(model())
    run = h.run("a short question")
    assert 0 < len(run.tokens) < 200
    assert run.text().endswith(".")


def test_ignore_eos_token_keeps_generating_to_the_limit(drv: Driver, model: ModelFactory) -> None:
    """1.3 ignore_eos_token: no natural end, the reply runs to max_new_tokens."""
    if drv.abi != "1.3":
        pytest.skip("ignore_eos_token is a 1.3 field")
    h = drv.init(
        model(script=[{"match": "x", "reply": "short"}]), ignore_eos_token=True, max_new_tokens=50
    )
    run = h.run("x")
    assert len(run.tokens) == 50
    assert run.text().startswith("short")


def test_partial_waiting_callbacks_carry_the_split_bytes(drv: Driver, model: ModelFactory) -> None:
    """With "waiting_text": "partial", pieces cut through characters; exactly those say WAITING."""
    reply = "日本語 and émoji 🚀🤖 mixed: 你好世界"
    h = drv.init(model(script=[{"match": "x", "reply": reply}], waiting_text="partial"))
    run = h.run("x")
    assert run.text() == reply
    seen = b""
    waiting = 0
    for e in run.tokens:
        seen += e.items[0].text or b""
        try:
            seen.decode("utf-8")
            complete = True
        except UnicodeDecodeError:
            complete = False
        assert (e.state == WAITING) == (not complete)
        waiting += e.state == WAITING
    assert waiting >= 3


def test_held_waiting_callbacks_are_empty_and_normal_ones_whole(
    drv: Driver, model: ModelFactory
) -> None:
    """By default WAITING carries "" and each NORMAL text decodes alone; ids match "partial"."""
    reply = "日本語 and émoji 🚀🤖 mixed: 你好世界"
    script = [{"match": "x", "reply": reply}]
    run = drv.init(model(script=script)).run("x")
    partial = drv.init(model(script=script, waiting_text="partial")).run("x")
    waiting = [e for e in run.tokens if e.state == WAITING]
    assert len(waiting) >= 3
    assert all(e.items[0].text == b"" and e.items[0].token_id >= 0 for e in waiting)
    normal = [e.items[0].text or b"" for e in run.tokens if e.state == NORMAL]
    assert "".join(t.decode("utf-8") for t in normal) == reply
    assert [e.state for e in run.tokens] == [e.state for e in partial.tokens]
    assert run.token_ids() == partial.token_ids()


def test_held_last_token_drops_only_the_unfinished_character(
    drv: Driver, model: ModelFactory
) -> None:
    """A max_new_tokens cut inside a character ends on NORMAL with the whole characters before."""
    reply = "你好世界你好世界"
    script = [{"match": "x", "reply": reply}]
    pieces = reference_pieces(reply)
    # the first token count whose bytes end inside a character
    cut = next(n for n in range(1, len(pieces)) if len(b"".join(pieces[:n])) % 3)
    run = drv.init(model(script=script), max_new_tokens=cut).run("x")
    assert len(run.tokens) == cut
    assert run.tokens[-1].state == NORMAL
    whole = len(b"".join(pieces[:cut])) // 3
    assert run.text() == reply[:whole]


def test_generated_text_includes_cjk_and_emoji(drv: Driver, model: ModelFactory) -> None:
    """The generator mixes in non-ASCII words so splitting is exercised without a script."""
    h = drv.init(model(natural_end=False), max_new_tokens=400)
    text = h.run("anything").text()
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert any(ord(ch) >= 0x1F300 for ch in text)


def test_special_tags_are_single_tokens(drv: Driver, model: ModelFactory) -> None:
    """<think>, </think>, <tool_call>, </tool_call> arrive as one token each (Qwen ids)."""
    h = drv.init(
        model(vocab_size=151936, script=[{"match": "x", "reply": "<tool_call>\n{}\n</tool_call>"}])
    )
    run = h.run("x")
    texts = [e.items[0].text for e in run.tokens]
    assert texts[0] == b"<tool_call>"
    assert run.tokens[0].items[0].token_id == 151657
    assert texts[-1] == b"</tool_call>"


def test_run_async_returns_at_once_and_callbacks_follow(drv: Driver, model: ModelFactory) -> None:
    """rkllm_run_async returns while the run goes on; its callbacks arrive on the runtime thread."""
    h = drv.init(model(faults="hang_after=3"))  # the run cannot finish by itself
    keep: list[object] = []
    inp = h.prompt("async", keep)
    assert h.run_input(inp, h.infer(keep), asynchronous=True) == 0
    assert h.is_running()
    deadline = time.monotonic() + 10
    while len(h.rec.events) < 3:
        assert time.monotonic() < deadline, "tokens did not arrive"
        time.sleep(0.001)
    assert drv.lib.rkllm_abort(h.ptr) == 0
    assert h.rec.done.wait(10)
    assert [e.state for e in h.rec.events][-1] == FINISH
    assert threading.get_ident() not in {e.thread for e in h.rec.events}
    while h.is_running():  # FINISH is delivered before the run stops counting as running
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_is_running_polarity_per_abi(drv: Driver, model: ModelFactory) -> None:
    """1.3 returns 1 while running and 0 idle; 1.2 returns 0 while running, non-zero idle."""
    seen: list[int] = []

    def reply(i: int, _e: object) -> int:
        if i == 0:
            seen.append(int(drv.lib.rkllm_is_running(h.ptr)))
        return 0

    h = drv.init(model(), reply=reply)
    idle = int(drv.lib.rkllm_is_running(h.ptr))
    h.run("x")
    if drv.abi == "1.3":
        assert (idle, seen) == (0, [1])
    else:
        assert idle != 0
        assert seen == [0]


def test_userdata_reaches_the_callback(drv: Driver, model: ModelFactory) -> None:
    """The run's userdata is passed through; on 1.3 result_userdata is the fallback."""
    h = drv.init(model(), result_userdata=77)
    run = h.run("x", userdata=1234)
    assert {e.userdata for e in run.events} == {1234}
    run = h.run("x", userdata=0)
    assert {e.userdata for e in run.events} == ({77} if drv.abi == "1.3" else {0})


def test_decode_and_prefill_take_the_configured_time(drv: Driver, model: ModelFactory) -> None:
    """perf reports at least decode_ms per token and prefill_ms per prefill token."""
    h = drv.init(model(decode_ms=2, prefill_ms=1, natural_end=False), max_new_tokens=10)
    perf = h.run("timing").terminal.items[0].perf
    assert perf["generate_tokens"] == 10
    assert perf["generate_time_ms"] >= 2 * 10 - 0.5
    assert perf["prefill_time_ms"] >= perf["prefill_tokens"] * 1 - 0.5


def test_bad_prompt_inputs_fail_before_running(drv: Driver, model: ModelFactory) -> None:
    """NULL prompt, unknown role or input type, NULL params: -1 and no callback at all."""
    h = drv.init(model())
    base = drv.stats()["runs_started"]
    assert h.run(None).rc == -1
    assert h.run("x", role="assistant").rc == -1
    keep: list[object] = []
    inp = h.prompt("x", keep)
    inp.input_type = 7
    assert h.run_input(inp, h.infer(keep)) == -1
    assert h.run_input(h.prompt("x", keep), drv.ffi.NULL) == -1
    assert h.run_input(drv.ffi.NULL, h.infer(keep)) == -1
    bad_mode = h.infer(keep)
    bad_mode.mode = 5
    assert h.run_input(h.prompt("x", keep), bad_mode) == -1
    assert h.rec.events == []
    assert drv.stats()["runs_started"] == base


def test_null_role_means_user(drv: Driver, model: ModelFactory) -> None:
    """A NULL role is treated as "user"."""
    h = drv.init(model())
    assert h.run("x", role=None).rc == 0
    assert h.last_input()["inputs"][0]["role"] == "user"


def test_error_state_is_terminal_and_run_returns_minus_one(
    drv: Driver, model: ModelFactory
) -> None:
    """A run that fails mid-way ends with one ERROR callback and rkllm_run returns -1."""
    h = drv.init(model(natural_end=False, faults="error_after=3"))
    run = h.run("x")
    assert run.rc == -1
    assert [e.state for e in run.events][-1] == ERROR
    assert len(run.tokens) == 3


def test_a_slow_consumer_slows_decoding(drv: Driver, model: ModelFactory) -> None:
    """Decode time is spent after each callback returns: a 10 ms callback adds 10 ms a token."""
    h = drv.init(
        model(decode_ms=2, natural_end=False),
        max_new_tokens=6,
        reply=lambda i, e: time.sleep(0.01) or 0,
    )
    perf = h.run("slow").terminal.items[0].perf
    assert perf["generate_time_ms"] >= 6 * (2 + 10) - 1


REPLY = "日本語 and émoji 🚀🤖 mixed: 你好世界"


@pytest.mark.parametrize("waiting_text", ["held", "partial"])
def test_fake_model_waiting_text_selects_the_reading(
    drv: Driver, tmp_path: Path, waiting_text: str
) -> None:
    """rkllm_sdk.testing.FakeModel(waiting_text=...) selects what WAITING callbacks carry."""
    path = FakeModel(replies={"x": REPLY}, waiting_text=waiting_text).write(tmp_path / "m.json")
    run = drv.init(path).run("x")
    waiting = [e.items[0].text for e in run.tokens if e.state == WAITING]
    assert waiting and run.text() == REPLY
    assert all(t == b"" for t in waiting) == (waiting_text == "held")
