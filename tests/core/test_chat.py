"""Chat sessions on the fake, and the pure parsing of thinking and tool calls."""

from __future__ import annotations

import typing

import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native
from rkllm_sdk.lowlevel import native_handle

from .conftest import LoadLLM


@pytest.fixture(params=["held", "partial"])
def waiting_text(request: pytest.FixtureRequest) -> str:
    """Streaming runs under both readings of WAITING: no partial character (the fake's
    default) and the first bytes of a split character (the other reading)."""
    return str(request.param)


def set_light(
    entity_id: str, brightness: int = 255, room: typing.Literal["kitchen", "hall"] = "hall"
) -> None:
    """Switch a light on.

    Longer description that is not part of the tool's summary.
    """


TOOLS = [rk.tool_schema(set_light)]


# ---- pure functions (no runtime) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nhmm\n</think>\n\nYes.", ("hmm", "Yes.")),
        ("Yes.", ("", "Yes.")),
        ("  <think>cut off", ("cut off", "")),
        ("<think></think>Answer", ("", "Answer")),
    ],
)
def test_split_thinking(text: str, expected: tuple[str, str]) -> None:
    """The leading think block is separated from the answer; a cut-off one is all thinking."""
    assert rk.split_thinking(text) == expected


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "set_light", "arguments": {"entity_id": "light.k"}}',
        '{"name": "set_light", "arguments": {"entity_id": "light.k",},}',
        "{'name': 'set_light', 'arguments': {'entity_id': 'light.k'}}",
        '```json\n{"name": "set_light", "arguments": {"entity_id": "light.k"}}\n```',
        '{"name": "set_light", "arguments": {"entity_id": "light.k"',
        '{"name": "set_light", "arguments": "{\\"entity_id\\": \\"light.k\\"}"}',
    ],
)
def test_tool_call_json_is_repaired(raw: str) -> None:
    """Trailing commas, single quotes, fences, unclosed braces, string arguments: all read."""
    rest, calls = rk.parse_tool_calls(f"Sure.\n<tool_call>\n{raw}\n</tool_call>", TOOLS)
    assert rest == "Sure."
    (call,) = calls
    assert (call.name, call.arguments, call.error) == ("set_light", {"entity_id": "light.k"}, None)
    assert call.id.startswith("call_0_")


def test_python_literals_and_several_calls() -> None:
    """Python True/None are read as JSON; several blocks give several calls in order."""
    text = (
        '<tool_call>{"name": "a", "arguments": {"on": True, "x": None}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    _, calls = rk.parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("a", {"on": True, "x": None}), ("b", {})]
    assert calls[0].id != calls[1].id


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ('{"brightness": 3}', "missing required argument(s) entity_id"),
        ('{"entity_id": 5}', "set_light.entity_id should be string"),
        ('{"entity_id": "x", "brightness": "full"}', "set_light.brightness should be integer"),
        ('{"entity_id": "x", "brightness": true}', "set_light.brightness should be integer"),
        ('{"entity_id": "x", "room": "attic"}', 'should be one of ["kitchen", "hall"]'),
    ],
)
def test_calls_are_checked_against_the_schema(arguments: str, error: str) -> None:
    """Missing, mistyped and out-of-enum arguments are reported on the call."""
    _, (call,) = rk.parse_tool_calls(
        f'<tool_call>{{"name": "set_light", "arguments": {arguments}}}</tool_call>', TOOLS
    )
    assert call.error is not None and error in call.error


def test_unknown_tool_and_unreadable_json() -> None:
    """Calls to unknown tools, and JSON beyond repair, carry an error instead of raising."""
    _, calls = rk.parse_tool_calls(
        '<tool_call>{"name": "launch"}</tool_call><tool_call>not json</tool_call>', TOOLS
    )
    assert "unknown tool 'launch'" in (calls[0].error or "")
    assert "unreadable" in (calls[1].error or "")


