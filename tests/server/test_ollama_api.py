"""The Ollama face: its translation of Ollama's requests (no engine, no sockets), then the
official ``ollama`` client against uvicorn on 127.0.0.1 making exactly the calls Home
Assistant's Ollama integration makes (homeassistant/components/ollama: ``__init__.py``
lists with the client, ``config_flow.py`` compares ``model`` fields and pulls,
``entity.py`` chats with tools, ``stream=True``, ``keep_alive``, ``options.num_ctx`` and
``think``), plus generate, embed and the failures (401, 404, 503, a client gone)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import ollama
import openai
import pytest

from rkllm_sdk.server import Server, ServerConfig
from rkllm_sdk.server.catalog import DrainingError, ModelCatalog, QueueFullError
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.http import HttpConfig, HttpFace
from rkllm_sdk.server.model_specs import ModelSpec, parse_model_option
from rkllm_sdk.server.ollama_api import ollama_routes
from rkllm_sdk.server.ollama_wire import (
    BUSY_MESSAGE,
    OllamaError,
    chat_request,
    error_for,
    generate_request,
    normalise_messages,
    parse_keep_alive,
)
from rkllm_sdk.server.openai_api import openai_routes
from rkllm_sdk.testing import FakeModel, Faults, tool_call_reply

from .conftest import DEADLINE_S, running

KEY = "ha-secret"
CHAT = "qwen2.5:latest"  # named as Home Assistant's model picker writes a tag
THINKER = "qwen3:latest"
SLOW = "slow:latest"
BROKEN = "broken:latest"  # fails on the NPU after 20 tokens
TOOL = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    },
}
SYSTEM = "You are a voice assistant for Home Assistant. Kitchen light: off."
# Home Assistant's tool result (entity.py _convert_content): a JSON text, no tool name.
TOOL_RESULT = '{"data": {"success": [{"name": "Kitchen light"}]}, "error": null}'


# ---- translation (no engine run, no sockets) ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (-1, -1.0),
        ("-1", -1.0),
        ("-1s", -1.0),
        (0, 0.0),
        ("0", 0.0),
        ("300s", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (300, 300.0),
        (2.5, 2.5),
        ("", None),
    ],
)
def test_keep_alive_reads_seconds_and_go_durations(value: object, seconds: float | None) -> None:
    """keep_alive takes Ollama's forms: seconds, Go durations, negative = forever."""
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m5", "1x", True, [], "nan", float("inf")])
def test_keep_alive_refuses_what_is_no_duration(value: object) -> None:
    """Anything else is a 400 naming keep_alive."""
    with pytest.raises(OllamaError, match="keep_alive") as caught:
        parse_keep_alive(value)
    assert caught.value.status == 400


def test_busy_and_shutting_down_are_503_with_retry_after() -> None:
    """A full queue is Ollama's own busy text; a server shutting down says so (both 503
    with Retry-After, which clients and balancers retry)."""
    busy = error_for(QueueFullError("m:latest", 4, 2.2), "m")
    assert busy is not None
    assert (busy.status, busy.message, busy.headers) == (503, BUSY_MESSAGE, {"Retry-After": "3"})
    draining = error_for(DrainingError("m:latest"), "m")
    assert draining is not None and draining.status == 503
    assert "shutting down" in draining.message and draining.headers == {"Retry-After": "5"}


def test_home_assistant_body_becomes_one_engine_request() -> None:
    """The body Home Assistant sends maps field by field; num_ctx and unknown options are
    accepted and ignored, think levels turn thinking on."""
    req = chat_request(
        {
            "model": CHAT,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "turn on the kitchen light"},
            ],
            "tools": [TOOL],
            "stream": True,
            "keep_alive": "300s",
            "options": {
                "num_ctx": 8192,
                "num_predict": 64,
                "temperature": 0.5,
                "top_k": 40,
                "top_p": 0.9,
                "repeat_penalty": 1.1,
                "presence_penalty": 0.2,
                "frequency_penalty": 0.3,
                "seed": 7,
                "stop": ["</s>"],
                "mirostat": 2,
                "no_such_option": 1,
            },
            "think": "high",
        }
    )
    assert req.model == CHAT and req.keep_alive_s == 300.0 and req.thinking is True
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert req.tools == (TOOL,)
    assert (req.max_tokens, req.temperature, req.top_k, req.top_p) == (64, 0.5, 40, 0.9)
    assert (req.repeat_penalty, req.presence_penalty, req.frequency_penalty) == (1.1, 0.2, 0.3)
    assert req.seed == 7 and req.stop == ("</s>",)
    unlimited = chat_request({"model": CHAT, "messages": [], "options": {"num_predict": -1}})
    assert unlimited.max_tokens is None and unlimited.thinking is None
    assert chat_request({"model": CHAT, "think": False}).thinking is False


