"""Live updates for the console: one server-sent event stream per open page.

The stream follows the store's watch hub for the kinds the console shows and coalesces:
at most one message per ``THROTTLE_S``, saying which kinds changed and, when few sites
changed, their fresh map rows (``[name, lat, lon, colour, score]``) so the map patches its
dots in place; when many changed, ``"sites": null`` tells the page to refetch once. So
10,000 sites reporting every few seconds cost the browser one small message a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import StreamingResponse

from fleetplane.core.watch import WatchFilter
from fleetplane.kinds import REGISTRATION, ROLLOUT, SITE, VIRTUAL_SITE
from fleetplane.kinds.vk8s import K8S_RESOURCES
from fleetplane.server.auth import authorize
from fleetplane.server.console.data import ctx_of, router
from fleetplane.server.console.session import session
from fleetplane.server.console.view import health_of, view_of
from fleetplane.server.context import ServerContext

THROTTLE_S = 1.0
MAX_ROWS = 200  # more changed sites than this in one message: the page refetches instead
KEEPALIVE_S = 15.0
STREAM_S = 600.0  # then the browser's EventSource reconnects (and re-authenticates)


# vK8s workloads are stored under their own kinds; the pages know them as one: "Workload".
WORKLOAD_KINDS = {r.store_kind: "Workload" for r in K8S_RESOURCES if r.workload}


def _kinds(ctx: ServerContext) -> tuple[str, ...]:
    kinds = [SITE.kind, REGISTRATION.kind, ROLLOUT.kind, VIRTUAL_SITE.kind, *WORKLOAD_KINDS]
    kinds += [i.kind for i in ctx.registry.all() if i.kind == "Alert"]
    return tuple(kinds)


def _rows(ctx: ServerContext, tenant: str, names: set[str]) -> list[list[Any]]:
    rows = view_of(ctx).rows.get(tenant, {})
    out: list[list[Any]] = []
    for name in sorted(names):
        row = rows.get(name)
        if row is None:
            out.append([name, None, None, None, None])  # deleted
            continue
        colour, score, _ = health_of(ctx, tenant, name)
        out.append([name, row.lat, row.lon, colour, score])
    return out


async def stream(ctx: ServerContext, tenant: str) -> AsyncIterator[bytes]:
    changed: dict[str, set[str]] = {}
    wake = asyncio.Event()
    # Taken now, not when the task first runs: nothing after the stream opened is missed.
    since = ctx.hub.revision

    async def follow() -> None:
        flt = WatchFilter(tenant, _kinds(ctx))
        try:
            async for ev in ctx.hub.watch(flt, since=since, drain=True):
                changed.setdefault(WORKLOAD_KINDS.get(ev.kind, ev.kind), set()).add(ev.name)
                wake.set()
        finally:
            wake.set()  # the watch ended (the server drains): let the stream see it now

    follower = asyncio.create_task(follow())
    loop = asyncio.get_running_loop()
    end = loop.time() + STREAM_S
    try:
        yield b"retry: 2000\n\n"
        while loop.time() < end and not follower.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=KEEPALIVE_S)
            if not wake.is_set():
                yield b": keepalive\n\n"
                continue
            await asyncio.sleep(THROTTLE_S)  # coalesce what arrives in the next second
            wake.clear()
            batch, changed = dict(changed), {}
            sites = batch.get(SITE.kind, set())
            message = {
                "kinds": sorted(batch),
                "sites": _rows(ctx, tenant, sites) if len(sites) <= MAX_ROWS else None,
                "revision": ctx.hub.revision,
            }
            yield b"event: change\ndata: " + orjson.dumps(message) + b"\n\n"
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower


@router.get("/events")
async def events(request: Request) -> StreamingResponse:
    ctx, who = ctx_of(request), (await session(request)).principal
    authorize(who, "watch", SITE, None)
    return StreamingResponse(
        stream(ctx, who.tenant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
