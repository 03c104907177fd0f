"""rkllm_sdk.testing.kv_text through the SDK, on both ABIs and both async backends: what the
fake runtime's KV cache holds after each KV operation, and thinking under a raw template."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rkllm_sdk.errors import NativeCallError
from rkllm_sdk.testing import kv_text, last_input
from rkllm_sdk.testing.plugin import FakeRuntime

pytestmark = pytest.mark.anyio

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
REPLY = "alpha beta gamma delta epsilon zeta eta theta iota kappa"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def turn(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


async def test_keep_history_runs_concatenate(rkllm_fake: FakeRuntime) -> None:
    """One keep_history turn: its templated prompt and reply; a second one is appended."""
    async with await rkllm_fake.load(replies={"": REPLY}) as llm:
        first = await llm.generate("one", keep_history=True)
        assert kv_text(llm) == SYSTEM + turn("one") + first.text
        await llm.generate("two", keep_history=True)
        assert kv_text(llm) == SYSTEM + turn("one") + REPLY + turn("two") + REPLY
        assert rkllm_fake.kv_text(llm) == kv_text(llm)


async def test_single_turn_runs_and_clears(rkllm_fake: FakeRuntime) -> None:
    """keep_history=False leaves nothing; clear keeps the system prompt when asked."""
    async with await rkllm_fake.load(replies={"": REPLY}) as llm:
        await llm.generate("one", keep_history=False)
        assert kv_text(llm) == ""
        await llm.generate("one", keep_history=True)
        await llm.clear_kv_cache(keep_system_prompt=True)
        assert kv_text(llm) == SYSTEM
        await llm.clear_kv_cache()
        assert kv_text(llm) == ""


async def test_prompt_cache_load_then_run(rkllm_fake: FakeRuntime, tmp_path: Path) -> None:
    """After loading a prompt cache, the reused prefix and the new text read back exactly."""
    cache = tmp_path / "system.cache"
    async with await rkllm_fake.load(replies={"": REPLY}) as llm:
        await llm.generate("shared start, then one", prompt_cache=cache)
        await llm.load_prompt_cache(cache)
        gen = await llm.generate("shared start, then two", keep_history=True)
        sent = last_input(llm).input
        assert sent.computed_prefill_tokens < sent.prefill_tokens
        assert kv_text(llm) == SYSTEM + turn("shared start, then two") + gen.text


async def test_pause_keeps_the_decoded_tokens(rkllm_fake: FakeRuntime) -> None:
    """A paused single-turn run keeps its prompt and the tokens decoded so far."""
    async with await rkllm_fake.load(replies={"": REPLY}, decode_ms=1) as llm:
        async with llm.stream("x", keep_history=False) as s:
            async for chunk in s:
                if chunk.seq == 0:
                    s.pause()
        gen = s.result()
        assert gen.finish_reason == "pause"
        assert kv_text(llm) == SYSTEM + turn("x") + gen.text
        assert REPLY.startswith(gen.text) and gen.text != REPLY


async def test_raw_template_thinking_follows_the_prompt_end(rkllm_fake: FakeRuntime) -> None:
    """A9: under set_chat_template("", "", "") a thinking model does not think after an empty
    closed think block, continues inside an open one, and otherwise thinks."""
    async with await rkllm_fake.load(thinking=True) as llm:
        await llm.set_chat_template("", "", "")
        closed = turn("q") + "<think>\n\n</think>\n\n"
        off = await llm.generate(closed, keep_history=True)
        assert "think>" not in off.text
        assert kv_text(llm) == closed + off.text
        await llm.clear_kv_cache()
        opened = turn("q") + "<think>\n"
        inside = await llm.generate(opened, keep_history=True)
        assert "<think>" not in inside.text
        assert re.match(r"[^<>]+\n</think>\n\n\S", inside.text)
        assert kv_text(llm) == opened + inside.text
        plain = await llm.generate(turn("q"))
        assert plain.text.startswith("<think>\n")


def test_sync_llm_and_bad_batch(rkllm_fake: FakeRuntime) -> None:
    """The blocking LLM works too; a batch the handle does not have is a NativeCallError."""
    with rkllm_fake.load_sync(replies={"": REPLY}) as llm:
        llm.generate("hi", keep_history=True)
        assert kv_text(llm) == SYSTEM + turn("hi") + REPLY
        with pytest.raises(NativeCallError, match="batch 1"):
            kv_text(llm, 1)


async def test_a_stop_string_leaves_every_decoded_token_in_the_cache(
    rkllm_fake: FakeRuntime,
) -> None:
    """A stop string aborts the run: the reply is cut before it, but the cache holds every
    token the runtime decoded, the stop string's and possibly more, never an end token."""
    async with await rkllm_fake.load(replies={"": REPLY}) as llm:
        gen = await llm.generate("x", keep_history=True, stop="gamma")
        assert gen.text == "alpha beta "
        held = kv_text(llm)
        prompt = SYSTEM + turn("x")
        assert held.startswith(prompt + "alpha beta gamma")
        assert (prompt + REPLY).startswith(held)
