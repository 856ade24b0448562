"""The read side of fan-out, pure: Pods from site reports and a workload's summed status."""

from __future__ import annotations

from typing import Any

from fleetplane.server.vk8s.fanout import FleetView, pod_object, pods, with_status
from fleetplane.server.vk8s.tables import table


def report(
    name: str, node: str | None = "node-0", generation: int = 2, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "namespace": "acme-shop",
        "name": name,
        "workload": "shop/Deployment/web",
        "generation": generation,
        "phase": phase,
        "ready": phase == "Running",
        "restarts": 0,
        "node": node,
        "labels": {"app": "web"},
        "containers": [{"name": "web", "image": "nginx:1.27", "resources": {}}],
    }


def site(name: str, applied: int, *pods: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": "7"},
        "status": {"manifest": {"generation": applied, "state": "Applied"}, "pods": list(pods)},
    }


def manifest(name: str, generation: int, replicas: int, at: int = 2) -> dict[str, Any]:
    web = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "annotations": {
                "fleetplane.io/vk8s-source": "shop/web",
                "fleetplane.io/vk8s-generation": str(at),
            },
        },
        "spec": {"replicas": replicas},
    }
    return {
        "metadata": {"name": name, "generation": generation},
        "spec": {"sections": {"workloads": {"objects": [web]}}},
    }


DEPLOY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "generation": 2},
    "spec": {"replicas": 3},
}


def test_pods_carry_their_site() -> None:
    pod = pod_object("shop", site("tokyo", 1), report("web-abc-12345"))
    assert pod["metadata"]["labels"]["ves.io/site"] == "tokyo"
    assert pod["spec"]["nodeName"] == "tokyo-node-0"
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pending = pod_object(
        "shop", site("tokyo", 1), {**report("web-x", node=None, phase="Pending"), "reason": "0/1 nodes"}
    )
    assert pending["spec"]["nodeName"] == "" and pending["status"]["phase"] == "Pending"
    other = {**report("x"), "namespace": "acme-other"}
    view = FleetView("acme", "shop", [site("a", 1, report("p1"), other), site("b", 1, report("p2"))])
    assert [p["metadata"]["name"] for p in pods(view)] == ["p1", "p2"]


def test_status_sums_over_sites_and_waits_for_every_site() -> None:
    sites = [
        site("a", 5, *(report(f"a{i}") for i in range(3))),
        site("b", 4, *(report(f"b{i}") for i in range(3))),
        site("c", 9, report("c0")),  # an override gives it 1 replica
    ]
    mans = {"a": manifest("a", 5, 3), "b": manifest("b", 4, 3), "c": manifest("c", 9, 1)}
    out = with_status(FleetView("acme", "shop", sites, mans), DEPLOY)
    status = out["status"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (7, 7, 7)
    assert status["observedGeneration"] == 2 and status["fleet"]["desiredReplicas"] == 7
    assert status["conditions"][0]["status"] == "True"
    assert table("Deployment", [out], "None")["rows"][0]["cells"][1] == "7/7"
    # Site b has not applied its newest manifest: not observed, not available.
    mans["b"] = manifest("b", 6, 3)
    status = with_status(FleetView("acme", "shop", sites, mans), DEPLOY)["status"]
    assert status["observedGeneration"] == 1 and status["conditions"][0]["status"] == "False"
    # Old pods on a site: not updated.
    sites[0] = site("a", 5, *(report(f"a{i}", generation=1) for i in range(3)))
    mans["b"] = manifest("b", 4, 3)
    status = with_status(FleetView("acme", "shop", sites, mans), DEPLOY)["status"]
    assert status["updatedReplicas"] == 4 and status["conditions"][0]["status"] == "False"
