"""The console's data endpoints (``/console/api/...``): compact JSON for the pages, answered
from in-memory views where the fleet is large (map, sites table, distribution, workloads)
and from the store where the objects are few (registrations, virtual sites, alerts).

Each endpoint checks the same permissions as the native API would for what it shows.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetplane.controllers.health import load_percent
from fleetplane.controllers.health_controller import HealthController
from fleetplane.controllers.site_events import recent_events
from fleetplane.core.errors import ApiError
from fleetplane.kinds import REGISTRATION, ROLLOUT, SITE, SITE_MANIFEST, VIRTUAL_SITE
from fleetplane.server.auth import SHARED_NAMESPACE, Principal, authorize
from fleetplane.server.console.session import session
from fleetplane.server.console.view import UNKNOWN, health_of, view_of
from fleetplane.server.context import ServerContext
from fleetplane.server.requests import JsonResponse, int_param, label_selector

router = APIRouter(prefix="/console/api")
MAP_FIELDS = ("name", "lat", "lon", "colour", "score")
PAGE_MAX = 500
MEMBERS_MAX = 500
MAP_TTL_S = 1.0


def ctx_of(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def visible(who: Principal, namespace: str) -> bool:
    return not who.restricted or namespace in who.namespaces or namespace == SHARED_NAMESPACE


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _map_body(ctx: ServerContext, tenant: str) -> bytes:
    view = view_of(ctx)
    counts = {"green": 0, "orange": 0, "red": 0, UNKNOWN: 0}
    dots: list[list[Any]] = []
    unplaced = 0
    for row in view.rows.get(tenant, {}).values():
        colour, score, _ = health_of(ctx, tenant, row.name)
        counts[colour] += 1
        if row.lat is None:
            unplaced += 1
            continue
        dots.append([row.name, row.lat, row.lon, colour, score])
    return orjson.dumps({"fields": MAP_FIELDS, "sites": dots, "counts": counts, "unplaced": unplaced})


@router.get("/map")
async def map_data(request: Request) -> Response:
    """Every placed site as ``[name, lat, lon, colour, score]``; counts per colour. The answer
    is cached (raw and gzipped) until the site view changes or ``MAP_TTL_S`` passes (a score
    can move in memory a moment before the health controller writes it)."""
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", SITE, None)
    cache: dict[str, tuple[int, float, bytes, bytes]] = ctx.extras.setdefault("console_map", {})  # type: ignore[assignment]
    version, now = view_of(ctx).version, time.monotonic()
    hit = cache.get(who.tenant)
    if hit is None or hit[0] != version or now - hit[1] > MAP_TTL_S:
        body = _map_body(ctx, who.tenant)
        hit = cache[who.tenant] = (version, now, body, gzip.compress(body, compresslevel=1))
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return Response(hit[3], media_type="application/json", headers=headers)
    return Response(hit[2], media_type="application/json", headers={"Vary": "Accept-Encoding"})


def site_row(ctx: ServerContext, tenant: str, name: str) -> dict[str, Any] | None:
    row = view_of(ctx).rows.get(tenant, {}).get(name)
    if row is None:
        return None
    colour, score, entry = health_of(ctx, tenant, name)
    cpu = memory = None
    if entry is not None:
        cpu, memory = entry.cpu, entry.memory
    return {
        "name": row.name,
        "displayName": row.display,
        "phase": row.phase,
        "colour": colour,
        "score": score,
        "cpu": _round(cpu),
        "memory": _round(memory),
        "version": row.version,
        "nodes": row.nodes,
        "lastSeen": row.last_seen,
        "labels": row.labels,
    }


@router.get("/sites")
async def sites_table(request: Request) -> JsonResponse:
    """One page of the sites table (``labelSelector``, ``offset``, ``limit``), by name."""
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", SITE, None)
    selector = label_selector(request)
    offset = int_param(request, "offset", 0)
    limit = min(PAGE_MAX, int_param(request, "limit", 50, minimum=1))
    names = view_of(ctx).names(who.tenant, selector)
    items = [r for n in names[offset : offset + limit] if (r := site_row(ctx, who.tenant, n)) is not None]
    return JsonResponse({"total": len(names), "offset": offset, "limit": limit, "items": items})


def _site_detail(ctx: ServerContext, tenant: str, name: str) -> dict[str, Any]:
    site = ctx.store.get(tenant, SITE.kind, "", name)
    manifest = ctx.store.get_or_none(tenant, SITE_MANIFEST.kind, "", name)
    status = site.get("status") or {}
    _, _, entry = health_of(ctx, tenant, name)
    health = entry.health.to_status() if entry is not None and entry.reported else status.get("health")
    report = status.get("manifest") or {}
    items: dict[str, list[dict[str, Any]]] = {}
    for item in report.get("items") or []:
        items.setdefault(str(item.get("section")), []).append(item)
    sections = []
    for section, body in sorted(((manifest or {}).get("spec") or {}).get("sections", {}).items()):
        sections.append(
            {"name": section, "revisions": body.get("revisions") or {}, "items": items.get(section, [])}
        )
    cpu, memory = load_percent(status)
    return {
        "name": name,
        "spec": site.get("spec") or {},
        "labels": site["metadata"].get("labels") or {},
        "created": site["metadata"].get("creationTimestamp"),
        "phase": status.get("phase") or "Pending",
        "lastSeen": status.get("lastSeen"),
        "softwareVersion": status.get("softwareVersion"),
        "osVersion": status.get("osVersion") or (status.get("os") or {}).get("version"),
        "os": status.get("os"),
        "nodes": status.get("nodes") or [],
        "cpu": _round(cpu),
        "memory": _round(memory),
        "health": health,
        "conditions": status.get("conditions") or [],
        "events": recent_events(ctx.store, tenant, name, ctx.extras.get("site_events")),  # newest 20
        "manifest": {
            "desiredGeneration": (manifest or {}).get("metadata", {}).get("generation"),
            "reportedGeneration": report.get("generation"),
            "state": report.get("state"),
            "sections": sections,
        },
        "pods": status.get("pods") or [],
    }


@router.get("/sites/{name}")
async def site_detail(request: Request, name: str) -> JsonResponse:
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "get", SITE, None)
    return JsonResponse(await asyncio.to_thread(_site_detail, ctx, who.tenant, name))


def _health_view(ctx: ServerContext) -> Any:
    controller = ctx.extras.get("health")
    return controller.view if isinstance(controller, HealthController) else None


@router.get("/virtualsites")
async def virtual_sites(request: Request) -> JsonResponse:
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", SITE, None)
    listed = await asyncio.to_thread(ctx.store.list, who.tenant, VIRTUAL_SITE.kind)
    hv = _health_view(ctx)
    items = []
    for obj in listed.items:
        m = obj["metadata"]
        if not visible(who, m.get("namespace") or ""):
            continue
        key = (who.tenant, m.get("namespace") or "", m["name"])
        members = sorted(hv.members(key) or set()) if hv is not None else []
        counts = {"green": 0, "orange": 0, "red": 0, UNKNOWN: 0}
        shown: list[dict[str, Any]] = []
        for site in members:
            colour, score, _ = health_of(ctx, who.tenant, site)
            counts[colour] += 1
            if len(shown) < MEMBERS_MAX:
                shown.append({"name": site, "colour": colour, "score": score})
        items.append(
            {
                "namespace": m.get("namespace") or "",
                "name": m["name"],
                "selector": (obj.get("status") or {}).get("selector") or "",
                "description": (obj.get("spec") or {}).get("description") or "",
                "total": len(members),
                "counts": counts,
                "members": shown,
            }
        )
    return JsonResponse({"items": items})


def _hardware(hardware: Any) -> str:
    """``Fleetbox FB-2024, 16 cores, 64 GiB`` from a registration's hardware facts."""
    if not isinstance(hardware, dict):
        return ""
    parts = [str(hardware["model"])] if hardware.get("model") else []
    if isinstance(hardware.get("cpuCores"), int):
        parts.append(f"{hardware['cpuCores']} cores")
    if isinstance(hardware.get("memoryMiB"), int):
        parts.append(f"{hardware['memoryMiB'] / 1024:g} GiB")
    return ", ".join(parts)


