"""AsyncLLM.generate / stream on the fake: text, chunks, UTF-8, limits, stop strings, arrays."""

from __future__ import annotations

import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _decoder, _native
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.llm import AsyncLLM, open_handles

from ..fake_runtime.driver import hidden_formula, logits_formula, reference_pieces
from .conftest import LoadLLM

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["held", "partial"])
def waiting_text(request: pytest.FixtureRequest) -> str:
    """Streaming runs under both readings of WAITING: no partial character (the fake's
    default) and the first bytes of a split character (the other reading)."""
    return str(request.param)


REPLY = "Kitchen light on. 台所の電気 💡 done."


async def test_generate_returns_the_whole_reply(load: LoadLLM) -> None:
    """generate() gives the reply, its token ids, finish reason, perf and time to first token."""
    llm = await load(script=[{"match": "kitchen", "reply": REPLY}])
    gen = await llm.generate("turn on the kitchen light")
    assert gen.text == REPLY
    assert gen.finish_reason == "stop"
    assert gen.perf is not None
    assert len(gen.token_ids) == gen.perf.generate_tokens
    assert gen.ttft_ms is not None and gen.ttft_ms > 0
    assert gen.chunks > 0


async def test_long_runs_keep_every_piece(load: LoadLLM) -> None:
    """Past the point where streamed text is folded into blocks, nothing is lost or reordered."""
    n = 3 * _decoder.COMPACT_EVERY + 123
    llm = await load(natural_end=False, params=rk.ModelParams(max_new_tokens=n))
    async with llm.stream("go") as s:
        chunks = [c async for c in s]
    gen = s.result()
    assert gen.finish_reason == "length" and len(gen.token_ids) == n
    assert gen.text == "".join(c.text for c in chunks)
    assert gen.token_ids == tuple(t for c in chunks for t in c.token_ids)


async def test_chunks_are_ordered_and_never_split_characters(load: LoadLLM) -> None:
    """seq counts up from 0; texts join to the reply; no chunk ends inside a character."""
    llm = await load(script=[{"match": "x", "reply": REPLY}])
    async with llm.stream("x") as s:
        chunks = [c async for c in s]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == REPLY
    assert all("\ufffd" not in c.text for c in chunks)
    assert any(len(c.token_ids) > 1 for c in chunks), "WAITING tokens were merged"
    last = chunks[-1]
    assert (last.text, last.finish_reason) == ("", "stop")
    assert last.perf == s.result().perf
    assert [i for c in chunks for i in c.token_ids] == list(s.result().token_ids)
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_length_limit(load: LoadLLM, abi: str) -> None:
    """Stopping at max_new_tokens is reported as "length" (per run on 1.3, at init on 1.2)."""
    if abi == "1.3":
        llm = await load(natural_end=False)
        gen = await llm.generate("go", max_new_tokens=7)
    else:
        llm = await load(rk.ModelParams(max_new_tokens=7), natural_end=False)
        gen = await llm.generate("go")
    assert (len(gen.token_ids), gen.finish_reason) == (7, "length")


async def test_per_run_options_reach_the_runtime(load: LoadLLM, abi: str) -> None:
    """Sampling (1.3) and keep_history go through; 1.2 refuses 1.3-only options by name."""
    llm = await load()
    if abi == "1.2":
        with pytest.raises(rk.UnsupportedOnABIError):
            await llm.generate("x", sampling=rk.Sampling(temperature=0.1))
        return
    await llm.generate("x", sampling=rk.Sampling(temperature=0.1), keep_history=True)
    assert (await llm.kv_cache_size())[0] > 0


@pytest.mark.parametrize("stop", ["light on", "電気", "done."])
async def test_stop_strings_trim_and_abort(load: LoadLLM, stop: str) -> None:
    """A stop string ends the reply before it (even across tokens) and aborts the run."""
    # The run hangs after the reply unless the stop string aborts it: the abort is required.
    hang = len(reference_pieces(REPLY)) + 2
    llm = await load(
        script=[{"match": "x", "reply": REPLY + " and much more text after it"}],
        faults=f"hang_after={hang}",
    )
    aborts = _native.fake_stats(load_runtime("fake", abi=llm.runtime.abi))["aborts"]
    async with llm.stream("x", stop=[stop, "never-seen"]) as s:
        text = "".join([c.text async for c in s])
    assert text == REPLY[: REPLY.index(stop)]
    assert s.result().finish_reason == "stop"
    assert _native.fake_stats(load_runtime("fake", abi=llm.runtime.abi))["aborts"] == aborts + 1


