"""The compile controller: one ``SiteManifest`` per site, recompiled only where a change lands.

``ManifestState`` is the pure in-memory view (site labels, virtual-site membership through
``Membership``, intents by kind and the virtual sites they target). Each change reports the
sites it affects: for an intent, the members of its old and new targets; for a site relabel
or a new site, that site; for a selector change, the members that joined or left; a deleted
site, so that its manifest is deleted. ``ManifestController`` feeds it from one hub watch and
writes a manifest only when its ``spec.hash`` differs. Level-triggered: on start (or after
losing the watch) it rebuilds from a ``store.scan`` snapshot and recompiles every site,
writing only what differs, so a restart at any point converges. See docs/site-manifest.md.

Rollouts (docs/rollouts.md): with ``follow_rollouts`` (the controller's view) an intent's
section for a site comes from the revision ``IntentRevisions.choose`` picks (the newest
revision without a strategy, or one whose ``Rollout`` handed it to that site), provided that
revision targets the site. The older specs come from ``IntentRevision`` objects and from the
watch; a ``Rollout`` status change recompiles only the sites whose hand-out changed. Without
it (a plan's "what would happen"), every intent compiles at its current revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.controllers.membership import Membership, selector_of
from fleetplane.controllers.revisions import IntentRevisions, RevisionMissing, changed_sites
from fleetplane.controllers.rollout import RolloutState, initial_state
from fleetplane.controllers.sections import (
    SECTIONS,
    IntentKey,
    SectionRegistry,
    VsKey,
    manifest_hash,
    targets_of,
)
from fleetplane.controllers.workload_sections import FANOUT_KIND, FANOUT_KINDS, FanoutIndex
from fleetplane.core.objects import Obj, labels_of
from fleetplane.core.selectors import Selector
from fleetplane.core.store import Event, EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import INTENT_REVISION, ROLLOUT, SITE, SITE_MANIFEST, VIRTUAL_SITE

log = logging.getLogger(__name__)
# Manifests written per transaction: big enough to amortise the commit, small enough
# not to hold the store's write lock for long.
WRITE_CHUNK = 500
SiteKey = tuple[str, str]  # tenant, site name
Intent = tuple[str, IntentKey]  # kind, (tenant, namespace, name)
_EMPTY: frozenset[str] = frozenset()
# On a Rollout: the uid of the intent it rolls out (a re-created intent starts afresh).
INTENT_UID = "fleetplane.io/intent-uid"


class ManifestState:
    """Everything the compile needs, in memory; every mutator returns the affected sites."""

    def __init__(self, sections: SectionRegistry = SECTIONS, *, follow_rollouts: bool = False) -> None:
        self.sections = sections
        self.follow_rollouts = follow_rollouts
        self.membership = Membership()
        self.sites: dict[SiteKey, dict[str, str]] = {}
        self.intents: dict[str, dict[IntentKey, Obj]] = {kind: {} for kind in sections.kinds}
        self.history: dict[Intent, IntentRevisions] = {}
        self._targets: dict[Intent, set[VsKey]] = {}
        self._targeted: dict[VsKey, set[Intent]] = {}
        self._targeted_in: dict[str, set[VsKey]] = {}  # tenant -> its targeted virtual sites
        # vK8s fan-out (controllers/workload_sections.py): Kubernetes objects are not intents
        # (no spec.virtualSites; placement comes from the namespace's VK8s and annotations),
        # so they are indexed beside them and handed to the "vk8s" contributor as bundles.
        self.fanout = FanoutIndex()
        # Contributors that read non-intent objects (``infra``: inventories, artifacts) keep
        # them in a context of their own, fed from the same watch (``context_kinds``).
        self.contexts: dict[str, Any] = {
            c.section: c.new_context() for c in sections.all() if hasattr(c, "new_context")
        }

    def members(self, vs: VsKey) -> set[str] | frozenset[str]:
        virtual = self.membership.virtual.get(vs)
        return virtual.members if virtual is not None else _EMPTY

    def _sites_of(self, vss: set[VsKey]) -> set[SiteKey]:
        return {(vs[0], name) for vs in vss for name in self.members(vs)}

    # -- sites and virtual sites ------------------------------------------------------------

    def set_site(self, tenant: str, name: str, labels: Mapping[str, str]) -> set[SiteKey]:
        key = (tenant, name)
        if self.sites.get(key) == labels:
            return set()  # a status write (heartbeat): nothing to recompile
        self.sites[key] = dict(labels)
        self.membership.set_site(tenant, name, labels)
        return {key}

    def remove_site(self, tenant: str, name: str) -> set[SiteKey]:
        self.sites.pop((tenant, name), None)
        self.membership.remove_site(tenant, name)
        return {(tenant, name)}

    def set_virtual_site(self, vs: VsKey, selector: Selector, generation: int) -> set[SiteKey]:
        before = set(self.members(vs))
        if not self.membership.set_virtual_site(vs, selector, generation):
            return set()
        if vs not in self._targeted and not self.fanout.targeted(vs):
            return set()
        return {(vs[0], name) for name in before ^ self.members(vs)}

    def remove_virtual_site(self, vs: VsKey) -> set[SiteKey]:
        targeted = vs in self._targeted or self.fanout.targeted(vs)
        affected = self._sites_of({vs}) if targeted else set()
        self.membership.remove_virtual_site(vs)
        return affected

    # -- intents -------------------------------------------------------------------------------

    def _untarget(self, intent: Intent) -> set[VsKey]:
        old = self._targets.pop(intent, set())
        for vs in old:
            holders = self._targeted.get(vs)
            if holders is not None:
                holders.discard(intent)
                if not holders:
                    del self._targeted[vs]
                    self._targeted_in[vs[0]].discard(vs)
        return old

    def _targets_now(self, intent: Intent) -> set[VsKey]:
        """The virtual sites through which the intent may reach a site: those of its current
        revision, and (following rollouts) of every revision a site may still run."""
        kind, key = intent
        obj = self.intents[kind].get(key)
        if obj is None:
            return set()
        hist = self.history.get(intent)
        if not self.follow_rollouts or hist is None:
            return targets_of(key[0], obj)
        out: set[VsKey] = set()
        for revision in hist.reachable():
            spec = hist.spec_of(revision)
            if spec is not None:
                out |= targets_of(key[0], {"metadata": obj["metadata"], "spec": spec})
        return out

    def _retarget(self, intent: Intent) -> set[SiteKey]:
        old = self._untarget(intent)
        new = self._targets_now(intent)
        if new:
            self._targets[intent] = new
        for vs in new:
            self._targeted.setdefault(vs, set()).add(intent)
            self._targeted_in.setdefault(vs[0], set()).add(vs)
        return self._sites_of(old | new)

    def set_intent(self, kind: str, tenant: str, obj: Obj) -> set[SiteKey]:
        m = obj["metadata"]
        key: IntentKey = (tenant, m.get("namespace") or "", m["name"])
        known = self.intents[kind].get(key)
        if known is not None and all(
            known.get("spec") == obj.get("spec") and known["metadata"].get(f) == m.get(f)
            for f in ("generation", "uid")
        ):
            return set()
        self.intents[kind][key] = obj
        hist = self.history.get((kind, key))
        if hist is None or hist.uid != str(m.get("uid") or ""):
            self.history[(kind, key)] = IntentRevisions(obj)
            self.history[(kind, key)].set_current(obj)
        else:
            hist.set_current(obj)
        return self._retarget((kind, key))

    def remove_intent(self, kind: str, key: IntentKey) -> set[SiteKey]:
        self.history.pop((kind, key), None)
        if self.intents[kind].pop(key, None) is None:
            return set()
        return self._sites_of(self._untarget((kind, key)))

    # -- rollouts and intent history ----------------------------------------------------------

    def _history_of(self, tenant: str, obj: Obj) -> tuple[Intent, IntentRevisions, int] | None:
        """The intent a Rollout or IntentRevision belongs to (None: unknown, or an older
        intent of the same name), and the revision it is about."""
        ref = (obj.get("spec") or {}).get("intent") or {}
        kind, name = ref.get("kind"), ref.get("name")
        if kind not in self.intents or not isinstance(name, str):
            return None
        intent: Intent = (kind, (tenant, obj["metadata"].get("namespace") or "", name))
        hist = self.history.get(intent)
        m = obj["metadata"]
        uid = ref.get("uid") or (m.get("annotations") or {}).get(INTENT_UID)
        if hist is None or (uid and uid != hist.uid):
            return None
        return intent, hist, int(ref.get("generation") or 0)

    def set_rollout(self, tenant: str, obj: Obj) -> set[SiteKey]:
        found = self._history_of(tenant, obj) if self.follow_rollouts else None
        if found is None:
            return set()
        intent, hist, revision = found
        status = obj.get("status") or {}
        old = hist.rollouts.get(revision)
        # Each progress write carries every site's record: parse only the ones that changed.
        raw = hist.rollout_sites.get(revision)
        reuse = (raw, old) if raw is not None and old is not None else None
        state = RolloutState.from_dict(status, reuse) if "revision" in status else initial_state(revision)
        hist.rollout_sites[revision] = status.get("sites") or {}
        hist.rollouts[revision] = state
        sites, unknown = changed_sites(old, state)
        if old is None or unknown:
            return self._retarget(intent)
        members = self._sites_of(self._targets.get(intent, set()))
        return {(tenant, s) for s in sites} & members

    def remove_rollout(self, tenant: str, obj: Obj) -> set[SiteKey]:
        found = self._history_of(tenant, obj) if self.follow_rollouts else None
        if found is not None:
            found[1].rollout_sites.pop(found[2], None)
        if found is None or found[1].rollouts.pop(found[2], None) is None:
            return set()
        return self._retarget(found[0])

    def set_revision(self, tenant: str, obj: Obj) -> set[SiteKey]:
        found = self._history_of(tenant, obj) if self.follow_rollouts else None
        spec = (obj.get("spec") or {}).get("spec")
        if found is None or not isinstance(spec, dict) or not found[1].add_spec(found[2], spec):
            return set()
        return self._retarget(found[0])

    # -- the compile -------------------------------------------------------------------------

    def compile(self, tenant: str, name: str) -> dict[str, Any] | None:
        """The sections of one site's manifest; ``None`` when the site does not exist.
        Raises ``RevisionMissing`` when the site should run a revision not known yet."""
        labels = self.sites.get((tenant, name))
        if labels is None:
            return None
        by_kind: dict[str, set[IntentKey]] = {}
        for vs in self._targeted_in.get(tenant, ()):
            if name in self.members(vs):
                for kind, key in self._targeted[vs]:
                    by_kind.setdefault(kind, set()).add(key)
        site: Obj = {"kind": SITE.kind, "metadata": {"name": name, "labels": labels, "tenant": tenant}}
        sections: dict[str, Any] = {}
        for contributor in self.sections.all():
            kind = contributor.kind
            if kind == FANOUT_KIND:  # vK8s objects: the namespaces placed on this site
                intents = self.fanout.bundles(tenant, lambda vs: name in self.members(vs))
            else:
                intents = [
                    obj for key in sorted(by_kind.get(kind, ())) if (obj := self._revision(kind, key, name))
                ]
            section = self.contexts.get(contributor.section, contributor).contribute(intents, site)
            if section is not None:
                sections[contributor.section] = section
        return sections

    def _revision(self, kind: str, key: IntentKey, site: str) -> Obj | None:
        """The intent as the site should run it (current, or the revision its rollouts say),
        or None when that revision does not target the site (or there is none)."""
        obj = self.intents[kind][key]
        hist = self.history.get((kind, key))
        if not self.follow_rollouts or hist is None:
            return obj
        revision = hist.choose(site)
        if revision is not None:
            if revision != hist.generation:
                obj = hist.revision_object(revision)
            if any(site in self.members(vs) for vs in targets_of(key[0], obj)):
                return obj
        # Nothing of the intent reaches the site: after an undo of an OS upgrade that would
        # leave it on the new version, so it gets back what it ran before (if recorded).
        return hist.restore_object(site, revision)

    def apply(self, ev: Event) -> set[SiteKey]:
        """Fold one watch event in; return the sites to recompile."""
        if ev.kind == SITE.kind:
            if ev.type is EventType.DELETED:
                return self.remove_site(ev.tenant, ev.name)
            return self.set_site(ev.tenant, ev.name, labels_of(ev.object))
        if ev.kind == VIRTUAL_SITE.kind:
            vs = (ev.tenant, ev.namespace, ev.name)
            if ev.type is EventType.DELETED:
                return self.remove_virtual_site(vs)
            generation = int(ev.object["metadata"].get("generation", 1))
            return self.set_virtual_site(vs, selector_of(ev.object), generation)
        if ev.kind in FANOUT_KINDS:
            return self._sites_of(self.fanout.apply(ev))
        if ev.kind in self.intents:
            if ev.type is EventType.DELETED:
                return self.remove_intent(ev.kind, (ev.tenant, ev.namespace, ev.name))
            return self.set_intent(ev.kind, ev.tenant, ev.object)
        if ev.kind == ROLLOUT.kind:
            if ev.type is EventType.DELETED:
                return self.remove_rollout(ev.tenant, ev.object)
            return self.set_rollout(ev.tenant, ev.object)
        if ev.kind == INTENT_REVISION.kind and ev.type is not EventType.DELETED:
            return self.set_revision(ev.tenant, ev.object)
        for context in self.contexts.values():
            if ev.kind in context.kinds:
                return set(context.apply(ev))
        return set()

    @classmethod
    def from_snapshot(
        cls,
        objects: list[tuple[str, Obj]],
        sections: SectionRegistry = SECTIONS,
        *,
        follow_rollouts: bool = False,
    ) -> ManifestState:
        state = cls(sections, follow_rollouts=follow_rollouts)
        # Sites, then virtual sites, then intents, then their history and rollouts.
        order = {SITE.kind: 0, VIRTUAL_SITE.kind: 1, INTENT_REVISION.kind: 3, ROLLOUT.kind: 4}
        for tenant, obj in sorted(objects, key=lambda item: order.get(item[1]["kind"], 2)):
            m = obj["metadata"]
            state.apply(
                Event(
                    int(m["resourceVersion"]),
                    EventType.ADDED,
                    tenant,
                    obj["kind"],
                    m.get("namespace") or "",
                    m["name"],
                    obj,
                )
            )
        return state


class ManifestController:
    def __init__(
        self, store: Store, hub: WatchHub, *, sections: SectionRegistry = SECTIONS, flush_delay: float = 0.02
    ) -> None:
        self.store = store
        self.hub = hub
        self.sections = sections
        self.flush_delay = flush_delay
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest-writer")
        self.state = ManifestState(sections, follow_rollouts=True)
        self.hashes: dict[SiteKey, str] = {}  # the stored manifests' spec.hash
        self.synced = asyncio.Event()
        self._dirty: set[SiteKey] = set()
        self._wake = asyncio.Event()

    @property
    def kinds(self) -> tuple[str, ...]:
        kinds: tuple[str, ...] = (
            SITE.kind,
            VIRTUAL_SITE.kind,
            *self.sections.kinds,
            INTENT_REVISION.kind,
            ROLLOUT.kind,
        )
        if FANOUT_KIND in self.sections.kinds:  # the vK8s objects the "vk8s" contributor renders
            kinds += FANOUT_KINDS
        for contributor in self.sections.all():
            kinds += tuple(getattr(contributor, "context_kinds", ()))
        return kinds

    async def run(self) -> None:
        await run_controller("manifest", self._sync_and_follow, self._flush_loop)

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, (*self.kinds, SITE_MANIFEST.kind))
        manifests = [(t, o) for t, o in objects if o["kind"] == SITE_MANIFEST.kind]
        state = ManifestState.from_snapshot(
            [(t, o) for t, o in objects if o["kind"] != SITE_MANIFEST.kind],
            self.sections,
            follow_rollouts=True,
        )
        self.hashes = {
            (t, o["metadata"]["name"]): str((o.get("spec") or {}).get("hash", "")) for t, o in manifests
        }
        self.state = state
        # Recompile everything once; only what differs from the stored manifests is written.
        self._dirty |= set(state.sites) | set(self.hashes)
        self._wake.set()
        self.synced.set()
        flt = WatchFilter(tenant=ANY_TENANT, kinds=self.kinds)
        async for ev in self.hub.watch(flt, since=revision):
            affected = state.apply(ev)
            if affected:
                self._dirty |= affected
                self._wake.set()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_flush = -self.flush_delay
        while True:
            await self._wake.wait()
            # The first change after a quiet spell is written at once (a rollout wave's step
            # waits on it); changes within flush_delay of a write coalesce into the next one.
            # sleep(0) still lets the watch task take every event of the same commit first.
            await asyncio.sleep(max(0.0, last_flush + self.flush_delay - loop.time()))
            last_flush = loop.time()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            plan = [change for key in sorted(dirty) if (change := self._plan(key)) is not None]
            # Many manifests per transaction: one durable commit (fsync) per chunk, not per site.
            for i in range(0, len(plan), WRITE_CHUNK):
                chunk = plan[i : i + WRITE_CHUNK]
                try:
                    # Its own thread: a rollout wave's manifests must not queue behind the
                    # sites' long-poll reads in the shared pool.
                    await asyncio.get_running_loop().run_in_executor(self._writer, self._write_chunk, chunk)
                except Exception as exc:
                    log.warning("could not write %d manifests (%s); will retry", len(chunk), exc)
                    self._dirty.update(key for key, _, _ in chunk)
                    continue
                for key, _, digest in chunk:
                    if digest is None:
                        self.hashes.pop(key, None)
                    else:
                        self.hashes[key] = digest
            if self._dirty and not self._wake.is_set():
                await asyncio.sleep(1)  # back off before retrying failed writes
                self._wake.set()

    def _plan(self, key: SiteKey) -> tuple[SiteKey, Obj | None, str | None] | None:
        """What to write for one site: its manifest, ``None`` to delete it, or nothing."""
        tenant, name = key
        try:
            sections = self.state.compile(tenant, name)
        except RevisionMissing as exc:
            # Its IntentRevision recompiles it when it arrives; until then it keeps its manifest.
            log.debug("site %s/%s waits for %s", tenant, name, exc)
            return None
        if sections is None:
            return key, None, None
        digest = manifest_hash(sections)
        if self.hashes.get(key) == digest:
            return None
        obj = SITE_MANIFEST.normalize(
            {"metadata": {"name": name}, "spec": {"site": name, "hash": digest, "sections": sections}}
        )
        return key, obj, digest

    def _write_chunk(self, chunk: list[tuple[SiteKey, Obj | None, str | None]]) -> None:
        with self.store.batch() as batch:
            for (tenant, name), obj, _ in chunk:
                current = batch.get_or_none(tenant, SITE_MANIFEST.kind, "", name)
                if obj is None:
                    if current is not None:
                        batch.delete(tenant, SITE_MANIFEST.kind, "", name)
                elif current is None:
                    batch.create(tenant, obj)
                else:
                    batch.update(tenant, obj, part="main", stored=current)
