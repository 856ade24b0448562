"""The server process: FastAPI application, background loops and the uvicorn runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import fleetplane
from fleetplane.controllers.health_controller import HealthController
from fleetplane.controllers.history import HistoryController
from fleetplane.controllers.infra import InfraController
from fleetplane.controllers.liveness import LivenessController
from fleetplane.controllers.manifests import ManifestController
from fleetplane.controllers.membership import MembershipController
from fleetplane.controllers.policy_hits import PolicyHitsController
from fleetplane.controllers.rollouts import RolloutController
from fleetplane.controllers.site_events import SiteEventsController
from fleetplane.controllers.workload_status import WorkloadStatusController
from fleetplane.core.blobstore import BlobError
from fleetplane.core.errors import ApiError, Cause
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import REGISTRY
from fleetplane.server import artifacts as artifacts_api
from fleetplane.server import backup as backup_api
from fleetplane.server import console, infra_site_api, native, onboarding, plan, site_api, site_manifest_api
from fleetplane.server import fleet_metrics as fleet_api
from fleetplane.server import metrics as metrics_api
from fleetplane.server import vk8s as vk8s_api
from fleetplane.server.bootstrap import ensure_admin
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.identity import IdentityService
from fleetplane.server.openapi import kind_schemas
from fleetplane.server.requests import JsonResponse
from fleetplane.server.sealing import envelope
from fleetplane.server.tls import TRUST

log = logging.getLogger("fleetplane.server")


def _too_big(limit: int) -> ApiError:
    # Made when a body is refused, not for every request: this layer sees every site call.
    return ApiError(413, "RequestEntityTooLarge", f"the request body is larger than {limit} bytes")


class BodyLimit:
    """Refuse request bodies over the limit with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int, overrides: tuple[tuple[str, int], ...] = ()) -> None:
        self.app = app
        self.limit = limit
        # (path regex, limit): streamed uploads (artifacts) have their own, larger limit.
        self.overrides = tuple((re.compile(pattern), size) for pattern, size in overrides)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((size for rx, size in self.overrides if rx.match(path)), self.limit)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await JsonResponse(_too_big(limit).to_status(), status_code=413)(scope, receive, send)
                return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_big(limit)
            return message

        await self.app(scope, counting, send)


class FleetplaneApp(FastAPI):
    """The FastAPI application with the sites' hot calls in front of it (``SiteFastPath``):
    those are answered through the request metrics and the body limit alone, never through
    FastAPI's own layers (error and telemetry middleware, routing): about a twentieth of the
    server's CPU when 10,000 sites took one change (py-spy). Everything else goes the usual
    way."""

    site_calls: ASGIApp | None = None  # RequestMetrics(BodyLimit(SiteFastPath)), set by create_app
    site_routes: site_api.SiteFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.site_routes.route_for(scope) if self.site_routes is not None else None
        if route is None or self.site_calls is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it: the handlers find the context through it
        scope["route"] = route  # the metrics label the call by its template, as routing would
        await self.site_calls(scope, receive, send)


async def _leader_loop(ctx: ServerContext, start: Callable[[], Awaitable[None]]) -> None:
    """Run the controllers only while this replica holds the leadership."""
    while not await asyncio.to_thread(ctx.store.try_lead, "controllers"):
        await asyncio.sleep(2)
    log.info("this replica leads the controllers")
    await start()


async def _compactor(ctx: ServerContext) -> None:
    while True:
        await asyncio.sleep(ctx.settings.compact_interval)
        try:
            await asyncio.to_thread(ctx.store.compact, ctx.settings.history_revisions)
        except Exception:
            log.exception("compaction failed")


