"""What other faces add to the HTTP face (:meth:`HttpFace.add`): routes, lifespans around
uvicorn, ``/metrics`` text and ``/health`` parts; real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import websockets
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rkllm_sdk.server import Server
from rkllm_sdk.server.http import HttpConfig, HttpFace

from .conftest import DEADLINE_S, running

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs on asyncio only."""
    return "asyncio"


async def test_added_routes_lifespan_metrics_and_health(server: Server) -> None:
    """An added route answers; the lifespan is entered before serving and left after (with
    a task group of its own, as the model catalog's is); added metrics text is in
    /metrics; a health part that is not ready makes /health 503 "loading" with its
    fields, and 200 once ready."""
    events: list[str] = []
    ready = [False]

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            events.append("entered")
            yield
            tg.cancel_scope.cancel()
        events.append("left")

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    def health() -> tuple[bool, dict[str, Any]]:
        return ready[0], {"models": {"loading": [] if ready[0] else ["m:latest"]}}

    face = HttpFace(server, HttpConfig())
    face.add(
        [Route("/hello", hello)],
        lifespan=lifespan,
        metrics_text=lambda: "# TYPE extra_thing gauge\nextra_thing 7.0\n",
        health=health,
    )
    async with running(face) as where:
        assert events == ["entered"]
        async with httpx.AsyncClient(base_url=f"http://{where}", timeout=DEADLINE_S) as c:
            assert (await c.get("/hello")).text == "hello"
            assert "\nextra_thing 7.0\n" in (await c.get("/metrics")).text
            r = await c.get("/health")
            assert r.status_code == 503
            assert r.json() == {
                "status": "loading",
                "handles": 0,
                "runs": 0,
                "models": {"loading": ["m:latest"]},
            }
            ready[0] = True
            r = await c.get("/health")
            assert (r.status_code, r.json()["status"], r.json()["models"]) == (
                200,
                "ok",
                {"loading": []},
            )
    assert events == ["entered", "left"]


async def test_a_websocket_the_client_closes_ends_without_an_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket client that sends a request, reads the reply and closes leaves no error
    in the server's log (closing an already closed socket raised out of the handler:
    'Exception in ASGI application')."""
    async with running(HttpFace(server, HttpConfig())) as where:
        async with websockets.connect(f"ws://{where}/ws") as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "stats"}))
            assert json.loads(await ws.recv())["id"] == 1
        with anyio.fail_after(DEADLINE_S):
            while server.sessions.connections:  # noqa: ASYNC110  # polling a counter
                await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # the handler's last step, after the connection ends
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
