"""Watch in the Kubernetes stream format: one JSON ``{"type", "object"}`` per line.

``resourceVersion`` absent or ``"0"``: the current objects as ADDED, then changes; ``N``:
every change after revision N (``ERROR`` with a ``410 Expired`` Status when N is compacted
away, as the watch cache answers). ``BOOKMARK`` events only with ``allowWatchBookmarks=true``:
after a quiet spell, carrying the revision the client has seen everything up to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse

from fleetplane.core.errors import ApiError
from fleetplane.core.watch import WatchFilter
from fleetplane.kinds.vk8s import K8sResource
from fleetplane.server.requests import bool_param, int_param, label_selector, revision_param
from fleetplane.server.vk8s import tables
from fleetplane.server.vk8s.common import VScope
from fleetplane.server.vk8s.resources import field_filter

BOOKMARK_AFTER = 2.0  # seconds of quiet before a bookmark
_END = object()


def _line(kind: str, obj: Any) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


async def watch(s: VScope, r: K8sResource, request: Request, namespace: str) -> StreamingResponse:
    flt = WatchFilter(s.tenant, (r.store_kind,), namespace, label_selector(request), field_filter(request, r))
    since = revision_param(request)
    timeout = float(int_param(request, "timeoutSeconds", int(s.ctx.settings.watch_timeout)))
    bookmarks = bool_param(request, "allowWatchBookmarks")
    include = request.query_params.get("includeObject", "PartialObjectMetadata")
    as_table = tables.wants_table(request)
    ctype = "application/json;as=Table;v=v1;g=meta.k8s.io" if as_table else "application/json"
    body = _stream(s, r, flt, since, timeout, bookmarks, include if as_table else None)
    return StreamingResponse(body, media_type=ctype)


async def _stream(
    s: VScope,
    r: K8sResource,
    flt: WatchFilter,
    since: int | None,
    timeout: float,
    bookmarks: bool,
    table_include: str | None,
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        events = s.ctx.hub.watch(flt, since, drain=True)
        try:
            async for ev in events:
                await queue.put(ev)
            await queue.put(_END)
        except ApiError as exc:
            await queue.put(exc)
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    task = asyncio.create_task(pump())
    seen = since or await asyncio.to_thread(s.ctx.store.revision)
    first = True
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), BOOKMARK_AFTER)
                except TimeoutError:
                    if bookmarks:
                        mark = {
                            "kind": r.kind,
                            "apiVersion": r.api_version,
                            "metadata": {"resourceVersion": str(seen)},
                        }
                        yield _line("BOOKMARK", mark)
                    continue
                if item is _END:
                    return
                if isinstance(item, ApiError):
                    status = item.to_status()
                    if item.code == 410:
                        status.update(reason="Expired", code=410)
                    yield _line("ERROR", status)
                    return
                seen = max(seen, item.revision)
                obj = s.to_k8s(r, item.object)
                if table_include is not None:
                    obj = tables.table(
                        r.kind, [obj], table_include, {"resourceVersion": str(item.revision)}, first
                    )
                    first = False
                yield _line(item.type.value, obj)
    except TimeoutError:
        return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
