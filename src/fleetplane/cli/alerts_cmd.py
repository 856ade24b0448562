"""Load views of the fleet: ``fleetplane top virtualsites`` (load distribution per virtual
site), ``fleetplane load [VIRTUALSITE]`` (histogram and "N % of sites use more than T %"
statements) and ``fleetplane load history SITE``. Alerts and rules list with the generic
``fleetplane get alerts`` / ``get alertrules`` (their printer columns live in
``kinds/alerts.py``). See docs/alerts.md.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fleetplane.client import API, resource_path
from fleetplane.controllers.metrics_history import decode

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
AboveOpt = Annotated[str, typer.Option("--above", help="Thresholds in %, comma-separated.")]
RESOURCES = ("cpu", "memory", "disk")
BAR = 30


def _pct(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.0f}%"


def _share_above(dist: dict[str, Any], threshold: float) -> str:
    for row in dist.get("above") or []:
        if row.get("threshold") == threshold:
            return f"{row.get('percent', 0):g}%"
    return "-"


def virtualsites_table(body: dict[str, Any], threshold: float) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    # Short headers: the table fits 80 columns (p50/p90 quantiles, share of sites above).
    headers: tuple[str, ...] = ("NAME", "SITES", "CPU50", "CPU90", f"CPU>{threshold:g}")
    headers += ("MEM50", "MEM90", f"MEM>{threshold:g}", "DISK90")
    for header in headers:
        t.add_column(header)
    rows = [{"namespace": "", "name": "(fleet)", **body}, *(body.get("virtualSites") or [])]
    for v in rows:
        cpu, mem, disk = (v.get(r) or {} for r in RESOURCES)
        name = f"{v['namespace']}/{v['name']}" if v["namespace"] else v["name"]
        t.add_row(
            name,
            str(v.get("sites", 0)),
            _pct((cpu.get("quantiles") or {}).get("p50")),
            _pct((cpu.get("quantiles") or {}).get("p90")),
            _share_above(cpu, threshold),
            _pct((mem.get("quantiles") or {}).get("p50")),
            _pct((mem.get("quantiles") or {}).get("p90")),
            _share_above(mem, threshold),
            _pct((disk.get("quantiles") or {}).get("p90")),
        )
    return t


def histogram_lines(dist: dict[str, Any]) -> list[str]:
    bins = dist.get("histogram") or []
    most = max((b.get("sites", 0) for b in bins), default=0)
    lines = []
    for b in bins:
        n = int(b.get("sites", 0))
        bar = "#" * (round(BAR * n / most) if most else 0)
        lines.append(f"  {b['from']:>3}-{b['to']:<3}% {n:>6} {bar}")
    return lines


def history_table(body: dict[str, Any], limit: int) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("TIME", "RESOLUTION", "CPU %", "MEMORY %", "DISK %"):
        t.add_column(header)
    for series in body.get("series") or []:
        points = decode(series)
        for p in points[-limit:] if limit else points:
            when = dt.datetime.fromtimestamp(p[0] or 0.0, dt.UTC).strftime("%Y-%m-%d %H:%M")
            t.add_row(when, str(series.get("resolution")), *(_pct(v) for v in p[1:4]))
    return t


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import DEFAULT_NAMESPACE, fail, out, report, state
    from fleetplane.cli.output import dump
    from fleetplane.core.errors import ApiError

    def fetch(path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            with state.client() as client:
                body: dict[str, Any] = client.request("GET", path, params=params)
                return body
        except ApiError as exc:
            raise report(exc) from exc

    def emit(body: dict[str, Any], fmt: str) -> bool:
        if fmt in ("json", "yaml"):
            out.print(dump(body, fmt), markup=False, highlight=False)
            return True
        if fmt != "table":
            raise fail(f"--output must be table, json or yaml, not {fmt!r}")
        return False

    top = next((g.typer_instance for g in app.registered_groups if g.name == "top"), None)
    if top is None:  # ``top`` is registered by top_cmd; keep working without it
        top = typer.Typer(help="The busiest or least healthy objects of the fleet.", no_args_is_help=True)
        app.add_typer(top, name="top")

    @top.command("virtualsites")
    def top_virtualsites(
        namespace: Annotated[str, typer.Option("--namespace", "-n", help="Only this namespace.")] = "",
        above: Annotated[float, typer.Option("--above", help="Threshold in % for the share columns.")] = 75.0,
        output_format: OutputOpt = "table",
    ) -> None:
        """Load per virtual site (fleet first): quantiles and the share of sites above --above."""
        params = {"above": f"{above:g}"}
        if namespace:
            params["namespace"] = namespace
        body = fetch(f"{API}/distribution", params)
        if emit(body, output_format):
            return
        out.print(virtualsites_table(body, above))

    load = typer.Typer(help="CPU, memory and disk load across the fleet.", invoke_without_command=True)
    app.add_typer(load, name="load")

    @load.callback()
    def load_distribution(
        ctx: typer.Context,
        virtual_site: Annotated[str, typer.Option("--virtual-site", "-v", help="One virtual site.")] = "",
        namespace: Annotated[str, typer.Option("--namespace", "-n", help="Its namespace.")] = "",
        above: AboveOpt = "50,75,90",
        output_format: OutputOpt = "table",
    ) -> None:
        """How load spreads over the sites of the fleet or of one virtual site: histogram and
        statements such as "52 % of sites use more than 75 % of memory"."""
        if ctx.invoked_subcommand is not None:
            return
        params = {"above": above}
        if virtual_site:
            path = resource_path("virtualsites", namespace or DEFAULT_NAMESPACE, virtual_site, "distribution")
        else:
            path = f"{API}/distribution"
        body = fetch(path, params)
        if emit(body, output_format):
            return
        out.print(Text(f"{body.get('scope')}: {body.get('sites', 0)} sites reporting", style="bold"))
        for resource in RESOURCES:
            dist = body.get(resource) or {}
            q = dist.get("quantiles") or {}
            out.print(
                f"\n{resource}: mean {_pct(dist.get('mean'))}, p50 {_pct(q.get('p50'))}, "
                f"p90 {_pct(q.get('p90'))}, p99 {_pct(q.get('p99'))}",
                highlight=False,
            )
            for row in dist.get("above") or []:
                out.print(f"  {row['statement']}", highlight=False)
            for line in histogram_lines(dist):
                out.print(line, highlight=False, markup=False)

    @load.command("history")
    def load_history(
        site: Annotated[str, typer.Argument(help="The site.")],
        resolution: Annotated[str, typer.Option(help="1m, 10m, 1h ... (default: all kept).")] = "",
        limit: Annotated[int, typer.Option(help="Newest N points per resolution (0: all).", min=0)] = 20,
        output_format: OutputOpt = "table",
    ) -> None:
        """A site's load over time, as the server keeps it (downsampled, bounded)."""
        params = {"resolution": resolution} if resolution else None
        body = fetch(f"{API}/sites/{site}/metrics", params)
        if emit(body, output_format):
            return
        cur = body.get("current") or {}
        out.print(
            f"{site}: now CPU {_pct(cur.get('cpuPercent'))}, memory {_pct(cur.get('memoryPercent'))}, "
            f"disk {_pct(cur.get('diskPercent'))} (at {cur.get('at') or '-'})",
            highlight=False,
        )
        if any(decode(s) for s in body.get("series") or []):
            out.print(history_table(body, limit))
        else:
            out.print("No history yet (it is written once a minute by default).", highlight=False)
