"""The infrastructure kinds refuse what they cannot act on, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.kinds import INFRA_PIPELINE, SITE, SITE_INVENTORY


def inventory(name: str = "s1", **spec: Any) -> dict[str, Any]:
    nodes = [{"name": "node-01", "role": "controller"}, {"name": "node-02"}]
    return {"metadata": {"name": name}, "spec": {"site": "s1", "nodes": nodes} | spec}


def causes(info: Any, obj: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ApiError) as err:
        info.normalize(obj)
    assert err.value.code == 422
    return {c.field: c.message for c in err.value.causes}


def test_inventory_defaults_and_normalises() -> None:
    obj = SITE_INVENTORY.normalize(inventory(nodes=[{"name": "n1", "mac": "52:54:00:AA:bb:01"}]))
    node = obj["spec"]["nodes"][0]
    assert node == {"name": "n1", "role": "worker", "mac": "52:54:00:aa:bb:01", "locked": False}
    assert obj["spec"]["retry"] == 0


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"nodes": [{"name": "a"}, {"name": "a"}]}, "spec", "listed twice"),
        ({"nodes": [{"name": "A_1"}]}, "spec.nodes[0].name", "node name"),
        ({"nodes": [{"name": "a", "role": "gpu"}]}, "spec.nodes[0].role", "controller"),
        ({"nodes": [{"name": "a", "mac": "zz"}]}, "spec.nodes[0].mac", "MAC address"),
        ({"retry": -1}, "spec.retry", "greater than or equal"),
        ({"nodes": [{"name": f"n{i}"} for i in range(101)]}, "spec.nodes", "at most 100"),
    ],
)
def test_inventory_refusals_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    found = causes(SITE_INVENTORY, inventory(**spec))
    assert field in found and words in found[field], found


def test_inventory_is_named_after_its_site() -> None:
    found = causes(SITE_INVENTORY, inventory(name="other"))
    assert "named after its site" in found["spec.site"]


def test_pipeline_checks_workers_and_targets() -> None:
    ok = INFRA_PIPELINE.normalize(
        {"metadata": {"name": "p", "namespace": "ops"}, "spec": {"virtualSites": ["edge"], "osImage": "img"}}
    )
    assert ok["spec"]["workers"] == 4 and ok["spec"]["cluster"] is True and ok["spec"]["packages"] == []
    found = causes(
        INFRA_PIPELINE,
        {"metadata": {"name": "p", "namespace": "ops"}, "spec": {"virtualSites": ["edge"], "workers": 0}},
    )
    assert "spec.workers" in found
    found = causes(
        INFRA_PIPELINE,
        {"metadata": {"name": "p", "namespace": "ops"}, "spec": {"virtualSites": ["team/edge"]}},
    )
    assert "may target only" in found["spec.virtualSites[0]"]


def test_site_status_carries_the_infra_report() -> None:
    assert SITE.status_model is not None
    report = {
        "nodes": [{"name": "node-01", "state": "ready", "hardware": {"cpuCores": 32, "memoryBytes": 1}}],
        "pipeline": {"state": "Running", "phase": "os", "phases": [{"name": "os", "state": "Running"}]},
        "alarms": [{"id": "node-failed-node-01", "severity": "major", "message": "boom"}],
    }
    parsed = SITE.status_model.model_validate({"infra": report})
    assert parsed.model_dump(exclude_none=True)["infra"]["nodes"][0]["hardware"]["cpuCores"] == 32
    with pytest.raises(ValueError, match="state"):
        SITE.status_model.model_validate({"infra": {"nodes": [{"name": "n", "state": "exploded"}]}})
    with pytest.raises(ValueError, match="severity"):
        SITE.status_model.model_validate(
            {"infra": {"alarms": [{"id": "a", "severity": "meh", "message": "m"}]}}
        )
