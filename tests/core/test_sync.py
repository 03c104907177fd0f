"""LLM, the blocking twin: the same calls and results, from plain code and from a running loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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


def test_calls_after_close_raise_closed_error(
    abi: str, model: ModelFactory, no_leaks: None
) -> None:
    """Every blocking call on a closed twin (and its chat session) raises ClosedError, not
    the portal's RuntimeError."""
    llm = rk.LLM.load(model(), runtime="fake", abi=abi)
    chat = llm.chat()
    llm.close()
    for call in (
        lambda: llm.generate("x"),
        lambda: llm.stream("x"),
        llm.kv_cache_size,
        lambda: chat.send("x"),
        lambda: chat.stream("x"),
    ):
        with pytest.raises(rk.ClosedError):
            call()
    llm.close()  # idempotent


_CTRL_C = r"""
import os, signal, sys, threading, time
import rkllm_sdk as rk
from rkllm_sdk.testing import FakeModel

path = FakeModel(decode_ms=20, natural_end=False).write(sys.argv[1])
params = rk.ModelParams(max_new_tokens=500)
llm = rk.LLM.load(path, runtime="fake", abi=sys.argv[2], params=params)
chat = llm.chat(system="Be brief.")
for name, call in (("generate", lambda: llm.generate("x")), ("send", lambda: chat.send("x"))):
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        call()
        print(name, "finished")
    except KeyboardInterrupt:
        print(name, "interrupted", time.monotonic() - t0 < 5, llm.is_running(), flush=True)
llm.close()
print("handles", len(rk.open_handles()))
"""


def test_ctrl_c_in_blocking_calls_aborts_the_run(abi: str, tmp_path: Path) -> None:
    """Ctrl-C in LLM.generate() / chat.send() raises KeyboardInterrupt only after the run
    is aborted on the NPU (nothing left running), well before the 10 s reply would end."""
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C, str(tmp_path / "m.json"), abi],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RKLLM_FAKE_QUIET": "1"},
        check=True,
    )
    assert proc.stdout.splitlines() == [
        "generate interrupted True False",
        "send interrupted True False",
        "handles 0",
    ], proc.stderr


_CTRL_C_LOAD = r"""
import os, random, signal, sys, threading
import rkllm_sdk as rk
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk import _native
from rkllm_sdk.testing import FakeModel

path = FakeModel().write(sys.argv[1])
rng = random.Random(int(sys.argv[3]))
for attempt in range(20):
    llm = None
    try:  # the timer too: a short delay can fire before the next line runs
        threading.Timer(rng.random() * 0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        while True:
            llm = rk.LLM.load(path, runtime="fake", abi=sys.argv[2])
            llm.close()
    except KeyboardInterrupt:
        if llm is not None:  # interrupted after load() returned it: the caller closes it
            llm.close()
rt = load_runtime("fake", abi=sys.argv[2])
print(len(rk.open_handles()), _native.fake_stats(rt)["live_handles"])
"""


def test_ctrl_c_during_load_leaves_nothing_behind(abi: str, tmp_path: Path) -> None:
    """Ctrl-C at random moments of LLM.load() / close() (20 times) raises KeyboardInterrupt
    promptly and leaves no handle open, in the SDK or in the runtime."""
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_LOAD, str(tmp_path / "m.json"), abi, "7"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RKLLM_FAKE_QUIET": "1"},
        check=True,
    )
    assert proc.stdout.split() == ["0", "0"], proc.stderr
