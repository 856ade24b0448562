"""Properties of the rollout engine over random fleets, strategies, failures and actions.

Each example drives a rollout to its end against a simulated fleet (1-300 sites with random
apply delays, failed installs, hung sites and health values; random pauses, promotions,
aborts, rollbacks and sites joining mid-way) with a simulated clock, checking after every
step what an operator relies on: waves respect their parallelism, no site is handed the
same revision twice, the failure budget holds up to the batch in flight, a completed
rollout reached every site, and a controller restarted from the stored JSON at every step
does exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetplane.controllers.rollout import Action, RolloutState, StepResult, Strategy
from tests.controllers.rollout.fleet import Fleet, Outcome, SimSite, drive

MAX_WAVES = 30  # keeps an example fast: batches are at least 1/30 of the fleet


@dataclass(frozen=True)
class Scenario:
    n: int
    spec: dict[str, Any]
    seed: int
    fail_rate: float
    hang_rate: float
    slow_rate: float
    sick_rate: float  # share of sites whose health changes with the new revision
    pause_at: int | None
    resume_after: int
    abort_at: int | None
    rollback_at: int | None
    join_at: int | None
    joiners: int
    promote_at: int | None  # an early promotion: skips a soak or an A/B window

    def fleet(self) -> Fleet:
        rng = random.Random(self.seed)
        timeout = float(self.spec["applyTimeoutSeconds"])
        sites = {}
        for i in range(self.n):
            roll = rng.random()
            outcome: Outcome = "ok"
            if roll < self.fail_rate:
                outcome = "fail"
            elif roll < self.fail_rate + self.hang_rate:
                outcome = "hang"
            sites[f"s{i:03d}"] = SimSite(
                labels={
                    "env": rng.choice(["dev", "prod", "prod"]),
                    "ring": rng.choice(["canary", "main", "main"]),
                },
                # Some sites are slower than the timeout.
                delay=rng.uniform(0, timeout * (1.5 if rng.random() < self.slow_rate else 0.8)),
                outcome=outcome,
                health=rng.uniform(40, 100),
                health_after=rng.uniform(0, 100) if rng.random() < self.sick_rate else None,
            )
        return Fleet(sites)

    def dt(self, i: int) -> float:
        return float(1 + (self.seed * 7919 + i * 104729) % 40)

    def actions(self, i: int, state: RolloutState, fleet: Fleet) -> list[Action]:
        out: list[Action] = []
        if i == self.join_at:
            for k in range(self.joiners):
                fleet.sites[f"j{k:02d}"] = SimSite(labels={"env": "prod"}, delay=float(k))
        if i == self.pause_at:
            out.append("pause")
        if self.pause_at is not None and i == self.pause_at + self.resume_after:
            out.append("resume")
        manual = (self.spec.get("canary") or {}).get("promotion") == "manual"
        if manual and state.phase == "Soaking" and (self.seed + i) % 3 == 0:
            out.append("promote")  # someone promotes a manual canary eventually
        if i == self.promote_at:
            out.append("promote")
        if i == self.abort_at:
            out.append("abort")
        if i == self.rollback_at:
            out.append("rollback")
        return out


def percent(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda p: f"{p}%")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["rolling", "canary", "blueGreen", "ab"]))
    least = max(1, math.ceil(n / MAX_WAVES))
    spec: dict[str, Any] = {
        "type": kind,
        "batchSize": draw(
            st.one_of(st.integers(least, max(least, n)), percent(math.ceil(100 / MAX_WAVES), 100))
        ),
        "maxFailures": draw(st.one_of(st.integers(0, 8), percent(0, 30))),
        "applyTimeoutSeconds": draw(st.integers(10, 120)),
        "minHealth": draw(st.sampled_from([0, 0, 20, 50, 80])),
        "healthGraceSeconds": draw(st.sampled_from([0, 0, 15])),
        "autoRollback": draw(st.booleans()),
    }
    if draw(st.booleans()):
        spec["maxParallel"] = draw(st.integers(1, 40))
    if kind == "canary":
        canary: dict[str, Any] = {
            "soakSeconds": draw(st.integers(0, 200)),
            "promotion": draw(st.sampled_from(["auto", "manual"])),
        }
        if draw(st.booleans()):
            canary["selector"] = "ring=canary"
        else:
            canary["sites"] = [f"s{i:03d}" for i in draw(st.sets(st.integers(0, n - 1), max_size=5))]
        spec["canary"] = canary
    elif kind in ("ab", "blueGreen"):
        spec[kind] = {
            "groupA": "env=dev",
            "windowSeconds": draw(st.integers(0, 200)),
            "threshold": draw(st.integers(0, 40)),
        }
    pause_at = draw(st.one_of(st.none(), st.integers(0, 30)))
    return Scenario(
        n=n,
        spec=spec,
        seed=draw(st.integers(0, 2**31)),
        fail_rate=draw(st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.3])),
        hang_rate=draw(st.sampled_from([0.0, 0.0, 0.02, 0.1])),
        slow_rate=draw(st.sampled_from([0.0, 0.0, 0.02, 0.1])),
        sick_rate=draw(st.sampled_from([0.0, 0.05, 0.3, 1.0])),
        pause_at=pause_at,
        resume_after=draw(st.integers(1, 10)),
        abort_at=draw(st.integers(0, 20)) if draw(st.integers(0, 7)) == 0 else None,
        rollback_at=draw(st.integers(0, 30)) if draw(st.integers(0, 5)) == 0 else None,
        join_at=draw(st.one_of(st.none(), st.integers(0, 40))),
        joiners=draw(st.integers(1, 12)),
        promote_at=draw(st.integers(0, 10)) if draw(st.integers(0, 4)) == 0 else None,
    )


def check_step(strategy: Strategy, result: StepResult, handed: set[str], rolled: set[str]) -> None:
    s = result.state
    # No site is handed the new revision twice, nor taken back twice, nor taken back unhanded.
    assert not handed & set(result.hand_out), "a site got the same revision twice"
    handed.update(result.hand_out)
    assert not rolled & set(result.roll_back), "a site was rolled back twice"
    assert set(result.roll_back) <= handed, "a site was rolled back that never got the revision"
    rolled.update(result.roll_back)

    waves = [w for w in s.waves if w.role != "late"]
    flying_waves = set()
    for wave in waves:
        members = [n for n in wave.sites if s.sites[n].inTarget]
        limit = strategy.parallel(len(members))
        flying = sum(1 for n in members if s.sites[n].state == "InProgress")
        back = sum(1 for n in members if s.sites[n].state == "RollingBack")
        assert flying <= limit, f"wave {wave.index}: {flying} in flight, parallelism {limit}"
        assert back <= limit, f"wave {wave.index}: {back} rolling back, parallelism {limit}"
        if flying:
            flying_waves.add(wave.index)
    assert len(flying_waves) <= 1, f"waves {sorted(flying_waves)} in flight at once"

    failed = sum(1 for w in waves for n in w.sites if s.sites[n].inTarget and s.sites[n].state == "Failed")
    batch = max((strategy.parallel(len(w.sites)) for w in waves), default=0)
    assert failed <= s.failureBudget + batch, f"{failed} failed, budget {s.failureBudget}, in flight {batch}"

    if s.phase == "Completed":
        assert failed <= s.failureBudget
        for wave in waves:
            for name in wave.sites:
                rec = s.sites[name]
                if rec.inTarget:  # reached, and finished, every targeted site
                    assert rec.handedAt is not None, f"{name} was skipped"
                    assert rec.state in ("Succeeded", "Failed"), f"{name} is {rec.state}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_rollouts_keep_their_promises(sc: Scenario) -> None:
    strategy = Strategy.from_spec(sc.spec)
    handed: set[str] = set()
    rolled: set[str] = set()
    fleet = sc.fleet()
    run = drive(strategy, fleet, dt=sc.dt, actions=sc.actions, max_steps=4000)
    for result in run.results:
        check_step(strategy, result, handed, rolled)
    assert all(site.handed_new <= 1 and site.handed_back <= 1 for site in fleet.sites.values())

    # A controller that restarts from the stored JSON before every step does the same.
    resumed = drive(strategy, sc.fleet(), dt=sc.dt, actions=sc.actions, max_steps=4000, round_trip=True)
    assert resumed.trace() == run.trace()
    assert resumed.state.to_dict() == run.state.to_dict()
