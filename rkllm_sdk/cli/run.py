"""``rkllm run PROMPT``: stream one reply, then a summary line (or one JSON object)."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from .. import AsyncLLM, ChatReply, RKLLMError
from ._common import EXIT_INTERRUPTED, EXIT_OK, Target, load_model, resolve_target
from ._interrupts import Interrupts, with_interrupts
from ._output import (
    consoles,
    echo_chunks,
    print_json,
    print_notice,
    print_tool_calls,
    rates,
    runtime_json,
    runtime_label,
    summary_line,
    tool_calls_json,
)


def reply_json(
    reply: ChatReply, llm: AsyncLLM, target: Target, interrupted: bool
) -> dict[str, Any]:
    """The ``--json`` output: the reply, its figures, the runtime and the model."""
    return {
        "text": reply.text,
        "thinking": reply.thinking,
        "tool_calls": tool_calls_json(reply),
        "finish_reason": reply.finish_reason,
        "interrupted": interrupted,
        **rates(reply.generation),
        "runtime": runtime_json(llm),
        "model": str(target.model),
    }


def failed_json(
    exc: RKLLMError, text: str, thinking: str, llm: AsyncLLM, target: Target
) -> dict[str, Any]:
    """The ``--json`` output of a run that failed midway: what came, and the error."""
    return {
        "text": text,
        "thinking": thinking,
        "tool_calls": [],
        "finish_reason": "error",
        "interrupted": False,
        "error": f"{type(exc).__name__}: {exc}",
        "runtime": runtime_json(llm),
        "model": str(target.model),
    }


async def _run(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    out, err = consoles()
    print_notice(target, err)
    echo = echo_chunks(out)
    async with await load_model(args, target) as llm:
        chat = llm.chat(system=args.system, thinking=args.thinking)
        text: list[str] = []
        thinking: list[str] = []
        try:
            async with chat.stream(args.prompt) as s:
                ints.stop = s.abort
                async for chunk in s:
                    (thinking if chunk.thinking else text).append(chunk.text)
                    if not args.json:
                        echo(chunk)
        except RKLLMError as exc:
            if not args.json:
                raise  # the partial text is on stdout already; main prints the error
            print_json(failed_json(exc, "".join(text), "".join(thinking), llm, target))
            raise
        ints.stop = None
        reply = chat.reply_from(s.result())
        interrupted = ints.hits > 0 and reply.finish_reason == "abort"
        if args.json:
            print_json(reply_json(reply, llm, target, interrupted))
        else:
            out.print()
            print_tool_calls(reply, err)
            if interrupted:
                err.print("[yellow]interrupted: generation aborted[/yellow]")
            err.print(f"[dim]{summary_line(reply.generation)} · {runtime_label(llm)}[/dim]")
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``rkllm run PROMPT``: stream one reply, then a summary line."""
    target = resolve_target(args.runtime, args.model, args.abi)
    return anyio.run(with_interrupts, lambda ints: _run(args, target, ints))
