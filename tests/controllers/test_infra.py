"""The infra controller turns sites' ``status.infra`` reports into Node and Alarm objects,
the SiteInventory's difference and the InfraPipeline's per-site status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.infra import InfraController, inventory_status
from fleetplane.core.store import Store, open_store
from fleetplane.kinds import INFRA_PIPELINE, SITE, SITE_INVENTORY
from tests.support.controllers import running_controller
from tests.support.waiting import eventually

T = "acme"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def node(name: str, state: str = "ready", role: str | None = "worker", **extra: Any) -> dict[str, Any]:
    out = {"name": name, "state": state, "packages": [], **extra}
    return out | ({"role": role} if role else {})


def report(store: Store, site: str, infra: dict[str, Any]) -> None:
    current = store.get(T, SITE.kind, "", site)
    store.update(T, {**current, "status": {"phase": "Online", "infra": infra}}, part="status")


def inventory(site: str, *nodes: tuple[str, str]) -> dict[str, Any]:
    listed = [{"name": n, "role": r} for n, r in nodes]
    return SITE_INVENTORY.normalize({"metadata": {"name": site}, "spec": {"site": site, "nodes": listed}})


def test_inventory_status_names_the_differences() -> None:
    inv = inventory("s1", ("node-01", "controller"), ("node-02", "worker"), ("node-03", "worker"))
    rep = {
        "nodes": [
            node("node-01", role="controller"),
            node("node-02", role="storage"),
            node("node-09", "discovered", None),
        ],
        "pipeline": {"state": "Failed", "phase": "os", "reason": "node-02: boom"},
    }
    status = inventory_status(inv, rep)
    assert status["missing"] == ["node-03"] and status["unexpected"] == ["node-09"]
    assert status["roleMismatch"] == [{"name": "node-02", "intended": "worker", "discovered": "storage"}]
    assert status["ready"] == 2 and status["intended"] == 3 and status["discovered"] == 3
    assert status["phase"] == "os: Failed"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Succeeded"]["status"] == "False" and conds["Succeeded"]["message"] == "node-02: boom"
    assert conds["InventoryMatches"]["status"] == "False"
    assert inventory_status(inv, None)["missing"] == []  # nothing reported yet: nothing known missing


def test_a_site_with_an_inventory_and_no_pipeline_is_no_failed_pipeline() -> None:
    """A SiteInventory that no InfraPipeline targets: the site reports its nodes and no
    pipeline; nothing counts it as a pipeline site, let alone a failed one."""
    from fleetplane.cli.nodes_cmd import inventory_line, inventory_only, pipeline_row

    inv = inventory("s1", ("node-01", "controller"))
    rep = {"nodes": [node("node-01", "discovered", None), node("node-02", "discovered", None)], "alarms": []}
    status = inventory_status(inv, rep)
    assert "phase" not in status and status["missing"] == [] and status["ready"] == 0
    assert {c["type"] for c in status["conditions"]} == {"Reported", "InventoryMatches"}
    line = inventory_line({**inv, "status": status})
    assert "no pipeline" in line and "Failed" not in line
    site = {"metadata": {"name": "s1"}, "status": {"infra": rep}}
    assert pipeline_row(site) is None and inventory_only(site)
    assert not inventory_only({"metadata": {"name": "s2"}, "status": {}})


def running(store: Store, keep_cleared: int = 50) -> contextlib.AbstractAsyncContextManager[InfraController]:
    return running_controller(
        store,
        lambda hub: InfraController(store, hub, keep_cleared=keep_cleared, flush_delay=0.01),
        poll_interval=0.2,
    )


def objects(store: Store, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in store.list(T, kind).items}


def test_nodes_inventory_status_and_pipeline_status(store: Store) -> None:
    store.create(T, {"kind": SITE.kind, "metadata": {"name": "s1"}, "spec": {}})
    store.create(T, {"kind": SITE.kind, "metadata": {"name": "s2"}, "spec": {}})
    store.create(T, inventory("s1", ("node-01", "controller"), ("node-02", "worker")))
    pipe = INFRA_PIPELINE.normalize(
        {"metadata": {"name": "base", "namespace": "ops"}, "spec": {"virtualSites": ["x"]}}
    )
    store.create(T, pipe)

    async def scenario() -> None:
        async with running(store):
            # Nothing reported yet: the intended nodes wait for the site.
            found = await eventually(lambda: len(objects(store, "Node")) == 2 and objects(store, "Node"))
            assert found["s1.node-01"]["status"]["state"] == "provisioning"
            hardware = {"cpuModel": "AMD EPYC 7313P", "cpuCores": 16, "memoryBytes": 1 << 30}
            pipeline = {"source": "ops/base", "state": "Running", "phase": "os"}
            await asyncio.to_thread(
                report,
                store,
                "s1",
                {
                    "nodes": [node("node-01", "provisioning", hardware=hardware), node("node-07", "ready")],
                    "pipeline": pipeline,
                },
            )
            await asyncio.to_thread(
                report, store, "s2", {"nodes": [], "pipeline": {**pipeline, "state": "Succeeded"}}
            )

            def settled() -> Any:
                nodes = objects(store, "Node")
                return "s1.node-07" in nodes and nodes

            nodes = await eventually(settled)
            assert nodes["s1.node-01"]["status"]["hardware"]["cpuModel"] == "AMD EPYC 7313P"
            assert nodes["s1.node-01"]["spec"]["role"] == "controller"
            assert nodes["s1.node-01"]["metadata"]["labels"] == {"fleetplane.io/site": "s1"}
            assert nodes["s1.node-02"]["status"] | {} == {
                "state": "failed",
                "reason": "listed in the inventory, not found on site",
                "inInventory": True,
                "discovered": False,
                "packages": [],
            }
            assert nodes["s1.node-07"]["status"]["inInventory"] is False  # unexpected, but running

            def pipe_status() -> Any:
                status = store.get(T, INFRA_PIPELINE.kind, "ops", "base").get("status") or {}
                return status.get("counts") == {"Running": 1, "Succeeded": 1} and status

            status = await eventually(pipe_status)
            assert status["sites"]["s1"] == {"phase": "os", "state": "Running"}
            inv = await eventually(
                lambda: (
                    (store.get(T, SITE_INVENTORY.kind, "", "s1").get("status") or {}).get("unexpected")
                    and store.get(T, SITE_INVENTORY.kind, "", "s1")
                )
            )
            assert inv["status"]["missing"] == ["node-02"] and inv["status"]["unexpected"] == ["node-07"]
            # The site stops reporting node-07: its Node goes away.
            await asyncio.to_thread(report, store, "s1", {"nodes": [node("node-01")], "pipeline": pipeline})
            await eventually(lambda: "s1.node-07" not in objects(store, "Node"))

    asyncio.run(scenario())


def test_alarms_raise_clear_reraise_and_keep_bounded_history(store: Store) -> None:
    store.create(T, {"kind": SITE.kind, "metadata": {"name": "s1"}, "spec": {}})
    disk = {"id": "disk-degraded", "severity": "major", "resource": "node-01", "message": "sda: SMART errors"}

    async def scenario() -> None:
        async with running(store, keep_cleared=1):
            await asyncio.to_thread(report, store, "s1", {"alarms": [disk]})
            raised = await eventually(lambda: objects(store, "Alarm"))
            ((name, alarm),) = raised.items()
            assert alarm["spec"] == {"site": "s1", **disk} and alarm["status"]["state"] == "Active"
            await asyncio.to_thread(report, store, "s1", {"alarms": []})
            await eventually(lambda: objects(store, "Alarm")[name]["status"]["state"] == "Cleared")
            assert objects(store, "Alarm")[name]["status"]["clearedAt"]
            # Raised again: a new Alarm; the cleared one stays as history.
            await asyncio.to_thread(report, store, "s1", {"alarms": [disk]})
            both = await eventually(lambda: len(objects(store, "Alarm")) == 2 and objects(store, "Alarm"))
            assert sorted(a["status"]["state"] for a in both.values()) == ["Active", "Cleared"]
            # Cleared twice, history bounded to one: the oldest is deleted.
            await asyncio.to_thread(report, store, "s1", {"alarms": []})

            def pruned() -> Any:
                found = objects(store, "Alarm")
                return (
                    len(found) == 1
                    and all(a["status"]["state"] == "Cleared" for a in found.values())
                    and found
                )

            kept = await eventually(pruned)
            assert name not in kept

    asyncio.run(scenario())
