"""``python -m bench [--quick] [--json PATH] [--only NAME[,NAME]]``: run the benchmarks,
print a Rich table per benchmark and write every figure (and the machine) as JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import alerts, console, e2e, fanout, infra, membership, onboarding, rollout, store, vk8s
from bench.common import Figure, Report

BENCHMARKS: dict[str, tuple[str, Callable[[Report, bool], None]]] = {
    "store": ("Store: writes and lists, SQLite vs PostgreSQL", store.run),
    "membership": ("Virtual-site membership: pure engine", membership.run),
    "e2e": ("End-to-end membership: SQLite store + controller", e2e.run),
    "onboarding": ("Onboarding: register, poll, first mTLS heartbeat", onboarding.run),
    "fanout": ("Fan-out: one intent change to N connected sites vs NATS", fanout.run),
    "rollout": ("Rolling upgrades: control-plane overhead, patching 100 sites", rollout.run),
    "vk8s": ("vK8s: kubectl get pods at N sites x 3 pods, a Deployment change to N sites", vk8s.run),
    "console": ("Console: fleet map, sites table and HTML with 10,000 sites", console.run),
    "infra": ("Infrastructure: a 10-server site installed, a patch to 100 sites (sim timings)", infra.run),
    "alerts": ("Alerts and metrics history: evaluation ticks and batched history writes", alerts.run),
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count() or 0,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "sqlite_version": sqlite3.sqlite_version,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _number(value: float, unit: str) -> str:
    if unit in ("writes/s", "members", "sites"):
        return f"{value:,.0f}"
    if unit == "VS":
        return f"{value:,.2f}" if value % 1 else f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(title: str, figures: list[Figure]) -> Table:
    columns = list(dict.fromkeys(f.column for f in figures))
    targets = any(f.target is not None for f in figures)
    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column("Figure")
    for column in columns:
        t.add_column(
            "Value"
            if column == "value"
            else {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(column, column),
            justify="right",
        )
    t.add_column("Unit")
    if targets:
        t.add_column("Target", justify="right")
        t.add_column("Result")
    rows: dict[str, dict[str, Figure]] = {}
    for f in figures:
        rows.setdefault(f.key.split(".", 1)[1] if f.column != "value" else f.key, {})[f.column] = f
    for cells in rows.values():
        some = next(iter(cells.values()))
        label = some.label
        values = (_number(cells[c].value, some.unit) if c in cells else "-" for c in columns)
        row = [label, *values, some.unit]
        if targets:
            verdict = some.verdict
            row += [
                f"<= {_number(some.target, some.unit)}" if some.target is not None else "",
                f"[green]{verdict}[/green]"
                if verdict == "PASS"
                else f"[red]{verdict}[/red]"
                if verdict
                else "",
            ]
        t.add_row(*row)
    return t


def to_json(report: Report, args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    def key(f: Figure) -> str:
        return f"{f.section}.{f.key}"

    return {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "only": sorted(args.only),
        "elapsed_s": elapsed,
        "machine": machine(),
        "params": report.params,
        "figures": {key(f): f.value for f in report.figures},
        "units": {key(f): f.unit for f in report.figures},
        "labels": {key(f): f.label for f in report.figures},
        "targets": {key(f): f.target for f in report.figures if f.target is not None},
        "verdicts": {key(f): f.verdict for f in report.figures if f.verdict is not None},
        "notes": report.notes,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run takes seconds")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures (default {DEFAULT_JSON})"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(BENCHMARKS)
    if unknown:
        names = ", ".join(sorted(unknown))
        parser.error(f"unknown benchmark(s) {names}; choose from {', '.join(BENCHMARKS)}")
    args.only = only or set(BENCHMARKS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    info = machine()
    console.print(
        f"[bold]fleetplane benchmarks[/bold]{' (quick)' if args.quick else ''}: "
        f"{info['cpu_count']} CPUs ({info['processor']}), Python {info['python_version']}, "
        f"SQLite {info['sqlite_version']}"
    )
    report = Report()
    started = time.perf_counter()
    for name, (title, run) in BENCHMARKS.items():
        if name not in args.only:
            continue
        t0 = time.perf_counter()
        with console.status(f"{title} ..."):
            run(report, args.quick)
        figures = [f for f in report.figures if f.section == name]
        console.print(table(f"{title}  ({time.perf_counter() - t0:.1f} s)", figures))
    elapsed = time.perf_counter() - started
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(to_json(report, args, elapsed), indent=2) + "\n")
    console.print(f"{len(report.figures)} figures in {elapsed:.1f} s -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