def create_app(settings: ServerSettings, store: Store | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_store = store or open_store(settings.resolved_store_url())
        await asyncio.to_thread(ensure_admin, the_store, settings.data_dir)
        hub = WatchHub(the_store)
        await hub.start()
        ctx = ServerContext(settings, the_store, REGISTRY, hub)
        app.state.ctx = ctx
        envelope(ctx)  # fail at start, not at first use, when the KEK is unusable
        artifacts_api.blobstore(ctx)  # likewise for the artifact store's settings
        ident = ctx.extras["identity"] = IdentityService(ctx, on_trust=TRUST.add)
        for bundle in await asyncio.to_thread(ident.trust_bundles):
            TRUST.add(bundle)
        tasks = [
            asyncio.create_task(_compactor(ctx), name="compactor"),
            asyncio.create_task(ident.watch(), name="identity-watch"),
        ]
        # Every replica keeps the health view (reads, /metrics); the leader also writes it.
        health = ctx.extras["health"] = HealthController(
            the_store, hub, offline_after=settings.offline_after, write=False
        )
        tasks.append(asyncio.create_task(health.run(), name="health"))
        # Every replica follows the alerts (/metrics); the leader evaluates them (enable).
        alerts = ctx.extras["alerts"] = fleet_api.alert_controller(ctx, health)
        tasks.append(asyncio.create_task(alerts.run(), name="alerts"))
        tasks.append(asyncio.create_task(console.run_view(ctx), name="console-view"))
        if settings.run_controllers:
            membership = MembershipController(the_store, hub)
            ctx.extras["membership"] = membership
            manifests = ctx.extras["manifests"] = ManifestController(the_store, hub)
            liveness = ctx.extras["liveness"] = LivenessController(
                the_store, hub, offline_after=settings.offline_after
            )
            policy_hits = ctx.extras["policy_hits"] = PolicyHitsController(the_store, hub)
            history = ctx.extras["history"] = HistoryController(the_store, hub)
            rollouts = ctx.extras["rollouts"] = RolloutController(the_store, hub, keep=settings.rollouts_kept)
            workload_status = ctx.extras["workload_status"] = WorkloadStatusController(the_store, hub)
            infra = ctx.extras["infra"] = InfraController(the_store, hub)
            metrics_history = ctx.extras["metrics_history"] = fleet_api.history_controller(ctx)
            site_events = ctx.extras["site_events"] = SiteEventsController(
                the_store, hub, ttl=settings.event_ttl, per_site=settings.events_per_site
            )

            async def run_controllers() -> None:
                health.enable_writes()
                alerts.enable()
                await asyncio.gather(
                    membership.run(),
                    manifests.run(),
                    liveness.run(),
                    policy_hits.run(),
                    history.run(),
                    rollouts.run(),
                    workload_status.run(),
                    infra.run(),
                    metrics_history.run(),
                    site_events.run(),
                )

            tasks.append(asyncio.create_task(_leader_loop(ctx, run_controllers), name="controllers"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await hub.stop()
            if store is None:
                the_store.close()

    app = FleetplaneApp(
        title="fleetplane",
        version=fleetplane.__version__,
        description="Fleet control plane: native resource API (Kubernetes conventions).",
        lifespan=lifespan,
        default_response_class=JsonResponse,
    )
    app.site_routes = site_api.SiteFastPath(routers=(site_api.router, site_manifest_api.router))
    app.site_calls = metrics_api.RequestMetrics(
        BodyLimit(app.site_routes, limit=settings.max_body_bytes),
        registry=metrics_api.request_registry(app.state),
    )
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        overrides=((artifacts_api.UPLOAD_PATH, settings.max_artifact_bytes),),
    )
    app.add_middleware(metrics_api.RequestMetrics, registry=metrics_api.request_registry(app.state))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JsonResponse:
        return JsonResponse(exc.to_status(), status_code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JsonResponse:
        causes = [Cause(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        err = ApiError(
            400, "BadRequest", "invalid request: " + "; ".join(c.message for c in causes), causes=causes
        )
        return JsonResponse(err.to_status(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JsonResponse:
        reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequest")
        msg = (
            "the server could not find the requested resource" if exc.status_code == 404 else str(exc.detail)
        )
        return JsonResponse(ApiError(exc.status_code, reason, msg).to_status(), status_code=exc.status_code)

    @app.exception_handler(BlobError)
    async def _blobs(_: Request, exc: BlobError) -> JsonResponse:
        # The artifact store (a disk, an S3 bucket) failing is an outage, not a server bug.
        log.warning("artifact store: %s", exc)
        err = ApiError(503, "ServiceUnavailable", f"the artifact store is unavailable: {exc}")
        return JsonResponse(err.to_status(), status_code=503)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JsonResponse:
        log.exception("internal error")
        err = ApiError(500, "InternalError", "an internal error occurred; see the server log")
        return JsonResponse(err.to_status(), status_code=500)

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {"gitVersion": f"v{fleetplane.__version__}", "platform": "fleetplane"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        ctx: ServerContext = request.app.state.ctx
        rev = await asyncio.to_thread(ctx.store.revision)
        return {"status": "ok", "revision": rev, "backend": ctx.store.backend}

    app.include_router(console.router)  # the web console, and / redirects to it
    app.include_router(onboarding.router)
    app.include_router(site_api.router)
    app.include_router(site_manifest_api.router)
    app.include_router(infra_site_api.router)  # a site's kubeconfig, sealed into a Secret
    app.include_router(plan.router)  # before native: /plan is not a plural
    app.include_router(artifacts_api.router)  # before native: uploads, downloads, delete with the blob
    app.include_router(backup_api.router)
    app.include_router(vk8s_api.router)  # before native: one VK8s per namespace on create
    app.include_router(metrics_api.router)  # before native: /virtualsites/{name}/health
    app.include_router(fleet_api.router)  # before native: /virtualsites/{name}/distribution
    app.include_router(native.router)
    kind_schemas(app, REGISTRY)
    return app
