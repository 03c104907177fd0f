"""Ollama's HTTP API (``/api/*``) on ``rkllm serve``, over the one chat engine.

What Home Assistant's Ollama integration, Open WebUI's Ollama connection and the official
``ollama`` clients call, answered the way Ollama answers it:

- ``GET /api/version``, ``GET /api/tags`` (every configured model; ``name`` and ``model``
  are its tag exactly, e.g. ``qwen3:latest``), ``GET /api/ps`` (the loaded ones),
  ``POST /api/show``, ``POST /api/pull`` (success for a configured model; never downloads).
- ``POST /api/chat`` and ``POST /api/generate``: NDJSON streaming by default
  (``application/x-ndjson``, one object per piece, the last with ``done: true``, its
  ``done_reason`` and the nanosecond timings), one object with ``stream: false``. Tools in,
  ``message.tool_calls[].function.arguments`` out as objects, ``think`` ->
  ``message.thinking``, ``keep_alive``, ``options``. An empty prompt (or message list) loads
  the model, or unloads it with ``keep_alive: 0``.
- ``POST /api/embed`` and the older ``POST /api/embeddings``.
- ``GET /`` and ``HEAD /``: ``Ollama is running`` (clients probe it; no key needed).

Errors are ``{"error": "..."}`` with Ollama's status codes: 400 (a field this server cannot
honour, named in the message; a conversation longer than the model's context: ``the input
length exceeds the context length``), 401 (no or wrong API key), 404 (``model "x" not
found, try pulling it first``; any other path or method), 503 (the model's queue is full,
or the server is shutting down), 500. A failure after a stream has started is one more line
``{"error": "..."}``, as Ollama sends it. A client that
disconnects, before or during its answer, aborts the run on the NPU.

What is refused (``format``, images, custom templates, ...), ignored (``num_ctx``, options
the runtime has no use for) or mapped is in the compatibility table of
``docs/guides/home-assistant.md``. The translation of requests and responses is plain
functions, in :mod:`.ollama_wire`; the engine runs in the response's own task, so a client
gone cancels it.

Mount with :meth:`HttpFace.add <rkllm_sdk.server.http.HttpFace.add>` (the catalog's
lifespan running around the server)::

    face.add(ollama_routes(engine, face.authorized))
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from .catalog import ModelInfo, ModelNotFoundError
from .chat_engine import ChatEngine
from .chat_types import ChatDelta, ChatRequest
from .http_api import read_body, watch_disconnect
from .model_specs import ModelSpec
from .ollama_wire import (
    OllamaError,
    assistant_message,
    bad_request,
    chat_request,
    done_fields,
    error_for,
    generate_request,
    iso_time,
    model_details,
    model_digest,
    model_name,
    nanoseconds,
    ndjson_line,
    not_found,
    parse_keep_alive,
    text_field,
    timestamp,
    wants_stream,
)
from .templates import ChatTemplate, TemplateError, load_template

__all__ = ["MAX_BODY_BYTES", "OLLAMA_VERSION", "ollama_routes"]

#: The Ollama release whose API this face follows (``GET /api/version``): clients gate
#: features (tools, thinking) on it, so it is Ollama's number, not the SDK's.
OLLAMA_VERSION = "0.12.6"
#: A request body larger than this is refused (413): a Home Assistant system prompt with
#: every entity is tens of kilobytes.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: ``expires_at`` of a model kept loaded forever (``keep_alive: -1``), as Ollama shows it:
#: a date far in the future.
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
_NDJSON = "application/x-ndjson"
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
#: Vectors, prompt tokens, milliseconds.
_EmbedResult = tuple[list[list[float]], int, float]


# ---- responses ----------------------------------------------------------------------------


async def _chat_parts(
    engine: ChatEngine, req: ChatRequest, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """/api/chat's objects: one per delta then the final one (streaming), or the final one
    holding the whole answer."""
    calls = 0
    async with contextlib.aclosing(engine.chat(req)) as events:
        async for event in events:
            if isinstance(event, ChatDelta):
                if stream and (event.content or event.reasoning or event.tool_calls):
                    message = assistant_message(
                        event.content, event.reasoning, event.tool_calls, calls
                    )
                    calls += len(event.tool_calls)
                    yield {
                        "model": req.model,
                        "created_at": timestamp(),
                        "message": message,
                        "done": False,
                    }
                continue
            message = (
                {"role": "assistant", "content": ""}
                if stream
                else assistant_message(event.content, event.reasoning, event.tool_calls, 0)
            )
            yield {
                "model": req.model,
                "created_at": timestamp(),
                "message": message,
                **done_fields(event),
            }


async def _generate_parts(
    engine: ChatEngine, req: ChatRequest, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """/api/generate's objects (``response`` and ``thinking`` instead of a message)."""
    async with contextlib.aclosing(engine.chat(req)) as events:
        async for event in events:
            if isinstance(event, ChatDelta):
                if stream and (event.content or event.reasoning):
                    chunk = {
                        "model": req.model,
                        "created_at": timestamp(),
                        "response": event.content,
                    }
                    if event.reasoning:
                        chunk["thinking"] = event.reasoning
                    yield {**chunk, "done": False}
                continue
            last: dict[str, Any] = {"model": req.model, "created_at": timestamp()}
            last["response"] = "" if stream else event.content
            if event.reasoning and not stream:
                last["thinking"] = event.reasoning
            yield {**last, **done_fields(event)}