def test_tool_turns_are_normalised_with_stable_ids() -> None:
    """Assistant tool calls get ids by position (the same every request, so the rendered
    history repeats exactly); a tool result without a name answers the oldest open call;
    thinking is kept as reasoning_content; string arguments are parsed."""
    messages = normalise_messages(
        [
            {"role": "user", "content": "lights"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "two lights",
                "tool_calls": [
                    {"function": {"name": "HassTurnOn", "arguments": {"name": "a"}}},
                    {"function": {"name": "HassTurnOff", "arguments": '{"name": "b"}'}},
                ],
            },
            {"role": "tool", "content": "off ok", "tool_name": "HassTurnOff"},
            {"role": "tool", "content": "on ok"},
        ]
    )
    assistant, off, on = messages[1], messages[2], messages[3]
    assert assistant["reasoning_content"] == "two lights"
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert assistant["tool_calls"][1]["function"]["arguments"] == {"name": "b"}
    assert (off["tool_call_id"], off["name"]) == ("call_1_1", "HassTurnOff")
    assert (on["tool_call_id"], on["name"]) == ("call_1_0", "HassTurnOn")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"format": "json"}, "format"),
        ({"format": {"type": "object"}}, "format"),
        ({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": "hello"}, "messages"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"options": {"temperature": "hot"}}, "temperature"),
        ({"options": {"num_ctx": 0}}, "num_ctx"),
        ({"options": {"stop": [1]}}, "stop"),
        ({"think": "very"}, "think"),
        ({"logprobs": True}, "logprobs"),
        ({"model": ""}, "model"),
    ],
)
def test_chat_refuses_what_it_cannot_honour(body: dict[str, Any], field: str) -> None:
    """A field the board cannot honour is a 400 naming it, never silently dropped."""
    with pytest.raises(OllamaError, match=field) as caught:
        chat_request({"model": CHAT, **body})
    assert caught.value.status == 400


def test_generate_body_becomes_a_turn_or_a_raw_prompt() -> None:
    """generate: system + prompt as turns in the model's template, or raw text as is;
    suffix, a custom template, token context and images are refused."""
    turns = generate_request({"model": CHAT, "prompt": "Hi", "system": "Be brief."})
    assert turns.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    )
    raw = generate_request({"model": CHAT, "prompt": "<|im_start|>user", "raw": True})
    assert raw.raw_prompt == "<|im_start|>user" and raw.messages == ()
    for field, value in [
        ("suffix", "x"),
        ("template", "{{ .Prompt }}"),
        ("context", [1, 2]),
        ("images", ["aGk="]),
    ]:
        with pytest.raises(OllamaError, match=field):
            generate_request({"model": CHAT, "prompt": "Hi", field: value})


# ---- the real client against the served face ---------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def model_files(tmp_path: Path) -> dict[str, Path]:
    """Fake models: a chat model scripted for Home Assistant's tool round trip, a Qwen3-style
    thinking model, and a slow one that never ends on its own."""
    d = tmp_path / "models"
    d.mkdir()
    chat = FakeModel(
        # First match wins: the tool result's rule before the request's.
        replies={
            'Kitchen light"}]}': "The kitchen light is on.",
            "turn on the kitchen": tool_call_reply("HassTurnOn", {"name": "Kitchen light"}),
            "Hello": "Hi there, friend!",
        },
        hidden_size=8,
    )
    return {
        CHAT: chat.write(d / "qwen2.5-1.5b-instruct-w8a8.json"),
        THINKER: FakeModel(thinking=True, hidden_size=8).write(d / "qwen3-1.7b-w8a8.json"),
        SLOW: FakeModel(decode_ms=20, natural_end=False).write(d / "slow.json"),
        BROKEN: FakeModel(faults=Faults(error_after=20), natural_end=False).write(
            d / "broken.json"
        ),
    }


