"""The rollout engine: one pure, deterministic state machine per rollout.

``step(state, strategy, observations, now, actions)`` reads the persisted state, what the
targeted sites report and the operator's actions, and returns the next state together with
the sites that should now get the new revision (``hand_out``) or go back to the previous
one (``roll_back``). It does no I/O and never changes its input, so a controller persists
the returned state and compiles manifests from it (``holds_new``); a restart resumes from
the stored state without re-running a finished site or skipping one, because each hand-out
is recorded in the state that announces it. See docs/rollouts.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetplane.controllers.rollout.plan import late_wave, place_joiner, plan_waves
from fleetplane.controllers.rollout.state import (
    COUNT_KEYS,
    SITE_DONE,
    Comparison,
    RolloutState,
    SiteRecord,
    WaveRecord,
    empty_counts,
)
from fleetplane.controllers.rollout.strategy import Strategy
from fleetplane.controllers.rollout.timing import eta_of
from fleetplane.kinds.rollout import Phase

Action = Literal["pause", "resume", "abort", "promote", "rollback"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "abort", "promote", "rollback")
# Failed sites named in a stop message; the status has every one.
MAX_NAMED = 10


@dataclass(frozen=True)
class SiteObservation:
    """What one targeted site reports, as the compile controller derives it for this intent."""

    labels: Mapping[str, str] = field(default_factory=dict)
    # This intent's revision in the manifest the site has applied (or is applying);
    # None: that manifest does not carry the intent.
    revision: int | None = None
    applied: bool = False  # every item of that manifest Applied
    failed: tuple[str, ...] = ()  # "section/name: reason" of each Failed item
    health: float | None = None  # 0-100; None: not known yet
    # When the manifest carrying the engine's last decision for the site was written, if the
    # controller knows; timeouts then count from there rather than from the decision.
    handed_at: float | None = None
    # What the site runs now of what this intent sets, for kinds whose absence does not undo
    # them (an OS stays when no intent names one): ``{"version": "fleetos-1.4.2"}``. Kept in
    # the site's record at hand-out (``before``), so a rollback can put that back.
    baseline: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StepResult:
    state: RolloutState
    hand_out: tuple[str, ...] = ()  # get ``state.revision`` now (sorted)
    roll_back: tuple[str, ...] = ()  # go back to ``state.previousRevision`` now (sorted)
    rejected: tuple[str, ...] = ()  # "action: why" for each action that did not apply
    changed: bool = False  # whether the state differs from the one given


def initial_state(revision: int, previous_revision: int | None = None) -> RolloutState:
    return RolloutState(revision=revision, previousRevision=previous_revision)


def holds_new(state: RolloutState, site: str) -> bool:
    """Whether ``site`` should run this rollout's revision now (else what it had before).
    A site the state does not know yet gets the new revision only once the rollout completed."""
    rec = state.sites.get(site)
    if rec is None:
        return state.phase == "Completed"
    return rec.handedAt is not None and rec.rollbackAt is None


def revision_for(state: RolloutState, site: str) -> int | None:
    """The intent revision ``site`` should run according to this rollout alone."""
    return state.revision if holds_new(state, site) else state.previousRevision


def actions_from_spec(spec: Mapping[str, Any], state: RolloutState) -> list[Action]:
    """The actions implied by the operator fields of ``Rollout.spec`` (``paused``,
    ``promote``, ``abort``, ``rollback``) that this state has not acted upon yet."""
    seen = state.operator
    out: list[Action] = []
    paused = bool(spec.get("paused", False))
    if paused != seen.paused:
        out.append("pause" if paused else "resume")
    if spec.get("promote") and not seen.promote:
        out.append("promote")
    if spec.get("abort") and not seen.abort:
        out.append("abort")
    if spec.get("rollback") and not seen.rollback:
        out.append("rollback")
    return out


def step(
    state: RolloutState,
    strategy: Strategy,
    observations: Mapping[str, SiteObservation],
    now: float,
    actions: Sequence[Action] = (),
) -> StepResult:
    """Advance the rollout once. ``observations`` holds every site targeted now (a site
    missing from it has left the target set); ``now`` is the clock in seconds."""
    run = _Step(state.clone(), strategy, observations, now)
    run.run(actions)
    s = run.s
    # Dataclass equality: the records a step did not touch are the caller's own objects,
    # which dict comparison passes by identity.
    changed = s != state
    if changed or s.etaAt is None:
        eta = eta_of(s, strategy, now)
        if eta != s.etaAt:
            s.etaAt = eta
            changed = True
    return StepResult(
        state=s,
        hand_out=tuple(sorted(run.hand_out)),
        roll_back=tuple(sorted(run.roll_back)),
        rejected=tuple(run.rejected),
        changed=changed,
    )


class _Step:
    def __init__(
        self, s: RolloutState, strategy: Strategy, obs: Mapping[str, SiteObservation], now: float
    ) -> None:
        self.s, self.strategy, self.obs, self.now = s, strategy, obs, now
        self.hand_out: list[str] = []
        self.roll_back: list[str] = []
        self.rejected: list[str] = []
        self._owned: set[str] = set()  # records already copied (or created) by this step

    def _own(self, name: str) -> SiteRecord:
        """The site's record, ready to change: copied on first change, since the records of
        the clone are still the caller's (see ``RolloutState.clone``)."""
        rec = self.s.sites[name]
        if name not in self._owned:
            rec = self.s.sites[name] = rec.copy()
            self._owned.add(name)
        return rec

    # -- the order of one step ----------------------------------------------------------------

    def run(self, actions: Sequence[Action]) -> None:
        s = self.s
        if s.phase == "Pending":
            self._plan()
        else:
            self._reconcile_targets()
        for action in actions:
            self._act(action)
        self._observe()
        if s.phase == "Soaking" or (s.phase == "Paused" and s.pausedFrom == "Soaking"):
            self._soak_health()
        if self._forward_running():
            self._check_budget()
        if s.phase == "Soaking":
            self._soak()
        if s.phase == "Progressing":
            self._advance()
        if s.phase == "RollingBack":
            self._advance_rollback()
        self._count()

    def _forward_running(self) -> bool:
        s = self.s
        return s.phase in ("Progressing", "Soaking") or (
            s.phase == "Paused" and s.pausedFrom in ("Progressing", "Soaking")
        )

    def _set_phase(self, phase: Phase, reason: str | None = None, message: str | None = None) -> None:
        s = self.s
        s.phase, s.phaseSince = phase, self.now
        if reason is not None:
            s.reason, s.message = reason, message
        if phase in ("Completed", "Failed", "Aborted", "RolledBack"):
            s.finishedAt = self.now

    # -- planning and the target set ----------------------------------------------------------

    def _plan(self) -> None:
        s = self.s
        labels = {name: o.labels for name, o in self.obs.items()}
        s.waves = plan_waves(self.strategy, labels)
        s.sites = {name: SiteRecord(wave=w.index) for w in s.waves for name in w.sites}
        self._owned = set(s.sites)
        s.startedAt = self.now
        s.currentWave = 0
        if self.strategy.compare is not None and s.waves and not s.waves[0].sites:
            # Nothing to compare against; refusing beats changing group B untested.
            self._set_phase("Failed", "GroupAEmpty", "group A selects none of the targeted sites")
            return
        self._set_phase("Progressing")

    def _reconcile_targets(self) -> None:
        s = self.s
        for name, rec in s.sites.items():
            if rec.inTarget and name not in self.obs:
                self._own(name).inTarget = False
        known = s.sites
        joined = sorted(n for n in self.obs if n not in known or not known[n].inTarget)
        for name in joined:
            old = known.get(name)
            if old is not None:
                old = self._own(name)
                old.inTarget = True
                wave = s.waves[old.wave]
                if old.handedAt is not None:
                    continue  # it keeps the revision it was given
                if self._forward_running() and wave.finishedAt is None and old.wave >= s.currentWave:
                    continue  # its wave is still ahead: it keeps its place
                if not self._forward_running() and s.phase != "Completed":
                    continue  # stopped: nothing goes out
                wave.sites.remove(name)  # never handed out and its wave is gone: place it anew
            self._place(name)

    def _place(self, name: str) -> None:
        """A site that joined after planning: a later wave while the rollout runs, the new
        revision at once if it completed, else (stopped, rolling back) nothing new."""
        s = self.s
        if self._forward_running():
            batch = self.strategy.batch(sum(1 for r in s.sites.values() if r.inTarget) + 1)
            index = place_joiner(s.waves, s.sites, s.currentWave, batch, name)
            s.sites[name] = SiteRecord(wave=index)
            self._owned.add(name)
            return
        wave = late_wave(s.waves, self.now)
        wave.sites.append(name)
        s.sites[name] = SiteRecord(wave=wave.index)
        self._owned.add(name)
        if s.phase == "Completed":
            self._hand(name)

    def _hand(self, name: str) -> None:
        rec = self._own(name)
        rec.state, rec.handedAt = "InProgress", self.now
        o = self.obs.get(name)
        if o is not None and o.baseline is not None:
            rec.before = dict(o.baseline)  # what a rollback puts back (docs/rollouts.md)
        self.hand_out.append(name)

    # -- operator actions ---------------------------------------------------------------------

    def _act(self, action: Action) -> None:
        s, op = self.s, self.s.operator
        why: str | None = None
        if action == "pause":
            op.paused = True
            if s.phase in ("Progressing", "Soaking", "RollingBack"):
                s.pausedFrom = s.phase
                self._set_phase("Paused")
            else:
                why = f"cannot pause a rollout that is {s.phase}"
        elif action == "resume":
            op.paused = False
            if s.phase == "Paused" and s.pausedFrom is not None:
                phase, s.pausedFrom = s.pausedFrom, None
                self._set_phase(phase)
            else:
                why = f"cannot resume a rollout that is {s.phase}"
        elif action == "promote":
            op.promote = True
            if self._forward_running() and self._gate_ahead():
                s.promoteRequested = True
            else:
                why = f"nothing to promote: the rollout is {s.phase} with no gate ahead"
        elif action == "abort":
            op.abort = True
            if s.phase in ("Progressing", "Soaking", "Paused", "RollingBack"):
                s.pausedFrom = None
                self._set_phase(
                    "Aborted",
                    "Aborted",
                    "aborted by the operator: nothing more goes out; sites keep what they have",
                )
            else:
                why = f"cannot abort a rollout that is {s.phase}"
        elif action == "rollback":
            op.rollback = True
            if s.phase in ("Progressing", "Soaking", "Paused", "Completed", "Failed", "Aborted"):
                self._start_rollback("RollbackRequested", "rolled back by the operator")
            else:
                why = f"cannot roll back a rollout that is {s.phase}"
        else:
            why = "unknown action"
        if why is not None:
            self.rejected.append(f"{action}: {why}")

    def _gate_ahead(self) -> bool:
        s = self.s
        return (
            not s.promoted
            and bool(s.waves)
            and s.waves[0].role in ("canary", "groupA")
            and s.currentWave == 0
        )

    def _start_rollback(self, reason: str, message: str) -> None:
        s = self.s
        s.pausedFrom = None
        s.rollbackWave = 0
        s.finishedAt = None
        self._set_phase("RollingBack", reason, message)

    # -- observing sites ----------------------------------------------------------------------

    def _observe(self) -> None:
        s, st, now = self.s, self.strategy, self.now
        for name, shared in s.sites.items():
            if not shared.inTarget or shared.state not in ("InProgress", "RollingBack"):
                continue
            rec = self._own(name)  # in flight: few, and likely to change
            o = self.obs[name]
            if rec.state == "RollingBack":
                self._observe_rollback(rec, o)
                continue
            since = _since(o.handed_at, rec.handedAt, now)
            if o.revision == s.revision:
                if o.failed:
                    self._finish(rec, "Failed", "failed: " + "; ".join(o.failed))
                    continue
                if o.applied:
                    if rec.appliedAt is None:
                        rec.appliedAt = now
                    if st.min_health <= 0 or (o.health is not None and o.health >= st.min_health):
                        self._finish(rec, "Succeeded", None)
                        continue
                    if o.health is not None and now - rec.appliedAt >= st.health_grace_seconds:
                        self._finish(rec, "Failed", f"health {o.health:g} below minHealth {st.min_health:g}")
                        continue
            if now - since >= st.apply_timeout_seconds:
                if rec.appliedAt is not None:
                    why = f"applied, but health {_health(o.health)} below minHealth {st.min_health:g}"
                    why += f" after {st.apply_timeout_seconds:g}s"
                else:
                    why = f"not applied within applyTimeoutSeconds {st.apply_timeout_seconds:g}"
                self._finish(rec, "Failed", why)

    def _observe_rollback(self, rec: SiteRecord, o: SiteObservation) -> None:
        s, now = self.s, self.now
        if o.revision == s.previousRevision:
            if o.failed:
                self._finish(rec, "RollbackFailed", "rollback failed: " + "; ".join(o.failed))
                return
            if o.applied:
                self._finish(rec, "RolledBack", rec.reason)
                return
        since = _since(o.handed_at, rec.rollbackAt, now)
        if now - since >= self.strategy.apply_timeout_seconds:
            self._finish(
                rec,
                "RollbackFailed",
                f"previous revision not applied within {self.strategy.apply_timeout_seconds:g}s",
            )

    def _finish(self, rec: SiteRecord, state: Any, reason: str | None) -> None:
        rec.state, rec.finishedAt, rec.reason = state, self.now, reason

    def _soak_health(self) -> None:
        """A canary or group-A site that sinks below ``minHealth`` while soaking has failed."""
        s, st = self.s, self.strategy
        if st.min_health <= 0 or not s.waves:
            return
        for name in s.waves[0].sites:
            rec = s.sites[name]
            o = self.obs.get(name)
            if not (rec.inTarget and rec.state == "Succeeded" and o is not None and o.health is not None):
                continue
            if o.health < st.min_health:
                why = f"health {o.health:g} fell below minHealth {st.min_health:g} while soaking"
                self._finish(self._own(name), "Failed", why)

    def _failed(self) -> list[tuple[str, SiteRecord]]:
        return [(n, r) for n, r in self.s.sites.items() if r.inTarget and r.state == "Failed"]

    def _check_budget(self) -> None:
        s = self.s
        failed = self._failed()
        s.failureBudget = self.strategy.budget(sum(1 for r in s.sites.values() if r.inTarget))
        if len(failed) <= s.failureBudget:
            return
        failed.sort(key=lambda item: (item[1].finishedAt or 0.0, item[0]))
        named = "; ".join(f"{n} ({r.reason})" for n, r in failed[:MAX_NAMED])
        more = f"; and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
        message = f"{len(failed)} sites failed, more than maxFailures {s.failureBudget}: {named}{more}"
        s.pausedFrom = None
        if self.strategy.auto_rollback:
            self._start_rollback("FailureBudgetExceeded", message + "; rolling back")
        else:
            self._set_phase("Failed", "FailureBudgetExceeded", message)

    # -- gates --------------------------------------------------------------------------------

    def _soak(self) -> None:
        s, st, now = self.s, self.strategy, self.now
        start = s.soakStartedAt if s.soakStartedAt is not None else now
        if st.canary is not None:
            elapsed = now - start >= st.canary.soak_seconds
            if s.promoteRequested or (elapsed and not st.canary.manual):
                self._promote()
            return
        if st.compare is None:  # a strategy changed under a soaking rollout: nothing to wait for
            self._promote()
            return
        if s.promoteRequested:
            self._promote()
            return
        if now - start < st.compare.window_seconds:
            return
        a = [self.obs[n].health for n in s.waves[0].sites if self._handed_in_target(n)]
        b = [self.obs[n].health for n, r in s.sites.items() if r.inTarget and r.handedAt is None]
        mean_a, mean_b = _mean(a), _mean(b)
        count_a = sum(1 for h in a if h is not None)
        count_b = sum(1 for h in b if h is not None)
        s.comparison = Comparison(mean_a, mean_b, count_a, count_b, st.compare.threshold, now)
        if mean_a is None:
            self._start_rollback("GroupANoHealth", "no site of group A reported health during the window")
        elif mean_b is not None and mean_a < mean_b - st.compare.threshold:
            self._start_rollback(
                "GroupAWorse",
                f"group A mean health {mean_a:.1f} ({count_a} sites) is worse than group B "
                f"{mean_b:.1f} ({count_b} sites) by more than threshold {st.compare.threshold:g}",
            )
        else:
            self._promote()

    def _handed_in_target(self, name: str) -> bool:
        rec = self.s.sites[name]
        return rec.inTarget and rec.handedAt is not None

    def _promote(self) -> None:
        s = self.s
        s.promoted, s.promoteRequested = True, False
        s.soakStartedAt = None
        s.currentWave += 1
        self._set_phase("Progressing")

    # -- handing out --------------------------------------------------------------------------

    def _advance(self) -> None:
        s = self.s
        while s.currentWave < len(s.waves):
            wave = s.waves[s.currentWave]
            if wave.role == "late":
                s.currentWave += 1
                continue
            if wave.startedAt is None:
                wave.startedAt = self.now
            self._fill(wave)
            if not self._wave_done(wave):
                return
            if wave.finishedAt is None:
                wave.finishedAt = self.now
            if wave.role in ("canary", "groupA") and not s.promoted:
                if s.promoteRequested:
                    self._promote()
                    continue
                s.soakStartedAt = self.now
                self._set_phase("Soaking")
                return
            s.currentWave += 1
        self._set_phase("Completed")
        s.reason = s.message = None

    def _fill(self, wave: WaveRecord) -> None:
        sites = self.s.sites
        members = [n for n in wave.sites if sites[n].inTarget]
        room = self.strategy.parallel(len(members)) - sum(
            1 for n in members if sites[n].state == "InProgress"
        )
        for name in members:
            if room <= 0:
                break
            if sites[name].state == "Pending":
                self._hand(name)
                room -= 1

    def _wave_done(self, wave: WaveRecord) -> bool:
        sites = self.s.sites
        return all(sites[n].state in SITE_DONE for n in wave.sites if sites[n].inTarget)

    def _advance_rollback(self) -> None:
        s = self.s
        while s.rollbackWave < len(s.waves):
            wave = s.waves[s.rollbackWave]
            todo = [
                n
                for n in wave.sites
                if s.sites[n].inTarget and s.sites[n].handedAt is not None and s.sites[n].rollbackAt is None
            ]
            busy = sum(1 for n in wave.sites if s.sites[n].inTarget and s.sites[n].state == "RollingBack")
            room = self.strategy.parallel(len(todo) + busy) - busy
            for name in todo[: max(room, 0)]:
                rec = self._own(name)
                rec.state, rec.rollbackAt = "RollingBack", self.now
                self.roll_back.append(name)
            if todo or busy:
                return
            s.rollbackWave += 1
        self._set_phase("RolledBack")

    # -- bookkeeping --------------------------------------------------------------------------

    def _count(self) -> None:
        s = self.s
        total = empty_counts()
        for wave in s.waves:
            counts = empty_counts()
            for name in wave.sites:
                rec = s.sites[name]
                if rec.inTarget:
                    counts[COUNT_KEYS[rec.state]] += 1
            wave.counts = counts
            for key, value in counts.items():
                total[key] += value
        s.counts = total
        s.failureBudget = self.strategy.budget(sum(total.values()))


def _since(reported: float | None, recorded: float | None, now: float) -> float:
    if reported is not None:
        return reported
    return recorded if recorded is not None else now


def _health(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
