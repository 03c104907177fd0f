"""MCP on ``rkllm serve``, driven by the ``mcp`` package's own client: in memory (both
protocol eras), over real Streamable HTTP on loopback (uvicorn), and over stdio with a
spawned ``rkllm serve --mcp-stdio``; the fake runtime of both ABIs."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextResourceContents

from rkllm_sdk import __version__
from rkllm_sdk.server import Server, mcp_server
from rkllm_sdk.server.catalog import ModelCatalog
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.http import HttpConfig, HttpFace
from rkllm_sdk.server.mcp_server import McpFace, _StdinLines
from rkllm_sdk.server.mcp_tools import CHAT_SCHEMA, GENERATE_SCHEMA, tool_name
from rkllm_sdk.server.model_specs import ModelSpec, scan_models_dir
from rkllm_sdk.server.registry import REGISTRY
from rkllm_sdk.server.transports import FdReader
from rkllm_sdk.testing import FakeModel

from .conftest import DEADLINE_S, live_handles, running, serve_cmd

pytestmark = pytest.mark.anyio

PROMPT = {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"}
KEY = "s3cret-key"
#: The two protocol eras a client may open: the initialize handshake, and the 2026-07-28
#: per-request envelope (``Client``'s ``mode``).
ERAS = ["legacy", "2026-07-28"]


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    """Each in-memory test runs in both protocol eras."""
    return str(request.param)


@pytest.fixture
async def face(server: Server, models_dir: Path, abi: str) -> AsyncIterator[McpFace]:
    """The MCP face of ``server``, with a catalog of ``models_dir``'s models (m, slow)."""
    catalog = ModelCatalog(scan_models_dir(models_dir), runtime="fake", abi=abi)
    async with catalog.lifespan():
        yield McpFace(server, engine=ChatEngine(catalog), catalog=catalog)


def structured(result: CallToolResult) -> dict[str, Any]:
    """A successful result's structured content."""
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def failure(result: CallToolResult) -> dict[str, Any]:
    """An error result's JSON-RPC error object."""
    assert result.is_error, result
    assert isinstance(result.structured_content, dict)
    return result.structured_content


class Progress:
    """A progress callback keeping what it got, in order."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str]] = []
        self.first = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.got.append((progress, message or ""))
        self.first.set()

    def check(self, text: str) -> None:
        """Progress strictly increases and the messages spell ``text`` out."""
        assert self.got, "no progress notification"
        values = [p for p, _ in self.got]
        assert values == sorted(values) and len(set(values)) == len(values)
        assert "".join(m for _, m in self.got) == text


async def load(client: Client, name: str = "m.json") -> str:
    """rkllm_createDefaultParam, then rkllm_init of ``name``: the handle."""
    param = structured(await client.call_tool("rkllm_createDefaultParam", {}))["param"]
    param["model_path"] = name
    return str(structured(await client.call_tool("rkllm_init", {"param": param}))["handle"])


async def wait_for(condition: Any) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    with anyio.fail_after(DEADLINE_S):
        while not condition():  # noqa: ASYNC110  # counters many tasks change
            await anyio.sleep(0.02)


async def stats(client: Client) -> dict[str, Any]:
    """The proxy's ``stats``, through its tool."""
    return structured(await client.call_tool("stats", {}))


async def cancel_on_first_progress(client: Client, tool: str, args: dict[str, Any]) -> None:
    """Call ``tool`` and cancel the call once its first progress notification arrives."""
    progress = Progress()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.call_tool, tool, args, progress_callback=progress))
        await progress.first.wait()
        tg.cancel_scope.cancel()


