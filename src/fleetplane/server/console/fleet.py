"""Console data for fleet-wide views and actions: resource distribution, vK8s workloads per
site, alerts, and the registration decisions (the only writes the console makes)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from fleetplane.core.errors import ApiError, Cause, bad_request
from fleetplane.kinds import SITE, VK8S
from fleetplane.kinds.vk8s import K8S_RESOURCES
from fleetplane.server import onboarding
from fleetplane.server.auth import Principal, authorize
from fleetplane.server.console.data import _health_view, ctx_of, router, visible
from fleetplane.server.console.session import session
from fleetplane.server.context import ServerContext
from fleetplane.server.requests import JsonResponse, read_object

BUCKETS = 10  # 0-9 %, 10-19 %, ..., 90-100 %
WORKLOADS = tuple(r for r in K8S_RESOURCES if r.workload)
MAX_PER_SITE = 500


def _histogram(values: list[float]) -> list[int]:
    counts = [0] * BUCKETS
    for v in values:
        counts[min(BUCKETS - 1, int(v // 10))] += 1
    return counts


@router.get("/distribution")
async def distribution(request: Request) -> JsonResponse:
    """CPU and memory load across the tenant's sites (or one virtual site's members,
    ``?virtualSite=namespace/name``) in buckets of 10 %."""
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", SITE, None)
    hv = _health_view(ctx)
    members: set[str] | None = None
    wanted = request.query_params.get("virtualSite") or ""
    if wanted:
        namespace, _, name = wanted.partition("/")
        if not name or not visible(who, namespace):
            raise bad_request(
                "virtualSite must be namespace/name of a visible virtual site",
                [Cause("virtualSite", "must be namespace/name")],
            )
        members = hv.members((who.tenant, namespace, name)) if hv is not None else set()
        if members is None:
            raise bad_request(f'virtual site "{wanted}" not found', [Cause("virtualSite", "not found")])
    cpu: list[float] = []
    memory: list[float] = []
    if hv is not None:
        for entry in hv.entries(who.tenant, members):
            if entry.cpu is not None:
                cpu.append(entry.cpu)
            if entry.memory is not None:
                memory.append(entry.memory)

    def share_over(values: list[float], limit: float) -> float:
        return round(sum(1 for v in values if v > limit) / len(values), 4) if values else 0.0

    return JsonResponse(
        {
            "buckets": [f"{10 * i}-{10 * i + 9 if i < BUCKETS - 1 else 100}%" for i in range(BUCKETS)],
            "cpu": {"sites": len(cpu), "counts": _histogram(cpu), "over75": share_over(cpu, 75)},
            "memory": {"sites": len(memory), "counts": _histogram(memory), "over75": share_over(memory, 75)},
        }
    )


def _workloads(ctx: ServerContext, who: Principal) -> list[dict[str, Any]]:
    """Every vK8s workload of the namespaces the caller sees, with the fleet view its status
    carries (``status.fleet``, written by the workload status controller; docs/vk8s.md)."""
    namespaces = sorted(
        {
            str(o["metadata"].get("namespace") or "")
            for o in ctx.store.list(who.tenant, VK8S.kind).items
            if visible(who, str(o["metadata"].get("namespace") or ""))
        }
    )
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        for resource in WORKLOADS:
            try:
                authorize(who, "list", resource.info, namespace)
            except ApiError:
                continue
            for obj in ctx.store.list(who.tenant, resource.store_kind, namespace=namespace).items:
                status = obj.get("status") or {}
                fleet = status.get("fleet") or {}
                items.append(
                    {
                        "namespace": namespace,
                        "kind": resource.kind,
                        "name": obj["metadata"]["name"],
                        "desired": int(fleet.get("desiredReplicas") or 0),
                        "ready": int(status.get("readyReplicas") or status.get("active") or 0),
                        "sites": int(fleet.get("sites") or 0),
                        "siteStates": fleet.get("siteStates") or {},
                        "podStates": fleet.get("podStates") or {},
                        "failing": (fleet.get("failing") or [])[:20],
                        "perSite": (fleet.get("perSite") or [])[:MAX_PER_SITE],
                    }
                )
    return items


@router.get("/workloads")
async def workloads(request: Request) -> JsonResponse:
    """vK8s Deployments, StatefulSets and Jobs: sites deployed / in progress / failed, pods
    by state, failing sites and the per-site status."""
    ctx, who = ctx_of(request), (await session(request)).principal
    return JsonResponse({"items": await asyncio.to_thread(_workloads, ctx, who)})


@router.get("/alerts")
async def alerts(request: Request) -> JsonResponse:
    """Alert objects (``kinds/alerts.py``), firing first, when the Alert kind is registered."""
    ctx, who = ctx_of(request), (await session(request)).principal
    info = next((i for i in ctx.registry.all() if i.kind == "Alert"), None)
    if info is None:
        return JsonResponse({"available": False, "items": []})
    authorize(who, "list", info, None if not who.restricted else who.namespaces[0])
    listed = await asyncio.to_thread(ctx.store.list, who.tenant, info.kind)
    items: list[dict[str, Any]] = []
    for obj in listed.items:
        m, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        if not visible(who, m.get("namespace") or ""):
            continue
        items.append(
            {
                "namespace": m.get("namespace") or "",
                "name": m["name"],
                "state": status.get("state") or "pending",
                "severity": spec.get("severity") or "",
                "rule": spec.get("rule") or "",
                "expr": spec.get("expr") or "",
                "subject": status.get("subject") or "site",
                "since": status.get("since") or status.get("startsAt") or m.get("creationTimestamp"),
                "count": int(status.get("affectedCount") or 0),
                "affected": [str(a) for a in status.get("affected") or []],
            }
        )
    order = {"firing": 0, "pending": 1, "resolved": 2}
    items.sort(key=lambda a: (order.get(a["state"], 3), a["namespace"], a["name"]))
    return JsonResponse({"available": True, "items": items})


@router.post("/registrations/{name}/accept")
async def accept(request: Request, name: str) -> JsonResponse:
    ctx, who = ctx_of(request), (await session(request, write=True)).principal
    authorize(who, "create", SITE, None)  # as the API: deciding a registration creates a site
    raw = await request.body()
    body = await read_object(request) if raw.strip() else {}
    site_name = body.get("name") or None
    if site_name is not None and not isinstance(site_name, str):
        raise bad_request("name must be a string", [Cause("name", "must be a string")])
    # The same steps as the API's accept route (server/onboarding.py), with the console's auth.
    source = await asyncio.to_thread(onboarding._source_of, ctx, who.tenant, name)
    obj = await asyncio.to_thread(
        onboarding.accept, ctx, who.tenant, name, site_name, onboarding._labels(body), source
    )
    return JsonResponse({"name": name, "phase": (obj.get("status") or {}).get("phase"), "site": site_name})


@router.post("/registrations/{name}/reject")
async def reject(request: Request, name: str) -> JsonResponse:
    ctx, who = ctx_of(request), (await session(request, write=True)).principal
    authorize(who, "create", SITE, None)
    body = await read_object(request)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise bad_request("a reason is required", [Cause("reason", "required", "FieldValueRequired")])
    obj = await asyncio.to_thread(onboarding.reject, ctx, who.tenant, name, reason.strip())
    return JsonResponse({"name": name, "phase": (obj.get("status") or {}).get("phase")})
