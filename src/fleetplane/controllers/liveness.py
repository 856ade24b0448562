"""Site liveness: ``Offline`` when a site's ``lastSeen`` is older than ``offline_after``,
``Online`` again when it reports.

An in-memory map of every site's last report, fed by one hub watch over Sites, and a heap
of deadlines (stale entries are skipped lazily): a tick looks only at the top of the heap,
so 10,000 sites cost nothing between deadlines, and no tick lists the store.

Back to ``Online``: the site-status write path may set it itself; if a report leaves a
site ``Offline`` (or ``Pending``) with a fresh ``lastSeen``, this controller sets it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import time
from collections.abc import Callable

from fleetplane.controllers.loop import Deadline, StallWatch, push_deadline, run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import SITE

log = logging.getLogger(__name__)
SiteKey = tuple[str, str]
RETRIES = 10
# Phases a report brings back to Online; a site never leaves Decommissioned by reporting.
REVIVED = ("Offline", "Pending")


def seen_at(last_seen: object, now: float) -> float | None:
    """When a site last reported, in epoch seconds (never in the future).

    ``lastSeen`` is RFC 3339; with whole seconds it may be up to 1 s earlier than the
    report, so the site is credited with the end of that second."""
    if not isinstance(last_seen, str) or not last_seen:
        return None
    try:
        when = dt.datetime.fromisoformat(last_seen.replace("Z", "+00:00"))
    except ValueError:
        return now  # unreadable: the report itself is the evidence
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ts = when.timestamp() + (0.999 if when.microsecond == 0 else 0.0)
    return min(ts, now)


class LivenessController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        offline_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.offline_after = offline_after
        self.clock = clock
        self.tick = max(0.05, min(1.0, offline_after / 4))
        self.seen: dict[SiteKey, float] = {}
        self.phase: dict[SiteKey, str] = {}
        self._heap: list[tuple[float, str, str]] = []  # (deadline, tenant, name); lazily invalidated
        self.synced = asyncio.Event()
        # When this controller began watching (server start or leadership). A site is not
        # blamed for silence while the control plane itself was down: its clock starts here.
        self.started: float | None = None

    async def run(self) -> None:
        await run_controller("liveness", self._sync_and_follow, self._tick_loop)

    def _observe(self, tenant: str, obj: Obj) -> bool:
        """Record a site; return whether a fresh report left it Offline/Pending."""
        key = (tenant, obj["metadata"]["name"])
        status = obj.get("status") or {}
        now = self.clock()
        phase = str(status.get("phase") or "Pending")
        self.phase[key] = phase
        ts = self._credited(seen_at(status.get("lastSeen"), now))
        if ts is None:
            self.seen.pop(key, None)
            return False
        if self.seen.get(key) != ts:
            self.seen[key] = ts
            push_deadline(
                self._heap, (ts + self.offline_after, *key), live=len(self.seen), valid=self._current
            )
        return phase in REVIVED and now - ts < self.offline_after

    def _current(self, entry: Deadline) -> bool:
        """Whether a heap entry is the site's current deadline (``expire`` skips the others)."""
        ts = self.seen.get((entry[1], entry[2]))
        return ts is not None and ts + self.offline_after == entry[0]

    def _credited(self, ts: float | None) -> float | None:
        if ts is None or self.started is None:
            return ts
        return max(ts, self.started)

    async def _sync_and_follow(self) -> None:
        if self.started is None:
            self.started = self.clock()
        revision, objects = await asyncio.to_thread(self.store.scan, (SITE.kind,))
        self.seen, self.phase, self._heap = {}, {}, []
        revive = [(t, o["metadata"]["name"]) for t, o in objects if self._observe(t, o)]
        self.synced.set()
        for key in revive:
            await self._set_phase(key, "Online")
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, (SITE.kind,)), since=revision):
            key = (ev.tenant, ev.name)
            if ev.type is EventType.DELETED:
                self.seen.pop(key, None)
                self.phase.pop(key, None)
                continue
            if self._observe(ev.tenant, ev.object):
                await self._set_phase(key, "Online")

    async def _tick_loop(self) -> None:
        stalls = StallWatch(slack=self.offline_after / 4)
        while True:
            stalls.mark()
            await asyncio.sleep(self.tick)
            late = stalls.stalled(self.tick)
            if late is not None:
                self.forgive(late)
            try:
                await self.expire()
            except Exception:
                log.exception("liveness check failed")

    def forgive(self, late: float) -> None:
        """The control plane did not watch sites for ``late`` seconds: every site's silence
        counts from now, as after a restart (a stall is no site's fault)."""
        self.started = self.clock()
        log.warning(
            "liveness: the control plane did not watch sites for %.1f s (stopped or overloaded); "
            "no site is marked Offline for that time",
            late,
        )

    async def expire(self) -> list[SiteKey]:
        """Mark Offline every site whose deadline passed; return them."""
        now = self.clock()
        gone = []
        while self._heap and self._heap[0][0] <= now:
            deadline, tenant, name = heapq.heappop(self._heap)
            key = (tenant, name)
            ts = self.seen.get(key)
            if ts is None or ts + self.offline_after != deadline:
                continue  # superseded by a later report, or deleted
            credited = self._credited(ts)
            if credited is not None and credited > ts:  # a stall since: its clock restarts
                self.seen[key] = credited
                heapq.heappush(self._heap, (credited + self.offline_after, *key))
                continue
            if self.phase.get(key) in ("Offline", "Decommissioned"):
                continue
            done = await self._set_phase(key, "Offline")
            if done is True:
                gone.append(key)
            elif isinstance(done, float) and key in self.seen:
                # The stored lastSeen is later than the watch told (a report in between, or a
                # whole-second stamp credited to the end of its second): wait for that one.
                self.seen[key] = done - self.offline_after
                heapq.heappush(self._heap, (done, *key))
        return gone

    async def _set_phase(self, key: SiteKey, phase: str) -> bool | float:
        try:
            return await asyncio.to_thread(self._write_phase, key, phase)
        except ApiError as exc:
            log.warning("could not mark site %s/%s %s: %s", *key, phase, exc.message)
            return False

    def _write_phase(self, key: SiteKey, phase: str) -> bool | float:
        """Write the phase; ``True`` if written, ``False`` if not needed, or (going Offline)
        the later deadline of a site that the stored object shows still fresh."""
        tenant, name = key
        for _ in range(RETRIES):
            site = self.store.get_or_none(tenant, SITE.kind, "", name)
            if site is None:
                return False
            status = dict(site.get("status") or {})
            current = status.get("phase") or "Pending"
            ts = self._credited(seen_at(status.get("lastSeen"), self.clock()))
            fresh = ts is not None and self.clock() - ts < self.offline_after
            # Recheck on the stored object: a report may have landed since the watch said otherwise.
            if (
                phase == "Offline"
                and ts is not None
                and fresh
                and current not in ("Offline", "Decommissioned")
            ):
                return ts + self.offline_after
            if phase == "Offline" and (ts is None or current in ("Offline", "Decommissioned")):
                return False
            if phase == "Online" and (not fresh or current not in REVIVED):
                return False
            status["phase"] = phase
            try:
                self.store.update(tenant, {**site, "status": status}, part="status")
                log.info("site %s/%s is %s", tenant, name, phase)
                return True
            except ApiError as exc:
                if exc.reason != "Conflict":
                    raise
        return False
