"""The settle window: a change the driver finishes within ``SETTLE_SECONDS`` of taking the
manifest is reported once, finished; longer work is reported in progress first, and the agent
looks again when the driver says its state changes, not on a fixed one-second beat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.core import SETTLE_SECONDS
from fleetplane.agent.drivers.base import ItemState, ItemStatus
from tests.agent.test_core import (
    FakeDriverForCoreTests,
    ScriptedApi,
    core_for,
    manifest,
    running,
    until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TimedDriverForSettleTests(FakeDriverForCoreTests):
    """Each new generation takes ``work_s`` of wall-clock time (``InProgress`` until then),
    and tells the agent when it is done through ``next_change_in``."""

    def __init__(self, data_dir: Path, work_s: float, *, tells: bool = True) -> None:
        super().__init__(data_dir)
        self.work_s, self.tells = work_s, tells
        self.done_at: dict[int, float] = {}

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        await super().apply(manifest)
        gen = int(manifest["metadata"]["generation"])
        done = self.done_at.setdefault(gen, time.monotonic() + self.work_s)
        state: ItemState = "Applied" if time.monotonic() >= done else "InProgress"
        return [ItemStatus("reservations", "reservations", state)]

    def next_change_in(self) -> float | None:
        if not self.tells or not self.done_at:
            return None
        left = max(self.done_at.values()) - time.monotonic()
        return left if left > 0 else None


def reports_of(api: ScriptedApi, generation: int) -> list[str]:
    return [
        s["manifest"]["state"]
        for s in api.statuses
        if "manifest" in s and s["manifest"]["generation"] == generation
    ]


async def settled(tmp_path: Path, driver: TimedDriverForSettleTests) -> tuple[ScriptedApi, float]:
    """Generation 1 is applied at once (``work_s`` counts from the first apply of each
    generation, so generation 1 is made instant), then generation 2 is published; returns
    the API and how long generation 2 took to be reported Applied."""
    api = ScriptedApi()
    api.current = manifest(1)
    driver.done_at[1] = 0.0
    core = core_for(tmp_path, api, driver, heartbeat=30)
    took = 0.0

    async def body() -> None:
        nonlocal took
        await until(lambda: reports_of(api, 1)[-1:] == ["Applied"])
        t0 = time.monotonic()
        api.publish(manifest(2, cpu=900))
        await until(lambda: reports_of(api, 2)[-1:] == ["Applied"], timeout=10)
        took = time.monotonic() - t0

    await running(core, body)
    return api, took


async def test_short_work_is_reported_once_finished(tmp_path: Path) -> None:
    driver = TimedDriverForSettleTests(tmp_path / "site", work_s=0.3)
    api, took = await settled(tmp_path, driver)
    assert reports_of(api, 2) == ["Applied"]  # no "Applying" report a moment before
    # Reported when the driver finished, not on a one-second beat.
    assert 0.3 <= took < 0.9


async def test_work_longer_than_the_window_is_reported_in_progress_first(tmp_path: Path) -> None:
    work = SETTLE_SECONDS + 0.5
    driver = TimedDriverForSettleTests(tmp_path / "site", work_s=work)
    api, took = await settled(tmp_path, driver)
    assert reports_of(api, 2) == ["Applying", "Applied"]
    assert took >= work
    # While in progress the agent waited for the driver's due time, in one long-poll.
    in_progress_waits = [wait for after, wait in api.polls if after == 2 and wait < 30]
    assert in_progress_waits and max(in_progress_waits) > 1.0


async def test_a_driver_that_cannot_tell_is_reported_in_progress_at_once(tmp_path: Path) -> None:
    driver = TimedDriverForSettleTests(tmp_path / "site", work_s=0.3, tells=False)
    api, _ = await settled(tmp_path, driver)
    assert reports_of(api, 2) == ["Applying", "Applied"]


async def test_the_site_reports_itself_before_its_first_manifest_settles(tmp_path: Path) -> None:
    """The settle window holds a manifest's report, never the site's first report: the
    control plane learns at once that the site is there (``Online``), then sees the first
    manifest reported once, finished."""
    driver = TimedDriverForSettleTests(tmp_path / "site", work_s=0.5)
    api = ScriptedApi()
    api.current = manifest(1)
    core = core_for(tmp_path, api, driver, heartbeat=30)

    async def body() -> None:
        await until(lambda: reports_of(api, 1)[-1:] == ["Applied"])

    await running(core, body)
    assert api.statuses[0]["phase"] == "Online" and "manifest" not in api.statuses[0]
    assert reports_of(api, 1) == ["Applied"]
