"""``rkllm serve``: the runtime's functions as a JSON-RPC 2.0 proxy (stdio, TCP, Unix).

Logs one line per request to stderr (stdout belongs to the protocol in ``--stdio`` mode).
SIGTERM (or Ctrl-C) stops taking new runs, lets the runs in progress finish (up to the
drain timeout), closes every connection (their handles are destroyed) and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import anyio

from ..server import Server, ServerConfig
from ..server.transports import open_tcp, open_unix, serve_listener, serve_stdio
from ._common import EXIT_OK, UsageError, resolve_target

__all__ = ["cmd_serve", "parse_hostport"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--tcp takes HOST:PORT, got {text!r}")
    return host, int(port)


def _log(line: str) -> None:
    print(f"rkllm serve: {line}", file=sys.stderr, flush=True)


async def _serve(server: Server, args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:
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
                if not (args.tcp or args.unix):
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
    if not (args.stdio or args.tcp or args.unix):
        raise UsageError("give at least one of --stdio, --tcp HOST:PORT, --unix PATH")
    for spec in args.tcp or ():
        parse_hostport(spec)
    runtime = args.runtime
    models_dir = Path(args.models_dir) if args.models_dir else None
    try:
        target = resolve_target(args.runtime, None, args.abi)
    except UsageError:  # a real runtime is installed: it needs no demo model
        target = None
    if target is not None:
        runtime = target.runtime
        if target.notice:
            _log(target.notice.replace("its demo model", "its demo model (demo-model.json)"))
        if models_dir is None and runtime == "fake" and args.runtime is None:
            models_dir = target.model.parent
    config = ServerConfig(
        runtime=runtime,
        abi=args.abi,
        models_dir=models_dir or Path.cwd(),
        cache_dir=args.cache_dir,
    )
    _log(f"models dir {config.models_dir.resolve()}, cache dir {config.prompt_cache_dir.resolve()}")
    server = Server(config, log=_log)
    try:
        anyio.run(_serve, server, args)
    finally:
        for path in args.unix or ():
            with contextlib.suppress(OSError):
                Path(path).unlink()
    return EXIT_OK
