"""A simulated fleet and a driver that runs the rollout engine against it step by step.

Each simulated site applies whatever revision it was last given after its own delay and
reports it (or a failed item, or nothing at all when it hangs); its health is one number
before the change and may be another after it. The driver feeds ``step`` with the fleet's
reports, applies ``hand_out`` / ``roll_back`` to the fleet, and advances the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetplane.controllers.rollout import (
    Action,
    RolloutState,
    SiteObservation,
    StepResult,
    Strategy,
    initial_state,
    step,
)

Outcome = Literal["ok", "fail", "hang"]
NEW, OLD = 2, 1


@dataclass
class SimSite:
    labels: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds from being handed a revision to reporting it applied
    outcome: Outcome = "ok"  # what applying the new revision does
    health: float = 90.0  # before the change (and after a rollback)
    health_after: float | None = None  # after the new revision is applied; None: unchanged
    given: int | None = OLD  # the revision its manifest carries
    given_at: float = float("-inf")  # the previous revision has always been there
    handed_new: int = 0  # how often the new revision was handed to it
    handed_back: int = 0

    def observe(self, now: float) -> SiteObservation:
        ready = now >= self.given_at + self.delay
        running = self.given if ready else (OLD if self.given == NEW else NEW)
        if running == NEW and self.outcome == "hang":
            return SiteObservation(labels=self.labels, revision=NEW, health=self.health)
        failed = ("os/os: install failed: injected",) if running == NEW and self.outcome == "fail" else ()
        health = self.health_after if running == NEW and self.health_after is not None else self.health
        return SiteObservation(
            labels=self.labels, revision=running, applied=not failed, failed=failed, health=health
        )


@dataclass
class Fleet:
    sites: dict[str, SimSite]

    def observe(self, now: float) -> dict[str, SiteObservation]:
        return {name: site.observe(now) for name, site in self.sites.items()}

    def apply(self, result: StepResult, now: float) -> None:
        for name in result.hand_out:
            site = self.sites[name]
            site.given, site.given_at, site.handed_new = NEW, now, site.handed_new + 1
        for name in result.roll_back:
            site = self.sites[name]
            site.given, site.given_at, site.handed_back = OLD, now, site.handed_back + 1


def fleet_of(names: Iterable[str], **kw: Any) -> Fleet:
    return Fleet({name: SimSite(**kw) for name in names})


@dataclass
class Run:
    """Everything a driven rollout did, for assertions."""

    state: RolloutState
    results: list[StepResult] = field(default_factory=list)
    states: list[RolloutState] = field(default_factory=list)
    now: float = 0.0

    @property
    def handed(self) -> list[str]:
        return [n for r in self.results for n in r.hand_out]

    @property
    def rolled_back(self) -> list[str]:
        return [n for r in self.results for n in r.roll_back]

    def trace(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        return [(r.hand_out, r.roll_back) for r in self.results]


Hook = Callable[[int, RolloutState, Fleet], list[Action]]


def settled(state: RolloutState) -> bool:
    """Stopped for good: a stopped phase and no site still applying or rolling back."""
    busy = state.counts["inProgress"] + state.counts["rollingBack"]
    return state.phase in ("Completed", "Failed", "Aborted", "RolledBack") and busy == 0


def drive(
    strategy: Strategy,
    fleet: Fleet,
    *,
    dt: float | Callable[[int], float] = 10.0,
    actions: Hook | None = None,
    max_steps: int = 5000,
    round_trip: bool = False,
    state: RolloutState | None = None,
    start: float = 1000.0,
    until: Callable[[RolloutState], bool] = settled,
    must_finish: bool = True,
) -> Run:
    """Step until ``until(state)`` (default: settled); with ``round_trip`` the state goes
    through JSON between every two steps, as a restarted controller would read it."""
    run = Run(state or initial_state(NEW, OLD), now=start)
    for i in range(max_steps):
        acts = actions(i, run.state, fleet) if actions else []
        current = run.state
        if round_trip:
            current = RolloutState.from_dict(json.loads(json.dumps(current.to_dict())))
        given = current.to_dict()
        result = step(current, strategy, fleet.observe(run.now), run.now, acts)
        # step is pure: the state it was given is untouched (its site records are shared)
        assert current.to_dict() == given
        assert result.changed == (result.state.to_dict() != given)
        fleet.apply(result, run.now)
        run.results.append(result)
        run.states.append(result.state)
        run.state = result.state
        if until(run.state):
            return run
        run.now += dt(i) if callable(dt) else dt
    if not must_finish:
        return run
    raise AssertionError(f"the rollout did not settle in {max_steps} steps: {run.state.phase}")


def names(n: int, prefix: str = "site") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


def by_state(state: RolloutState) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, rec in state.sites.items():
        out.setdefault(rec.state, []).append(name)
    return out
