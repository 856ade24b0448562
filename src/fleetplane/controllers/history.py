"""Intent history: one ``IntentRevision`` per generation of every intent, bounded.

Level-triggered like every controller (``controllers/loop.py``): from a snapshot of the
intents, their revisions and the Rollouts, then the watch, it makes sure that

- the current generation of every intent has its revision (``spec.spec`` = the intent's spec
  then, ``spec.intent`` = kind, name, generation and the intent's uid);
- per intent at most ``MAX_REVISIONS`` are kept, plus every revision a stored ``Rollout`` of
  the intent names (its revision and previous revision), since the compile may still give
  a site one of those;
- an intent's revisions go when the intent goes (or when a new intent of the same name
  replaced it: another uid).

A generation that came and went while the controller was down leaves no revision; the
compile then skips it (docs/rollouts.md, "Intent history").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.controllers.sections import SECTIONS, SectionRegistry
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import INTENT_REVISION, ROLLOUT
from fleetplane.kinds.history import MAX_REVISIONS, revision_name

log = logging.getLogger(__name__)
COALESCE_S = 0.02  # changes to one intent within this of a write share the next one
Intent = tuple[str, str, str, str]  # tenant, kind, namespace, name


@dataclass
class _Known:
    current: Obj | None = None
    revisions: dict[int, str] = field(default_factory=dict)  # generation -> intent uid
    named: dict[str, set[int]] = field(default_factory=dict)  # Rollout name -> revisions it names
    seen: dict[int, Obj] = field(default_factory=dict)  # generations seen, not yet stored


def _intent_of(tenant: str, obj: Obj) -> tuple[Intent, int, str] | None:
    ref = (obj.get("spec") or {}).get("intent") or {}
    if not isinstance(ref.get("kind"), str) or not isinstance(ref.get("name"), str):
        return None
    ns = obj["metadata"].get("namespace") or ""
    return (tenant, ref["kind"], ns, ref["name"]), int(ref.get("generation") or 0), str(ref.get("uid") or "")


class HistoryController:
    def __init__(
        self, store: Store, hub: WatchHub, *, sections: SectionRegistry = SECTIONS, keep: int = MAX_REVISIONS
    ) -> None:
        self.store = store
        self.hub = hub
        self.sections = sections
        self.keep = keep
        self.known: dict[Intent, _Known] = {}
        self._dirty: set[Intent] = set()
        self._wake = asyncio.Event()

    @property
    def kinds(self) -> tuple[str, ...]:
        return (*self.sections.kinds, INTENT_REVISION.kind, ROLLOUT.kind)

    async def run(self) -> None:
        await run_controller("history", self._sync_and_follow, self._flush_loop)

    def _fold(self, tenant: str, obj: Obj, deleted: bool) -> Intent | None:
        kind, m = obj["kind"], obj["metadata"]
        if kind in self.sections.kinds:
            intent = (tenant, kind, m.get("namespace") or "", m["name"])
            known = self.known.setdefault(intent, _Known())
            known.current = None if deleted else obj
            if deleted:
                known.seen.clear()
            else:  # every generation the watch shows gets its revision, however fast they come
                known.seen[int(m.get("generation") or 1)] = obj
            return intent
        found = _intent_of(tenant, obj)
        if found is None:
            return None
        intent, generation, uid = found
        known = self.known.setdefault(intent, _Known())
        if kind == INTENT_REVISION.kind:
            if deleted:
                known.revisions.pop(generation, None)
            else:
                known.revisions[generation] = uid
                known.seen.pop(generation, None)
        else:  # Rollout
            prev = (obj.get("spec") or {}).get("intent", {}).get("previousGeneration")
            if deleted:
                known.named.pop(m["name"], None)
            else:
                known.named[m["name"]] = {generation, *([int(prev)] if prev else [])}
        return intent

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, self.kinds)
        self.known = {}
        for tenant, obj in objects:
            self._fold(tenant, obj, False)
        self._dirty = set(self.known)
        self._wake.set()
        async for ev in self.hub.watch(WatchFilter(tenant=ANY_TENANT, kinds=self.kinds), since=revision):
            intent = self._fold(ev.tenant, ev.object, ev.type is EventType.DELETED)
            if intent is not None:
                self._dirty.add(intent)
                self._wake.set()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_write = -COALESCE_S
        while True:
            await self._wake.wait()
            # The first change after a quiet spell is written at once (a rollout's first wave
            # waits on its revision); changes within COALESCE_S of a write share the next one.
            # Only writes count: the echo of our own writes finds nothing to do.
            await asyncio.sleep(max(0.0, last_write + COALESCE_S - loop.time()))
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for intent in sorted(dirty):
                plan = self._plan(intent)
                if plan is None:
                    continue
                last_write = loop.time()
                try:
                    await asyncio.to_thread(self._write, intent, *plan)
                except Exception as exc:
                    log.warning("could not write the history of %s: %s; will retry", intent, exc)
                    self._dirty.add(intent)
            if self._dirty and not self._wake.is_set():
                await asyncio.sleep(1)
                self._wake.set()

    def _plan(self, intent: Intent) -> tuple[list[Obj], list[int]] | None:
        """The revisions to create and the generations to delete."""
        known = self.known.get(intent)
        if known is None:
            return None
        current = known.current
        if current is None:  # the intent is gone: so is its history
            if not known.revisions and not known.named:
                self.known.pop(intent, None)
            return ([], sorted(known.revisions)) if known.revisions else None
        uid = str(current["metadata"].get("uid") or "")
        generation = int(current["metadata"].get("generation") or 1)
        stale = [g for g, u in known.revisions.items() if u and u != uid]  # an older intent's
        mine = {g for g, u in known.revisions.items() if g not in stale and g <= generation}
        seen = {
            g: obj
            for g, obj in known.seen.items()
            if g <= generation
            and str(obj["metadata"].get("uid") or "") == uid
            and known.revisions.get(g) != uid
        }
        named = {g for gens in known.named.values() for g in gens}
        keep = set(sorted(mine | set(seen))[-self.keep :]) | named
        create = [self._revision(intent, g, uid, obj) for g, obj in sorted(seen.items()) if g in keep]
        for g in [g for g in known.seen if g not in seen or g not in keep]:
            del known.seen[g]  # stored already, or too old to keep (never stored)
        made = {int(obj["spec"]["intent"]["generation"]) for obj in create}  # replace a stale one
        drop = sorted({*(g for g in stale if g not in made), *(g for g in mine if g not in keep)})
        if not create and not drop:
            return None
        return create, drop

    @staticmethod
    def _revision(intent: Intent, generation: int, uid: str, obj: Obj) -> Obj:
        _, kind, ns, name = intent
        return INTENT_REVISION.normalize(
            {
                "metadata": {"name": revision_name(kind, name, generation), "namespace": ns},
                "spec": {
                    "intent": {"kind": kind, "name": name, "generation": generation, "uid": uid},
                    "spec": obj.get("spec") or {},
                },
            }
        )

    def _write(self, intent: Intent, create: list[Obj], drop: list[int]) -> None:
        tenant, kind, ns, name = intent
        for obj in create:
            try:
                self.store.create(tenant, obj)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                existing: Any = self.store.get(tenant, INTENT_REVISION.kind, ns, obj["metadata"]["name"])
                self.store.update(tenant, {**obj, "metadata": existing["metadata"]})
        for generation in drop:
            try:
                self.store.delete(tenant, INTENT_REVISION.kind, ns, revision_name(kind, name, generation))
            except ApiError as exc:
                if exc.code != 404:
                    raise
