"""Observability routes: ``/metrics`` (Prometheus) and the fleet health summaries.

``GET /metrics`` is authenticated like the rest of the API (a bearer access key: Prometheus
sends one with ``authorization: {credentials_file: ...}``), because the fleet series name
sites and virtual sites. Every key sees its own tenant's fleet series (a key limited to
namespaces: the virtual sites and rollouts of those and ``shared``); a system key sees every
tenant's, and alone sees the control plane's own series (request latency, watchers, store
revision). Every value is read from the health controller's in-memory view at scrape time:
no store scan per scrape.

``GET /apis/fleetplane.io/v1/namespaces/{ns}/virtualsites/{name}/health``: one virtual site's
counts per colour, score histogram and worst sites; ``GET /apis/fleetplane.io/v1/health``:
the same for the tenant's whole fleet plus the counts of each virtual site. See docs/health.md.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetplane.controllers.health import COLOURS
from fleetplane.controllers.health_controller import FleetHealth, HealthController, SiteEntry
from fleetplane.core.errors import ApiError
from fleetplane.kinds import SITE, VIRTUAL_SITE
from fleetplane.server.auth import SHARED_NAMESPACE, Principal, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.fleet_metrics import alert_metrics
from fleetplane.server.native import BASE, context, who
from fleetplane.server.requests import JsonResponse

router = APIRouter()
PHASES = ("Pending", "Online", "Offline", "Decommissioned")
LOAD_BUCKETS = (0.25, 0.5, 0.75, 0.9, 0.95)  # utilisation ratio upper bounds; +Inf added
SCORE_BUCKETS = tuple(float(b) for b in range(10, 100, 10))  # + 100 via +Inf
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROLLOUT_STATES = (
    "pending",
    "inProgress",
    "succeeded",
    "failed",
    "rollingBack",
    "rolledBack",
    "rollbackFailed",
)


_HISTOGRAMS: weakref.WeakKeyDictionary[CollectorRegistry, Histogram] = weakref.WeakKeyDictionary()


def _request_histogram(registry: CollectorRegistry) -> Histogram:
    """One histogram per registry, shared by every ``RequestMetrics`` that reports to it (the
    application's, and the site calls' in front of it: ``server/app.py``)."""
    histogram = _HISTOGRAMS.get(registry)
    if histogram is None:
        histogram = _HISTOGRAMS[registry] = Histogram(
            "fleetplane_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status code.",
            ("method", "route", "code"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
    return histogram


class RequestMetrics:
    """ASGI middleware: ``fleetplane_http_request_duration_seconds`` by method, route template
    (``/apis/fleetplane.io/v1/{plural}/{name}``, never the concrete path) and status code."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.histogram = _request_histogram(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.labels(scope.get("method", ""), template, str(code)).observe(
                time.perf_counter() - start
            )


def _ratio_histogram(
    name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Iterable[float | None]]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, ratios in rows:
        counts = [0] * (len(LOAD_BUCKETS) + 1)
        total = 0.0
        for pct in ratios:
            if pct is None:
                continue
            ratio = pct / 100.0
            total += ratio
            for i, le in enumerate(LOAD_BUCKETS):
                if ratio <= le:
                    counts[i] += 1
            counts[-1] += 1
        buckets = [(str(le), float(n)) for le, n in zip(LOAD_BUCKETS, counts, strict=False)]
        buckets.append(("+Inf", float(counts[-1])))
        family.add_metric(values, buckets, total)
    return family


