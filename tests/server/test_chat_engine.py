"""The chat engine on the fake runtime: templates, streaming, thinking, tools, stop strings,
limits, sampling, and KV-cache reuse proven with what the fake's cache holds (``kv_text``)
and what its last run received (``last_input``)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from rkllm_sdk import Chunk, ModelParams
from rkllm_sdk.errors import ClosedError, GenerationError
from rkllm_sdk.server.catalog import Loaded, ModelCatalog, ModelNotFoundError
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.chat_types import (
    ChatDelta,
    ChatDone,
    ChatRequest,
    ContextLengthError,
    RequestError,
)
from rkllm_sdk.server.kv_reuse import CACHE_SUBDIR, KVRecord
from rkllm_sdk.server.model_specs import ModelSpec
from rkllm_sdk.server.reply_parser import ReplyParser
from rkllm_sdk.testing import FakeModel, Faults, kv_text, last_input, tool_call_reply

from .conftest import DEADLINE_S

pytestmark = pytest.mark.anyio

PARAMS = ModelParams(max_context_len=2048)
SYSTEM = {"role": "system", "content": "You control a home. " + "Kitchen light is off. " * 20}
SHORT_SYSTEM = {"role": "system", "content": "Be brief."}
LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Switch a light.",
        "parameters": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
        },
    },
}
FAN_TOOL = {
    "type": "function",
    "function": {"name": "set_fan", "description": "Switch the fan.", "parameters": {}},
}


def user(text: str) -> dict[str, Any]:
    """A user message."""
    return {"role": "user", "content": text}


class Harness:
    """An engine over a catalog with one fake model, ``m:latest``."""

    def __init__(self, engine: ChatEngine, catalog: ModelCatalog) -> None:
        self.engine = engine
        self.catalog = catalog

    async def chat(self, *messages: Mapping[str, Any], **fields: Any) -> list[ChatDelta | ChatDone]:
        """Everything one request yields."""
        req = ChatRequest(model="m", messages=tuple(messages), **fields)
        with anyio.fail_after(DEADLINE_S):
            async with aclosing(self.engine.chat(req)) as it:
                return [item async for item in it]

    async def done(self, *messages: Mapping[str, Any], **fields: Any) -> ChatDone:
        """The ChatDone of one request."""
        items = await self.chat(*messages, **fields)
        last = items[-1]
        assert isinstance(last, ChatDone)
        return last

    @asynccontextmanager
    async def loaded(self) -> AsyncIterator[Loaded]:
        """The loaded model (holding its turn)."""
        with anyio.fail_after(DEADLINE_S):
            async with self.catalog.use("m") as loaded:
                yield loaded

    async def record(self) -> tuple[KVRecord, str, Any]:
        """The engine's record, the text the fake's KV cache holds, the last run's input."""
        async with self.loaded() as loaded:
            state = loaded.engine_state
            assert isinstance(state, KVRecord)
            return state, kv_text(loaded.llm), last_input(loaded.llm)

    async def render(self, *messages: Mapping[str, Any], **kw: Any) -> str:
        """The conversation as the model's template renders it."""
        async with self.loaded() as loaded:
            return loaded.template.render(list(messages), **kw)

    async def assert_continues(self, system: Mapping[str, Any]) -> None:
        """A new two-turn conversation under ``system``: its second turn continues the cache,
        which then holds exactly the rendered conversation and the reply."""
        first = [system, user("Hello there")]
        done1 = await self.done(*first)
        second = [*first, assistant(done1), user("Tell me more")]
        done2 = await self.done(*second)
        state, cache, _ = await self.record()
        assert done2.cached_tokens > 0
        assert cache == state.text == await self.render(*second) + done2.content

    async def assert_prefilled_in_full(self, *messages: Mapping[str, Any]) -> None:
        """A request for ``messages`` that reuses nothing: the whole rendered conversation is
        sent, no token is cached, and the cache then holds it and the reply."""
        done = await self.done(*messages)
        state, cache, run = await self.record()
        full = await self.render(*messages)
        assert run.input.text == full and done.cached_tokens == 0
        assert cache == state.text == full + done.content


@asynccontextmanager
async def harness(
    tmp_path: Path,
    abi: str,
    model: FakeModel,
    *,
    template: str = "qwen2.5",
    params: ModelParams = PARAMS,
    **engine_options: Any,
) -> AsyncIterator[Harness]:
    """A catalog serving ``model`` as ``m:latest`` and an engine over it."""
    path = model.write(tmp_path / "m.json")
    catalog = ModelCatalog(
        [ModelSpec(name="m:latest", path=path, params=params, template=template)],
        runtime="fake",
        abi=abi,
        cache_dir=tmp_path / "cache",
    )
    async with catalog.lifespan():
        yield Harness(ChatEngine(catalog, **engine_options), catalog)


def deltas(items: Sequence[ChatDelta | ChatDone]) -> list[ChatDelta]:
    """The deltas (everything but the final ChatDone)."""
    assert isinstance(items[-1], ChatDone)
    assert all(isinstance(i, ChatDelta) for i in items[:-1])
    return [i for i in items[:-1] if isinstance(i, ChatDelta)]


def assistant(done: ChatDone) -> dict[str, Any]:
    """The assistant message a client sends back for ``done``."""
    message: dict[str, Any] = {"role": "assistant", "content": done.content}
    if done.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in done.tool_calls
        ]
    return message


