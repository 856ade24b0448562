"""Rollout strategies as the engine reads them: resolved, immutable, pydantic-free.

The schema users write (and its validation with field paths) is ``RolloutStrategy`` in
``kinds/rollout.py``; ``Strategy.from_spec`` takes that validated JSON form and fills in
the defaults, so the engine never re-validates and stays fast on big fleets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetplane.core.selectors import Selector, parse_any

StrategyType = Literal["rolling", "canary", "blueGreen", "ab"]
STRATEGY_TYPES: tuple[StrategyType, ...] = ("rolling", "canary", "blueGreen", "ab")

DEFAULT_APPLY_TIMEOUT_S = 600.0
DEFAULT_SOAK_S = 300.0
DEFAULT_WINDOW_S = 300.0
DEFAULT_THRESHOLD = 10.0


def resolve_amount(value: int | str, total: int, *, round_up: bool) -> int:
    """A count, or ``"N%"`` of ``total`` (rounded up for batch sizes so that 1% of 50 sites
    is one site, not none; rounded down for failure budgets so that 10% never means more)."""
    if isinstance(value, int):
        return value
    share = float(value.rstrip("%")) * total / 100
    return math.ceil(share) if round_up else math.floor(share)


@dataclass(frozen=True)
class Canary:
    sites: tuple[str, ...] = ()
    selector: Selector | None = None
    soak_seconds: float = DEFAULT_SOAK_S
    manual: bool = False  # promotion waits for the operator's ``promote``


@dataclass(frozen=True)
class Compare:
    """Group A (changed first) against group B (not yet changed), for ``ab`` and ``blueGreen``."""

    group_a: Selector = field(default_factory=Selector)
    window_seconds: float = DEFAULT_WINDOW_S
    threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Strategy:
    type: StrategyType = "rolling"
    # Sites per wave: a count or "N%" of the targeted sites when the waves are planned.
    batch_size: int | str = 1
    # Sites of one wave in flight at once; None: the whole wave.
    max_parallel: int | None = None
    # Failed sites tolerated; one more stops the rollout. A count or "N%" of the targeted sites.
    max_failures: int | str = 0
    apply_timeout_seconds: float = DEFAULT_APPLY_TIMEOUT_S
    min_health: float = 0.0
    # How long an applied site may stay below ``min_health`` before it counts as failed
    # (health dips while an upgraded site restarts).
    health_grace_seconds: float = 0.0
    auto_rollback: bool = False
    canary: Canary | None = None
    compare: Compare | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Strategy:
        """From the validated JSON form (``RolloutStrategy``); unknown keys are ignored."""
        spec = spec or {}
        kind: StrategyType = spec.get("type") or "rolling"
        canary = compare = None
        if kind == "canary":
            c = spec.get("canary") or {}
            sel = c.get("selector")
            canary = Canary(
                sites=tuple(c.get("sites") or ()),
                selector=parse_any(sel) if sel not in (None, "", {}) else None,
                soak_seconds=float(c.get("soakSeconds", DEFAULT_SOAK_S)),
                manual=c.get("promotion", "auto") == "manual",
            )
        elif kind in ("ab", "blueGreen"):
            c = spec.get(kind) or {}
            compare = Compare(
                group_a=parse_any(c.get("groupA")),
                window_seconds=float(c.get("windowSeconds", DEFAULT_WINDOW_S)),
                threshold=float(c.get("threshold", DEFAULT_THRESHOLD)),
            )
        # Blue/green switches group B over in one step once A is promoted.
        default_batch: int | str = "100%" if kind == "blueGreen" else 1
        return cls(
            type=kind,
            batch_size=spec.get("batchSize", default_batch),
            max_parallel=spec.get("maxParallel"),
            max_failures=spec.get("maxFailures", 0),
            apply_timeout_seconds=float(spec.get("applyTimeoutSeconds", DEFAULT_APPLY_TIMEOUT_S)),
            min_health=float(spec.get("minHealth", 0.0)),
            health_grace_seconds=float(spec.get("healthGraceSeconds", 0.0)),
            auto_rollback=bool(spec.get("autoRollback", False)),
            canary=canary,
            compare=compare,
        )

    def batch(self, total: int) -> int:
        return max(1, resolve_amount(self.batch_size, total, round_up=True))

    def parallel(self, wave_size: int) -> int:
        """Sites of a wave of ``wave_size`` that may be in flight at once."""
        limit = wave_size if self.max_parallel is None else min(self.max_parallel, wave_size)
        return max(1, limit)

    def budget(self, total: int) -> int:
        return max(0, resolve_amount(self.max_failures, total, round_up=False))
