"""Rollout: the progress of one intent revision across its sites, by a strategy.

One per intent revision, in the intent's namespace, created by the rollout controller
(clients may not create one; they patch ``spec.paused|promote|abort|rollback`` to act on
it). ``status`` is the engine's persisted state (``controllers/rollout``): phase, waves
with counts, per-site state, ETA and why it stopped. ``RolloutStrategy`` is the
``strategy`` field that intent kinds embed. See docs/rollouts.md.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fleetplane.core.names import DNS1123_SUBDOMAIN_MAX_LENGTH, validate_dns1123_subdomain
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import LabelSelector, Schema, check_selector

_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


def _amount(value: Any, what: str, minimum: int) -> int | str:
    """A count ``>= minimum`` or a percentage ``"N%"`` (0-100)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{what} must be a count or a percentage such as "25%"')
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"{what} must be at least {minimum}")
        return value
    if not _PERCENT.match(value) or int(value[:-1]) < minimum:
        raise ValueError(f'{what} must be a count or a percentage from {minimum}% to 100%, such as "25%"')
    return value


class CanaryStrategy(Schema):
    # Canary sites by name and/or by selector; neither: the first batch is the canary.
    sites: list[str] = Field(default_factory=list, max_length=10000)
    selector: str | LabelSelector = ""
    soakSeconds: float = Field(default=300.0, ge=0)
    # auto: promoted after soakSeconds; manual: waits for spec.promote.
    promotion: Literal["auto", "manual"] = "auto"

    @field_validator("sites")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if problems := validate_dns1123_subdomain(name):
                raise ValueError(f"site {name!r}: {'; '.join(problems)}")
        return value

    @field_validator("selector", mode="before")
    @classmethod
    def _selector(cls, value: Any) -> Any:
        return check_selector(value)


class GroupCompareStrategy(Schema):
    """Group A (by selector) changes first; after ``windowSeconds`` its mean health must not
    be worse than group B's (sites not changed yet) by more than ``threshold``."""

    groupA: str | LabelSelector
    windowSeconds: float = Field(default=300.0, ge=0)
    threshold: float = Field(default=10.0, ge=0, le=100)

    @field_validator("groupA", mode="before")
    @classmethod
    def _selector(cls, value: Any) -> Any:
        if value in ("", {}) or (isinstance(value, str) and not value.strip()):
            # An empty selector would make every site group A, with no group B to compare.
            raise ValueError("must select some sites (an empty selector selects all of them)")
        return check_selector(value)


StrategyType = Literal["rolling", "canary", "blueGreen", "ab"]