async def exercise(client: Client) -> None:
    """What every transport must do: list the tools, stream generate, run the raw tools,
    cancel a run mid-generation (the handle is then idle, and destroyed), and answer a bad
    argument with an error result, then keep serving."""
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"generate", "chat", *map(tool_name, REGISTRY.methods)} == names
    progress = Progress()
    result = await client.call_tool(
        "generate", {"model": "m", "prompt": "Hello"}, progress_callback=progress
    )
    progress.check(structured(result)["text"])
    assert structured(result)["text"] == "Hi there, friend!"

    progress = Progress()
    handle = await load(client)
    run = await client.call_tool(
        "rkllm_run", {"handle": handle, "rkllm_input": PROMPT}, progress_callback=progress
    )
    progress.check(structured(run)["text"])
    assert structured(await client.call_tool("rkllm_destroy", {"handle": handle})) == {}

    slow = await load(client, "slow.json")
    await cancel_on_first_progress(client, "rkllm_run", {"handle": slow, "rkllm_input": PROMPT})
    with anyio.fail_after(DEADLINE_S):
        while (await stats(client))["runs"]:  # noqa: ASYNC110  # another process's counter
            await anyio.sleep(0.02)
    running = await client.call_tool("rkllm_is_running", {"handle": slow})
    assert structured(running) == {"is_running": False}
    assert structured(await client.call_tool("rkllm_destroy", {"handle": slow})) == {}

    bad = failure(await client.call_tool("rkllm_destroy", {"handle": 7}))
    assert bad["code"] == -32602 and bad["data"]["path"] == "handle"
    assert (await stats(client))["handles"] == 0


# -- in memory -------------------------------------------------------------------------------


async def test_in_memory_transport_does_it_all(face: McpFace, era: str, abi: str) -> None:
    """The common scenario (tools, streaming, raw tools, cancellation, errors) in memory."""
    baseline = live_handles(abi)
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            await exercise(client)
    assert live_handles(abi) <= baseline + 1  # the catalog keeps m loaded


async def test_every_registry_method_is_a_tool_with_the_same_schema(
    face: McpFace, era: str
) -> None:
    """tools/list offers generate, chat and each registry method, the method's params
    schema as the tool's inputSchema, unchanged."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"generate", "chat", *map(tool_name, REGISTRY.methods)}
    for name, method in REGISTRY.methods.items():
        tool = tools[tool_name(name)]
        assert tool.input_schema == method.params, name
        assert tool.description is not None and tool.description.startswith(method.summary)
        assert tool.meta == {"rkllm/method": name}
    assert tools["generate"].input_schema == GENERATE_SCHEMA
    assert tools["chat"].input_schema == CHAT_SCHEMA


async def test_tool_names_suit_every_client(face: McpFace, era: str) -> None:
    """Every tool name fits ``^[A-Za-z0-9_-]{1,64}$``, what strict clients and the model
    APIs they forward tools to accept (MCP itself allows dots, but Windsurf refuses such a
    tool and Copilot CLI fails every prompt): the proxy's ``rpc.discover`` is the tool
    ``rpc_discover``, its description and ``_meta`` naming the method, and it answers."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            doc = structured(await client.call_tool("rpc_discover", {}))
    for name in tools:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name), name
    assert tool_name("rpc.discover") == "rpc_discover" and "rpc.discover" not in tools
    assert "rpc.discover" in (tools["rpc_discover"].description or "")
    assert doc == REGISTRY.openrpc(__version__)


async def test_generate_streams_chunks_before_the_result_in_order(face: McpFace, era: str) -> None:
    """generate with a progress callback: the text arrives as progress messages, in order,
    before the result, which holds the whole text, finish reason, usage and perf."""
    progress = Progress()
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            result = await client.call_tool(
                "generate",
                {"model": "m", "prompt": "Hello", "max_new_tokens": 64},
                progress_callback=progress,
            )
    out = structured(result)
    assert out["text"] == "Hi there, friend!" and out["finish_reason"] == "stop"
    assert result.content[0].text == out["text"]  # type: ignore[union-attr]
    assert out["usage"]["completion_tokens"] > 0 and out["perf"]["total_ms"] > 0
    progress.check(out["text"])
    assert len(progress.got) > 1  # one notification per piece, not one at the end


