"""``rkllm bench``: TTFT, prefill and decode rates and memory over several runs."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from .. import TokenInput, doctor
from ._common import EXIT_INTERRUPTED, EXIT_OK, Target, load_model, resolve_target
from ._interrupts import Interrupts, with_interrupts
from ._output import consoles, print_json, print_notice, rates, runtime_json

if TYPE_CHECKING:
    from rich.console import Console

BENCH_METRICS = (
    ("ttft_ms", "time to first token", "ms"),
    ("prefill_tokens_per_s", "prefill", "tok/s"),
    ("decode_tokens_per_s", "decode", "tok/s"),
    ("memory_mb", "runtime memory (peak)", "MB"),
)


def bench_prompt(n_tokens: int) -> TokenInput:
    """A deterministic prompt of exactly ``n_tokens`` token ids (all below 1,100).

    Token ids rather than text, so the prefill length does not depend on the tokenizer
    and the chat template is not added (as llama.cpp's llama-bench does).
    """
    ids = (np.arange(n_tokens, dtype=np.int64) * 7919) % 1000 + 100
    return TokenInput(ids=ids.astype(np.int32))


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each figure of ``BENCH_METRICS`` that some run has."""
    return {
        key: _spread([float(r[key]) for r in runs if r[key] is not None])
        for key, _, _ in BENCH_METRICS
        if any(r[key] is not None for r in runs)
    }


def render_bench(info: dict[str, Any], runs: int, out: Console) -> None:
    """The runtime, driver and platform, the settings, then the summary table."""
    from rich.table import Table  # noqa: PLC0415

    rt, summary = info["runtime"], info["summary"]
    kind = "fake runtime" if rt["fake"] else "runtime"
    out.print(
        f"{kind} {rt['version']} (ABI {rt['abi']}) · driver {info['driver'] or '-'} · "
        f"platform {info['platform'] or '-'} · {info['machine']}"
    )
    out.print(
        f"model {info['model']} · {info['prompt_tokens']} prompt tokens · "
        f"{info['new_tokens']} new tokens · {runs} runs (+1 warm-up)"
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


async def _bench(args: argparse.Namespace, target: Target, ints: Interrupts) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    out, err = consoles()
    print_notice(target, err)
    report = await anyio.to_thread.run_sync(lambda: doctor(runtime=target.runtime, abi=args.abi))
    params: dict[str, Any] = {
        "max_new_tokens": args.new_tokens,
        "max_context_len": max(512, args.prompt_tokens + args.new_tokens + 16),
    }
    if report.abi == "1.3":
        params["ignore_eos_token"] = True  # decode past the end of sequence: --new-tokens each
    runs: list[dict[str, Any]] = []
    async with await load_model(args, target, **params) as llm:
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
                    runs.append(rates(gen))
        ints.stop = None
        runtime = runtime_json(llm)
    if len(runs) < args.runs:
        err.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED
    info = {
        "runtime": runtime,
        "driver": report.driver_version,
        "platform": report.platform,
        "machine": report.machine,
        "model": str(target.model),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": runs,
        "summary": summarize(runs),
    }
    if args.json:
        print_json(info)
    else:
        render_bench(info, args.runs, out)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """``rkllm bench``: TTFT, prefill and decode rates and memory over several runs."""
    target = resolve_target(args.runtime, args.model, args.abi)
    return anyio.run(with_interrupts, lambda ints: _bench(args, target, ints))