# ---- plain chats --------------------------------------------------------------------------


async def test_plain_chat(tmp_path: Path, abi: str) -> None:
    """A chat renders the conversation with the template and sends it with the runtime's
    own template off; the deltas add up to the reply."""
    async with harness(tmp_path, abi, FakeModel(replies={"Hello": "Hi there, friend!"})) as h:
        items = await h.chat(SHORT_SYSTEM, user("Hello"))
        done = items[-1]
        assert isinstance(done, ChatDone)
        assert "".join(d.content for d in deltas(items)) == done.content == "Hi there, friend!"
        assert done.finish_reason == "stop" and done.reasoning == "" and done.tool_calls == ()
        assert done.completion_tokens > 0 and done.prompt_tokens > 0 and done.cached_tokens == 0
        assert done.load_ms > 0 and done.total_ms >= done.prefill_ms
        expected = await h.render(SHORT_SYSTEM, user("Hello"))
        _, cache, run = await h.record()
        assert run.input.text == run.input.templated == expected  # no runtime template
        assert run.keep_history
        assert cache == expected + "Hi there, friend!"
        counters = h.catalog.counters("m:latest")
        assert counters.prompt_tokens == done.prompt_tokens
        assert counters.generated_tokens == done.completion_tokens


async def test_streaming_order(tmp_path: Path, abi: str) -> None:
    """Deltas arrive while the run is still going, in order, and ChatDone comes last."""
    model = FakeModel(replies={"Hello": "one two three four five six"}, decode_ms=15)
    async with harness(tmp_path, abi, model) as h:
        async with h.loaded() as loaded:
            llm = loaded.llm
        seen: list[str] = []
        running_at_first = None
        req = ChatRequest(model="m", messages=(user("Hello"),))
        with anyio.fail_after(DEADLINE_S):
            async with aclosing(h.engine.chat(req)) as it:
                async for item in it:
                    if isinstance(item, ChatDelta):
                        if running_at_first is None:
                            running_at_first = llm.is_running()
                        seen.append(item.content)
                    else:
                        assert "".join(seen) == item.content == "one two three four five six"
        assert running_at_first
        assert len(seen) > 3


