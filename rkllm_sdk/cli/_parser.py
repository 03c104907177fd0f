"""The ``rkllm`` argument parser: the commands, their options and help texts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from .bench import cmd_bench
from .chat import CHAT_HELP, cmd_chat
from .doctor import cmd_doctor
from .run import cmd_run
from .serve import cmd_serve

#: The largest value of a C ``int`` (int32): every count ends up in one.
INT32_MAX = 2**31 - 1
#: The largest bench prompt or reply: the fake's (and any real model's) context limit.
MAX_CONTEXT = 1_048_576


def _count(hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from 1 to ``hi``; argparse names the option on error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not 1 <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from 1 to {hi}: {value}")
        return value

    parse.__name__ = "count"  # argparse's "invalid count value" fallback names it
    return parse


def _number(text: str) -> float:
    """``text`` as a float, or the "not a number" error the argparse types below give."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def _keep_alive(text: str) -> float:
    """An argparse type: seconds a model stays loaded when idle (-1 forever, 0 unload)."""
    value = _number(text)
    if value != -1 and not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be -1 (forever) or seconds >= 0: {text}")
    return value


_positive_int = _count(INT32_MAX)
_context_count = _count(MAX_CONTEXT)


def _runtime(p: argparse.ArgumentParser, *, default: str) -> None:
    """``--runtime`` and ``--abi``; ``default`` says where the runtime comes from without it."""
    p.add_argument(
        "--runtime",
        metavar="PATH|fake",
        help=f"librkllmrt.so to load, or 'fake' for the bundled emulator (default: {default})",
    )
    p.add_argument(
        "--abi", choices=["1.2", "1.3"], help="runtime ABI (default: detected from the library)"
    )


def _common(p: argparse.ArgumentParser, *, model_help: str) -> None:
    """``--model``, ``--runtime`` and ``--abi``: every command but ``serve`` takes them."""
    p.add_argument("--model", metavar="PATH", help=model_help)
    _runtime(p, default="RKLLM_RUNTIME, then the system's library")