def test_tool_schema_from_a_function() -> None:
    """Types, defaults, Literal enums, Optional and the docstring summary become the schema."""

    def f(
        a: str,
        b: int,
        c: float = 0.5,
        d: bool | None = None,
        e: list[int] | None = None,
        g: typing.Literal[1, 2] = 1,
    ) -> None:
        """Do f."""

    fn = rk.tool_schema(f)["function"]
    assert fn["name"] == "f"
    assert fn["description"] == "Do f."
    params = fn["parameters"]
    assert params["required"] == ["a", "b"]
    assert params["properties"]["c"] == {"type": "number", "default": 0.5}
    assert params["properties"]["d"] == {"type": "boolean", "default": None}
    assert params["properties"]["e"] == {
        "type": "array",
        "items": {"type": "integer"},
        "default": None,
    }
    assert params["properties"]["g"] == {"type": "number", "enum": [1, 2], "default": 1}
    assert TOOLS[0]["function"]["description"] == "Switch a light on."

    def untyped(x) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(rk.InvalidParamsError, match="needs a type annotation"):
        rk.tool_schema(untyped)


# ---- sessions on the fake -----------------------------------------------------------------


@pytest.mark.anyio
async def test_tool_round_trip(load: LoadLLM) -> None:
    """A tool call is parsed from the model's reply; the result turn is answered; history kept."""
    llm = await load()
    chat = llm.chat(system="You control a home.", tools=[set_light])
    reply = await chat.send("please set_light in the kitchen")
    assert reply.finish_reason == "tool_calls"
    (call,) = reply.tool_calls
    assert (call.name, call.arguments, call.error) == (
        "set_light",
        {"entity_id": "fake-entity_id"},
        None,
    )
    assert reply.text == ""
    size = (await llm.kv_cache_size())[0]
    answer = await chat.send_tool_results({call.id: {"ok": True}})
    assert answer.text == 'The tool returned: {"ok": true}'
    assert not answer.tool_calls
    assert (await llm.kv_cache_size())[0] > size
    info = _native.fake_last_input(native_handle(llm))
    assert info["inputs"][0]["role"] == "tool"
    await chat.reset()
    assert await llm.kv_cache_size() == [0]
    assert len(chat.turns) == 0


@pytest.mark.anyio
async def test_thinking_is_split_from_the_answer(load: LoadLLM) -> None:
    """With a thinking model and thinking=True the reply has thinking and a clean answer."""
    llm = await load(thinking=True)
    reply = await llm.chat(thinking=True).send("why?")
    assert reply.thinking
    assert "<think>" not in reply.text and reply.text
    assert reply.generation.text.startswith("<think>")


@pytest.mark.anyio
async def test_system_prompt_without_tools_uses_the_template(load: LoadLLM) -> None:
    """A system prompt alone goes in through the (ChatML) chat template, once per conversation."""
    llm = await load()
    chat = llm.chat(system="Be brief.")
    await chat.send("one")
    first = _native.fake_last_input(native_handle(llm))["inputs"][0]["templated"]
    assert first.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\none")
    await chat.send("two")
    second = _native.fake_last_input(native_handle(llm))["inputs"][0]["templated"]
    assert second == "<|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.anyio
async def test_chunks_convert_to_openai_and_home_assistant(load: LoadLLM) -> None:
    """Chunks mark thinking text and convert in one call each."""
    llm = await load(thinking=True, script=[{"match": "x", "reply": "Final answer."}])
    async with llm.stream("x", thinking=True) as s:
        chunks = [c async for c in s]
    thinking = [c for c in chunks if c.thinking]
    answer = [c for c in chunks if not c.thinking and c.text]
    assert thinking[0].text == "<think>" and thinking[-1].text.endswith("</think>")
    assert "".join(c.text for c in answer).strip() == "Final answer."
    first = chunks[0].to_openai(model="qwen", created=7)
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "qwen"
    assert first["choices"][0]["delta"] == {"role": "assistant"}  # the bare <think> tag
    some = next(c for c in thinking if c.text.strip("<think>/ \n"))
    assert "reasoning_content" in some.to_openai()["choices"][0]["delta"]
    assert answer[0].to_openai()["choices"][0]["delta"] == {"content": answer[0].text}
    assert chunks[-1].to_openai()["choices"][0]["finish_reason"] == "stop"
    assert chunks[0].to_ha_delta() == {"role": "assistant"}
    assert "thinking_content" in some.to_ha_delta()
    assert answer[0].to_ha_delta() == {"content": answer[0].text}