async def test_progress_counts_the_tokens_generated(
    server: Server, tmp_path: Path, abi: str, era: str
) -> None:
    """generate and chat report progress = tokens generated so far (issue #14): strictly
    increasing, the last equal to usage.completion_tokens, the messages spelling out the
    reasoning then the text; a thinking reply under the template's end-of-turn hold-back
    (text released with a later token), and a reply cut by max_new_tokens."""
    reply = "<think>Let me think.</think>Hello world, nice to see you!"
    specs = [
        ModelSpec(
            name="think:latest",
            path=FakeModel(replies={"Hello": reply}).write(tmp_path / "think.json"),
            template="qwen3",
        ),
        ModelSpec(
            name="long:latest",
            path=FakeModel(natural_end=False).write(tmp_path / "long.json"),
            template="qwen2.5",
        ),
    ]
    catalog = ModelCatalog(specs, runtime="fake", abi=abi)
    calls = [
        ("chat", {"model": "think", "messages": [{"role": "user", "content": "Hello"}]}),
        ("generate", {"model": "think", "prompt": "Hello"}),
        ("generate", {"model": "long", "prompt": "Go", "max_new_tokens": 7}),
    ]
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            face = McpFace(server, engine=ChatEngine(catalog), catalog=catalog)
            async with Client(face.mcp, mode=era) as client:
                for tool, args in calls:
                    progress = Progress()
                    out = structured(await client.call_tool(tool, args, progress_callback=progress))
                    progress.check(out["reasoning"] + out["text"])
                    assert progress.got[-1][0] == out["usage"]["completion_tokens"] > 1
                    assert len(progress.got) > 1
    assert out["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 7


async def test_chat_answers_a_conversation(face: McpFace, era: str) -> None:
    """chat takes messages (system, user) and answers like generate."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            result = await client.call_tool(
                "chat",
                {
                    "model": "m:latest",
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hello"},
                    ],
                    "max_new_tokens": 64,
                },
            )
    out = structured(result)
    assert out["text"] == "Hi there, friend!" and out["tool_calls"] == []


async def test_raw_registry_tools_init_run_destroy(
    face: McpFace, era: str, server: Server, abi: str
) -> None:
    """rkllm_createDefaultParam -> rkllm_init -> rkllm_run (progress per chunk, then the
    result) -> rkllm_destroy, dispatched by the registry; the fake ends with no handle."""
    baseline = live_handles(abi)
    progress = Progress()
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            handle = await load(client)
            assert live_handles(abi) == baseline + 1
            result = await client.call_tool(
                "rkllm_run",
                {"handle": handle, "rkllm_input": PROMPT},
                progress_callback=progress,
            )
            out = structured(result)
            assert out["finish_reason"] == "stop" and out["text"] == "Hi there, friend!"
            assert out["perf"]["generate_tokens"] > 0
            progress.check(out["text"])
            assert structured(await client.call_tool("rkllm_destroy", {"handle": handle})) == {}
            stats = structured(await client.call_tool("stats", {}))
    assert stats["handles"] == 0 and stats["runs"] == 0
    assert live_handles(abi) == baseline


async def test_cancelling_a_run_aborts_it_and_frees_the_handle(
    face: McpFace, era: str, server: Server, abi: str
) -> None:
    """MCP cancellation of rkllm_run mid-generation aborts the run on the NPU: the handle
    is idle at once and serves the next run (stopped by the rkllm_abort tool while it
    streams); the connection's end destroys it."""
    baseline = live_handles(abi)
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            handle = await load(client, "slow.json")
            args = {"handle": handle, "rkllm_input": PROMPT}
            await cancel_on_first_progress(client, "rkllm_run", args)
            await wait_for(lambda: server.sessions.runs == 0)
            running = await client.call_tool("rkllm_is_running", {"handle": handle})
            assert structured(running) == {"is_running": False}
            second = Progress()
            outcome: list[CallToolResult] = []

            async def run_again() -> None:
                outcome.append(await client.call_tool("rkllm_run", args, progress_callback=second))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_again)
                await second.first.wait()
                assert structured(await client.call_tool("rkllm_abort", {"handle": handle})) == {}
            assert structured(outcome[0])["finish_reason"] == "abort"
    await wait_for(lambda: live_handles(abi) == baseline)
    assert server.sessions.stats()["handles"] == 0


