"""The rollout controller: one ``Rollout`` per intent revision with a strategy, stepped.

Level-triggered and idempotent (``controllers/loop.py``): it rebuilds its view
(``RolloutView``: sites, membership, manifests, intents, Rollouts) from a snapshot, then
follows the watch. For every intent whose current revision has ``spec.strategy`` it makes
sure the ``Rollout`` of that revision exists (``rollout_name(kind, name, generation)``, with
``previousGeneration`` = generation - 1), and asks every older Rollout of the intent that is
still running to abort (``spec.abort: true``): the newer revision supersedes it. A revision
without a strategy goes out at once (the compile gives it to every site) and supersedes them
too. Rollouts of an intent that is gone are deleted.

Each Rollout is stepped (``controllers/rollout``) with observations built from its target
sites' status and its operator fields (``actions_from_spec``), and its status is written
with a ``resourceVersion`` precondition before anything acts on it (the compile reads the
hand-outs from the stored status); on a conflict it is re-read and stepped again. Steps are
coalesced (after a round it pauses as long as the round took, within ``min_pause`` and
``interval``) and happen on news (a site's
manifest report, health or labels, membership, a Rollout's spec) and at ``next_wakeup``.
A ``Pending`` rollout is not stepped while its target set is empty: its first step plans
the waves, and an empty plan would complete at once and hand every later site the revision
without the strategy. A restart resumes from the stored statuses. See docs/rollouts.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fleetplane.controllers.loop import run_controller
from fleetplane.controllers.rollout import (
    Strategy,
    actions_from_spec,
    holds_new,
    initial_state,
    next_wakeup,
    step,
)
from fleetplane.controllers.rollout.state import STOPPED
from fleetplane.controllers.rollout_view import INTENT_UID, Intent, RolloutKey, RolloutView
from fleetplane.controllers.sections import SECTIONS, SectionRegistry
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import Event, EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import INTENT_REVISION, ROLLOUT, SITE, SITE_MANIFEST, VIRTUAL_SITE
from fleetplane.kinds.rollout import rollout_name

log = logging.getLogger(__name__)
RETRY_S = 1.0
# Rollouts kept per intent; older ones go once no site's revision depends on them (the
# revisions themselves stay in IntentRevision objects, controllers/history.py).
KEEP = 10


class RolloutController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        sections: SectionRegistry = SECTIONS,
        clock: Callable[[], float] = time.time,
        interval: float = 0.5,
        min_pause: float = 0.1,
        keep: int = KEEP,
    ) -> None:
        self.store = store
        self.hub = hub
        self.sections = sections
        self.clock = clock
        self.interval = interval  # the longest pause between two rounds
        # The shortest: progress rounds (a wave's first reports) at most ten a second. Each
        # writes the Rollout's status (every site's record: 130 KiB at 1,000 sites), which
        # the store compares, the hub parses and the compile and the view rebuild, some 4 ms
        # of server CPU each. A wave's end does not wait for it (the last report ends it).
        self.min_pause = min(min_pause, interval)
        self.keep = max(1, keep)  # Rollouts kept per intent (older ones are pruned)
        self.view = RolloutView(sections)
        self.synced = asyncio.Event()
        self.timers: dict[RolloutKey, float] = {}
        self._tenants: set[str] = set()  # tenants whose rollouts step in the next round
        self._intents: set[Intent] = set()  # intents whose Rollouts to check
        self._retry: set[RolloutKey] = set()
        self._wake = asyncio.Event()
        self._cpu = 0.0  # CPU seconds the current round spent stepping and writing
        # Per Rollout, its sites in flight not heard from since its last step: when the last
        # one reports, the next round starts without the pause (the wave may be done).
        self._awaited: dict[RolloutKey, set[str]] = {}
        self._urgent = asyncio.Event()
        # Status writes on their own thread: every wave waits on them, and the shared pool
        # is full of the sites' long-poll reads during a wave.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-writer")

    @property
    def kinds(self) -> tuple[str, ...]:
        return (
            SITE.kind,
            VIRTUAL_SITE.kind,
            SITE_MANIFEST.kind,
            *self.sections.kinds,
            INTENT_REVISION.kind,
            ROLLOUT.kind,
        )

    async def run(self) -> None:
        await run_controller("rollout", self._sync_and_follow, self._step_loop)

    async def _sync_and_follow(self) -> None:
        self.synced.clear()
        revision, objects = await asyncio.to_thread(self.store.scan, self.kinds)
        view = RolloutView(self.sections)
        # Sites, virtual sites, manifests, then intents, their history, their Rollouts.
        order = {
            SITE.kind: 0,
            VIRTUAL_SITE.kind: 1,
            SITE_MANIFEST.kind: 2,
            INTENT_REVISION.kind: 4,
            ROLLOUT.kind: 5,
        }
        for tenant, obj in sorted(objects, key=lambda item: order.get(item[1]["kind"], 3)):
            m = obj["metadata"]
            view.apply(
                Event(0, EventType.ADDED, tenant, obj["kind"], m.get("namespace") or "", m["name"], obj)
            )
        self.view = view
        self._intents = set(view.intents) | {i for i in (self._intent_key(k) for k in view.rollouts) if i}
        self._tenants = {t for t, _ in view.sites} | {k[0] for k in view.rollouts}
        self.synced.set()
        self._wake.set()
        async for ev in self.hub.watch(WatchFilter(tenant=ANY_TENANT, kinds=self.kinds), since=revision):
            tenants, intents = view.apply(ev)
            if tenants and ev.kind == SITE.kind:
                self._heard(ev.tenant, ev.name)
            if ev.kind == ROLLOUT.kind and (intent := self._intent_of_event(ev.tenant, ev.object)):
                intents = {*intents, intent}
            if ev.type is EventType.ADDED and ev.kind in (ROLLOUT.kind, INTENT_REVISION.kind):
                # A new revision's Rollout takes its first step (hands out its first wave)
                # without the coalescing pause: the operator's change waits on it.
                self._urgent.set()
            if tenants or intents:
                self._tenants |= tenants
                self._intents |= intents
                self._wake.set()

    def _heard(self, tenant: str, site: str) -> None:
        for key, waiting in self._awaited.items():
            if key[0] == tenant and site in waiting:
                waiting.discard(site)
                if not waiting:
                    self._urgent.set()

    def _intent_key(self, key: RolloutKey) -> Intent | None:
        return self._intent_of_event(key[0], self.view.rollouts[key])

    @staticmethod
    def _intent_of_event(tenant: str, obj: Obj) -> Intent | None:
        ref = (obj.get("spec") or {}).get("intent") or {}
        if not ref.get("kind") or not ref.get("name"):
            return None
        return (tenant, str(ref["kind"]), obj["metadata"].get("namespace") or "", str(ref["name"]))

    # -- the loop ----------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, min(self.timers.values()) - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self.synced.is_set():
                continue
            self._cpu = 0.0
            self._urgent.clear()
            try:
                await self.round()
            except Exception:
                log.exception("rollout round failed")
            # Coalesce news: pause as long as the round's CPU (stepping uses at most half a
            # core under a stream of reports), within [min_pause, interval]. CPU, not wall
            # time: waiting for the status write's fsync or for the busy event loop costs no
            # CPU, and pausing for it delayed every wave by a round's wall time again.
            # The last site in flight reporting ends the pause: every wave waits for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._urgent.wait(), min(self.interval, max(self.min_pause, self._cpu))
                )

    async def round(self) -> None:
        """Check the intents that changed, then step every rollout that has news or is due."""
        intents, self._intents = self._intents, set()
        for intent in sorted(intents):
            writes = self._intent_writes(intent)
            try:
                for write in writes:
                    await asyncio.to_thread(write)
            except ApiError as exc:
                log.warning("could not reconcile the Rollouts of %s: %s; will retry", intent, exc.message)
                self._intents.add(intent)
        now = self.clock()
        tenants, self._tenants = self._tenants, set()
        for key in [k for k in self.timers if k not in self.view.rollouts]:
            del self.timers[key]
        for key in [k for k in self._awaited if k not in self.view.rollouts]:
            del self._awaited[key]
        due = {k for k, t in self.timers.items() if t <= now} | self._retry
        self._retry = set()
        for key in sorted(self.view.rollouts):
            if key in due or (key[0] in tenants and not self._settled(key)):
                await self._step(key)
        if self._intents or self._retry:
            self._wake.set()

    def _settled(self, key: RolloutKey) -> bool:
        """A superseded Rollout that has nothing left to do: stopped, nothing in flight, no
        operator action pending. Only the current revision's Rollout takes joiners."""
        ro = self.view.rollouts[key]
        found = self.view.intent_of(key)
        if found is None:
            return False  # its intent is gone: the step collects it
        generation = int(found[1]["metadata"].get("generation") or 1)
        if int(((ro.get("spec") or {}).get("intent") or {}).get("generation") or 0) == generation:
            return False
        state = self.view.state_of(key)
        busy = state.counts.get("inProgress", 0) or state.counts.get("rollingBack", 0)
        return state.phase in STOPPED and not busy and not actions_from_spec(ro.get("spec") or {}, state)

    # -- Rollouts per intent -------------------------------------------------------------------

    def _intent_writes(self, intent: Intent) -> list[Callable[[], None]]:
        """What to write for one intent's Rollouts: create the one of its current revision,
        supersede older running ones, delete those of an intent that is gone (or of an
        older intent of the same name)."""
        current = self.view.intents.get(intent)
        rollouts = self.view.by_intent(intent)
        if current is None:
            return [functools.partial(self._delete, key) for key in rollouts.values()]
        writes: list[Callable[[], None]] = []
        uid = str(current["metadata"].get("uid") or "")
        generation = int(current["metadata"].get("generation") or 1)
        for revision, key in list(rollouts.items()):
            owner = (self.view.rollouts[key]["metadata"].get("annotations") or {}).get(INTENT_UID)
            if owner and owner != uid:
                writes.append(functools.partial(self._delete, key))
                del rollouts[revision]
        strategy = (current.get("spec") or {}).get("strategy")
        if strategy and generation not in rollouts:
            writes.append(functools.partial(self._create, intent, current, generation, strategy))
        for revision, key in rollouts.items():
            ro = self.view.rollouts[key]
            if revision >= generation and strategy:
                continue
            phase = (ro.get("status") or {}).get("phase", "Pending")
            if phase not in STOPPED and not (ro.get("spec") or {}).get("abort"):
                writes.append(functools.partial(self._supersede, key, ro, generation))
        writes += [functools.partial(self._delete, key) for key in self._prunable(rollouts)]
        return writes

    def _prunable(self, rollouts: dict[int, RolloutKey]) -> list[RolloutKey]:
        """The intent's Rollouts beyond the newest ``keep`` that no site's revision depends on:
        settled, and older than a Completed Rollout that handed its revision to every site it
        lists. The compile walks revisions newest first and stops at that one for every site
        (controllers/revisions.py), so it never reads those below."""
        if len(rollouts) <= self.keep:
            return []
        newest = sorted(rollouts, reverse=True)
        for generation in newest:
            state = self.view.state_of(rollouts[generation])
            if state.phase == "Completed" and all(holds_new(state, site) for site in state.sites):
                return [
                    rollouts[g] for g in newest[self.keep :] if g < generation and self._settled(rollouts[g])
                ]
        return []

    def _create(self, intent: Intent, current: Obj, generation: int, strategy: object) -> None:
        tenant, kind, ns, name = intent
        prev = generation - 1 if generation > 1 else None
        ref = {
            "kind": kind,
            "name": name,
            "generation": generation,
            **({"previousGeneration": prev} if prev else {}),
        }
        obj = ROLLOUT.normalize(
            {
                "metadata": {
                    "name": rollout_name(kind, name, generation),
                    "namespace": ns,
                    # For `get rollouts -l`; a label value holds at most 63 characters.
                    "labels": {"fleetplane.io/intent-kind": kind.lower()}
                    | ({"fleetplane.io/intent": name} if len(name) <= 63 else {}),
                    "annotations": {INTENT_UID: str(current["metadata"].get("uid") or "")},
                },
                "spec": {"intent": ref, "strategy": strategy},
            }
        )
        obj["status"] = initial_state(generation, prev).to_dict()
        try:
            self.store.create(tenant, obj)
            log.info("rollout %s/%s created for %s %s/%s", ns, obj["metadata"]["name"], kind, ns, name)
        except ApiError as exc:
            if exc.code != 409:
                raise

    def _supersede(self, key: RolloutKey, ro: Obj, generation: int) -> None:
        tenant, ns, name = key
        spec = {**(ro.get("spec") or {}), "abort": True}
        meta = {"name": name, "namespace": ns, "resourceVersion": ro["metadata"]["resourceVersion"]}
        for k in ("labels", "annotations"):
            if ro["metadata"].get(k):
                meta[k] = ro["metadata"][k]
        try:
            self.store.update(tenant, {"kind": ROLLOUT.kind, "metadata": meta, "spec": spec}, part="main")
            log.info("rollout %s/%s superseded by generation %d", ns, name, generation)
        except ApiError as exc:
            if exc.code != 404:
                raise  # a conflict: the round retries with the object as the watch shows it

    def _delete(self, key: RolloutKey) -> None:
        try:
            self.store.delete(key[0], ROLLOUT.kind, key[1], key[2])
        except ApiError as exc:
            if exc.code != 404:
                raise

    # -- stepping ------------------------------------------------------------------------------

    def _write_status(self, tenant: str, body: Obj) -> tuple[Obj, float]:
        """Write a Rollout's status (on the writer thread); the object and the CPU it took."""
        started = time.thread_time()
        written = self.store.update(tenant, body, part="status")
        return written, time.thread_time() - started

    async def _step(self, key: RolloutKey) -> None:
        started = time.thread_time()  # no await until the write: this thread's CPU is ours
        view = self.view
        ro = view.rollouts.get(key)
        found = view.intent_of(key) if ro is not None else None
        if ro is None or found is None:
            self.timers.pop(key, None)
            if ro is not None and (intent := self._intent_key(key)):
                self._intents.add(intent)  # its intent is gone: collect it
            return
        intent, _ = found
        state = view.state_of(key)
        spec = ro.get("spec") or {}
        strategy = Strategy.from_spec(spec.get("strategy"))
        targets = view.targets(intent, state.revision)
        if state.phase == "Pending" and not targets:
            self.timers.pop(key, None)
            return  # nothing targeted yet: planning now would complete an empty rollout
        obs = view.observations(intent, state, targets)
        result = step(state, strategy, obs, self.clock(), actions_from_spec(spec, state))
        for why in result.rejected:
            log.info("rollout %s/%s: operator action refused: %s", key[1], key[2], why)
        self._awaited[key] = {
            n for n, r in result.state.sites.items() if r.state == "InProgress" and r.inTarget
        }
        wake = next_wakeup(result.state, strategy)
        if wake is None:
            self.timers.pop(key, None)
        else:
            self.timers[key] = wake
        if not result.changed:
            self._cpu += time.thread_time() - started
            return
        body = {
            "kind": ROLLOUT.kind,
            "metadata": {
                "name": key[2],
                "namespace": key[1],
                "resourceVersion": ro["metadata"]["resourceVersion"],
            },
            "status": result.state.to_dict(),
        }
        self._cpu += time.thread_time() - started
        try:
            written, cpu = await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_status, key[0], body
            )
            self._cpu += cpu
        except ApiError as exc:
            if exc.code == 409:  # changed meanwhile (an operator's patch): re-read, step again
                fresh = await asyncio.to_thread(self.store.get_or_none, key[0], ROLLOUT.kind, key[1], key[2])
                if fresh is not None:
                    view.rollouts[key] = fresh
                    self._retry.add(key)
            elif exc.code == 404:
                view.rollouts.pop(key, None)
            else:
                log.warning("could not write the status of rollout %s/%s: %s", key[1], key[2], exc.message)
                self._retry.add(key)
            return
        view.written(key, written, result.state)
        if result.hand_out or result.roll_back or result.state.phase != state.phase:
            log.info(
                "rollout %s/%s %s: %d handed out, %d rolled back",
                key[1],
                key[2],
                result.state.phase,
                len(result.hand_out),
                len(result.roll_back),
            )