async def test_inputs_other_than_text(load: LoadLLM) -> None:
    """Token, embedding and multimodal inputs stream like text."""
    llm = await load()
    gen = await llm.generate(rk.TokenInput(ids=[5, 6, 7]))
    assert gen.text.startswith("[tokens n=3 ")
    gen = await llm.generate(rk.EmbedInput(embeddings=np.ones((2, 16))))
    assert gen.text.startswith("[embed n=2x16 ")


async def test_logits_and_hidden_states(load: LoadLLM) -> None:
    """Arrays come back exactly: last token by default, every token on request."""
    llm = await load(vocab_size=1024, hidden_size=12)
    ids = rk.TokenInput(ids=[1, 2, 3, 4])
    last = await llm.logits(ids)
    np.testing.assert_array_equal(last, logits_formula(3, 1, 1024))
    every = await llm.logits(ids, all_tokens=True)
    np.testing.assert_array_equal(every, logits_formula(0, 4, 1024))
    hidden = await llm.hidden_states(ids)
    np.testing.assert_array_equal(hidden, hidden_formula(0, 4, 12))
    assert (await llm.hidden_states(ids, all_tokens=False)).shape == (1, 12)


async def test_batched_generation(load: LoadLLM) -> None:
    """generate_batch runs n_batch inputs at once, one Generation each."""
    llm = await load(
        rk.ModelParams(extend=rk.ExtendParams(n_batch=2)),
        script=[{"match": "a", "reply": "first"}, {"match": "b", "reply": "second one"}],
    )
    gens = await llm.generate_batch([rk.Prompt(text="a"), rk.Prompt(text="b")])
    assert [(g.batch, g.text, g.finish_reason) for g in gens] == [
        (0, "first", "stop"),
        (1, "second one", "stop"),
    ]


async def test_load_failures_are_typed(abi: str, tmp_path: object, no_leaks: None) -> None:
    """A bad model file is a ModelLoadError; a missing runtime a RuntimeNotFoundError."""
    bad = tmp_path / "bad.rkllm"  # type: ignore[operator]
    bad.write_bytes(b"\x00")
    with pytest.raises(rk.ModelLoadError):
        await AsyncLLM.load(bad, runtime="fake", abi=abi)
    with pytest.raises(rk.RuntimeNotFoundError):
        await AsyncLLM.load(bad, runtime=tmp_path / "nope.so")  # type: ignore[operator]
    assert open_handles() == []


async def test_timings_of_the_last_run(load: LoadLLM) -> None:
    """timings() is the last Generation: runtime perf plus SDK-measured TTFT and rate."""
    llm = await load(
        decode_ms=1, natural_end=False, script=[{"match": "x", "reply": "a b c d e f"}]
    )
    assert llm.timings() is None
    gen = (
        await llm.generate("x", max_new_tokens=20)
        if llm.runtime.abi == "1.3"
        else await llm.generate("x")
    )
    t = llm.timings()
    assert t is gen
    assert t.ttft_ms is not None and 0 < t.ttft_ms <= t.duration_ms
    assert t.tokens_per_s > 0
    html = t._repr_html_()
    assert "<table>" in html and "tok/s" in html


async def test_the_bridge_channel_is_reused_across_runs(load: LoadLLM) -> None:
    """Runs on one handle reuse one bridge channel (its buffers), including after an abort."""
    llm = await load(natural_end=False, decode_ms=1, script=[{"match": "x", "reply": "same reply"}])
    base = _native.bridge_live_objects(load_runtime("fake", abi=llm.runtime.abi))
    first = await llm.generate("x", stop=["reply"])
    rt = load_runtime("fake", abi=llm.runtime.abi)
    assert _native.bridge_live_objects(rt) == base + 1  # the spare channel
    async with llm.stream("y") as s:
        async for _ in s:
            break
    for _ in range(5):
        gen = await llm.generate("x", stop=["reply"])
        assert gen.text == first.text == "same "
    assert _native.bridge_live_objects(load_runtime("fake", abi=llm.runtime.abi)) == base + 1


