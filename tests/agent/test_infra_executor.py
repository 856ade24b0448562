"""The agent's infra pipeline on the sim bare-metal model (sped up 10,000 times): phases in
order with bounded parallelism, a failure stopped at its phase and retried from there, a
restart resumed from the state file, a blocked section waits, day-2 lock/unlock/remove."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from fleetplane.agent.drivers.base import RealClock
from fleetplane.agent.drivers.simmodel.baremetal import SimBareMetal, Timings
from fleetplane.agent.drivers.simmodel.faults import Faults
from fleetplane.agent.infra import InfraExecutor, section_key

SCALE = 10_000.0


def art(name: str, kind: str, version: str) -> dict[str, Any]:
    digest = hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
    return {"name": f"ops/{name}", "type": kind, "version": version, "sha256": digest, "size": 10}


IMG, PKG, APPS = (
    art("img", "os-image", "2.0"),
    art("pkg", "package", "1.0"),
    art("apps", "container-package", "3"),
)


def section(nodes: int = 10, workers: int = 4, **extra: Any) -> dict[str, Any]:
    listed = [
        {"name": f"node-{i:02d}", "role": "controller" if i == 1 else "worker"} for i in range(1, nodes + 1)
    ]
    return {
        "source": "ops/base",
        "revisions": {"ops/base": 1},
        "nodes": listed,
        "retry": 0,
        "osImage": IMG,
        "packages": [PKG],
        "containerPackages": [APPS],
        "cluster": True,
        "workers": workers,
        "artifacts": [IMG, PKG, APPS],
    } | extra


class Recorder(SimBareMetal):
    """The sim model, counting installs and the most run at once."""

    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__(1, "s1", RealClock(), faults or Faults(), scale=SCALE)
        self.installs: list[str] = []
        self.running = self.peak = 0

    async def install_os(self, node: str, role: str, image: Any) -> None:
        self.installs.append(node)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await super().install_os(node, role, image)
        finally:
            self.running -= 1


class Fetcher:
    def __init__(self) -> None:
        self.fetched: list[str] = []

    async def __call__(self, sha: str, size: int, name: str) -> Path:
        self.fetched.append(name)
        return Path("/nonexistent") / sha


async def settle(ex: InfraExecutor, sec: dict[str, Any], timeout: float = 10.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        item = ex.apply(sec)[0]
        if item.state != "InProgress":
            return item.state
        await asyncio.sleep(0.01)
    raise AssertionError(f"did not settle: {ex.report()}")


def phases(ex: InfraExecutor) -> dict[str, str]:
    return {p["name"]: p["state"] for p in (ex.report() or {})["pipeline"]["phases"]}


def states(ex: InfraExecutor) -> dict[str, str]:
    return {n["name"]: n["state"] for n in (ex.report() or {})["nodes"]}


def test_install_from_scratch_in_order_with_bounded_workers(tmp_path: Path) -> None:
    async def scenario() -> None:
        metal, fetch = Recorder(), Fetcher()
        published: list[tuple[str, str]] = []

        async def publish(ns: str, kubeconfig: str) -> None:
            published.append((ns, kubeconfig))

        ex = InfraExecutor(metal, fetch=fetch, publish=publish, state_file=tmp_path / "infra.json")
        first = ex.apply(section())[0]
        assert first.state == "InProgress" and first.name == "ops/base"
        assert await settle(ex, section()) == "Applied"
        assert phases(ex) == dict.fromkeys(("upload", "os", "packages", "cluster", "containers"), "Succeeded")
        assert sorted(metal.installs) == [f"node-{i:02d}" for i in range(1, 11)]
        assert metal.peak == 4  # ten nodes, four at a time
        assert fetch.fetched[:3] == ["ops/img", "ops/pkg", "ops/apps"]
        report = ex.report() or {}
        ready = [n for n in report["nodes"] if n["state"] == "ready"]
        assert len(ready) == 10 and all(
            n["osImage"] == "2.0" and n["packages"] == [PKG["sha256"]] for n in ready
        )
        assert states(ex)["node-11"] == "discovered"  # a spare host in the rack
        assert report["nodes"][0]["hardware"]["cpuCores"] > 0 and report["nodes"][0]["hardware"]["bmc"]
        assert report["cluster"]["ready"] and report["cluster"]["nodes"] == 10
        assert published and published[0][0] == "ops" and "kind: Config" in published[0][1]
        assert "kubeconfig" not in str(report) and "token" not in (tmp_path / "infra.json").read_text()
        # The same section again does nothing.
        before = len(metal.installs)
        assert await settle(ex, dict(section())) == "Applied" and len(metal.installs) == before
        await ex.stop()

    asyncio.run(scenario())


def test_a_failed_node_stops_the_phase_and_retry_resumes_there(tmp_path: Path) -> None:
    async def scenario() -> None:
        faults = Faults()
        faults.inject("node_failure", 0, phase="packages", node="node-03")
        metal = Recorder(faults)
        ex = InfraExecutor(metal, fetch=Fetcher(), state_file=tmp_path / "infra.json")
        assert await settle(ex, section(nodes=5)) == "Failed"
        item = ex.apply(section(nodes=5))[0]
        assert item.reason is not None and "phase packages failed" in item.reason and "node-03" in item.reason
        assert phases(ex)["os"] == "Succeeded" and phases(ex)["packages"] == "Failed"
        assert phases(ex)["cluster"] == "Pending"
        assert states(ex)["node-03"] == "failed"
        alarms = {a["id"]: a for a in (ex.report() or {})["alarms"]}
        assert alarms["node-failed-node-03"]["severity"] == "major"
        assert alarms["pipeline-failed"]["severity"] == "critical"
        # Not retried on its own (a bad step would repeat forever) ...
        await asyncio.sleep(0.05)
        assert ex.apply(section(nodes=5))[0].state == "Failed"
        # ... but from its phase once the operator asks: no OS is installed again.
        installs = len(metal.installs)
        assert await settle(ex, section(nodes=5, retry=1)) == "Applied"
        assert len(metal.installs) == installs
        assert (ex.report() or {})["pipeline"]["retry"] == 1 and (ex.report() or {})["alarms"] == []
        await ex.stop()

    asyncio.run(scenario())


def test_a_restarted_agent_resumes_from_its_state_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        slow = Timings(os_install_s=3000.0)  # 0.3 s each at the test's scale
        metal = SimBareMetal(1, "s1", RealClock(), Faults(), scale=SCALE, timings=slow)
        metal.persist_to(tmp_path / "rack.json")  # the hosts' disks outlive the agent
        ex = InfraExecutor(metal, fetch=Fetcher(), state_file=tmp_path / "infra.json")
        sec = section(nodes=4, workers=2)
        ex.apply(sec)
        for _ in range(200):
            await asyncio.sleep(0.01)
            done = [n for n, s in (ex.st["nodes"]).items() if s.get("osImage")]
            if len(done) >= 2:
                break
        await ex.stop()  # the agent dies mid-phase
        assert ex.st["phase"] == "os"
        metal2 = Recorder()
        metal2.persist_to(tmp_path / "rack.json")
        ex2 = InfraExecutor(metal2, fetch=Fetcher(), state_file=tmp_path / "infra.json")
        assert ex2.st["phase"] == "os" and ex2.st["state"] == "Running"
        assert await settle(ex2, sec) == "Applied"
        assert len(metal2.installs) <= 2  # only the nodes not installed before the restart
        await ex2.stop()

    asyncio.run(scenario())


def test_blocked_section_waits_and_no_store_fails_the_upload() -> None:
    async def scenario() -> None:
        ex = InfraExecutor(Recorder(), fetch=Fetcher())
        blocked = section(blocked="artifact ops/img is not Ready (Uploading)")
        ex.apply(blocked)
        await asyncio.sleep(0.05)
        item = ex.apply(blocked)[0]
        assert (
            item.state == "InProgress" and item.reason == "waiting: artifact ops/img is not Ready (Uploading)"
        )
        await ex.stop()
        bare = InfraExecutor(Recorder())
        assert await settle(bare, section()) == "Failed"
        assert "no artifact store" in str(bare.apply(section())[0].reason)
        await bare.stop()

    asyncio.run(scenario())


def test_lock_unlock_add_and_remove_nodes() -> None:
    async def scenario() -> None:
        metal = Recorder()
        ex = InfraExecutor(metal, fetch=Fetcher())
        base = section(nodes=3)
        assert await settle(ex, base) == "Applied"
        added = section(nodes=4)
        assert await settle(ex, added) == "Applied"
        assert states(ex)["node-04"] == "ready" and metal.installs.count("node-04") == 1
        locked = section(nodes=4)
        locked["nodes"][3]["locked"] = True
        assert await settle(ex, locked) == "Applied"
        assert states(ex)["node-04"] == "locked" and "node-04" in metal.cordoned
        assert "node-04" not in metal.cluster  # out of service
        assert [a["id"] for a in (ex.report() or {})["alarms"]] == ["node-locked-node-04"]
        assert await settle(ex, added) == "Applied"
        assert (
            states(ex)["node-04"] == "ready"
            and "node-04" not in metal.cordoned
            and "node-04" in metal.cluster
        )
        assert await settle(ex, base) == "Applied"
        assert states(ex)["node-04"] == "removed" and "node-04" not in metal.images
        assert not metal.powered["node-04"]
        # Listed again: provisioned afresh.
        assert await settle(ex, added) == "Applied"
        assert states(ex)["node-04"] == "ready" and metal.installs.count("node-04") == 2
        await ex.stop()

    asyncio.run(scenario())


def test_an_inventory_without_a_pipeline_runs_no_phase(tmp_path: Path) -> None:
    """A SiteInventory that no InfraPipeline targets: the section has ``nodes`` and ``retry``
    only. Its nodes are reported (and locked, unlocked, removed); no phase runs, nothing fails."""

    async def scenario() -> None:
        metal = Recorder()
        ex = InfraExecutor(metal, fetch=Fetcher(), state_file=tmp_path / "infra.json")
        inventory = {"nodes": [{"name": "node-01", "role": "controller"}], "retry": 0}
        item = ex.apply(inventory)[0]
        assert item.name == "inventory"
        assert await settle(ex, inventory) == "Applied"
        report = ex.report() or {}
        assert "pipeline" not in report and report["alarms"] == []
        assert metal.installs == [] and metal.cluster == {} and metal.work_s == 0
        assert len(report["nodes"]) == 12 and set(states(ex).values()) == {"discovered"}
        assert report["nodes"][0]["hardware"]["cpuCores"] > 0
        # Day 2 without an OS: a bare host is locked at once (nothing to drain) and put back.
        locked = {"nodes": [{"name": "node-01", "role": "controller", "locked": True}], "retry": 0}
        assert await settle(ex, locked) == "Applied"
        assert states(ex)["node-01"] == "locked" and "node-01" in metal.cordoned and metal.work_s == 0
        assert [a["id"] for a in (ex.report() or {})["alarms"]] == ["node-locked-node-01"]
        assert await settle(ex, inventory) == "Applied"
        assert states(ex)["node-01"] == "discovered" and "node-01" not in metal.cordoned
        assert await settle(ex, locked) == "Applied"
        assert await settle(ex, {"nodes": [], "retry": 0}) == "Applied"
        assert states(ex)["node-01"] == "removed" and "node-01" not in metal.cordoned
        assert (ex.report() or {})["alarms"] == []
        await ex.stop()
        # A state file left by an agent that ran the phases for such a section (failing at the
        # cluster) starts over as a nodes-only run: the failure and its alarm are gone.
        ex2 = InfraExecutor(Recorder(), state_file=tmp_path / "infra.json")
        ex2.st |= {"phase": "cluster", "state": "Failed", "reason": "old"}
        ex2.st["key"] = section_key(inventory)
        assert await settle(ex2, inventory) == "Applied"
        assert "pipeline" not in (ex2.report() or {}) and (ex2.report() or {})["alarms"] == []
        await ex2.stop()

    asyncio.run(scenario())


def test_the_cluster_phase_says_why_it_has_no_controller() -> None:
    async def scenario() -> None:
        # A pipeline with no OS image: the controller is listed but has no OS to run on.
        ex = InfraExecutor(Recorder(), fetch=Fetcher())
        no_os = section(nodes=3, osImage=None, artifacts=[PKG, APPS])
        assert await settle(ex, no_os) == "Failed"
        reason = str(ex.apply(no_os)[0].reason)
        assert (
            "phase cluster failed" in reason and "no controller node has an installed OS (node-01" in reason
        )
        alarms = {a["id"] for a in (ex.report() or {})["alarms"]}
        assert "pipeline-failed" in alarms
        await ex.stop()
        # An inventory with workers only.
        ex = InfraExecutor(Recorder(), fetch=Fetcher())
        workers = section(nodes=2)
        workers["nodes"][0]["role"] = "worker"
        assert await settle(ex, workers) == "Failed"
        assert "the inventory lists none" in str(ex.apply(workers)[0].reason)
        await ex.stop()

    asyncio.run(scenario())