class RolloutStrategy(Schema):
    """How an intent revision goes out. Embed as ``strategy: RolloutStrategy = RolloutStrategy()``."""

    type: StrategyType = "rolling"
    # Sites per wave (count or "N%"); default 1, blueGreen: "100%" (group B at once).
    batchSize: int | str | None = None
    maxParallel: int | None = Field(default=None, ge=1)  # of one wave; default: the whole wave
    maxFailures: int | str = 0  # failed sites tolerated; one more stops the rollout
    applyTimeoutSeconds: float = Field(default=600.0, gt=0)
    minHealth: float = Field(default=0.0, ge=0, le=100)  # 0: no health gate
    healthGraceSeconds: float = Field(default=0.0, ge=0)
    autoRollback: bool = False  # on a stop at the failure budget, roll back on its own
    canary: CanaryStrategy | None = None
    ab: GroupCompareStrategy | None = None
    blueGreen: GroupCompareStrategy | None = None

    @field_validator("batchSize", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> Any:
        return None if value is None else _amount(value, "batchSize", 1)

    @field_validator("maxFailures", mode="before")
    @classmethod
    def _failures(cls, value: Any) -> Any:
        return _amount(value, "maxFailures", 0)

    @model_validator(mode="after")
    def _blocks(self) -> RolloutStrategy:
        for block in ("canary", "ab", "blueGreen"):
            if getattr(self, block) is not None and self.type != block:
                raise ValueError(f"{block}: allowed only when type is {block!r} (type is {self.type!r})")
        if self.type in ("ab", "blueGreen") and getattr(self, self.type) is None:
            raise ValueError(f"{self.type}: required when type is {self.type!r} (it names groupA)")
        return self


class IntentRef(Schema):
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{0,62}$")
    name: str = Field(min_length=1, max_length=DNS1123_SUBDOMAIN_MAX_LENGTH)
    generation: int = Field(ge=1)
    # The revision sites go back to on rollback; absent: the intent is new (rollback removes it).
    previousGeneration: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if problems := validate_dns1123_subdomain(value):
            raise ValueError("; ".join(problems))
        return value


class RolloutSpec(Schema):
    intent: IntentRef
    strategy: RolloutStrategy = Field(default_factory=RolloutStrategy)
    # Operator actions, level-triggered: the controller acts on each change once.
    paused: bool = False
    promote: bool = False  # skip the rest of a canary soak or A/B window
    abort: bool = False
    rollback: bool = False


# -- status: the engine's state (controllers/rollout/state.py), field for field --------------

Phase = Literal[
    "Pending",
    "Progressing",
    "Paused",
    "Soaking",
    "Completed",
    "Failed",
    "Aborted",
    "RollingBack",
    "RolledBack",
]
SiteState = Literal[
    "Pending", "InProgress", "Succeeded", "Failed", "RollingBack", "RolledBack", "RollbackFailed"
]


class RolloutCounts(Schema):
    pending: int = 0
    inProgress: int = 0
    succeeded: int = 0
    failed: int = 0
    rollingBack: int = 0
    rolledBack: int = 0
    rollbackFailed: int = 0


class RolloutSiteStatus(Schema):
    wave: int = Field(ge=0)
    state: SiteState = "Pending"
    handedAt: float | None = None
    appliedAt: float | None = None
    finishedAt: float | None = None
    rollbackAt: float | None = None
    reason: str | None = None
    inTarget: bool = True
    # What the site ran before the hand-out (kinds whose absence keeps it: {version: …}).
    before: dict[str, Any] | None = None


class RolloutWaveStatus(Schema):
    index: int = Field(ge=0)
    role: Literal["canary", "groupA", "batch", "late"]
    sites: list[str] = Field(default_factory=list)
    startedAt: float | None = None
    finishedAt: float | None = None
    counts: RolloutCounts = Field(default_factory=RolloutCounts)


class RolloutComparison(Schema):
    groupA: float | None = None
    groupB: float | None = None
    groupASites: int = 0
    groupBSites: int = 0
    threshold: float = 0.0
    at: float = 0.0


class RolloutOperatorSeen(Schema):
    paused: bool = False
    promote: bool = False
    abort: bool = False
    rollback: bool = False


class RolloutStatus(Schema):
    revision: int = 0
    previousRevision: int | None = None
    phase: Phase = "Pending"
    reason: str | None = None
    message: str | None = None
    phaseSince: float | None = None
    startedAt: float | None = None
    finishedAt: float | None = None
    currentWave: int = 0
    rollbackWave: int = 0
    soakStartedAt: float | None = None
    promoteRequested: bool = False
    promoted: bool = False
    pausedFrom: Phase | None = None
    failureBudget: int = 0
    etaAt: float | None = None
    comparison: RolloutComparison | None = None
    operator: RolloutOperatorSeen = Field(default_factory=RolloutOperatorSeen)
    counts: RolloutCounts = Field(default_factory=RolloutCounts)
    waves: list[RolloutWaveStatus] = Field(default_factory=list)
    sites: dict[str, RolloutSiteStatus] = Field(default_factory=dict)


def rollout_name(kind: str, name: str, generation: int) -> str:
    """The Rollout of revision ``generation`` of intent ``kind/name``: ``<kind>-<name>-<gen>``,
    lowercase (two kinds may share an intent name); a too-long name is cut and hashed."""
    tail = f"-{generation}"
    full = f"{kind.lower()}-{name}"
    if len(full) + len(tail) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        digest = hashlib.sha256(full.encode()).hexdigest()[:10]
        full = f"{full[: DNS1123_SUBDOMAIN_MAX_LENGTH - len(tail) - 11].rstrip('.-')}-{digest}"
    return full + tail


ROLLOUT = KindInfo(
    kind="Rollout",
    plural="rollouts",
    short_names=("ro",),
    spec_model=RolloutSpec,
    status_model=RolloutStatus,
    scope=Scope.NAMESPACE,
    # The controller creates one per intent revision; people act on it by patching spec.
    api_write_verbs=frozenset({"update", "patch", "delete"}),
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("INTENT", "spec.intent.name"),
        Column("KIND", "spec.intent.kind", wide_only=True),
        Column("REVISION", "spec.intent.generation"),
        Column("STRATEGY", "spec.strategy.type"),
        Column("PHASE", "status.phase"),
        Column("SUCCEEDED", "status.counts.succeeded"),
        Column("FAILED", "status.counts.failed"),
        Column("PENDING", "status.counts.pending", wide_only=True),
        Column("REASON", "status.reason", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
