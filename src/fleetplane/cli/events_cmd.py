"""``fleetplane events SITE``: a site's recent events, newest first (like ``kubectl get events
--sort-by=.lastTimestamp``, reversed). The generic ``fleetplane get events --field-selector
involvedObject.name=SITE`` lists the same objects. See docs/events.md.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetplane.cli.output import dump, table
from fleetplane.core.registry import Column

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
COLUMNS = [
    Column("LAST SEEN", "spec.lastTimestamp"),
    Column("TYPE", "spec.type"),
    Column("REASON", "spec.reason"),
    Column("COUNT", "spec.count"),
    Column("MESSAGE", "spec.message"),
]


def newest_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(obj: dict[str, Any]) -> tuple[str, str]:
        spec = obj.get("spec") or {}
        return str(spec.get("lastTimestamp") or ""), str(spec.get("firstTimestamp") or "")

    return sorted(items, key=key, reverse=True)


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state
    from fleetplane.core.errors import ApiError

    @app.command("events")
    def events(
        site: Annotated[str, typer.Argument(help="The site whose events to show.")],
        output_format: OutputOpt = "table",
        limit: Annotated[int, typer.Option("--limit", help="Show at most this many (0: all).")] = 0,
    ) -> None:
        """A site's recent events, newest first (docs/events.md)."""
        if output_format not in ("table", "json", "yaml"):
            raise fail(f'unknown output format "{output_format}" (table, json, yaml)')
        if limit < 0:
            raise fail(f"--limit must be 0 or more, got {limit}")
        try:
            with state.client() as client:
                client.get("sites", site)  # 404 names an unknown site
                body = client.list(
                    "events", field_selector=f"involvedObject.kind=Site,involvedObject.name={site}"
                )
        except ApiError as exc:
            raise report(exc) from exc
        items = newest_first(body.get("items") or [])
        if limit:
            items = items[:limit]
        if output_format != "table":
            out.print(
                dump({"kind": "EventList", "items": items}, output_format), markup=False, highlight=False
            )
        elif not items:
            out.print(f"No events for site {site}.", highlight=False)
        else:
            out.print(table(items, COLUMNS))
