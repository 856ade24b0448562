"""The rollout engine by example: each strategy, each operator action, gates and joiners."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.controllers.rollout import (
    Action,
    RolloutState,
    SiteObservation,
    Strategy,
    actions_from_spec,
    holds_new,
    initial_state,
    next_wakeup,
    revision_for,
    step,
)
from tests.controllers.rollout.fleet import (
    NEW,
    OLD,
    Fleet,
    SimSite,
    by_state,
    drive,
    fleet_of,
    names,
    settled,
)


def strategy(**spec: Any) -> Strategy:
    return Strategy.from_spec(spec)


def hand_out_order(results: list[Any]) -> list[tuple[str, ...]]:
    return [r.hand_out for r in results if r.hand_out]


# -- rolling ------------------------------------------------------------------------------------


def test_rolling_goes_out_wave_by_wave_within_max_parallel() -> None:
    fleet = fleet_of(names(10), delay=15.0)
    run = drive(strategy(batchSize=3, maxParallel=2), fleet)
    s = run.state
    assert s.phase == "Completed"
    assert [w.sites for w in s.waves] == [names(10)[0:3], names(10)[3:6], names(10)[6:9], names(10)[9:]]
    assert sorted(run.handed) == names(10)  # everyone once
    assert all(site.handed_new == 1 for site in fleet.sites.values())
    for st in run.states:  # never more than 2 in flight, and only within the current wave
        in_flight = [n for n, r in st.sites.items() if r.state == "InProgress"]
        assert len(in_flight) <= 2
        assert len({st.sites[n].wave for n in in_flight}) <= 1
    # A wave starts only once the one before it finished.
    for before, after in zip(s.waves, s.waves[1:], strict=False):
        assert before.finishedAt is not None and after.startedAt is not None
        assert after.startedAt >= before.finishedAt
    assert s.counts["succeeded"] == 10 and s.reason is None


def test_batch_size_as_a_percentage_of_the_fleet() -> None:
    run = drive(strategy(batchSize="25%"), fleet_of(names(10)))
    assert [len(w.sites) for w in run.state.waves] == [3, 3, 3, 1]


def test_failure_budget_stops_the_rollout_and_says_which_sites_and_why() -> None:
    fleet = fleet_of(names(20))
    for bad in ("site-001", "site-003", "site-006"):
        fleet.sites[bad].outcome = "fail"
    run = drive(strategy(batchSize=5, maxFailures=2), fleet)
    s = run.state
    assert s.phase == "Failed" and s.reason == "FailureBudgetExceeded"
    assert s.message is not None
    assert "3 sites failed, more than maxFailures 2" in s.message
    for bad in ("site-001", "site-003", "site-006"):
        assert f"{bad} (failed: os/os: install failed: injected)" in s.message
    # Wave 2 (site-010..014) and later never went out.
    assert not set(run.handed) & set(names(20)[10:])
    assert s.counts["pending"] == 10 and s.counts["failed"] == 3


def test_apply_timeout_fails_a_site_that_never_reports() -> None:
    fleet = fleet_of(names(3))
    fleet.sites["site-001"].outcome = "hang"
    run = drive(strategy(batchSize=3, maxFailures=1, applyTimeoutSeconds=60), fleet)
    rec = run.state.sites["site-001"]
    assert run.state.phase == "Completed"
    assert rec.state == "Failed"
    assert rec.reason == "not applied within applyTimeoutSeconds 60"
    assert rec.finishedAt is not None and rec.handedAt is not None
    assert rec.finishedAt - rec.handedAt >= 60


def test_health_gate_fails_an_applied_site_below_min_health() -> None:
    fleet = fleet_of(names(4))
    fleet.sites["site-002"].health_after = 20.0
    run = drive(strategy(batchSize=2, minHealth=50, maxFailures=1), fleet)
    assert run.state.sites["site-002"].state == "Failed"
    assert run.state.sites["site-002"].reason == "health 20 below minHealth 50"
    assert run.state.phase == "Completed" and run.state.counts["succeeded"] == 3


def test_health_grace_lets_a_site_recover_after_applying() -> None:
    s = initial_state(NEW, OLD)
    st = strategy(minHealth=60, healthGraceSeconds=30)
    s = step(s, st, {"a": SiteObservation()}, 0).state
    low = {"a": SiteObservation(revision=NEW, applied=True, health=30)}
    s = step(s, st, low, 10).state
    assert s.sites["a"].state == "InProgress"  # within the grace
    s = step(s, st, {"a": SiteObservation(revision=NEW, applied=True, health=80)}, 30).state
    assert s.sites["a"].state == "Succeeded" and s.phase == "Completed"


# -- canary -------------------------------------------------------------------------------------


def test_canary_by_name_soaks_then_promotes_on_its_own() -> None:
    fleet = fleet_of(names(8))
    st = strategy(type="canary", batchSize=3, canary={"sites": ["site-005", "site-002"], "soakSeconds": 100})
    run = drive(st, fleet)
    s = run.state
    assert s.phase == "Completed" and s.promoted
    assert s.waves[0].role == "canary" and s.waves[0].sites == ["site-002", "site-005"]
    order = hand_out_order(run.results)
    assert order[0] == ("site-002", "site-005")
    # The rest waited for the soak: nothing else went out before it ended.
    canary_done = s.waves[0].finishedAt
    assert canary_done is not None and s.waves[1].startedAt is not None
    assert s.waves[1].startedAt - canary_done >= 100
    assert any(st.phase == "Soaking" for st in run.states)
    assert [len(w.sites) for w in s.waves[1:]] == [3, 3]


def test_canary_by_selector() -> None:
    fleet = fleet_of(names(6))
    fleet.sites["site-004"].labels = {"ring": "canary"}
    run = drive(
        strategy(type="canary", batchSize=5, canary={"selector": "ring=canary", "soakSeconds": 0}), fleet
    )
    assert hand_out_order(run.results)[0] == ("site-004",)
    assert run.state.phase == "Completed"


def test_canary_without_any_match_uses_the_first_batch() -> None:
    run = drive(strategy(type="canary", batchSize=2, canary={"soakSeconds": 0}), fleet_of(names(5)))
    assert run.state.waves[0].role == "canary" and run.state.waves[0].sites == ["site-000", "site-001"]


def test_manual_canary_waits_for_promote() -> None:
    fleet = fleet_of(names(4))
    st = strategy(type="canary", canary={"sites": ["site-000"], "soakSeconds": 10, "promotion": "manual"})
    waiting = drive(st, fleet, until=lambda s: s.phase == "Soaking")
    # Long after the soak time, it still waits and hands nothing out.
    later = drive(st, fleet, state=waiting.state, start=waiting.now + 10, max_steps=50, must_finish=False)
    assert later.state.phase == "Soaking" and not later.handed
    assert later.state.etaAt is None  # no ETA while a person must decide


def test_manual_canary_promote_action_continues() -> None:
    fleet = fleet_of(names(4))
    st = strategy(type="canary", canary={"sites": ["site-000"], "promotion": "manual"})

    def promote_when_soaking(i: int, s: RolloutState, _: Fleet) -> list[Action]:
        return ["promote"] if s.phase == "Soaking" and not s.operator.promote else []

    run = drive(st, fleet, actions=promote_when_soaking)
    assert run.state.phase == "Completed" and sorted(run.handed) == names(4)


def test_promote_before_the_soak_skips_it() -> None:
    fleet = fleet_of(names(4), delay=5.0)
    st = strategy(type="canary", canary={"sites": ["site-000"], "soakSeconds": 10_000})
    run = drive(st, fleet, actions=lambda i, s, f: ["promote"] if i == 0 else [], max_steps=20)
    assert run.state.phase == "Completed"
    assert not any(s.phase == "Soaking" for s in run.states)


def test_a_canary_that_sinks_below_min_health_while_soaking_fails() -> None:
    st = strategy(type="canary", minHealth=50, canary={"sites": ["a"], "soakSeconds": 100})
    s = step(initial_state(NEW, OLD), st, {"a": SiteObservation(), "b": SiteObservation()}, 0).state
    s = step(
        s, st, {"a": SiteObservation(revision=NEW, applied=True, health=90), "b": SiteObservation()}, 5
    ).state
    assert s.phase == "Soaking"
    sunk = {"a": SiteObservation(revision=NEW, applied=True, health=10), "b": SiteObservation()}
    s = step(s, st, sunk, 20).state
    assert s.phase == "Failed" and s.sites["a"].reason == "health 10 fell below minHealth 50 while soaking"
    assert not holds_new(s, "b")


# -- A/B and blue/green -------------------------------------------------------------------------


def ab_fleet(n_a: int, n_b: int, health_a: float, health_b: float) -> Fleet:
    sites = {f"dev-{i}": SimSite(labels={"env": "dev"}, health_after=health_a) for i in range(n_a)}
    sites |= {f"prod-{i}": SimSite(labels={"env": "prod"}, health=health_b) for i in range(n_b)}
    return Fleet(sites)


def test_ab_stops_and_rolls_group_a_back_when_a_is_worse() -> None:
    fleet = ab_fleet(3, 5, health_a=40, health_b=90)
    st = strategy(type="ab", batchSize=2, ab={"groupA": "env=dev", "windowSeconds": 120, "threshold": 10})
    run = drive(st, fleet)
    s = run.state
    assert s.phase == "RolledBack" and s.reason == "GroupAWorse"
    assert s.message == (
        "group A mean health 40.0 (3 sites) is worse than group B 90.0 (5 sites) by more than threshold 10"
    )
    assert s.comparison is not None and (s.comparison.groupA, s.comparison.groupB) == (40.0, 90.0)
    assert sorted(run.handed) == sorted(run.rolled_back) == ["dev-0", "dev-1", "dev-2"]
    assert all(f.given == OLD for f in fleet.sites.values())
    assert s.counts["rolledBack"] == 3 and s.counts["pending"] == 5
    assert all(not holds_new(s, n) for n in fleet.sites)
    # It waited the whole window before judging.
    assert s.waves[0].finishedAt is not None and s.comparison.at - s.waves[0].finishedAt >= 120


def test_ab_promotes_when_a_is_within_the_threshold() -> None:
    fleet = ab_fleet(2, 6, health_a=85, health_b=90)
    st = strategy(type="ab", batchSize=3, ab={"groupA": {"matchLabels": {"env": "dev"}}, "threshold": 10})
    run = drive(st, fleet)
    assert run.state.phase == "Completed" and sorted(run.handed) == sorted(fleet.sites)
    assert [w.role for w in run.state.waves] == ["groupA", "batch", "batch"]


def test_blue_green_switches_group_b_at_once_after_promotion() -> None:
    fleet = ab_fleet(2, 6, health_a=90, health_b=90)
    run = drive(strategy(type="blueGreen", blueGreen={"groupA": "env=dev", "windowSeconds": 30}), fleet)
    assert run.state.phase == "Completed"
    assert hand_out_order(run.results)[1] == tuple(f"prod-{i}" for i in range(6))


def test_ab_with_an_empty_group_a_changes_nothing() -> None:
    run = drive(strategy(type="ab", ab={"groupA": "env=nowhere"}), fleet_of(names(3)))
    assert run.state.phase == "Failed" and run.state.reason == "GroupAEmpty" and not run.handed


# -- operator actions ---------------------------------------------------------------------------


def test_pause_holds_new_hand_outs_and_resume_continues() -> None:
    fleet = fleet_of(names(6), delay=5.0)
    st = strategy(batchSize=2)

    def pause_then_resume(i: int, s: RolloutState, _: Fleet) -> list[Action]:
        plan: dict[int, list[Action]] = {1: ["pause"], 6: ["resume"]}
        return plan.get(i, [])

    run = drive(st, fleet, actions=pause_then_resume)
    assert [s.phase for s in run.states[1:6]] == ["Paused"] * 5
    assert all(not r.hand_out for r in run.results[1:6])
    # The wave in flight when paused still finished while paused.
    assert run.states[5].sites["site-000"].state == "Succeeded"
    assert run.state.phase == "Completed" and sorted(run.handed) == names(6)


def test_abort_stops_and_sites_keep_what_they_have() -> None:
    fleet = fleet_of(names(6), delay=15.0)
    run = drive(strategy(batchSize=2), fleet, actions=lambda i, s, f: ["abort"] if i == 3 else [])
    s = run.state
    assert s.phase == "Aborted" and s.reason == "Aborted"
    handed = set(run.handed)
    assert handed and handed != set(names(6))
    assert not run.rolled_back
    assert {n for n in names(6) if holds_new(s, n)} == handed
    assert s.counts["pending"] == 6 - len(handed)
    assert revision_for(s, "site-005") == OLD


def test_undo_after_completion_rolls_everything_back_by_the_same_strategy() -> None:
    fleet = fleet_of(names(7), delay=5.0)
    st = strategy(batchSize=3, maxParallel=2)
    done = drive(st, fleet)
    assert done.state.phase == "Completed"
    back = drive(
        st,
        fleet,
        state=done.state,
        start=done.now + 10,
        actions=lambda i, s, f: ["rollback"] if i == 0 else [],
    )
    s = back.state
    assert s.phase == "RolledBack" and s.reason == "RollbackRequested"
    assert sorted(back.rolled_back) == names(7) and not back.handed
    assert all(site.given == OLD and site.handed_back == 1 for site in fleet.sites.values())
    for st_ in back.states:
        assert sum(1 for r in st_.sites.values() if r.state == "RollingBack") <= 2
    assert next(r.roll_back for r in back.results if r.roll_back) == ("site-000", "site-001")
    assert all(revision_for(s, n) == OLD for n in names(7))


def test_rollback_mid_rollout_takes_back_only_the_sites_that_got_it() -> None:
    fleet = fleet_of(names(9), delay=5.0)
    run = drive(strategy(batchSize=3), fleet, actions=lambda i, s, f: ["rollback"] if i == 2 else [])
    assert run.state.phase == "RolledBack"
    assert sorted(run.rolled_back) == sorted(set(run.handed))
    assert len(run.handed) < 9


def test_auto_rollback_at_the_failure_budget() -> None:
    fleet = fleet_of(names(6))
    fleet.sites["site-001"].outcome = "fail"
    run = drive(strategy(batchSize=2, autoRollback=True), fleet)
    s = run.state
    assert s.phase == "RolledBack" and s.reason == "FailureBudgetExceeded"
    assert s.message is not None and s.message.endswith("; rolling back")
    assert sorted(run.rolled_back) == ["site-000", "site-001"]
    assert s.sites["site-001"].state == "RolledBack"


def test_actions_that_do_not_fit_the_phase_are_rejected_with_a_reason() -> None:
    st = strategy()
    s = step(initial_state(NEW, OLD), st, {"a": SiteObservation()}, 0).state
    result = step(s, st, {"a": SiteObservation()}, 1, ["resume", "promote"])
    assert result.rejected == (
        "resume: cannot resume a rollout that is Progressing",
        "promote: nothing to promote: the rollout is Progressing with no gate ahead",
    )
    assert result.state.phase == "Progressing"


def test_actions_from_spec_turns_operator_fields_into_edges() -> None:
    s = initial_state(NEW, OLD)
    assert actions_from_spec({"paused": True, "promote": True}, s) == ["pause", "promote"]
    s = step(s, strategy(), {"a": SiteObservation()}, 0, ["pause"]).state
    assert actions_from_spec({"paused": True}, s) == []  # already acted upon
    assert actions_from_spec({"paused": False, "abort": True, "rollback": True}, s) == [
        "resume",
        "abort",
        "rollback",
    ]


# -- the target set changes ---------------------------------------------------------------------


def test_a_site_joining_mid_rollout_gets_a_later_wave() -> None:
    fleet = fleet_of(names(6), delay=5.0)
    st = strategy(batchSize=2)

    def join(i: int, s: RolloutState, f: Fleet) -> list[Action]:
        if i == 2:
            f.sites["late-1"] = SimSite()
        return []

    run = drive(st, fleet, actions=join)
    rec = run.state.sites["late-1"]
    assert rec.state == "Succeeded" and run.handed.count("late-1") == 1
    assert rec.wave > run.states[2].currentWave
    assert run.state.phase == "Completed"


def test_a_site_joining_after_completion_gets_the_new_revision_at_once() -> None:
    fleet = fleet_of(names(3))
    st = strategy(batchSize=3)
    done = drive(st, fleet)
    fleet.sites["new-1"] = SimSite()
    result = step(done.state, st, fleet.observe(done.now + 5), done.now + 5)
    assert result.hand_out == ("new-1",)
    assert result.state.phase == "Completed" and holds_new(result.state, "new-1")


def test_a_site_joining_a_stopped_rollout_keeps_the_previous_revision() -> None:
    fleet = fleet_of(names(3))
    fleet.sites["site-000"].outcome = "fail"
    st = strategy(batchSize=1)
    failed = drive(st, fleet)
    assert failed.state.phase == "Failed"
    fleet.sites["new-1"] = SimSite()
    result = step(failed.state, st, fleet.observe(failed.now + 5), failed.now + 5)
    assert result.hand_out == () and revision_for(result.state, "new-1") == OLD


def test_a_site_leaving_mid_wave_does_not_hold_the_wave() -> None:
    fleet = fleet_of(names(4))
    fleet.sites["site-001"].outcome = "hang"
    st = strategy(batchSize=2, applyTimeoutSeconds=10_000)

    def leave(i: int, s: RolloutState, f: Fleet) -> list[Action]:
        if i == 3:
            del f.sites["site-001"]
        return []

    run = drive(st, fleet, actions=leave)
    assert run.state.phase == "Completed"
    assert not run.state.sites["site-001"].inTarget
    assert run.state.counts["succeeded"] == 3


def test_an_empty_target_set_completes_and_later_joiners_get_the_revision() -> None:
    st = strategy()
    s = step(initial_state(NEW, OLD), st, {}, 0).state
    assert s.phase == "Completed"
    assert holds_new(s, "anyone")  # a site not seen yet, once completed
    result = step(s, st, {"x": SiteObservation()}, 1)
    assert result.hand_out == ("x",)


# -- status details -----------------------------------------------------------------------------


def test_eta_comes_from_observed_wave_durations() -> None:
    fleet = fleet_of(names(4), delay=25.0)
    st = strategy(batchSize=1)
    run = drive(st, fleet, dt=10.0, until=lambda s: s.waves[0].finishedAt is not None)
    s = run.state
    first = s.waves[0]
    assert first.finishedAt is not None and first.startedAt is not None
    span = first.finishedAt - first.startedAt
    assert span == 30.0
    # Three waves left at the observed 30 s each; the second has just started.
    assert s.etaAt == pytest.approx(run.now + 3 * span)


def test_per_wave_counts() -> None:
    fleet = fleet_of(names(5))
    fleet.sites["site-003"].outcome = "fail"
    run = drive(strategy(batchSize=2, maxFailures=1), fleet)
    assert [w.counts["succeeded"] for w in run.state.waves] == [2, 1, 1]
    assert [w.counts["failed"] for w in run.state.waves] == [0, 1, 0]
    assert by_state(run.state)["Failed"] == ["site-003"]


def test_a_step_without_news_reports_no_change() -> None:
    fleet = fleet_of(names(2), delay=100.0)
    st = strategy(batchSize=2)
    first = step(initial_state(NEW, OLD), st, fleet.observe(0), 0)
    again = step(first.state, st, fleet.observe(1), 1)
    assert first.changed and not again.changed and not again.hand_out


def test_step_leaves_the_given_state_untouched() -> None:
    s = initial_state(NEW, OLD)
    step(s, strategy(), {"a": SiteObservation()}, 0)
    assert s.phase == "Pending" and not s.sites


def test_settled_needs_every_site_done() -> None:
    fleet = fleet_of(names(2))
    fleet.sites["site-000"].outcome = "fail"
    run = drive(strategy(batchSize=2, maxFailures=0), fleet)
    assert settled(run.state) and run.state.phase == "Failed"


def test_next_wakeup_names_the_next_deadline() -> None:
    st = strategy(applyTimeoutSeconds=60, type="canary", canary={"sites": ["a"], "soakSeconds": 300})
    s = step(initial_state(NEW, OLD), st, {"a": SiteObservation(), "b": SiteObservation()}, 100).state
    assert next_wakeup(s, st) == 160  # a's apply timeout
    done = {"a": SiteObservation(revision=NEW, applied=True), "b": SiteObservation()}
    s = step(s, st, done, 110).state
    assert s.phase == "Soaking" and next_wakeup(s, st) == 410  # the end of the soak
    # Nothing happens before it; at it, the canary is promoted and b goes out.
    assert step(s, st, done, 409).hand_out == ()
    assert step(s, st, done, 410).hand_out == ("b",)
