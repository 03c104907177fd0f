"""The OpenAI face: request translation and errors (no engine), then the official ``openai``
client against ``rkllm serve``'s HTTP face on the fake runtime (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rkllm_sdk import _native
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.errors import GenerationError, InvalidParamsError, RuntimeNotFoundError
from rkllm_sdk.server import Server, ServerConfig
from rkllm_sdk.server.catalog import ModelCatalog, ModelNotFoundError, QueueFullError
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.chat_types import RequestError
from rkllm_sdk.server.http import HttpConfig, HttpFace
from rkllm_sdk.server.model_specs import parse_model_option, scan_models_dir
from rkllm_sdk.server.openai_api import openai_routes
from rkllm_sdk.server.openai_wire import (
    OpenAIError,
    error_from,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from rkllm_sdk.testing import FakeModel, Faults, tool_call_reply

from .conftest import DEADLINE_S, running

pytestmark = pytest.mark.anyio

KEY = "s3cret-key"
USER = {"role": "user", "content": "Hello"}
LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Switch a light",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
            "required": ["room", "on"],
        },
    },
}


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs on asyncio only."""
    return "asyncio"


def chat(**fields: Any) -> dict[str, Any]:
    """A chat request body with a model and one user message, plus ``fields``."""
    return {"model": "m", "messages": [USER], **fields}


def refused(parse: Any, body: Mapping[str, Any]) -> OpenAIError:
    """The 400 that ``parse`` raises for ``body``."""
    with pytest.raises(OpenAIError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


# ---- translation, no engine ----------------------------------------------------------------


def test_chat_fields_become_the_engine_request() -> None:
    """Sampling, stop, limits, tools and tool_choice arrive in the ChatRequest as given;
    max_completion_tokens wins over max_tokens; repetition_penalty is repeat_penalty."""
    parsed = parse_chat(
        chat(
            temperature=0.3,
            top_p=0.9,
            top_k=20,
            repetition_penalty=1.1,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            seed=7,
            stop="END",
            max_tokens=99,
            max_completion_tokens=12,
            tools=[LIGHT_TOOL],
            tool_choice={"type": "function", "function": {"name": "set_light"}},
            stream=True,
            stream_options={"include_usage": True},
            user="ignored",
            some_extra_field={"ignored": True},
        )
    )
    r = parsed.request
    assert (r.model, r.temperature, r.top_p, r.top_k, r.seed) == ("m", 0.3, 0.9, 20, 7)
    assert (r.repeat_penalty, r.frequency_penalty, r.presence_penalty) == (1.1, 0.5, -0.5)
    assert (r.stop, r.max_tokens, r.thinking, r.raw_prompt) == (("END",), 12, None, None)
    assert r.tools == (LIGHT_TOOL,) and r.tool_choice["function"]["name"] == "set_light"
    assert parsed.stream and parsed.include_usage and not parsed.first_tool_only
    assert parsed.params["max_tokens"] == "max_completion_tokens"
    assert parsed.params["repeat_penalty"] == "repetition_penalty"
    defaults = parse_chat(chat()).request
    assert (defaults.tool_choice, defaults.stop, defaults.max_tokens) == ("auto", (), None)
    assert parse_chat(chat(parallel_tool_calls=False)).first_tool_only


def test_messages_are_normalised() -> None:
    """developer -> system, text parts joined, assistant tool_calls' JSON arguments decoded,
    a tool result gets the name of the call it answers."""
    call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "set_light", "arguments": '{"room": "kitchen", "on": true}'},
    }
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "hm"},
        {"role": "tool", "tool_call_id": "call_7", "content": "ok"},
    ]
    normalised = parse_chat(chat(messages=messages)).request.messages
    assert normalised[0] == {"role": "system", "content": "Be brief."}
    assert normalised[1] == {"role": "user", "content": "a\nb"}
    assert normalised[2] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "hm",
        "tool_calls": [
            {
                "id": "call_7",
                "type": "function",
                "function": {"name": "set_light", "arguments": {"room": "kitchen", "on": True}},
            }
        ],
    }
    assert normalised[3] == {
        "role": "tool",
        "content": "ok",
        "tool_call_id": "call_7",
        "name": "set_light",
    }


