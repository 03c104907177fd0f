"""``rkllm doctor``: the runtime, ABI, NPU driver, platform and model file, and any problems."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import DoctorReport, doctor
from ._common import EXIT_ERROR, EXIT_OK
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """``rkllm doctor``: report the runtime, driver, platform and model; 1 when broken."""
    report = doctor(args.model, runtime=args.runtime, abi=args.abi)
    if args.json:
        print_json(report.to_dict())
    else:
        out, _ = consoles()
        render_doctor(report, out)
    return EXIT_OK if report.ok else EXIT_ERROR
