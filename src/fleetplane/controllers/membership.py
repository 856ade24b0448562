"""Virtual-site membership: which sites each virtual site selects, kept current.

``Membership`` is the pure in-memory engine (one label index per tenant, set algebra
for a whole selector, per-site matching for a relabel); ``MembershipController`` feeds
it from the store's watch and writes each changed virtual site's status. Level-triggered:
on start (or after losing the watch) it rebuilds from a snapshot and writes only the
statuses that differ, so a restart at any point loses nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.label_index import LabelIndex
from fleetplane.core.objects import Obj, labels_of
from fleetplane.core.selectors import Selector, SelectorError, parse_any
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import SITE, VIRTUAL_SITE
from fleetplane.kinds.virtualsite import MAX_LISTED_MEMBERS

log = logging.getLogger(__name__)
VsKey = tuple[str, str, str]  # tenant, namespace, name


@dataclass
class _Virtual:
    selector: Selector
    generation: int
    members: set[str] = field(default_factory=set)


class Membership:
    """Membership of every virtual site of every tenant, in memory."""

    def __init__(self) -> None:
        self.sites: dict[str, LabelIndex[str]] = {}
        self.virtual: dict[VsKey, _Virtual] = {}
        self._by_tenant: dict[str, set[VsKey]] = {}

    def _index(self, tenant: str) -> LabelIndex[str]:
        return self.sites.setdefault(tenant, LabelIndex())

    def set_site(self, tenant: str, name: str, labels: Mapping[str, str]) -> set[VsKey]:
        """Add or relabel a site; return the virtual sites whose members changed."""
        self._index(tenant).set(name, labels)
        return self._rematch(tenant, name, labels)

    def remove_site(self, tenant: str, name: str) -> set[VsKey]:
        index = self._index(tenant)
        if name in index:
            index.remove(name)
        return self._rematch(tenant, name, None)

    def _rematch(self, tenant: str, name: str, labels: Mapping[str, str] | None) -> set[VsKey]:
        changed = set()
        for key in self._by_tenant.get(tenant, ()):
            vs = self.virtual[key]
            now = labels is not None and vs.selector.matches(labels)
            if now != (name in vs.members):
                if now:
                    vs.members.add(name)
                else:
                    vs.members.discard(name)
                changed.add(key)
        return changed

    def set_virtual_site(self, key: VsKey, selector: Selector, generation: int) -> bool:
        """Add or change a virtual site; return whether its members were (re)computed."""
        old = self.virtual.get(key)
        if old is not None and str(old.selector) == str(selector):
            old.generation = generation
            return False
        self.virtual[key] = _Virtual(selector, generation, self._index(key[0]).select(selector))
        self._by_tenant.setdefault(key[0], set()).add(key)
        return True

    def remove_virtual_site(self, key: VsKey) -> None:
        self.virtual.pop(key, None)
        self._by_tenant.get(key[0], set()).discard(key)

    def recompute_all(self) -> None:
        for key, vs in self.virtual.items():
            vs.members = self._index(key[0]).select(vs.selector)

    def status_of(self, key: VsKey) -> dict[str, Any]:
        vs = self.virtual[key]
        listed = heapq.nsmallest(MAX_LISTED_MEMBERS, vs.members)
        return {
            "observedGeneration": vs.generation,
            "selector": str(vs.selector),
            "memberCount": len(vs.members),
            "members": listed,
            "membersTruncated": len(vs.members) > len(listed),
        }


def selector_of(obj: Obj) -> Selector:
    try:
        return parse_any((obj.get("spec") or {}).get("selector"))
    except SelectorError:
        # Validation refuses bad selectors; an old stored one selects nothing rather than everything.
        return parse_any("fleetplane.io/invalid-selector,!fleetplane.io/invalid-selector")


class MembershipController:
    def __init__(self, store: Store, hub: WatchHub, *, flush_delay: float = 0.02) -> None:
        self.store = store
        self.hub = hub
        self.flush_delay = flush_delay
        self.state = Membership()
        self._dirty: set[VsKey] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await run_controller("membership", self._sync_and_follow, self._flush_loop)

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, (SITE.kind, VIRTUAL_SITE.kind))
        state = Membership()
        for tenant, obj in objects:
            m = obj["metadata"]
            if obj["kind"] == SITE.kind:
                state._index(tenant).set(m["name"], labels_of(obj))
        for tenant, obj in objects:
            if obj["kind"] == VIRTUAL_SITE.kind:
                m = obj["metadata"]
                key = (tenant, m["namespace"], m["name"])
                state.set_virtual_site(key, selector_of(obj), int(m.get("generation", 1)))
                if (obj.get("status") or {}) != state.status_of(key):
                    self._dirty.add(key)
        self.state = state
        self._wake.set()
        flt = WatchFilter(tenant=ANY_TENANT, kinds=(SITE.kind, VIRTUAL_SITE.kind))
        async for ev in self.hub.watch(flt, since=revision):
            m = ev.object["metadata"]
            if ev.kind == SITE.kind:
                if ev.type is EventType.DELETED:
                    self._dirty |= state.remove_site(ev.tenant, ev.name)
                else:
                    self._dirty |= state.set_site(ev.tenant, ev.name, labels_of(ev.object))
            else:
                key = (ev.tenant, ev.namespace, ev.name)
                if ev.type is EventType.DELETED:
                    state.remove_virtual_site(key)
                    self._dirty.discard(key)
                    continue
                state.set_virtual_site(key, selector_of(ev.object), int(m.get("generation", 1)))
                if (ev.object.get("status") or {}) != state.status_of(key):
                    self._dirty.add(key)
            if self._dirty:
                self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_delay)  # coalesce a burst of relabels into one write
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                if key not in self.state.virtual:
                    continue
                status = self.state.status_of(key)
                obj = {
                    "kind": VIRTUAL_SITE.kind,
                    "metadata": {"name": key[2], "namespace": key[1]},
                    "status": status,
                }
                try:
                    await asyncio.to_thread(self.store.update, key[0], obj, part="status")
                except ApiError as exc:
                    if exc.code != 404:
                        log.warning("could not write status of %s: %s", key, exc.message)
                        self._dirty.add(key)
                        self._wake.set()