def _score_histogram(rows: Iterable[tuple[list[str], list[SiteEntry]]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "fleetplane_site_health_score", "Distribution of site health scores (0-100).", labels=["tenant"]
    )
    for values, entries in rows:
        counts = [0] * (len(SCORE_BUCKETS) + 1)
        for e in entries:
            for i, le in enumerate(SCORE_BUCKETS):
                if e.health.score <= le:
                    counts[i] += 1
            counts[-1] += 1
        buckets = [(str(le), float(n)) for le, n in zip(SCORE_BUCKETS, counts, strict=False)]
        buckets.append(("+Inf", float(counts[-1])))
        family.add_metric(values, buckets, float(sum(e.health.score for e in entries)))
    return family


class FleetCollector(Collector):
    """The fleet series of the tenants one principal may see, from the in-memory view."""

    def __init__(self, ctx: ServerContext, principal: Principal) -> None:
        self.ctx = ctx
        self.principal = principal

    def _visible(self, namespace: str) -> bool:
        p = self.principal
        return not p.restricted or namespace in p.namespaces or namespace == SHARED_NAMESPACE

    def collect(self) -> Iterator[Metric]:
        controller = self.ctx.extras.get("health")
        view: FleetHealth | None = controller.view if isinstance(controller, HealthController) else None
        p = self.principal
        by_tenant: dict[str, list[SiteEntry]] = {}
        if view is not None:
            for (tenant, _), entry in view.sites.items():
                if p.system or tenant == p.tenant:
                    by_tenant.setdefault(tenant, []).append(entry)
        phases = GaugeMetricFamily("fleetplane_sites", "Sites by phase.", labels=["tenant", "phase"])
        colours = GaugeMetricFamily(
            "fleetplane_sites_health", "Sites by health colour.", labels=["tenant", "colour"]
        )
        for tenant, entries in sorted(by_tenant.items()):
            for phase in PHASES:
                phases.add_metric([tenant, phase], sum(1 for e in entries if e.phase == phase))
            for colour in COLOURS:
                n = sum(1 for e in entries if e.reported and e.health.colour == colour)
                colours.add_metric([tenant, colour], n)
        yield phases
        yield colours
        reported = {t: [e for e in es if e.reported] for t, es in sorted(by_tenant.items())}
        yield _score_histogram(([t], es) for t, es in reported.items())
        for what, attr in (("cpu", "cpu"), ("memory", "memory")):
            yield _ratio_histogram(
                f"fleetplane_site_{what}_utilization_ratio",
                f"Distribution of {what} in use / allocatable across sites (0-1).",
                ["tenant"],
                (([t], (getattr(e, attr) for e in es)) for t, es in sorted(by_tenant.items())),
            )
        yield from self._virtual_sites(view)
        yield from self._rollouts(view)
        yield from alert_metrics(self.ctx, self.principal)

    def _virtual_sites(self, view: FleetHealth | None) -> Iterator[Metric]:
        labels = ["tenant", "namespace", "virtualsite"]
        sites = GaugeMetricFamily(
            "fleetplane_virtualsite_sites_health",
            "Member sites of each virtual site by health colour.",
            labels=[*labels, "colour"],
        )
        rows: list[tuple[list[str], list[SiteEntry]]] = []
        if view is not None:
            for key in sorted(view.virtual):
                tenant, namespace, name = key
                if not (self.principal.system or tenant == self.principal.tenant) or not self._visible(
                    namespace
                ):
                    continue
                entries = list(view.entries(tenant, view.members(key)))
                rows.append(([tenant, namespace, name], entries))
                for colour in COLOURS:
                    n = sum(1 for e in entries if e.health.colour == colour)
                    sites.add_metric([tenant, namespace, name, colour], n)
        yield sites
        for what in ("cpu", "memory"):
            yield _ratio_histogram(
                f"fleetplane_virtualsite_{what}_utilization_ratio",
                f"Distribution of {what} in use / allocatable across the member sites of each virtual site.",
                labels,
                ((values, (getattr(e, what) for e in es)) for values, es in rows),
            )

    def _rollouts(self, view: FleetHealth | None) -> Iterator[Metric]:
        labels = ["tenant", "namespace", "rollout"]
        sites = GaugeMetricFamily(
            "fleetplane_rollout_sites", "Sites of each rollout by state.", labels=[*labels, "state"]
        )
        progress = GaugeMetricFamily(
            "fleetplane_rollout_progress_ratio",
            "Share of a rollout's sites that finished (succeeded), 0-1.",
            labels=labels,
        )
        phase = GaugeMetricFamily(
            "fleetplane_rollout_phase", "1 for the rollout's current phase.", labels=[*labels, "phase"]
        )
        if view is not None:
            for (tenant, namespace, name), status in sorted(view.rollouts.items()):
                if not (self.principal.system or tenant == self.principal.tenant) or not self._visible(
                    namespace
                ):
                    continue
                counts = status.get("counts") or {}
                total = 0
                for state in ROLLOUT_STATES:
                    n = int(counts.get(state) or 0)
                    total += n
                    sites.add_metric([tenant, namespace, name, state], n)
                done = int(counts.get("succeeded") or 0)
                progress.add_metric([tenant, namespace, name], done / total if total else 0.0)
                phase.add_metric([tenant, namespace, name, str(status.get("phase") or "Pending")], 1)
        yield sites
        yield progress
        yield phase


class ControlPlaneCollector(Collector):
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        hub = self.ctx.hub
        yield GaugeMetricFamily(
            "fleetplane_watchers", "Open watches on the store's hub.", value=hub.watcher_count
        )
        yield GaugeMetricFamily(
            "fleetplane_store_revision", "The store revision this replica has dispatched.", value=hub.revision
        )
        controller = self.ctx.extras.get("health")
        if isinstance(controller, HealthController):
            yield GaugeMetricFamily(
                "fleetplane_health_status_writes",
                "Site health statuses written by this replica since it started.",
                value=controller.writes,
            )


def request_registry(app_state: Any) -> CollectorRegistry:
    registry = getattr(app_state, "metrics_registry", None)
    if not isinstance(registry, CollectorRegistry):
        registry = app_state.metrics_registry = CollectorRegistry(auto_describe=False)
    return registry


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = context(request)
    principal = await who(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx, principal))
    if principal.system:
        registry.register(ControlPlaneCollector(ctx))
        registry.register(request_registry(request.app.state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# -- health summaries --------------------------------------------------------------------------


def _view(ctx: ServerContext) -> FleetHealth:
    controller = ctx.extras.get("health")
    if not isinstance(controller, HealthController) or not controller.synced.is_set():
        raise ApiError(503, "ServiceUnavailable", "the health view is not ready yet; try again shortly")
    return controller.view


@router.get(BASE + "/namespaces/{namespace}/virtualsites/{name}/health")
async def virtual_site_health(request: Request, namespace: str, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "get", VIRTUAL_SITE, namespace)
    authorize(principal, "list", SITE, None)
    summary = _view(ctx).summary((principal.tenant, namespace, name))
    if summary is None:
        raise ApiError(404, "NotFound", f'virtualsites "{name}" not found', kind="VirtualSite", name=name)
    return JsonResponse({"kind": "HealthSummary", "virtualSite": f"{namespace}/{name}", **summary})


@router.get(BASE + "/health")
async def fleet_health(request: Request) -> JsonResponse:
    """The tenant's whole fleet, and per virtual site the counts (``?namespace=`` to filter)."""
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "list", SITE, None)
    view = _view(ctx)
    wanted = request.query_params.get("namespace") or None
    if wanted is not None:
        authorize(principal, "list", VIRTUAL_SITE, wanted)
    summary = view.summary_of(principal.tenant)
    virtual = []
    for tenant, namespace, name in sorted(view.virtual):
        if tenant != principal.tenant or (wanted is not None and namespace != wanted):
            continue
        if principal.restricted and namespace not in (*principal.namespaces, SHARED_NAMESPACE):
            continue
        vs = view.summary((tenant, namespace, name), worst=0)
        if vs is not None:
            virtual.append(
                {"namespace": namespace, "name": name, "sites": vs["sites"], "counts": vs["counts"]}
            )
    return JsonResponse({"kind": "HealthSummary", **summary, "virtualSites": virtual})
