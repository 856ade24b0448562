"""The Rollout kind: the strategy schema users write, refusals with field paths, and a
status that holds the engine's state exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetplane.controllers.rollout import RolloutState, Strategy
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.kinds import REGISTRY
from fleetplane.kinds.rollout import rollout_name
from fleetplane.server.auth import Principal, authorize
from tests.controllers.rollout.fleet import drive, fleet_of, names

ROLLOUT = REGISTRY.get("Rollout")


def rollout(strategy: dict[str, Any] | None = None, **spec: Any) -> Obj:
    body: dict[str, Any] = {"intent": {"kind": "OsUpgrade", "name": "fleetos", "generation": 3}, **spec}
    if strategy is not None:
        body["strategy"] = strategy
    return {"metadata": {"name": "osupgrade-fleetos-3", "namespace": "shop"}, "spec": body}


def refusal(obj: Obj) -> list[tuple[str, str]]:
    with pytest.raises(ApiError) as exc:
        ROLLOUT.normalize(obj)
    assert exc.value.code == 422
    return [(c.field, c.message) for c in exc.value.causes]


def test_resolves_by_its_names() -> None:
    assert REGISTRY.resolve("ro") is ROLLOUT and REGISTRY.resolve("rollouts") is ROLLOUT
    assert ROLLOUT.namespaced


def test_defaults_are_a_cautious_rolling_rollout() -> None:
    out = ROLLOUT.normalize(rollout())
    assert out["spec"]["strategy"] == {
        "type": "rolling",
        "maxFailures": 0,
        "applyTimeoutSeconds": 600.0,
        "minHealth": 0.0,
        "healthGraceSeconds": 0.0,
        "autoRollback": False,
    }
    assert {k: out["spec"][k] for k in ("paused", "promote", "abort", "rollback")} == dict.fromkeys(
        ("paused", "promote", "abort", "rollback"), False
    )
    engine = Strategy.from_spec(out["spec"]["strategy"])
    assert (engine.batch(50), engine.parallel(1), engine.budget(50)) == (1, 1, 0)


def test_blue_green_defaults_to_switching_group_b_at_once() -> None:
    out = ROLLOUT.normalize(rollout({"type": "blueGreen", "blueGreen": {"groupA": "env=dev"}}))
    assert Strategy.from_spec(out["spec"]["strategy"]).batch(40) == 40


def test_percentages_resolve_against_the_fleet() -> None:
    spec = {"batchSize": "10%", "maxFailures": "5%", "maxParallel": 3}
    engine = Strategy.from_spec(ROLLOUT.normalize(rollout(spec))["spec"]["strategy"])
    assert (engine.batch(95), engine.budget(95), engine.parallel(10)) == (10, 4, 3)


@pytest.mark.parametrize(
    ("strategy", "field", "fragment"),
    [
        ({"batchSize": 0}, "spec.strategy.batchSize", "at least 1"),
        ({"batchSize": "0%"}, "spec.strategy.batchSize", "from 1% to 100%"),
        ({"batchSize": "150%"}, "spec.strategy.batchSize", "from 1% to 100%"),
        ({"batchSize": "ten"}, "spec.strategy.batchSize", "a count or a percentage"),
        ({"maxFailures": -1}, "spec.strategy.maxFailures", "at least 0"),
        ({"maxFailures": True}, "spec.strategy.maxFailures", "a count or a percentage"),
        ({"maxParallel": 0}, "spec.strategy.maxParallel", "greater than or equal to 1"),
        ({"minHealth": 101}, "spec.strategy.minHealth", "less than or equal to 100"),
        ({"applyTimeoutSeconds": 0}, "spec.strategy.applyTimeoutSeconds", "greater than 0"),
        ({"type": "bigBang"}, "spec.strategy.type", "'rolling', 'canary', 'blueGreen' or 'ab'"),
        ({"type": "ab"}, "spec.strategy", "ab: required when type is 'ab'"),
        ({"canary": {"sites": ["a"]}}, "spec.strategy", "canary: allowed only when type is 'canary'"),
        ({"type": "ab", "ab": {"groupA": ""}}, "spec.strategy.ab.groupA", "must select some sites"),
        ({"type": "ab", "ab": {"groupA": "env in"}}, "spec.strategy.ab.groupA", "expected '('"),
        ({"type": "canary", "canary": {"sites": ["Tokyo_1"]}}, "spec.strategy.canary.sites", "'Tokyo_1'"),
        ({"type": "canary", "canary": {"promotion": "later"}}, "spec.strategy.canary.promotion", "'manual'"),
        ({"type": "canary", "canary": {"soakSeconds": -5}}, "spec.strategy.canary.soakSeconds", ">= 0"),
        ({"waves": 3}, "spec.strategy.waves", "unknown field"),
    ],
)
def test_bad_strategies_are_refused_with_the_field(
    strategy: dict[str, Any], field: str, fragment: str
) -> None:
    causes = refusal(rollout(strategy))
    assert [f for f, _ in causes] == [field]
    message = causes[0][1].replace("greater than or equal to 0", ">= 0")
    assert fragment in message


def test_the_intent_reference_is_checked() -> None:
    obj = rollout()
    obj["spec"]["intent"] = {"kind": "osupgrade", "name": "Bad Name", "generation": 0}
    assert sorted(f for f, _ in refusal(obj)) == [
        "spec.intent.generation",
        "spec.intent.kind",
        "spec.intent.name",
    ]


def test_the_status_holds_the_engine_state_exactly() -> None:
    fleet = fleet_of(names(6))
    fleet.sites["site-002"].outcome = "fail"
    st = Strategy.from_spec(
        {"type": "canary", "batchSize": 2, "canary": {"sites": ["site-004"], "soakSeconds": 0}}
    )
    state = drive(st, fleet).state
    assert state.phase == "Failed"
    out = ROLLOUT.normalize({**rollout(), "status": json.loads(json.dumps(state.to_dict()))})
    assert RolloutState.from_dict(out["status"]).to_dict() == state.to_dict()
    assert out["status"]["sites"]["site-002"]["reason"] == "failed: os/os: install failed: injected"


def test_clients_act_on_a_rollout_but_do_not_create_one() -> None:
    admin = Principal(tenant="acme", key_name="ops", role="admin")
    for verb in ("get", "list", "patch", "update", "delete"):
        authorize(admin, verb, ROLLOUT, "shop")
    with pytest.raises(ApiError) as exc:
        authorize(admin, "create", ROLLOUT, "shop")
    assert exc.value.code == 403


def test_rollout_names() -> None:
    assert rollout_name("OsUpgrade", "fleetos", 3) == "osupgrade-fleetos-3"
    long = rollout_name("NetworkPolicy", "a" * 250, 12)
    assert len(long) <= 253 and long.startswith("networkpolicy-aaa") and long.endswith("-12")
    assert long != rollout_name("NetworkPolicy", "a" * 249 + "b", 12)
