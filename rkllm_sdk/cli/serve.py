"""``rkllm serve``: the runtime's functions as a JSON-RPC 2.0 proxy (stdio, TCP, Unix, HTTP),
as MCP tools (``--mcp-stdio``, ``/mcp``), and named models behind the OpenAI and Ollama APIs.

Logs one line per request to stderr (stdout belongs to the protocol in ``--stdio`` and
``--mcp-stdio`` modes).
SIGTERM (or Ctrl-C) stops taking new runs and named-model requests (OpenAI, Ollama, MCP's
``generate`` / ``chat``: refused as busy, to retry), lets those in progress or already queued
finish (up to the drain timeout, shared), closes every connection (their handles are
destroyed) and exits 0.

Binds nothing but loopback unless told: a non-loopback ``--http`` needs an API key
(``--api-key``, ``--api-key-file`` or ``RKLLM_API_KEY``), a non-loopback ``--tcp`` (which
has no authentication) needs ``--insecure-no-auth``, as does an ``--http`` without a key.
The HTTP face (Starlette, uvicorn) is imported only when ``--http`` is given, the MCP face
and the model catalog only with ``--http`` or ``--mcp-stdio``.

The named models (``--model NAME=PATH``, and every model file of ``--models-dir``) form one
:class:`~rkllm_sdk.server.catalog.ModelCatalog` and one
:class:`~rkllm_sdk.server.chat_engine.ChatEngine`, shared by MCP's ``generate`` and
``chat`` tools and the OpenAI and Ollama routes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..server import Server, ServerConfig
from ..server.transports import open_tcp, open_unix, serve_listener, serve_stdio
from ._common import EXIT_OK, UsageError, resolve_target

if TYPE_CHECKING:
    from ..server.catalog import ModelCatalog
    from ..server.chat_engine import ChatEngine
    from ..server.http import HttpFace
    from ..server.mcp_server import McpFace
    from ..server.model_specs import ModelSpec

__all__ = ["api_key", "check_binds", "check_models", "cmd_serve", "model_specs", "parse_hostport"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def parse_hostport(text: str, option: str = "--tcp") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{option} takes HOST:PORT, got {text!r}")
    return host, int(port)


def api_key(args: argparse.Namespace) -> str | None:
    """The API key: ``--api-key``, else ``--api-key-file``'s first line, else
    ``RKLLM_API_KEY``; None when none is given."""
    if args.api_key is not None and args.api_key_file is not None:
        raise UsageError("give --api-key or --api-key-file, not both")
    key: str | None = args.api_key
    if args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--api-key-file: {exc.strerror}: {args.api_key_file}") from None
        key = lines[0].strip() if lines else ""
    if key is None:
        key = os.environ.get("RKLLM_API_KEY") or None
    if key is not None and not key.strip():
        raise UsageError("the API key is empty")
    return key


def check_binds(args: argparse.Namespace, key: str | None) -> None:
    """Refuse a non-loopback bind that nothing authenticates, unless --insecure-no-auth."""
    if args.insecure_no_auth:
        return
    for spec in args.http or ():
        host, _ = parse_hostport(spec, "--http")
        if host not in _LOOPBACK and key is None:
            raise UsageError(
                f"--http {spec} is not loopback: give an API key (--api-key-file, "
                "RKLLM_API_KEY or --api-key), or --insecure-no-auth to serve it to anyone"
            )
    for spec in args.tcp or ():
        host, _ = parse_hostport(spec)
        if host not in _LOOPBACK:
            raise UsageError(
                f"--tcp {spec} is not loopback and TCP has no authentication: use --http "
                "with an API key, or give --insecure-no-auth"
            )


def _log(line: str) -> None:
    print(f"rkllm serve: {line}", file=sys.stderr, flush=True)


def model_specs(args: argparse.Namespace, models_dir: Path | None) -> list[ModelSpec]:
    """The named models: each ``--model``, then each model file of ``models_dir`` whose
    name no ``--model`` took; ``--chat-template`` for those without their own."""
    from ..server.model_specs import parse_model_option, scan_models_dir  # noqa: PLC0415

    specs = []
    for text in args.model or ():
        try:
            specs.append(parse_model_option(text))
        except ValueError as exc:  # its message names the option and what is wrong
            raise UsageError(str(exc)) from None
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--model names {', '.join(twice)} more than once")
    if models_dir is not None:
        try:
            scanned = scan_models_dir(models_dir)
        except OSError as exc:
            raise UsageError(f"--models-dir {models_dir}: {exc.strerror}") from None
        specs += [s for s in scanned if s.name not in names]
    if args.chat_template is not None:
        specs = [s if s.template else attrs.evolve(s, template=args.chat_template) for s in specs]
    return specs


def check_models(args: argparse.Namespace, specs: list[ModelSpec]) -> None:
    """Refuse, before serving, a ``--model`` whose file is not there and a chat template
    that is neither built in nor a file (the first request would fail on it, less clearly).

    Raises:
        UsageError: naming the option.
    """
    from ..server.model_specs import with_tag  # noqa: PLC0415
    from ..server.templates import TemplateError, load_template  # noqa: PLC0415

    options = {with_tag(text.partition("=")[0].strip()): text for text in args.model or ()}
    for spec in specs:
        option = options.get(spec.name)
        if option is not None and not spec.path.is_file():
            raise UsageError(f"--model {option}: no model file there")
        if spec.template is None:
            continue
        try:
            load_template(spec.template, spec.path)
        except TemplateError as exc:
            own = option is not None and f"template={spec.template}" in option
            where = f"--model {option}" if own else f"--chat-template {args.chat_template}"
            raise UsageError(f"{where}: {exc}") from None


@attrs.frozen
class _Faces:
    """What serves the named models: the catalog, its engine, and MCP."""

    catalog: ModelCatalog
    engine: ChatEngine
    mcp: McpFace


def _faces(server: Server, args: argparse.Namespace, specs: list[ModelSpec]) -> _Faces:
    from ..server.catalog import ModelCatalog  # noqa: PLC0415
    from ..server.chat_engine import ChatEngine  # noqa: PLC0415
    from ..server.mcp_server import McpFace  # noqa: PLC0415

    config = server.config
    catalog = ModelCatalog(
        specs,
        runtime=config.runtime,
        abi=config.abi,
        max_loaded=args.max_loaded,
        max_queue=args.max_queue,
        keep_alive_s=args.keep_alive,
        cache_dir=config.prompt_cache_dir,  # --cache-dir, else the models directory
        log=_log,
    )
    engine = ChatEngine(catalog)
    mcp = McpFace(server, engine=engine, catalog=catalog, log=_log)
    names = ", ".join(s.name for s in specs) or "none (give --model NAME=PATH or --models-dir)"
    _log(f"named models: {names}")
    return _Faces(catalog, engine, mcp)


def _mount(face: HttpFace, faces: _Faces, loopback: bool) -> list[str]:
    """Mount MCP and the OpenAI and Ollama APIs on ``face``; the paths they serve."""
    from ..server.ollama_api import ollama_routes  # noqa: PLC0415
    from ..server.openai_api import openai_routes  # noqa: PLC0415

    faces.mcp.mount(face, dns_rebinding_protection=loopback)
    face.add(openai_routes(faces.engine, face.authorized, log=_log))
    face.add(ollama_routes(faces.engine, face.authorized, log=_log))
    # The catalog's lifespan is entered by _serve around every face (stdio MCP uses it
    # too); the HTTP face renders its metrics and reports loading on /health.
    face.add([], metrics_text=faces.catalog.metrics_text, health=faces.catalog.health)
    return ["/mcp", "/v1 (OpenAI)", "/api (Ollama)"]


async def _serve(
    server: Server, args: argparse.Namespace, key: str | None, specs: list[ModelSpec]
) -> None:
    """Serve every transport asked for (the named models ``specs`` with MCP and HTTP)."""
    faces = None
    if args.http or args.mcp_stdio:
        faces = _faces(server, args, specs)
    face: HttpFace | None = None  # one face for every --http address
    socks: list[socket.socket] = []
    if args.http:
        from ..server.http import HttpConfig, HttpFace, bind  # noqa: PLC0415

        face = HttpFace(server, HttpConfig(api_key=key, idle_timeout_s=args.idle_timeout), log=_log)
        paths = ["/rpc", "/ws", "/health", "/metrics"]
        if faces is not None:
            loopback = all(parse_hostport(s, "--http")[0] in _LOOPBACK for s in args.http)
            paths += _mount(face, faces, loopback)
        for spec in args.http:
            host, port = parse_hostport(spec, "--http")
            try:
                sock = bind(host, port)
            except OSError as exc:
                raise UsageError(f"--http {spec}: {exc.strerror}") from None
            auth = "API key required" if key else "no authentication"
            _log(f"listening on http {host}:{sock.getsockname()[1]} ({', '.join(paths)}; {auth})")
            socks.append(sock)
    listeners = await _listeners(args)  # before any task group: a UsageError stays one
    async with contextlib.AsyncExitStack() as stack:
        if faces is not None:  # the keep-alive reaper; unloads every model on the way out
            await stack.enter_async_context(faces.catalog.lifespan())
        await _serve_all(server, args, face, socks, listeners, faces)


async def _listeners(args: argparse.Namespace) -> list[anyio.abc.Listener[Any]]:
    """Listen on every ``--tcp`` and ``--unix`` address.

    Raises:
        UsageError: one that cannot be bound (in use, a missing directory, ...).
    """
    listeners: list[anyio.abc.Listener[Any]] = []
    for spec in args.tcp or ():
        host, port = parse_hostport(spec)
        try:
            listener = await open_tcp(host, port)
        except OSError as exc:
            raise UsageError(f"--tcp {spec}: {exc.strerror or exc}") from None
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        _log(f"listening on tcp {host}:{bound}")
        if host not in _LOOPBACK:
            _log(f"warning: {host} is not loopback and this proxy has no authentication")
        listeners.append(listener)
    for path in args.unix or ():
        try:
            listeners.append(await open_unix(path))
        except OSError as exc:
            raise UsageError(f"--unix {path}: {exc.strerror or exc}") from None
        _log(f"listening on unix {path}")
    return listeners


async def _serve_all(
    server: Server,
    args: argparse.Namespace,
    face: HttpFace | None,
    socks: list[socket.socket],
    listeners: list[anyio.abc.Listener[Any]],
    faces: _Faces | None,
) -> None:
    """Serve HTTP on ``socks``, every listener and stdio until cancelled (by a signal, or
    by the end of a lone stdio client)."""
    async with anyio.create_task_group() as tg:
        if face is not None:
            from ..server.http import serve_http  # noqa: PLC0415

            tg.start_soon(serve_http, face, socks)
        for listener in listeners:
            tg.start_soon(serve_listener, server, listener)
        if args.stdio or args.mcp_stdio:

            async def stdio_then_stop() -> None:
                if args.mcp_stdio:
                    assert faces is not None  # made for --mcp-stdio
                    await faces.mcp.serve_stdio()
                else:
                    await serve_stdio(server)
                if not (args.tcp or args.unix or args.http):
                    tg.cancel_scope.cancel()  # our one client has gone: so do we

            tg.start_soon(stdio_then_stop)
        tg.start_soon(_signals, server, faces.catalog if faces else None, tg.cancel_scope)


async def _signals(server: Server, catalog: ModelCatalog | None, scope: anyio.CancelScope) -> None:
    """On SIGTERM or SIGINT: drain the proxy's runs and the named models' requests (one
    drain timeout for both), then cancel ``scope``."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            _log(f"{signal.Signals(signum).name}: draining runs and requests, then exiting")
            server.sessions.draining = True  # /health says 503 "draining" from now on
            if catalog is not None:
                catalog.draining = True
            deadline = anyio.current_time() + server.config.drain_timeout_s
            if not await server.sessions.wait_idle(server.config.drain_timeout_s):
                _log("runs still going after the drain timeout: aborting them")
            left = max(0.0, deadline - anyio.current_time())
            if catalog is not None and not await catalog.wait_idle(left):
                _log("model requests still going after the drain timeout: aborting them")
            scope.cancel()
            return


