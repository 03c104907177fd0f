"""The ``rkllm`` command: ``doctor``, ``run``, ``chat`` and ``bench``.

Also reachable as ``python -m rkllm_sdk``. Output goes through ``rich``: colour in a
terminal, plain text when piped. Generated text goes to stdout; notices, summaries,
progress and errors go to stderr, so ``rkllm run "..." > reply.txt`` keeps only the reply.

Exit codes: 0 success; 1 an SDK error (or ``doctor`` found a problem); 2 bad usage;
130 a generation interrupted with Ctrl-C (``run`` and ``bench``).

Unlike the library, the command falls back to the bundled fake runtime when no runtime is
installed and no model is given, and says so in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import numpy as np

from ._doctor import DoctorReport, doctor
from ._fake import demo_model_path
from ._ffi.loader import locate_runtime
from .errors import RKLLMError, RuntimeNotFoundError
from .llm import AsyncLLM
from .models import ModelParams, TokenInput
from .stream import Generation

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


# ---- output ------------------------------------------------------------------------------


def _consoles() -> tuple[Any, Any]:
    """(stdout, stderr) rich consoles; rich is imported only when the command runs."""
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False, soft_wrap=True), Console(
        stderr=True, highlight=False, soft_wrap=True
    )


def _esc(text: str) -> str:
    """Text from the model, runtime or user, safe inside rich markup."""
    from rich.markup import escape  # noqa: PLC0415

    return escape(text)


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


# ---- which runtime and model -------------------------------------------------------------


@attrs.frozen
class Target:
    """What a command runs on: the ``runtime=`` value, the model, and a notice to print."""

    runtime: str | None
    model: Path
    notice: str | None = None


def resolve_target(runtime: str | None, model: str | None, abi: str | None) -> Target:
    """Pick the runtime and model from the options, falling back to the bundled fake.

    No ``--model`` and no runtime installed: the fake runtime and its demo model. No
    ``--model`` with the fake runtime: its demo model. No ``--model`` with a real runtime:
    :class:`UsageError`.
    """
    if model is not None:
        return Target(runtime, Path(model))
    try:
        path, _, is_fake = locate_runtime(runtime, abi=abi)
    except RuntimeNotFoundError:
        if runtime is not None:
            raise
        return Target(
            "fake",
            demo_model_path(),
            "no RKLLM runtime found: using the bundled fake runtime and its demo model "
            "(no NPU involved; pass --runtime and --model for a real one)",
        )
    if is_fake:
        return Target(runtime, demo_model_path(), "fake runtime: using its demo model")
    raise UsageError(f"a runtime was found ({path}); give the model to run with --model PATH")


# ---- Ctrl-C ------------------------------------------------------------------------------


@attrs.define
class Interrupts:
    """SIGINT handling for a command: stop the current step, or cancel the whole command.

    The first Ctrl-C calls ``stop`` when it is set (a stream's ``abort``, a scope's
    ``cancel``), else cancels ``main``; either way the run is aborted on the NPU and the
    runtime is waited for before anything is released. A second Ctrl-C cancels ``main``;
    a third leaves at once (exit code 130), for a runtime that does not answer its abort.
    """

    main: anyio.CancelScope
    stop: Callable[[], object] | None = None
    hits: int = 0

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.hits += 1
                if self.hits >= 3:
                    os._exit(EXIT_INTERRUPTED)  # the user insists; the runtime is stuck
                (self.stop if self.stop is not None and self.hits == 1 else self.main.cancel)()


async def _with_interrupts(body: Callable[[Interrupts], Awaitable[int]]) -> int:
    code, error = EXIT_INTERRUPTED, None  # stays so when Ctrl-C outside a step cancels all
    async with anyio.create_task_group() as tg:
        interrupts = Interrupts(tg.cancel_scope)
        await tg.start(interrupts.watch)
        try:
            code = await body(interrupts)
        except Exception as exc:  # raised below, not wrapped in the task group's group
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return code


# ---- formatting results -----------------------------------------------------------------


def _rates(gen: Generation) -> dict[str, float | int | None]:
    perf = gen.perf
    return {
        "tokens": len(gen.token_ids),
        "ttft_ms": gen.ttft_ms,
        "prefill_tokens": perf.prefill_tokens if perf else None,
        "prefill_tokens_per_s": perf.prefill_tokens_per_s if perf else None,
        "decode_tokens_per_s": perf.generate_tokens_per_s if perf else None,
        "memory_mb": perf.memory_usage_mb if perf else None,
        "duration_ms": gen.duration_ms,
    }


def summary_line(gen: Generation) -> str:
    """The one-line summary printed after a reply."""
    parts = [
        f"{len(gen.token_ids)} tokens",
        f"TTFT {gen.ttft_ms:.0f} ms" if gen.ttft_ms is not None else "TTFT -",
    ]
    if gen.perf is not None:
        parts += [
            f"prefill {gen.perf.prefill_tokens} tok at {gen.perf.prefill_tokens_per_s:.1f} tok/s",
            f"decode {gen.perf.generate_tokens_per_s:.1f} tok/s",
            f"memory {gen.perf.memory_usage_mb:.0f} MB",
        ]
    parts.append(f"finish: {gen.finish_reason}")
    return " · ".join(parts)


def _runtime_label(llm: AsyncLLM) -> str:
    rt = llm.runtime
    kind = "fake runtime" if rt.is_fake else "runtime"
    return f"{kind} {rt.version or '?'} (ABI {rt.abi}) at {rt.path}"


# ---- doctor ------------------------------------------------------------------------------


def _render_doctor(report: DoctorReport, err: Any, out: Any) -> None:
    from rich.table import Table  # noqa: PLC0415

    styles = {"note": "dim", "driver": "red" if report.driver_ok is False else ""}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in report.lines():
        cell = f"[{styles[label]}]{_esc(value)}[/]" if styles.get(label) else _esc(value)
        if label == "runtime" and report.is_fake:
            cell += " [cyan](fake)[/cyan]"
        table.add_row(label, cell)
    out.print(table)
    if report.ok:
        out.print("[green]no problems found[/green]")
        return
    out.print(f"[red bold]{len(report.problems)} problem(s):[/red bold]")
    for p in report.problems:
        out.print(f"  [red]✗[/red] {_esc(p.what)}")
        out.print(f"    [yellow]fix:[/yellow] {_esc(p.fix)}")


def cmd_doctor(args: argparse.Namespace) -> int:
    """``rkllm doctor``: report the runtime, driver, platform and model; 1 when broken."""
    report = doctor(args.model, runtime=args.runtime, abi=args.abi)
    if args.json:
        _print_json(report.to_dict())
    else:
        out, err = _consoles()
        _render_doctor(report, err, out)
    return EXIT_OK if report.ok else EXIT_ERROR


# ---- run ---------------------------------------------------------------------------------


async def _load(args: argparse.Namespace, target: Target, **params: Any) -> AsyncLLM:
    if args.max_new_tokens is not None:
        params.setdefault("max_new_tokens", args.max_new_tokens)
    return await AsyncLLM.load(
        target.model, runtime=target.runtime, abi=args.abi, params=ModelParams(**params)
    )


def _echo_chunks(out: Any) -> Callable[[Any], None]:
    from rich.text import Text  # noqa: PLC0415

    def echo(chunk: Any) -> None:
        if chunk.text:
            out.print(Text(chunk.text, style="dim" if chunk.thinking else ""), end="")

    return echo


def _print_tool_calls(reply: Any, err: Any) -> None:
    for call in reply.tool_calls:
        args_text = json.dumps(call.arguments, ensure_ascii=False)
        err.print(
            f"[magenta]tool call[/magenta] {_esc(f'{call.name}({args_text})')}  "
            f"[dim]id={_esc(call.id)}[/dim]"
        )


def _reply_json(reply: Any, llm: AsyncLLM, target: Target, interrupted: bool) -> dict[str, Any]:
    gen: Generation = reply.generation
    rt = llm.runtime
    return {
        "text": reply.text,
        "thinking": reply.thinking,
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
        ],
        "finish_reason": reply.finish_reason,
        "interrupted": interrupted,
        **_rates(gen),
        "runtime": {
            "path": str(rt.path),
            "version": rt.version,
            "abi": rt.abi,
            "fake": rt.is_fake,
        },
        "model": str(target.model),
    }


async def _run(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    out, err = _consoles()
    if target.notice:
        err.print(f"[cyan]{target.notice}[/cyan]")
    echo = _echo_chunks(out)
    async with await _load(args, target) as llm:
        chat = llm.chat(system=args.system, thinking=args.thinking)
        async with await chat.stream(args.prompt) as s:
            ints.stop = s.abort
            async for chunk in s:
                if not args.json:
                    echo(chunk)
        ints.stop = None
        reply = chat.reply_from(s.result())
        interrupted = ints.hits > 0 and reply.finish_reason == "abort"
        if args.json:
            _print_json(_reply_json(reply, llm, target, interrupted))
        else:
            out.print()
            _print_tool_calls(reply, err)
            if interrupted:
                err.print("[yellow]interrupted: generation aborted[/yellow]")
            err.print(f"[dim]{summary_line(reply.generation)} · {_runtime_label(llm)}[/dim]")
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``rkllm run PROMPT``: stream one reply, then a summary line."""
    target = resolve_target(args.runtime, args.model, args.abi)
    return anyio.run(_with_interrupts, lambda ints: _run(args, target, ints))