class Served:
    """A served face: its URL, catalog, and the clients made for it (closed at the end)."""

    def __init__(self, host: str, catalog: ModelCatalog) -> None:
        self.host = host
        self.catalog = catalog
        self.clients: list[ollama.AsyncClient] = []

    def client(self, key: str | None = KEY) -> ollama.AsyncClient:
        """The client as Home Assistant builds it (a Bearer header when a key is set)."""
        headers = {"Authorization": f"Bearer {key}"} if key else None
        made = ollama.AsyncClient(host=self.host, headers=headers, timeout=DEADLINE_S)
        self.clients.append(made)
        return made


@asynccontextmanager
async def serving(
    model_files: dict[str, Path],
    abi: str,
    *,
    max_queue: int = 8,
    models: Sequence[str] = (),
    log: list[str] | None = None,
    with_openai: bool = False,
) -> AsyncIterator[Served]:
    """The Ollama face over an engine on the fake runtime, behind KEY, served by uvicorn on
    127.0.0.1; ``models`` adds ``--model`` options (``NAME=PATH,OPT=V``); the face's log
    lines go to ``log``; ``with_openai`` mounts the OpenAI face on the same engine too, as
    ``rkllm serve`` does."""
    specs = [ModelSpec(name=name, path=path) for name, path in model_files.items()]
    specs += map(parse_model_option, models)
    catalog = ModelCatalog(specs, runtime="fake", abi=abi, max_loaded=1, max_queue=max_queue)
    face = HttpFace(Server(ServerConfig(runtime="fake", abi=abi)), HttpConfig(api_key=KEY))
    log_line = None if log is None else log.append
    engine = ChatEngine(catalog)
    face.add(ollama_routes(engine, face.authorized, log=log_line))
    if with_openai:
        face.add(openai_routes(engine, face.authorized))
    face.add([], lifespan=catalog.lifespan)
    async with running(face) as where:
        served = Served(f"http://{where}", catalog)
        try:
            yield served
        finally:
            with anyio.CancelScope(shield=True):
                for made in served.clients:
                    await made.close()


async def collect(parts: AsyncIterator[ollama.ChatResponse]) -> list[ollama.ChatResponse]:
    """Every chunk of a streamed chat."""
    return [part async for part in parts]


def tool_calls(chunks: Sequence[ollama.ChatResponse]) -> list[Any]:
    """The tool calls across chunks, as Home Assistant's _transform_stream gathers them."""
    return [call for c in chunks for call in c.message.tool_calls or ()]


@pytest.mark.anyio
async def test_list_with_a_bearer_key_names_models_by_their_tag(
    model_files: dict[str, Path], abi: str
) -> None:
    """list() (Home Assistant's setup and model picker): every model's ``model`` equals its
    configured tag; no key or a wrong one is 401 in Ollama's shape; the probe and version
    answer."""
    async with serving(model_files, abi) as served:
        c = served.client()
        with anyio.fail_after(DEADLINE_S):
            listed = await c.list()
            assert sorted(m.model or "" for m in listed.models) == sorted(model_files)
            entry = next(m for m in listed.models if m.model == CHAT)
            assert entry.size == model_files[CHAT].stat().st_size and entry.modified_at
            assert entry.details is not None and entry.details.parameter_size == "1.5B"
            assert entry.details.quantization_level == "W8A8"
            for key in (None, "wrong"):
                with pytest.raises(ollama.ResponseError) as caught:
                    await served.client(key).list()
                assert caught.value.status_code == 401 and caught.value.error == "unauthorized"
            async with httpx.AsyncClient(base_url=served.host) as raw:
                assert (await raw.get("/")).text == "Ollama is running"
                assert (await raw.head("/")).status_code == 200
                version = await raw.get("/api/version", headers={"Authorization": f"Bearer {KEY}"})
                assert version.json()["version"]
                names = [m["name"] for m in (await client_json(raw, "/api/tags"))["models"]]
                assert sorted(names) == sorted(model_files)


async def client_json(raw: httpx.AsyncClient, path: str) -> Any:
    """GET ``path`` with the key, decoded."""
    return (await raw.get(path, headers={"Authorization": f"Bearer {KEY}"})).json()