async def test_one_delta_per_kind_per_token_counting_the_tokens(
    tmp_path: Path, abi: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thinking reply under the template's end-of-turn hold-back: each chunk (one token)
    gives at most one reasoning and one content delta (held-back text comes with the token
    that releases it, no longer as one delta per held piece), the text is the reply's, in
    order, and the deltas' token counts add up to the completion tokens."""
    per_chunk: list[list[ChatDelta]] = []
    feed = ReplyParser.feed

    def recording(self: ReplyParser, chunk: Chunk) -> list[ChatDelta]:
        out = feed(self, chunk)
        per_chunk.append(out)
        return out

    monkeypatch.setattr(ReplyParser, "feed", recording)
    reply = "<think>Let me think.</think>Hello world, nice to see you!"
    model = FakeModel(replies={"Hello": reply})
    async with harness(tmp_path, abi, model, template="qwen3") as h:
        items = await h.chat(user("Hello"))
    done = items[-1]
    assert isinstance(done, ChatDone)
    ds = deltas(items)
    assert done.reasoning == "Let me think." and done.content == "Hello world, nice to see you!"
    assert "".join(d.reasoning for d in ds) == done.reasoning
    assert "".join(d.content for d in ds) == done.content
    assert len(per_chunk) > 10
    for out in per_chunk:
        assert len([d for d in out if d.content]) <= 1 and len([d for d in out if d.reasoning]) <= 1
    assert len(ds) <= len(per_chunk) + 1  # one per token at most, and the end's drain
    assert sum(d.tokens for d in ds) == done.completion_tokens
    assert all(d.tokens >= 1 for d in ds)  # no chunk here gives two deltas


async def test_raw_prompt_sent_as_is(tmp_path: Path, abi: str) -> None:
    """A raw prompt reaches the runtime untouched and its reply is all content."""
    model = FakeModel(thinking=True, replies={"Once": "upon a time"})
    async with harness(tmp_path, abi, model, template="qwen3") as h:
        done = await h.done(raw_prompt="Once")
        _, _, run = await h.record()
        assert run.input.text == "Once"
        assert done.reasoning == "" and "upon a time" in done.content


async def test_unknown_model_and_bad_requests_raise_first(tmp_path: Path, abi: str) -> None:
    """ModelNotFoundError and RequestError (naming the field: a malformed message or tool
    is neither an AttributeError nor blamed on another field) come before any delta."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        with pytest.raises(ModelNotFoundError):
            await h.engine.chat(ChatRequest(model="nope", messages=(user("x"),))).__anext__()
        bad: list[tuple[dict[str, Any], str]] = [
            ({"messages": ()}, "messages"),
            ({"messages": ({"role": "robot", "content": "x"},)}, "messages"),
            ({"messages": (user("x"),), "max_tokens": 0}, "max_tokens"),
            ({"messages": ("x",)}, "messages"),
            ({"messages": (user("x"),), "keep_alive_s": math.nan}, "keep_alive"),
            ({"messages": (user("x"),), "max_tokens": True}, "max_tokens"),
            ({"raw_prompt": ["x"]}, "prompt"),
            ({"messages": (user("x"),), "tools": ("x",)}, "tools"),
            ({"messages": (user("x"),), "tools": ({"type": "function"},)}, "tools"),
            ({"messages": (user("x"),), "tools": ({"function": {"name": 3}},)}, "tools"),
            ({"messages": (user("x"),), "tool_choice": "required"}, "tool_choice"),
            (
                {"messages": (user("x"),), "tools": (LIGHT_TOOL,), "tool_choice": _named("nope")},
                "tool_choice",
            ),
            ({"messages": (user("x"),), "thinking": True}, "thinking"),  # qwen2.5: no thinking
            ({"messages": (user("x"),), "top_p": 7.0}, "top_p"),
            ({"messages": (user("x"),), "seed": 1, "top_k": 40}, "seed"),
        ]
        for fields, field in bad:
            with anyio.fail_after(DEADLINE_S), pytest.raises(RequestError) as err:
                async with aclosing(h.engine.chat(ChatRequest(model="m", **fields))) as it:
                    await it.__anext__()
            assert err.value.field == field, fields


async def test_a_prompt_longer_than_the_context_is_a_context_length_error(
    tmp_path: Path, abi: str
) -> None:
    """The runtime's refusal of a prompt longer than max_context_len (before its first
    token) is a ContextLengthError naming the field and the context length (messages, a raw
    prompt, one embedding input), raised before the first delta; the model then serves."""
    long_text = "word " * 200
    params = ModelParams(max_context_len=64)
    async with harness(tmp_path, abi, FakeModel(replies={"Hello": "Hi!"}), params=params) as h:
        for fields, field in (
            ({"messages": (user(long_text),)}, "messages"),
            ({"raw_prompt": long_text}, "raw_prompt"),
        ):
            with anyio.fail_after(DEADLINE_S), pytest.raises(ContextLengthError) as err:
                async with aclosing(h.engine.chat(ChatRequest(model="m", **fields))) as it:
                    await it.__anext__()
            assert (err.value.field, err.value.context_len) == (field, 64)
            assert "max_context_len" in err.value.cause and "64 tokens" in str(err.value)
        with anyio.fail_after(DEADLINE_S), pytest.raises(ContextLengthError) as err:
            await h.engine.embed("m", ["short", long_text])
        assert (err.value.field, err.value.context_len) == ("input[1]", 64)
        assert (await h.done(user("Hello"))).content == "Hi!"


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


# ---- thinking ------------------------------------------------------------------------------


async def test_thinking_on_and_off(tmp_path: Path, abi: str) -> None:
    """Qwen3 with a thinking model: thinking on streams the think block as reasoning (tags
    stripped) before the content; off, the prompt closes an empty think block and no
    reasoning comes."""
    async with harness(tmp_path, abi, FakeModel(thinking=True), template="qwen3") as h:
        items = await h.chat(user("Why is the sky blue?"), thinking=True)
        done = items[-1]
        assert isinstance(done, ChatDone)
        ds = deltas(items)
        assert done.reasoning and done.content
        assert "<think>" not in done.reasoning + done.content
        assert "</think>" not in done.reasoning + done.content
        first_content = next(i for i, d in enumerate(ds) if d.content)
        assert all(d.reasoning for d in ds[:first_content]) and ds[0].reasoning
        assert not done.content[0].isspace()

        done = await h.done(user("Why is the grass green?"), thinking=False)
        _, _, run = await h.record()
        assert run.input.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert done.reasoning == "" and done.content


async def test_reply_that_starts_inside_the_think_block(tmp_path: Path, abi: str) -> None:
    """DeepSeek-R1's prompt opens the think block itself: the reply starts as reasoning."""
    async with harness(tmp_path, abi, FakeModel(thinking=True), template="deepseek-r1") as h:
        items = await h.chat(user("Think about it"))
        done = items[-1]
        assert isinstance(done, ChatDone)
        _, _, run = await h.record()
        assert run.input.text.endswith("<think>\n")
        assert deltas(items)[0].reasoning
        assert done.reasoning and done.content and "</think>" not in done.content


async def test_thinking_turns_continue_the_cache(tmp_path: Path, abi: str) -> None:
    """Qwen3 drops past reasoning when it renders history; the engine still continues the
    cache (which keeps the model's own think block) and sends only the new turn."""
    async with harness(tmp_path, abi, FakeModel(thinking=True), template="qwen3") as h:
        first = [SHORT_SYSTEM, user("Why is the sky blue?")]
        done1 = await h.done(*first, thinking=True)
        second = [*first, assistant(done1), user("And the sea?")]
        done2 = await h.done(*second, thinking=True)
        state, cache, run = await h.record()
        assert done2.cached_tokens > 0
        assert run.input.text == "<|im_end|>\n<|im_start|>user\nAnd the sea?<|im_end|>\n" + (
            "<|im_start|>assistant\n"
        )
        assert cache == state.text and cache.count("</think>") == 2


async def test_thinking_off_turns_continue_the_cache(tmp_path: Path, abi: str) -> None:
    """Qwen3 with thinking off: the prompt's empty think block is not in the rendered
    history, yet turn 2 continues the cache and sends only the new turn."""
    async with harness(tmp_path, abi, FakeModel(thinking=True), template="qwen3") as h:
        first = [SHORT_SYSTEM, user("Hello")]
        done1 = await h.done(*first, thinking=False)
        second = [*first, assistant(done1), user("And then?")]
        done2 = await h.done(*second, thinking=False)
        state, cache, run = await h.record()
        assert done1.reasoning == done2.reasoning == ""
        assert run.input.text.startswith("<|im_end|>\n<|im_start|>user\nAnd then?")
        assert done2.cached_tokens > 0 and cache == state.text


