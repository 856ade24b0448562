"""The agent core on its own: a scripted site API and a tiny in-test driver, no server.

Checks the contract of docs/site-manifest.md ("The agent core"): persist before apply,
restart loads and applies the persisted manifest before any call, connection loss keeps the
last manifest enforced with jittered capped backoff, the heartbeat content, 401 stops the
site, and a server that predates the new status fields still sees the site Online.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.core import MANIFEST_FILE, AgentCore, SiteApi, SiteRefused, load_manifest
from fleetplane.agent.drivers.base import Allocatable, ItemStatus, NodeInfo, Observation, Usage
from fleetplane.agent.onboard import SavedIdentity
from fleetplane.core.errors import ApiError

GiB = 1024**3
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def manifest(generation: int, cpu: int = 500) -> dict[str, Any]:
    sections = {"reservations": {"cpuMillis": cpu, "memoryBytes": GiB, "sources": ["shop/r"]}}
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "SiteManifest",
        "metadata": {"name": "s1", "generation": generation},
        "spec": {"site": "s1", "hash": f"sha256:{generation:064x}", "sections": sections},
    }


class FakeDriverForCoreTests:
    """Records every apply with what ``manifest.json`` held at that moment."""

    name = "fake"

    def __init__(self, data_dir: Path, *, in_progress: int = 0) -> None:
        self.data_dir = data_dir
        self.applied: list[int] = []
        self.on_disk_at_apply: list[int | None] = []
        self.in_progress = in_progress  # applies that answer InProgress before Applied
        self.reserved = 0

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        self.applied.append(int(manifest["metadata"]["generation"]))
        disk = load_manifest(self.data_dir)
        self.on_disk_at_apply.append(None if disk is None else int(disk["metadata"]["generation"]))
        section = manifest["spec"]["sections"].get("reservations")
        if section is None:
            self.reserved = 0
            return []
        self.reserved = int(section["cpuMillis"])
        if self.in_progress > 0:
            self.in_progress -= 1
            return [ItemStatus("reservations", "reservations", "InProgress")]
        return [ItemStatus("reservations", "reservations", "Applied")]

    async def observe(self) -> Observation:
        nodes = (
            NodeInfo("node-0", "controller", 8000, 32 * GiB, 500 * GiB),
            NodeInfo("node-1", "worker", 16000, 64 * GiB, 1000 * GiB, ready=False),
        )
        return Observation(
            nodes=nodes,
            usage=Usage(1200, 8 * GiB, 100 * GiB, 5.0, 8.3),
            allocatable=Allocatable(24000 - self.reserved, 96 * GiB),
            os_version="simos 2.1.0",
            policy_hits={"shop/allow-pay/0": 7},
            now=1_700_000_000.0,
        )


class ScriptedApi:
    """A site API whose answers the test sets; ``down`` makes every call a connection error."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.down = False
        self.statuses: list[dict[str, Any]] = []
        self.polls: list[tuple[int, float]] = []
        self.calls = 0
        self.refuse_with: int | None = None
        self.refuse_unknown_status_fields = False
        self.changed = asyncio.Event()

    def _gate(self) -> None:
        self.calls += 1
        if self.down:
            raise ApiError(0, "ConnectionError", "cannot reach the server: connection refused")
        if self.refuse_with is not None:
            raise ApiError(self.refuse_with, "Unauthorized", "certificate revoked")

    async def manifest(self, after: int, wait_seconds: float) -> dict[str, Any] | None:
        self._gate()
        self.polls.append((after, wait_seconds))
        gen = int(self.current["metadata"]["generation"]) if self.current else 0
        if gen > after:
            return self.current
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout=min(wait_seconds, 0.2))
        except TimeoutError:
            return None
        self._gate()
        return self.current

    async def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
        self._gate()
        if self.refuse_unknown_status_fields and "manifest" in status:
            raise ApiError(422, "Invalid", "status.manifest: Extra inputs are not permitted")
        self.statuses.append(status)
        return {"status": status}

    async def renew(self, csr_pem: bytes) -> bytes:
        raise AssertionError("no renewal expected")

    async def aclose(self) -> None:
        return None

    def publish(self, m: dict[str, Any]) -> None:
        self.current = m
        self.changed.set()


