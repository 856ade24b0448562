"""Which revision of an intent a site runs: the intent's history and its rollouts, in memory.

``IntentRevisions`` holds, for one intent, its current object, the specs of its older
revisions (seen on the watch or read back from ``IntentRevision`` objects) and the state of
each of its ``Rollout``s. ``choose(site)`` walks the revisions newest first
(docs/rollouts.md, "Compile controller"):

- a revision without ``spec.strategy`` went out at once to every site: it is the answer;
- a revision with a strategy is the answer if its Rollout has handed it to the site
  (``holds_new``); otherwise (no Rollout yet, not reached, rolled back) the walk goes on;
- nothing left: the site never had this intent (``None``).

A site that a running rollout has not reached keeps the revision an older rollout gave it,
so abort and rollback need no special case. The compile then checks that the chosen
revision targets the site. Pure and synchronous; ``controllers/manifests.py`` feeds it.

One special case: a kind whose absence keeps what a site runs (the OS) would leave a site
rolled back past every revision that reached it on the new version. For those the rollout
records what the site ran at hand-out (``SiteRecord.before``), and ``restore_object`` turns it
into the intent at revision ``RESTORED`` for the compile to use instead of nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.rollout import RolloutState, holds_new
from fleetplane.core.objects import Obj

# Specs remembered per intent beyond those a Rollout names (the store keeps the history).
MEMORY = 16
# The "revision" of an intent object built from a site's ``before`` record: not a revision of
# the intent, but what the site ran before one of them reached it (revisions start at 1).
RESTORED = 0


class RevisionMissing(Exception):
    """The site should run a revision whose spec is not known (yet): leave its manifest as is."""


@dataclass
class IntentRevisions:
    current: Obj
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[int, RolloutState] = field(default_factory=dict)
    # The raw ``status.sites`` each of ``rollouts`` was parsed from (RolloutState.from_dict's reuse).
    rollout_sites: dict[int, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.current["metadata"].get("uid") or "")

    @property
    def generation(self) -> int:
        return int(self.current["metadata"].get("generation") or 1)

    def spec_of(self, revision: int) -> dict[str, Any] | None:
        if revision == self.generation:
            return dict(self.current.get("spec") or {})
        return self.specs.get(revision)

    def set_current(self, obj: Obj) -> None:
        self.current = obj
        self.specs[self.generation] = dict(obj.get("spec") or {})
        self._forget()

    def add_spec(self, revision: int, spec: dict[str, Any]) -> bool:
        """Record an older revision's spec; whether it was news."""
        if revision in self.specs or revision > self.generation:
            return False
        self.specs[revision] = spec
        self._forget()
        return True

    def _forget(self) -> None:
        named = {r for ro in self.rollouts.values() for r in (ro.revision, ro.previousRevision)}
        for revision in sorted(self.specs)[:-MEMORY]:
            if revision not in named and revision != self.generation:
                del self.specs[revision]

    def reachable(self) -> list[int]:
        """The revisions a site may run, newest first: down to the newest one that went out
        without a strategy (every site got it, so nothing older matters)."""
        out = []
        for revision in sorted({*self.specs, *self.rollouts, self.generation}, reverse=True):
            if revision > self.generation:
                continue
            out.append(revision)
            spec = self.spec_of(revision)
            if spec is not None and not spec.get("strategy"):
                break
        return out

    def choose(self, site: str) -> int | None:
        for revision in self.reachable():
            spec = self.spec_of(revision)
            rollout = self.rollouts.get(revision)
            if spec is None:
                if rollout is not None and holds_new(rollout, site):
                    raise RevisionMissing(f"revision {revision} of {self.describe()}")
                continue
            if not spec.get("strategy"):
                return revision
            if rollout is not None and holds_new(rollout, site):
                return revision
        return None

    def restore_object(self, site: str, chosen: int | None) -> Obj | None:
        """After an undo: the intent as "keep running what you ran before" for ``site``, when
        a revision newer than ``chosen`` (what ``choose`` gave, which does not reach the site)
        was rolled back from it and its rollout recorded what it ran before (only kinds
        whose absence keeps what a site runs record that). The newest such record wins."""
        for revision in self.reachable():
            if chosen is not None and revision <= chosen:
                break
            rollout = self.rollouts.get(revision)
            rec = rollout.sites.get(site) if rollout is not None else None
            if rec is not None and rec.rollbackAt is not None and rec.before is not None:
                obj = self.revision_object(revision)
                obj["metadata"]["generation"] = RESTORED
                obj["spec"] = {**obj["spec"], **rec.before}
                obj["spec"].pop("strategy", None)
                return obj
        return None

    def revision_object(self, revision: int) -> Obj:
        """The intent as it was at ``revision`` (what a contributor reads)."""
        m = self.current["metadata"]
        meta = {"namespace": m.get("namespace") or "", "name": m["name"], "generation": revision}
        return {"kind": self.current.get("kind"), "metadata": meta, "spec": self.spec_of(revision) or {}}

    def describe(self) -> str:
        m = self.current["metadata"]
        return f"{self.current.get('kind')} {m.get('namespace') or ''}/{m['name']}"


def changed_sites(old: RolloutState | None, new: RolloutState | None) -> tuple[set[str], bool]:
    """The sites whose ``holds_new`` differs between two states of one rollout, and whether
    the answer for sites the state does not list (joiners: ``Completed``) changed too."""
    a, b = (old.sites if old else {}), (new.sites if new else {})
    # A record shared by both states (RolloutState.from_dict's reuse) holds the same answer.
    sites = {s for s in a.keys() | b.keys() if a.get(s) is not b.get(s)}
    diff = {
        s for s in sites if (old is not None and holds_new(old, s)) != (new is not None and holds_new(new, s))
    }
    unknown_old = old is not None and old.phase == "Completed"
    unknown_new = new is not None and new.phase == "Completed"
    return diff, unknown_old != unknown_new
