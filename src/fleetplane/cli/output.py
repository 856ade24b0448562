"""Rendering objects for people: tables, YAML, JSON, describe."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from fleetplane.core.registry import Column, KindInfo

DEFAULT_COLUMNS = (Column("NAME", "metadata.name"), Column("AGE", "metadata.creationTimestamp"))


def value_at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return timestamp
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def cell(column: Column, obj: dict[str, Any]) -> str:
    value = value_at(obj, column.path)
    if column.path.endswith("Timestamp"):  # creationTimestamp, an Event's lastTimestamp
        return age(value)
    if value is None or value in ("", []):
        return "<none>"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "<none>"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def columns_for(info: KindInfo | None, wide: bool, all_namespaces: bool) -> list[Column]:
    cols = list(info.columns) if info is not None and info.columns else list(DEFAULT_COLUMNS)
    cols = [c for c in cols if wide or not c.wide_only]
    if not all_namespaces:
        cols = [c for c in cols if c.path != "metadata.namespace"]
    return cols


def table(items: list[dict[str, Any]], columns: list[Column]) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c.header, overflow="fold")
    for obj in items:
        t.add_row(*(cell(c, obj) for c in columns))
    return t


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()


def as_list(items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}


def describe(obj: dict[str, Any], console: Console) -> None:
    meta = obj.get("metadata") or {}
    rows = [
        ("Name", meta.get("name")),
        ("Namespace", meta.get("namespace")),
        ("Kind", obj.get("kind")),
        ("Labels", "\n".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())) or "<none>"),
        (
            "Annotations",
            "\n".join(f"{k}: {v}" for k, v in sorted((meta.get("annotations") or {}).items())) or "<none>",
        ),
        ("UID", meta.get("uid")),
        ("Resource Version", meta.get("resourceVersion")),
        ("Generation", meta.get("generation")),
        ("Created", meta.get("creationTimestamp")),
    ]
    if meta.get("deletionTimestamp"):
        rows.append(("Deleting Since", meta["deletionTimestamp"]))
    for label, value in rows:
        if value is None:
            continue
        lines = str(value).splitlines() or [""]
        console.print(f"[bold]{label + ':':<18}[/bold]{lines[0]}", highlight=False)
        for line in lines[1:]:
            console.print(" " * 18 + line, highlight=False)
    for part in ("spec", "status"):
        if obj.get(part):
            console.print(f"[bold]{part.title()}:[/bold]")
            for line in dump(obj[part], "yaml").splitlines():
                console.print("  " + line, highlight=False, markup=False)
