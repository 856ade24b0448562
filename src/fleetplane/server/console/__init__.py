"""The web console: pages, session auth, data endpoints and live updates (docs/console.md)."""

from fastapi import APIRouter

from fleetplane.server.console import data, fleet, routes, sse
from fleetplane.server.console.view import run_view

router = APIRouter()
router.include_router(routes.router)
router.include_router(data.router)  # fleet and sse add their routes to data.router

__all__ = ["fleet", "router", "run_view", "sse"]
