"""Fleet health: every site's score kept current in memory, written into ``Site.status.health``.

``FleetHealth`` is the in-memory view, fed by one hub watch over Sites, VirtualSites, the
policy kinds (which hit keys are denials) and Rollouts (progress gauges): per site its
labels, phase, load, health (``controllers/health.py``) and the part of its status that
scoring reads (``scored_status``: not the whole report); per tenant a label index, so a
virtual site's members are one selector evaluation, never a store scan. The read API
(virtual-site health summary) and ``/metrics`` are answered from it.

``HealthController`` runs the view on every replica (so each can answer reads) and, where it
leads (``enable_writes``), writes a site's ``status.health`` only when it differs from the
stored one (``observedAt`` aside), at most once per ``min_interval`` per site, in one
transaction per flush. A report that does not move the score writes nothing; one that does
carries its new score in its own write (``score_report``, called by the status writer), so the
flush has nothing left to write for it; the Site event of that write then takes the score the
writer computed (``prescored``) instead of computing it a second time. Time alone moves a
score (a late heartbeat, a certificate nearing expiry): each result says when it will change
next, and a heap of those deadlines is all a tick looks at.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetplane.controllers.health import (
    Health,
    Scored,
    deny_keys_of,
    disk_percent,
    evaluate,
    load_percent,
    scored_status,
    summarize,
)
from fleetplane.controllers.loop import Deadline, StallWatch, push_deadline, run_controller
from fleetplane.controllers.membership import selector_of
from fleetplane.core.errors import ApiError
from fleetplane.core.label_index import LabelIndex
from fleetplane.core.objects import Obj, labels_of, now_rfc3339
from fleetplane.core.selectors import Selector
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import NETWORK_POLICY, SERVICE_POLICY, SITE, VIRTUAL_SITE

log = logging.getLogger(__name__)
SiteKey = tuple[str, str]  # tenant, site
VsKey = tuple[str, str, str]  # tenant, namespace, name
PolicyKey = tuple[str, str, str, str]  # tenant, kind, namespace, name
ROLLOUT_KIND = "Rollout"
POLICY_KINDS = (NETWORK_POLICY.kind, SERVICE_POLICY.kind)
KINDS = (SITE.kind, VIRTUAL_SITE.kind, *POLICY_KINDS, ROLLOUT_KIND)
MAX_BATCH = 256
_NO_DENY: frozenset[str] = frozenset()


@dataclass(slots=True)
class SiteEntry:
    name: str
    status: dict[str, Any]  # what scoring reads of the Site's status (``scored_status``)
    phase: str
    health: Health
    cpu: float | None
    memory: float | None
    disk: float | None
    stored: dict[str, Any] | None  # the stored status.health, less observedAt
    # False for a site that never reported (no lastSeen): it has no health yet and is
    # left out of summaries and colour counts, and nothing is written for it.
    reported: bool = True

    @property
    def last_seen(self) -> str | None:
        value = self.status.get("lastSeen")
        return value if isinstance(value, str) else None


def _stored_health(status: dict[str, Any]) -> dict[str, Any] | None:
    health = status.get("health")
    if not isinstance(health, dict):
        return None
    return {k: v for k, v in health.items() if k != "observedAt"}


class FleetHealth:
    """Every site's health and load, and what a summary or a scrape needs, in memory."""

    def __init__(self, *, offline_after: float = 30.0, not_before: float | None = None) -> None:
        self.offline_after = offline_after
        self.not_before = not_before
        self.sites: dict[SiteKey, SiteEntry] = {}
        self.index: dict[str, LabelIndex[str]] = {}
        self.virtual: dict[VsKey, Selector] = {}
        self.policies: dict[PolicyKey, frozenset[str]] = {}
        self.deny: dict[str, frozenset[str]] = {}  # tenant -> every deny hit key
        self.rollouts: dict[VsKey, dict[str, Any]] = {}  # (tenant, ns, name) -> status

    # -- feeding -----------------------------------------------------------------------------

    def evaluate(self, tenant: str, name: str, status: dict[str, Any], now: float) -> Health:
        return evaluate(
            {"status": status},
            now,
            offline_after=self.offline_after,
            deny_keys=self.deny.get(tenant, frozenset()),
            not_before=self.not_before,
        )

    def set_site(self, tenant: str, obj: Obj, now: float, health: Health | None = None) -> SiteEntry:
        """Fold a Site in; ``health``: its score, when already computed for this very object."""
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        self.index.setdefault(tenant, LabelIndex()).set(name, labels_of(obj))
        cpu, memory = load_percent(status)
        entry = SiteEntry(
            name=name,
            status=scored_status(status),
            phase=str(status.get("phase") or "Pending"),
            health=health if health is not None else self.evaluate(tenant, name, status, now),
            cpu=cpu,
            memory=memory,
            disk=disk_percent(status),
            stored=_stored_health(status),
            reported=bool(status.get("lastSeen")),
        )
        self.sites[(tenant, name)] = entry
        return entry

    def refresh(self, key: SiteKey, now: float) -> SiteEntry | None:
        """Evaluate a site again (time passed, or its tenant's policies changed)."""
        entry = self.sites.get(key)
        if entry is not None:
            entry.health = self.evaluate(key[0], key[1], entry.status, now)
        return entry

    def remove_site(self, tenant: str, name: str) -> None:
        self.sites.pop((tenant, name), None)
        index = self.index.get(tenant)
        if index is not None:
            index.discard(name)

    def set_policy(self, tenant: str, obj: Obj) -> bool:
        """Fold a policy in; whether its tenant's deny keys changed."""
        m = obj["metadata"]
        key = (tenant, obj["kind"], m.get("namespace") or "", m["name"])
        keys = frozenset(deny_keys_of(key[1], key[2], key[3], obj.get("spec") or {}))
        if self.policies.get(key) == keys:
            return False
        self.policies[key] = keys
        return self._rebuild_deny(tenant)

    def remove_policy(self, tenant: str, obj: Obj) -> bool:
        m = obj["metadata"]
        if self.policies.pop((tenant, obj["kind"], m.get("namespace") or "", m["name"]), None) is None:
            return False
        return self._rebuild_deny(tenant)

    def _rebuild_deny(self, tenant: str) -> bool:
        keys = frozenset().union(*(v for k, v in self.policies.items() if k[0] == tenant))
        if self.deny.get(tenant, frozenset()) == keys:
            return False
        self.deny[tenant] = keys
        return True

    def set_virtual_site(self, tenant: str, obj: Obj) -> None:
        m = obj["metadata"]
        self.virtual[(tenant, m.get("namespace") or "", m["name"])] = selector_of(obj)

    def remove_virtual_site(self, tenant: str, obj: Obj) -> None:
        m = obj["metadata"]
        self.virtual.pop((tenant, m.get("namespace") or "", m["name"]), None)

    def set_rollout(self, tenant: str, obj: Obj, deleted: bool) -> None:
        m = obj["metadata"]
        key = (tenant, m.get("namespace") or "", m["name"])
        if deleted:
            self.rollouts.pop(key, None)
        else:
            status = obj.get("status") or {}
            self.rollouts[key] = {"phase": status.get("phase"), "counts": status.get("counts") or {}}

    # -- reading -----------------------------------------------------------------------------

    def site_names(self, tenant: str) -> list[str]:
        return sorted(name for t, name in self.sites if t == tenant)

    def members(self, key: VsKey) -> set[str] | None:
        """The site names a virtual site selects; None for an unknown virtual site."""
        selector = self.virtual.get(key)
        if selector is None:
            return None
        index = self.index.get(key[0])
        return index.select(selector) if index is not None else set()

    def entries(self, tenant: str, names: set[str] | None = None) -> Iterator[SiteEntry]:
        """The tenant's sites that have a health (of ``names`` only, when given)."""
        if names is None:
            yield from (e for (t, _), e in self.sites.items() if t == tenant and e.reported)
            return
        for name in names:
            entry = self.sites.get((tenant, name))
            if entry is not None and entry.reported:
                yield entry

    def summary_of(self, tenant: str, worst: int = 10) -> dict[str, Any]:
        """The same over every site of the tenant."""
        return summarize((Scored(e.name, e.health) for e in self.entries(tenant)), worst)

    def summary(self, key: VsKey, worst: int = 10) -> dict[str, Any] | None:
        """Counts per colour, score histogram and the worst sites of one virtual site."""
        members = self.members(key)
        if members is None:
            return None
        scored = (Scored(e.name, e.health) for e in self.entries(key[0], members))
        return summarize(scored, worst)


