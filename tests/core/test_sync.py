"""LLM, the blocking twin: the same calls and results, from plain code and from a running loop."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import rkllm_sdk as rk

from ..conftest import ModelFactory
from ..fake_runtime.driver import logits_formula

REPLY = "Sync reply 同期 ✓."


@pytest.fixture
def llm(abi: str, model: ModelFactory, no_leaks: None):  # type: ignore[no-untyped-def]
    with rk.LLM.load(
        model(script=[{"match": "x", "reply": REPLY}], vocab_size=512), runtime="fake", abi=abi
    ) as handle:
        yield handle


def test_generate_and_stream(llm: rk.LLM) -> None:
    """generate() and `for chunk in llm.stream()` give what the async API gives."""
    assert llm.generate("x").text == REPLY
    with llm.stream("x") as s:
        chunks = list(s)
    assert "".join(c.text for c in chunks) == REPLY
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert s.result().finish_reason == "stop"
    assert chunks[-1].perf is not None


def test_for_without_with(abi: str, model: ModelFactory, no_leaks: None) -> None:
    """`for chunk in llm.stream(...)` starts the run and closes it, also on break."""
    with rk.LLM.load(
        model(natural_end=False, decode_ms=1, script=[{"match": "x", "reply": REPLY}]),
        runtime="fake",
        abi=abi,
    ) as llm:
        s = llm.stream("x", max_new_tokens=5) if abi == "1.3" else None
        if s is not None:
            assert "".join(c.text for c in s) == "Sync reply 同期"
            assert s.result().finish_reason == "length" and len(s.result().token_ids) == 5
        for chunk in llm.stream("y"):
            if chunk.seq == 3:
                break
        assert not llm.is_running()  # the abandoned loop aborted the run
        assert llm.generate("x", stop=["同"]).text == "Sync reply "


def test_break_aborts_and_the_handle_goes_on(abi: str, model: ModelFactory, no_leaks: None) -> None:
    """Leaving the loop early aborts the run; the next call works."""
    with rk.LLM.load(model(natural_end=False, decode_ms=1), runtime="fake", abi=abi) as llm:
        with llm.stream("y") as s:
            for chunk in s:
                if chunk.seq == 3:
                    break
        assert not llm.is_running()
        assert llm.kv_cache_size() == [0]


def test_arrays_and_configuration(llm: rk.LLM) -> None:
    """Logits, hidden states and configuration calls work through the portal."""
    ids = rk.TokenInput(ids=[1, 2])
    np.testing.assert_array_equal(llm.logits(ids), logits_formula(1, 1, 512))
    assert llm.hidden_states(ids).shape == (2, 16)
    llm.set_chat_template("S:", "U:", ":A")
    llm.generate("x", keep_history=True)
    assert llm.kv_cache_size()[0] > 0
    llm.clear_kv_cache()
    assert llm.kv_cache_size() == [0]
    assert "LLM" in repr(llm)


def test_inside_a_running_event_loop(abi: str, model: ModelFactory, no_leaks: None) -> None:
    """Blocking calls from a coroutine (as in a Jupyter cell) work without nest_asyncio."""

    async def cell() -> str:
        with rk.LLM.load(
            model(script=[{"match": "x", "reply": REPLY}]), runtime="fake", abi=abi
        ) as llm:
            return llm.generate("x").text

    assert asyncio.run(cell()) == REPLY


def test_errors_cross_the_portal(
    abi: str, model: ModelFactory, tmp_path: object, no_leaks: None
) -> None:
    """Typed errors reach the caller; close is idempotent."""
    bad = tmp_path / "bad.rkllm"  # type: ignore[operator]
    bad.write_bytes(b"\x00")
    with pytest.raises(rk.ModelLoadError):
        rk.LLM.load(bad, runtime="fake", abi=abi)
    llm = rk.LLM.load(model(faults="run_fail=-2"), runtime="fake", abi=abi)
    with pytest.raises(rk.GenerationError):
        llm.generate("x")
    llm.close()
    llm.close()
    assert llm.closed


def test_sync_chat_tool_round_trip(abi: str, model: ModelFactory, no_leaks: None) -> None:
    """LLM.chat() gives the same tool-call round trip as the async session."""

    def get_temperature(room: str) -> float:
        """Read a room's temperature."""
        return 21.5

    with rk.LLM.load(model(), runtime="fake", abi=abi) as llm:
        chat = llm.chat(system="Home.", tools=[get_temperature])
        reply = chat.send("get_temperature please")
        (call,) = reply.tool_calls
        assert (call.name, call.arguments) == ("get_temperature", {"room": "fake-room"})
        answer = chat.send_tool_results([get_temperature(**call.arguments)])
        assert answer.text == "The tool returned: 21.5"
        assert len(chat.turns) == 2
        chat.reset()
        assert llm.kv_cache_size() == [0]