@pytest.mark.parametrize(
    ("fields", "thinking", "param"),
    [
        ({"reasoning_effort": "none"}, False, "reasoning_effort"),
        ({"reasoning_effort": "minimal"}, False, "reasoning_effort"),
        ({"reasoning_effort": "low"}, True, "reasoning_effort"),
        ({"reasoning_effort": "high"}, True, "reasoning_effort"),
        ({"enable_thinking": False}, False, "enable_thinking"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, True, "chat_template_kwargs"),
        (
            {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "high"},
            False,
            "chat_template_kwargs",
        ),
        ({}, None, "reasoning_effort"),
    ],
)
def test_thinking_is_chosen_per_request(
    fields: dict[str, Any], thinking: bool | None, param: str
) -> None:
    """reasoning_effort none/minimal is off, low..high on; chat_template_kwargs wins."""
    parsed = parse_chat(chat(**fields))
    assert parsed.request.thinking is thinking
    assert parsed.params["thinking"].startswith(param)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": "high"}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"chat_template_kwargs": {"foo": 1}}, "chat_template_kwargs.foo"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [LIGHT_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "set_light", "arguments": "{nope"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_chat_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    """A malformed or unsupported field is a 400 whose param is the field's path."""
    error = refused(parse_chat, chat(**fields))
    assert error.param == param
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_completion_prompt_is_raw_text() -> None:
    """A completions prompt (a string or a list of one) is sent as is; token prompts,
    several prompts, echo, best_of and suffix are refused."""
    parsed = parse_completion({"model": "m", "prompt": ["Once upon"], "max_tokens": 5})
    assert parsed.request.raw_prompt == "Once upon" and parsed.request.messages == ()
    assert parsed.request.max_tokens == 5 and parsed.params["raw_prompt"] == "prompt"
    for fields, param in [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"n": 3}, "n"),
    ]:
        assert refused(parse_completion, {"model": "m", "prompt": "a", **fields}).param == param


def test_embedding_inputs() -> None:
    """Embedding input is a string or strings; token arrays and other encodings refused."""
    parsed = parse_embedding({"model": "m", "input": "hi", "encoding_format": "base64"})
    assert (parsed.inputs, parsed.base64, parsed.dimensions) == (("hi",), True, None)
    assert parse_embedding({"model": "m", "input": ["a", "b"], "dimensions": 8}).dimensions == 8
    for fields, param in [
        ({"input": [1, 2]}, "input"),
        ({"input": [[1, 2]]}, "input"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
    ]:
        assert refused(parse_embedding, {"model": "m", **fields}).param == param


def test_engine_errors_become_openai_errors() -> None:
    """Unknown model 404, full queue 429 with Retry-After, an engine RequestError 400 under
    the client's field name, runtime errors by the SDK's status, anything else 500."""
    missing = error_from(ModelNotFoundError("nope"))
    assert (missing.status, missing.code, missing.param) == (404, "model_not_found", "model")
    full = error_from(QueueFullError("m:latest", 1, 2.2))
    assert (full.status, full.headers["Retry-After"], full.headers["retry-after-ms"]) == (
        429,
        "3",
        "2200",
    )
    field = error_from(RequestError("max_tokens", "no"), {"max_tokens": "max_tokens"})
    assert (field.status, field.param) == (400, "max_tokens")
    renamed = error_from(RequestError("raw_prompt", "no"), {"raw_prompt": "prompt"})
    assert renamed.param == "prompt"
    assert error_from(InvalidParamsError("bad")).status == 400
    assert error_from(RuntimeNotFoundError("gone")).status == 503
    failed = error_from(GenerationError("npu"))
    assert (failed.status, failed.kind) == (500, "server_error")
    assert error_from(KeyError("bug")).status == 500


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.just(10**400)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_CHAT_KEYS = [
    "model", "messages", "tools", "tool_choice", "stop", "temperature", "top_p", "top_k",
    "max_tokens", "max_completion_tokens", "stream", "stream_options", "n", "logprobs",
    "response_format", "reasoning_effort", "chat_template_kwargs", "enable_thinking",
    "parallel_tool_calls", "seed", "repetition_penalty", "prompt", "input", "encoding_format",
    "dimensions", "echo", "best_of", "suffix", "logit_bias", "modalities",
]  # fmt: skip
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", 3])},
    optional={
        "content": _JSON,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {"function": st.fixed_dictionaries({"name": _JSON, "arguments": _JSON})},
                optional={"id": _JSON},
            ),
            max_size=2,
        ),
        "tool_call_id": _JSON,
    },
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    fields=st.dictionaries(st.sampled_from(_CHAT_KEYS), _JSON, max_size=6),
    messages=st.lists(_MESSAGE, max_size=3) | _JSON,
)
def test_any_body_is_translated_or_refused_with_400(fields: dict[str, Any], messages: Any) -> None:
    """Whatever JSON a client sends, each parser either translates it or raises a 400
    OpenAIError naming a field: never another exception."""
    body = {"model": "m", "messages": messages, "prompt": "p", "input": "i", **fields}
    refusals = []
    for parse in (parse_chat, parse_completion, parse_embedding):
        try:
            parse(body)
        except OpenAIError as exc:
            refusals.append(exc)
    assert all(e.status == 400 and e.body()["error"]["message"] for e in refusals)


