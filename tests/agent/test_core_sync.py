"""The combined call (``PUT /site-api/v1/sync``): a report and the long-poll after it as one
call, and the fall-back to two calls for a server without it (404) or one that refuses the
status it carries (422, version skew)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from tests.agent.test_core import FakeDriverForCoreTests, ScriptedApi, core_for, manifest, running, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SyncingApi(ScriptedApi):
    """``ScriptedApi`` plus the combined call; ``answer_sync_with`` makes it refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[tuple[int, float]] = []
        self.answer_sync_with: int | None = None
        self.separate_reports = 0
        self.refused_syncs = 0

    async def report_and_poll(
        self, status: dict[str, Any], after: int, wait_seconds: float
    ) -> dict[str, Any] | None:
        self._gate()
        if self.answer_sync_with is not None:
            self.refused_syncs += 1
            raise ApiError(
                self.answer_sync_with, "NotFound", "the server could not find the requested resource"
            )
        if self.refuse_unknown_status_fields and "manifest" in status:
            self.refused_syncs += 1
            raise ApiError(422, "Invalid", "status.manifest: Extra inputs are not permitted")
        self.statuses.append(status)
        self.syncs.append((after, wait_seconds))
        polls = len(self.polls)
        found = await self.manifest(after, wait_seconds)
        del self.polls[polls:]  # the poll was part of this call, not a call of its own
        return found

    async def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
        self.separate_reports += 1
        return await super().put_status(status)


async def test_each_report_goes_out_with_the_next_long_poll(tmp_path: Path) -> None:
    api, driver = SyncingApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(3)
    core = core_for(tmp_path, api, driver, heartbeat=30)

    async def body() -> None:
        await until(lambda: any(s.get("manifest", {}).get("state") == "Applied" for s in api.statuses))
        api.publish(manifest(4, cpu=900))
        await until(lambda: any(s.get("manifest", {}).get("generation") == 4 for s in api.statuses))

    await running(core, body)
    assert driver.applied[:2] == [3, 4]
    # Every report rode on a combined call; no report and no long-poll went out on its own
    # except the long-polls between reports (nothing to report: a plain wait).
    assert api.separate_reports == 0
    assert len(api.syncs) == len(api.statuses) >= 3
    # The report of generation 3 asked for what is newer than 3, and waited (heartbeat 30 s:
    # up to the next heartbeat, capped at the server's 60 s).
    reported = [s["manifest"]["generation"] for s in api.statuses if "manifest" in s]
    assert 3 in reported and 4 in reported
    after_three = [wait for after, wait in api.syncs if after == 3]
    assert after_three and all(25 <= wait <= 30 for wait in after_three), api.syncs


async def test_a_server_without_the_combined_call_gets_two(tmp_path: Path) -> None:
    api, driver = SyncingApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.answer_sync_with = 404
    api.current = manifest(5)
    core = core_for(tmp_path, api, driver)

    async def body() -> None:
        await until(lambda: any(s.get("manifest", {}).get("state") == "Applied" for s in api.statuses))
        calls = api.calls
        api.publish(manifest(6))
        await until(lambda: any(s.get("manifest", {}).get("generation") == 6 for s in api.statuses))
        assert api.calls > calls

    await running(core, body)
    assert api.syncs == [] and api.separate_reports >= 2
    assert driver.applied[:2] == [5, 6]
    assert api.refused_syncs == 1  # asked once, then never again


async def test_a_refused_status_falls_back_to_the_basic_report(tmp_path: Path) -> None:
    """A server that predates ``status.manifest`` refuses it (422) in the combined call too:
    the core falls back to separate calls, which report the fields that server knows."""
    api, driver = SyncingApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.refuse_unknown_status_fields = True
    api.current = manifest(2)
    core = core_for(tmp_path, api, driver)

    async def body() -> None:
        await until(lambda: len(api.statuses) >= 2)

    await running(core, body)
    # The first report (no manifest yet) went through combined; the one with the manifest
    # was refused once, and from then on the reports went alone, with the basic fields.
    assert api.refused_syncs == 1 and len(api.syncs) <= 1
    assert all("manifest" not in s and s["phase"] == "Online" for s in api.statuses)
    assert api.separate_reports >= 1
    assert driver.applied[0] == 2
