"""The stored vK8s Pods in memory, per (tenant, namespace), kept current from the watch hub.

``kubectl get pods`` at 1,000 sites lists 3,000 Pods: read from the store, each request would
load and decode every row. This view is built from one snapshot and then follows the hub
(rebuilding on a lost watch, as the controllers do), so a list is a dictionary walk. The
revision it answers with is the last Pod change it has applied: a watch resumed from it misses
nothing. Paged lists (``limit``/``continue``: kubectl asks for 500 at a time) are answered here
too, with the store's continue tokens and their meaning (the next page starts after the last
name, at the first page's revision; ``410 Expired`` once the store compacted past it), so a
token from either path works on the other.

Each Pod's encoded form (its Table row without the age, its JSON) is cached beside it until the
Pod changes: a list of 3,000 Pods joins bytes instead of building and encoding 3,000 rows.
Started on the first Pod list of a server process (every replica keeps its own).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from fleetplane.core.errors import ApiError, expired
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType
from fleetplane.core.store.base import decode_continue, encode_continue
from fleetplane.core.watch import ANY_TENANT, WatchFilter
from fleetplane.server.context import ServerContext
from fleetplane.server.vk8s.tables import EncodedRow, encode_row

log = logging.getLogger(__name__)
POD_KIND = "vk8s.core.Pod"
ENCODINGS = ("json", "None", "Object", "PartialObjectMetadata")
READY_WAIT_S = 10.0


class Page:
    """One list answer of the view: the Pods (stored form), revision and continue token."""

    __slots__ = ("items", "revision", "token")

    def __init__(self, items: list[Obj], revision: int, token: str | None) -> None:
        self.items, self.revision, self.token = items, revision, token


class PodView:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.pods: dict[tuple[str, str], dict[str, Obj]] = {}
        self.names: dict[tuple[str, str], list[str]] = {}  # sorted names, dropped on add/remove
        self.revision = 0
        # (tenant, namespace, name, encoding) -> (the stored Pod encoded, its encoded form)
        self._encoded: dict[tuple[str, str, str, str], tuple[Obj, bytes | EncodedRow]] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="vk8s-pod-view")

    async def _run(self) -> None:
        while True:
            try:
                revision, objects = await asyncio.to_thread(self.ctx.store.scan, (POD_KIND,))
                pods: dict[tuple[str, str], dict[str, Obj]] = {}
                for tenant, obj in objects:
                    meta = obj["metadata"]
                    pods.setdefault((tenant, str(meta.get("namespace") or "")), {})[meta["name"]] = obj
                self.pods, self.names, self.revision = pods, {}, revision
                self._encoded = {}
                self.ready.set()
                async for ev in self.ctx.hub.watch(WatchFilter(ANY_TENANT, (POD_KIND,)), since=revision):
                    key = (ev.tenant, ev.namespace)
                    held = self.pods.setdefault(key, {})
                    old = held.pop(ev.name, None) if ev.type is EventType.DELETED else held.get(ev.name)
                    if ev.type is not EventType.DELETED:
                        held[ev.name] = ev.object
                    if old is None or ev.type is EventType.DELETED:  # a name came or went
                        self.names.pop(key, None)
                    if ev.type is EventType.DELETED:
                        for encoding in ENCODINGS:
                            self._encoded.pop((*key, ev.name, encoding), None)
                    self.revision = ev.revision
            except ApiError as exc:  # compacted or overflowed: rebuild from a snapshot
                log.warning("vK8s pod view lost its watch (%s); resyncing", exc.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("vK8s pod view failed; resyncing")
                await asyncio.sleep(1.0)

    def snapshot(self, tenant: str, namespace: str) -> list[Obj]:
        """The namespace's Pods (stored form) sorted by name, as they are now (on the event
        loop, which applies the watch: the list is the caller's to filter in a thread)."""
        key = (tenant, namespace)
        held = self.pods.get(key, {})
        names = self.names.get(key)
        if names is None:
            names = self.names[key] = sorted(held)
        return [held[name] for name in names]

    def page(
        self,
        pods: list[Obj],
        revision: int,
        namespace: str,
        selector: Any,
        fields: Callable[[Obj], bool] | None,
        limit: int = 0,
        token: str | None = None,
    ) -> Page:
        """Those of ``pods`` (a :meth:`snapshot` at ``revision``) that match: all of them, or a
        page of ``limit`` after ``token`` (the store's continue semantics)."""
        start = 0
        if token:
            revision, after_ns, after = decode_continue(token)
            if revision < self.ctx.store.compacted_revision():
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result."
                )
            if after_ns > namespace:
                start = len(pods)
            elif after_ns == namespace:
                start = bisect.bisect_right(pods, after, key=lambda o: str(o["metadata"]["name"]))
        found: list[Obj] = []
        for obj in pods[start:]:
            if selector is not None and not selector.matches(obj["metadata"].get("labels") or {}):
                continue
            if fields is not None and not fields(obj):
                continue
            if limit and len(found) == limit:
                last = found[-1]["metadata"]["name"]
                return Page(found, revision, encode_continue(revision, namespace, last))
            found.append(obj)
        return Page(found, revision, None)

    def encoded(self, tenant: str, obj: Obj, encoding: str, kube: Callable[[Obj], Obj]) -> bytes | EncodedRow:
        """``obj``'s JSON (``encoding`` "json") or Table row (``encoding``: the row's object, as
        ``includeObject``) of ``kube(obj)``, its Kubernetes form: once per stored version."""
        meta = obj["metadata"]
        key = (tenant, str(meta.get("namespace") or ""), str(meta["name"]), encoding)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        shown = kube(obj)
        value = orjson.dumps(shown) if encoding == "json" else encode_row("Pod", shown, encoding)
        self._encoded[key] = (obj, value)
        return value


async def pod_view(ctx: ServerContext) -> PodView | None:
    """The process's view, started on first use; None while it is not ready (the caller reads
    the store instead)."""
    view = ctx.extras.get("vk8s_pod_view")
    if not isinstance(view, PodView):
        view = ctx.extras["vk8s_pod_view"] = PodView(ctx)
    view.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(view.ready.wait(), READY_WAIT_S)
    return view if view.ready.is_set() else None