# ---- the official client against the served face -------------------------------------------


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Fake models: ``m`` (scripted replies, tool calls), ``slow`` (20 ms a token, no end),
    ``qwen3`` (thinks), ``ponder`` (0.7 s prefill), ``broken`` (fails after 30 tokens)."""
    d = tmp_path / "openai-models"
    d.mkdir()
    FakeModel(
        replies={
            "the light is on": "Done: the kitchen light is on.",
            "every light": "\n".join(
                tool_call_reply("set_light", {"room": room, "on": True})
                for room in ("kitchen", "hall")
            ),
            "kitchen": tool_call_reply("set_light", {"room": "kitchen", "on": True}),
            "Hello": "Hi there, friend!",
        },
        hidden_size=8,
    ).write(d / "m.json")
    FakeModel(decode_ms=20, natural_end=False).write(d / "slow.json")
    FakeModel(thinking=True).write(d / "qwen3.json")  # the Qwen3 template: it thinks
    FakeModel(faults=Faults(slow_prefill_ms=700)).write(d / "ponder.json")
    FakeModel(natural_end=False, faults=Faults(error_after=30)).write(d / "broken.json")
    return d


@asynccontextmanager
async def serving(
    models_dir: Path,
    abi: str,
    *,
    max_queue: int = 8,
    key: str = KEY,
    ping_s: float = 1.0,
    log: list[str] | None = None,
    models: Sequence[str] = (),
) -> AsyncIterator[tuple[openai.AsyncOpenAI, ModelCatalog, str]]:
    """The OpenAI face over ``models_dir`` served on 127.0.0.1: (client, catalog, base URL);
    its log lines go to ``log``; ``models`` adds ``--model`` options (``NAME=PATH,OPT=V``)."""
    specs = [*scan_models_dir(models_dir), *map(parse_model_option, models)]
    catalog = ModelCatalog(specs, runtime="fake", abi=abi, max_queue=max_queue)
    face = HttpFace(
        Server(ServerConfig(runtime="fake", abi=abi, models_dir=models_dir)),
        HttpConfig(api_key=key, ping_s=ping_s),
    )
    log_line = None if log is None else log.append
    routes = openai_routes(ChatEngine(catalog), face.authorized, ping_s=ping_s, log=log_line)
    face.add(routes, lifespan=catalog.lifespan)
    handles = fake_stats(abi)["live_handles"]
    async with running(face) as where:
        base = f"http://{where}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=DEADLINE_S)
        async with client:
            yield client, catalog, base
    assert fake_stats(abi)["live_handles"] == handles  # every model unloaded


def fake_stats(abi: str) -> dict[str, int]:
    """The fake runtime's counters (runs, aborts, live handles)."""
    return _native.fake_stats(load_runtime("fake", abi=abi))


async def test_models_list_and_retrieve(models_dir: Path, abi: str) -> None:
    """GET /v1/models lists every configured model by its tagged name; retrieve resolves an
    untagged name and answers 404 model_not_found for an unknown one."""
    async with serving(models_dir, abi) as (client, _, _):
        listed = [m.id async for m in client.models.list()]
        assert listed == [
            "broken:latest",
            "m:latest",
            "ponder:latest",
            "qwen3:latest",
            "slow:latest",
        ]
        model = await client.models.retrieve("m")
        assert (model.id, model.object, model.owned_by) == ("m:latest", "model", "rkllm")
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("nope")
        assert info.value.code == "model_not_found"


