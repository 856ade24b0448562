"""What the rollout controller knows, in memory: sites, membership, manifests, intents, Rollouts.

``RolloutView`` is pure (no I/O): the controller folds every watch event in (``apply``) and
asks it for the observations one rollout's ``step`` needs (``observations``). It maps what
a site reports to intent revisions: a site reports the *manifest* generation it applied
(``Site.status.manifest.generation``), and the compile writes into every section the
revision of each intent it carries (``section_revisions``), so the view remembers, per
site, the intent revisions of its last few manifests.

**Health.** Until a health score exists (DESIGN item 6), a site's health is derived:
``status.health.score`` (or a number in ``status.health``) when the site has one; otherwise
0 when the site is not ``Online``, else ``100 * (1 - failed items / items)`` of the manifest
it reports (100 with no items); unknown (``None``) while it has never reported.

**Kinds whose absence keeps what a site runs** (a contributor with ``baseline``: the OS).
The view keeps what each site runs of them (``SiteView.baselines``) for the engine to record
at hand-out, so an undo can put it back. A site rolling back whose manifest then carries
nothing of the intent has not gone back (nothing tells it to): it is observed as failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.membership import Membership, selector_of
from fleetplane.controllers.rollout import RolloutState, SiteObservation, initial_state
from fleetplane.controllers.sections import (
    SECTIONS,
    SectionRegistry,
    VsKey,
    per_intent_items,
    section_revisions,
    targets_of,
)
from fleetplane.core.objects import Obj, labels_of
from fleetplane.core.store import Event, EventType
from fleetplane.kinds import INTENT_REVISION, ROLLOUT, SITE, SITE_MANIFEST, VIRTUAL_SITE

SiteKey = tuple[str, str]  # tenant, site
Intent = tuple[str, str, str, str]  # tenant, kind, namespace, name
RolloutKey = tuple[str, str, str]  # tenant, namespace, Rollout name
Ident = tuple[str, str]  # kind, namespace/name: an intent as manifest sections name it
# The revision of a site whose reported manifest this view does not know (yet): it matches
# neither the rollout's revision nor its previous one, so the site simply waits.
UNKNOWN = -1
# Manifest generations remembered per site (a site reports one it applied a moment ago).
MANIFESTS_KEPT = 4
# On a Rollout: the uid of the intent it rolls out (a re-created intent starts afresh).
INTENT_UID = "fleetplane.io/intent-uid"


def site_health(status: Mapping[str, Any]) -> float | None:
    """The health score, or the derived one (see the module docstring)."""
    explicit = status.get("health")
    if isinstance(explicit, dict):
        explicit = explicit.get("score")
    if isinstance(explicit, int | float) and not isinstance(explicit, bool):
        return float(explicit)
    report = status.get("manifest")
    if not isinstance(report, dict):
        return None
    if status.get("phase") != "Online":
        return 0.0
    items = report.get("items") or []
    if not items:
        return 100.0
    failed = sum(1 for i in items if i.get("state") == "Failed")
    return round(100.0 * (1 - failed / len(items)), 1)


Baseline = Callable[[Mapping[str, Any]], dict[str, Any] | None]


def baselines_of(sections: SectionRegistry) -> dict[str, Baseline]:
    """By intent kind: how to read what a site runs, for kinds whose absence keeps it."""
    out: dict[str, Baseline] = {}
    for contributor in sections.all():
        baseline = getattr(contributor, "baseline", None)
        if callable(baseline):
            out[contributor.kind] = baseline
    return out


@dataclass(frozen=True)
class SiteView:
    labels: dict[str, str]
    report: dict[str, Any] | None  # Site.status.manifest
    health: float | None
    # By intent kind whose absence keeps what a site runs: what it runs now ({version: …}).
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Obj, baselines: Mapping[str, Baseline] | None = None) -> SiteView:
        status = obj.get("status") or {}
        report = status.get("manifest")
        runs = {kind: found for kind, read in (baselines or {}).items() if (found := read(status))}
        return cls(
            dict(labels_of(obj)), report if isinstance(report, dict) else None, site_health(status), runs
        )


def _uid_of(obj: Obj) -> str:
    return str(obj["metadata"].get("uid") or "")


@dataclass
class RolloutView:
    sections: SectionRegistry = SECTIONS
    membership: Membership = field(default_factory=Membership)
    sites: dict[SiteKey, SiteView] = field(default_factory=dict)
    manifests: dict[SiteKey, dict[int, dict[Ident, int]]] = field(default_factory=dict)
    intents: dict[Intent, Obj] = field(default_factory=dict)
    # Per intent: the virtual sites each revision targeted (from the intent and its history).
    revision_targets: dict[Intent, dict[int, list[str]]] = field(default_factory=dict)
    rollouts: dict[RolloutKey, Obj] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # section -> intent kind, once: looked up for every manifest event
        self._section_kinds = {c.section: c.kind for c in self.sections.all()}
        self._baselines = baselines_of(self.sections)
        # The parsed status of each Rollout, by its resourceVersion: parsing 1,000 site
        # records is most of what a step would otherwise cost.
        self._states: dict[RolloutKey, tuple[str, RolloutState]] = {}

    # -- folding events in ----------------------------------------------------------------------

    def apply(self, ev: Event) -> tuple[set[str], set[Intent]]:
        """Fold one event in; return the tenants whose rollouts should step and the intents
        whose Rollouts should be checked (created, superseded, collected)."""
        deleted = ev.type is EventType.DELETED
        obj, key = ev.object, (ev.tenant, ev.name)
        if ev.kind == SITE.kind:
            if deleted:
                self.sites.pop(key, None)
                self.manifests.pop(key, None)
                self.membership.remove_site(*key)
                return {ev.tenant}, set()
            view = SiteView.of(obj, self._baselines)
            old = self.sites.get(key)
            self.sites[key] = view
            if old is not None and old.labels == view.labels:
                return ({ev.tenant} if old != view else set()), set()
            self.membership.set_site(ev.tenant, ev.name, view.labels)
            return {ev.tenant}, set()
        if ev.kind == VIRTUAL_SITE.kind:
            vs = (ev.tenant, ev.namespace, ev.name)
            if deleted:
                self.membership.remove_virtual_site(vs)
            else:
                generation = int(obj["metadata"].get("generation") or 1)
                if not self.membership.set_virtual_site(vs, selector_of(obj), generation):
                    return set(), set()
            return {ev.tenant}, set()
        if ev.kind == SITE_MANIFEST.kind:
            return self._manifest(ev.tenant, ev.name, None if deleted else obj), set()
        if ev.kind in self.sections.kinds:
            intent = (ev.tenant, ev.kind, ev.namespace, ev.name)
            if deleted:
                self.intents.pop(intent, None)
                self.revision_targets.pop(intent, None)
            else:
                before = self.intents.get(intent)
                self.intents[intent] = obj
                if before is not None and _uid_of(before) == _uid_of(obj):
                    if before["metadata"].get("generation") == obj["metadata"].get("generation"):
                        return set(), set()  # a status write (policy hits): nothing to do
                elif before is not None:
                    self.revision_targets.pop(intent, None)
                generation = int(obj["metadata"].get("generation") or 1)
                targets = list((obj.get("spec") or {}).get("virtualSites") or [])
                self.revision_targets.setdefault(intent, {})[generation] = targets
            return {ev.tenant}, {intent}
        if ev.kind == INTENT_REVISION.kind and not deleted:
            ref = (obj.get("spec") or {}).get("intent") or {}
            intent = (ev.tenant, str(ref.get("kind")), ev.namespace, str(ref.get("name")))
            current = self.intents.get(intent)
            if current is not None and ref.get("uid") in (None, _uid_of(current)):
                spec = (obj.get("spec") or {}).get("spec") or {}
                targets = list(spec.get("virtualSites") or [])
                self.revision_targets.setdefault(intent, {}).setdefault(int(ref["generation"]), targets)
            return set(), set()
        if ev.kind == ROLLOUT.kind:
            rkey = (ev.tenant, ev.namespace, ev.name)
            if deleted:
                self.rollouts.pop(rkey, None)
                self._states.pop(rkey, None)
                return set(), set()
            old_spec = (self.rollouts.get(rkey) or {}).get("spec")
            self.rollouts[rkey] = obj
            return ({ev.tenant} if old_spec != obj.get("spec") else set()), set()
        return set(), set()

    def _manifest(self, tenant: str, name: str, obj: Obj | None) -> set[str]:
        key = (tenant, name)
        if obj is None:
            self.manifests.pop(key, None)
            return set()
        by_section = self._section_kinds
        revisions: dict[Ident, int] = {}
        for section, body in ((obj.get("spec") or {}).get("sections") or {}).items():
            kind = by_section.get(section)
            if kind is not None and isinstance(body, dict):
                for source, revision in section_revisions(body).items():
                    revisions[(kind, source)] = revision
        kept = self.manifests.setdefault(key, {})
        kept[int(obj["metadata"].get("generation") or 0)] = revisions
        for old in sorted(kept)[:-MANIFESTS_KEPT]:
            del kept[old]
        # The site may have reported this generation before the manifest event arrived.
        site = self.sites.get(key)
        reported = (site.report or {}).get("generation") if site is not None else None
        return {tenant} if reported == obj["metadata"].get("generation") else set()

    # -- what a rollout needs ----------------------------------------------------------------

    def intent_of(self, key: RolloutKey) -> tuple[Intent, Obj] | None:
        """The intent a Rollout rolls out, if it still exists (and is the same intent)."""
        ro = self.rollouts[key]
        ref = (ro.get("spec") or {}).get("intent") or {}
        intent = (key[0], str(ref.get("kind")), key[1], str(ref.get("name")))
        current = self.intents.get(intent)
        if current is None:
            return None
        uid = (ro["metadata"].get("annotations") or {}).get(INTENT_UID)
        if uid and uid != _uid_of(current):
            return None
        return intent, current

    def by_intent(self, intent: Intent) -> dict[int, RolloutKey]:
        tenant, kind, ns, name = intent
        out = {}
        for key, ro in self.rollouts.items():
            ref = (ro.get("spec") or {}).get("intent") or {}
            if key[:2] == (tenant, ns) and ref.get("kind") == kind and ref.get("name") == name:
                out[int(ref.get("generation") or 0)] = key
        return out

    def targets(self, intent: Intent, revision: int) -> set[str]:
        """The sites revision ``revision`` of the intent targets now (its virtual sites' members;
        the current revision's when that revision's spec is not known)."""
        by_revision = self.revision_targets.get(intent) or {}
        refs = by_revision.get(revision)
        if refs is None and by_revision:
            refs = by_revision[max(by_revision)]
        vss: set[VsKey] = targets_of(
            intent[0], {"metadata": {"namespace": intent[2]}, "spec": {"virtualSites": refs or []}}
        )
        out: set[str] = set()
        for vs in vss:
            virtual = self.membership.virtual.get(vs)
            if virtual is not None:
                out |= virtual.members
        return out

    def state_of(self, key: RolloutKey) -> RolloutState:
        """The Rollout's state (callers must not change it: ``step`` does not)."""
        ro = self.rollouts[key]
        rv = str(ro["metadata"].get("resourceVersion") or "")
        known = self._states.get(key)
        if known is not None and known[0] == rv:
            return known[1]
        status = ro.get("status") or {}
        if "revision" in status:
            state = RolloutState.from_dict(status)
            self._states[key] = (rv, state)
            return state
        ref = (ro.get("spec") or {}).get("intent") or {}
        prev = ref.get("previousGeneration")
        return initial_state(int(ref.get("generation") or 1), int(prev) if prev else None)

    def written(self, key: RolloutKey, obj: Obj, state: RolloutState) -> None:
        """The controller wrote ``state`` as this Rollout's status (``obj`` as stored)."""
        self.rollouts[key] = obj
        self._states[key] = (str(obj["metadata"].get("resourceVersion") or ""), state)

    def observations(self, intent: Intent, state: RolloutState, names: set[str]) -> Observations:
        """What each targeted site (``names``, those this view knows) reports, built on
        demand: a step looks at the sites in flight, not at every site of the fleet."""
        tenant = intent[0]
        known = {site for site in names if (tenant, site) in self.sites}
        return Observations(known, lambda site: self._observe(intent, state, site))

    def _observe(self, intent: Intent, state: RolloutState, site: str) -> SiteObservation:
        tenant, kind, ns, name = intent
        ident: Ident = (kind, f"{ns}/{name}")
        contributor = self.sections.get(kind)
        section, per_item = contributor.section, per_intent_items(contributor)
        view = self.sites[(tenant, site)]
        report = view.report or {}
        generation = report.get("generation")
        known = self.manifests.get((tenant, site), {})
        revision: int | None = UNKNOWN
        stranded: tuple[str, ...] = ()
        if isinstance(generation, int) and generation in known:
            actual = known[generation].get(ident)
            # Anything but this rollout's revision counts as "back where it was".
            revision = state.revision if actual == state.revision else state.previousRevision
            rec = state.sites.get(site)
            if actual is None and kind in self._baselines and rec is not None and rec.rollbackAt is not None:
                # No entry keeps the new version running: not "back" (nothing was recorded to
                # go back to: the site had not reported what it ran when it was handed out).
                stranded = (
                    f"{section}/{section}: nothing to go back to: what the site ran before revision "
                    f"{state.revision} is not known, so it keeps what it runs",
                )
        items = [
            i
            for i in report.get("items") or []
            if i.get("section") == section and (not per_item or i.get("name") == ident[1])
        ]
        failed = stranded + tuple(
            f"{i['section']}/{i['name']}: {i.get('reason') or 'failed'}"
            for i in items
            if i.get("state") == "Failed"
        )
        busy = any(i.get("state") == "InProgress" for i in items)
        applied = bool(report) and not busy and (bool(items) or report.get("state") != "Applying")
        return SiteObservation(
            labels=view.labels,
            revision=revision,
            applied=applied,
            failed=failed,
            health=view.health,
            baseline=view.baselines.get(kind),
        )


class Observations(Mapping[str, SiteObservation]):
    """Every targeted site's observation, each built on first use (and kept)."""

    def __init__(self, names: set[str], build: Callable[[str], SiteObservation]) -> None:
        self._names, self._build = names, build
        self._built: dict[str, SiteObservation] = {}

    def __getitem__(self, site: str) -> SiteObservation:
        found = self._built.get(site)
        if found is None:
            if site not in self._names:
                raise KeyError(site)
            found = self._built[site] = self._build(site)
        return found

    def __contains__(self, site: object) -> bool:
        return site in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
