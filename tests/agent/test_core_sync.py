"""The combined call (``PUT /site-api/v1/sync``): a report and the long-poll after it as one
call, and the fall-back to two calls for a server without it (404) or one that refuses the
status it carries (422, version skew)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetplane.client.site import Synced
from fleetplane.core.errors import ApiError
from tests.agent.test_core import FakeDriverForCoreTests, ScriptedApi, core_for, manifest, running, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SyncingApi(ScriptedApi):
    """``ScriptedApi`` plus the combined call, with the server's delta reports: each report
    moves ``version``; a delta keeps fields of the stored status if its ``base`` is the current
    version (else 409). ``statuses`` holds the status as stored after each report.
    ``answer_sync_with`` makes it refuse the call; ``versions=False`` is a server that takes
    no deltas (it sends no version)."""

    def __init__(self, versions: bool = True) -> None:
        super().__init__()
        self.syncs: list[tuple[int, float]] = []
        self.answer_sync_with: int | None = None
        self.separate_reports = 0
        self.refused_syncs = 0
        self.versions = versions
        self.version = 1
        self.stored: dict[str, Any] = {}
        self.sent: list[dict[str, Any]] = []  # the status fields each sync carried
        self.kept: list[tuple[str, ...]] = []  # and what each kept
        self.conflicts = 0

    def written_by_someone_else(self) -> None:
        self.version += 1

    async def report_and_poll(
        self,
        status: dict[str, Any],
        after: int,
        wait_seconds: float,
        *,
        keep: Sequence[str] = (),
        base: str | None = None,
    ) -> Synced:
        self._gate()
        if self.answer_sync_with is not None:
            self.refused_syncs += 1
            raise ApiError(
                self.answer_sync_with, "NotFound", "the server could not find the requested resource"
            )
        if self.refuse_unknown_status_fields and "manifest" in status:
            self.refused_syncs += 1
            raise ApiError(422, "Invalid", "status.manifest: Extra inputs are not permitted")
        if keep:
            assert self.versions, "a delta to a server that never sent a version"
            assert not set(keep) & set(status), (keep, status)
            if base != str(self.version):
                self.conflicts += 1
                raise ApiError(409, "Conflict", "its status was written since: report them in full")
        self.stored = {**status, **{k: self.stored[k] for k in keep if k in self.stored}}
        self.version += 1
        version = str(self.version)  # as written: a write during the wait comes after it
        self.sent.append(status)
        self.kept.append(tuple(keep))
        self.statuses.append(self.stored)
        self.syncs.append((after, wait_seconds))
        polls = len(self.polls)
        found = await self.manifest(after, wait_seconds)
        del self.polls[polls:]  # the poll was part of this call, not a call of its own
        return Synced(found, version if self.versions else None)

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


async def test_a_report_leaves_out_what_the_server_already_holds(tmp_path: Path) -> None:
    """Delta reports: after a confirmed report, the next carries only what changed and keeps
    the rest; a Site written by someone else since (409) gets the report in full at once."""
    api, driver = SyncingApi(), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(3)
    core = core_for(tmp_path, api, driver, heartbeat=0.2)

    async def body() -> None:
        await until(lambda: any(api.kept))
        api.written_by_someone_else()
        conflicts = api.conflicts
        await until(lambda: api.conflicts > conflicts and len(api.kept) >= 4 and any(api.kept[-2:]))

    await running(core, body)
    first_delta = next(i for i, kept in enumerate(api.kept) if kept)
    assert first_delta >= 1 and api.kept[0] == ()  # the first report goes in full
    # What a delta keeps, it does not send; what the fake site never changes is kept.
    kept, sent = api.kept[first_delta], api.sent[first_delta]
    assert "nodes" in kept and "nodes" not in sent and {"phase", "lastSeen"} <= set(sent)
    # The server's view after each report is the whole status, as a full report leaves it.
    assert all("nodes" in stored and "manifest" in stored for stored in api.statuses[1:])
    # The conflict was answered with a full report in the same round, then deltas again.
    after = api.kept.index((), first_delta + 1)
    assert "nodes" in api.sent[after] and any(api.kept[after + 1 :])


async def test_no_delta_to_a_server_that_sends_no_version(tmp_path: Path) -> None:
    api, driver = SyncingApi(versions=False), FakeDriverForCoreTests(tmp_path / "site")
    api.current = manifest(3)
    core = core_for(tmp_path, api, driver, heartbeat=0.2)

    async def body() -> None:
        await until(lambda: len(api.kept) >= 3)

    await running(core, body)
    assert not any(api.kept) and all("nodes" in sent for sent in api.sent)