@pytest.mark.anyio
async def test_home_assistant_tool_round_trip_streams(
    model_files: dict[str, Path], abi: str
) -> None:
    """Home Assistant's conversation turn: a streamed chat with tools, keep_alive=-1 and
    num_ctx gives the tool call with object arguments, done_reason stop and nanosecond
    timings; the tool-result turn (keep_alive "300s") streams the answer, evaluating only
    what is new."""
    async with serving(model_files, abi) as served:
        c = served.client()
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "turn on the kitchen light"},
        ]
        with anyio.fail_after(DEADLINE_S):
            first = await collect(
                await c.chat(
                    model=CHAT,
                    messages=list(messages),
                    tools=[TOOL],
                    stream=True,
                    keep_alive=-1,
                    options={"num_ctx": 8192},
                    think=None,
                )
            )
        calls = tool_calls(first)
        assert [(t.function.name, dict(t.function.arguments)) for t in calls] == [
            ("HassTurnOn", {"name": "Kitchen light"})
        ]
        last = first[-1]
        assert last.done and last.done_reason == "stop" and not any(p.done for p in first[:-1])
        assert isinstance(last.eval_count, int) and last.eval_count > 0
        assert isinstance(last.total_duration, int) and last.total_duration > 0
        assert last.prompt_eval_count is not None and last.eval_duration is not None
        messages.append(
            {
                "role": "assistant",
                "content": "".join(p.message.content or "" for p in first),
                "tool_calls": [
                    {"function": {"name": t.function.name, "arguments": t.function.arguments}}
                    for t in calls
                ],
            }
        )
        messages.append({"role": "tool", "content": TOOL_RESULT})
        with anyio.fail_after(DEADLINE_S):
            second = await collect(
                await c.chat(
                    model=CHAT,
                    messages=messages,
                    tools=[TOOL],
                    stream=True,
                    keep_alive="300s",
                    options={"num_ctx": 8192},
                )
            )
        assert "".join(p.message.content or "" for p in second) == "The kitchen light is on."
        assert not tool_calls(second) and second[-1].done_reason == "stop"
        # The tool-result turn continues the KV cache: only the new turn is evaluated.
        assert 0 < (second[-1].prompt_eval_count or 0) < (last.prompt_eval_count or 0)


@pytest.mark.anyio
async def test_think_true_streams_thinking_apart(model_files: dict[str, Path], abi: str) -> None:
    """think=True on a thinking model: message.thinking carries the reasoning, content the
    answer without think tags; think=False gives no thinking."""
    async with serving(model_files, abi) as served:
        c = served.client()
        question = [{"role": "user", "content": "Why is the sky blue?"}]
        with anyio.fail_after(DEADLINE_S):
            chunks = await collect(
                await c.chat(model=THINKER, messages=question, stream=True, think=True)
            )
            thinking = "".join(p.message.thinking or "" for p in chunks)
            content = "".join(p.message.content or "" for p in chunks)
            assert thinking.strip() and content.strip() and "<think>" not in thinking + content
            plain = await c.chat(model=THINKER, messages=question, think=False)
        assert not plain.message.thinking and (plain.message.content or "").strip()


@pytest.mark.anyio
async def test_non_streamed_chat_ps_show_and_pull(model_files: dict[str, Path], abi: str) -> None:
    """stream=False is one object with the whole message; ps shows the loaded model kept
    forever; show reports template and capabilities; pull succeeds for a configured model
    (streamed or not) and is a 404 for any other, never downloading."""
    async with serving(model_files, abi) as served:
        c = served.client()
        with anyio.fail_after(DEADLINE_S):
            reply = await c.chat(
                model=CHAT, messages=[{"role": "user", "content": "Hello"}], keep_alive=-1
            )
            assert reply.message.content == "Hi there, friend!" and reply.done
            assert reply.done_reason == "stop" and (reply.eval_count or 0) > 0
            running = (await c.ps()).models
            assert [m.model for m in running] == [CHAT] and running[0].name == CHAT
            assert running[0].expires_at is not None and running[0].expires_at.year > 2100
            shown = await c.show(THINKER)
            assert shown.capabilities is not None and "completion" in shown.capabilities
            assert "thinking" in shown.capabilities and shown.template
            assert (await c.pull(CHAT)).status == "success"
            statuses = [p.status async for p in await c.pull(CHAT, stream=True)]
            assert statuses[-1] == "success" and statuses[0] == "pulling manifest"
            with pytest.raises(ollama.ResponseError) as caught:
                await c.pull("llama3.2:latest")
            assert caught.value.status_code == 404 and "never downloads" in caught.value.error