async def test_cancelling_generate_leaves_the_model_usable(
    face: McpFace, era: str, server: Server
) -> None:
    """MCP cancellation of generate aborts its run; the next generate on the model works."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            args = {"model": "slow", "prompt": "Go on", "max_new_tokens": 500}
            await cancel_on_first_progress(client, "generate", args)
            args["max_new_tokens"] = 2
            out = structured(await client.call_tool("generate", args))
    assert out["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 2


async def test_a_cancelled_call_is_logged(
    server: Server, models_dir: Path, abi: str, era: str
) -> None:
    """A generate or rkllm_run the client cancels mid-stream leaves a log line (tool,
    time), as a finished one does; it used to leave no trace at all."""
    lines: list[str] = []
    catalog = ModelCatalog(scan_models_dir(models_dir), runtime="fake", abi=abi)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            face = McpFace(server, engine=ChatEngine(catalog), catalog=catalog, log=lines.append)
            async with Client(face.mcp, mode=era) as client:
                args = {"model": "slow", "prompt": "Go on", "max_new_tokens": 500}
                await cancel_on_first_progress(client, "generate", args)
                handle = await load(client, "slow.json")
                run = {"handle": handle, "rkllm_input": PROMPT}
                await cancel_on_first_progress(client, "rkllm_run", run)
                await wait_for(lambda: len([x for x in lines if "cancelled" in x]) == 2)
    # Each line is written when its handler has finished aborting its run, which the
    # client does not wait for: the two may come in either order.
    cancelled = sorted(x for x in lines if "cancelled" in x)
    assert re.fullmatch(r"mcp generate cancelled after [\d.]+ms", cancelled[0]), cancelled
    assert re.fullmatch(r"mcp rkllm_run cancelled after [\d.]+ms", cancelled[1]), cancelled


async def test_async_runs_are_driven_for_the_connection(face: McpFace, era: str) -> None:
    """rkllm_run_async answers at once; rkllm_get_run_results fetches the whole reply: the
    connection's task group drives the run between calls."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            handle = await load(client)
            args = {"handle": handle, "rkllm_input": PROMPT}
            run = structured(await client.call_tool("rkllm_run_async", args))["run"]
            fetched = {"done": False}
            texts = []
            while not fetched["done"]:
                fetched = structured(
                    await client.call_tool(
                        "rkllm_get_run_results",
                        {"run": run, "cursor": fetched.get("cursor", 0), "wait_ms": 1000},
                    )
                )
                texts += [r["text"] for r in fetched["results"]]
    assert "".join(texts) == fetched["final"]["text"] == "Hi there, friend!"


async def test_bad_arguments_are_error_results_not_crashes(face: McpFace, era: str) -> None:
    """A wrong argument gives an isError result with the proxy's code and data (the path of
    the field); an unknown tool is a protocol error; the server keeps serving."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            bad = failure(await client.call_tool("rkllm_init", {"param": 3}))
            assert bad["code"] == -32602 and bad["data"]["path"] == "param"
            assert bad["data"]["function"] == "rkllm_init"
            escape = failure(
                await client.call_tool("rkllm_init", {"param": {"model_path": "../m.json"}})
            )
            assert escape["data"]["path"] == "param.model_path"
            unknown = failure(
                await client.call_tool("rkllm_run", {"handle": "h_0", "rkllm_input": PROMPT})
            )
            assert unknown["code"] == -32602 and unknown["data"]["path"] == "handle"
            model = failure(await client.call_tool("generate", {"model": "nope", "prompt": "x"}))
            assert model["code"] == -32602 and model["data"]["path"] == "model"
            count = failure(
                await client.call_tool("generate", {"model": "m", "prompt": "x", "stop": "no"})
            )
            assert count["data"]["path"] == "stop"
            role = failure(
                await client.call_tool(
                    "chat", {"model": "m", "messages": [{"role": "robot", "content": "x"}]}
                )
            )
            assert role["data"]["path"] == "messages[0].role"
            with pytest.raises(MCPError):
                await client.call_tool("rkllm_nothing", {})
            assert structured(await client.call_tool("stats", {}))["handles"] == 0


async def test_engine_errors_name_the_tools_own_arguments(face: McpFace, era: str) -> None:
    """An error the engine finds names the field by the tool's argument, not the engine's:
    a sampling value is sampling.NAME, a generate prompt too long for the context is prompt
    (it was temperature / seed and messages, which generate does not have)."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            cold = {"model": "m", "prompt": "x", "sampling": {"temperature": -1}}
            temperature = failure(await client.call_tool("generate", cold))
            seeded = {"model": "m", "prompt": "x", "sampling": {"seed": 1, "top_k": 5}}
            seed = failure(await client.call_tool("generate", seeded))
            long = {"model": "m", "prompt": "word " * 3000}
            context = failure(await client.call_tool("generate", long))
            raw = failure(await client.call_tool("generate", {**long, "raw": True}))
            chat = {"model": "m", "messages": [{"role": "user", "content": long["prompt"]}]}
            conversation = failure(await client.call_tool("chat", chat))
    assert temperature["code"] == seed["code"] == context["code"] == -32602
    assert temperature["data"]["path"] == "sampling.temperature"
    assert seed["data"]["path"] == "sampling.seed"
    assert context["data"]["path"] == raw["data"]["path"] == "prompt"
    assert conversation["data"]["path"] == "messages"


