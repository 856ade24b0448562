"""The workload view of a namespace (docs/vk8s.md, "Workload view"):
``GET /apis/fleetplane.io/v1/namespaces/{namespace}/workloadstatus`` answers, per vK8s
Deployment, StatefulSet and Job of the namespace, its fleet-wide counts: sites deployed / in
progress / failed, pods by state, and the failing sites with their reasons.

Read from the workloads' stored ``status`` (written by ``controllers/workload_status.py``):
three store lists of one namespace, never a scan of the Sites. ``?sites=true`` adds each
workload's per-site counts (``perSite``: large at 1,000 sites, so only when asked).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from fleetplane.core.objects import Obj
from fleetplane.core.registry import API_VERSION
from fleetplane.kinds.vk8s import K8S_RESOURCES
from fleetplane.server import native
from fleetplane.server.auth import authorize
from fleetplane.server.requests import JsonResponse, bool_param

router = APIRouter()
WORKLOADS = tuple(r for r in K8S_RESOURCES if r.workload)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def summary(kind: str, obj: Obj, per_site: bool) -> dict[str, Any]:
    """One workload's row of the view."""
    meta, spec, status = _d(obj.get("metadata")), _d(obj.get("spec")), _d(obj.get("status"))
    fleet = _d(status.get("fleet"))
    generation = int(meta.get("generation") or 1)
    ready = status.get("active", 0) if kind == "Job" else status.get("readyReplicas", 0)
    out: dict[str, Any] = {
        "kind": kind,
        "name": meta.get("name"),
        "generation": generation,
        "observedGeneration": status.get("observedGeneration", 0 if kind != "Job" else None),
        "replicasPerSite": spec.get("parallelism" if kind == "Job" else "replicas", 1),
        "desiredReplicas": fleet.get("desiredReplicas", 0),
        "readyReplicas": ready,
        "updatedReplicas": status.get("updatedReplicas", 0),
        "sites": fleet.get("sites", 0),
        "siteStates": fleet.get("siteStates") or {"deployed": 0, "inProgress": 0, "failed": 0},
        "podStates": fleet.get("podStates") or {},
        "failing": fleet.get("failing") or [],
    }
    if kind == "Job":
        out.pop("observedGeneration")
    if per_site:
        out["perSite"] = fleet.get("perSite") or []
    return out


@router.get(f"/apis/{API_VERSION}/namespaces/{{namespace}}/workloadstatus", include_in_schema=False)
async def workload_status(request: Request) -> JsonResponse:
    ctx = native.context(request)
    principal = await native.who(request)
    namespace = request.path_params["namespace"]
    for r in WORKLOADS:
        authorize(principal, "list", r.info, namespace)
    per_site = bool_param(request, "sites")

    def read() -> tuple[int, list[dict[str, Any]]]:
        revision, items = 0, []
        for r in WORKLOADS:
            found = ctx.store.list(principal.tenant, r.store_kind, namespace=namespace)
            revision = max(revision, found.revision)
            items += [summary(r.kind, o, per_site) for o in found.items]
        return revision, items

    revision, items = await asyncio.to_thread(read)
    return JsonResponse(
        {
            "apiVersion": API_VERSION,
            "kind": "WorkloadStatusList",
            "metadata": {"namespace": namespace, "resourceVersion": str(revision)},
            "items": items,
        }
    )
