"""``rkllm serve``: the runtime's functions as a JSON-RPC 2.0 proxy (stdio, TCP, Unix, HTTP).

Logs one line per request to stderr (stdout belongs to the protocol in ``--stdio`` mode).
SIGTERM (or Ctrl-C) stops taking new runs, lets the runs in progress finish (up to the
drain timeout), closes every connection (their handles are destroyed) and exits 0.

Binds nothing but loopback unless told: a non-loopback ``--http`` needs an API key
(``--api-key``, ``--api-key-file`` or ``RKLLM_API_KEY``), a non-loopback ``--tcp`` (which
has no authentication) needs ``--insecure-no-auth``, as does an ``--http`` without a key.
The HTTP face (Starlette, uvicorn) is imported only when ``--http`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import anyio

from ..server import Server, ServerConfig
from ..server.transports import open_tcp, open_unix, serve_listener, serve_stdio
from ._common import EXIT_OK, UsageError, resolve_target

__all__ = ["api_key", "check_binds", "cmd_serve", "parse_hostport"]

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


async def _serve(server: Server, args: argparse.Namespace, key: str | None) -> None:
    http: list[tuple[Any, socket.socket]] = []
    if args.http:
        from ..server.http import HttpConfig, HttpFace, bind  # noqa: PLC0415

        face = HttpFace(server, HttpConfig(api_key=key, idle_timeout_s=args.idle_timeout), log=_log)
        for spec in args.http:
            host, port = parse_hostport(spec, "--http")
            try:
                sock = bind(host, port)
            except OSError as exc:
                raise UsageError(f"--http {spec}: {exc.strerror}") from None
            auth = "API key required" if key else "no authentication"
            _log(
                f"listening on http {host}:{sock.getsockname()[1]} "
                f"(/rpc, /ws, /health, /metrics; {auth})"
            )
            http.append((face, sock))
    async with anyio.create_task_group() as tg:
        if http:
            from ..server.http import serve_http  # noqa: PLC0415

            tg.start_soon(serve_http, http[0][0], [sock for _, sock in http])
        for spec in args.tcp or ():
            host, port = parse_hostport(spec)
            listener = await open_tcp(host, port)
            bound = listener.extra(anyio.abc.SocketAttribute.local_port)
            _log(f"listening on tcp {host}:{bound}")
            if host not in _LOOPBACK:
                _log(f"warning: {host} is not loopback and this proxy has no authentication")
            tg.start_soon(serve_listener, server, listener)
        for path in args.unix or ():
            listener = await open_unix(path)
            _log(f"listening on unix {path}")
            tg.start_soon(serve_listener, server, listener)
        if args.stdio:

            async def stdio_then_stop() -> None:
                await serve_stdio(server)
                if not (args.tcp or args.unix or args.http):
                    tg.cancel_scope.cancel()  # our one client has gone: so do we

            tg.start_soon(stdio_then_stop)
        tg.start_soon(_signals, server, tg.cancel_scope)


async def _signals(server: Server, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            _log(f"{signal.Signals(signum).name}: draining runs, then exiting")
            server.sessions.draining = True
            if not await server.sessions.wait_idle(server.config.drain_timeout_s):
                _log("runs still going after the drain timeout: aborting them")
            scope.cancel()
            return


def cmd_serve(args: argparse.Namespace) -> int:
    """``rkllm serve``: serve until SIGTERM (or, with ``--stdio`` alone, until stdin ends)."""
    if not (args.stdio or args.tcp or args.unix or args.http):
        raise UsageError(
            "give at least one of --stdio, --tcp HOST:PORT, --unix PATH, --http HOST:PORT"
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
        if target.notice:  # serve's own words: it takes --models-dir, not --model
            found = (
                "fake runtime" if args.runtime else "no RKLLM runtime found: bundled fake runtime"
            )
            hint = "" if args.runtime else "; pass --runtime and --models-dir for a real one"
            _log(f"{found} (no NPU involved{hint}); its demo model is demo-model.json")
        if models_dir is None and runtime == "fake" and args.runtime is None:
            models_dir = target.model.parent
    config = ServerConfig(
        runtime=runtime,
        abi=args.abi,
        models_dir=models_dir or Path.cwd(),
        cache_dir=args.cache_dir,
        run_expiry_s=args.run_expiry,
    )
    _log(f"models dir {config.models_dir.resolve()}, cache dir {config.prompt_cache_dir.resolve()}")
    server = Server(config, log=_log)
    try:
        anyio.run(_serve, server, args, key)
    finally:
        for path in args.unix or ():
            with contextlib.suppress(OSError):
                Path(path).unlink()
    return EXIT_OK
