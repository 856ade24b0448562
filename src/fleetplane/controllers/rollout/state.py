"""The persisted state of one rollout: plain dataclasses with an exact JSON round trip.

This is what a ``Rollout`` object's ``status`` holds (``kinds/rollout.py`` validates the
same shape), so a restarted controller resumes from the stored status alone. Times are
seconds since the epoch as floats, from the clock the engine was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fleetplane.kinds.rollout import Phase, SiteState

# The names live with the Rollout kind (its status schema); the engine uses the same ones.
PHASES: tuple[Phase, ...] = get_args(Phase)
# Phases in which nothing more goes out unless the operator rolls back.
STOPPED: frozenset[str] = frozenset({"Completed", "Failed", "Aborted", "RolledBack"})

SiteStateName = SiteState
SITE_STATES: tuple[SiteStateName, ...] = get_args(SiteState)
# A site in one of these has its result for the new revision (or has been taken back).
SITE_DONE: frozenset[str] = frozenset({"Succeeded", "Failed", "RolledBack", "RollbackFailed"})
COUNT_KEYS = {
    "Pending": "pending",
    "InProgress": "inProgress",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "RollingBack": "rollingBack",
    "RolledBack": "rolledBack",
    "RollbackFailed": "rollbackFailed",
}

WaveRole = Literal["canary", "groupA", "batch", "late"]


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS.values(), 0)


@dataclass
class SiteRecord:
    wave: int
    state: SiteStateName = "Pending"
    handedAt: float | None = None  # when the new revision was handed out (at most once)
    appliedAt: float | None = None  # first seen applied at the new revision
    finishedAt: float | None = None
    rollbackAt: float | None = None  # when the previous revision was handed back (at most once)
    reason: str | None = None
    # False once the site left the target set; it no longer gates its wave.
    inTarget: bool = True
    # What the site ran before the hand-out, for kinds whose absence keeps what a site runs
    # (``SiteObservation.baseline``: the OS version); a rollback with no older revision for
    # the site puts this back. None for other kinds.
    before: dict[str, Any] | None = None

    def copy(self) -> SiteRecord:
        # Positional, not dataclasses.replace: a step copies the records it changes.
        return SiteRecord(
            self.wave,
            self.state,
            self.handedAt,
            self.appliedAt,
            self.finishedAt,
            self.rollbackAt,
            self.reason,
            self.inTarget,
            self.before,  # never changed in place: set once, at hand-out
        )

    def to_dict(self) -> dict[str, Any]:
        # Defaults are left out: a status with 100,000 sites stays as small as it can.
        out: dict[str, Any] = {"wave": self.wave, "state": self.state}
        for name in ("handedAt", "appliedAt", "finishedAt", "rollbackAt", "reason"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if not self.inTarget:
            out["inTarget"] = False
        if self.before is not None:
            out["before"] = dict(self.before)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteRecord:
        return cls(
            wave=int(data["wave"]),
            state=data.get("state", "Pending"),
            handedAt=_float(data.get("handedAt")),
            appliedAt=_float(data.get("appliedAt")),
            finishedAt=_float(data.get("finishedAt")),
            rollbackAt=_float(data.get("rollbackAt")),
            reason=data.get("reason"),
            inTarget=bool(data.get("inTarget", True)),
            before=dict(data["before"]) if isinstance(data.get("before"), dict) else None,
        )


@dataclass
class WaveRecord:
    index: int
    role: WaveRole
    sites: list[str] = field(default_factory=list)
    startedAt: float | None = None
    finishedAt: float | None = None
    counts: dict[str, int] = field(default_factory=empty_counts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "role": self.role, "sites": list(self.sites)}
        if self.startedAt is not None:
            out["startedAt"] = self.startedAt
        if self.finishedAt is not None:
            out["finishedAt"] = self.finishedAt
        out["counts"] = dict(self.counts)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WaveRecord:
        return cls(
            index=int(data["index"]),
            role=data["role"],
            sites=list(data.get("sites") or []),
            startedAt=_float(data.get("startedAt")),
            finishedAt=_float(data.get("finishedAt")),
            counts={**empty_counts(), **(data.get("counts") or {})},
        )


@dataclass
class OperatorSeen:
    """The operator fields of ``Rollout.spec`` as last acted upon (edges become actions)."""

    paused: bool = False
    promote: bool = False
    abort: bool = False
    rollback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatorSeen:
        return cls(**{k: bool(data.get(k, False)) for k in ("paused", "promote", "abort", "rollback")})


@dataclass
class Comparison:
    """The A/B health comparison at the end of the window."""

    groupA: float | None
    groupB: float | None
    groupASites: int
    groupBSites: int
    threshold: float
    at: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        return cls(
            groupA=_float(data.get("groupA")),
            groupB=_float(data.get("groupB")),
            groupASites=int(data.get("groupASites", 0)),
            groupBSites=int(data.get("groupBSites", 0)),
            threshold=float(data.get("threshold", 0.0)),
            at=float(data.get("at", 0.0)),
        )


@dataclass
class RolloutState:
    revision: int  # the intent revision this rollout carries out
    previousRevision: int | None = None  # what sites go back to; None: the intent did not exist
    phase: Phase = "Pending"
    reason: str | None = None  # CamelCase, why it stopped (or is rolling back)
    message: str | None = None  # for people: which sites and why
    phaseSince: float | None = None
    startedAt: float | None = None
    finishedAt: float | None = None
    currentWave: int = 0
    rollbackWave: int = 0
    soakStartedAt: float | None = None  # canary soak or A/B window
    promoteRequested: bool = False
    promoted: bool = False
    pausedFrom: Phase | None = None
    failureBudget: int = 0
    etaAt: float | None = None
    comparison: Comparison | None = None
    operator: OperatorSeen = field(default_factory=OperatorSeen)
    counts: dict[str, int] = field(default_factory=empty_counts)
    waves: list[WaveRecord] = field(default_factory=list)
    sites: dict[str, SiteRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "waves":
                value = [w.to_dict() for w in self.waves]
            elif f.name == "sites":
                value = {name: rec.to_dict() for name, rec in self.sites.items()}
            elif isinstance(value, (Comparison, OperatorSeen)):
                value = value.to_dict()
            elif isinstance(value, dict):
                value = dict(value)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], reuse: tuple[Mapping[str, Any], RolloutState] | None = None
    ) -> RolloutState:
        """``reuse``: the raw ``sites`` and the state parsed from them last time; a site whose
        record is unchanged keeps its ``SiteRecord`` (records are never changed in place), so
        re-reading a status costs what changed, and ``changed_sites`` skips the rest."""
        comparison = data.get("comparison")
        prev = data.get("previousRevision")
        return cls(
            revision=int(data["revision"]),
            previousRevision=None if prev is None else int(prev),
            phase=data.get("phase", "Pending"),
            reason=data.get("reason"),
            message=data.get("message"),
            phaseSince=_float(data.get("phaseSince")),
            startedAt=_float(data.get("startedAt")),
            finishedAt=_float(data.get("finishedAt")),
            currentWave=int(data.get("currentWave", 0)),
            rollbackWave=int(data.get("rollbackWave", 0)),
            soakStartedAt=_float(data.get("soakStartedAt")),
            promoteRequested=bool(data.get("promoteRequested", False)),
            promoted=bool(data.get("promoted", False)),
            pausedFrom=data.get("pausedFrom"),
            failureBudget=int(data.get("failureBudget", 0)),
            etaAt=_float(data.get("etaAt")),
            comparison=Comparison.from_dict(comparison) if comparison else None,
            operator=OperatorSeen.from_dict(data.get("operator") or {}),
            counts={**empty_counts(), **(data.get("counts") or {})},
            waves=[WaveRecord.from_dict(w) for w in data.get("waves") or []],
            sites=_site_records(data.get("sites") or {}, reuse),
        )

    def clone(self) -> RolloutState:
        """A copy that ``step`` may change without touching the caller's state. The site
        records are shared, not copied: whoever changes one replaces it with its own copy
        first (``SiteRecord.copy``), so a step costs what it changes, not the fleet size."""
        return dataclasses.replace(
            self,
            comparison=dataclasses.replace(self.comparison) if self.comparison else None,
            operator=dataclasses.replace(self.operator),
            counts=dict(self.counts),
            waves=[dataclasses.replace(w, sites=list(w.sites), counts=dict(w.counts)) for w in self.waves],
            sites=dict(self.sites),
        )


def _site_records(
    raw: Mapping[str, Any], reuse: tuple[Mapping[str, Any], RolloutState] | None
) -> dict[str, SiteRecord]:
    if reuse is None:
        return {name: SiteRecord.from_dict(rec) for name, rec in raw.items()}
    old_raw, old = reuse
    out: dict[str, SiteRecord] = {}
    for name, rec in raw.items():
        kept = old.sites.get(name)
        out[name] = kept if kept is not None and old_raw.get(name) == rec else SiteRecord.from_dict(rec)
    return out


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