async def test_chat_non_streaming(models_dir: Path, abi: str) -> None:
    """A non-streamed chat answers the model's reply, finish_reason stop, and usage with the
    cached prompt tokens: none for a first turn, the conversation so far for a follow-up."""
    async with serving(models_dir, abi) as (client, _, _):
        reply = await client.chat.completions.create(model="m", messages=[USER])
        assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
        choice = reply.choices[0]
        assert choice.message.content == "Hi there, friend!"
        assert (choice.message.role, choice.finish_reason) == ("assistant", "stop")
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0
        answer = {"role": "assistant", "content": choice.message.content}
        again = await client.chat.completions.create(model="m", messages=[USER, answer, USER])
        more = again.usage
        assert more is not None and more.prompt_tokens_details is not None
        assert usage.prompt_tokens < more.prompt_tokens_details.cached_tokens < more.prompt_tokens


async def test_chat_streaming_with_usage(models_dir: Path, abi: str) -> None:
    """A streamed chat: the role in the first delta, content deltas in order that join to
    the reply, finish_reason stop, then a usage chunk with no choices, then [DONE]."""
    log: list[str] = []
    async with serving(models_dir, abi, log=log) as (client, _, base):
        stream = await client.chat.completions.create(
            model="m", messages=[USER], stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert len({c.id for c in chunks}) == 1
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hi there, friend!"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop" and not any(finishes[:-1])
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0
        assert all(c.usage is None for c in chunks[:-1])
        headers = {"Authorization": f"Bearer {KEY}"}
        async with (
            httpx.AsyncClient(timeout=DEADLINE_S) as raw,
            raw.stream(
                "POST", f"{base}/chat/completions", json=chat(stream=True), headers=headers
            ) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]" and len(lines) > 3
    assert log == ["openai POST /v1/chat/completions 200 stop"] * 2


async def test_tools_round_trip(models_dir: Path, abi: str) -> None:
    """The model's tool call streams as a tool_calls delta (index, id, type, name, JSON
    arguments) with finish_reason tool_calls; the tool's result in a follow-up turn gets
    the model's answer; non-streamed, the call is in message.tool_calls."""
    ask = {"role": "user", "content": "Turn on the kitchen light"}
    async with serving(models_dir, abi) as (client, _, _):
        stream = await client.chat.completions.create(
            model="m", messages=[ask], tools=[LIGHT_TOOL], stream=True
        )
        chunks = [chunk async for chunk in stream]
        deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert len(deltas) == 1
        call = deltas[0]
        assert (call.index, call.type) == (0, "function") and call.id
        assert call.function is not None and call.function.name == "set_light"
        assert json.loads(call.function.arguments or "") == {"room": "kitchen", "on": True}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        whole = await client.chat.completions.create(model="m", messages=[ask], tools=[LIGHT_TOOL])
        message = whole.choices[0].message
        assert whole.choices[0].finish_reason == "tool_calls" and message.tool_calls
        assert json.loads(message.tool_calls[0].function.arguments) == {
            "room": "kitchen",
            "on": True,
        }

        history: list[Any] = [
            ask,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "set_light", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "the light is on"},
        ]
        answer = await client.chat.completions.create(
            model="m", messages=history, tools=[LIGHT_TOOL]
        )
        assert answer.choices[0].message.content == "Done: the kitchen light is on."
        assert answer.choices[0].finish_reason == "stop"