async def test_handles_die_with_the_connection(
    face: McpFace, era: str, server: Server, abi: str
) -> None:
    """A client that leaves without rkllm_destroy: its handles are destroyed."""
    baseline = live_handles(abi)
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            await load(client)
            await load(client)
            assert server.sessions.stats()["handles"] == 2
    assert server.sessions.stats()["handles"] == 0
    assert live_handles(abi) == baseline


async def test_resources_models_metrics_openrpc(face: McpFace, era: str) -> None:
    """rkllm://models lists the catalog, rkllm://metrics is the Prometheus text (with the
    tool calls counted per method), rkllm://openrpc the registry's document."""
    with anyio.fail_after(DEADLINE_S):
        async with Client(face.mcp, mode=era) as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert uris == {"rkllm://models", "rkllm://metrics", "rkllm://openrpc"}
            await client.call_tool("rkllm_createDefaultParam", {})
            await client.call_tool("generate", {"model": "m", "prompt": "Hello"})
            texts = {}
            for uri in sorted(uris):
                content = (await client.read_resource(uri)).contents[0]
                assert isinstance(content, TextResourceContents)
                texts[uri] = content.text
    models = json.loads(texts["rkllm://models"])["models"]
    assert {m["name"] for m in models} == {"m:latest", "slow:latest"}
    assert json.loads(texts["rkllm://openrpc"]) == REGISTRY.openrpc(__version__)
    metrics = texts["rkllm://metrics"]
    assert 'rkllm_proxy_requests_total{method="rkllm_createDefaultParam",outcome="ok"}' in metrics
    assert 'method="generate"' in metrics and "rkllm_api_" in metrics


# -- Streamable HTTP ---------------------------------------------------------------------------


@asynccontextmanager
async def http_mcp(face: McpFace, key: str | None = KEY) -> AsyncIterator[str]:
    """``face`` mounted on an HTTP face (API key ``key``) served on loopback
    (:func:`~.conftest.running`); the /mcp URL."""
    http = HttpFace(face.server, HttpConfig(api_key=key, ping_s=1))
    face.mount(http)
    async with running(http) as address:
        yield f"http://{address}/mcp"