async def test_think_tags_in_a_user_message_are_not_a_think_block(tmp_path: Path, abi: str) -> None:
    """Only the reply's think block (or the one the prompt opens for it) is cut from what
    the cache stands for: a "<think>" the user typed is data. Otherwise a request whose user
    message reads like the cut text would continue a cache holding another conversation."""
    async with harness(tmp_path, abi, FakeModel(thinking=True), template="qwen3") as h:
        done = await h.done(user("Say <think> please, secret"), thinking=False)
        forged = [user(f"Say {done.content} more")]
        await h.done(*forged, thinking=False, max_tokens=2)
        _, cache, run = await h.record()
        full = await h.render(*forged, enable_thinking=False)
        assert run.input.text == full and cache.startswith(full)


# ---- tools ---------------------------------------------------------------------------------


async def test_tool_calls_and_a_tool_result_turn(tmp_path: Path, abi: str) -> None:
    """A tool call comes as a ChatDelta with tool_calls and finish_reason "tool_calls"; the
    tool-result turn continues the cache (the call renders as the model wrote it)."""
    model = FakeModel(
        replies={
            "<tool_response>": "The kitchen light is on now.",
            "kitchen": tool_call_reply("set_light", {"on": True}),
        }
    )
    async with harness(tmp_path, abi, model) as h:
        first = [SHORT_SYSTEM, user("Turn on the kitchen light")]
        items = await h.chat(*first, tools=(LIGHT_TOOL, FAN_TOOL))
        done = items[-1]
        assert isinstance(done, ChatDone)
        calls = [c for d in deltas(items) for c in d.tool_calls]
        assert [(c.name, c.arguments) for c in calls] == [("set_light", {"on": True})]
        assert done.finish_reason == "tool_calls" and done.tool_calls == tuple(calls)
        assert done.content == ""
        _, _, run = await h.record()
        assert '"name": "set_light"' in run.input.text and '"name": "set_fan"' in run.input.text

        result = {"role": "tool", "tool_call_id": calls[0].id, "content": '{"ok": true}'}
        second = [*first, assistant(done), result]
        done2 = await h.done(*second, tools=(LIGHT_TOOL, FAN_TOOL))
        assert done2.content == "The kitchen light is on now." and done2.finish_reason == "stop"
        state, cache, run = await h.record()
        assert run.input.text.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>")
        full = await h.render(*second, tools=[LIGHT_TOOL, FAN_TOOL])
        assert cache == state.text == full + done2.content


async def test_llama3_bare_json_tool_calls(tmp_path: Path, abi: str) -> None:
    """Llama 3 writes calls as bare JSON: held back, parsed into tool_calls; JSON that is not
    a call of a shown tool comes out as content."""
    call = '{"name": "set_light", "parameters": {"on": true}}'
    model = FakeModel(replies={"kitchen": call, "json": '{"a": 1}'})
    async with harness(tmp_path, abi, model, template="llama3") as h:
        items = await h.chat(user("Turn on the kitchen light"), tools=(LIGHT_TOOL,))
        done = items[-1]
        assert isinstance(done, ChatDone)
        assert [d.tool_calls for d in deltas(items) if d.content] == []
        assert [(c.name, c.arguments) for c in done.tool_calls] == [("set_light", {"on": True})]
        assert done.finish_reason == "tool_calls" and done.content == ""
        done = await h.done(user("Some json please"), tools=(LIGHT_TOOL,))
        assert done.content == '{"a": 1}' and done.tool_calls == ()


async def test_tool_choice_none_never_answers_with_tool_calls(tmp_path: Path, abi: str) -> None:
    """With tool_choice "none" (no tools shown) a <tool_call> block the model writes anyway
    (e.g. imitating the history) is plain content: the reply has no tool calls and does not
    end with "tool_calls"."""
    model = FakeModel(replies={"kitchen": tool_call_reply("set_light", {"on": True})})
    async with harness(tmp_path, abi, model) as h:
        items = await h.chat(user("kitchen light"), tools=(LIGHT_TOOL,), tool_choice="none")
        done = items[-1]
        assert isinstance(done, ChatDone)
        assert done.tool_calls == () and done.finish_reason == "stop"
        assert all(not d.tool_calls for d in deltas(items))
        assert "set_light" in done.content == "".join(d.content for d in deltas(items))


