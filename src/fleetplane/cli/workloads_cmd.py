"""``fleetplane workloads NAMESPACE``: the vK8s workloads of a namespace across the fleet — per
Deployment/StatefulSet/Job the sites deployed, in progress and failed, the pods by state, and
the failing sites with their reasons (``GET .../namespaces/{ns}/workloadstatus``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fleetplane.client import API

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]
POD_STATES = ("Running", "ContainerCreating", "ImagePullBackOff", "CrashLoopBackOff", "OOMKilled", "Pending")


def pods_text(states: dict[str, Any]) -> str:
    """The non-zero pod states, in the view's order: ``Running 8, OOMKilled 1``."""
    shown = [f"{s} {states[s]}" for s in POD_STATES if states.get(s)]
    return ", ".join(shown) or "-"


def workloads_table(items: list[dict[str, Any]]) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    t.add_column("WORKLOAD", no_wrap=True)
    for header in ("READY", "SITES", "DEPLOYED", "IN-PROGRESS", "FAILED"):
        t.add_column(header, no_wrap=True)
    t.add_column("PODS", overflow="fold")
    for w in items:
        sites = w.get("siteStates") or {}
        failed = int(sites.get("failed", 0))
        t.add_row(
            f"{str(w['kind']).lower()}/{w['name']}",
            f"{w.get('readyReplicas', 0)}/{w.get('desiredReplicas', 0)}",
            str(w.get("sites", 0)),
            str(sites.get("deployed", 0)),
            str(sites.get("inProgress", 0)),
            Text(str(failed), style="bold red" if failed else ""),
            pods_text(w.get("podStates") or {}),
        )
    return t


def failing_table(items: list[dict[str, Any]]) -> Table | None:
    rows = [(w, f) for w in items for f in w.get("failing") or []]
    if not rows:
        return None
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    t.add_column("WORKLOAD", no_wrap=True)
    t.add_column("SITE", no_wrap=True)
    t.add_column("REASON", overflow="fold")
    for w, f in rows:
        t.add_row(f"{str(w['kind']).lower()}/{w['name']}", str(f.get("site")), str(f.get("reason") or ""))
    return t


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import out, report, state
    from fleetplane.cli.output import dump
    from fleetplane.core.errors import ApiError

    @app.command("workloads")
    def workloads(
        namespace: Annotated[str, typer.Argument(help="The namespace of the vK8s.")],
        sites: Annotated[
            bool, typer.Option("--sites", help="Include every site's counts (json/yaml).")
        ] = False,
        output_format: OutputOpt = "table",
    ) -> None:
        """vK8s workloads across the fleet: sites deployed / in progress / failed, pods by
        state (running, creating, image pull back-off, crash loop, OOMKilled, pending) and the
        failing sites with their reasons."""
        try:
            with state.client() as client:
                params = {"sites": "true"} if sites else None
                found: dict[str, Any] = client.request(
                    "GET", f"{API}/namespaces/{namespace}/workloadstatus", params=params
                )
        except ApiError as exc:
            raise report(exc) from exc
        items = found.get("items") or []
        if output_format in ("json", "yaml"):
            out.print(dump(items, output_format), markup=False, highlight=False)
            return
        if not items:
            out.print(f"No workloads found in namespace {namespace}.", highlight=False)
            return
        out.print(workloads_table(items))
        failing = failing_table(items)
        if failing is not None:
            out.print()
            out.print(failing)