@pytest.mark.anyio
async def test_generate_streams_loads_and_unloads(model_files: dict[str, Path], abi: str) -> None:
    """generate streams ``response`` pieces and ends done, with system or raw; an empty
    prompt loads the model (done_reason load) and keep_alive 0 unloads it (done_reason
    unload, ps empty)."""
    async with serving(model_files, abi) as served:
        c = served.client()
        with anyio.fail_after(DEADLINE_S):
            pieces = [p async for p in await c.generate(model=CHAT, prompt="Hello", stream=True)]
            assert "".join(p.response or "" for p in pieces) == "Hi there, friend!"
            assert pieces[-1].done and pieces[-1].done_reason == "stop"
            whole = await c.generate(model=CHAT, prompt="Hello", system="Be kind.")
            assert whole.response == "Hi there, friend!"
            raw = await c.generate(model=CHAT, prompt="<|im_start|>user\nHello", raw=True)
            assert raw.response == "Hi there, friend!" and raw.done_reason == "stop"
            loaded = await c.generate(model=THINKER, prompt="", keep_alive="5m")
            assert loaded.done_reason == "load"
            assert [m.model for m in (await c.ps()).models] == [THINKER]
            unloaded = await c.generate(model=THINKER, prompt="", keep_alive=0)
            assert unloaded.done_reason == "unload" and not (await c.ps()).models
            with pytest.raises(ollama.ResponseError) as caught:
                await c.generate(model=CHAT, prompt="Hello", suffix="end")
            assert caught.value.status_code == 400 and "suffix" in caught.value.error


@pytest.mark.anyio
async def test_embed_returns_unit_vectors(model_files: dict[str, Path], abi: str) -> None:
    """embed gives one unit-length vector per input with the prompt token count; the older
    embeddings endpoint gives one vector."""
    async with serving(model_files, abi) as served:
        c = served.client()
        with anyio.fail_after(DEADLINE_S):
            out = await c.embed(model=CHAT, input=["kitchen light", "garage door"])
            old = await c.embeddings(model=CHAT, prompt="kitchen light")
        assert len(out.embeddings) == 2 and (out.prompt_eval_count or 0) > 0
        for vector in out.embeddings:
            assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
        assert list(old.embedding) == pytest.approx(list(out.embeddings[0]), rel=1e-5)


@pytest.mark.anyio
async def test_unknown_model_and_refused_fields(model_files: dict[str, Path], abi: str) -> None:
    """An unknown model is Ollama's 404 text; format (Home Assistant's structured AI tasks)
    is a clear 400."""
    async with serving(model_files, abi) as served:
        c = served.client()
        hello = [{"role": "user", "content": "Hello"}]
        with anyio.fail_after(DEADLINE_S):
            with pytest.raises(ollama.ResponseError) as caught:
                await collect(await c.chat(model="nope", messages=hello, stream=True))
            assert caught.value.status_code == 404
            assert caught.value.error == 'model "nope" not found, try pulling it first'
            with pytest.raises(ollama.ResponseError) as caught:
                await c.chat(model=CHAT, messages=hello, format="json")
            assert caught.value.status_code == 400 and "format" in caught.value.error
            with pytest.raises(ollama.ResponseError) as caught:
                await c.show("nope")
            assert caught.value.status_code == 404
            with pytest.raises(ollama.ResponseError) as caught:
                await c.chat(model=CHAT, messages=hello, think=True)
            assert caught.value.status_code == 400 and "thinking" in caught.value.error


@pytest.mark.anyio
async def test_stream_is_ndjson_and_a_late_failure_is_an_error_line(
    model_files: dict[str, Path], abi: str
) -> None:
    """The stream is application/x-ndjson, one object per line, done only on the last; a run
    that fails after it began ends with Ollama's in-stream {"error": ...} line."""
    async with serving(model_files, abi) as served:
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}]}
        async with httpx.AsyncClient(base_url=served.host, timeout=DEADLINE_S) as raw:
            with anyio.fail_after(DEADLINE_S):
                r = await raw.post("/api/chat", json=body, headers=headers)
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        assert "".join(line["message"]["content"] for line in lines) == "Hi there, friend!"
        c = served.client()
        got: list[str] = []

        async def read() -> None:
            async for part in await c.generate(model=BROKEN, prompt="go", stream=True):
                got.append(part.response or "")

        with anyio.fail_after(DEADLINE_S), pytest.raises(ollama.ResponseError) as caught:
            await read()
        assert "".join(got) and "error" in caught.value.error.lower()