async def test_tool_choice_none_and_named(tmp_path: Path, abi: str) -> None:
    """tool_choice "none" shows no tools; a named choice shows only that tool; "required"
    adds the instruction."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        tools = (LIGHT_TOOL, FAN_TOOL)
        await h.done(user("hi"), tools=tools, tool_choice="none")
        _, _, run = await h.record()
        assert "set_light" not in run.input.text
        await h.done(user("hi"), tools=tools, tool_choice=_named("set_fan"))
        _, _, run = await h.record()
        assert "set_fan" in run.input.text and "set_light" not in run.input.text
        await h.done(user("hi"), tools=tools, tool_choice="required")
        _, _, run = await h.record()
        assert "Answer by calling one or more of the tools" in run.input.text


# ---- stop strings, limits, sampling --------------------------------------------------------


async def test_stop_strings(tmp_path: Path, abi: str) -> None:
    """A stop string ends the reply (trimmed, never shown in part); the run is paused there,
    so the record still equals what the cache holds, and a history with the trimmed reply
    (which differs from the cache) is prefilled afresh."""
    model = FakeModel(replies={"count": "one, two, three. STOP four five six seven"})
    async with harness(tmp_path, abi, model) as h:
        items = await h.chat(user("count"), stop=("STOP",))
        done = items[-1]
        assert isinstance(done, ChatDone)
        assert done.content == "one, two, three. " and done.finish_reason == "stop"
        assert all("S" not in d.content for d in deltas(items))
        state, cache, _ = await h.record()
        assert state.text == cache and "STOP" in cache

        second = [user("count"), assistant(done), user("again")]
        await h.done(*second)
        _, cache, run = await h.record()
        full = await h.render(*second)
        assert run.input.text == full and cache.startswith(full)


async def test_template_stop_string(tmp_path: Path, abi: str) -> None:
    """The template's end-of-turn string ends a reply that contains it."""
    model = FakeModel(replies={"Hi": "Hello!<|im_end|>\n<|im_start|>user\nmore"})
    async with harness(tmp_path, abi, model) as h:
        done = await h.done(user("Hi"))
        assert done.content == "Hello!" and done.finish_reason == "stop"


async def test_max_tokens_is_length(tmp_path: Path, abi: str) -> None:
    """max_tokens ends the reply with "length" (runtime 1.3 per run; 1.2 paused by the engine)
    and the record still matches the cache (paced decoding: the pause lands in time)."""
    async with harness(tmp_path, abi, FakeModel(natural_end=False, decode_ms=5)) as h:
        done = await h.done(user("Talk"), max_tokens=5)
        assert done.finish_reason == "length" and done.completion_tokens == 5
        state, cache, _ = await h.record()
        assert state.text == cache


async def test_sampling_by_abi(tmp_path: Path, abi: str) -> None:
    """Runtime 1.3 takes per-run sampling; 1.2 refuses a value that differs from the
    model's, naming the field, and accepts one that equals it."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        if abi == "1.3":
            await h.done(user("hi"), temperature=0.25, top_p=0.5, top_k=7)
            _, _, run = await h.record()
            assert math.isclose(run.sampling["temperature"], 0.25, rel_tol=1e-6)
            assert math.isclose(run.sampling["top_p"], 0.5, rel_tol=1e-6)
            assert run.sampling["top_k"] == 7
        else:
            with pytest.raises(RequestError) as err:
                await h.done(user("hi"), temperature=0.25)
            assert err.value.field == "temperature" and "1.3" in str(err.value)
            await h.done(user("hi"), temperature=0.8, top_k=1, seed=42)  # the defaults


# ---- KV-cache reuse -------------------------------------------------------------------------


async def test_continuation_sends_only_the_new_turn(tmp_path: Path, abi: str) -> None:
    """Turn 2 sends the runtime only what follows the cache; the cache then holds exactly
    the whole rendered conversation plus the reply."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        first = [SHORT_SYSTEM, user("Hello there")]
        done1 = await h.done(*first)
        state, cache, _ = await h.record()
        full1 = await h.render(*first)
        assert cache == state.text == full1 + done1.content

        second = [*first, assistant(done1), user("Tell me more")]
        done2 = await h.done(*second)
        state, cache, run = await h.record()
        full2 = await h.render(*second)
        assert run.input.text == full2[len(full1 + done1.content) :]
        assert run.input.text.startswith("<|im_end|>")
        assert cache == state.text == full2 + done2.content
        assert done2.cached_tokens == done1.prompt_tokens + done1.completion_tokens
        assert done2.prompt_tokens == done2.cached_tokens + run.input.prefill_tokens
        assert h.catalog.counters("m:latest").prefill_tokens_saved == done2.cached_tokens


async def test_same_system_prompt_reuses_the_prompt_cache(tmp_path: Path, abi: str) -> None:
    """A new conversation with the same long system prompt loads the prompt cache saved by
    the first one: fewer tokens prefilled, and the cache holds exactly the new conversation."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        done1 = await h.done(SYSTEM, user("Turn on the lights"))
        assert len(list((tmp_path / "cache" / CACHE_SUBDIR).iterdir())) == 1
        done2 = await h.done(SYSTEM, user("What is the weather like?"))
        state, cache, run = await h.record()
        full = await h.render(SYSTEM, user("What is the weather like?"))
        assert run.input.text == full  # a fresh conversation: all of it sent
        assert run.input.computed_prefill_tokens < run.input.prefill_tokens / 2
        assert done2.cached_tokens == run.input.prefill_tokens - run.input.computed_prefill_tokens
        assert done1.cached_tokens == 0
        assert cache == state.text == full + done2.content


async def test_llama3_tools_in_the_user_turn_are_part_of_the_prefix(
    tmp_path: Path, abi: str
) -> None:
    """Llama 3 puts tools in the first user turn: the shared prefix (and its prompt cache)
    runs up to that turn's own text."""
    async with harness(tmp_path, abi, FakeModel(), template="llama3") as h:
        await h.done(SHORT_SYSTEM, user("Turn on the lights"), tools=(LIGHT_TOOL, FAN_TOOL))
        done = await h.done(SHORT_SYSTEM, user("Is the fan on?"), tools=(LIGHT_TOOL, FAN_TOOL))
        _, _, run = await h.record()
        assert '"set_fan"' in run.input.text
        assert done.cached_tokens == run.input.prefill_tokens - run.input.computed_prefill_tokens
        assert done.cached_tokens > run.input.prefill_tokens * 0.8