def _location(coordinates: Any) -> str:
    """``35.60, 139.70`` (latitude, longitude) from a registration's facts."""
    if not isinstance(coordinates, dict):
        return ""
    lat, lon = coordinates.get("latitude"), coordinates.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        return f"{lat:.2f}, {lon:.2f}"
    return ""


@router.get("/registrations")
async def registrations(request: Request) -> JsonResponse:
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", REGISTRATION, None)
    listed = await asyncio.to_thread(ctx.store.list, who.tenant, REGISTRATION.kind)
    items = []
    for obj in listed.items:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        facts = spec.get("facts") or {}
        items.append(
            {
                "name": obj["metadata"]["name"],
                "created": obj["metadata"].get("creationTimestamp"),
                "phase": status.get("phase") or "Pending",
                "method": spec.get("method"),
                "source": spec.get("tokenName") or spec.get("manufacturer") or "",
                "hostname": facts.get("hostname") or "",
                "hardware": _hardware(facts.get("hardware")),
                "location": _location(facts.get("coordinates")),
                "labels": spec.get("requestedLabels") or {},
                "site": status.get("site"),
                "reason": status.get("reason"),
            }
        )
    items.sort(key=lambda r: (r["phase"] != "Pending", r["name"]))
    return JsonResponse({"items": items})


@router.get("/rollouts")
async def rollouts(request: Request) -> JsonResponse:
    """Every rollout's phase and counts, from the health controller's live view."""
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "list", ROLLOUT, None if not who.restricted else SHARED_NAMESPACE)
    hv = _health_view(ctx)
    items = []
    for (tenant, namespace, name), status in sorted((hv.rollouts if hv is not None else {}).items()):
        if tenant != who.tenant or not visible(who, namespace):
            continue
        counts = {k: int(v or 0) for k, v in (status.get("counts") or {}).items()}
        total = sum(counts.values())
        done = counts.get("succeeded", 0)
        items.append(
            {
                "namespace": namespace,
                "name": name,
                "phase": status.get("phase") or "Pending",
                "counts": counts,
                "total": total,
                "progress": round(done / total, 4) if total else 0.0,
            }
        )
    return JsonResponse({"items": items})


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{what} "{name}" not found', name=name)
