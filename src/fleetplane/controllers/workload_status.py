"""Workload status in the store: vK8s Pods and Deployment/StatefulSet/Job ``status`` written
from the sites' reports, so watches (``kubectl get pods -w``, ``rollout status``, ``wait``) see
them change and reads are plain store reads.

Level-triggered like every controller (``loop.run_controller``): a snapshot of Sites,
SiteManifests, the vK8s workloads and the stored Pods builds the in-memory view, then the hub
watch keeps it current. Per site it keeps the pods it reports (grouped by workload), its
manifest items and applied generation; per workload where it is placed (from the
SiteManifests: desired replicas and the generation rendered there). An event only marks
what it touched dirty; a flush every ``delay`` seconds recomputes the dirty workloads and
pods once (``workload_render``) and writes only what differs from the store, in transactions
of up to ``MAX_BATCH`` writes: a change reaching 1,000 sites becomes a few coalesced status
writes and a few batched pod transactions, not thousands of serial writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.controllers.workload_render import (
    POD_STORE_KIND,
    Placement,
    SiteSummary,
    desired_of,
    pod_object,
    summarize,
    workload_status,
)
from fleetplane.controllers.workload_sections import (
    GENERATION_ANNOTATION,
    SECTION,
    SOURCE_ANNOTATION,
    WORKLOAD_KINDS,
)
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store, StoreBatch
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import SITE, SITE_MANIFEST
from fleetplane.kinds.vk8s import BY_STORE_KIND, K8S_RESOURCES

log = logging.getLogger(__name__)
WKey = tuple[str, str, str, str]  # tenant, namespace, Kubernetes kind, name
SiteKey = tuple[str, str]  # tenant, site
PodKey = tuple[str, str, str]  # tenant, namespace, pod name
KINDS = (SITE.kind, SITE_MANIFEST.kind, *WORKLOAD_KINDS)
STORE_KIND = {r.kind: r.store_kind for r in K8S_RESOURCES if r.workload}
MAX_BATCH = 128
MAX_PAUSE_S = 0.5
_CONTENT = ("labels", "annotations", "ownerReferences")


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def pod_content(obj: Obj) -> Obj:
    """What of a Pod the controller owns (server metadata aside): compared to skip writes."""
    meta = _d(obj.get("metadata"))
    return {
        "metadata": {k: meta[k] for k in _CONTENT if k in meta},
        "spec": obj.get("spec"),
        "status": obj.get("status"),
    }


@dataclass(slots=True)
class _Site:
    applied: int = 0
    items: dict[str, tuple[str, str | None]] | None = None  # workloads item name -> state, reason
    pods: dict[WKey, list[dict[str, Any]]] | None = None
    pod_keys: frozenset[PodKey] = frozenset()
    # Per pod (site-local namespace, name): its last report and the Pod made of it.
    bodies: dict[tuple[str, str], tuple[dict[str, Any], Obj]] | None = None


@dataclass(slots=True)
class _Workload:
    generation: int
    stored: Any  # the stored status


_NO_SITE = _Site()
_NO_PODS: list[dict[str, Any]] = []  # shared, never modified


class WorkloadStatusController:
    def __init__(self, store: Store, hub: WatchHub, *, delay: float = 0.25) -> None:
        self.store = store
        self.hub = hub
        self.delay = delay
        self.synced = asyncio.Event()
        self.writes = 0  # objects written (tests, metrics)
        self._reset()
        self._wake = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workload-status")

    def _reset(self) -> None:
        self.workloads: dict[WKey, _Workload] = {}
        self.placed: dict[WKey, dict[str, tuple[int, int, int]]] = {}  # site -> desired, at, mgen
        self.manifests: dict[SiteKey, frozenset[WKey]] = {}
        self.sites: dict[SiteKey, _Site] = {}
        self.pods: dict[PodKey, tuple[str, Obj]] = {}  # wanted: site, stored form
        self.stored_pods: dict[PodKey, Obj] = {}  # pod_content of what the store holds
        self.dirty_workloads: set[WKey] = set()
        self.dirty_pods: set[PodKey] = set()
        # Per workload and site: the inputs of its last summary, the pods, the summary.
        self.summaries: dict[WKey, dict[str, tuple[tuple[Any, ...], list[dict[str, Any]], SiteSummary]]] = {}

    async def run(self) -> None:
        await run_controller("workload-status", self._sync_and_follow, self._flush_loop)

    # -- feeding -----------------------------------------------------------------------------

    def fold(self, tenant: str, obj: Obj, deleted: bool) -> None:
        kind = obj["kind"]
        if kind == SITE.kind:
            self._fold_site(tenant, obj, deleted)
        elif kind == SITE_MANIFEST.kind:
            self._fold_manifest(tenant, obj, deleted)
        elif kind in BY_STORE_KIND:
            meta = obj["metadata"]
            key = (tenant, str(meta.get("namespace") or ""), BY_STORE_KIND[kind].kind, str(meta["name"]))
            if deleted:
                self.workloads.pop(key, None)
                self.summaries.pop(key, None)
                self.dirty_workloads.discard(key)
                return
            generation = _int(meta.get("generation")) or 1
            old = self.workloads.get(key)
            self.workloads[key] = _Workload(generation, obj.get("status"))
            if old is None or old.generation != generation or old.stored != obj.get("status"):
                self.dirty_workloads.add(key)

    def _fold_manifest(self, tenant: str, obj: Obj, deleted: bool) -> None:
        site = str(obj["metadata"]["name"])
        mgen = _int(obj["metadata"].get("generation"))
        now: dict[WKey, tuple[int, int, int]] = {}
        if not deleted:
            section = _d(_d(_d(obj.get("spec")).get("sections")).get(SECTION))
            for o in section.get("objects") or []:
                if not isinstance(o, dict) or o.get("kind") not in STORE_KIND:
                    continue
                notes = _d(_d(o.get("metadata")).get("annotations"))
                ns, _, name = str(notes.get(SOURCE_ANNOTATION) or "").partition("/")
                if name:
                    key = (tenant, ns, str(o["kind"]), name)
                    now[key] = (desired_of(o), _int(notes.get(GENERATION_ANNOTATION)), mgen)
        before = self.manifests.get((tenant, site), frozenset())
        for key in before - now.keys():
            placed = self.placed.get(key)
            if placed is not None:
                placed.pop(site, None)
            self.dirty_workloads.add(key)
        for key, value in now.items():
            placed = self.placed.setdefault(key, {})
            if placed.get(site) != value:
                placed[site] = value
                self.dirty_workloads.add(key)
        self.manifests[(tenant, site)] = frozenset(now)

    def _fold_site(self, tenant: str, obj: Obj, deleted: bool) -> None:
        site = str(obj["metadata"]["name"])
        status = {} if deleted else _d(obj.get("status"))
        report = _d(status.get("manifest"))
        applied = _int(report.get("generation"))
        items: dict[str, tuple[str, str | None]] = {
            str(i.get("name")): (str(i.get("state")), i.get("reason"))
            for i in report.get("items") or []
            if isinstance(i, dict) and i.get("section") == SECTION
        }
        pods: dict[WKey, list[dict[str, Any]]] = {}
        wanted: dict[PodKey, Obj] = {}
        entry = self.sites.get((tenant, site)) or _NO_SITE
        made, bodies = entry.bodies or {}, {}
        for pod in status.get("pods") or []:
            if not isinstance(pod, dict):
                continue
            ns, kind, name = [*str(pod.get("workload") or "").split("/", 2), "", ""][:3]
            if not name:
                continue
            pods.setdefault((tenant, ns, kind, name), []).append(pod)
            mark = (str(pod.get("namespace")), str(pod.get("name")))
            before = made.get(mark)  # a report repeats most pods as they were: made once
            body = before[1] if before is not None and before[0] == pod else pod_object(ns, site, pod)
            bodies[mark] = (pod, body)
            wanted[(tenant, ns, body["metadata"]["name"])] = body
        touched = set((entry.pods or {}).keys()) ^ set(pods)
        for k, v in pods.items():
            old = (entry.pods or {}).get(k)
            if old == v and old is not None:
                pods[k] = old  # the same list: status_of keeps the site's summary
            else:
                touched.add(k)
        if entry.applied != applied or entry.items != items:
            touched |= self.manifests.get((tenant, site), frozenset())
        self.dirty_workloads |= touched
        for key in entry.pod_keys - wanted.keys():
            if self.pods.get(key, ("",))[0] == site:
                del self.pods[key]
                self.dirty_pods.add(key)
        for key, body in wanted.items():
            held = self.pods.get(key)
            if held is None or held[1] != body:
                self.pods[key] = (site, body)
                self.dirty_pods.add(key)
        if deleted:
            self.sites.pop((tenant, site), None)
        else:
            self.sites[(tenant, site)] = _Site(applied, items, pods, frozenset(wanted), bodies)

    # -- computing -----------------------------------------------------------------------------

    def status_of(self, key: WKey) -> dict[str, Any] | None:
        """The status the workload should have now; None when it is not stored."""
        workload = self.workloads.get(key)
        if workload is None:
            return None
        tenant, ns, kind, name = key
        item_name = f"{tenant}-{ns}/{kind}/{name}"
        kept = self.summaries.get(key, {})
        now: dict[str, tuple[tuple[Any, ...], list[dict[str, Any]], SiteSummary]] = {}
        for site, (desired, at, mgen) in sorted(self.placed.get(key, {}).items()):
            entry = self.sites.get((tenant, site)) or _NO_SITE
            item = (entry.items or {}).get(item_name)
            pods = (entry.pods or {}).get(key, _NO_PODS)
            inputs = (desired, at, mgen, entry.applied, item, workload.generation)
            hit = kept.get(site)
            if hit is not None and hit[0] == inputs and hit[1] is pods:  # a report replaces the list
                now[site] = hit
                continue
            placement = Placement(site, desired, at, mgen, entry.applied, item, pods)
            now[site] = (inputs, pods, summarize(placement, workload.generation))
        self.summaries[key] = now
        return workload_status(kind, name, workload.generation, [], [v[2] for v in now.values()])

    # -- following -----------------------------------------------------------------------------

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, (*KINDS, POD_STORE_KIND))
        self._reset()
        order = {SITE_MANIFEST.kind: 0, SITE.kind: 1}
        for tenant, obj in sorted(objects, key=lambda item: order.get(item[1]["kind"], 2)):
            if obj["kind"] == POD_STORE_KIND:
                key = (tenant, str(obj["metadata"].get("namespace") or ""), str(obj["metadata"]["name"]))
                self.stored_pods[key] = pod_content(obj)
                self.dirty_pods.add(key)  # reconciled against what the sites report
            else:
                self.fold(tenant, obj, deleted=False)
        self.synced.set()
        self._wake.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, KINDS), since=revision):
            self.fold(ev.tenant, ev.object, ev.type is EventType.DELETED)
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)  # coalesce: every report of the spell in one flush
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("workload status flush failed")

    async def flush(self) -> int:
        """Write every dirty workload status and pod that differs from the store; how many.

        Each transaction (on the controller's own thread) takes the dirty statuses first, then
        up to ``MAX_BATCH`` Pods, and is followed by a pause as long as it took: at fleet scale
        (6,000 Pod writes for an image bump at 1,000 sites) the Pods hold the store's write
        lock at most half the time, so the sites' reports, which make the time to effect, and
        the statuses go first. A Pod is written as it is wanted when its batch is (a later
        report in the spell wins)."""
        pods, self.dirty_pods = sorted(self.dirty_pods), set()
        written, start = 0, 0
        while True:
            batch = self._statuses()  # first in every batch: they wait for no Pod
            for pkey in pods[start : start + MAX_BATCH]:
                held = self.pods.get(pkey)
                body = held[1] if held is not None else None
                if (pod_content(body) if body is not None else None) != self.stored_pods.get(pkey):
                    batch.append(("pod", pkey, body))
            start += MAX_BATCH
            began = time.monotonic()
            if batch:
                try:
                    loop = asyncio.get_running_loop()
                    written += await loop.run_in_executor(self._writer, self._write, batch)
                except Exception as exc:  # retried on the next flush
                    log.warning("could not write workload status: %s", exc)
                    for what, key, _ in batch:
                        (self.dirty_workloads if what == "status" else self.dirty_pods).add(key)
                    self._wake.set()
            if start >= len(pods):
                break
            await asyncio.sleep(min(time.monotonic() - began, MAX_PAUSE_S))
        self.writes += written
        return written

    def _statuses(self) -> list[tuple[str, Any, Any]]:
        """The status writes of the dirty workloads (whose status differs from the store)."""
        writes: list[tuple[str, Any, Any]] = []
        for key in sorted(self.dirty_workloads):
            wanted = self.status_of(key)
            if wanted is not None and wanted != self.workloads[key].stored:
                writes.append(("status", key, wanted))
        self.dirty_workloads.clear()
        return writes

    def _write(self, batch: list[tuple[str, Any, Any]]) -> int:
        done = 0
        with self.store.batch() as tx:
            for what, key, value in batch:
                try:
                    done += self._write_one(tx, what, key, value)
                except ApiError as exc:
                    log.warning("could not write %s %s: %s", what, "/".join(key), exc.message)
        for what, key, value in batch:  # the store now holds what was wanted
            if what == "pod":
                if value is None:
                    self.stored_pods.pop(key, None)
                else:
                    self.stored_pods[key] = pod_content(value)
        return done

    def _write_one(self, tx: StoreBatch, what: str, key: Any, value: Any) -> int:
        """1 when the write changed the store. Straight to the write (the store loads the
        current object itself): a workload or Pod that is gone, a Pod that exists where it was
        not stored (or the reverse) is answered by the store and handled here, not pre-read."""
        try:
            if what == "status":
                tenant, ns, kind, name = key
                body = {
                    "kind": STORE_KIND[kind],
                    "metadata": {"name": name, "namespace": ns},
                    "status": value,
                }
                tx.update(tenant, body, part="status")
                return 1
            tenant, ns, name = key
            if value is None:
                tx.delete(tenant, POD_STORE_KIND, ns, name)
            elif key in self.stored_pods:
                tx.update(tenant, value)
            else:
                tx.create(tenant, value)
            return 1
        except ApiError as exc:
            if exc.code == 404 and (what == "status" or value is None):
                return 0  # gone: nothing to write
            if exc.code == 404:
                tx.create(tenant, value)
                return 1
            if exc.code == 409 and what == "pod" and value is not None:
                tx.update(tenant, value)
                return 1
            raise