async def test_reasoning_content_with_thinking(models_dir: Path, abi: str) -> None:
    """A thinking model's thoughts come as reasoning_content (streamed: before the content
    deltas) when reasoning_effort or chat_template_kwargs turn thinking on, not when off."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    async with serving(models_dir, abi) as (client, _, _):
        on = await client.chat.completions.create(
            model="qwen3", messages=question, reasoning_effort="high"
        )
        message = on.choices[0].message
        assert getattr(message, "reasoning_content", None) and message.content
        assert "<think>" not in message.content
        off = await client.chat.completions.create(
            model="qwen3",
            messages=question,
            reasoning_effort="high",
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        assert getattr(off.choices[0].message, "reasoning_content", None) is None
        assert off.choices[0].message.content
        stream = await client.chat.completions.create(
            model="qwen3", messages=question, reasoning_effort="low", stream=True
        )
        kinds = []
        async for chunk in stream:
            delta = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                kinds.append("reasoning")
            if delta.content:
                kinds.append("content")
        assert kinds and kinds == sorted(kinds, reverse=True)  # reasoning, then content
        assert set(kinds) == {"reasoning", "content"}


async def test_completions_send_raw_text(models_dir: Path, abi: str) -> None:
    """/v1/completions answers the model's continuation of the raw prompt, whole and
    streamed (the same text), with usage."""
    async with serving(models_dir, abi) as (client, _, _):
        whole = await client.completions.create(model="m", prompt="Hello", max_tokens=32)
        assert whole.object == "text_completion" and whole.choices[0].text
        assert whole.choices[0].finish_reason in ("stop", "length")
        assert whole.usage is not None and whole.usage.prompt_tokens > 0
        stream = await client.completions.create(
            model="m", prompt="Hello", max_tokens=32, stream=True
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


async def test_embeddings_are_normalised(models_dir: Path, abi: str) -> None:
    """Each input gets a unit vector of the model's hidden size, as floats or base64
    float32; a dimensions other than the model's is refused."""
    async with serving(models_dir, abi) as (client, _, _):
        got = await client.embeddings.create(
            model="m", input=["Hello", "Goodbye"], encoding_format="float"
        )
        assert [d.index for d in got.data] == [0, 1]
        vectors = [d.embedding for d in got.data]
        assert all(len(v) == 8 for v in vectors)
        assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
        assert got.usage.prompt_tokens > 0
        packed = await client.embeddings.create(model="m", input="Hello", encoding_format="base64")
        raw = np.frombuffer(base64.b64decode(str(packed.data[0].embedding)), dtype="<f4")
        assert np.allclose(raw, vectors[0])
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="m", input="Hello", dimensions=4)
        assert info.value.param == "dimensions"


async def test_bad_fields_are_400_naming_them(models_dir: Path, abi: str) -> None:
    """The client gets BadRequestError with param naming the field, streamed or not."""
    image = {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}
    async with serving(models_dir, abi) as (client, _, _):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model="m", messages=[USER], n=2, stream=stream)
            assert info.value.param == "n" and info.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": [image]}]
            )
        assert info.value.param == "messages[0].content[0].type"
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m", messages=[USER], response_format={"type": "json_object"}
            )
        assert info.value.param == "response_format"


async def test_a_wrong_key_is_401(models_dir: Path, abi: str) -> None:
    """Without the API key every route answers 401 invalid_api_key; /health stays open."""
    async with serving(models_dir, abi) as (_, _, base):
        stranger = openai.AsyncOpenAI(
            base_url=base, api_key="wrong", max_retries=0, timeout=DEADLINE_S
        )
        async with stranger:
            with pytest.raises(openai.AuthenticationError) as info:
                await stranger.models.list()
            assert info.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                await stranger.chat.completions.create(model="m", messages=[USER])
            with pytest.raises(openai.AuthenticationError):
                await stranger.embeddings.create(model="m", input="x")
        async with httpx.AsyncClient(timeout=DEADLINE_S) as raw:
            assert (await raw.get(base.removesuffix("/v1") + "/health")).status_code == 200


async def test_unknown_model_is_404(models_dir: Path, abi: str) -> None:
    """A chat, completion or embedding for an unknown model is NotFoundError
    model_not_found, streamed or not."""
    async with serving(models_dir, abi) as (client, _, _):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as info:
                await client.chat.completions.create(model="nope", messages=[USER], stream=stream)
            assert (info.value.code, info.value.param) == ("model_not_found", "model")
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="nope", prompt="x")
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="nope", input="x")