async def test_large_logits_arrive_exactly(load: LoadLLM) -> None:
    """A large copy (huge-page path of the bridge, 16 x 151,936 floats) arrives intact."""
    llm = await load(vocab_size=151936)
    rows = await llm.logits(rk.TokenInput(ids=np.arange(16, dtype=np.int32)), all_tokens=True)
    np.testing.assert_array_equal(rows, logits_formula(0, 16, 151936))


async def test_both_waiting_readings_give_identical_text_and_tokens(load: LoadLLM) -> None:
    """The same reply (CJK and emoji, split across callbacks) comes out identical whether
    the runtime's WAITING callbacks carry nothing or the first bytes of the character."""
    script = [{"match": "x", "reply": REPLY + " 電気 🙂 ok"}]
    held = await load(script=script, waiting_text="held")
    partial = await load(script=script, waiting_text="partial")
    a, b = await held.generate("x"), await partial.generate("x")
    assert a.text == b.text == REPLY + " 電気 🙂 ok"
    assert a.token_ids == b.token_ids
    async with held.stream("x") as s1, partial.stream("x") as s2:
        c1 = [(c.text, c.token_ids) async for c in s1]
        c2 = [(c.text, c.token_ids) async for c in s2]
    assert "".join(t for t, _ in c1) == "".join(t for t, _ in c2)
    assert [i for _, ids in c1 for i in ids] == [i for _, ids in c2 for i in ids]


async def test_a_misspelled_option_is_refused_at_run_time_too(load: LoadLLM) -> None:
    """Without a type checker (a notebook), a misspelled option raises TypeError naming it
    instead of being ignored."""
    llm = await load()
    options: dict[str, object] = {"max_new_token": 3}
    with pytest.raises(TypeError, match=r"unknown run option.*max_new_token;.*max_new_tokens"):
        await llm.generate("x", **options)  # type: ignore[arg-type]
    chat = llm.chat()
    with pytest.raises(TypeError, match=r"unknown run option.*stops"):
        await chat.send("x", stops=["\n"])  # type: ignore[call-arg]


async def test_logits_and_hidden_states_of_a_batch_have_one_block_per_input(
    load: LoadLLM,
) -> None:
    """On a two-input handle, logits() / hidden_states() return [inputs, rows, width], each
    input's own rows (not the first input's twice)."""
    llm = await load(params=rk.ModelParams(extend=rk.ExtendParams(n_batch=2)))
    single = await load()
    inputs = [rk.TokenInput(ids=[5, 6, 7]), rk.TokenInput(ids=[8, 9])]
    logits = await llm.logits(inputs)  # the last token of each: rows of equal shape
    assert logits.shape == (2, 1, 4096)
    for got, one in zip(logits, inputs, strict=True):
        np.testing.assert_array_equal(got, await single.logits(one))
    assert not np.array_equal(logits[0], logits[1])
    inputs = [rk.TokenInput(ids=[5, 6, 7]), rk.TokenInput(ids=[8, 9, 10])]
    hidden = await llm.hidden_states(inputs)
    assert hidden.shape == (2, 3, 16)
    np.testing.assert_array_equal(hidden[1], await single.hidden_states(inputs[1]))
    with pytest.raises(rk.InvalidParamsError, match="different shapes"):
        await llm.hidden_states([rk.TokenInput(ids=[5]), rk.TokenInput(ids=[8, 9])])


async def test_a_plain_string_is_one_stop_sequence(load: LoadLLM) -> None:
    """stop="light on" (a string, as the OpenAI API takes it) ends the reply before
    "light on", not at its first letter."""
    llm = await load(script=[{"match": "x", "reply": REPLY}])
    gen = await llm.generate("x", stop="light on")
    assert gen.text == REPLY[: REPLY.index("light on")] and gen.finish_reason == "stop"
