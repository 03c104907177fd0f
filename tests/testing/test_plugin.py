"""The pytest plugin for downstream projects, run through pytester like a user's suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rkllm_sdk.testing import (
    FakeModel,
    Faults,
    ReceivedArray,
    RunInput,
    checksum,
    tool_call_reply,
)

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


FEATURES = """
import numpy as np
import pytest
import rkllm_sdk as rk
from rkllm_sdk.testing import Faults, assert_array_received, tool_call_reply

pytestmark = pytest.mark.anyio


async def test_llm_fixture(rkllm_llm, rkllm_abi):
    gen = await rkllm_llm.generate("anything")
    assert gen.finish_reason == "stop" and gen.text
    assert rkllm_llm.runtime.abi == rkllm_abi and rkllm_llm.runtime.is_fake


def test_sync_fixture(rkllm_sync_llm):
    assert rkllm_sync_llm.generate("hi").text


async def test_scripted_reply_and_what_was_received(rkllm_fake):
    async with await rkllm_fake.load(replies={"Hello": "Hi there!"}) as llm:
        chat = llm.chat(system="Be kind.")
        reply = await chat.send("Hello you")
        assert reply.text == "Hi there!"
        sent = rkllm_fake.last_input(llm)
        assert sent.input.role == "user" and sent.input.text == "Hello you"
        assert "Be kind." in sent.input.templated and sent.keep_history


async def test_tool_calls(rkllm_fake):
    def set_light(entity_id: str, on: bool) -> None:
        "Switch a light."

    reply_text = tool_call_reply("set_light", {"entity_id": "light.hall", "on": True})
    async with await rkllm_fake.load(replies={"hall": reply_text}) as llm:
        reply = await llm.chat(tools=[set_light]).send("hall light on")
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [
            ("set_light", {"entity_id": "light.hall", "on": True})
        ]


async def test_arrays_by_checksum(rkllm_fake):
    ids = np.array([5, 6, 7, 8], dtype=np.int64)  # the SDK sends int32
    async with await rkllm_fake.load() as llm:
        await llm.generate(rk.TokenInput(ids=ids))
        assert_array_received(llm, ids, kind="tokens")
        with pytest.raises(AssertionError, match="received: tokens 4"):
            assert_array_received(llm, ids[::-1])


async def test_faults(rkllm_fake):
    async with await rkllm_fake.load(faults=Faults(error_after=2)) as llm:
        with pytest.raises(rk.GenerationError):
            await llm.generate("x")
    with pytest.raises(rk.ModelLoadError):
        await rkllm_fake.load(faults=Faults(init_fail=-1))


async def test_speeds(rkllm_fake):
    async with await rkllm_fake.load(decode_ms=5, replies={"a": "one two three four"}) as llm:
        gen = await llm.generate("a")
    assert gen.perf.generate_time_ms >= 5 * (gen.perf.generate_tokens - 1)


def test_counters(rkllm_fake):
    path = str(rkllm_fake.model(replies={"x": "y"}))
    with pytest.raises(TypeError, match="not both"):
        rkllm_fake.load_sync(path, decode_ms=1)
    with rkllm_fake.load_sync(path) as llm:
        before = rkllm_fake.stats()["runs_finished"]
        llm.generate("x")
        assert rkllm_fake.stats()["runs_finished"] == before + 1
"""


def test_fixtures_cover_both_abis_and_backends(pytester: pytest.Pytester) -> None:
    """The fixtures run each user test once per ABI, async ones on both asyncio and trio."""
    result = run(pytester, FEATURES, "-v")
    # 2 sync tests x 2 ABIs, 6 async tests x 2 ABIs x 2 anyio backends
    result.assert_outcomes(passed=2 * 2 + 6 * 2 * 2)
    result.stdout.fnmatch_lines(["*test_llm_fixture*asyncio-rkllm1.2*PASSED*"])
    result.stdout.fnmatch_lines(["*test_llm_fixture*trio-rkllm1.3*PASSED*"])


def test_abi_option_and_ini_narrow_the_runs(pytester: pytest.Pytester) -> None:
    """--rkllm-abi and the rkllm_abi ini key narrow runs to one ABI; an unknown one is an error."""
    source = "def test_abi(rkllm_fake):\n    assert rkllm_fake.abi == '1.3'\n"
    run(pytester, source, "--rkllm-abi", "1.3").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nrkllm_abi = 1.3\n")
    run(pytester, source).assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nrkllm_abi = 2.0\n")
    result = run(pytester, source)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown ABI 2.0*"])


def test_a_handle_left_open_fails_the_test(pytester: pytest.Pytester) -> None:
    """A fake handle the test leaves open turns into an error at teardown, naming the leak."""
    source = """