async def first_chunk(c: ollama.AsyncClient, started: anyio.Event) -> None:
    """Stream a never-ending chat on the slow model until the test cancels it."""
    stream = await c.chat(model=SLOW, messages=[{"role": "user", "content": "go"}], stream=True)
    async for _ in stream:
        started.set()


async def start_endless_chat(tg: anyio.abc.TaskGroup, c: ollama.AsyncClient) -> None:
    """Start a never-ending streamed chat on the slow model in ``tg``; return once it streams."""
    started = anyio.Event()
    tg.start_soon(first_chunk, c, started)
    with anyio.fail_after(DEADLINE_S):
        await started.wait()


async def fill_the_queue(
    tg: anyio.abc.TaskGroup, c: ollama.AsyncClient, catalog: ModelCatalog
) -> None:
    """Fill the slow model's queue (``max_queue=1``): one chat running, one waiting."""
    await start_endless_chat(tg, c)
    tg.start_soon(first_chunk, c, anyio.Event())  # waits in the queue
    with anyio.fail_after(DEADLINE_S):
        while catalog.counters(SLOW).queued < 1:  # noqa: ASYNC110  # no event
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_full_queue_is_503_at_once(model_files: dict[str, Path], abi: str) -> None:
    """With one run going and the queue (max_queue=1) holding another, a third request is
    answered 503 at once with Ollama's busy text and a Retry-After."""
    async with serving(model_files, abi, max_queue=1) as served:
        c = served.client()
        async with anyio.create_task_group() as tg:
            await fill_the_queue(tg, c, served.catalog)
            with anyio.fail_after(DEADLINE_S), pytest.raises(ollama.ResponseError) as caught:
                await c.chat(model=SLOW, messages=[{"role": "user", "content": "x"}])
            assert caught.value.status_code == 503 and "server busy" in caught.value.error
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_refused_and_failed_runs_are_logged(model_files: dict[str, Path], abi: str) -> None:
    """A chat or generate refused when its run starts (an unknown model: 404, a full queue:
    503) or failing after its stream began leaves a log line, as every other refusal does."""
    log: list[str] = []
    async with serving(model_files, abi, max_queue=1, log=log) as served:
        c = served.client()
        with anyio.fail_after(DEADLINE_S), pytest.raises(ollama.ResponseError):
            await c.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        assert 'ollama POST /api/chat 404: model "nope" not found, try pulling it first' in log
        async with anyio.create_task_group() as tg:
            await fill_the_queue(tg, c, served.catalog)
            with anyio.fail_after(DEADLINE_S), pytest.raises(ollama.ResponseError):
                await c.generate(model=SLOW, prompt="x")
            tg.cancel_scope.cancel()
        assert f"ollama POST /api/generate 503: {BUSY_MESSAGE}" in log
        with anyio.fail_after(DEADLINE_S), pytest.raises(ollama.ResponseError):
            async for _ in await c.generate(model=BROKEN, prompt="go", stream=True):
                pass
        failed = [line for line in log if line.startswith("ollama POST /api/generate 200, then")]
        assert len(failed) == 1 and " 500: " in failed[0], log


@pytest.mark.anyio
async def test_client_gone_mid_stream_aborts_the_run(
    model_files: dict[str, Path], abi: str
) -> None:
    """A client that closes a never-ending stream frees the model at once: the next request
    for it is answered instead of waiting behind a run nobody reads."""
    async with serving(model_files, abi, max_queue=1) as served:
        c = served.client()
        async with anyio.create_task_group() as tg:
            await start_endless_chat(tg, c)
            tg.cancel_scope.cancel()  # closes the stream: the client disconnects
        with anyio.fail_after(DEADLINE_S):
            reply = await served.client().chat(
                model=SLOW,
                messages=[{"role": "user", "content": "x"}],
                options={"num_predict": 3},
            )
        assert reply.done and reply.done_reason == "length" and reply.eval_count == 3


