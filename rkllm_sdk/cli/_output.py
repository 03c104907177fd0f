"""Output: rich consoles (rich is imported only when a command runs), JSON, summaries.

Generated text goes to stdout; notices, summaries, progress and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import AsyncLLM, ChatReply, Chunk, Generation

if TYPE_CHECKING:
    from rich.console import Console

    from ._common import Target


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) rich consoles; rich is imported only when the command runs."""
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False, soft_wrap=True), Console(
        stderr=True, highlight=False, soft_wrap=True
    )


def esc(text: str) -> str:
    """Text from the model, runtime or user, safe inside rich markup."""
    from rich.markup import escape  # noqa: PLC0415

    return escape(text)


def print_json(data: object) -> None:
    """``data`` as indented JSON on stdout (not through rich: no wrapping, no markup)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def print_notice(target: Target, err: Console) -> None:
    """The target's one-line notice (the fallback to the fake), if it has one."""
    if target.notice:
        err.print(f"[cyan]{target.notice}[/cyan]")


def rates(gen: Generation) -> dict[str, float | int | None]:
    """A generation's token count, timings, rates and memory, as in the JSON output."""
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


def runtime_label(llm: AsyncLLM) -> str:
    """``fake runtime 1.3.0 (ABI 1.3) at PATH``: what a handle runs on, for people."""
    rt = llm.runtime
    kind = "fake runtime" if rt.is_fake else "runtime"
    return f"{kind} {rt.version or '?'} (ABI {rt.abi}) at {rt.path}"


def runtime_json(llm: AsyncLLM) -> dict[str, Any]:
    """What a handle runs on, as the ``runtime`` object of the JSON output."""
    rt = llm.runtime
    return {"path": str(rt.path), "version": rt.version, "abi": rt.abi, "fake": rt.is_fake}


def echo_chunks(out: Console) -> Callable[[Chunk], None]:
    """A function printing each chunk's text as it comes (thinking text dimmed)."""
    from rich.text import Text  # noqa: PLC0415

    def echo(chunk: Chunk) -> None:
        if chunk.text:
            out.print(Text(chunk.text, style="dim" if chunk.thinking else ""), end="")

    return echo


def tool_calls_json(reply: ChatReply) -> list[dict[str, Any]]:
    """The reply's tool calls as in the JSON output (``error``: why a call is unusable)."""
    return [
        {"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
        for c in reply.tool_calls
    ]


def print_tool_calls(reply: ChatReply, err: Console) -> None:
    """One ``tool call name({...})  id=...`` line per tool call of the reply.

    A call that could not be read (unknown tool, bad JSON, ...) says so with its error.
    """
    for call in reply.tool_calls:
        args_text = json.dumps(call.arguments, ensure_ascii=False)
        problem = f"  [red]error: {esc(call.error)}[/red]" if call.error else ""
        shown = f"{call.name or '?'}({args_text})"
        err.print(
            f"[magenta]tool call[/magenta] {esc(shown)}{problem}  [dim]id={esc(call.id)}[/dim]"
        )