class _EngineResponse(Response):
    """An answer the engine produces in this response's own task.

    The status is known only once the first object is ready (a full queue or an unknown
    model raises before it), so the headers wait for it. With ``stream`` each object is one
    NDJSON line, sent as soon as it is made; without it ``parts`` yields one object, the
    JSON body. A client that disconnects cancels the work: closing the engine's generator
    aborts the run on the NPU. ``failed(exc, sent)`` logs a failure and gives its error
    (``sent``: what the client got before it, if anything).
    """

    def __init__(
        self,
        parts: AsyncGenerator[dict[str, Any]],
        *,
        stream: bool,
        failed: Callable[[Exception, str], OllamaError],
    ):
        super().__init__()
        self.parts = parts
        self.stream = stream
        self.failed = failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, receive, tg.cancel_scope)
            try:
                await self._send(scope, send)
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.parts.aclose()

    async def _send(self, scope: Scope, send: Send) -> None:
        try:
            first = await anext(self.parts)
        except Exception as exc:
            await self.failed(exc, "").response()(scope, _no_receive, send)
            return
        if not self.stream:
            async for _ in self.parts:  # the engine's run ends normally (frees the model)
                pass
            await JSONResponse(first)(scope, _no_receive, send)
            return
        headers = [(b"content-type", _NDJSON.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ndjson_line(first), "more_body": True})
        try:
            async for obj in self.parts:
                await send(
                    {"type": "http.response.body", "body": ndjson_line(obj), "more_body": True}
                )
        except Exception as exc:  # after the headers: Ollama's in-stream error line
            line = {"error": self.failed(exc, "200, then ").message}
            await send({"type": "http.response.body", "body": ndjson_line(line), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _no_receive() -> Message:  # pragma: no cover  # JSON responses never read
    return {"type": "http.disconnect"}


# ---- model listings -----------------------------------------------------------------------


def _family(template_option: str | None, path: Path) -> tuple[str, ChatTemplate | None]:
    """The model's template family (``qwen3``, ``llama3``, ...) and its template."""
    try:
        template = load_template(template_option, path)
    except (TemplateError, OSError):
        return "", None
    return ("" if template.name.startswith("file:") else template.name), template


def _context_length(info: ModelInfo) -> int | None:
    return None if info.params is None else info.params.max_context_len


# ---- routes -------------------------------------------------------------------------------


def ollama_routes(
    engine: ChatEngine,
    authorized: Callable[[Any], bool] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> list[BaseRoute]:
    """Ollama's API as Starlette routes, to mount with ``HttpFace.add``.

    Args:
        engine: runs chats and embeddings; its catalog lists the models.
        authorized: checks a request's headers for the API key (``HttpFace.authorized``);
            None: open. Every route but ``GET /`` and ``HEAD /`` wants it.
        log: called with one line per refused or failed request.
    """
    return _OllamaFace(engine, authorized, log).routes()


class _OllamaFace:
    """The handlers, sharing the engine, its catalog and the key check."""

    def __init__(
        self,
        engine: ChatEngine,
        authorized: Callable[[Any], bool] | None,
        log: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self.catalog = engine.catalog
        self.authorized = authorized
        self.log = log

    def routes(self) -> list[BaseRoute]:
        api: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/api/version", self.version, ["GET"]),
            ("/api/tags", self.tags, ["GET"]),
            ("/api/ps", self.ps, ["GET"]),
            ("/api/show", self.show, ["POST"]),
            ("/api/pull", self.pull, ["POST"]),
            ("/api/chat", self.chat, ["POST"]),
            ("/api/generate", self.generate, ["POST"]),
            ("/api/embed", self.embed, ["POST"]),
            ("/api/embeddings", self.embeddings, ["POST"]),
            ("/api/create", self.unsupported, ["POST"]),
            ("/api/copy", self.unsupported, ["POST"]),
            ("/api/delete", self.unsupported, ["DELETE"]),
            ("/api/push", self.unsupported, ["POST"]),
            ("/api/blobs/{digest}", self.unsupported, ["HEAD", "POST"]),
        ]
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            *(Route(path, self._guarded(fn), methods=methods) for path, fn, methods in api),
            # Last: any other path, or a known one with another method (Starlette's plain
            # 404 / 405 otherwise).
            Route("/api/{path:path}", self.unknown, methods=_METHODS),
            Route("/api", self.unknown, methods=_METHODS),
        ]

    def _note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def _guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the key, its errors in Ollama's shape."""

        async def run(request: Request) -> Response:
            where = f"{request.method} {request.url.path}"
            if self.authorized is not None and not self.authorized(request.headers):
                self._note(f"ollama {where} 401 (no or wrong API key)")
                return JSONResponse(
                    {"error": "unauthorized"},
                    401,
                    headers={"WWW-Authenticate": 'Bearer realm="rkllm"'},
                )
            try:
                return await handler(request)
            except Exception as exc:
                return self._failed(request, "", exc, "").response()

        return run

    def _failed(self, request: Request, model: str, exc: Exception, sent: str) -> OllamaError:
        """The error answered for ``exc`` (a 500 when it is a load that failed, a runtime
        error, a bug), logged (``sent``: what the client got before it, if anything)."""
        where = f"ollama {request.method} {request.url.path} {sent}"
        error = error_for(exc, model)
        if error is None:
            self._note(f"{where}500: {exc!r}")
            return OllamaError(500, str(exc) or type(exc).__name__)
        self._note(f"{where}{error.status}: {error.message}")
        return error

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, MAX_BODY_BYTES, OllamaError)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"invalid JSON body: {exc}") from None
        except RecursionError:  # nested deeper than the decoder goes
            raise bad_request("invalid JSON body: nested too deeply") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        return body

    def _resolve(self, name: str) -> ModelSpec:
        try:
            return self.catalog.resolve(name)
        except ModelNotFoundError:
            raise not_found(name) from None

    def _listing(self, info: ModelInfo) -> dict[str, Any]:
        family, _ = _family(info.template, info.path)
        return {
            "name": info.name,
            "model": info.name,
            "modified_at": iso_time(info.modified),
            "size": info.size_bytes,
            "digest": model_digest(Path(info.path), info.size_bytes, info.modified),
            "details": model_details(info.path, family),
        }

    # -- listings -------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        """``GET /``, ``HEAD /``: the probe clients make before anything else."""
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        """``GET /api/version``."""
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        """``GET /api/tags``: every configured model, loaded or not."""
        return JSONResponse({"models": [self._listing(i) for i in self.catalog.models()]})

    async def ps(self, request: Request) -> Response:
        """``GET /api/ps``: the loaded models and when their keep-alive ends."""
        models = []
        for info in self.catalog.models():
            if not info.loaded:
                continue
            entry = self._listing(info)
            del entry["modified_at"]
            entry["expires_at"] = iso_time(info.expires_at or _FOREVER)
            entry["size_vram"] = 0  # the NPU works from system memory
            if (ctx := _context_length(info)) is not None:
                entry["context_length"] = ctx
            models.append(entry)
        return JSONResponse({"models": models})

    async def show(self, request: Request) -> Response:
        """``POST /api/show``: template, stop strings, details, capabilities."""
        spec = self._resolve(model_name(await self._body(request)))
        info = next(i for i in self.catalog.models() if i.name == spec.name)  # resolved
        family, template = _family(spec.template, spec.path)
        source = "" if template is None else template.source
        capabilities = ["completion"]
        if "tools" in source:
            capabilities.append("tools")
        if template is not None and template.think_tags is not None:
            capabilities.append("thinking")
        stops = () if template is None else template.stop
        parameters = "\n".join(f"stop {json.dumps(s)}" for s in stops)
        arch = family or "rkllm"
        model_info: dict[str, Any] = {"general.architecture": arch}
        if (ctx := _context_length(info)) is not None:
            model_info[f"{arch}.context_length"] = ctx
        modelfile = f"# Modelfile generated by rkllm serve\nFROM {spec.path}\n"
        modelfile += f'TEMPLATE """{source}"""\n'
        modelfile += "".join(f"PARAMETER {line}\n" for line in parameters.splitlines())
        reply: dict[str, Any] = {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": source,
            "details": model_details(spec.path, family),
            "model_info": model_info,
            "capabilities": capabilities,
            "modified_at": iso_time(info.modified),
        }
        return JSONResponse(reply)

    async def pull(self, request: Request) -> Response:
        """``POST /api/pull``: success for a configured model; nothing is ever downloaded."""
        body = await self._body(request)
        name, stream = model_name(body), wants_stream(body)
        try:
            self.catalog.resolve(name)
        except ModelNotFoundError:
            raise OllamaError(
                404,
                f'model "{name}" not found: rkllm serve never downloads models; give the '
                ".rkllm file with --model NAME=PATH or put it in --models-dir",
            ) from None
        steps = ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
        if stream:
            lines = b"".join(ndjson_line({"status": s}) for s in steps)
            return Response(lines, media_type=_NDJSON)
        return JSONResponse({"status": "success"})

    async def unknown(self, request: Request) -> Response:
        """Any other ``/api`` path or method: 404 ``{"error": ...}``, as Ollama answers it."""
        where = f"{request.method} {request.url.path}"
        self._note(f"ollama {where} 404 (no such endpoint)")
        return OllamaError(404, f"404 page not found: {where} is not an endpoint").response()

    async def unsupported(self, request: Request) -> Response:
        """Model management: refused."""
        raise OllamaError(
            501,
            f"{request.url.path}: rkllm serve serves the model files it was given (--model, "
            "--models-dir); it does not create, copy, delete or push models",
        )

    # -- generation -------------------------------------------------------------------------

    async def _load_or_unload(self, req: ChatRequest, key: str) -> Response:
        """An empty prompt: load the model (or unload it, keep_alive 0), as Ollama does."""
        reason = "unload" if req.keep_alive_s == 0 else "load"
        try:
            if reason == "unload":
                self._resolve(req.model)
                await self.catalog.unload(req.model)
            else:
                async with self.catalog.use(req.model, keep_alive_s=req.keep_alive_s):
                    pass
        except Exception as exc:
            if (error := error_for(exc, req.model)) is None:
                raise
            raise error from None
        empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
        reply = {"model": req.model, "created_at": timestamp(), key: empty}
        return JSONResponse({**reply, "done": True, "done_reason": reason})

    async def chat(self, request: Request) -> Response:
        """``POST /api/chat``."""
        body = await self._body(request)
        req = chat_request(body)
        if not req.messages:
            return await self._load_or_unload(req, "message")
        stream = wants_stream(body)
        parts = _chat_parts(self.engine, req, stream)
        return _EngineResponse(
            parts, stream=stream, failed=partial(self._failed, request, req.model)
        )

    async def generate(self, request: Request) -> Response:
        """``POST /api/generate``."""
        body = await self._body(request)
        req = generate_request(body)
        if not body.get("prompt") and not body.get("system"):
            return await self._load_or_unload(req, "response")
        stream = wants_stream(body)
        parts = _generate_parts(self.engine, req, stream)
        return _EngineResponse(
            parts, stream=stream, failed=partial(self._failed, request, req.model)
        )

    async def _embed(self, name: str, inputs: list[str], keep_alive: object) -> _EmbedResult:
        keep_alive_s = parse_keep_alive(keep_alive)
        if not inputs:
            return [], 0, 0.0
        started = time.perf_counter()
        try:
            vectors, tokens = await self.engine.embed(name, inputs, keep_alive_s=keep_alive_s)
        except Exception as exc:
            if (error := error_for(exc, name)) is None:
                raise
            raise error from None
        return vectors, tokens, (time.perf_counter() - started) * 1e3

    async def embed(self, request: Request) -> Response:
        """``POST /api/embed``: one normalised vector per input."""
        body = await self._body(request)
        name = model_name(body)
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise bad_request("input: expected a string or a list of strings")
        if body.get("dimensions") is not None:
            raise bad_request(
                "dimensions: vectors cannot be shortened (they have the model's width)"
            )
        vectors, tokens, ms = await self._embed(name, inputs, body.get("keep_alive"))
        return JSONResponse(
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": nanoseconds(ms),
                "load_duration": 0,
                "prompt_eval_count": tokens,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        """``POST /api/embeddings`` (Ollama's older endpoint): ``prompt`` -> ``embedding``."""
        body = await self._body(request)
        name = model_name(body)
        prompt = text_field(body.get("prompt"), "prompt")
        inputs = [prompt] if prompt else []
        vectors, _, _ = await self._embed(name, inputs, body.get("keep_alive"))
        return JSONResponse({"embedding": vectors[0] if vectors else []})
