"""Site events: a site's recent history as Kubernetes-style ``Event`` objects (docs/events.md).

The leader follows the Sites and the Alerts. Each Site is reduced to the few facts that
matter to an operator (``SiteFacts``: phase, manifest generation applied, failed items, OS
version and last upgrade outcome, health colour, active alarms); an event is recorded when
a fact *changes*, never per report. Alerts add ``AlertFiring`` / ``AlertResolved`` for
each site entering or leaving an alert's firing instances.

Writes are batched: transitions queue in memory (identical ones merge) and every
``flush_interval`` they are written, ``MAX_BATCH`` per transaction. An event's name is
derived from its site, reason and message, so a repeat of the same event bumps ``count``
and ``lastTimestamp`` of the existing object instead of creating another one.

Retention: an event whose ``lastTimestamp`` is older than ``ttl`` is deleted by a periodic
sweep, and a site keeps at most ``per_site`` events (the oldest go first).

Restart-safe: at start (and on every resync) the facts are loaded from the stored Sites and
Alerts and nothing is recorded for what was already true. A transition observed but not yet
flushed when the process dies is lost (events are best effort, as in Kubernetes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import ALERT, EVENT, SITE

__all__ = ["COMPONENT", "SiteEventsController", "SiteFacts", "event_name", "facts_of", "recent_events"]
__all__ += ["transitions"]

log = logging.getLogger(__name__)
SiteKey = tuple[str, str]  # tenant, site
AlertKey = tuple[str, str, str]  # tenant, namespace, name
Transition = tuple[str, str, str]  # type, reason, message
COMPONENT = "fleetplane-site-events"
MAX_BATCH = 256
_COLOUR_RANK = {"green": 0, "orange": 1, "red": 2}


def _stamp(epoch: float) -> str:
    return _second(int(epoch))


@functools.lru_cache(maxsize=64)
def _second(epoch: int) -> str:
    # Every Event written in a fan-out is stamped within a few seconds: format each one once
    # (strftime was a quarter of this controller's time in a 10,000-site fan-out profile).
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: str | None) -> float:
    try:
        return dt.datetime.strptime(stamp or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0


def event_name(site: str, reason: str, message: str) -> str:
    """The dedupe key as an object name: the same site, reason and message is one Event."""
    digest = hashlib.sha256(f"{site}\0{reason}\0{message}".encode()).hexdigest()[:16]
    return f"{site[:200]}.{digest}"


@dataclass(frozen=True)
class SiteFacts:
    """What events are about, reduced from a Site's status."""

    phase: str = "Pending"
    applied: int | None = None  # the manifest generation last reported Applied
    failed: tuple[tuple[str, str], ...] = ()  # (section/name, reason), sorted
    os_version: str | None = None
    os_result: tuple[str, str, str, str] | None = None  # version, outcome, at, reason
    colour: str | None = None
    alarms: tuple[tuple[str, str, str], ...] = ()  # (id, severity, message), sorted


def facts_of(site: Obj) -> SiteFacts:
    status: dict[str, Any] = site.get("status") or {}
    manifest = status.get("manifest") or {}
    items = manifest.get("items") or []
    failed = sorted(
        (f"{i.get('section')}/{i.get('name')}", str(i.get("reason") or "no reason given"))
        for i in items
        if isinstance(i, dict) and i.get("state") == "Failed"
    )
    applied = manifest.get("generation") if manifest.get("state") == "Applied" else None
    os_status = status.get("os") or {}
    last = os_status.get("lastResult") or {}
    os_result = (
        (
            str(last.get("version")),
            str(last.get("outcome")),
            str(last.get("at") or ""),
            str(last.get("reason") or ""),
        )
        if last
        else None
    )
    alarms = sorted(
        (str(a.get("id")), str(a.get("severity")), str(a.get("message")))
        for a in (status.get("infra") or {}).get("alarms") or []
        if isinstance(a, dict)
    )
    return SiteFacts(
        phase=str(status.get("phase") or "Pending"),
        applied=applied if isinstance(applied, int) else None,
        failed=tuple(failed),
        os_version=os_status.get("current") or status.get("osVersion"),
        os_result=os_result,
        colour=(status.get("health") or {}).get("colour"),
        alarms=tuple(alarms),
    )