@dataclass(frozen=True, slots=True)
class Prescored:
    """A score the status writer computed for the Site it wrote at ``revision``, against the
    tenant's deny keys ``deny`` (the very frozenset, compared by identity)."""

    revision: str
    health: Health
    deny: frozenset[str]


class HealthController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        offline_after: float = 30.0,
        min_interval: float = 5.0,
        tick: float = 1.0,
        write: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.offline_after = offline_after
        self.min_interval = min_interval
        self.tick = tick
        self.writing = write
        self.clock = clock
        self.started: float | None = None
        self.view = FleetHealth(offline_after=offline_after)
        self.synced = asyncio.Event()
        self.writes = 0  # site statuses written (tests, metrics)
        self._dirty: set[SiteKey] = set()
        self._last_write: dict[SiteKey, float] = {}
        self._heap: list[tuple[float, str, str]] = []  # (when, tenant, name): lazily invalidated
        self._wake = asyncio.Event()
        # Written by the status writer's thread, taken by the Site event of that write.
        self._prescored: dict[SiteKey, Prescored] = {}

    def enable_writes(self) -> None:
        """This replica leads: from now on it writes ``status.health``."""
        self.writing = True
        self._dirty |= {
            k for k, e in self.view.sites.items() if e.reported and e.health.to_status() != e.stored
        }
        self._wake.set()

    async def run(self) -> None:
        await run_controller("health", self._sync_and_follow, self._flush_loop)

    def score_report(
        self, tenant: str, name: str, status: dict[str, Any]
    ) -> tuple[dict[str, Any], Prescored] | None:
        """The ``status.health`` to store with a status report the server is writing, so that
        a report which moves the score needs no second write (and event) from the flush, and
        the score itself, for :meth:`prescored` once the write committed. None where this
        replica does not write health. Safe from any thread (reads the view only)."""
        if not self.writing or not self.synced.is_set():
            return None
        deny = self.view.deny.get(tenant, _NO_DENY)
        health = self.view.evaluate(tenant, name, status, self.clock())
        wanted = health.to_status()
        current = status.get("health")
        if _stored_health(status) == wanted and isinstance(current, dict):
            stored = current  # unchanged: keep its observedAt, as the flush would
        else:
            stored = {**wanted, "observedAt": now_rfc3339()}
        return stored, Prescored("", health, deny)

    def prescored(self, tenant: str, name: str, revision: str, scored: Prescored) -> None:
        """The status writer is committing ``scored`` for the Site at ``revision``: its event
        takes that score instead of computing it again. Safe from any thread."""
        self._prescored[(tenant, name)] = Prescored(revision, scored.health, scored.deny)

    def forget_prescored(self, tenant: str, name: str) -> None:
        """The write :meth:`prescored` announced did not commit. Safe from any thread."""
        self._prescored.pop((tenant, name), None)

    def _taken(self, key: SiteKey, obj: Obj) -> Health | None:
        """The writer's score for exactly this Site object, if it is still valid."""
        pre = self._prescored.get(key)
        if pre is None:
            return None
        revision = int(obj["metadata"].get("resourceVersion") or 0)
        if revision < int(pre.revision):
            return None  # an earlier write of the site: the score is for a later one
        self._prescored.pop(key, None)
        if revision != int(pre.revision):
            return None
        # Another policy folded since: the deny keys the writer scored against are stale.
        return pre.health if pre.deny is self.view.deny.get(key[0], _NO_DENY) else None

    def _current(self, deadline: Deadline) -> bool:
        """Whether a heap entry is the site's current re-evaluation time (``expire`` skips the others)."""
        entry = self.view.sites.get((deadline[1], deadline[2]))
        return entry is not None and entry.health.valid_until == deadline[0]

    def _track(self, key: SiteKey, entry: SiteEntry) -> None:
        if entry.health.valid_until is not None:
            deadline = (entry.health.valid_until, *key)
            push_deadline(self._heap, deadline, live=len(self.view.sites), valid=self._current)
        if entry.reported and entry.health.to_status() != entry.stored:
            self._dirty.add(key)

    def _fold(self, tenant: str, obj: Obj, deleted: bool) -> None:
        kind = obj["kind"]
        now = self.clock()
        if kind == SITE.kind:
            key = (tenant, obj["metadata"]["name"])
            if deleted:
                self.view.remove_site(*key)
                self._dirty.discard(key)
                self._last_write.pop(key, None)
                self._prescored.pop(key, None)
            else:
                self._track(key, self.view.set_site(tenant, obj, now, self._taken(key, obj)))
        elif kind == VIRTUAL_SITE.kind:
            if deleted:
                self.view.remove_virtual_site(tenant, obj)
            else:
                self.view.set_virtual_site(tenant, obj)
        elif kind in POLICY_KINDS:
            moved = self.view.remove_policy(tenant, obj) if deleted else self.view.set_policy(tenant, obj)
            if moved:  # every site of the tenant: its denial share may have moved
                for name in self.view.site_names(tenant):
                    entry = self.view.refresh((tenant, name), now)
                    if entry is not None:
                        self._track((tenant, name), entry)
        elif kind == ROLLOUT_KIND:
            self.view.set_rollout(tenant, obj, deleted)

    async def _sync_and_follow(self) -> None:
        if self.started is None:
            self.started = self.clock()
        revision, objects = await asyncio.to_thread(self.store.scan, KINDS)
        self.view = FleetHealth(offline_after=self.offline_after, not_before=self.started)
        self._dirty, self._heap = set(), []
        order = {
            kind: i for i, kind in enumerate((*POLICY_KINDS, VIRTUAL_SITE.kind, ROLLOUT_KIND, SITE.kind))
        }
        for tenant, obj in sorted(objects, key=lambda item: order[item[1]["kind"]]):
            self._fold(tenant, obj, deleted=False)
        self.synced.set()
        self._wake.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, KINDS), since=revision):
            # No wake per event: the flush loop's tick picks the dirty sites up. Waking on
            # every report made each report scan all dirty sites (O(N^2) at 10,000 sites).
            self._fold(ev.tenant, ev.object, ev.type is EventType.DELETED)

    def forgive(self, late: float) -> None:
        """The control plane did not watch for ``late`` seconds: heartbeats count from now, as
        after a restart, so no site turns late or unreachable for the stall."""
        self.started = self.view.not_before = self.clock()
        log.warning(
            "health: the control plane did not watch sites for %.1f s (stopped or overloaded); "
            "no site loses connectivity for that time",
            late,
        )

    def expire(self) -> int:
        """Evaluate again every site whose result the passing time has changed; how many."""
        now = self.clock()
        count = 0
        while self._heap and self._heap[0][0] <= now:
            when, tenant, name = heapq.heappop(self._heap)
            entry = self.view.sites.get((tenant, name))
            if entry is None or entry.health.valid_until != when:
                continue  # superseded by a later report, or deleted
            entry = self.view.refresh((tenant, name), now)
            if entry is not None:
                self._track((tenant, name), entry)
                count += 1
        return count

    async def _flush_loop(self) -> None:
        stalls = StallWatch(slack=self.offline_after / 4)
        while True:
            stalls.mark()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick)
            late = stalls.stalled(self.tick)
            self._wake.clear()
            if late is not None:
                self.forgive(late)
            try:
                self.expire()
                if self.writing:
                    await self.flush()
            except Exception:
                log.exception("health flush failed")

    async def flush(self) -> int:
        """Write every dirty site's health that differs from the stored one and whose last
        write is at least ``min_interval`` old; how many were written."""
        now = self.clock()
        due: list[tuple[SiteKey, dict[str, Any]]] = []
        for key in sorted(self._dirty):
            entry = self.view.sites.get(key)
            if entry is None:
                self._dirty.discard(key)
                continue
            wanted = entry.health.to_status()
            if wanted == entry.stored:
                self._dirty.discard(key)
                continue
            if now - self._last_write.get(key, float("-inf")) < self.min_interval:
                continue  # coalesce: written again once its interval has passed (the tick)
            self._dirty.discard(key)
            due.append((key, wanted))
        written = 0
        for start in range(0, len(due), MAX_BATCH):
            batch = due[start : start + MAX_BATCH]
            try:
                done = await asyncio.to_thread(self._write, batch)
            except Exception as exc:
                log.warning("could not write site health: %s", exc)
                self._dirty |= {key for key, _ in batch}
                continue
            wrote = dict(batch)
            for key in done:
                self._last_write[key] = now
                entry = self.view.sites.get(key)
                if entry is not None:
                    # What this write stored, not the entry's score now: an event folded
                    # while the write ran (a policy, a report) may have moved the score
                    # since, and then the site is still due.
                    entry.stored = wrote[key]
                    if entry.health.to_status() != entry.stored:
                        self._dirty.add(key)
            written += len(done)
        self.writes += written
        return written

    def _write(self, batch: list[tuple[SiteKey, dict[str, Any]]]) -> list[SiteKey]:
        done = []
        stamp = now_rfc3339()
        with self.store.batch() as tx:
            for (tenant, name), wanted in batch:
                site = tx.get_or_none(tenant, SITE.kind, "", name)
                if site is None:
                    continue
                status = dict(site.get("status") or {})
                if _stored_health(status) == wanted:
                    done.append((tenant, name))
                    continue
                status["health"] = {**wanted, "observedAt": stamp}
                try:
                    tx.update(tenant, {**site, "status": status}, part="status", stored=site)
                except ApiError as exc:
                    log.warning("could not write the health of site %s/%s: %s", tenant, name, exc.message)
                    continue
                done.append((tenant, name))
        return done