async def test_full_queue_is_429_with_retry_after(models_dir: Path, abi: str) -> None:
    """With max_queue=0 and a run in progress, the next request is RateLimitError at once,
    with Retry-After; the model serves again once the run ends."""
    async with serving(models_dir, abi, max_queue=0) as (client, catalog, _):
        first = await client.chat.completions.create(
            model="slow", messages=[USER], stream=True, max_tokens=200
        )
        async with first:
            await anext(aiter(first))
            with anyio.fail_after(DEADLINE_S), pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="slow", messages=[USER])
            assert int(info.value.response.headers["Retry-After"]) >= 1
            assert info.value.code == "rate_limit_exceeded"
        with anyio.fail_after(DEADLINE_S):
            while catalog.counters("slow:latest").running:  # noqa: ASYNC110  # a counter
                await anyio.sleep(0.02)
        again = await client.chat.completions.create(model="slow", messages=[USER], max_tokens=3)
        assert again.choices[0].finish_reason == "length"


async def test_disconnect_mid_stream_aborts_the_run(models_dir: Path, abi: str) -> None:
    """A client leaving a stream has its run aborted on the (fake) NPU, streamed or not;
    the model serves the next request."""
    log: list[str] = []
    async with serving(models_dir, abi, log=log) as (client, catalog, base):
        before = fake_stats(abi)
        stream = await client.chat.completions.create(model="slow", messages=[USER], stream=True)
        async with stream:
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
        with anyio.fail_after(DEADLINE_S):
            while fake_stats(abi)["aborts"] == before["aborts"]:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(timeout=DEADLINE_S) as raw:
            with anyio.move_on_after(0.3):  # a buffered request given up after 0.3 s
                await raw.post(f"{base}/chat/completions", json=chat(model="slow"), headers=headers)
        with anyio.fail_after(DEADLINE_S):
            while fake_stats(abi)["aborts"] < before["aborts"] + 2:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            while catalog.counters("slow:latest").running:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        stats = fake_stats(abi)
        assert stats["runs_finished"] - before["runs_finished"] == 2
        again = await client.chat.completions.create(model="slow", messages=[USER], max_tokens=3)
        assert again.choices[0].finish_reason == "length"
    assert log[:2] == [
        "openai POST /v1/chat/completions client gone",
        "openai POST /v1/chat/completions 499",
    ]


async def test_parallel_tool_calls_false_keeps_the_first_call(models_dir: Path, abi: str) -> None:
    """A reply with two tool calls gives both, at indexes 0 and 1; with
    parallel_tool_calls=False only the first, streamed or not."""
    ask = [{"role": "user", "content": "Turn on every light"}]
    async with serving(models_dir, abi) as (client, _, _):
        both = await client.chat.completions.create(model="m", messages=ask, tools=[LIGHT_TOOL])
        calls = both.choices[0].message.tool_calls or []
        rooms = [json.loads(c.function.arguments)["room"] for c in calls]
        assert rooms == ["kitchen", "hall"] and len({c.id for c in calls}) == 2
        stream = await client.chat.completions.create(
            model="m", messages=ask, tools=[LIGHT_TOOL], stream=True
        )
        indexes = [tc.index async for c in stream for tc in (c.choices[0].delta.tool_calls or [])]
        assert indexes == [0, 1]
        one = await client.chat.completions.create(
            model="m", messages=ask, tools=[LIGHT_TOOL], parallel_tool_calls=False
        )
        assert len(one.choices[0].message.tool_calls or []) == 1
        stream = await client.chat.completions.create(
            model="m", messages=ask, tools=[LIGHT_TOOL], parallel_tool_calls=False, stream=True
        )
        chunks = [c async for c in stream]
        assert [tc.index for c in chunks for tc in (c.choices[0].delta.tool_calls or [])] == [0]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_pings_while_a_long_prefill_runs(models_dir: Path, abi: str) -> None:
    """While nothing has come yet, the stream starts after the ping interval with SSE
    comments, one per interval, then the reply and [DONE]."""
    async with serving(models_dir, abi, ping_s=0.2) as (_, _, base):
        headers = {"Authorization": f"Bearer {KEY}"}
        body = chat(model="ponder", stream=True, max_tokens=4)
        async with (
            httpx.AsyncClient(timeout=DEADLINE_S) as raw,
            raw.stream("POST", f"{base}/chat/completions", json=body, headers=headers) as r,
        ):
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line]
        data = [i for i, line in enumerate(lines) if line.startswith("data:")]
        comments = [i for i, line in enumerate(lines) if line.startswith(":")]
        assert comments[0] == 0 and len(comments) >= 2  # first a ping, then the role chunk
        assert comments[-1] < data[1]  # ... and pings until the first token
        assert lines[-1] == "data: [DONE]"


