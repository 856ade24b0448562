"""Alert evaluation: values per expression, comparisons, scope by virtual site and selector,
and the Alert state machine (pending -> firing after ``for``, resolve, back to firing)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fleetplane.controllers.alert_eval import Rule, advance, breaches, compare, site_value, ts
from fleetplane.controllers.health_controller import FleetHealth
from fleetplane.kinds import ALERT_RULE, SITE, VIRTUAL_SITE

GIB = 1 << 30
NOW = 1_800_000_000.0


def site(
    name: str, memory: float = 20, cpu: float = 10, labels: dict[str, str] | None = None, **st: Any
) -> Any:
    status = {
        "phase": "Online",
        "lastSeen": dt.datetime.fromtimestamp(NOW, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage": {
            "cpuMillis": int(cpu * 100),
            "memoryBytes": int(memory / 100 * 16 * GIB),
            "diskBytes": 30 * GIB,
        },
        "allocatable": {"cpuMillis": 10_000, "memoryBytes": 16 * GIB},
        "nodes": [{"name": "n1", "diskBytes": 100 * GIB}],
        **st,
    }
    return SITE.normalize({"metadata": {"name": name, "labels": labels or {}}, "status": status})


def fleet(*sites: Any) -> FleetHealth:
    view = FleetHealth(offline_after=30)
    for s in sites:
        view.set_site("acme", s, NOW)
    return view


def rule(expr: str, op: str, threshold: float, **spec: Any) -> Rule:
    obj = ALERT_RULE.normalize(
        {
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"expr": expr, "op": op, "threshold": threshold, **spec},
        }
    )
    return Rule.of("acme", obj)


@pytest.mark.parametrize(
    ("op", "value", "threshold", "expected"),
    [
        *[(">", 91, 90, True), (">", 90, 90, False), (">=", 90, 90, True), ("<", 6.9, 7, True)],
        *[
            ("<", 7, 7, False),
            ("<=", 7, 7, True),
            ("==", 0, 0, True),
            ("==", 1, 0, False),
            ("!=", 1, 0, True),
        ],
    ],
)
def test_comparisons(op: str, value: float, threshold: float, expected: bool) -> None:
    assert compare(op, value, threshold) is expected


def test_site_values_from_the_report() -> None:
    not_after = dt.datetime.fromtimestamp(NOW + 3.5 * 86400, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    view = fleet(site("a", memory=80, cpu=40, identity={"serial": "1", "notAfter": not_after}))
    entry = view.sites[("acme", "a")]
    assert site_value("site.memory.percent", entry, NOW) == pytest.approx(80)
    assert site_value("site.cpu.percent", entry, NOW) == pytest.approx(40)
    assert site_value("site.disk.percent", entry, NOW) == pytest.approx(30)
    assert site_value("site.connected", entry, NOW) == 1.0
    assert site_value("site.certificate.daysLeft", entry, NOW) == pytest.approx(3.5)
    assert site_value("site.health.score", entry, NOW) == entry.health.score


def test_breach_only_where_the_comparison_holds_and_offline_is_disconnected() -> None:
    view = fleet(site("hot", memory=95), site("cool", memory=30), site("gone", phase="Offline"))
    assert breaches(rule("site.memory.percent", ">", 90), view, NOW) == {"hot": 95.0}
    assert breaches(rule("site.connected", "==", 0), view, NOW) == {"gone": 0.0}


def test_scope_by_selector_and_by_virtual_site() -> None:
    view = fleet(
        site("a", memory=95, labels={"region": "eu"}),
        site("b", memory=95, labels={"region": "us"}),
        site("c", memory=95, labels={"region": "eu", "tier": "gold"}),
    )
    vs = VIRTUAL_SITE.normalize(
        {"metadata": {"name": "eu", "namespace": "default"}, "spec": {"selector": "region=eu"}}
    )
    view.set_virtual_site("acme", vs)
    assert set(
        breaches(rule("site.memory.percent", ">", 90, scope={"selector": "region=us"}), view, NOW)
    ) == {"b"}
    by_vs = rule("site.memory.percent", ">", 90, scope={"virtualSites": ["eu"]})
    assert set(breaches(by_vs, view, NOW)) == {"a", "c"}
    both = rule(
        "site.memory.percent", ">", 90, scope={"virtualSites": ["default/eu"], "selector": "tier=gold"}
    )
    assert set(breaches(both, view, NOW)) == {"c"}
    unknown = rule("site.memory.percent", ">", 90, scope={"virtualSites": ["nowhere"]})
    assert breaches(unknown, view, NOW) == {}
    assert breaches(rule("site.memory.percent", ">", 90, disabled=True), view, NOW) == {}


def test_failed_rollouts_of_the_rule_namespace() -> None:
    view = fleet()
    view.rollouts[("acme", "default", "ro-1")] = {"phase": "Failed", "counts": {}}
    view.rollouts[("acme", "default", "ro-2")] = {"phase": "Completed", "counts": {}}
    view.rollouts[("acme", "other", "ro-3")] = {"phase": "RolledBack", "counts": {}}
    assert breaches(rule("rollout.failed", "==", 1), view, NOW) == {"default/ro-1": 1.0}


def test_pending_then_firing_after_for_then_resolved() -> None:
    status = advance(None, {"a": 95.0}, 60, NOW, "site")
    assert status is not None and status["state"] == "pending"
    assert status["instances"]["a"]["state"] == "pending" and "startsAt" not in status
    status = advance(status, {"a": 96.0}, 60, NOW + 59, "site")
    assert status is not None and status["state"] == "pending"
    status = advance(status, {"a": 97.0}, 60, NOW + 60, "site")
    assert status is not None and status["state"] == "firing"
    assert ts(status["startsAt"]) == pytest.approx(NOW + 60)
    assert status["affected"] == ["a"] and status["affectedCount"] == 1
    status = advance(status, {}, 60, NOW + 90, "site")
    assert status is not None and status["state"] == "resolved"
    assert ts(status["endsAt"]) == pytest.approx(NOW + 90)
    assert status["resolved"]["a"]["startsAt"] == status["startsAt"]
    assert status["instances"] == {} and status["affected"] == []


def test_pending_that_clears_never_fires_and_leaves_nothing() -> None:
    status = advance(None, {"a": 95.0}, 60, NOW, "site")
    assert advance(status, {}, 60, NOW + 30, "site") is None


def test_zero_for_fires_at_once_and_a_second_site_joins_the_firing_alert() -> None:
    status = advance(None, {"a": 1.0}, 0, NOW, "site")
    assert status is not None and status["state"] == "firing"
    later = advance(status, {"a": 1.0, "b": 1.0}, 0, NOW + 10, "site")
    assert later is not None and later["startsAt"] == status["startsAt"]  # the same episode
    assert later["since"] == status["since"]
    assert sorted(later["instances"]) == ["a", "b"]


def test_a_new_episode_after_resolution_gets_a_new_start() -> None:
    first = advance(None, {"a": 1.0}, 0, NOW, "site")
    resolved = advance(first, {}, 0, NOW + 10, "site")
    again = advance(resolved, {"a": 1.0}, 0, NOW + 20, "site")
    assert again is not None and again["state"] == "firing"
    assert ts(again["startsAt"]) == pytest.approx(NOW + 20) and "endsAt" not in again
    assert "a" not in again["resolved"]  # in breach again: nothing resolved to tell