# ---- chat --------------------------------------------------------------------------------


class LineReader:
    """Lines from a file descriptor without blocking the event loop (or a thread)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._eof = False

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._buf and not self._eof:
            await anyio.wait_readable(self._fd)
            data = os.read(self._fd, 65536)
            self._eof = not data
            self._buf += data
        if not self._buf:
            return None
        line, _, rest = self._buf.partition(b"\n")
        self._buf = rest
        return line.decode("utf-8", errors="replace").rstrip("\r")


def load_tools(path: str) -> list[dict[str, Any]]:
    """OpenAI-style tool definitions from a JSON file (a list, or ``{"tools": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the tools file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"the tools file {path} is not JSON: {exc}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise UsageError(f"the tools file {path} must hold a list of tool objects")
    return data


CHAT_HELP = (
    "/reset forgets the conversation · /system TEXT sets the system prompt · "
    "/result JSON answers the last tool calls · /stats shows metrics · /exit leaves "
    "(Ctrl-C stops an answer, Ctrl-D leaves)"
)


def _render_stats(llm: AsyncLLM, out: Any) -> None:
    from rich.table import Table  # noqa: PLC0415

    m = llm.metrics()
    table = Table(title="session metrics", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("turns (ok / failed)", f"{m.calls_ok} / {m.calls_failed}")
    table.add_row("mean time to first token", f"{m.ttft_seconds_mean * 1e3:.0f} ms")
    table.add_row("prefill", f"{m.prefill_tokens} tok, {m.prefill_tokens_per_s:.1f} tok/s")
    table.add_row("decode", f"{m.generate_tokens} tok, {m.generate_tokens_per_s:.1f} tok/s")
    table.add_row("runtime memory (peak)", f"{m.runtime_memory_mb:.0f} MB")
    table.add_row("process memory (RSS)", f"{m.process_rss_mb:.0f} MB")
    out.print(table)


@attrs.define
class ChatLoop:
    """The state of ``rkllm chat`` between turns, and its slash commands."""

    llm: AsyncLLM
    args: argparse.Namespace
    tools: list[dict[str, Any]]
    out: Any
    err: Any
    chat: Any = None
    last_calls: tuple[Any, ...] = ()

    def __attrs_post_init__(self) -> None:
        self.new_session(self.args.system)

    def new_session(self, system: str | None) -> None:
        self.chat = self.llm.chat(system=system, tools=self.tools, thinking=self.args.thinking)

    async def command(self, text: str) -> tuple[str, str] | None:
        """Handle a slash command; returns the (prompt, role) to send, if any."""
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name == "/reset":
            await self.chat.reset()
            self.err.print("[dim]conversation forgotten[/dim]")
        elif name == "/system":
            self.new_session(rest or None)
            self.err.print("[dim]system prompt set; conversation restarted[/dim]")
        elif name == "/stats":
            _render_stats(self.llm, self.out)
        elif name == "/result":
            if not self.last_calls:
                self.err.print("[yellow]no tool calls to answer[/yellow]")
                return None
            try:
                result = json.loads(rest or "null")
            except json.JSONDecodeError as exc:
                self.err.print(f"[red]not JSON: {_esc(str(exc))}[/red]")
                return None
            return json.dumps(result, ensure_ascii=False), "tool"
        else:
            self.err.print(f"[yellow]unknown command {_esc(name)}[/yellow] · {CHAT_HELP}")
        return None

    async def turn(self, prompt: str, role: str, ints: Interrupts) -> None:
        """Stream one answer; Ctrl-C stops it and the chat goes on."""
        self.out.print("[bold blue]assistant>[/bold blue] ", end="")
        echo = _echo_chunks(self.out)
        async with await self.chat.stream(prompt, role=role) as s:
            ints.stop = s.abort
            async for chunk in s:
                echo(chunk)
        ints.stop = None
        self.out.print()
        reply = self.chat.reply_from(s.result())
        self.last_calls = reply.tool_calls
        _print_tool_calls(reply, self.err)
        if reply.finish_reason == "abort":
            self.err.print("[yellow]stopped[/yellow]")
        self.err.print(f"[dim]{summary_line(reply.generation)}[/dim]")


async def _chat(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    out, err = _consoles()
    if target.notice:
        err.print(f"[cyan]{target.notice}[/cyan]")
    tools = load_tools(args.tools) if args.tools else []
    reader = LineReader(sys.stdin.fileno())
    async with await _load(args, target) as llm:
        loop = ChatLoop(llm, args, tools, out, err)
        err.print(f"[dim]{_esc(_runtime_label(llm))}[/dim]")
        err.print(f"[dim]{CHAT_HELP}[/dim]")
        while True:
            out.print("[bold green]you>[/bold green] ", end="")
            line = await reader.readline()
            text = (line or "").strip()
            if line is None or text in ("/exit", "/quit"):
                out.print()
                return EXIT_OK
            if not text:
                continue
            send = await loop.command(text) if text.startswith("/") else (text, "user")
            if send is not None:
                await loop.turn(*send, ints)


def cmd_chat(args: argparse.Namespace) -> int:
    """``rkllm chat``: an interactive conversation (history in the KV cache)."""
    target = resolve_target(args.runtime, args.model, args.abi)
    if args.tools:
        load_tools(args.tools)  # a bad file is a usage error before anything loads
    return anyio.run(_with_interrupts, lambda ints: _chat(args, target, ints))


# ---- bench -------------------------------------------------------------------------------


def bench_prompt(n_tokens: int) -> TokenInput:
    """A deterministic prompt of exactly ``n_tokens`` token ids (all below 1,100).

    Token ids rather than text, so the prefill length does not depend on the tokenizer
    and the chat template is not added (as llama.cpp's llama-bench does).
    """
    ids = (np.arange(n_tokens, dtype=np.int64) * 7919) % 1000 + 100
    return TokenInput(ids=ids.astype(np.int32))


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


BENCH_METRICS = (
    ("ttft_ms", "time to first token", "ms"),
    ("prefill_tokens_per_s", "prefill", "tok/s"),
    ("decode_tokens_per_s", "decode", "tok/s"),
    ("memory_mb", "runtime memory (peak)", "MB"),
)


async def _bench(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    out, err = _consoles()
    if target.notice:
        err.print(f"[cyan]{target.notice}[/cyan]")
    report = await anyio.to_thread.run_sync(lambda: doctor(runtime=target.runtime, abi=args.abi))
    params: dict[str, Any] = {
        "max_new_tokens": args.new_tokens,
        "max_context_len": max(512, args.prompt_tokens + args.new_tokens + 16),
    }
    if report.abi == "1.3":
        params["ignore_eos_token"] = True  # decode past the end of sequence: --new-tokens each
    runs: list[dict[str, Any]] = []
    async with await _load(args, target, **params) as llm:
        prompt = bench_prompt(args.prompt_tokens)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal or args.json,
        )
        with progress, anyio.CancelScope() as scope:
            ints.stop = scope.cancel
            task = progress.add_task("warm-up + runs", total=args.runs + 1)
            for i in range(args.runs + 1):
                gen = await llm.generate(prompt)
                progress.advance(task)
                if i > 0:  # the first run warms caches up and is not counted
                    runs.append(_rates(gen))
        ints.stop = None
        rt = llm.runtime
    if len(runs) < args.runs:
        err.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED
    summary = {
        key: _spread([float(r[key]) for r in runs if r[key] is not None])
        for key, _, _ in BENCH_METRICS
        if any(r[key] is not None for r in runs)
    }
    info = {
        "runtime": {
            "path": str(rt.path),
            "version": rt.version,
            "abi": rt.abi,
            "fake": rt.is_fake,
        },
        "driver": report.driver_version,
        "platform": report.platform,
        "machine": report.machine,
        "model": str(target.model),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": runs,
        "summary": summary,
    }
    if args.json:
        _print_json(info)
        return EXIT_OK
    kind = "fake runtime" if rt.is_fake else "runtime"
    out.print(
        f"{kind} {rt.version} (ABI {rt.abi}) · driver {report.driver_version or '-'} · "
        f"platform {report.platform or '-'} · {report.machine}"
    )
    out.print(
        f"model {target.model} · {args.prompt_tokens} prompt tokens · "
        f"{args.new_tokens} new tokens · {args.runs} runs (+1 warm-up)"
    )
    table = Table()
    table.add_column("metric")
    for col in ("median", "min", "max"):
        table.add_column(col, justify="right")
    for key, label, unit in BENCH_METRICS:
        if key in summary:
            s = summary[key]
            table.add_row(f"{label} ({unit})", *(f"{s[c]:.1f}" for c in ("median", "min", "max")))
    out.print(table)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """``rkllm bench``: TTFT, prefill and decode rates and memory over several runs."""
    for name in ("prompt_tokens", "new_tokens", "runs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    target = resolve_target(args.runtime, args.model, args.abi)
    return anyio.run(_with_interrupts, lambda ints: _bench(args, target, ints))


# ---- the parser --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``rkllm`` argument parser."""
    from . import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="rkllm",
        description="Run LLMs on Rockchip NPUs (RKLLM runtime), or on the bundled fake "
        "runtime when there is no board.",
        epilog="Without --runtime and --model, and with no runtime installed, commands run "
        "on the bundled fake runtime and its demo model. Environment: RKLLM_RUNTIME, "
        "RKLLM_ABI.",
    )
    parser.add_argument("--version", action="version", version=f"rkllm-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, model_help: str) -> None:
        p.add_argument("--model", metavar="PATH", help=model_help)
        p.add_argument(
            "--runtime",
            metavar="PATH|fake",
            help="librkllmrt.so to load, or 'fake' for the bundled emulator "
            "(default: RKLLM_RUNTIME, then the system's library)",
        )
        p.add_argument(
            "--abi", choices=["1.2", "1.3"], help="runtime ABI (default: detected from the library)"
        )

    p = sub.add_parser(
        "doctor",
        help="check the runtime, NPU driver, platform and a model file",
        description="Report which runtime, ABI, NPU driver and platform the SDK would use. "
        "Exit code 1 when something is broken.",
    )
    common(p, model_help="also check this model file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)

    def generation(p: argparse.ArgumentParser) -> None:
        common(p, model_help="the .rkllm model (on the fake runtime: its demo model by default)")
        p.add_argument(
            "--max-new-tokens", type=_positive_int, metavar="N", help="stop after N tokens"
        )
        p.add_argument("--system", metavar="TEXT", help="system prompt")
        p.add_argument("--thinking", action="store_true", help="let a thinking model think")

    p = sub.add_parser(
        "run",
        help="stream a reply to one prompt",
        description="Stream the model's reply to PROMPT, then print a summary line "
        "(time to first token, prefill and decode rates, memory). Ctrl-C aborts the "
        "generation on the NPU.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the user message")
    generation(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "chat",
        help="an interactive chat",
        description="Chat with the model; the history stays in the KV cache. " + CHAT_HELP,
    )
    generation(p)
    p.add_argument("--tools", metavar="FILE", help="OpenAI-style tool definitions (JSON)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "bench",
        help="measure TTFT, prefill and decode rates, and memory",
        description="Run a fixed prompt several times (after one warm-up run) and report "
        "median, min and max of each figure.",
    )
    common(p, model_help="the .rkllm model (on the fake runtime: its demo model by default)")
    p.add_argument("--prompt-tokens", type=_positive_int, default=128, metavar="N")
    p.add_argument("--new-tokens", type=_positive_int, default=64, metavar="N")
    p.add_argument("--runs", type=_positive_int, default=5, metavar="N")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench, max_new_tokens=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rkllm`` command; returns the exit code.

    >>> main(["doctor", "--runtime", "fake", "--json"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"rkllm {args.command}: error: {exc}\n")
    except RKLLMError as exc:
        _, err = _consoles()
        err.print(f"[red bold]error:[/red bold] {_esc(f'{type(exc).__name__}: {exc}')}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling was in place
        return EXIT_INTERRUPTED
    return code
