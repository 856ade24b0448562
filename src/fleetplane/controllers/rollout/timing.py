"""When a rollout moves on the clock alone, and when it should complete."""

from __future__ import annotations

from fleetplane.controllers.rollout.state import RolloutState
from fleetplane.controllers.rollout.strategy import Strategy


def next_wakeup(state: RolloutState, strategy: Strategy) -> float | None:
    """The earliest time at which ``step`` would act on the clock alone (an apply timeout, the
    end of a health grace, a soak or an A/B window); None when only news can move it."""
    times: list[float] = []
    for rec in state.sites.values():
        if not rec.inTarget:
            continue
        if rec.state == "InProgress" and rec.handedAt is not None:
            times.append(rec.handedAt + strategy.apply_timeout_seconds)
            if rec.appliedAt is not None:
                times.append(rec.appliedAt + strategy.health_grace_seconds)
        elif rec.state == "RollingBack" and rec.rollbackAt is not None:
            times.append(rec.rollbackAt + strategy.apply_timeout_seconds)
    if state.phase == "Soaking" and state.soakStartedAt is not None:
        if strategy.canary is not None and not strategy.canary.manual:
            times.append(state.soakStartedAt + strategy.canary.soak_seconds)
        elif strategy.compare is not None:
            times.append(state.soakStartedAt + strategy.compare.window_seconds)
    return min(times) if times else None


def eta_of(s: RolloutState, strategy: Strategy, now: float) -> float | None:
    """When the rollout should complete, from the mean duration of the finished waves; None
    while unknown (no wave finished yet, paused, waiting for a manual promotion) or stopped."""
    if s.phase not in ("Progressing", "Soaking"):
        return None
    waves = [w for w in s.waves if w.role != "late"]
    spans = [
        w.finishedAt - w.startedAt for w in waves if w.startedAt is not None and w.finishedAt is not None
    ]
    if not spans:
        return None
    mean = sum(spans) / len(spans)
    left = 0.0
    for w in waves[s.currentWave :]:
        if w.finishedAt is not None:
            continue
        left += max(0.0, mean - (now - w.startedAt)) if w.startedAt is not None else mean
    if not s.promoted and waves and waves[0].role in ("canary", "groupA"):
        if strategy.canary is not None and strategy.canary.manual and not s.promoteRequested:
            return None
        hold = 0.0
        if strategy.canary is not None:
            hold = strategy.canary.soak_seconds
        elif strategy.compare is not None:
            hold = strategy.compare.window_seconds
        started = s.soakStartedAt if s.soakStartedAt is not None else now
        left += max(0.0, hold - (now - started))
    return now + left
