"""Site liveness: Offline after ``offline_after`` without a report, Online on the next one;
on a real store and hub (both backends), and the deadline heap on its own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetplane.controllers.liveness import LivenessController, SiteKey, seen_at
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.kinds import SITE
from tests.support.controllers import running_controller
from tests.support.waiting import converges


def stamp(ago: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def site(name: str, **status: Any) -> Obj:
    return {"kind": SITE.kind, "metadata": {"name": name}, "spec": {}, "status": status}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def phase(store: Store, name: str) -> str | None:
    obj = store.get_or_none("acme", SITE.kind, "", name)
    return None if obj is None else (obj.get("status") or {}).get("phase")


def report(store: Store, name: str, **status: Any) -> None:
    current = store.get("acme", SITE.kind, "", name)
    store.update("acme", {**current, "status": {"lastSeen": stamp(), **status}}, part="status")


def running(store: Store, offline_after: float) -> contextlib.AbstractAsyncContextManager[LivenessController]:
    return running_controller(
        store, lambda hub: LivenessController(store, hub, offline_after=offline_after), poll_interval=0.2
    )


def test_silent_sites_go_offline_and_come_back_on_their_next_report(store: Store) -> None:
    store.create("acme", site("alive", phase="Online", lastSeen=stamp()))
    store.create("acme", site("new"))  # registered, never reported: stays Pending
    store.create("acme", site("retired", phase="Decommissioned", lastSeen=stamp(3600)))
    store.create(
        "acme", site("stale", phase="Online", lastSeen=stamp(3600))
    )  # silent while no controller ran

    async def scenario() -> None:
        async with running(store, offline_after=0.6):
            await converges(lambda: phase(store, "stale"), "Offline", timeout=3)
            took = await converges(lambda: phase(store, "alive"), "Offline", timeout=3)
            assert took < 1.5
            # Heartbeats keep a site Online.
            await asyncio.to_thread(report, store, "alive", phase="Online")
            for _ in range(8):
                await asyncio.sleep(0.2)
                await asyncio.to_thread(report, store, "alive", phase="Online")
                assert phase(store, "alive") == "Online"
            # A report that leaves the phase out (or says Offline) is brought back Online.
            await converges(lambda: phase(store, "alive"), "Offline", timeout=3)
            await asyncio.to_thread(report, store, "alive")
            await converges(lambda: phase(store, "alive"), "Online", timeout=2)
            assert phase(store, "new") == "Pending" or phase(store, "new") is None
            assert phase(store, "retired") == "Decommissioned"
            # A deleted site is forgotten.
            await asyncio.to_thread(store.delete, "acme", SITE.kind, "", "alive")
            await asyncio.sleep(1.0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_sites_get_a_grace_period_after_the_control_plane_was_down(store: Store) -> None:
    # The site last reported an hour ago because the *server* was down, not the site.
    store.create("acme", site("patient", phase="Online", lastSeen=stamp(3600)))

    async def scenario() -> None:
        async with running(store, offline_after=3.0):
            await asyncio.sleep(1.5)
            assert phase(store, "patient") == "Online"  # not blamed for the outage
            await converges(lambda: phase(store, "patient"), "Offline", timeout=6)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_stalled_control_plane_marks_no_site_offline_for_the_stall(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's loop blocked for twice the offline window (a stopped process, a paused
    VM): the reports that could not be taken are no site's fault. The site is Offline only
    after a whole window of silence after the stall, as after a restart."""
    store.create("acme", site("steady", phase="Online", lastSeen=stamp()))

    async def scenario() -> None:
        async with running(store, offline_after=1.2):
            await asyncio.to_thread(report, store, "steady", phase="Online")
            await asyncio.sleep(0.2)
            time.sleep(2.5)  # the whole event loop stops: nothing is watched
            resumed = time.monotonic()
            while time.monotonic() - resumed < 0.7:
                assert phase(store, "steady") == "Online"
                await asyncio.sleep(0.05)
            took = await converges(lambda: phase(store, "steady"), "Offline", timeout=5)
            assert took + 0.7 >= 1.0  # a window after the stall, not at its end

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert "did not watch sites for" in caplog.text


def record_phases(controller: LivenessController) -> list[SiteKey]:
    """A controller with no store: the sites it marks, in order (and it remembers the phase)."""
    marked: list[SiteKey] = []

    async def set_phase(key: SiteKey, phase: str) -> bool:
        marked.append(key)
        controller.phase[key] = phase
        return True

    controller._set_phase = set_phase  # type: ignore[method-assign]
    return marked


def test_the_deadline_heap_touches_only_what_is_due() -> None:
    now = [1_000_000.5]  # not a whole second: whole-second stamps are credited to the end of it
    controller = LivenessController(None, None, offline_after=30, clock=lambda: now[0])  # type: ignore[arg-type]
    marked = record_phases(controller)
    iso = dt.datetime.fromtimestamp(now[0], dt.UTC)
    for i in range(10_000):
        when = (iso - dt.timedelta(seconds=i % 60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        controller._observe("t", site(f"s{i}", phase="Online", lastSeen=when))

    async def scenario() -> None:
        # Sites last seen 30..59 s ago are due now; the rest are not touched.
        now[0] += 0.01  # past float rounding of the parsed stamps
        due = await controller.expire()
        expected = sum(1 for i in range(10_000) if i % 60 >= 30)
        assert len(due) == expected and len(marked) == expected
        assert {int(name[1:]) % 60 for _, name in due} == set(range(30, 60))
        assert await controller.expire() == []
        now[0] += 1.0  # one more second: exactly those seen 29 s ago
        assert {int(name[1:]) % 60 for _, name in await controller.expire()} == {29}
        # A later report supersedes the old deadline.
        fresh = dt.datetime.fromtimestamp(now[0], dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        controller._observe("t", site("s28", phase="Online", lastSeen=fresh))
        now[0] += 2
        assert ("t", "s28") not in await controller.expire()
        assert len(controller._heap) < 10_000

    asyncio.run(scenario())


def test_a_site_that_reports_often_leaves_no_trail_of_deadlines() -> None:
    # A long offline window and frequent reports: every report supersedes the last deadline.
    now = [2_000_000.5]
    controller = LivenessController(None, None, offline_after=600, clock=lambda: now[0])  # type: ignore[arg-type]
    marked = record_phases(controller)
    for _ in range(120):  # ten minutes of reports every 5 s from 100 sites
        when = dt.datetime.fromtimestamp(now[0], dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for i in range(100):
            controller._observe("t", site(f"s{i}", phase="Online", lastSeen=when))
        now[0] += 5
    assert len(controller._heap) <= 2 * 100 + 64  # was 12,000: one per report

    async def scenario() -> None:
        assert await controller.expire() == []  # the last reports are 5 s old
        now[0] += 600
        assert len(await controller.expire()) == 100 and len(marked) == 100  # then all are silent

    asyncio.run(scenario())


def test_seen_at() -> None:
    assert seen_at(None, 10.0) is None
    assert seen_at("2030-01-01T00:00:00Z", 10.0) == 10.0  # never in the future
    assert seen_at("1970-01-01T00:00:05Z", 100.0) == pytest.approx(5.999)  # whole seconds: end of it
    assert seen_at("1970-01-01T00:00:05.25Z", 100.0) == pytest.approx(5.25)
    assert seen_at("yesterday", 100.0) == 100.0
