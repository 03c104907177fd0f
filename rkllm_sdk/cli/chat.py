"""``rkllm chat``: an interactive conversation (history in the KV cache) and its commands."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .. import AsyncLLM, ChatSession, ToolCall
from ._common import EXIT_OK, Target, UsageError, load_model, resolve_target
from ._interrupts import Interrupts, with_interrupts
from ._output import (
    consoles,
    echo_chunks,
    esc,
    print_notice,
    print_tool_calls,
    runtime_label,
    summary_line,
)

if TYPE_CHECKING:
    from rich.console import Console

CHAT_HELP = (
    "/reset forgets the conversation · /system TEXT sets the system prompt · "
    "/result JSON answers the last tool calls · /stats shows metrics · /exit leaves "
    "(Ctrl-C stops an answer, Ctrl-D leaves)"
)


class LineReader:
    """Lines from a file descriptor without blocking the event loop (or a thread).

    Pipes, sockets and terminals are waited on through the event loop; a regular file or a
    device such as ``/dev/null`` (``rkllm chat < questions.txt``) cannot be registered with
    epoll and never blocks, so it is read directly.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._eof = False
        mode = os.fstat(fd).st_mode
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._buf and not self._eof:
            if self._pollable:
                await anyio.wait_readable(self._fd)
            else:
                await anyio.lowlevel.checkpoint()
            data = os.read(self._fd, 65536)
            self._eof = not data
            self._buf += data
        if not self._buf:
            return None
        line, _, rest = self._buf.partition(b"\n")
        self._buf = rest
        return line.decode("utf-8", errors="replace").rstrip("\r")


class TerminalReader:
    """Lines typed at a terminal, with ``readline`` line editing and history.

    ``input()`` blocks, so it runs in a daemon thread of its own (not an anyio worker, which
    the interpreter would wait for at exit while ``input()`` still waits for a line) and hands
    the line back through a pipe the event loop waits on. Ctrl-C at the prompt cancels the
    wait; the terminal's settings are restored when the chat ends.
    """

    def __init__(self, fd: int) -> None:
        import readline  # noqa: F401, PLC0415  # line editing and history for input()
        import termios  # noqa: PLC0415

        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        self._wake_r, self._wake_w = os.pipe()
        self._line: str | None = None
        self._thread: threading.Thread | None = None

    async def readline(self, prompt: str) -> str | None:
        """The next line typed after ``prompt``; None at end of input (Ctrl-D)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._read, args=(prompt,), name="rkllm-chat-input", daemon=True
            )
            self._thread.start()
        await anyio.wait_readable(self._wake_r)
        os.read(self._wake_r, 1)
        self._thread = None
        return self._line

    def _read(self, prompt: str) -> None:
        try:
            self._line = input(prompt)
        except EOFError:
            self._line = None
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Restore the terminal (an abandoned ``input()`` may have left it in raw mode)."""
        import termios  # noqa: PLC0415

        termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
        os.close(self._wake_r)
        os.close(self._wake_w)


def load_tools(path: str) -> list[dict[str, Any]]:
    """OpenAI-style tool definitions from a JSON file (a list, or ``{"tools": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the tools file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"the tools file {path} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"the tools file {path} is not JSON: {exc}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise UsageError(f"the tools file {path} must hold a list of tool objects")
    return data


def render_stats(llm: AsyncLLM, out: Console) -> None:
    """``/stats``: the handle's metrics as a table."""
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
    out: Console
    err: Console
    chat: ChatSession = attrs.field(init=False)
    last_calls: tuple[ToolCall, ...] = ()

    def __attrs_post_init__(self) -> None:
        self.new_session(self.args.system)

    def new_session(self, system: str | None) -> None:
        """Start a new conversation with this system prompt (and the tools)."""
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
            render_stats(self.llm, self.out)
        elif name == "/result":
            if not self.last_calls:
                self.err.print("[yellow]no tool calls to answer[/yellow]")
                return None
            try:
                result = json.loads(rest or "null")
            except json.JSONDecodeError as exc:
                self.err.print(f"[red]not JSON: {esc(str(exc))}[/red]")
                return None
            return json.dumps(result, ensure_ascii=False), "tool"
        else:
            self.err.print(f"[yellow]unknown command {esc(name)}[/yellow] · {CHAT_HELP}")
        return None

    async def turn(self, prompt: str, role: str, ints: Interrupts) -> None:
        """Stream one answer; Ctrl-C stops it and the chat goes on."""
        ints.new_step()  # a Ctrl-C that stopped an earlier answer does not count here
        self.out.print("[bold blue]assistant>[/bold blue] ", end="")
        echo = echo_chunks(self.out)
        async with self.chat.stream(prompt, role=role) as s:
            ints.stop = s.abort
            async for chunk in s:
                echo(chunk)
        ints.stop = None
        self.out.print()
        reply = self.chat.reply_from(s.result())
        self.last_calls = reply.tool_calls
        print_tool_calls(reply, self.err)
        if reply.finish_reason == "abort":
            self.err.print("[yellow]stopped[/yellow]")
        self.err.print(f"[dim]{summary_line(reply.generation)}[/dim]")


async def _chat(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    out, err = consoles()
    print_notice(target, err)
    tools = load_tools(args.tools) if args.tools else []
    fd = sys.stdin.fileno()
    # input() edits lines with readline only when both stdin and stdout are terminals.
    terminal = TerminalReader(fd) if os.isatty(fd) and sys.stdout.isatty() else None
    try:
        return await _chat_loop(args, target, ints, tools, terminal or LineReader(fd), (out, err))
    finally:
        if terminal is not None:
            terminal.close()


async def _chat_loop(
    args: argparse.Namespace,
    target: Target,
    ints: Interrupts,
    tools: list[dict[str, Any]],
    reader: LineReader | TerminalReader,
    streams: tuple[Console, Console],
) -> int:
    out, err = streams
    prompt = "\001\033[1;32m\002you>\001\033[0m\002 " if out.color_system else "you> "
    async with await load_model(args, target) as llm:
        loop = ChatLoop(llm, args, tools, out, err)
        err.print(f"[dim]{esc(runtime_label(llm))}[/dim]")
        err.print(f"[dim]{CHAT_HELP}[/dim]")
        while True:
            if isinstance(reader, TerminalReader):
                line = await reader.readline(prompt)
            else:
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
    return anyio.run(with_interrupts, lambda ints: _chat(args, target, ints))