def _generation(p: argparse.ArgumentParser) -> None:
    """The options of the commands that generate from a prompt (``run``, ``chat``)."""
    _common(p, model_help="the .rkllm model (on the fake runtime: its demo model by default)")
    p.add_argument("--max-new-tokens", type=_positive_int, metavar="N", help="stop after N tokens")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--thinking", action="store_true", help="let a thinking model think")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as the commands' own usage errors
    are (``rkllm serve: error: ...``, exit 2): the usage block is ``--help``'s."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``rkllm`` argument parser; each command's ``func`` runs it and returns the code."""
    from .. import __version__  # noqa: PLC0415

    parser = _Parser(  # its commands' parsers are _Parsers too
        prog="rkllm",
        description="Run LLMs on Rockchip NPUs (RKLLM runtime), or on the bundled fake "
        "runtime when there is no board.",
        epilog="Without --runtime and --model, and with no runtime installed, commands run "
        "on the bundled fake runtime and its demo model. Environment: RKLLM_RUNTIME, "
        "RKLLM_ABI.",
    )
    parser.add_argument("--version", action="version", version=f"rkllm-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "doctor",
        help="check the runtime, NPU driver, platform and a model file",
        description="Report which runtime, ABI, NPU driver and platform the SDK would use. "
        "Exit code 1 when something is broken.",
    )
    _common(p, model_help="also check this model file")
    p.add_argument(
        "--probe",
        metavar="MODEL",
        help="run MODEL on the runtime and report how it behaves where the fake runtime had "
        "to assume (what WAITING callbacks carry, rkllm_is_running, abort, pause, KV cache, "
        "destroy while running, ...); please report the output",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "run",
        help="stream a reply to one prompt",
        description="Stream the model's reply to PROMPT, then print a summary line "
        "(time to first token, prefill and decode rates, memory). Ctrl-C aborts the "
        "generation on the NPU.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the user message")
    _generation(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "chat",
        help="an interactive chat",
        description="Chat with the model; the history stays in the KV cache. " + CHAT_HELP,
    )
    _generation(p)
    p.add_argument("--tools", metavar="FILE", help="OpenAI-style tool definitions (JSON)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "bench",
        help="measure TTFT, prefill and decode rates, and memory",
        description="Run a fixed prompt several times (after one warm-up run) and report "
        "median, min and max of each figure.",
    )
    _common(p, model_help="the .rkllm model (on the fake runtime: its demo model by default)")
    p.add_argument("--prompt-tokens", type=_context_count, default=128, metavar="N")
    p.add_argument("--new-tokens", type=_context_count, default=64, metavar="N")
    p.add_argument("--runs", type=_positive_int, default=5, metavar="N")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench, max_new_tokens=None)

    p = sub.add_parser(
        "serve",
        help="serve the runtime's functions (JSON-RPC 2.0, MCP) and named models",
        description="Serve every runtime function as a JSON-RPC 2.0 method named as in "
        "rkllm.h, over stdio, TCP and / or Unix sockets (newline-delimited JSON), and HTTP "
        "(POST /rpc, SSE, WebSocket /ws). Runs stream rkllm_result notifications. Handles "
        "belong to the connection that made them and die with it (over HTTP: to the API key "
        "and X-RKLLM-Session header, until idle). MCP (tools generate, chat and one per "
        "function) on stdio (--mcp-stdio) and at /mcp on the HTTP port, with the OpenAI "
        "(/v1) and Ollama (/api) APIs for the named models (--model, --models-dir). SIGTERM "
        "lets running and queued runs and requests finish (new ones are refused as busy), "
        "then exits 0. "
        "Environment: RKLLM_API_KEY.",
    )
    spawned = p.add_mutually_exclusive_group()
    spawned.add_argument(
        "--stdio", action="store_true", help="serve JSON-RPC to the client that spawned us"
    )
    spawned.add_argument(
        "--mcp-stdio",
        action="store_true",
        help="serve MCP to the client that spawned us (what a desktop MCP client runs)",
    )
    p.add_argument(
        "--tcp",
        action="append",
        metavar="HOST:PORT",
        help="listen on TCP (repeatable; no authentication: loopback only, unless "
        "--insecure-no-auth)",
    )
    p.add_argument("--unix", action="append", metavar="PATH", help="listen on a Unix socket")
    p.add_argument(
        "--http",
        action="append",
        metavar="HOST:PORT",
        help="serve HTTP on HOST:PORT (repeatable): POST /rpc (JSON, or SSE with Accept: "
        "text/event-stream), WebSocket /ws, MCP (Streamable HTTP) /mcp, the OpenAI and Ollama "
        "APIs, GET /health, GET /metrics; a host other than loopback needs an API key",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the Bearer token HTTP and WebSocket clients must send (visible in ps: prefer "
        "--api-key-file or RKLLM_API_KEY)",
    )
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --http without an API key, or a non-loopback --tcp",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=600.0,
        metavar="S",
        help="destroy an HTTP session's handles after S seconds without a request (default: 600)",
    )
    p.add_argument(
        "--run-expiry",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="abort and forget an rkllm_run_async run whose results are not fetched for S "
        "seconds (default: 300)",
    )
    p.add_argument(
        "--models-dir",
        metavar="DIR",
        help="model and LoRA paths must lie inside DIR, and each model file in it is a named "
        "model (default: the current directory, its model files not named; with no runtime "
        "installed, the bundled fake's demo model directory)",
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="prompt caches must lie inside DIR (default: models dir)"
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=PATH[,OPT=VAL...]",
        help="a named model for the chat APIs and MCP's generate / chat (repeatable), with "
        "RKLLMParam overrides, e.g. qwen3=/models/qwen3.rkllm,max_context_len=4096; every "
        "model file in --models-dir is named by its stem too",
    )
    p.add_argument(
        "--chat-template",
        metavar="NAME|PATH",
        help="the chat template of the named models: a built-in name (qwen2.5, qwen3, llama3, "
        "deepseek-r1, gemma, phi3, minicpm) or a tokenizer_config.json / .jinja file "
        "(default: the model's own, else guessed from its file name)",
    )
    p.add_argument(
        "--max-loaded",
        type=_positive_int,
        default=1,
        metavar="N",
        help="named models loaded at once; the least recently used idle one is unloaded "
        "(default: 1)",
    )
    p.add_argument(
        "--max-queue",
        type=_positive_int,
        default=8,
        metavar="N",
        help="chat requests waiting per model; one more is answered busy at once (default: 8)",
    )
    p.add_argument(
        "--keep-alive",
        type=_keep_alive,
        default=300.0,
        metavar="S",
        help="unload a named model after S idle seconds (0: after each request, -1: never; "
        "default: 300)",
    )
    _runtime(p, default="RKLLM_RUNTIME, then the system's library, then the fake")
    p.set_defaults(func=cmd_serve)
    return parser
