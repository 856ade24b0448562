"""``fleetplane os status``: the fleet's OS "current vs latest" view; ``os versions``: the catalogue.

Computed from what the server already stores, through the native API: each Site's reported
``status.os`` (running version, last upgrade outcome) and ``status.manifest.items``, its
SiteManifest's ``os`` section (the target) and the OsVersion catalogue (the latest version
of a channel). A site is

- **Failed** when its last attempt at its target fell back (the reason is the site's own);
- **Upgrading** when its target differs from what it runs and it has not failed at it;
- **Behind** when it runs its target (or has none) but that is older than the latest;
- **UpToDate** otherwise; **Unknown** when it has never reported an OS version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import typer

from fleetplane.cli.output import dump, table
from fleetplane.core.registry import Column
from fleetplane.kinds.os_upgrade import DEFAULT_CHANNEL, latest, version_key

STATES = ("UpToDate", "Upgrading", "Behind", "Failed", "Unknown")
_LABELS = {"UpToDate": "up to date", "Upgrading": "upgrading", "Behind": "behind", "Failed": "failed"}
_LABELS["Unknown"] = "unknown"
# As in cli/main.py; declared here because typer reads annotations from this module's globals.
SelectorOpt = Annotated[str, typer.Option("--selector", "-l", help="Label selector, e.g. 'region in (a,b)'.")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
COLUMNS = [
    Column("NAME", "name"),
    Column("PHASE", "phase"),
    Column("CURRENT", "current"),
    Column("TARGET", "target"),
    Column("LATEST", "latest"),
    Column("STATE", "state"),
    Column("REASON", "reason"),
]


def _os_item(status: dict[str, Any]) -> dict[str, Any]:
    for item in (status.get("manifest") or {}).get("items") or []:
        if item.get("section") == "os":
            return dict(item)
    return {}


def site_row(site: dict[str, Any], manifest: dict[str, Any] | None, newest: str | None) -> dict[str, Any]:
    """One site's line of the view (see the module docstring for the states)."""
    status = site.get("status") or {}
    reported = status.get("os") or {}
    current = reported.get("current") or status.get("osVersion")
    section = (((manifest or {}).get("spec") or {}).get("sections") or {}).get("os") or {}
    target = section.get("version")
    item = _os_item(status)
    reason = None
    if not current:
        state = "Unknown"
    elif target and target != current:
        failed = item.get("state") == "Failed" and item.get("name") == target
        state = "Failed" if failed else "Upgrading"
        reason = item.get("reason") if item.get("name") == target else "the site has not taken its target yet"
    elif newest and version_key(current) < version_key(newest):
        state = "Behind"
    else:
        state = "UpToDate"
    return {
        "name": site["metadata"]["name"],
        "phase": status.get("phase"),
        "current": current,
        "target": target,
        "latest": newest,
        "state": state,
        "reason": reason,
    }


def fleet_view(
    sites: Iterable[dict[str, Any]],
    manifests: Iterable[dict[str, Any]],
    versions: Iterable[dict[str, Any]],
    channel: str = DEFAULT_CHANNEL,
) -> dict[str, Any]:
    """Per site current/target/latest and state, and the count of sites in each state."""
    by_name = {m["metadata"]["name"]: m for m in manifests}
    newest = latest(versions, channel)
    rows = [site_row(s, by_name.get(s["metadata"]["name"]), newest) for s in sites]
    rows.sort(key=lambda r: str(r["name"]))
    summary = {state: sum(1 for r in rows if r["state"] == state) for state in STATES}
    return {"channel": channel, "latest": newest, "summary": summary, "sites": rows}


def summary_line(view: dict[str, Any]) -> str:
    counts = view["summary"]
    parts = [f"{counts[s]} {_LABELS[s]}" for s in STATES if counts[s] or s != "Unknown"]
    total = sum(counts.values())
    latest_part = f"latest {view['channel']}: {view['latest'] or '<none in the catalogue>'}"
    return f"{total} sites: {', '.join(parts)} ({latest_part})"


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import out, report, state
    from fleetplane.core.errors import ApiError

    os_app = typer.Typer(help="Infrastructure software (OS) versions and upgrades.", no_args_is_help=True)
    app.add_typer(os_app, name="os")

    @os_app.command("status")
    def os_status(
        selector: SelectorOpt = "",
        channel: Annotated[
            str, typer.Option(help="Catalogue channel that defines latest.")
        ] = DEFAULT_CHANNEL,
        output_format: OutputOpt = "table",
    ) -> None:
        """Per site: current, target and latest OS version, and whether it is up to date,
        upgrading, behind or failed; then the counts."""
        try:
            with state.client() as client:
                sites = client.list_all("sites", selector=selector)
                manifests = client.list_all("sitemanifests")
                versions = client.list_all("osversions")
        except ApiError as exc:
            raise report(exc) from exc
        view = fleet_view(sites, manifests, versions, channel)
        if output_format in ("json", "yaml"):
            out.print(dump(view, output_format), markup=False, highlight=False)
            return
        if view["sites"]:
            out.print(table(view["sites"], COLUMNS))
        out.print(summary_line(view), highlight=False)

    @os_app.command("versions")
    def os_versions(output_format: OutputOpt = "table") -> None:
        """The catalogue, newest first, with the latest version of each channel marked."""
        try:
            with state.client() as client:
                versions = client.list_all("osversions")
        except ApiError as exc:
            raise report(exc) from exc
        channels = {(v.get("spec") or {}).get("channel", DEFAULT_CHANNEL) for v in versions}
        newest = {latest(versions, c) for c in channels}
        rows = [
            {
                "version": v["metadata"]["name"],
                "channel": (v.get("spec") or {}).get("channel", DEFAULT_CHANNEL),
                "released": (v.get("spec") or {}).get("releaseDate"),
                "latest": v["metadata"]["name"] in newest,
                "description": (v.get("spec") or {}).get("description"),
            }
            for v in sorted(versions, key=lambda v: version_key(v["metadata"]["name"]), reverse=True)
        ]
        if output_format in ("json", "yaml"):
            out.print(dump(rows, output_format), markup=False, highlight=False)
            return
        cols = [Column(h.upper(), h) for h in ("version", "channel", "released", "latest", "description")]
        out.print(table([{**r, "latest": "yes" if r["latest"] else "no"} for r in rows], cols))
