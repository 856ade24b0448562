"""``fleetplane diff -f FILE``: what applying a file would do to the fleet, before anything is written.

The server plans it (``POST /apis/fleetplane.io/v1/plan``, see server/plan.py): per object
its action, per touched site whether it joins or leaves an intent, and each manifest section
that changes, before and after. This prints the counts, then a unified diff per site (at
most ``--limit`` sites), or the plan itself with ``-o json|yaml``.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.text import Text

from fleetplane.cli.output import dump
from fleetplane.core.errors import ApiError

MARK = {"joining": "+", "leaving": "-", "changed": "~"}


def object_line(entry: dict[str, Any]) -> str:
    where = f"{entry['namespace']}/{entry['name']}" if entry.get("namespace") else entry["name"]
    gen = entry.get("generation") or {}
    text = f"{entry['kind'].lower()} {where}: {entry['action']}"
    if entry["action"] == "update" and gen.get("before") != gen.get("after"):
        text += f" (generation {gen.get('before')} -> {gen.get('after')})"
    sites = entry.get("sites")
    if sites is not None:
        text += (
            f"; targets {sites['targeted']} sites: {sites['joining']} joining, "
            f"{sites['leaving']} leaving, {sites['changed']} changed"
        )
    rollout = entry.get("rollout")
    if rollout:
        sizes = ", ".join(str(w["sites"]) for w in rollout["waves"][:8])
        more = ", …" if len(rollout["waves"]) > 8 else ""
        text += (
            f"; rollout {rollout['name']} ({rollout['strategy']}): "
            f"{len(rollout['waves'])} waves of {sizes}{more} sites"
        )
    return text


def summary_line(plan: dict[str, Any]) -> str:
    s = plan["summary"]
    return (
        f"{s['touched']} of {s['fleet']} sites change: {s['joining']} joining, "
        f"{s['leaving']} leaving, {s['changed']} changed"
    )


def _yaml(value: Any) -> list[str]:
    if value is None:
        return []
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False).splitlines()


def site_diff(row: dict[str, Any]) -> list[str]:
    """One site: a title line, then per changed section a unified diff of its YAML."""
    why = [f"joins {', '.join(row['joins'])}"] if row.get("joins") else []
    why += [f"leaves {', '.join(row['leaves'])}"] if row.get("leaves") else []
    title = f"{MARK[row['change']]} site {row['site']} ({row['change']}"
    title += (": " + "; ".join(why) if why else "") + (", new site" if row.get("newSite") else "") + ")"
    lines = [title]
    for section, change in row["sections"].items():
        before, after = _yaml(change["before"]), _yaml(change["after"])
        lines.append(f"    {section}:" + (" (added)" if not before else " (removed)" if not after else ""))
        for line in difflib.unified_diff(before, after, lineterm="", n=max(len(before), len(after))):
            if line.startswith(("---", "+++", "@@")):
                continue
            lines.append(f"      {line}")
    return lines


def render(plan: dict[str, Any], console: Console) -> None:
    for entry in plan["objects"]:
        console.print(object_line(entry), markup=False, highlight=False)
    console.print(summary_line(plan), markup=False, highlight=False)
    for row in plan["sites"]:
        console.print()
        for line in site_diff(row):
            style = None
            body = line.lstrip()
            if line.startswith(("+", "-", "~")):
                style = "bold"
            elif body.startswith("+"):
                style = "green"
            elif body.startswith("-"):
                style = "red"
            console.print(Text(line, style=style or ""), highlight=False)
    if plan.get("truncated"):
        hidden = plan["summary"]["touched"] - len(plan["sites"])
        console.print()
        console.print(
            f"… and {hidden} more sites (--limit 0 shows all of them)", markup=False, highlight=False
        )
    console.print()
    console.print(f"Nothing was written (planned at revision {plan['metadata']['resourceVersion']}).")


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import DEFAULT_NAMESPACE, fail, load_documents, out, report, state

    @app.command()
    def diff(
        filename: Annotated[str, typer.Option("--filename", "-f", help="YAML/JSON file, or - for stdin.")],
        namespace: Annotated[
            str | None,
            typer.Option("--namespace", "-n", help="For objects that name none (default: default)."),
        ] = None,
        limit: Annotated[int, typer.Option(help="Sites to show in detail (0: all).")] = 20,
        output_format: Annotated[str, typer.Option("--output", "-o", help="text | json | yaml")] = "text",
    ) -> None:
        """Show what applying FILE would change, site by site, without writing anything."""
        if output_format not in ("text", "json", "yaml"):
            raise fail(f'unknown output format "{output_format}" (text, json, yaml)')
        if limit < 0:
            raise fail("--limit must be 0 (all) or more")
        docs = load_documents(filename)
        if not docs:
            raise fail(f"{filename}: no objects")
        try:
            with state.client() as client:
                plan = client.plan(docs, namespace or DEFAULT_NAMESPACE, limit=limit)
        except ApiError as exc:
            raise report(exc) from exc
        if output_format != "text":
            out.print(dump(plan, output_format), markup=False, highlight=False)
            return
        render(plan, out)