@pytest.mark.anyio
async def test_a_prompt_longer_than_the_context_is_a_400_naming_it(
    model_files: dict[str, Path], abi: str
) -> None:
    """A conversation longer than max_context_len (the runtime refuses it before its first
    token) is a 400 saying the input exceeds the context length and naming it (configured,
    or the runtime's default), streamed or not, chat and generate (not an opaque 500); the
    model then serves the next request."""
    small = f"small={model_files[CHAT]},max_context_len=64"
    long_text = "word " * 300
    async with serving(model_files, abi, models=[small]) as served:
        c = served.client()
        too_long = [{"role": "user", "content": long_text}]
        with anyio.fail_after(DEADLINE_S):
            for call in (
                c.chat(model="small", messages=too_long, stream=False),
                collect(await c.chat(model="small", messages=too_long, stream=True)),
            ):
                with pytest.raises(ollama.ResponseError) as caught:
                    await call
                assert caught.value.status_code == 400
                assert "exceeds the context length" in caught.value.error
                assert "64 tokens" in caught.value.error
            with pytest.raises(ollama.ResponseError) as caught:
                await c.generate(model="small", prompt=long_text)
            assert caught.value.status_code == 400 and "64 tokens" in caught.value.error
            with pytest.raises(ollama.ResponseError) as caught:  # the runtime's default: 512
                await c.generate(model=CHAT, prompt=long_text * 3)
            assert caught.value.status_code == 400
            assert "qwen2.5:latest's context is 512 tokens" in caught.value.error
            reply = await c.chat(model="small", messages=[{"role": "user", "content": "Hello"}])
        assert reply.message.content == "Hi there, friend!"


@pytest.mark.anyio
async def test_bodies_that_are_no_request_are_400_in_ollamas_shape(
    model_files: dict[str, Path], abi: str
) -> None:
    """Malformed, non-UTF-8, non-object and deeply nested JSON bodies are each a 400
    {"error": ...} on every POST endpoint (a nesting deeper than the decoder went was a 500);
    the server then answers the next request."""
    bodies = [b'{"model":', b'{"model": "\xff"}', b"[1]", b"[" * 100_000 + b"]" * 100_000]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with serving(model_files, abi) as served:
        async with httpx.AsyncClient(base_url=served.host, timeout=DEADLINE_S) as raw:
            with anyio.fail_after(DEADLINE_S):
                for path in ("/api/chat", "/api/generate", "/api/embed", "/api/show"):
                    for body in bodies:
                        r = await raw.post(path, content=body, headers=headers)
                        assert r.status_code == 400, (path, body[:20], r.text)
                        assert isinstance(r.json()["error"], str)
                reply = await served.client().chat(
                    model=CHAT, messages=[{"role": "user", "content": "Hello"}]
                )
        assert reply.message.content == "Hi there, friend!"


@pytest.mark.anyio
async def test_other_paths_and_methods_are_404_in_ollamas_shape(
    model_files: dict[str, Path], abi: str
) -> None:
    """An unknown /api path, or a known one with another method (GET /api/chat), is a 404
    {"error": ...} as Ollama answers it (it was Starlette's plain-text 404 / 405); the
    client raises ResponseError with the text."""
    async with serving(model_files, abi) as served:
        async with httpx.AsyncClient(base_url=served.host, timeout=DEADLINE_S) as raw:
            with anyio.fail_after(DEADLINE_S):
                for method, path in [
                    ("GET", "/api/nope"),
                    ("POST", "/api/nope/deeper"),
                    ("GET", "/api/chat"),
                    ("DELETE", "/api/tags"),
                    ("POST", "/api"),
                ]:
                    r = await raw.request(method, path)
                    assert r.status_code == 404, (method, path)
                    assert path in r.json()["error"]
                tags = await raw.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"})
        assert tags.status_code == 200


