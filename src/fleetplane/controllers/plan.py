"""The plan of a change (dry run): which sites it touches and what changes in their manifests.

``plan_changes`` takes one tenant's sites, virtual sites and intents as stored, and the
objects a client would write (already validated). It builds the compile controller's own
in-memory view (``ManifestState``) twice — as things are, and with the changes folded in
exactly as the controller folds in watch events — and compiles every site the changes
touch in both, with the same section contributors. Nothing is written. For an intent with
a ``spec.strategy`` it also shows the waves the rollout engine would plan.
See docs/rollouts.md ("Plan: what a change would do").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from fleetplane.controllers.manifests import ManifestState, SiteKey
from fleetplane.controllers.rollout.plan import plan_waves
from fleetplane.controllers.rollout.strategy import Strategy
from fleetplane.controllers.sections import SECTIONS, SectionRegistry, targets_of
from fleetplane.core.objects import Obj
from fleetplane.core.store import Event, EventType
from fleetplane.kinds import SITE, VIRTUAL_SITE
from fleetplane.kinds.rollout import rollout_name

Action = Literal["create", "update", "unchanged"]
SiteChange = Literal["joining", "leaving", "changed"]
IntentId = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class Change:
    """One object the client would write: ``obj`` is what would be stored (validated and
    merged with ``current``, metadata included), ``current`` what is stored now."""

    obj: Obj
    current: Obj | None

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def action(self) -> Action:
        if self.current is None:
            return "create"
        was, will = self.current["metadata"], self.obj["metadata"]
        same = self.current.get("spec") == self.obj.get("spec") and all(
            (was.get(k) or {}) == (will.get(k) or {}) for k in ("labels", "annotations")
        )
        return "unchanged" if same else "update"


def _event(tenant: str, obj: Obj) -> Event:
    m = obj["metadata"]
    return Event(0, EventType.MODIFIED, tenant, obj["kind"], m.get("namespace") or "", m["name"], obj)


def _intent_label(intent: IntentId) -> str:
    kind, ns, name = intent
    return f"{kind} {ns}/{name}"


def _coverage(state: ManifestState, tenant: str, sites: set[str]) -> dict[str, set[IntentId]]:
    """For each of ``sites``, the intents that target it (through any of their virtual sites)."""
    out: dict[str, set[IntentId]] = {}
    for kind, intents in state.intents.items():
        for (t, ns, name), obj in intents.items():
            if t != tenant:
                continue
            for vs in targets_of(tenant, obj):
                for site in sites & state.members(vs):  # iterates over the smaller set
                    out.setdefault(site, set()).add((kind, ns, name))
    return out


def _targets(state: ManifestState, tenant: str, obj: Obj) -> set[str]:
    out: set[str] = set()
    for vs in targets_of(tenant, obj):
        out |= state.members(vs)
    return out


def _generation(change: Change) -> int:
    if change.current is None:
        return 1
    gen = int(change.current["metadata"].get("generation") or 1)
    return gen if change.current.get("spec") == change.obj.get("spec") else gen + 1


def _rollout_preview(state: ManifestState, tenant: str, change: Change, targets: set[str]) -> dict[str, Any]:
    spec = change.obj.get("spec") or {}
    strategy = Strategy.from_spec(spec.get("strategy"))
    labels = {name: state.sites.get((tenant, name), {}) for name in targets}
    waves = plan_waves(strategy, labels)
    generation = _generation(change)
    return {
        "name": rollout_name(change.kind, change.name, generation),
        "strategy": str((spec.get("strategy") or {}).get("type", "rolling")),
        "waves": [{"index": w.index, "role": w.role, "sites": len(w.sites)} for w in waves],
    }


def plan_changes(
    tenant: str,
    stored: Iterable[Obj],
    changes: list[Change],
    *,
    sections: SectionRegistry = SECTIONS,
    limit: int = 0,
) -> dict[str, Any]:
    """The plan: per object its action, per touched site what joins, leaves and changes,
    with each differing manifest section before and after. ``stored`` holds the tenant's
    Sites, VirtualSites and intents; ``limit`` caps the sites listed (0: all), never the
    counts."""
    snapshot = [(tenant, obj) for obj in stored]
    before = ManifestState.from_snapshot(snapshot, sections)
    after = ManifestState.from_snapshot(snapshot, sections)
    touched: set[SiteKey] = set()
    for change in changes:
        if change.kind in (SITE.kind, VIRTUAL_SITE.kind) or change.kind in sections.kinds:
            # The generation it would get: contributors record it as the intent's revision.
            obj = {**change.obj, "metadata": {**change.obj["metadata"], "generation": _generation(change)}}
            touched |= after.apply(_event(tenant, obj))
    names = {name for t, name in touched if t == tenant}
    was, will = _coverage(before, tenant, names), _coverage(after, tenant, names)

    rows: list[dict[str, Any]] = []
    counts = {"joining": 0, "leaving": 0, "changed": 0}
    for name in sorted(names):
        old = before.compile(tenant, name)
        new = after.compile(tenant, name)
        had, has = was.get(name, set()), will.get(name, set())
        joins, leaves = sorted(has - had), sorted(had - has)
        diff = {
            section: {"before": (old or {}).get(section), "after": (new or {}).get(section)}
            for section in sorted(set(old or {}) | set(new or {}))
            if (old or {}).get(section) != (new or {}).get(section)
        }
        if not diff and not joins and not leaves:
            continue
        kind: SiteChange = (
            "joining" if joins and not leaves else "leaving" if leaves and not joins else "changed"
        )
        counts[kind] += 1
        row: dict[str, Any] = {"site": name, "change": kind}
        if old is None:
            row["newSite"] = True
        row["joins"] = [_intent_label(i) for i in joins]
        row["leaves"] = [_intent_label(i) for i in leaves]
        row["sections"] = diff
        rows.append(row)

    objects: list[dict[str, Any]] = []
    for change in changes:
        entry: dict[str, Any] = {
            "kind": change.kind,
            "namespace": change.namespace or None,
            "name": change.name,
            "action": change.action,
            "generation": {
                "before": None if change.current is None else change.current["metadata"].get("generation"),
                "after": _generation(change),
            },
        }
        if change.kind in sections.kinds:
            new_targets = _targets(after, tenant, change.obj)
            old_targets = _targets(before, tenant, change.current) if change.current is not None else set()
            staying = new_targets & old_targets
            entry["sites"] = {
                "targeted": len(new_targets),
                "joining": len(new_targets - old_targets),
                "leaving": len(old_targets - new_targets),
                # Sites it keeps whose manifest changes (by this change or another in the plan).
                "changed": sum(1 for r in rows if r["site"] in staying and r["sections"]),
            }
            if (change.obj.get("spec") or {}).get("strategy") and change.action != "unchanged":
                entry["rollout"] = _rollout_preview(after, tenant, change, new_targets)
        objects.append(entry)

    shown = rows if limit <= 0 else rows[:limit]
    return {
        "objects": objects,
        "summary": {"fleet": sum(1 for t, _ in after.sites if t == tenant), "touched": len(rows), **counts},
        "sites": shown,
        "truncated": len(shown) < len(rows),
    }