async def test_prompt_cache_directory_is_bounded(tmp_path: Path, abi: str) -> None:
    """At most prompt_cache_max_files files stay; the least recently used go first."""
    async with harness(tmp_path, abi, FakeModel(), prompt_cache_max_files=2) as h:
        for n in range(4):
            system = {"role": "system", "content": f"Home {n}. " + "State. " * 60}
            await h.done(system, user("hi"))
        assert len(list((tmp_path / "cache" / CACHE_SUBDIR).iterdir())) == 2


async def test_prompt_caches_of_failed_runs_stay_within_the_bound(tmp_path: Path, abi: str) -> None:
    """A run that saved a prompt cache and then failed (or was aborted) still applies the
    directory's bound: failing requests cannot fill the disk."""
    async with harness(
        tmp_path, abi, FakeModel(faults=Faults(error_after=2)), prompt_cache_max_files=1
    ) as h:
        for n in range(3):
            system = {"role": "system", "content": f"Home {n}. " + "State. " * 60}
            with pytest.raises(GenerationError):
                await h.done(system, user("hi"))
        assert len(list((tmp_path / "cache" / CACHE_SUBDIR).iterdir())) == 1


async def test_a_request_cancelled_while_its_prompt_cache_loads(tmp_path: Path, abi: str) -> None:
    """A request cancelled while its prompt cache loads (the runtime's call finishes in its
    thread, the cancellation lands after) leaves the engine knowing the file is loaded:
    later conversations still continue their cache."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        await h.done(SYSTEM, user("Turn on the lights"))  # saves the prompt cache
        await h.done(SHORT_SYSTEM, user("Hi"))  # the prompt cache is released
        async with h.loaded() as loaded:
            llm = loaded.llm
            load = llm.load_prompt_cache

            async def load_then_cancelled(path: Any) -> None:
                await load(path)
                await anyio.sleep(DEADLINE_S)  # the request is cancelled here

            llm.load_prompt_cache = load_then_cancelled  # type: ignore[method-assign]
        with anyio.move_on_after(0.3) as scope:
            await h.done(SYSTEM, user("What is the weather like?"))
        assert scope.cancelled_caught  # cancelled where the patch waits, not finished
        del llm.load_prompt_cache
        await h.assert_continues(SHORT_SYSTEM)


async def test_a_request_cancelled_while_its_prompt_cache_is_released(
    tmp_path: Path, abi: str
) -> None:
    """A request (here embeddings) cancelled as it was about to release the loaded prompt
    cache leaves the record unsure of it: the next fresh run releases it, and later
    conversations continue their cache."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        await h.done(SYSTEM, user("Turn on the lights"))  # saves the prompt cache
        await h.done(SYSTEM, user("What is the weather like?"))  # loads it
        async with h.loaded() as loaded:
            llm = loaded.llm
            release = llm.release_prompt_cache

            async def cancelled_then_release() -> None:
                await anyio.sleep(DEADLINE_S)  # the request is cancelled here
                await release()

            llm.release_prompt_cache = cancelled_then_release  # type: ignore[method-assign]
        with anyio.move_on_after(0.3) as scope:
            await h.engine.embed("m", ["a cat"])
        assert scope.cancelled_caught  # cancelled where the patch waits, not finished
        del llm.release_prompt_cache
        await h.assert_continues(SHORT_SYSTEM)


async def test_an_unusable_cache_directory_turns_prompt_caches_off(
    tmp_path: Path, abi: str
) -> None:
    """A cache directory that cannot be created (here its path is a file; e.g. a read-only
    models directory) turns prompt caches off: chats with a long system prompt still work,
    prefilled in full, and continue their cache."""
    model = FakeModel()
    path = model.write(tmp_path / "m.json")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    spec = ModelSpec(name="m:latest", path=path, params=PARAMS, template="qwen2.5")
    catalog = ModelCatalog([spec], runtime="fake", abi=abi, cache_dir=blocked)
    async with catalog.lifespan():
        h = Harness(ChatEngine(catalog), catalog)
        await h.assert_continues(SYSTEM)