def ident(tmp_path: Path) -> SavedIdentity:
    data = tmp_path / "site"
    data.mkdir(mode=0o700, exist_ok=True)
    return SavedIdentity(data, "default", "s1", "https://127.0.0.1:1")


def core_for(tmp_path: Path, api: ScriptedApi, driver: FakeDriverForCoreTests, **kw: Any) -> AgentCore:
    def factory(_: SavedIdentity) -> SiteApi:
        return api

    kw.setdefault("heartbeat", 0.3)
    return AgentCore(
        ident(tmp_path),
        driver,
        client_factory=factory,
        rng=random.Random(7),
        backoff_base=0.05,
        backoff_cap=0.2,
        durable=False,
        facts={"hostname": "s1"},
        **kw,
    )


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def running(core: AgentCore, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(core.run())
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def last_manifest_status(api: ScriptedApi) -> dict[str, Any]:
    return dict(next(s["manifest"] for s in reversed(api.statuses) if "manifest" in s))


async def test_persists_before_apply_and_reports_applied(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(3)
    core = core_for(tmp_path, api, driver)

    async def body() -> None:
        await until(lambda: any(s.get("manifest", {}).get("state") == "Applied" for s in api.statuses))
        api.publish(manifest(4, cpu=900))
        await until(lambda: last_manifest_status(api)["generation"] == 4)

    await running(core, body)
    assert driver.applied[:2] == [3, 4]
    # Each apply saw its own manifest already on disk: persisted first, applied second.
    assert driver.on_disk_at_apply[:2] == [3, 4]
    saved = json.loads((tmp_path / "site" / MANIFEST_FILE).read_text())
    assert saved == manifest(4, cpu=900)
    assert not list((tmp_path / "site").glob(".*.tmp"))
    reported = last_manifest_status(api)
    assert reported == {
        "generation": 4,
        "hash": manifest(4)["spec"]["hash"],
        "state": "Applied",
        "items": [{"section": "reservations", "name": "reservations", "state": "Applied"}],
    }
    # Long-polls always ask for what is newer than the applied generation.
    assert api.polls[0][0] == 0 and {after for after, _ in api.polls} <= {0, 3, 4}
    assert api.polls[-1][0] == 4


async def test_restart_applies_the_persisted_manifest_before_any_call(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    site_dir.mkdir(mode=0o700)
    (site_dir / MANIFEST_FILE).write_text(json.dumps(manifest(5, cpu=700)))
    api = ScriptedApi()
    api.down = True  # the server is unreachable: the site must still enforce generation 5
    driver = FakeDriverForCoreTests(site_dir)
    core = core_for(tmp_path, api, driver)
    await core.start_from_disk()
    assert driver.applied == [5] and api.calls == 0
    assert driver.reserved == 700 and core.state == "Applied" and core.generation == 5

    # The same in a running core: the first server call is made after the apply, and when
    # the server answers, the site reports generation 5 and polls after=5.
    api2, driver2 = ScriptedApi(), FakeDriverForCoreTests(site_dir)
    api2.current = manifest(5, cpu=700)
    core2 = core_for(tmp_path, api2, driver2)

    async def body() -> None:
        await until(lambda: bool(api2.polls))

    await running(core2, body)
    assert driver2.applied[0] == 5
    assert api2.statuses[0]["manifest"]["generation"] == 5
    assert api2.polls[0][0] == 5


async def test_restart_mid_apply_converges(tmp_path: Path) -> None:
    """The previous process persisted generation 6 and died before the driver finished
    (InProgress): the new one re-applies until Applied and reports it."""
    site_dir = tmp_path / "site"
    site_dir.mkdir(mode=0o700)
    (site_dir / MANIFEST_FILE).write_text(json.dumps(manifest(6)))
    api, driver = ScriptedApi(), FakeDriverForCoreTests(site_dir, in_progress=2)
    api.current = manifest(6)
    core = core_for(tmp_path, api, driver)

    async def body() -> None:
        await until(lambda: bool(api.statuses) and last_manifest_status(api)["state"] == "Applied")

    await running(core, body)
    states = [s["manifest"]["state"] for s in api.statuses if "manifest" in s]
    assert states[0] == "Applying" and states[-1] == "Applied"
    assert len(driver.applied) >= 3 and set(driver.applied) == {6}


async def test_connection_loss_keeps_last_manifest_and_backs_off(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(2, cpu=300)
    core = core_for(tmp_path, api, driver)
    delays: list[float] = []
    next_delay = core.backoff.next_delay

    def recording() -> float:
        delay = next_delay()
        delays.append(delay)
        return delay

    core.backoff.next_delay = recording  # type: ignore[method-assign]

    async def body() -> None:
        await until(lambda: core.state == "Applied" and bool(api.statuses))
        api.down = True
        api.changed.set()  # break the long-poll in flight
        await until(lambda: len(delays) >= 5)
        # Disconnected: the manifest stays enforced, nothing is removed.
        assert core.generation == 2 and driver.reserved == 300 and not core.connected
        reports_before = len(api.statuses)
        api.down = False
        api.publish(manifest(3, cpu=400))
        await until(
            lambda: len(api.statuses) > reports_before and last_manifest_status(api)["generation"] == 3
        )

    await running(core, body)
    # Jittered (not all equal), growing, never above the cap.
    assert all(0 < d <= 0.2 for d in delays)
    assert len(set(delays)) > 1
    assert delays[1] >= delays[0] / 2
    assert driver.applied.count(2) == 1  # applied once; the disconnect did not re-apply an Applied manifest
    assert driver.reserved == 400
    assert core.connected


async def test_heartbeat_content(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(1)
    core = core_for(tmp_path, api, driver, heartbeat=0.2)

    async def body() -> None:
        await until(lambda: len(api.statuses) >= 4, timeout=5)

    await running(core, body)
    status = api.statuses[-1]
    assert status["phase"] == "Online"
    assert status["lastSeen"] == "2023-11-14T22:13:20Z"  # the driver's clock (1_700_000_000)
    assert status["softwareVersion"]
    assert status["facts"] == {"hostname": "s1"}
    assert status["osVersion"] == "simos 2.1.0"
    assert status["nodeCount"] == 2
    assert status["nodes"][1] == {
        "name": "node-1",
        "role": "worker",
        "cpuMillis": 16000,
        "memoryBytes": 64 * GiB,
        "diskBytes": 1000 * GiB,
        "ready": False,
    }
    assert status["usage"] == {
        "cpuMillis": 1200,
        "memoryBytes": 8 * GiB,
        "diskBytes": 100 * GiB,
        "cpuPercent": 5.0,
        "memoryPercent": 8.3,
    }
    assert status["allocatable"] == {"cpuMillis": 23500, "memoryBytes": 96 * GiB}
    assert status["policyHits"] == {"shop/allow-pay/0": 7}
    assert status["manifest"]["state"] == "Applied"
    assert "Offline" not in json.dumps(status)
    # Heartbeats keep coming while nothing changes (about every 0.2 s, not once per poll).
    assert 4 <= len(api.statuses) <= 12
    assert all(wait >= 1 for _, wait in api.polls)


async def test_no_manifest_yet_reports_without_manifest(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    core = core_for(tmp_path, api, driver, once=True)
    await core.run()
    assert len(api.statuses) == 1 and "manifest" not in api.statuses[0]
    assert api.polls == [(0, 0)]
    assert driver.applied == []


async def test_refused_identity_stops_the_site(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.refuse_with = 401
    core = core_for(tmp_path, api, driver)
    with pytest.raises(SiteRefused) as err:
        await asyncio.wait_for(core.run(), 5)
    assert "revoked or decommissioned" in err.value.message


async def test_server_without_new_status_fields_still_sees_the_site(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(1)
    api.refuse_unknown_status_fields = True
    core = core_for(tmp_path, api, driver, once=True)
    await core.run()
    assert api.statuses
    assert set(api.statuses[-1]) <= {
        "phase",
        "lastSeen",
        "nodeCount",
        "facts",
        "softwareVersion",
        "osVersion",
    }
    assert api.statuses[-1]["phase"] == "Online"
