"""The workload status controller: site reports become stored vK8s Pods and a summed workload
``status`` (so watches see them), batched, skipping writes when nothing changed, and the same
after a restart; plus the pure parts (a pod report as a Pod, the summed status, pod states)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

from fleetplane.controllers.workload_render import Placement, pod_object, pod_state, workload_status
from fleetplane.controllers.workload_status import WorkloadStatusController
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.server.vk8s.tables import table
from tests.support.controllers import running_controller
from tests.support.waiting import eventually

T = "acme"
DEPLOY_KIND = "vk8s.apps.Deployment"
POD_KIND = "vk8s.core.Pod"


def report(
    name: str, node: str | None = "node-0", generation: int = 2, phase: str = "Running", **extra: Any
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
        **extra,
    }


def placement(site: str, pods: list[dict[str, Any]], desired: int = 3, applied: int = 5) -> Placement:
    return Placement(site, desired, at=2, manifest_generation=5, applied=applied, pods=pods)


def test_a_pod_report_becomes_a_pod_carrying_its_site() -> None:
    pod = pod_object("shop", "tokyo", report("web-abc-12345"))
    assert pod["metadata"]["labels"]["ves.io/site"] == "tokyo"
    assert pod["spec"]["nodeName"] == "tokyo-node-0"
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pending = pod_object("shop", "tokyo", {**report("web-x", node=None, phase="Pending"), "reason": "0/1"})
    assert pending["spec"]["nodeName"] == "" and pending["status"]["phase"] == "Pending"
    sts = pod_object("shop", "tokyo", {**report("db-0"), "workload": "shop/StatefulSet/db"})
    assert sts["metadata"]["name"] == "db-0.tokyo"
    pull = pod_object("shop", "t", report("w", phase="ImagePullBackOff", reason="not found"))
    waiting = pull["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ImagePullBackOff", "message": "not found"}


def test_pod_states_of_the_workload_view() -> None:
    assert pod_state(report("a")) == "Running"
    assert pod_state(report("a", phase="ContainerCreating")) == "ContainerCreating"
    assert pod_state(report("a", phase="ImagePullBackOff")) == "ImagePullBackOff"
    assert pod_state(report("a", phase="CrashLoopBackOff", lastTermination="Error")) == "CrashLoopBackOff"
    assert pod_state(report("a", phase="CrashLoopBackOff", lastTermination="OOMKilled")) == "OOMKilled"
    assert pod_state(report("a", phase="Pending", node=None)) == "Pending"


def test_status_sums_over_sites_and_waits_for_every_site() -> None:
    sites = [
        placement("a", [report(f"a{i}") for i in range(3)]),
        placement("b", [report(f"b{i}") for i in range(3)]),
        placement("c", [report("c0")], desired=1),  # an override gives it 1 replica
    ]
    status = workload_status("Deployment", "web", 2, sites)
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (7, 7, 7)
    assert status["observedGeneration"] == 2 and status["fleet"]["desiredReplicas"] == 7
    assert status["conditions"][0]["status"] == "True"
    assert status["fleet"]["siteStates"] == {"deployed": 3, "inProgress": 0, "failed": 0}
    shown = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}, "status": status}
    assert table("Deployment", [shown], "None")["rows"][0]["cells"][1] == "7/7"
    # Site b has not applied its newest manifest: not observed, not available.
    sites[1] = placement("b", [report(f"b{i}") for i in range(3)], applied=4)
    status = workload_status("Deployment", "web", 2, sites)
    assert status["observedGeneration"] == 1 and status["conditions"][0]["status"] == "False"
    assert status["fleet"]["siteStates"]["inProgress"] == 1
    # Old pods on a site: not updated; an OOMKilled pod fails its site, with the reason.
    sites[0] = placement("a", [report(f"a{i}", generation=1) for i in range(3)])
    sites[1] = placement(
        "b",
        [
            report("b0"),
            report("b1"),
            report("b2", phase="CrashLoopBackOff", lastTermination="OOMKilled", reason="OOMKilled; back-off"),
        ],
    )
    status = workload_status("Deployment", "web", 2, sites)
    assert status["updatedReplicas"] == 4 and status["conditions"][0]["status"] == "False"
    fleet = status["fleet"]
    assert fleet["podStates"]["OOMKilled"] == 1 and fleet["podStates"]["Running"] == 6
    assert fleet["failing"] == [{"site": "b", "reason": "OOMKilled: OOMKilled; back-off"}]


# -- the controller against a real store -------------------------------------------------------


def manifest(site: str, generation: int, replicas: int = 2, at: int = 1) -> Obj:
    web = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "acme-shop",
            "annotations": {
                "fleetplane.io/vk8s-source": "shop/web",
                "fleetplane.io/vk8s-generation": str(at),
            },
        },
        "spec": {"replicas": replicas},
    }
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "SiteManifest",
        "metadata": {"name": site, "generation": generation},
        "spec": {"sections": {"workloads": {"objects": [web]}}},
    }


def site_status(applied: int, *pods: dict[str, Any]) -> dict[str, Any]:
    return {"manifest": {"generation": applied, "state": "Applied", "items": []}, "pods": list(pods)}


def put_site(store: Store, name: str, status: dict[str, Any]) -> None:
    current = store.get_or_none(T, "Site", "", name)
    if current is None:
        store.create(T, {"apiVersion": "fleetplane.io/v1", "kind": "Site", "metadata": {"name": name}})
        current = store.get(T, "Site", "", name)
    store.update(T, {**current, "status": status}, part="status")


def running(store: Store) -> contextlib.AbstractAsyncContextManager[WorkloadStatusController]:
    return running_controller(
        store, lambda hub: WorkloadStatusController(store, hub, delay=0.05), poll_interval=0.1
    )


def pods_of(store: Store) -> dict[str, Obj]:
    return {p["metadata"]["name"]: p for p in store.list(T, POD_KIND, namespace="shop").items}


def status_of(store: Store) -> dict[str, Any]:
    return store.get(T, DEPLOY_KIND, "shop", "web").get("status") or {}


def test_the_controller_stores_pods_and_status_and_skips_unchanged_writes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create(
        T,
        {
            "apiVersion": "apps/v1",
            "kind": DEPLOY_KIND,
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2},
        },
    )
    for name in ("a", "b"):
        store.create(T, manifest(name, 1))
        put_site(store, name, site_status(1, report(f"{name}-1", generation=1, phase="ContainerCreating")))

    async def scenario() -> None:
        async with running(store) as controller:
            await eventually(lambda: len(pods_of(store)) == 2)
            assert pods_of(store)["a-1"]["spec"]["nodeName"] == "a-node-0"
            status = status_of(store)
            assert status["replicas"] == 2 and status["readyReplicas"] == 0
            # Both sites run both pods: ready, available; the pods changed in place.
            for name in ("a", "b"):
                both = site_status(1, report(f"{name}-1", generation=1), report(f"{name}-2", generation=1))
                put_site(store, name, both)
            await eventually(lambda: status_of(store).get("readyReplicas") == 4)
            assert status_of(store)["conditions"][0]["status"] == "True"
            pods = pods_of(store)
            assert sorted(pods) == ["a-1", "a-2", "b-1", "b-2"]
            assert all(p["status"]["phase"] == "Running" for p in pods.values())
            # A heartbeat that changes nothing writes nothing.
            await asyncio.sleep(0.3)
            before, revision = controller.writes, store.revision()
            same = site_status(1, report("a-1", generation=1), report("a-2", generation=1))
            put_site(store, "a", {**same, "nodeCount": 1})
            await asyncio.sleep(0.5)
            assert controller.writes == before and store.revision() == revision + 1
            # A site that goes away takes its pods with it.
            store.delete(T, "Site", "", "b")
            await eventually(lambda: sorted(pods_of(store)) == ["a-1", "a-2"])
        # Restarted, the controller finds the store right and writes nothing.
        revision = store.revision()
        async with running(store) as again:
            await asyncio.sleep(0.5)
            assert again.writes == 0 and store.revision() == revision

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.close()


def test_a_change_on_many_sites_coalesces_the_status_writes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create(
        T,
        {
            "apiVersion": "apps/v1",
            "kind": DEPLOY_KIND,
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1},
        },
    )
    sites = [f"s{i:03d}" for i in range(300)]
    for name in sites:
        store.create(T, manifest(name, 1, replicas=1))

    async def scenario() -> None:
        async with running(store):
            start = store.revision()
            for name in sites:  # every site reports at once (a fan-out)
                put_site(store, name, site_status(1, report(f"{name}-1", generation=1)))
            await eventually(lambda: status_of(store).get("readyReplicas") == 300)
            await eventually(lambda: len(pods_of(store)) == 300)
            # 300 site reports + 300 pods + a few coalesced status writes, not one per report.
            own = store.revision() - start - 2 * len(sites)  # a site: created, then its report
            assert 300 < own < 300 + 20, own
            assert status_of(store)["fleet"]["siteStates"]["deployed"] == 300

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.close()


def test_kept_site_summaries_give_the_status_a_fresh_computation_gives() -> None:
    """status_of keeps each site's summary while its report and manifest stay: after reports,
    a heartbeat (equal report), a new generation and a site leaving, the status equals one
    computed from scratch."""
    controller = WorkloadStatusController(cast(Store, None), cast(WatchHub, None))
    key = (T, "shop", "Deployment", "web")
    deployment: Obj = {"kind": DEPLOY_KIND, "metadata": {"name": "web", "namespace": "shop", "generation": 1}}

    def site(name: str, applied: int, *pods: dict[str, Any]) -> None:
        controller.fold(
            T, {"kind": "Site", "metadata": {"name": name}, "status": site_status(applied, *pods)}, False
        )

    def fresh() -> dict[str, Any] | None:
        again = WorkloadStatusController(cast(Store, None), cast(WatchHub, None))
        again.workloads, again.placed, again.sites = controller.workloads, controller.placed, controller.sites
        return again.status_of(key)

    controller.fold(T, deployment, False)
    for name in ("a", "b", "c"):
        controller.fold(T, manifest(name, 5), False)
        site(name, 5, report(f"{name}0", generation=1), report(f"{name}1", generation=1, phase="Pending"))
    first = controller.status_of(key)
    assert first == fresh() and first is not None and first["readyReplicas"] == 3
    kept = controller.summaries[key]["a"]
    site("a", 5, report("a0", generation=1), report("a1", generation=1, phase="Pending"))  # heartbeat
    assert controller.status_of(key) == first and controller.summaries[key]["a"] is kept
    site("b", 5, report("b0", generation=1), report("b1", generation=1))  # b1 is running now
    controller.fold(T, {**deployment, "metadata": {**deployment["metadata"], "generation": 2}}, False)
    controller.fold(T, manifest("c", 6, at=2), False)
    controller.fold(T, {**manifest("a", 6), "spec": {"sections": {}}}, False)  # a leaves
    now = controller.status_of(key)
    assert now == fresh() and now is not None and now["fleet"]["sites"] == 2
    assert now["readyReplicas"] == 3 and now["observedGeneration"] == 1
