"""Fleet load views: load distribution across sites (fleet-wide and per virtual site) and one
site's metrics history; plus the alert series of ``/metrics``. See docs/alerts.md.

- ``GET /apis/fleetplane.io/v1/distribution[?namespace=NS][&above=75,90]``: the tenant's
  fleet and every virtual site (of ``NS``), from the health controller's in-memory view;
- ``GET /apis/fleetplane.io/v1/namespaces/{ns}/virtualsites/{name}/distribution``: one;
- ``GET /apis/fleetplane.io/v1/sites/{name}/metrics[?resolution=1m]``: the site's
  ``SiteMetrics`` (current load and history), one resolution or all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client.core import GaugeMetricFamily, Metric

from fleetplane.controllers.alerts import AlertController
from fleetplane.controllers.health_controller import FleetHealth, HealthController
from fleetplane.controllers.load_distribution import DEFAULT_THRESHOLDS, distribution
from fleetplane.controllers.metrics_history import MetricsHistoryController
from fleetplane.core.errors import ApiError, Cause
from fleetplane.kinds import ALERT_RECEIVER, SITE, SITE_METRICS, VIRTUAL_SITE
from fleetplane.server.auth import SHARED_NAMESPACE, Principal, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.native import BASE, context, who
from fleetplane.server.requests import JsonResponse
from fleetplane.server.sealing import unseal

router = APIRouter()
MAX_THRESHOLDS = 10


def alert_controller(ctx: ServerContext, health: HealthController) -> AlertController:
    settings = ctx.settings
    scheme = "https" if settings.tls else "http"
    url = settings.external_url or f"{scheme}://{settings.host}:{settings.port}"
    return AlertController(
        ctx.store, ctx.hub, lambda: health.view if health.synced.is_set() else None,
        interval=settings.alert_interval, external_url=url,
        open_receiver=lambda tenant, obj: unseal(ctx, tenant, ALERT_RECEIVER, obj),
    )  # fmt: skip


def history_controller(ctx: ServerContext) -> MetricsHistoryController:
    return MetricsHistoryController(
        ctx.store,
        ctx.hub,
        retention=ctx.settings.metrics_retention,
        flush_interval=ctx.settings.metrics_flush_interval,
    )


def _view(ctx: ServerContext) -> FleetHealth:
    controller = ctx.extras.get("health")
    if not isinstance(controller, HealthController) or not controller.synced.is_set():
        raise ApiError(503, "ServiceUnavailable", "the fleet view is not ready yet; try again shortly")
    return controller.view


def _thresholds(request: Request) -> tuple[float, ...]:
    raw = request.query_params.get("above")
    if raw is None:
        return DEFAULT_THRESHOLDS
    try:
        values = tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or len(values) > MAX_THRESHOLDS or any(not 0 <= v <= 100 or math.isnan(v) for v in values):
        raise ApiError(
            400,
            "BadRequest",
            f"above: expected up to {MAX_THRESHOLDS} comma-separated percentages 0-100, got {raw!r}",
            causes=[Cause("above", "expected comma-separated percentages 0-100", "FieldValueInvalid")],
        )
    return values


@router.get(BASE + "/distribution")
async def fleet_distribution(request: Request) -> JsonResponse:
    """The tenant's whole fleet, and per virtual site (``?namespace=`` to filter)."""
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "list", SITE, None)
    thresholds = _thresholds(request)
    wanted = request.query_params.get("namespace") or None
    if wanted is not None:
        authorize(principal, "list", VIRTUAL_SITE, wanted)
    view = _view(ctx)
    out = {
        "kind": "LoadDistribution",
        "scope": "fleet",
        **distribution(view.entries(principal.tenant), thresholds),
    }
    virtual = []
    for tenant, namespace, name in sorted(view.virtual):
        if tenant != principal.tenant or (wanted is not None and namespace != wanted):
            continue
        if principal.restricted and namespace not in (*principal.namespaces, SHARED_NAMESPACE):
            continue
        members = view.members((tenant, namespace, name)) or set()
        entries = view.entries(tenant, members)
        virtual.append({"namespace": namespace, "name": name, **distribution(entries, thresholds)})
    return JsonResponse({**out, "virtualSites": virtual})


@router.get(BASE + "/namespaces/{namespace}/virtualsites/{name}/distribution")
async def virtual_site_distribution(request: Request, namespace: str, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "get", VIRTUAL_SITE, namespace)
    authorize(principal, "list", SITE, None)
    thresholds = _thresholds(request)
    view = _view(ctx)
    members = view.members((principal.tenant, namespace, name))
    if members is None:
        raise ApiError(404, "NotFound", f'virtualsites "{name}" not found', kind="VirtualSite", name=name)
    body = distribution(view.entries(principal.tenant, members), thresholds)
    return JsonResponse({"kind": "LoadDistribution", "scope": f"{namespace}/{name}", **body})


@router.get(BASE + "/sites/{name}/metrics")
async def site_metrics(request: Request, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "get", SITE_METRICS, None)
    found = await asyncio.to_thread(ctx.store.get_or_none, principal.tenant, SITE_METRICS.kind, "", name)
    if found is None:
        site = await asyncio.to_thread(ctx.store.get_or_none, principal.tenant, SITE.kind, "", name)
        if site is None:
            raise ApiError(404, "NotFound", f'sites "{name}" not found', kind="Site", name=name)
        found = {"status": {}}  # no history yet (first flush pending)
    status: dict[str, Any] = found.get("status") or {}
    series = status.get("series") or []
    resolution = request.query_params.get("resolution")
    if resolution is not None:
        known = [s.get("resolution") for s in series] or ["(none yet)"]
        series = [s for s in series if s.get("resolution") == resolution]
        if not series:
            raise ApiError(
                400,
                "BadRequest",
                f"resolution: {resolution!r} is not kept; kept: {', '.join(map(str, known))}",
                causes=[Cause("resolution", "not a kept resolution", "FieldValueNotSupported")],
            )
    return JsonResponse(
        {
            "kind": "SiteMetricsHistory",
            "site": name,
            "current": status.get("current") or {},
            "series": series,
        }
    )


# -- /metrics -----------------------------------------------------------------------------


def alert_metrics(ctx: ServerContext, principal: Principal) -> Iterator[Metric]:
    """``fleetplane_alerts_firing`` / ``_pending``: instances per alert, from the alert view."""
    labels = ["tenant", "namespace", "alertname", "severity"]
    firing = GaugeMetricFamily(
        "fleetplane_alerts_firing", "Firing instances (sites or rollouts) of each alert.", labels=labels
    )
    pending = GaugeMetricFamily(
        "fleetplane_alerts_pending", "Pending instances (in breach, not yet for long enough).", labels=labels
    )
    controller = ctx.extras.get("alerts")
    if isinstance(controller, AlertController):
        for (tenant, namespace, name), severity, n_firing, n_pending in controller.firing():
            if not (principal.system or tenant == principal.tenant):
                continue
            if principal.restricted and namespace not in (*principal.namespaces, SHARED_NAMESPACE):
                continue
            firing.add_metric([tenant, namespace, name, severity], n_firing)
            pending.add_metric([tenant, namespace, name, severity], n_pending)
    yield firing
    yield pending