def _fake_banner(args: argparse.Namespace, demo: Path, models_dir: Path | None) -> str:
    """The line saying the fake runtime serves, and whether its demo model ``demo`` does."""
    found = "fake runtime" if args.runtime else "no RKLLM runtime found: bundled fake runtime"
    hint = "" if args.runtime else "; pass --runtime and --models-dir for a real one"
    if models_dir is None and args.runtime is None:  # its directory is the models dir
        about = f"; its demo model is {demo.stem} ({demo.name})"
    elif models_dir is None:  # --runtime fake confines to the current directory
        about = f"; --models-dir {demo.parent} serves its demo model"
    else:
        about = ""
    return f"{found} (no NPU involved{hint}){about}"


def cmd_serve(args: argparse.Namespace) -> int:
    """``rkllm serve``: serve until SIGTERM (or, with ``--stdio`` alone, until stdin ends)."""
    if not (args.stdio or args.mcp_stdio or args.tcp or args.unix or args.http):
        raise UsageError(
            "give at least one of --stdio, --mcp-stdio, --tcp HOST:PORT, --unix PATH, "
            "--http HOST:PORT"
        )
    for spec in args.tcp or ():
        parse_hostport(spec)
    key = api_key(args)
    check_binds(args, key)
    runtime = args.runtime
    models_dir = Path(args.models_dir) if args.models_dir else None
    try:
        target = resolve_target(args.runtime, None, args.abi)
    except UsageError:  # a real runtime is installed: it needs no demo model
        target = None
    if target is not None:
        runtime = target.runtime
        if target.notice:  # serve's own words: it names its models with --models-dir
            _log(_fake_banner(args, target.model, models_dir))
        if models_dir is None and runtime == "fake" and args.runtime is None:
            models_dir = target.model.parent
    config = ServerConfig(
        runtime=runtime,
        abi=args.abi,
        models_dir=models_dir or Path.cwd(),
        cache_dir=args.cache_dir,
        run_expiry_s=args.run_expiry,
    )
    # Model files are named models (for MCP and HTTP) from --models-dir, or the fake's demo
    # directory; never from the current directory by default.
    chat_faces = bool(args.http or args.mcp_stdio)
    specs = model_specs(args, models_dir if chat_faces else None)
    if chat_faces:
        check_models(args, specs)
    if args.model and not chat_faces:
        _log("warning: --model names models for --http and --mcp-stdio only")
    _log(f"models dir {config.models_dir.resolve()}, cache dir {config.prompt_cache_dir.resolve()}")
    server = Server(config, log=_log)
    try:
        anyio.run(_serve, server, args, key, specs)
    finally:
        for path in args.unix or ():
            with contextlib.suppress(OSError):
                Path(path).unlink()
    return EXIT_OK
