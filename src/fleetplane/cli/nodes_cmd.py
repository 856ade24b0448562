"""``fleetplane nodes SITE``: a site's nodes, intended vs discovered; ``nodes lock|unlock
SITE NODE``: drain a node and keep it out of service, or put it back; ``infra retry SITE``
and ``infra status``: the install/patch pipeline per site (docs/infrastructure.md).

Lock, unlock and retry are declarative: they change the site's ``SiteInventory`` (a node's
``locked``, ``spec.retry``) with a ``resourceVersion`` precondition, and the site acts on
its next manifest.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetplane.cli.output import dump, table
from fleetplane.core.registry import Column
from fleetplane.kinds.infra import PHASES

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
SelectorOpt = Annotated[str, typer.Option("--selector", "-l", help="Label selector over sites.")]
NODE_COLUMNS = [
    Column("NODE", "node"),
    Column("ROLE", "role"),
    Column("STATE", "state"),
    Column("LOCKED", "locked"),
    Column("CPU", "cpu"),
    Column("MEMORY", "memory"),
    Column("BMC", "bmc"),
    Column("OS", "os"),
    Column("REASON", "reason"),
]
PIPELINE_COLUMNS = [
    Column("SITE", "site"),
    Column("PIPELINE", "source"),
    Column("STATE", "state"),
    Column("PHASE", "phase"),
    *(Column(p.upper(), p) for p in PHASES),
    Column("REASON", "reason"),
]


def node_rows(inventory: dict[str, Any] | None, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    intended = {n["name"]: n for n in ((inventory or {}).get("spec") or {}).get("nodes") or []}
    rows = []
    for obj in nodes:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        hw = status.get("hardware") or {}
        want = intended.get(spec.get("node"), {})
        role = spec.get("role") or "-"
        if status.get("discoveredRole") and status["discoveredRole"] != spec.get("role"):
            role = f"{role} (runs as {status['discoveredRole']})"
        rows.append(
            {
                "node": spec.get("node"),
                "role": role,
                "state": status.get("state"),
                "locked": "yes" if spec.get("locked") else "",
                "cpu": f"{hw.get('cpuModel', '')} x{hw.get('cpuCores', 0)}" if hw else "",
                "memory": f"{int(hw.get('memoryBytes', 0)) // 1024**3}Gi" if hw else "",
                "bmc": hw.get("bmc") or want.get("bmc") or "",
                "os": status.get("osImage") or "",
                "reason": status.get("reason") or "",
            }
        )
    return sorted(rows, key=lambda r: str(r["node"]))


def inventory_line(inventory: dict[str, Any] | None) -> str:
    if inventory is None:
        return "no SiteInventory for this site (fleetplane apply -f inventory.yaml declares one)"
    s = inventory.get("status") or {}
    parts = [
        f"{s.get('intended', 0)} intended, {s.get('discovered', 0)} discovered, {s.get('ready', 0)} ready"
    ]
    for key in ("missing", "unexpected"):
        if s.get(key):
            parts.append(f"{key}: {', '.join(s[key])}")
    if s.get("roleMismatch"):
        mismatch = [f"{m['name']} ({m['intended']} != {m['discovered']})" for m in s["roleMismatch"]]
        parts.append(f"role mismatch: {', '.join(mismatch)}")
    if s.get("phase"):
        parts.append(f"pipeline: {s['phase']}")
    elif any(c.get("type") == "Reported" and c.get("status") == "True" for c in s.get("conditions") or []):
        parts.append("no pipeline (no InfraPipeline targets this site)")
    return "; ".join(parts)


def pipeline_row(site: dict[str, Any]) -> dict[str, Any] | None:
    pipeline = ((site.get("status") or {}).get("infra") or {}).get("pipeline")
    if not pipeline:
        return None
    row: dict[str, Any] = {
        "site": site["metadata"]["name"],
        "source": pipeline.get("source") or "-",
        "state": pipeline.get("state"),
        "phase": pipeline.get("phase"),
        "reason": pipeline.get("reason") or "",
    }
    for phase in pipeline.get("phases") or []:
        row[phase["name"]] = phase.get("state")
    return row


def inventory_only(site: dict[str, Any]) -> bool:
    """A site that reports its nodes (it has a ``SiteInventory``) and runs no pipeline."""
    infra = (site.get("status") or {}).get("infra")
    return isinstance(infra, dict) and not infra.get("pipeline")


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state
    from fleetplane.core.errors import ApiError

    def set_locked(site: str, node: str, locked: bool) -> None:
        with state.client() as client:
            inv = client.get("siteinventories", site)
            nodes = (inv.get("spec") or {}).get("nodes") or []
            if not any(n.get("name") == node for n in nodes):
                raise fail(f'node "{node}" is not in the inventory of site "{site}"')
            for n in nodes:
                if n.get("name") == node:
                    n["locked"] = locked
            body = {
                "metadata": {"resourceVersion": inv["metadata"]["resourceVersion"]},
                "spec": {"nodes": nodes},
            }
            client.patch("siteinventories", site, body)
        verb = "locked (draining, then kept out of service)" if locked else "unlocked"
        out.print(f"node {node} of site {site} {verb}", highlight=False)

    @app.command("nodes")
    def nodes(
        args: Annotated[list[str], typer.Argument(help="SITE | lock SITE NODE | unlock SITE NODE")],
        output_format: OutputOpt = "table",
    ) -> None:
        """A site's nodes (intended vs discovered, hardware, state); ``lock``/``unlock`` a node."""
        try:
            if args[0] in ("lock", "unlock"):
                if len(args) != 3:
                    raise fail(f"usage: fleetplane nodes {args[0]} SITE NODE")
                set_locked(args[1], args[2], args[0] == "lock")
                return
            if len(args) != 1:
                raise fail("usage: fleetplane nodes SITE | nodes lock|unlock SITE NODE")
            site = args[0]
            with state.client() as client:
                client.get("sites", site)  # 404 names an unknown site
                found = client.list_all("nodes", selector=f"fleetplane.io/site={site}")
                try:
                    inventory: dict[str, Any] | None = client.get("siteinventories", site)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    inventory = None
        except ApiError as exc:
            raise report(exc) from exc
        rows = node_rows(inventory, found)
        if output_format in ("json", "yaml"):
            view = {"site": site, "inventory": (inventory or {}).get("status"), "nodes": rows}
            out.print(dump(view, output_format), markup=False, highlight=False)
            return
        if rows:
            out.print(table(rows, NODE_COLUMNS))
        out.print(inventory_line(inventory), highlight=False)

    infra_app = typer.Typer(help="Install / patch pipelines per site.", no_args_is_help=True)
    app.add_typer(infra_app, name="infra")

    @infra_app.command("retry")
    def retry(site: Annotated[str, typer.Argument(help="The site whose failed pipeline to retry.")]) -> None:
        """Retry a site's failed pipeline from the phase that failed."""
        try:
            with state.client() as client:
                inv = client.get("siteinventories", site)
                count = int((inv.get("spec") or {}).get("retry") or 0) + 1
                body = {
                    "metadata": {"resourceVersion": inv["metadata"]["resourceVersion"]},
                    "spec": {"retry": count},
                }
                client.patch("siteinventories", site, body)
        except ApiError as exc:
            raise report(exc) from exc
        out.print(f"site {site}: retry {count} requested; the pipeline resumes from its failed phase")

    @infra_app.command("status")
    def status(selector: SelectorOpt = "", output_format: OutputOpt = "table") -> None:
        """Per site: the pipeline it runs, its state and each phase's."""
        try:
            with state.client() as client:
                sites = client.list_all("sites", selector=selector)
        except ApiError as exc:
            raise report(exc) from exc
        rows = [r for s in sites if (r := pipeline_row(s)) is not None]
        bare = sorted(s["metadata"]["name"] for s in sites if inventory_only(s))
        if output_format in ("json", "yaml"):
            view = {"sites": rows, "withoutPipeline": bare}
            out.print(dump(view, output_format), markup=False, highlight=False)
            return
        if rows:
            out.print(table(rows, PIPELINE_COLUMNS))
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
        out.print(f"{len(rows)} sites with a pipeline: {summary}", highlight=False)
        if bare:
            shown = ", ".join(bare[:20]) + (f", ... ({len(bare) - 20} more)" if len(bare) > 20 else "")
            out.print(f"{len(bare)} sites with nodes and no pipeline: {shown}", highlight=False)