def _phase(old: str, new: str) -> list[Transition]:
    if old == new:
        return []
    if new == "Offline":
        return [("Warning", "SiteOffline", "site stopped reporting and went Offline")]
    if new == "Online":
        if old == "Offline":
            return [("Normal", "SiteOnline", "site is back Online")]
        return [("Normal", "SiteOnline", "site is Online")]
    if new == "Decommissioned":
        return [("Normal", "SiteDecommissioned", "site was decommissioned")]
    return []


def transitions(old: SiteFacts, new: SiteFacts) -> list[Transition]:
    """The events between two states of one site (none when nothing an operator cares about changed)."""
    out = _phase(old.phase, new.phase)
    if new.applied is not None and new.applied != old.applied:
        out.append(("Normal", "ManifestApplied", f"manifest revision {new.applied} applied"))
    before, after = dict(old.failed), dict(new.failed)
    for item, reason in new.failed:
        if before.get(item) != reason:
            out.append(("Warning", "ItemFailed", f"{item} failed: {reason}"))
    out += [("Normal", "ItemRecovered", f"{item} recovered") for item, _ in old.failed if item not in after]
    if new.os_version and old.os_version and new.os_version != old.os_version:
        out.append(
            ("Normal", "OsVersionChanged", f"OS version changed from {old.os_version} to {new.os_version}")
        )
    if new.os_result and new.os_result != old.os_result and new.os_result[1] == "FellBack":
        version, _, _, reason = new.os_result
        why = f": {reason}" if reason else ""
        out.append(("Warning", "OsFellBack", f"OS upgrade to {version} fell back{why}"))
    if new.colour and old.colour and new.colour != old.colour:
        worse = _COLOUR_RANK.get(new.colour, 0) > _COLOUR_RANK.get(old.colour, 0)
        out.append(
            ("Warning" if worse else "Normal", "HealthChanged", f"health went {old.colour} -> {new.colour}")
        )
    old_alarms = {a[0] for a in old.alarms}
    new_alarms = {a[0] for a in new.alarms}
    for alarm_id, severity, message in new.alarms:
        if alarm_id not in old_alarms:
            out.append(("Warning", "AlarmRaised", f"{severity} alarm {alarm_id}: {message}"))
    out += [("Normal", "AlarmCleared", f"alarm {a[0]} cleared") for a in old.alarms if a[0] not in new_alarms]
    return out


def firing_sites(alert: Obj) -> set[str]:
    status = alert.get("status") or {}
    if status.get("subject", "site") != "site":
        return set()
    instances = status.get("instances") or {}
    return {
        name for name, inst in instances.items() if isinstance(inst, dict) and inst.get("state") == "firing"
    }


@dataclass
class _Pending:
    tenant: str
    site: str
    uid: str | None
    type: str
    reason: str
    message: str
    first: float
    last: float
    count: int = 1


@dataclass
class _SiteIndex:
    """The stored events of one site: name -> lastTimestamp (epoch)."""

    events: dict[str, float] = field(default_factory=dict)