import pytest

@pytest.mark.anyio
async def test_forgets_to_close(rkllm_fake, rkllm_model):
    await rkllm_fake.load(rkllm_model)
"""
    result = run(pytester, source, "--rkllm-abi", "1.2", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*1 fake runtime handle(s) left open by the test*"])


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    """pytest --fixtures lists rkllm_fake, rkllm_model, rkllm_llm and rkllm_sync_llm."""
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for name in ("rkllm_fake", "rkllm_model", "rkllm_llm", "rkllm_sync_llm"):
        result.stdout.fnmatch_lines([f"{name}*"])


# ---- the helpers, as plain units ---------------------------------------------------------


def test_fake_model_file(tmp_path: Path) -> None:
    """FakeModel writes format, speeds, scripted replies (tool calls, thinking) and faults."""
    model = FakeModel(
        replies={"a": "b", "c": tool_call_reply("f", {"x": 1}, text=" ok", thinking="hm")},
        decode_ms=3,
        faults=Faults(hang_after=4, slow_prefill_ms=2.5, start_delay_ms=7),
    )
    data = json.loads(model.write(tmp_path / "m.json").read_text())
    assert data["format"] == "rkllm-fake/1" and data["decode_ms"] == 3
    assert data["script"] == [
        {"match": "a", "reply": "b"},
        {
            "match": "c",
            "reply": '<think>\nhm\n</think>\n\n<tool_call>\n{"name": "f", "arguments": '
            '{"x": 1}}\n</tool_call> ok',
        },
    ]
    assert data["faults"] == "hang_after=4,slow_prefill_ms=2.5,start_delay_ms=7"
    assert "faults" not in FakeModel().to_dict()
    assert FakeModel(faults="run_fail=-3").to_dict()["faults"] == "run_fail=-3"


def test_run_input_parsing_and_array_matching() -> None:
    """RunInput parses what the fake received; ReceivedArray matches by shape and checksum."""
    ids = np.array([1, 2, 3], dtype=np.int32)
    emb = np.ones((2, 4), dtype=np.float32)
    raw = {
        "n_batch": 1,
        "mode": 0,
        "keep_history": 1,
        "max_new_tokens": -1,
        "sampling": {"top_k": 1},
        "lora": None,
        "prompt_cache_save": None,
        "inputs": [
            {
                "type": "multimodal",
                "role": "user",
                "enable_thinking": False,
                "text": "t",
                "templated": "T",
                "tags": f"[tokens n=3 fnv={checksum(ids)}] [embed n=2x4 fnv={checksum(emb)}] ",
                "prefill_tokens": 9,
                "computed_prefill_tokens": 4,
            }
        ],
    }
    run = RunInput.from_json(raw)
    assert run.keep_history is True and run.input.computed_prefill_tokens == 4
    tokens, embed = run.input.arrays
    assert tokens == ReceivedArray(kind="tokens", shape=(3,), fnv=checksum(ids))
    assert tokens.matches([1, 2, 3]) and not tokens.matches([1, 2, 3, 4])
    assert embed.shape == (2, 4) and embed.matches(emb.astype(np.float64))
    assert not embed.matches(emb * 2)
    # cross attention: one checksum continued over four arrays of their own dtypes
    parts = (emb, emb, np.zeros(2, np.float32), np.arange(2, dtype=np.int32))
    cross = ReceivedArray(kind="cross", shape=(2,), fnv=checksum(*parts))
    assert cross.matches(*parts) and not cross.matches(*parts[:3])
