"""``GET /site-api/v1/manifest``: a site long-polls its own compiled manifest (mTLS);
``PUT /site-api/v1/sync`` reports its status first, in the same call.

The site is the one its client certificate names (``site_api.authenticated_site``); there is no way
to name another. The wait subscribes to the watch hub for exactly this site's
SiteManifest (name-indexed), so a manifest write wakes this waiter and no other, and
nothing polls. The contract is ``docs/site-manifest.md``.

Secrets of the ``workloads`` section (vK8s fan-out) are stored sealed in the SiteManifest, as
in the store; they are opened here, in the answer to the one site whose certificate asks
(over mTLS), with the sealing context of the vK8s Secret they came from.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fleetplane.core.errors import Cause, bad_request
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType
from fleetplane.core.watch import Subscription, WatchFilter
from fleetplane.kinds import SITE_MANIFEST
from fleetplane.kinds.vk8s import BY_STORE_KIND
from fleetplane.server.context import ServerContext
from fleetplane.server.requests import JsonResponse, read_object
from fleetplane.server.sealing import unseal
from fleetplane.server.site_api import (
    MAX_WAIT,
    PREFIX,
    authenticated_identity,
    peer_certificate,
    reported_status,
    site_of,
)
from fleetplane.server.site_status import kept_fields, status_writer

router = APIRouter(prefix=PREFIX)
# The Site's resourceVersion once a sync's report is written: the ``base`` of a delta report.
SITE_VERSION_HEADER = "Fleetplane-Site-Version"


def _query(request: Request) -> Mapping[str, str]:
    """The query's parameters, the last value of each, as ``request.query_params`` gives them.
    A long-poll's are plain digits (``after=7&waitSeconds=60``): when nothing in the query is
    escaped it is split here, without starlette's parser, which was 2.4 % of the server's CPU
    in a 10,000-site fan-out (py-spy)."""
    raw: bytes = request.scope.get("query_string", b"")
    if b"%" in raw or b"+" in raw:
        return request.query_params
    params: dict[str, str] = {}
    for part in raw.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            params[name.decode("latin-1")] = value.decode("latin-1")
    return params


def _number(query: Mapping[str, str], name: str, default: float, *, integer: bool) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise bad_request(f"{name} must be {kind}", [Cause(name, f"must be {kind}")]) from None
    if value < 0 or math.isnan(value):
        raise bad_request(f"{name} must not be negative", [Cause(name, "must not be negative")])
    return value


_SECRET = BY_STORE_KIND["vk8s.core.Secret"]
SOURCE_ANNOTATION = "fleetplane.io/vk8s-source"  # controllers/workload_sections.py


def _has_secrets(manifest: Obj) -> bool:
    section = ((manifest.get("spec") or {}).get("sections") or {}).get("workloads")
    objects = section.get("objects") if isinstance(section, dict) else None
    return isinstance(objects, list) and any(
        isinstance(o, dict) and o.get("kind") == "Secret" for o in objects
    )


def opened_for_site(ctx: ServerContext, tenant: str, manifest: Obj) -> Obj:
    """The manifest with the sealed ``data`` of its ``workloads`` Secrets opened."""
    if not _has_secrets(manifest):
        return manifest
    out = copy.deepcopy(manifest)
    for obj in out["spec"]["sections"]["workloads"]["objects"]:
        if not isinstance(obj, dict) or obj.get("kind") != "Secret" or not isinstance(obj.get("data"), dict):
            continue
        source = str(((obj.get("metadata") or {}).get("annotations") or {}).get(SOURCE_ANNOTATION) or "")
        ns, _, name = source.partition("/")
        sealed: dict[str, Any] = {"kind": _SECRET.store_kind, "metadata": {"namespace": ns, "name": name}}
        obj["data"] = unseal(ctx, tenant, _SECRET.info, {**sealed, "data": obj["data"]})["data"]
    return out


async def _answer(ctx: ServerContext, tenant: str, manifest: Obj) -> JsonResponse:
    if not _has_secrets(manifest):  # the common case: nothing to open, no trip to a thread
        return JsonResponse(manifest)
    return JsonResponse(await asyncio.to_thread(opened_for_site, ctx, tenant, manifest))


def _generation(obj: Obj | None) -> int:
    return int(((obj or {}).get("metadata") or {}).get("generation") or 0)


def _admitted_manifest(ctx: ServerContext, der: bytes, tenant: str, name: str) -> Obj | None:
    """The site's manifest, after the full check that the certificate's site may still call
    (exists, not decommissioned, current serial): one trip to a worker thread for both."""
    site_of(ctx, der)
    return ctx.store.get_or_none(tenant, SITE_MANIFEST.kind, "", name)


def _waits(request: Request) -> tuple[int, float]:
    """``after`` and ``waitSeconds`` of a long-poll (400 naming the bad one)."""
    query = _query(request)
    after = int(_number(query, "after", 0, integer=True))
    return after, min(_number(query, "waitSeconds", 0, integer=False), MAX_WAIT)


async def _newer_manifest(
    ctx: ServerContext,
    tenant: str,
    name: str,
    sub: Subscription,
    current: Obj | None,
    after: int,
    wait: float,
) -> Response:
    """Answer with the site's manifest once its generation is above ``after``: ``current``
    (read after ``sub`` subscribed, so nothing written in between is missed) or the first
    newer one the hub hands ``sub`` within ``wait`` seconds; 204 without one."""
    if current is not None and _generation(current) > after:
        return await _answer(ctx, tenant, current)
    # A wait holds nothing it does not need: thousands of sites wait at once.
    del current
    deadline = time.monotonic() + (wait if after > 0 else 0)
    while (left := deadline - time.monotonic()) > 0:
        try:
            # Not wait_for: on Python 3.11 it wraps the get in a task of its own, one more
            # object per waiting site and more work per wake-up.
            async with asyncio.timeout(left):
                ev = await sub.queue.get()
        except TimeoutError:
            break
        if ev is None:  # the hub stopped or this wait overflowed: answer from the store
            current = await asyncio.to_thread(ctx.store.get_or_none, tenant, SITE_MANIFEST.kind, "", name)
            if current is not None and _generation(current) > after:
                return await _answer(ctx, tenant, current)
            break
        if ev.type is not EventType.DELETED and _generation(ev.object) > after:
            # Several writes may be queued: answer with the newest.
            newest = ev.object
            while not sub.queue.empty():
                more = sub.queue.get_nowait()
                if more is not None and more.type is not EventType.DELETED:
                    newest = more.object
            return await _answer(ctx, tenant, newest)
    return Response(status_code=204)


def _subscribe(ctx: ServerContext, tenant: str, name: str) -> Subscription:
    flt = WatchFilter(tenant, (SITE_MANIFEST.kind,), name=name)
    return ctx.hub.subscribe(flt, after=ctx.hub.revision, drain=True)


@router.get("/manifest")
async def get_manifest(request: Request) -> Response:
    ctx, tenant, name, _ = await authenticated_identity(request)
    after, wait = _waits(request)
    # Subscribe before reading, so a write between the read and the wait is not missed.
    sub = _subscribe(ctx, tenant, name)
    der = peer_certificate(request)
    del request  # not held through the wait (memory per waiting site)
    try:
        reading = asyncio.to_thread(_admitted_manifest, ctx, der, tenant, name)
        return await _newer_manifest(ctx, tenant, name, sub, await reading, after, wait)
    finally:
        ctx.hub.unsubscribe(sub)


@router.put("/sync")
async def sync(request: Request) -> Response:
    """A site's report and its next manifest in one round trip: the status is written as by
    ``PUT /site/status`` (and refused the same way, with nothing polled), then the call
    long-polls as ``GET /manifest`` does. The agent's every change costs one call, not two.

    A delta report names in ``keep`` the status fields it left out as unchanged since its last
    report, and in ``base`` the Site's resourceVersion that report left (the
    ``Fleetplane-Site-Version`` header of its answer); 409 if the Site was written since."""
    ctx, tenant, name, serial = await authenticated_identity(request)
    after, wait = _waits(request)
    body = await read_object(request)
    status = reported_status(name, body)
    keep, base = kept_fields(name, body)
    # The write, not started yet: it runs once awaited, after the subscription below.
    report = status_writer(ctx).submit(tenant, name, serial, status, with_manifest=True, keep=keep, base=base)
    # Neither the request (its body), the report nor the stored Site is held through the
    # wait: a waiting site should cost the server its subscription and little else.
    del request, body, status
    sub = _subscribe(ctx, tenant, name)
    try:
        # The batch's transaction re-checks the certificate's site and reads its manifest.
        written = await report
        version = str(written.site["metadata"]["resourceVersion"])
        answer: Response
        if written.manifest is not None and _generation(written.manifest) > after:
            answer = await _answer(ctx, tenant, written.manifest)
        else:
            del written
            answer = await _newer_manifest(ctx, tenant, name, sub, None, after, wait)
    finally:
        ctx.hub.unsubscribe(sub)
    answer.headers[SITE_VERSION_HEADER] = version
    return answer
