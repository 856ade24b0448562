"""``meta.k8s.io/v1`` Table responses: what ``kubectl get`` prints, with upstream's columns
(``pkg/printers/internalversion``) and upstream's human ages."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request

from fleetplane.core.objects import Obj

Cells = Callable[[Obj], list[Any]]
# (name, type, priority): priority 1 columns show with -o wide only.
Column = tuple[str, str, int]


def wants_table(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    first = accept.split(",")[0]
    return "as=Table" in first and "g=meta.k8s.io" in first


def human_duration(seconds: float) -> str:
    """Upstream ``duration.HumanDuration``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y" if days % 365 == 0 else f"{days // 365}y{days % 365}d"
    return f"{hours // 24 // 365}y"


@functools.lru_cache(maxsize=65536)
def _epoch(stamp: str) -> float | None:
    # Cached: a table of 3,000 pods parses as many timestamps, mostly the same few.
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def age(obj: Obj) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    when = _epoch(str(stamp)) if stamp else None
    if when is None:
        return "<unknown>"
    return human_duration(time.time() - when)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _pod_spec(obj: Obj) -> dict[str, Any]:
    return _d(_d(_d(obj.get("spec")).get("template")).get("spec"))


def _containers(obj: Obj) -> str:
    return ",".join(
        str(c.get("name", "")) for c in _pod_spec(obj).get("containers") or [] if isinstance(c, dict)
    )


def _images(obj: Obj) -> str:
    return ",".join(
        str(c.get("image", "")) for c in _pod_spec(obj).get("containers") or [] if isinstance(c, dict)
    )


def _selector(obj: Obj) -> str:
    sel = _d(_d(obj.get("spec")).get("selector"))
    parts = [f"{k}={v}" for k, v in sorted(_d(sel.get("matchLabels")).items())]
    for raw in sel.get("matchExpressions") or []:
        e = _d(raw)
        op, key, values = e.get("operator", ""), e.get("key", ""), ",".join(e.get("values") or [])
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}.get(
                op, f"!{key}"
            )
        )
    return ",".join(parts) or "<none>"


def _desired(obj: Obj) -> Any:
    """Replicas wanted: over every site the workload runs on (``status.fleet``, fan-out), else
    ``spec.replicas`` (the per-site count) while it is placed on no site."""
    fleet = _d(_d(obj.get("status")).get("fleet"))
    if fleet.get("sites"):
        return fleet.get("desiredReplicas", 0)
    return _d(obj.get("spec")).get("replicas", 0)


def _deployment(obj: Obj) -> list[Any]:
    status = _d(obj.get("status"))
    ready = f"{status.get('readyReplicas', 0)}/{_desired(obj)}"
    return [
        ready,
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        age(obj),
        _containers(obj),
        _images(obj),
        _selector(obj),
    ]


def _statefulset(obj: Obj) -> list[Any]:
    status = _d(obj.get("status"))
    return [
        f"{status.get('readyReplicas', 0)}/{_desired(obj)}",
        age(obj),
        _containers(obj),
        _images(obj),
    ]


def _job(obj: Obj) -> list[Any]:
    spec, status = _d(obj.get("spec")), _d(obj.get("status"))
    conditions = {
        c.get("type"): c.get("status") for c in status.get("conditions") or [] if isinstance(c, dict)
    }
    state = "Running"
    for cond in ("Complete", "Failed", "Suspended"):
        if conditions.get(cond) == "True":
            state = cond
    if spec.get("suspend") and state == "Running":
        state = "Suspended"
    completions = f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"
    return [state, completions, "", age(obj), _containers(obj), _images(obj), _selector(obj)]


def _ports(obj: Obj) -> str:
    out = []
    for raw in _d(obj.get("spec")).get("ports") or []:
        p = _d(raw)
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _service(obj: Obj) -> list[Any]:
    spec = _d(obj.get("spec"))
    external = ",".join(spec.get("externalIPs") or []) or (
        "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"
    )
    if spec.get("type") == "ExternalName":
        external = spec.get("externalName", "<none>")
    selector = ",".join(f"{k}={v}" for k, v in sorted(_d(spec.get("selector")).items())) or "<none>"
    return [
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP") or "<none>",
        external,
        _ports(obj),
        age(obj),
        selector,
    ]


def _pod_reason(status: dict[str, Any], statuses: list[dict[str, Any]]) -> str:
    """The STATUS column as upstream's printer derives it: the pod's reason or phase, replaced by
    a container's waiting reason (``ImagePullBackOff``, ``CrashLoopBackOff``...) or termination."""
    reason = str(status.get("reason") or status.get("phase") or "Pending")
    for c in reversed(statuses):
        state = _d(c.get("state"))
        waiting, terminated = _d(state.get("waiting")), _d(state.get("terminated"))
        if waiting.get("reason"):
            reason = str(waiting["reason"])
        elif terminated:
            reason = str(terminated.get("reason") or f"ExitCode:{terminated.get('exitCode', 0)}")
    return reason


def _pod(obj: Obj) -> list[Any]:
    spec, status = _d(obj.get("spec")), _d(obj.get("status"))
    statuses = [_d(c) for c in status.get("containerStatuses") or []]
    ready = sum(1 for c in statuses if c.get("ready"))
    total = len(spec.get("containers") or [])
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    return [
        f"{ready}/{total}",
        _pod_reason(status, statuses),
        restarts,
        age(obj),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        "<none>",
        "<none>",
    ]