@pytest.mark.anyio
async def test_an_error_quoting_a_lone_surrogate_is_well_formed(
    model_files: dict[str, Path], abi: str
) -> None:
    """A model name with a lone surrogate (valid JSON: "\\ud800") is a 404 whose message
    quotes it, escaped (it was a bare 500 'Internal Server Error': UTF-8 cannot encode it);
    a prompt with one is a 400."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with serving(model_files, abi) as served:
        async with httpx.AsyncClient(base_url=served.host, timeout=DEADLINE_S) as raw:
            with anyio.fail_after(DEADLINE_S):
                for path in ("/api/chat", "/api/generate", "/api/show", "/api/embed"):
                    body = b'{"model": "nope\\ud800", "prompt": "a", "input": "a",'
                    body += b' "messages": [{"role": "user", "content": "Hello"}]}'
                    r = await raw.post(path, content=body, headers=headers)
                    assert r.status_code == 404, path
                    assert r.json() == {
                        "error": 'model "nope\ud800" not found, try pulling it first'
                    }
                body = b'{"model": "%s", "stream": false,' % CHAT.encode()
                body += b' "messages": [{"role": "user", "content": "Hello \\ud800"}]}'
                r = await raw.post("/api/chat", content=body, headers=headers)
        assert r.status_code == 400 and "surrogates" in r.json()["error"]


@pytest.mark.anyio
async def test_a_client_gone_before_its_body_is_whole_is_a_quiet_499(
    model_files: dict[str, Path], abi: str
) -> None:
    """A client that hangs up halfway through its request body is logged as 499 (it was a
    500 for a ClientDisconnect); the server answers the next request."""
    log: list[str] = []
    async with serving(model_files, abi, log=log) as served:
        host, port = httpx.URL(served.host).host, httpx.URL(served.host).port or 80
        with anyio.fail_after(DEADLINE_S):
            for path in ("/api/chat", "/api/generate", "/api/embed"):
                head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                async with await anyio.connect_tcp(host, port) as sock:
                    await sock.send(head.encode() + b'{"model": "m", "m')
                    await anyio.sleep(0.1)
                expected = f"ollama POST {path} 499: the client closed the request"
                while expected not in log:  # noqa: ASYNC110  # a log, no event
                    await anyio.sleep(0.02)
            reply = await served.client().chat(
                model=CHAT, messages=[{"role": "user", "content": "Hello"}]
            )
        assert reply.message.content == "Hi there, friend!"


@pytest.mark.anyio
async def test_both_faces_queue_on_one_model_in_order_nothing_mixed(
    model_files: dict[str, Path], abi: str, tmp_path: Path
) -> None:
    """Streamed requests from the Ollama and the OpenAI clients for one model, alternating,
    run one at a time in arrival order (each starts once the one before is queued), and
    each gets exactly its own reply, nothing of another's."""
    replies = {f"topic{i}": f"Answer {i}: " + f"word{i} " * 12 for i in range(6)}
    topics = FakeModel(replies=replies, decode_ms=3).write(tmp_path / "topics.json")
    started: list[int] = []

    async def ask_ollama(c: ollama.AsyncClient, i: int) -> str:
        text = ""
        ask = [{"role": "user", "content": f"topic{i}"}]
        stream = await c.chat(model="topics", messages=ask, stream=True)
        async for part in stream:
            if not text:
                started.append(i)
            text += part.message.content or ""
        return text

    async def ask_openai(c: openai.AsyncOpenAI, i: int) -> str:
        text = ""
        stream = await c.chat.completions.create(
            model="topics", messages=[{"role": "user", "content": f"topic{i}"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not text:
                    started.append(i)
                text += chunk.choices[0].delta.content
        return text

    answers: dict[int, str] = {}

    async def run(i: int, ask: Any) -> None:
        answers[i] = await ask(i)

    async with serving(model_files, abi, models=[f"topics={topics}"], with_openai=True) as served:
        c = served.client()
        oa = openai.AsyncOpenAI(
            base_url=f"{served.host}/v1", api_key=KEY, max_retries=0, timeout=DEADLINE_S
        )
        counters = served.catalog.counters("topics:latest")
        async with oa, anyio.create_task_group() as tg:
            with anyio.fail_after(DEADLINE_S):
                for i in range(6):
                    ask = partial(ask_ollama, c) if i % 2 else partial(ask_openai, oa)
                    tg.start_soon(run, i, ask)
                    while counters.queued + counters.requests <= i:  # noqa: ASYNC110  # arrived
                        await anyio.sleep(0.005)
    assert started == list(range(6))
    assert answers == {i: replies[f"topic{i}"] for i in range(6)}