async def test_a_failed_run_is_a_server_error(models_dir: Path, abi: str) -> None:
    """A run that fails on the NPU is a 500 server_error; streamed, the chunks already sent
    are followed by an error event (the client raises APIError); the server serves on."""
    async with serving(models_dir, abi) as (client, _, _):
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="broken", messages=[USER])
        assert info.value.type == "server_error"
        stream = await client.chat.completions.create(model="broken", messages=[USER], stream=True)
        received: list[Any] = []

        async def read() -> None:
            async for chunk in stream:
                received.append(chunk)

        with pytest.raises(openai.APIError) as streamed:
            await read()
        assert received and received[0].choices[0].delta.role == "assistant"
        assert isinstance(streamed.value.body, dict)
        assert streamed.value.body["type"] == "server_error"
        assert any(c.choices and c.choices[0].delta.content for c in received)
        again = await client.chat.completions.create(model="m", messages=[USER])
        assert again.choices[0].message.content == "Hi there, friend!"


async def test_a_client_leaving_while_queued_leaves_the_queue(models_dir: Path, abi: str) -> None:
    """A streamed request waiting for a busy model (its status not yet sent) whose client
    disconnects leaves the queue at once; the run ahead of it carries on."""
    # The status waits up to ping_s for a first event: the queue must be left long before.
    async with serving(models_dir, abi, ping_s=DEADLINE_S) as (client, catalog, base):
        counters = catalog.counters("slow:latest")
        first = await client.chat.completions.create(
            model="slow", messages=[USER], stream=True, max_tokens=400
        )
        async with first:
            await anext(aiter(first))
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(timeout=DEADLINE_S) as raw:

                async def wait_in_queue() -> None:
                    body = chat(model="slow", stream=True)
                    url = f"{base}/chat/completions"
                    async with raw.stream("POST", url, json=body, headers=headers) as r:
                        await r.aread()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_in_queue)
                    with anyio.fail_after(DEADLINE_S):
                        while counters.queued == 0:  # noqa: ASYNC110  # a counter
                            await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()  # the waiting client hangs up
            with anyio.fail_after(DEADLINE_S / 4):
                while counters.queued:  # noqa: ASYNC110  # a counter
                    await anyio.sleep(0.01)
            assert counters.running == 1
            chunk = await anext(aiter(first))  # the first run is still going
            assert chunk.choices


async def test_a_prompt_longer_than_the_context_is_a_400_naming_it(
    models_dir: Path, abi: str
) -> None:
    """A conversation longer than max_context_len (the runtime refuses it before its first
    token) is 400 context_length_exceeded naming the context length (configured, or the
    runtime's default), streamed or not, for chat and completions (LiteLLM maps that code to
    ContextWindowExceededError), not an opaque 500; the model then serves the next request."""
    small = f"small={models_dir / 'm.json'},max_context_len=64"
    long_text = "word " * 300
    async with serving(models_dir, abi, models=[small]) as (client, _, _):
        with anyio.fail_after(DEADLINE_S):
            for stream in (False, True):
                with pytest.raises(openai.BadRequestError) as info:
                    await client.chat.completions.create(
                        model="small",
                        messages=[{"role": "user", "content": long_text}],
                        stream=stream,
                    )
                assert info.value.code == "context_length_exceeded"
                assert info.value.param == "messages"
                assert "maximum context length is 64 tokens" in info.value.message
            with pytest.raises(openai.BadRequestError) as info:
                await client.completions.create(model="small", prompt=long_text)
            assert (info.value.code, info.value.param) == ("context_length_exceeded", "prompt")
            with pytest.raises(openai.BadRequestError) as info:  # the runtime's default: 512
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": long_text * 3}]
                )
            assert "maximum context length is 512 tokens" in info.value.message
            reply = await client.chat.completions.create(model="small", messages=[USER])
        assert reply.choices[0].message.content == "Hi there, friend!"