def _pvc(obj: Obj) -> list[Any]:
    spec, status = _d(obj.get("spec")), _d(obj.get("status"))
    modes = {
        "ReadWriteOnce": "RWO",
        "ReadOnlyMany": "ROX",
        "ReadWriteMany": "RWX",
        "ReadWriteOncePod": "RWOP",
    }
    access = ",".join(modes.get(m, m) for m in status.get("accessModes") or [])
    return [
        status.get("phase", "Pending"),
        spec.get("volumeName", ""),
        _d(status.get("capacity")).get("storage", ""),
        access,
        spec.get("storageClassName") or "<unset>",
        "<unset>",
        age(obj),
        spec.get("volumeMode", "Filesystem"),
    ]


def _event(obj: Obj) -> list[Any]:
    involved = _d(obj.get("involvedObject"))
    last = (
        obj.get("lastTimestamp")
        or obj.get("eventTime")
        or (obj.get("metadata") or {}).get("creationTimestamp")
    )
    seen = age({"metadata": {"creationTimestamp": str(last)[:19] + "Z"}}) if last else "<unknown>"
    what = f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"
    return [seen, obj.get("type", ""), obj.get("reason", ""), what, obj.get("message", "")]


NAME: Column = ("Name", "string", 0)
TABLES: dict[str, tuple[list[Column], Cells]] = {
    "Deployment": (
        [
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        _deployment,
    ),
    "StatefulSet": (
        [
            NAME,
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        _statefulset,
    ),
    "Job": (
        [
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        _job,
    ),
    "Service": (
        [
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        _service,
    ),
    "ConfigMap": (
        [NAME, ("Data", "integer", 0), ("Age", "string", 0)],
        lambda o: [len(_d(o.get("data"))) + len(_d(o.get("binaryData"))), age(o)],
    ),
    "Secret": (
        [NAME, ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
        lambda o: [o.get("type", "Opaque"), len(_d(o.get("data"))), age(o)],
    ),
    "PersistentVolumeClaim": (
        [
            NAME,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        _pvc,
    ),
    "Pod": (
        [
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        _pod,
    ),
    "Override": (
        [NAME, ("Sites", "string", 0), ("Age", "string", 0)],
        lambda obj: [",".join(str(x) for x in _d(obj.get("spec")).get("sites") or []) or "<none>", age(obj)],
    ),
    "Event": (
        [
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _event,
    ),
}


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def table(
    kind: str, items: list[Obj], include: str, meta: dict[str, Any] | None = None, headers: bool = True
) -> dict[str, Any]:
    """A Table of ``items`` (already in their Kubernetes form)."""
    columns, cells = TABLES[kind]
    rows = []
    for obj in items:
        values = cells(obj)
        if columns[0] is NAME:
            values = [(obj.get("metadata") or {}).get("name", ""), *values]
        row: dict[str, Any] = {"cells": values}
        shown = _row_object(obj, include)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    out: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta or {}}
    out["columnDefinitions"] = (
        [
            {"name": n, "type": t, "format": "name" if n == "Name" else "", "description": n, "priority": p}
            for n, t, p in columns
        ]
        if headers
        else []
    )
    out["rows"] = rows
    return out


# -- pre-encoded rows (the Pod list at fleet scale) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedRow:
    """One Table row as JSON, all but its ``Age`` cell: :func:`assemble` adds the age, so a
    cached row stays right as time passes."""

    head: bytes  # '{"cells":[' and the cells before Age (each followed by a comma)
    created: float | None  # creationTimestamp (epoch s); None: "<unknown>"
    tail: bytes  # the cells after Age, the row's object and the closing brace
    aged: bool  # the kind has an Age column


def encode_row(kind: str, obj: Obj, include: str) -> EncodedRow:
    """``obj``'s row of a :func:`table` of ``kind``, encoded once."""
    columns, cells = TABLES[kind]
    values = cells(obj)
    if columns[0] is NAME:
        values = [(obj.get("metadata") or {}).get("name", ""), *values]
    at = next((i for i, c in enumerate(columns) if c[0] == "Age"), None)
    before, after = (values, []) if at is None else (values[:at], values[at + 1 :])
    head = b'{"cells":[' + b"".join(orjson.dumps(v) + b"," for v in before)
    rest = b",".join(orjson.dumps(v) for v in after)
    shown = _row_object(obj, include)
    tail = (b"," + rest if rest else b"") + b"]"
    tail += (b',"object":' + orjson.dumps(shown) if shown is not None else b"") + b"}"
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    created = _epoch(str(stamp)) if stamp else None
    if at is None:  # no Age cell: drop the trailing comma of the last cell before it
        head = head[:-1] if head.endswith(b",") else head
    return EncodedRow(head, created, tail, at is not None)


def assemble(row: EncodedRow, now: float) -> bytes:
    if not row.aged:
        return row.head + row.tail
    shown = "<unknown>" if row.created is None else human_duration(now - row.created)
    return row.head + orjson.dumps(shown) + row.tail


def encoded_table(kind: str, rows: list[EncodedRow], meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`table` of pre-encoded rows (``orjson.Fragment``: encoded as they are)."""
    out = table(kind, [], "None", meta)
    now = time.time()
    out["rows"] = [orjson.Fragment(assemble(r, now)) for r in rows]
    return out
