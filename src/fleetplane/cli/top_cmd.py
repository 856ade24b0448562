"""``fleetplane top sites``: sites by health, CPU or memory; ``fleetplane health [VIRTUALSITE]``:
counts per health colour and the worst sites, of one virtual site or of the whole fleet.

``top sites`` reads the Sites (their ``status.health``, written by the health controller, and
their reported usage against allocatable); ``health`` reads the server's summaries
(``GET .../virtualsites/{name}/health``, ``GET /apis/fleetplane.io/v1/health``), computed from
its in-memory view. Colours when the output is a terminal, plain text otherwise.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fleetplane.client import API, resource_path
from fleetplane.controllers.health import COLOURS, load_percent

SelectorOpt = Annotated[str, typer.Option("--selector", "-l", help="Label selector, e.g. 'region in (a,b)'.")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
SORTS = ("health", "cpu", "memory")
STYLE = {"green": "green", "orange": "dark_orange", "red": "bold red"}


def _since(stamp: object, now: dt.datetime | None = None) -> str:
    if not isinstance(stamp, str) or not stamp:
        return "<never>"
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def site_rows(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for site in sites:
        status = site.get("status") or {}
        health = status.get("health") or {}
        cpu, memory = load_percent(status)
        rows.append(
            {
                "name": site["metadata"]["name"],
                "health": health.get("score"),
                "colour": health.get("colour"),
                "cpuPercent": None if cpu is None else round(cpu, 1),
                "memoryPercent": None if memory is None else round(memory, 1),
                "phase": status.get("phase") or "Pending",
                "lastSeen": status.get("lastSeen"),
                "reasons": health.get("reasons") or [],
            }
        )
    return rows


def sort_rows(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """health: worst first (sites without a score last); cpu, memory: busiest first."""
    if by == "health":
        return sorted(rows, key=lambda r: (r["health"] is None, r["health"] or 0, r["name"]))
    key = "cpuPercent" if by == "cpu" else "memoryPercent"
    return sorted(rows, key=lambda r: (r[key] is None, -(r[key] or 0.0), r["name"]))


def _score(score: object, colour: object) -> Text:
    if score is None:
        return Text("<none>")
    return Text(f"{score} {colour}", style=STYLE.get(str(colour), ""))


def _pct(value: float | None) -> str:
    return "<none>" if value is None else f"{value:.0f}%"


def sites_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("NAME", "HEALTH", "CPU %", "MEMORY %", "PHASE", "LAST SEEN"):
        t.add_column(header, overflow="fold")
    for r in rows:
        t.add_row(
            r["name"],
            _score(r["health"], r["colour"]),
            _pct(r["cpuPercent"]),
            _pct(r["memoryPercent"]),
            r["phase"],
            _since(r["lastSeen"]),
        )
    return t


def counts_text(summary: dict[str, Any]) -> Text:
    counts = summary.get("counts") or {}
    text = Text(f"{summary.get('sites', 0)} sites: ")
    for i, colour in enumerate(COLOURS):
        if i:
            text.append(", ")
        text.append(f"{counts.get(colour, 0)} {colour}", style=STYLE[colour])
    return text


def worst_table(worst: list[dict[str, Any]]) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("SITE", "HEALTH", "CONN", "REL", "SEC", "PERF", "REASONS"):
        t.add_column(header, overflow="fold")
    for w in worst:
        parts = w.get("parts") or {}
        t.add_row(
            w["site"],
            _score(w.get("score"), w.get("colour")),
            *(str(parts.get(p, "")) for p in ("connectivity", "reliability", "security", "performance")),
            "; ".join(w.get("reasons") or []) or "-",
        )
    return t


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import DEFAULT_NAMESPACE, out, report, state
    from fleetplane.cli.output import dump
    from fleetplane.core.errors import ApiError

    top_app = typer.Typer(help="The busiest or least healthy objects of the fleet.", no_args_is_help=True)
    app.add_typer(top_app, name="top")

    @top_app.command("sites")
    def top_sites(
        selector: SelectorOpt = "",
        sort: Annotated[str, typer.Option("--sort", help="health (worst first) | cpu | memory")] = "health",
        limit: Annotated[int, typer.Option("--limit", help="Show at most N sites (0: all).", min=0)] = 20,
        output_format: OutputOpt = "table",
    ) -> None:
        """Sites with their health score, CPU and memory use, phase and last report."""
        if sort not in SORTS:
            raise typer.BadParameter(f"--sort must be one of {', '.join(SORTS)}")
        try:
            with state.client() as client:
                sites = client.list_all("sites", selector=selector)
        except ApiError as exc:
            raise report(exc) from exc
        rows = sort_rows(site_rows(sites), sort)
        if limit:
            rows = rows[:limit]
        if output_format in ("json", "yaml"):
            out.print(dump(rows, output_format), markup=False, highlight=False)
            return
        if not rows:
            out.print("No sites found.", highlight=False)
            return
        out.print(sites_table(rows))

    @app.command("health")
    def health(
        virtual_site: Annotated[str, typer.Argument(help="A virtual site (default: the whole fleet).")] = "",
        namespace: Annotated[
            str, typer.Option("--namespace", "-n", help="Namespace of the virtual site.")
        ] = "",
        output_format: OutputOpt = "table",
    ) -> None:
        """Health per virtual site: counts per colour (green > 75, orange 40-75, red < 40) and
        the worst sites; without a virtual site, the whole fleet and every virtual site."""
        try:
            with state.client() as client:
                if virtual_site:
                    path = resource_path(
                        "virtualsites", namespace or DEFAULT_NAMESPACE, virtual_site, "health"
                    )
                    summary: dict[str, Any] = client.request("GET", path)
                else:
                    params = {"namespace": namespace} if namespace else None
                    summary = client.request("GET", f"{API}/health", params=params)
        except ApiError as exc:
            raise report(exc) from exc
        if output_format in ("json", "yaml"):
            out.print(dump(summary, output_format), markup=False, highlight=False)
            return
        title = summary.get("virtualSite") or "fleet"
        out.print(Text(f"{title}: ").append_text(counts_text(summary)), highlight=False)
        virtual = summary.get("virtualSites") or []
        if virtual:
            t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
            for header in ("VIRTUAL SITE", "SITES", "GREEN", "ORANGE", "RED"):
                t.add_column(header)
            for v in virtual:
                c = v.get("counts") or {}
                t.add_row(
                    f"{v['namespace']}/{v['name']}",
                    str(v.get("sites", 0)),
                    *(Text(str(c.get(colour, 0)), style=STYLE[colour]) for colour in COLOURS),
                )
            out.print()
            out.print(t)
        worst = summary.get("worst") or []
        if worst:
            out.print()
            out.print(Text("Worst sites", style="bold"))
            out.print(worst_table(worst))