@asynccontextmanager
async def http_client(url: str, era: str, **headers: str) -> AsyncIterator[Client]:
    """An MCP client of ``url`` in ``era``, sending ``headers`` on every request."""
    async with (
        httpx2.AsyncClient(headers=headers, timeout=DEADLINE_S) as session,
        Client(streamable_http_client(url, http_client=session), mode=era) as client,
    ):
        yield client


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio only
async def test_http_wants_the_api_key(face: McpFace, anyio_backend: str) -> None:
    """/mcp without the Bearer key answers 401, and an MCP client cannot connect."""
    async with http_mcp(face) as url:
        async with httpx2.AsyncClient(timeout=DEADLINE_S) as raw:
            r = await raw.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        with anyio.fail_after(DEADLINE_S), pytest.raises(Exception):  # noqa: B017, PT011
            async with http_client(url, "legacy", Authorization="Bearer wrong"):
                pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_transport_does_it_all(face: McpFace, era: str, anyio_backend: str) -> None:
    """The common scenario (tools, streaming, raw tools, cancellation, errors) over real
    Streamable HTTP on loopback, with the API key."""
    async with http_mcp(face) as url:
        with anyio.fail_after(DEADLINE_S):
            async with http_client(url, era, Authorization=f"Bearer {KEY}") as client:
                await exercise(client)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_handles_belong_to_the_session(
    face: McpFace, era: str, server: Server, abi: str, anyio_backend: str
) -> None:
    """Over Streamable HTTP raw tools keep their handle across requests (a 2025 session's
    own, or the X-RKLLM-Session's in 2026-07-28) and nobody else sees it; ending a 2025
    session (DELETE) destroys it."""
    auth = {"Authorization": f"Bearer {KEY}", "X-RKLLM-Session": "mine"}
    baseline = live_handles(abi)
    async with http_mcp(face) as url:
        with anyio.fail_after(DEADLINE_S):
            async with http_client(url, era, **auth) as client:
                handle = await load(client)
                run = await client.call_tool("rkllm_run", {"handle": handle, "rkllm_input": PROMPT})
                assert structured(run)["text"] == "Hi there, friend!"
                other = {**auth, "X-RKLLM-Session": "other"}
                async with http_client(url, era, **other) as stranger:
                    theirs = failure(
                        await stranger.call_tool("rkllm_is_running", {"handle": handle})
                    )
                    assert theirs["data"]["path"] == "handle"
                if era != "legacy":
                    await client.call_tool("rkllm_destroy", {"handle": handle})
            await wait_for(lambda: server.sessions.stats()["handles"] == 0)
    assert live_handles(abi) == baseline


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_bad_session_header_is_an_invalid_request(
    face: McpFace, anyio_backend: str
) -> None:
    """A 2026-07-28 call whose X-RKLLM-Session is not a session name is the -32600 POST /rpc
    answers (a client error, not worth retrying); it was -32004, the busy code of a full
    session table."""
    bad = {"Authorization": f"Bearer {KEY}", "X-RKLLM-Session": "not a name"}
    async with http_mcp(face) as url:
        with anyio.fail_after(DEADLINE_S):
            async with http_client(url, "2026-07-28", **bad) as client:
                error = failure(await client.call_tool("rkllm_createDefaultParam", {}))
    assert error["code"] == -32600 and "X-RKLLM-Session" in error["message"]


_STREAM = {"Accept": "application/json, text/event-stream"}


async def _post(http: httpx2.AsyncClient, url: str, message: dict[str, Any]) -> dict[str, Any]:
    """POST one MCP request; its response (from the JSON body or the SSE stream)."""
    r = await http.post(url, json=message, headers=_STREAM)
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("application/json"):
        return dict(r.json())
    for line in r.text.splitlines():
        if line.startswith("data:") and '"id"' in line:
            return dict(json.loads(line[5:]))
    raise AssertionError(r.text)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_client_that_closes_its_stream_mid_run_aborts_it(
    face: McpFace, server: Server, anyio_backend: str
) -> None:
    """A handshake-era client that vanishes mid-stream (its POST's SSE stream closed, no
    notifications/cancelled): rkllm_run and generate are aborted at once, not left holding
    the handle and the model until their end (nothing can resume a stream: the server keeps
    no event store); the session goes on serving. (They used to run to their end.)"""
    async with http_mcp(face, key=None) as url, httpx2.AsyncClient(timeout=DEADLINE_S) as http:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}}
        hello["clientInfo"] = {"name": "test", "version": "1"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        r = await http.post(url, json=init, headers=_STREAM)
        headers = {"mcp-session-id": r.headers["mcp-session-id"]}
        headers["mcp-protocol-version"] = "2025-11-25"
        http.headers.update(headers)
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(url, json=note, headers=_STREAM)).status_code == 202

        async def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            params = {"name": name, "arguments": arguments}
            message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
            reply = await _post(http, url, message)
            return dict(reply["result"]["structuredContent"])

        async def vanish(name: str, arguments: dict[str, Any]) -> None:
            params = {"name": name, "arguments": arguments, "_meta": {"progressToken": "p"}}
            message = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
            async with http.stream("POST", url, json=message, headers=_STREAM) as stream:
                async for line in stream.aiter_lines():
                    if "notifications/progress" in line:
                        break  # streaming: leave without a word

        param = (await call("rkllm_createDefaultParam", {}))["param"]
        param.update(model_path="slow.json", max_new_tokens=100_000)
        handle = (await call("rkllm_init", {"param": param}))["handle"]
        with anyio.fail_after(DEADLINE_S):
            await vanish("rkllm_run", {"handle": handle, "rkllm_input": PROMPT})
            await wait_for(lambda: server.sessions.runs == 0)  # else 2000 s of tokens
            assert await call("rkllm_is_running", {"handle": handle}) == {"is_running": False}
            await vanish("generate", {"model": "slow", "prompt": "Go", "max_new_tokens": 5000})
            short = await call("generate", {"model": "slow", "prompt": "Go", "max_new_tokens": 2})
        assert short["finish_reason"] == "length"
        assert await call("rkllm_destroy", {"handle": handle}) == {}