async def test_a_damaged_prompt_cache_is_dropped(tmp_path: Path, abi: str) -> None:
    """A prompt-cache file the runtime cannot load is deleted and the run prefills in full."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        await h.done(SYSTEM, user("Turn on the lights"))
        (saved,) = (tmp_path / "cache" / CACHE_SUBDIR).iterdir()
        saved.write_bytes(b"not a prompt cache")
        done = await h.done(SYSTEM, user("What is the weather like?"))
        _, cache, _ = await h.record()
        assert done.cached_tokens == 0 and not saved.exists()
        assert cache == await h.render(SYSTEM, user("What is the weather like?")) + done.content


async def test_a_shift_after_a_prompt_cache_is_not_reused(tmp_path: Path, abi: str) -> None:
    """A run that loaded a prompt cache and then overflowed the context (the runtime shifted
    the cache: its token count still looked plausible) leaves the record unknown; so does a
    run on a prompt-cache file this engine did not measure (an earlier server's), which is
    saved anew. Without that, the next turn would send only its new text to a cache that
    lost part of the conversation."""
    system = {"role": "system", "content": "You control a home. " + "Kitchen light is off. " * 45}
    model = FakeModel(natural_end=False, decode_ms=1)
    params = ModelParams(max_context_len=400)
    async with harness(tmp_path, abi, model, params=params) as h:
        await h.done(system, user("Hi"), max_tokens=3)  # saves the prompt cache
        for engine in (h.engine, ChatEngine(h.catalog)):  # the second: a restarted server
            h.engine = engine
            await h.done(system, user("Hello"), max_tokens=200)  # ~250 + 200 tokens: shifted
            state, cache, _ = await h.record()
            assert state.text is None or state.text == cache
            await h.done(system, user("Bye"), max_tokens=2)
            state, cache, run = await h.record()
            full = await h.render(system, user("Bye"))
            assert run.input.text == full and cache.startswith(full)
            assert state.text is None or state.text == cache


def ha_system(time: str) -> dict[str, Any]:
    """A Home Assistant system message: it starts with the current time."""
    text = "You are a voice assistant for Home Assistant.\n" + "Kitchen light is off. " * 20
    return {
        "role": "system",
        "content": f"Current time is {time}. Today's date is 2026-11-30.\n{text}",
    }


async def test_home_assistant_time_moves_into_the_user_turn(tmp_path: Path, abi: str) -> None:
    """Home Assistant's time line leaves the system turn for the newest user turn and stays
    there: turn 2 (a new time) continues the cache, and a new conversation at another time
    reuses the system turn's prompt cache."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        first = [ha_system("18:42:07"), user("Hello")]
        done1 = await h.done(*first)
        _, _, run = await h.record()
        system_turn, _, rest = run.input.text.partition("<|im_start|>user\n")
        assert "Current time" not in system_turn
        assert rest.startswith("Current time is 18:42:07. Today's date is 2026-11-30.\n\nHello")

        second = [ha_system("18:42:19"), user("Hello"), assistant(done1), user("More")]
        done2 = await h.done(*second)
        state, cache, run = await h.record()
        assert run.input.text.startswith(
            "<|im_end|>\n<|im_start|>user\nCurrent time is 18:42:19. Today's date is 2026-11-30."
            "\n\nMore<|im_end|>"
        )
        assert done2.cached_tokens == done1.prompt_tokens + done1.completion_tokens
        assert cache == state.text and "18:42:07" in cache

        done3 = await h.done(ha_system("19:00:00"), user("Bye"))
        _, cache, run = await h.record()
        assert done3.cached_tokens > run.input.prefill_tokens / 2
        assert "19:00:00" in cache and "18:42" not in cache


async def test_only_home_assistants_own_time_line_moves(tmp_path: Path, abi: str) -> None:
    """Only a whole line in Home Assistant's format moves; the same words inside a line of
    the user's own instructions stay where the user wrote them, untouched."""
    own = "Say it like this: Current time is 10:00. Today's date is 2026-01-01. Then stop."
    async with harness(tmp_path, abi, FakeModel()) as h:
        system = ha_system("18:42:07")
        system["content"] += f"\n{own}"
        await h.done(system, user("Hello"))
        _, _, run = await h.record()
        system_turn, _, rest = run.input.text.partition("<|im_start|>user\n")
        assert own in system_turn and "18:42:07" not in system_turn
        assert rest.startswith("Current time is 18:42:07. Today's date is 2026-11-30.\n\nHello")

        await h.done({"role": "system", "content": own}, user("Hi"))
        _, _, run = await h.record()
        assert run.input.text == await h.render({"role": "system", "content": own}, user("Hi"))


async def test_volatile_lines_left_in_place_when_off(tmp_path: Path, abi: str) -> None:
    """With volatile_patterns=() the system message is rendered as sent: a new time is a new
    conversation (nothing reused)."""
    async with harness(tmp_path, abi, FakeModel(), volatile_patterns=()) as h:
        first = [ha_system("18:42:07"), user("Hello")]
        done1 = await h.done(*first)
        second = [ha_system("18:42:19"), user("Hello"), assistant(done1), user("More")]
        await h.done(*second)
        _, cache, run = await h.record()
        assert run.input.text == await h.render(*second)
        assert cache.startswith("<|im_start|>system\nCurrent time is 18:42:19.")


async def test_edited_history_is_not_reused(tmp_path: Path, abi: str) -> None:
    """A history that differs from what the cache holds clears it and sends everything."""
    async with harness(tmp_path, abi, FakeModel()) as h:
        first = [SHORT_SYSTEM, user("Hello there")]
        done1 = await h.done(*first)
        edited = {"role": "assistant", "content": "(edited) " + done1.content}
        second = [*first, edited, user("Go on")]
        await h.assert_prefilled_in_full(*second)


async def test_abort_mid_stream_then_a_full_prefill(tmp_path: Path, abi: str) -> None:
    """Closing the stream early aborts the run on the NPU; the record becomes unknown and
    the next request (a continuation of the aborted one) prefills the whole conversation."""
    model = FakeModel(decode_ms=10, natural_end=False)
    async with harness(tmp_path, abi, model) as h:
        first = [SHORT_SYSTEM, user("Talk to me")]
        shown = ""
        with anyio.fail_after(DEADLINE_S):
            async with aclosing(h.engine.chat(ChatRequest(model="m", messages=tuple(first)))) as it:
                async for item in it:
                    assert isinstance(item, ChatDelta)
                    shown += item.content
                    if len(shown) > 10:
                        break
        state, _, _ = await h.record()
        assert state.text is None
        async with h.loaded() as loaded:
            assert not loaded.llm.is_running()
        second = [*first, {"role": "assistant", "content": shown}, user("Go on")]
        done = await h.done(*second, max_tokens=3)
        state, cache, run = await h.record()
        full = await h.render(*second)
        assert run.input.text == full and done.cached_tokens == 0
        assert cache == state.text and cache.startswith(full)


async def test_two_requests_at_once_then_each_continues_only_its_own(
    tmp_path: Path, abi: str
) -> None:
    """Two conversations sent together take turns on the model; afterwards the cache holds
    the one that ran last, so a follow-up of the other is prefilled in full."""
    async with harness(tmp_path, abi, FakeModel(decode_ms=2)) as h:
        a, b = [SHORT_SYSTEM, user("First talk")], [SHORT_SYSTEM, user("Second talk")]
        dones: dict[str, ChatDone] = {}

        async def run(name: str, messages: list[dict[str, Any]]) -> None:
            dones[name] = await h.done(*messages)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", a)
            await anyio.sleep(0.01)  # "a" takes the turn first
            tg.start_soon(run, "b", b)
        state, cache, _ = await h.record()
        assert cache == state.text == await h.render(*b) + dones["b"].content
        follow = [*a, assistant(dones["a"]), user("More")]
        await h.assert_prefilled_in_full(*follow)


async def test_a_swap_and_back_forgets_the_cache(tmp_path: Path, abi: str) -> None:
    """With one model loaded at a time, a request for another model unloads the first; when
    it comes back its cache is empty, so its next turn is prefilled in full (the record did
    not survive the unload)."""
    paths = [FakeModel().write(tmp_path / f"{n}.json") for n in ("m", "n")]
    specs = [
        ModelSpec(name=f"{n}:latest", path=p, params=PARAMS, template="qwen2.5")
        for n, p in zip(("m", "n"), paths, strict=True)
    ]
    catalog = ModelCatalog(specs, runtime="fake", abi=abi, cache_dir=tmp_path / "cache")
    async with catalog.lifespan():
        h = Harness(ChatEngine(catalog), catalog)
        first = [SHORT_SYSTEM, user("Hello there")]
        done1 = await h.done(*first)
        with anyio.fail_after(DEADLINE_S):
            async with aclosing(
                h.engine.chat(ChatRequest(model="n", messages=(user("Hi"),)))
            ) as it:
                assert isinstance([item async for item in it][-1], ChatDone)
        second = [*first, assistant(done1), user("More")]
        await h.assert_prefilled_in_full(*second)


async def test_closing_the_catalog_ends_running_and_waiting_chats(tmp_path: Path, abi: str) -> None:
    """Closing the catalog while one chat runs and another waits for the model ends both at
    once with ClosedError (no hang)."""
    model = FakeModel(decode_ms=20, natural_end=False)
    async with harness(tmp_path, abi, model) as h:
        errors: list[BaseException] = []

        async def chat(text: str) -> None:
            req = ChatRequest(model="m", messages=(user(text),))
            try:
                async with aclosing(h.engine.chat(req)) as it:
                    async for _ in it:
                        pass
            except ClosedError as exc:
                errors.append(exc)

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(chat, "running")
                await anyio.sleep(0.2)
                tg.start_soon(chat, "waiting")
                await anyio.sleep(0.05)
                await h.catalog.aclose()
        assert len(errors) == 2


async def test_reuse_off_reprefills_everything(tmp_path: Path, abi: str) -> None:
    """The baseline (reuse=False) sends the whole conversation every time."""
    async with harness(tmp_path, abi, FakeModel(), reuse=False) as h:
        first = [SYSTEM, user("Hello there")]
        done1 = await h.done(*first)
        second = [*first, assistant(done1), user("More")]
        done2 = await h.done(*second)
        _, _, run = await h.record()
        assert run.input.text == await h.render(*second)
        assert done2.cached_tokens == 0
        assert run.input.computed_prefill_tokens == run.input.prefill_tokens
        assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


# ---- embeddings ----------------------------------------------------------------------------


async def test_embed_shape_norm_and_the_cache(tmp_path: Path, abi: str) -> None:
    """One L2-normalised vector per input (hidden_size wide), the token count; the next chat
    prefills in full."""
    async with harness(tmp_path, abi, FakeModel(hidden_size=32)) as h:
        first = [SHORT_SYSTEM, user("Hello there")]
        done1 = await h.done(*first)
        with anyio.fail_after(DEADLINE_S):
            vectors, tokens = await h.engine.embed("m", ["a cat", "a much longer dog sentence"])
        assert len(vectors) == 2 and all(len(v) == 32 for v in vectors)
        assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
        assert vectors[0] != vectors[1] and tokens >= 4
        with pytest.raises(RequestError):
            await h.engine.embed("m", [""])
        second = [*first, assistant(done1), user("More")]
        done2 = await h.done(*second)
        state, cache, run = await h.record()
        full = await h.render(*second)
        assert run.input.text == full and cache == state.text == full + done2.content
