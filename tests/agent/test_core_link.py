"""A driver that models a lost link (the sim's ``connectivity_loss``): the agent core makes
no call to the server while it lasts, keeps its manifest, and reports as soon as it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.agent.test_core import FakeDriverForCoreTests, ScriptedApi, core_for, manifest, running, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LinkDriver(FakeDriverForCoreTests):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.link = True

    def connected(self) -> bool:
        return self.link


async def test_no_calls_while_the_driver_has_no_link(tmp_path: Path) -> None:
    api, driver = ScriptedApi(), LinkDriver(tmp_path / "site")
    api.current = manifest(1)
    core = core_for(tmp_path, api, driver, heartbeat=0.2)

    async def body() -> None:
        await until(lambda: core.state == "Applied" and bool(api.statuses))
        driver.link = False
        api.changed.set()  # end the long-poll in flight
        await asyncio.sleep(0.3)
        calls, reports = api.calls, len(api.statuses)
        await asyncio.sleep(1.0)  # five heartbeats' worth
        assert api.calls == calls and len(api.statuses) == reports
        assert not core.connected and core.generation == 1 and driver.reserved == 500
        driver.link = True
        await until(lambda: len(api.statuses) > reports and core.connected)

    await running(core, body)