# -- stdio -------------------------------------------------------------------------------------


async def test_stdin_lines_are_bounded_and_end_at_eof() -> None:
    """The stdio reader yields lines without their newline, an over-long line as an empty
    one (dropped as it came), and a last line without newline at EOF."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        w.write(b"one\n" + b"x" * 100 + b"\ntwo\n" + b"y" * 200 + b"\nlast")
    try:
        with anyio.fail_after(DEADLINE_S):
            got = [line async for line in _StdinLines(read_fd, max_bytes=50)]
    finally:
        os.close(read_fd)
    assert got == [b"one", b"", b"two", b"", b"last"]


async def test_stdin_lines_read_with_the_transports_fd_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MCP stdio lines are read by transports.FdReader (the JSON-RPC --stdio's reader,
    one daemon thread implementation), not a thread of their own; a line split across
    reads is joined."""
    opened: list[int] = []

    class Recording(FdReader):
        def __init__(self, fd: int, chunk: int = 65536) -> None:
            opened.append(fd)
            super().__init__(fd, chunk=4)  # tiny reads: lines span several

    monkeypatch.setattr(mcp_server, "FdReader", Recording)
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        w.write(b'{"jsonrpc": "2.0"}\nsecond line\n')
    threads: list[threading.Thread] = []
    try:
        with anyio.fail_after(DEADLINE_S):
            got = []
            async for line in _StdinLines(read_fd, max_bytes=50):
                got.append(line)
                threads += [t for t in threading.enumerate() if t.name.startswith("rkllm")]
    finally:
        os.close(read_fd)
    assert got == [b'{"jsonrpc": "2.0"}', b"second line"]
    assert opened == [read_fd]
    assert {t.name for t in threads} == {"rkllm-stdin"}  # FdReader's, no "rkllm-mcp-stdin"
    assert all(t.daemon for t in threads)


async def test_stdin_lines_stop_at_once_while_the_client_is_silent() -> None:
    """Iteration cancelled while the client keeps standard input open and sends nothing
    ends at once (the blocked read is the daemon thread's); the thread ends once input
    does."""
    before = set(threading.enumerate())  # other tests' readers are not this one's
    read_fd, write_fd = os.pipe()
    try:
        with anyio.fail_after(DEADLINE_S):
            with anyio.move_on_after(0.2) as scope:
                async for _ in _StdinLines(read_fd, max_bytes=50):
                    pass
            assert scope.cancelled_caught
            readers = [t for t in set(threading.enumerate()) - before if t.name == "rkllm-stdin"]
            assert readers and all(t.daemon for t in readers)
    finally:
        os.close(write_fd)
    with anyio.fail_after(DEADLINE_S):
        while any(t.is_alive() for t in readers):  # noqa: ASYNC110  # a thread, no event
            await anyio.sleep(0.02)
    os.close(read_fd)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stdio_spawned_rkllm_serve_mcp_stdio_does_it_all(
    models_dir: Path, abi: str, era: str, anyio_backend: str
) -> None:
    """A desktop client's way: spawn ``rkllm serve --mcp-stdio``, then the common scenario
    (tools, streaming, raw tools, cancellation, errors)."""
    command, *args = serve_cmd(abi, models_dir, "--mcp-stdio")
    params = StdioServerParameters(
        command=command,
        args=args,
        env={**os.environ, "RKLLM_FAKE_QUIET": "1"},
    )
    with anyio.fail_after(3 * DEADLINE_S):
        async with Client(params, mode=era) as client:
            await exercise(client)
