"""The ``workloads`` section on the sim: Deployments run as pods of the workload model, and the
site reports them (``Site.status.pods``) with their limits, images, nodes and failures."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetplane.agent.drivers.sim import SimDriver
from fleetplane.kinds import SITE
from tests.agent.drivers.conftest import make_site, step

SMALL = {"app:1": 100_000_000, "app:2": 100_000_000}
FLAVOR = {"limits": {"cpu": "100m", "memory": "100Mi"}, "requests": {"cpu": "50m", "memory": "50Mi"}}


def deployment(
    name: str = "web", image: str = "app:1", replicas: int = 3, generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "acme-shop",
            "annotations": {
                "fleetplane.io/vk8s-source": f"shop/{name}",
                "fleetplane.io/vk8s-generation": str(generation),
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, "resources": FLAVOR}]},
            },
        },
    }


def manifest(*objects: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"sections": {"workloads": {"namespaces": ["acme-shop"], "objects": list(objects)}}}}


def test_a_deployment_runs_and_its_pods_are_reported() -> None:
    site = make_site(nodes=2, image_sizes=SMALL)
    driver = SimDriver(site)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "acme-shop"}}
    items = asyncio.run(driver.apply(manifest(cm, deployment())))
    by_name = {i.name: i.state for i in items}
    assert by_name == {"acme-shop/ConfigMap/cfg": "Applied", "acme-shop/Deployment/web": "InProgress"}
    step(site, 2.0)
    pods = site.observation().pods
    assert pods is not None and len(pods) == 3
    for pod in pods:
        assert pod["workload"] == "shop/Deployment/web" and pod["generation"] == 1
        assert pod["phase"] == "Running" and pod["ready"] and pod["node"] in ("node-0", "node-1")
        assert pod["containers"] == [{"name": "main", "image": "app:1", "resources": FLAVOR}]
        assert pod["name"].startswith("web-") and len(pod["name"].split("-")) == 3
        assert pod["labels"]["app"] == "web" and "pod-template-hash" in pod["labels"]
        assert pod["createdAt"].endswith("Z")
    assert len({p["name"] for p in pods}) == 3
    # The report is a valid Site status.
    assert SITE.status_model is not None
    SITE.status_model.model_validate(site.observation().to_status())
    items = asyncio.run(driver.apply(manifest(cm, deployment())))
    assert {i.name: i.state for i in items}["acme-shop/Deployment/web"] == "Applied"


def test_a_new_image_replaces_the_pods_and_a_bad_one_crash_loops() -> None:
    site = make_site(nodes=2, image_sizes=SMALL)
    driver = SimDriver(site)
    asyncio.run(driver.apply(manifest(deployment())))
    step(site, 2.0)
    before = {p["name"] for p in site.observation().pods or ()}
    asyncio.run(driver.apply(manifest(deployment(image="app:2", generation=2))))
    step(site, 2.0)
    pods = site.observation().pods or ()
    assert {p["name"] for p in pods}.isdisjoint(before)
    assert {p["generation"] for p in pods} == {2} and {p["containers"][0]["image"] for p in pods} == {"app:2"}
    asyncio.run(driver.apply(manifest(deployment(image="app:bad", generation=3))))
    step(site, 60.0)
    pods = site.observation().pods or ()
    assert pods and all(p["restarts"] >= 1 and p["lastTermination"] == "Error" for p in pods)


def test_removing_the_section_removes_the_pods() -> None:
    site = make_site(nodes=1, image_sizes=SMALL)
    driver = SimDriver(site)
    asyncio.run(driver.apply(manifest(deployment(replicas=2))))
    assert len(site.observation().pods or ()) == 2
    assert asyncio.run(driver.apply({"spec": {"sections": {}}})) == []
    assert site.observation().pods is None and not site.workloads.pods


def in_namespace(obj: dict[str, Any], ns: str) -> dict[str, Any]:
    meta = obj["metadata"]
    source = f"{ns}/{meta['name']}"
    notes = {**meta.get("annotations", {}), "fleetplane.io/vk8s-source": source}
    return {**obj, "metadata": {**meta, "namespace": f"acme-{ns}", "annotations": notes}}


def test_vk8s_namespaces_are_isolated_networks_reached_only_through_services() -> None:
    site = make_site(nodes=2, image_sizes=SMALL)
    driver = SimDriver(site)
    shop, ops = (
        in_namespace(deployment("web", replicas=2), "shop"),
        in_namespace(deployment("mon", replicas=1), "ops"),
    )
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "acme-shop",
            "annotations": {"fleetplane.io/vk8s-source": "shop/web"},
        },
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    section = {"namespaces": ["acme-shop", "acme-ops"], "objects": [svc, shop, ops]}
    asyncio.run(driver.apply({"spec": {"sections": {"workloads": section}}}))
    step(site, 2.0)
    network = site.workload_section.network
    assert network is not None
    site.observation()  # takes the running pods
    web = next(p for p in network.pods if p.vk8s_namespace == "shop")
    mon = next(p for p in network.pods if p.vk8s_namespace == "ops")
    assert network.verdict(web, web) == ("same-namespace", True)
    assert network.verdict(mon, web) == ("isolated", False)  # another namespace's pod, directly
    assert network.verdict(mon, network.services[0]) == ("via-service", True)
    # The generated connections meet the same network, and the site reports the verdicts.
    step(site, 120.0)
    hits = site.observation().policy_hits
    assert hits["shop/vk8s-network/isolated"] + hits["ops/vk8s-network/isolated"] > 0
    assert hits["shop/vk8s-network/via-service"] > 0 and hits["ops/vk8s-network/same-namespace"] > 0


def test_the_site_says_when_its_pull_finishes_so_the_agent_looks_again_then() -> None:
    """``next_change_in``: the time line's next event (here: the image pulled, the pods
    started) on the site model; the driver offers it only on the real clock, which is the
    clock the agent core waits on."""
    site = make_site(nodes=1, image_sizes=SMALL, pull_bytes_per_s=50e6)  # 100 MB: 2 s
    driver = SimDriver(site)
    assert site.next_change_in() is None  # nothing scheduled
    asyncio.run(driver.apply(manifest(deployment(replicas=1))))
    due = site.next_change_in()
    assert due is not None and abs(due - 2.0) < 0.01
    step(site, 1.5)
    due = site.next_change_in()
    assert due is not None and abs(due - 0.5) < 0.01
    assert driver.next_change_in() is None  # a virtual clock: the agent cannot wait on it
    step(site, 0.5)
    pods = site.observation().pods
    assert site.next_change_in() is None and pods is not None and pods[0]["phase"] == "Running"

    real = SimDriver.for_site("site-real", profile="default")
    assert real.next_change_in() is None
    asyncio.run(real.apply(manifest(deployment(replicas=1, image="app:9"))))
    due = real.next_change_in()
    assert due is not None and 0 < due <= 31  # 20 MiB to 1.5 GiB at 50 MB/s
