"""Intent history and strategies on intents: every intent kind that rolls out takes an optional
``spec.strategy`` (refused with the field named when wrong); ``IntentRevision`` is written by the
controller only and readable by clients."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.registry import KindInfo
from fleetplane.kinds import (
    INTENT_REVISION,
    NETWORK_POLICY,
    OS_UPGRADE,
    REGISTRY,
    RESOURCE_RESERVATION,
    SERVICE_POLICY,
)
from fleetplane.kinds.history import MAX_REVISIONS, revision_name
from fleetplane.server.auth import Principal, authorize

SPECS: dict[str, dict[str, Any]] = {
    RESOURCE_RESERVATION.kind: {"virtualSites": ["prod"], "cpu": "1"},
    NETWORK_POLICY.kind: {"virtualSites": ["prod"], "defaultAction": {"egress": "deny"}},
    SERVICE_POLICY.kind: {"virtualSites": ["prod"]},
    OS_UPGRADE.kind: {"virtualSites": ["prod"], "version": "fleetos-1.5.0"},
}
KINDS = [RESOURCE_RESERVATION, NETWORK_POLICY, SERVICE_POLICY, OS_UPGRADE]


def intent(info: KindInfo, strategy: Any) -> Obj:
    spec = dict(SPECS[info.kind])
    if strategy is not None:
        spec["strategy"] = strategy
    return {"metadata": {"name": "x", "namespace": "shop"}, "spec": spec}


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_intent_kind_takes_an_optional_strategy(info: KindInfo) -> None:
    assert "strategy" not in info.normalize(intent(info, None))["spec"]  # absent: at once
    out = info.normalize(
        intent(info, {"type": "canary", "canary": {"sites": ["tokyo-1"], "soakSeconds": 60}})
    )
    assert out["spec"]["strategy"]["type"] == "canary"
    assert out["spec"]["strategy"]["canary"] == {
        "sites": ["tokyo-1"],
        "selector": "",
        "soakSeconds": 60.0,
        "promotion": "auto",
    }


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        ({"type": "fastest"}, "spec.strategy.type"),
        ({"batchSize": "150%"}, "spec.strategy.batchSize"),
        ({"maxFailures": -1}, "spec.strategy.maxFailures"),
        ({"type": "ab"}, "spec.strategy"),  # ab needs its groupA
        ({"minHealth": 101}, "spec.strategy.minHealth"),
        ({"stages": 2}, "spec.strategy.stages"),
    ],
)
def test_a_bad_strategy_is_refused_with_the_field(
    info: KindInfo, strategy: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiError) as exc:
        info.normalize(intent(info, strategy))
    assert exc.value.code == 422
    assert [c.field for c in exc.value.causes] == [field]


def test_intent_revisions_are_read_only_to_clients() -> None:
    assert (
        REGISTRY.resolve("intentrevisions") is INTENT_REVISION and REGISTRY.resolve("irev") is INTENT_REVISION
    )
    admin = Principal(tenant="acme", key_name="ops", role="admin")
    for verb in ("get", "list"):
        authorize(admin, verb, INTENT_REVISION, "shop")
    for verb in ("create", "update", "patch", "delete"):
        with pytest.raises(ApiError) as exc:
            authorize(admin, verb, INTENT_REVISION, "shop")
        assert exc.value.code == 403


def test_an_intent_revision_holds_the_spec_and_names_its_intent() -> None:
    obj = INTENT_REVISION.normalize(
        {
            "metadata": {"name": revision_name("OsUpgrade", "fleetos", 3), "namespace": "ops"},
            "spec": {
                "intent": {"kind": "OsUpgrade", "name": "fleetos", "generation": 3},
                "spec": {"version": "2.0"},
            },
        }
    )
    assert obj["metadata"]["name"] == "osupgrade-fleetos-3" and obj["spec"]["spec"] == {"version": "2.0"}
    with pytest.raises(ApiError) as exc:
        INTENT_REVISION.normalize(
            {
                "metadata": {"name": "r", "namespace": "ops"},
                "spec": {"intent": {"kind": "OsUpgrade", "name": "x", "generation": 0}},
            }
        )
    assert [c.field for c in exc.value.causes] == ["spec.intent.generation"]
    assert MAX_REVISIONS == 10