class SiteEventsController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        ttl: float = 3600.0,
        per_site: int = 50,
        flush_interval: float = 2.0,
        sweep_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.ttl = ttl
        self.per_site = per_site
        self.flush_interval = flush_interval
        self.sweep_interval = sweep_interval
        self.clock = clock
        self.facts: dict[SiteKey, SiteFacts] = {}
        self.uids: dict[SiteKey, str] = {}
        self.alerts: dict[AlertKey, tuple[set[str], str]] = {}  # firing sites, severity
        self.index: dict[SiteKey, _SiteIndex] = {}
        self.pending: dict[tuple[str, str], _Pending] = {}  # (tenant, event name) -> merged
        self.synced = asyncio.Event()
        self.writes = 0  # Event objects created or bumped (tests, metrics)

    async def run(self) -> None:
        await run_controller("site-events", self._sync_and_follow, self._helper)

    # -- following ---------------------------------------------------------------------------

    def load(self, objects: list[tuple[str, Obj]]) -> None:
        """A snapshot: the facts as they are (nothing recorded) and the stored events."""
        self.facts, self.uids, self.alerts, self.index = {}, {}, {}, {}
        for tenant, obj in objects:
            if obj["kind"] == SITE.kind:
                self._remember(tenant, obj)
            elif obj["kind"] == ALERT.kind:
                m = obj["metadata"]
                key = (tenant, m.get("namespace") or "", m["name"])
                self.alerts[key] = (firing_sites(obj), str((obj.get("spec") or {}).get("severity") or ""))
            elif obj["kind"] == EVENT.kind:
                spec = obj.get("spec") or {}
                site = (spec.get("involvedObject") or {}).get("name", "")
                index = self.index.setdefault((tenant, site), _SiteIndex())
                index.events[obj["metadata"]["name"]] = _epoch(spec.get("lastTimestamp"))

    def _remember(self, tenant: str, site: Obj) -> SiteFacts:
        key = (tenant, site["metadata"]["name"])
        facts = self.facts[key] = facts_of(site)
        if uid := site["metadata"].get("uid"):
            self.uids[key] = uid
        return facts

    def observe_site(self, tenant: str, site: Obj, added: bool = False) -> None:
        key = (tenant, site["metadata"]["name"])
        old = self.facts.get(key)
        new = self._remember(tenant, site)
        if old is None:
            if not added:
                return  # unknown before (a resync gap): what is true now is the baseline
            self.record(tenant, key[1], "Normal", "Registered", "site was accepted and registered")
            old = SiteFacts()
        for type_, reason, message in transitions(old, new):
            self.record(tenant, key[1], type_, reason, message)

    def forget_site(self, tenant: str, name: str) -> None:
        self.facts.pop((tenant, name), None)
        self.uids.pop((tenant, name), None)

    def observe_alert(self, tenant: str, alert: Obj, deleted: bool = False) -> None:
        m = alert["metadata"]
        key = (tenant, m.get("namespace") or "", m["name"])
        before, _ = self.alerts.get(key, (set(), ""))
        severity = str((alert.get("spec") or {}).get("severity") or "")
        now = set() if deleted else firing_sites(alert)
        if deleted:
            self.alerts.pop(key, None)
        else:
            self.alerts[key] = (now, severity)
        label = f"{key[1]}/{key[2]}"
        for site in sorted(now - before):
            self.record(tenant, site, "Warning", "AlertFiring", f"alert {label} is firing ({severity})")
        for site in sorted(before - now):
            self.record(tenant, site, "Normal", "AlertResolved", f"alert {label} resolved")

    def record(self, tenant: str, site: str, type_: str, reason: str, message: str) -> None:
        """Queue one event; a repeat before the next flush only bumps the queued count."""
        now = self.clock()
        name = event_name(site, reason, message)
        queued = self.pending.get((tenant, name))
        if queued is not None:
            queued.count += 1
            queued.last = now
            return
        uid = self.uids.get((tenant, site))
        self.pending[(tenant, name)] = _Pending(tenant, site, uid, type_, reason, message, now, now)

    async def _sync_and_follow(self) -> None:
        kinds = (SITE.kind, ALERT.kind, EVENT.kind)
        revision, objects = await asyncio.to_thread(self.store.scan, kinds)
        self.load(objects)
        self.synced.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, (SITE.kind, ALERT.kind)), since=revision):
            if ev.object["kind"] == SITE.kind:
                if ev.type is EventType.DELETED:
                    self.forget_site(ev.tenant, ev.object["metadata"]["name"])
                else:
                    self.observe_site(ev.tenant, ev.object, added=ev.type is EventType.ADDED)
            else:
                self.observe_alert(ev.tenant, ev.object, deleted=ev.type is EventType.DELETED)

    # -- writing -----------------------------------------------------------------------------

    async def _helper(self) -> None:
        next_sweep = self.clock() + self.sweep_interval
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
                if self.clock() >= next_sweep:
                    next_sweep = self.clock() + self.sweep_interval
                    await self.sweep()
            except Exception:
                log.exception("site events: write failed")

    async def flush(self) -> int:
        """Write the queued events (batched); how many Event objects were created or bumped.
        A site's events over the cap (or past the TTL) go in the same transaction."""
        due, self.pending = list(self.pending.values()), {}
        written = 0
        for start in range(0, len(due), MAX_BATCH):
            batch = due[start : start + MAX_BATCH]
            incoming: dict[SiteKey, dict[str, float]] = {}
            for p in batch:
                incoming.setdefault((p.tenant, p.site), {})[event_name(p.site, p.reason, p.message)] = p.last
            doomed = [(key, name) for key, extra in incoming.items() for name in self._doomed(key, extra)]
            try:
                written += await asyncio.to_thread(self._write, batch, doomed)
            except Exception as exc:
                log.warning("could not write site events: %s", exc)
                for p in batch:  # keep them for the next flush
                    self.pending.setdefault((p.tenant, event_name(p.site, p.reason, p.message)), p)
        self.writes += written
        return written

    async def sweep(self) -> int:
        """Delete events past the TTL or over the per-site cap; how many deleted."""
        doomed = [(key, name) for key in sorted(self.index) for name in self._doomed(key, {})]
        for start in range(0, len(doomed), MAX_BATCH):
            await asyncio.to_thread(self._write, [], doomed[start : start + MAX_BATCH])
        return len(doomed)

    def _doomed(self, key: SiteKey, extra: dict[str, float]) -> list[str]:
        """A site's events to delete once ``extra`` (name -> last seen) is written: those
        past the TTL, then the oldest over the per-site cap."""
        index = self.index.get(key)
        events = {**(index.events if index else {}), **extra}
        if len(events) <= self.per_site and min(events.values(), default=0.0) >= self.clock() - self.ttl:
            return []
        cutoff = self.clock() - self.ttl
        ranked = sorted(events.items(), key=lambda item: (-item[1], item[0]))
        keep = {name for name, last in ranked[: self.per_site] if last >= cutoff}
        return sorted(name for name in events if name not in keep)

    def _write(self, batch: list[_Pending], deletes: list[tuple[SiteKey, str]]) -> int:
        count = 0
        with self.store.batch() as tx:
            for p in batch:
                name = event_name(p.site, p.reason, p.message)
                current = tx.get_or_none(p.tenant, EVENT.kind, "", name)
                if current is None:
                    involved: dict[str, Any] = {"kind": SITE.kind, "name": p.site}
                    if p.uid:
                        involved["uid"] = p.uid
                    spec = {
                        "involvedObject": involved,
                        "reason": p.reason,
                        "message": p.message,
                        "type": p.type,
                        "count": p.count,
                        "firstTimestamp": _stamp(p.first),
                        "lastTimestamp": _stamp(p.last),
                        "source": {"component": COMPONENT},
                    }
                    tx.create(p.tenant, EVENT.normalize({"metadata": {"name": name}, "spec": spec}))
                else:
                    bumped: dict[str, Any] = dict(current.get("spec") or {})
                    bumped["count"] = int(bumped.get("count") or 0) + p.count
                    bumped["lastTimestamp"] = _stamp(p.last)
                    tx.update(p.tenant, {**current, "spec": bumped}, stored=current)
                count += 1
            for (tenant, _), name in deletes:
                try:
                    tx.delete(tenant, EVENT.kind, "", name)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
        for p in batch:  # committed: the index follows
            self.index.setdefault((p.tenant, p.site), _SiteIndex()).events[
                event_name(p.site, p.reason, p.message)
            ] = p.last
        for key, name in deletes:
            if (held := self.index.get(key)) is not None:
                held.events.pop(name, None)
                if not held.events:
                    del self.index[key]
        return count


def recent_events(
    store: Store, tenant: str, site: str, controller: object = None, limit: int = 20
) -> list[Obj]:
    """A site's newest events (at most ``limit``), as the console's site page shows them.
    With the leader's controller at hand its index names them (a few gets); otherwise the
    Events of the tenant are listed with a field filter."""
    if isinstance(controller, SiteEventsController) and controller.synced.is_set():
        names = list((controller.index.get((tenant, site)) or _SiteIndex()).events)
        items = [o for n in names if (o := store.get_or_none(tenant, EVENT.kind, "", n)) is not None]
    else:

        def mine(obj: Obj) -> bool:
            involved = (obj.get("spec") or {}).get("involvedObject") or {}
            return bool(involved.get("kind") == SITE.kind and involved.get("name") == site)

        items = store.list(tenant, EVENT.kind, field_filter=mine).items
    specs = [o.get("spec") or {} for o in items]
    specs.sort(
        key=lambda s: (str(s.get("lastTimestamp") or ""), str(s.get("firstTimestamp") or "")), reverse=True
    )
    keep = ("type", "reason", "message", "count", "firstTimestamp", "lastTimestamp")
    return [{k: s.get(k) for k in keep} for s in specs[:limit]]
