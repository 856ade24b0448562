"""The agent core with the sim driver through an OS upgrade: a long install is reported when it
completes without waiting for the heartbeat, also while another item of the manifest failed."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.core import AgentCore, SiteApi
from fleetplane.agent.drivers.sim import SimDriver
from fleetplane.agent.drivers.simmodel.profile import SiteProfile
from fleetplane.agent.onboard import SavedIdentity
from tests.agent.test_core import ScriptedApi, ident, running, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def manifest(sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "s1", "generation": 1},
        "spec": {"site": "s1", "hash": "sha256:" + "1" * 64, "sections": sections},
    }


def os_items(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in (status.get("manifest") or {}).get("items", []) if i["section"] == "os"]


async def test_install_completion_is_reported_at_once_beside_a_failed_item(tmp_path: Path) -> None:
    profile = SiteProfile(
        nodes=1, os_version="fleetos-1.4.2", install_s=0.4, reboot_s=0.2, health_check_s=0.2
    )
    driver = SimDriver.for_site("s1", profile=profile)
    api = ScriptedApi()

    def factory(_: SavedIdentity) -> SiteApi:
        return api

    # A heartbeat far longer than the test: only the in-progress re-check can report the commit.
    core = AgentCore(
        ident(tmp_path), driver, client_factory=factory, rng=random.Random(7), durable=False, heartbeat=60
    )
    api.publish(manifest({"os": {"version": "fleetos-1.5.0"}, "unknown-section": {}}))

    async def body() -> None:
        await until(lambda: any(os_items(s) for s in api.statuses))
        first = os_items(api.statuses[-1])[0]
        assert first["state"] == "InProgress"
        assert api.statuses[-1]["manifest"]["state"] == "Failed"  # the unknown section failed
        await until(
            lambda: any(i["state"] == "Applied" for s in api.statuses for i in os_items(s)), timeout=5
        )
        done = next(s for s in api.statuses if any(i["state"] == "Applied" for i in os_items(s)))
        assert done["os"]["current"] == done["os"]["target"] == "fleetos-1.5.0"
        assert done["osVersion"] == "fleetos-1.5.0"
        # While the OS item was in progress the site re-checked every second (the poll's
        # wait), and went back to the heartbeat's pace once it was done.
        assert api.polls[1] == (1, 1)
        await until(lambda: api.polls[-1][1] > 1)

    await running(core, body)


async def test_a_restarted_agent_keeps_the_committed_os_and_does_not_reinstall(tmp_path: Path) -> None:
    """The OS is on the box's disk, the agent is a process: a new agent (and sim driver) over the
    same data dir reports the version committed before, and its manifest is Applied at once."""
    profile = SiteProfile(
        nodes=1, os_version="fleetos-1.4.2", install_s=0.2, reboot_s=0.1, health_check_s=0.1
    )
    wanted = manifest({"os": {"version": "fleetos-2.0.0"}})

    def core_over(api: ScriptedApi, driver: SimDriver) -> AgentCore:
        def factory(_: SavedIdentity) -> SiteApi:
            return api

        return AgentCore(
            ident(tmp_path), driver, client_factory=factory, rng=random.Random(7), durable=False, heartbeat=60
        )

    api, driver = ScriptedApi(), SimDriver.for_site("s1", profile=profile)
    api.publish(wanted)

    async def upgrade() -> None:
        await until(
            lambda: any(i["state"] == "Applied" for s in api.statuses for i in os_items(s)), timeout=5
        )

    await running(core_over(api, driver), upgrade)
    assert driver.site.os.version == "fleetos-2.0.0"

    api2, driver2 = ScriptedApi(), SimDriver.for_site("s1", profile=profile)
    api2.publish(wanted)

    async def restarted() -> None:
        await until(lambda: bool(api2.statuses))
        first = api2.statuses[0]
        assert first["os"]["current"] == first["osVersion"] == "fleetos-2.0.0"
        assert [(i["name"], i["state"]) for i in os_items(first)] == [("fleetos-2.0.0", "Applied")]
        assert driver2.site.os.state == "Idle"

    await running(core_over(api2, driver2), restarted)