async def test_an_error_quoting_a_lone_surrogate_is_well_formed(models_dir: Path, abi: str) -> None:
    """A model name with a lone surrogate (valid JSON: "\\ud800") is a 404 model_not_found
    whose message quotes it, escaped (it was a bare 500 'Internal Server Error': UTF-8
    cannot encode it), streamed or not, chat, completions and embeddings."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with (
        serving(models_dir, abi) as (_, _, base),
        httpx.AsyncClient(base_url=base, timeout=DEADLINE_S) as raw,
    ):
        with anyio.fail_after(DEADLINE_S):
            for path, stream in [
                ("/chat/completions", b"false"),
                ("/chat/completions", b"true"),
                ("/completions", b"false"),
                ("/embeddings", b"false"),
            ]:
                body = b'{"model": "m\\ud800", "prompt": "a", "input": "a", "stream": '
                body += stream + b', "messages": [{"role": "user", "content": "Hello"}]}'
                r = await raw.post(path, content=body, headers=headers)
                assert r.status_code == 404, path
                error = r.json()["error"]
                assert error["code"] == "model_not_found"
                assert "m\ud800" in error["message"]


async def send_half_a_body(url: str, path: str) -> None:
    """POST to ``path`` declaring 1000 bytes of body, send 18 of them, then hang up."""
    host, port = httpx.URL(url).host, httpx.URL(url).port or 80
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    async with await anyio.connect_tcp(host, port) as sock:
        await sock.send(head.encode() + b'{"model": "m", "m')
        await anyio.sleep(0.1)


async def test_a_client_gone_before_its_body_is_whole_is_a_quiet_499(
    models_dir: Path, abi: str
) -> None:
    """A client that hangs up halfway through its request body is logged as 499 (it was an
    unhandled ClientDisconnect: "Exception in ASGI application" and a traceback for chat,
    a 500 for embeddings); the server answers the next request."""
    log: list[str] = []
    async with serving(models_dir, abi, log=log) as (client, _, base):
        with anyio.fail_after(DEADLINE_S):
            for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
                await send_half_a_body(base, path)
                while f"openai POST {path} 499" not in log:  # noqa: ASYNC110  # a log
                    await anyio.sleep(0.02)
            reply = await client.chat.completions.create(model="m", messages=[USER])
        assert reply.choices[0].message.content == "Hi there, friend!"


async def test_tool_call_ids_are_unique_across_a_conversation(models_dir: Path, abi: str) -> None:
    """The same call made again later in a conversation gets a new id, streamed or not
    (the ids were a hash of the call, so a conversation held two calls and two results
    with one tool_call_id, which clients that key tool calls by id mix up); a result
    answering either id is read."""
    FakeModel(
        replies={
            "again": tool_call_reply("set_light", {"room": "kitchen", "on": True}),
            "ok-1": "Done once.",
            "kitchen": tool_call_reply("set_light", {"room": "kitchen", "on": True}),
        }
    ).write(models_dir / "lights.json")
    async with serving(models_dir, abi) as (client, _, _):
        with anyio.fail_after(DEADLINE_S):
            messages: list[Any] = [{"role": "user", "content": "Turn on the kitchen light"}]
            first = await client.chat.completions.create(
                model="lights", messages=messages, tools=[LIGHT_TOOL]
            )
            call = first.choices[0].message.tool_calls[0]
            messages += [
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "ok-1"},
            ]
            done = await client.chat.completions.create(
                model="lights", messages=messages, tools=[LIGHT_TOOL]
            )
            assert done.choices[0].message.content == "Done once."
            messages += [
                done.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "Once again, please"},
            ]
            ids = {call.id}
            for stream in (False, True):
                if stream:
                    chunks = await client.chat.completions.create(
                        model="lights", messages=messages, tools=[LIGHT_TOOL], stream=True
                    )
                    again = [
                        c.choices[0].delta.tool_calls[0].id
                        async for c in chunks
                        if c.choices and c.choices[0].delta.tool_calls
                    ]
                else:
                    reply = await client.chat.completions.create(
                        model="lights", messages=messages, tools=[LIGHT_TOOL]
                    )
                    again = [c.id for c in reply.choices[0].message.tool_calls or []]
                assert len(again) == 1 and again[0] not in ids
                ids.add(again[0])