@pytest.mark.anyio
async def test_streams_parse_tool_calls_as_they_close(load: LoadLLM) -> None:
    """The chunk closing a <tool_call> block carries the call; the run ends with "tool_calls"."""
    llm = await load()
    await llm.set_function_tools("Home.", TOOLS)
    async with llm.stream("set_light now") as s:
        chunks = [c async for c in s]
    with_calls = [c for c in chunks if c.tool_calls]
    assert len(with_calls) == 1
    (call,) = with_calls[0].tool_calls
    assert (call.name, call.arguments) == ("set_light", {"entity_id": "fake-entity_id"})
    assert with_calls[0].text.endswith("</tool_call>")
    assert all(c.in_tool_call for c in chunks if c.text)
    gen = s.result()
    assert gen.finish_reason == "tool_calls"
    assert gen.tool_calls == (call,)
    reply = llm.chat(tools=TOOLS).reply_from(gen)
    assert reply.tool_calls[0].id == call.id  # the same id at stream and reply level
    ha = with_calls[0].to_ha_delta()
    assert ha["tool_calls"] == [
        {"id": call.id, "tool_name": "set_light", "tool_args": {"entity_id": "fake-entity_id"}}
    ]
    assert "content" not in ha
    oa = with_calls[0].to_openai()["choices"][0]
    assert oa["delta"]["tool_calls"][0]["function"] == {
        "name": "set_light",
        "arguments": '{"entity_id": "fake-entity_id"}',
    }
    assert chunks[-1].to_openai()["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.anyio
async def test_stop_strings_keep_tool_calls_and_thinking_marks(load: LoadLLM) -> None:
    """With stop strings (the held-back path), chunks still carry tool calls and flags."""
    llm = await load(thinking=True)
    await llm.set_function_tools("Home.", TOOLS)
    async with llm.stream("set_light now", thinking=True, stop=["never-said"]) as s:
        chunks = [c async for c in s]
    calls = [call for c in chunks for call in c.tool_calls]
    assert [c.name for c in calls] == ["set_light"]
    assert calls == list(s.result().tool_calls)
    assert chunks[0].thinking
    assert any(c.in_tool_call for c in chunks)
    assert s.result().finish_reason == "tool_calls"


def _templated(llm: rk.AsyncLLM) -> str:
    return str(_native.fake_last_input(native_handle(llm))["inputs"][0]["templated"])


@pytest.mark.anyio
async def test_each_session_runs_with_its_own_system_prompt_and_tools(load: LoadLLM) -> None:
    """Two sessions on one handle each get their own system prompt / tools in force for
    their turns; a plain generate() in between runs with the handle's own configuration
    (no session's system prompt, no tools)."""
    llm = await load()
    pirate = llm.chat(system="You are a pirate.")
    home = llm.chat(system="You control a home.", tools=[set_light])
    await pirate.send("one")
    assert "You are a pirate." in _templated(llm)
    await home.send("two")
    assert "pirate" not in _templated(llm)
    info = _native.fake_last_input(native_handle(llm))
    assert "You control a home." in str(info)
    await llm.generate("three")
    plain = str(_native.fake_last_input(native_handle(llm)))
    assert "pirate" not in plain and "You control a home." not in plain and "set_light" not in plain
    await pirate.send("four")
    assert "You are a pirate." in _templated(llm)


@pytest.mark.anyio
async def test_a_session_knows_when_its_history_was_lost(load: LoadLLM) -> None:
    """Turns in a row keep their history; a plain run (or another session) in between
    empties the KV cache, and the session says so (history_lost) and starts afresh."""
    llm = await load()
    chat = llm.chat(system="Be brief.")
    await chat.send("one")
    await chat.send("two")
    assert not chat.history_lost
    size = (await llm.kv_cache_size())[0]
    await llm.generate("unrelated")
    await chat.send("three")
    assert chat.history_lost
    assert _templated(llm).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert (await llm.kv_cache_size())[0] < size + 20
    other = llm.chat()
    await other.send("x")
    assert not other.history_lost  # its first turn: nothing to lose


@pytest.mark.anyio
async def test_the_handles_own_template_is_restored_after_a_session(load: LoadLLM) -> None:
    """A template set with llm.set_chat_template() is the handle's own: plain runs get it
    back after a session used another."""
    llm = await load()
    await llm.set_chat_template("SYS ", "<u>", "</u>")
    await llm.generate("a")
    assert _templated(llm) == "SYS <u>a</u>"
    await llm.chat(system="Be brief.").send("b")
    await llm.generate("c")
    assert _templated(llm) == "SYS <u>c</u>"
