"""``rkllm doctor``: the runtime, ABI, NPU driver, platform and model file, and any problems.

``rkllm doctor --probe MODEL`` runs :mod:`rkllm_sdk._probe` instead and renders its findings
(each as soon as it is known, so a runtime that hangs or crashes leaves the earlier ones on
screen).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import attrs

from .. import DoctorReport, doctor
from .._doctor import model_file_problem
from .._probe import REPORT_HINT, Finding, ProbeReport, run_probe
from ._common import EXIT_ERROR, EXIT_OK, UsageError
from ._output import consoles, esc, print_json

if TYPE_CHECKING:
    from rich.console import Console


def render_doctor(report: DoctorReport, out: Console) -> None:
    """The report as a two-column table, then "no problems found" or each problem and fix."""
    from rich.table import Table  # noqa: PLC0415

    styles = {"note": "dim", "driver": "red" if report.driver_ok is False else ""}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in report.lines():
        cell = f"[{styles[label]}]{esc(value)}[/]" if styles.get(label) else esc(value)
        if label == "runtime" and report.is_fake:
            cell += " [cyan](fake)[/cyan]"
        table.add_row(label, cell)
    out.print(table)
    if report.ok:
        out.print("[green]no problems found[/green]")
        return
    out.print(f"[red bold]{len(report.problems)} problem(s):[/red bold]")
    for p in report.problems:
        out.print(f"  [red]✗[/red] {esc(p.what)}")
        out.print(f"    [yellow]fix:[/yellow] {esc(p.fix)}")


_VERDICT = {
    True: "[green]✓ as the fake[/green]",
    False: "[yellow bold]✗ differs from the fake[/yellow bold]",
    None: "[dim]? unknown[/dim]",
}


def render_finding(f: Finding, out: Console) -> None:
    """One finding: assumption, what was observed and the verdict; then the fake's choice."""
    head = f"[bold]{esc(f.assumption):<7}[/bold] {esc(f.key)}: {esc(f.observed)}"
    out.print(f"{head}  {_VERDICT[f.matches]}")
    where = f" ({f.ref})" if f.assumption == "-" else ""  # not numbered: say where it is
    out.print(f"        [dim]fake{esc(where)}: {esc(f.fake)}[/dim]")
    if f.note:
        out.print(f"        [cyan]note: {esc(f.note)}[/cyan]")


def render_probe_header(report: DoctorReport, model: str, out: Console) -> None:
    """What the probe runs on: runtime, version, ABI, driver, platform, machine, model."""
    kind = "fake runtime" if report.is_fake else "runtime"
    out.print(
        f"probing {kind} {esc(report.runtime_version or '?')} (ABI {esc(report.abi or '?')}) "
        f"at {esc(report.runtime_path or '-')}"
    )
    out.print(
        f"driver {esc(report.driver_version or '-')} · platform {esc(report.platform or '-')} · "
        f"{esc(report.machine)}, {esc(report.libc)}, Python {esc(report.python)}"
    )
    out.print(f"model {esc(model)}")


def render_probe_end(report: ProbeReport, out: Console) -> None:
    """The counts, a hang if there was one, and where to report the output."""
    d = report.counts
    out.print(
        f"{len(report.findings)} findings: {d['match']} as the fake, {d['differ']} differ, "
        f"{d['unknown']} unknown ({report.duration_s:.1f} s)"
    )
    if report.hung:
        out.print("[red bold]the runtime hung: the probe stopped there[/red bold]")
    out.print(esc(REPORT_HINT))


def _probe(args: argparse.Namespace) -> int:
    if args.model is not None:
        raise UsageError("--probe takes the model file: drop --model")
    info = doctor(args.probe, runtime=args.runtime, abi=args.abi)
    if not args.json:
        out, _ = consoles()
        render_probe_header(info, args.probe, out)
        report = run_probe(
            args.probe,
            runtime=args.runtime,
            abi=args.abi,
            on_finding=lambda f: render_finding(f, out),
        )
        render_probe_end(report, out)
    else:
        report = run_probe(args.probe, runtime=args.runtime, abi=args.abi)
        print_json({**report.to_dict(), "doctor": info.to_dict()})
    if report.hung:
        # Threads are stuck inside the runtime: leave without waiting for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """``rkllm doctor``: report the runtime, driver, platform and model; 1 when broken.

    With ``--probe MODEL``: observe the runtime's behaviour where the fake had to assume
    (0, or 1 when the runtime hung).
    """
    if args.probe is not None:
        return _probe(args)
    report = doctor(args.model, runtime=args.runtime, abi=args.abi)
    if args.model is not None and report.model is not None and report.model.exists:
        # doctor() checks the path; the command also checks that the file looks like a model.
        problem = model_file_problem(args.model, fake_runtime=report.is_fake)
        if problem is not None and problem not in report.problems:
            report = attrs.evolve(report, problems=(*report.problems, problem))
    if args.json:
        print_json(report.to_dict())
    else:
        out, _ = consoles()
        render_doctor(report, out)
    return EXIT_OK if report.ok else EXIT_ERROR
