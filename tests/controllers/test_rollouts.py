"""The rollout and history controllers with the compile controller, on a real store and hub,
with an in-process stand-in for the agents (``tests/support/rollout_fleet.py``): a Rollout per
intent revision with a strategy, stepped from what the sites report; older running ones
superseded; nothing planned before anything is targeted; the history bounded and collected
with its intent; a restart resumes. Plus the derived health."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleetplane.controllers.history import HistoryController
from fleetplane.controllers.rollout_view import site_health
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import RESOURCE_RESERVATION, SITE, VIRTUAL_SITE
from fleetplane.kinds.history import MAX_REVISIONS
from tests.support.rollout_fleet import TENANT, Controllers, FakeFleet, revision_of, rollout_status
from tests.support.waiting import eventually

SITES = [f"s{i}" for i in range(6)]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    for name in SITES:
        s.create(TENANT, SITE.normalize({"metadata": {"name": name, "labels": {"env": "prod"}}}))
    yield s
    s.close()


def vs(name: str, selector: str) -> Obj:
    return VIRTUAL_SITE.normalize(
        {"metadata": {"name": name, "namespace": "shop"}, "spec": {"selector": selector}}
    )


def reservation(cpu: str, strategy: dict[str, Any] | None = None, target: str = "prod") -> Obj:
    spec: dict[str, Any] = {"virtualSites": [target], "cpu": cpu}
    if strategy is not None:
        spec["strategy"] = strategy
    return RESOURCE_RESERVATION.normalize({"metadata": {"name": "r", "namespace": "shop"}, "spec": spec})


def update(store: Store, obj: Obj) -> None:
    current = store.get(TENANT, obj["kind"], "shop", obj["metadata"]["name"])
    store.update(TENANT, {**obj, "metadata": current["metadata"]})


def patch_spec(store: Store, name: str, **fields: Any) -> None:
    ro = store.get(TENANT, "Rollout", "shop", name)
    store.update(TENANT, {**ro, "spec": {**ro["spec"], **fields}}, part="main")


until = functools.partial(eventually, timeout=15.0)  # a rollout takes a few steps


def phase(store: Store, name: str, *phases: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        st = rollout_status(store, name)
        return st if st.get("phase") in phases else None

    return check


def revisions(store: Store) -> list[int | None]:
    return [revision_of(store, n) for n in SITES]


def test_a_rolling_rollout_stops_at_its_budget_and_undo_sends_the_previous_revision_back(
    store: Store,
) -> None:
    store.create(TENANT, vs("prod", "env=prod"))
    store.create(TENANT, reservation("1"))
    fleet = FakeFleet(store, SITES, bad={"s3"})

    async def scenario() -> None:
        async with Controllers(store, fleet):
            # Every site applied (and reported) revision 1 before the change.
            await until(lambda: all(fleet.applied.get(n) == [1] for n in SITES))
            assert rollout_status(store, "resourcereservation-r-1") == {}  # no strategy: no Rollout
            update(store, reservation("2", {"batchSize": 2}))
            st = await until(phase(store, "resourcereservation-r-2", "Failed"))
            assert (
                st["reason"] == "FailureBudgetExceeded"
                and "s3 (failed: reservations/reservations: not enough memory)" in st["message"]
            )
            assert revisions(store) == [2, 2, 2, 2, 1, 1]  # waves 0 and 1 got it; wave 2 never did
            patch_spec(store, "resourcereservation-r-2", rollback=True)
            st = await until(phase(store, "resourcereservation-r-2", "RolledBack"))
            assert st["counts"]["rolledBack"] == 4 and revisions(store) == [1] * 6
            # Each site was handed revision 2 at most once, and back once.
            assert fleet.applied["s0"] == [1, 2, 1] and fleet.applied["s5"] == [1]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_new_revision_hands_out_its_first_wave_without_waiting_for_a_pause(store: Store) -> None:
    """An operator's change waits on no coalescing: the new Rollout takes its first step as
    soon as it exists, not after the rollout controller's pause between rounds (3 s here)."""
    store.create(TENANT, vs("prod", "env=prod"))
    store.create(TENANT, reservation("1"))
    fleet = FakeFleet(store, SITES)

    async def scenario() -> None:
        async with Controllers(store, fleet, pause=3.0):
            await until(lambda: revisions(store) == [1] * 6)
            started = time.monotonic()
            await asyncio.to_thread(update, store, reservation("2", {"batchSize": 2}))
            await until(lambda: revisions(store)[:2] == [2, 2], timeout=10)
            took = time.monotonic() - started
            assert took < 1.5, f"the first wave went out after {took:.2f} s"

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_first_change_after_a_quiet_spell_gets_its_revision_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history controller coalesces changes to an intent (3 s here), but does not hold
    the first one after a quiet spell: a rollout's first wave waits on that revision."""
    monkeypatch.setattr("fleetplane.controllers.history.COALESCE_S", 3.0)
    store.create(TENANT, reservation("1"))
    revision_1 = "resourcereservation-r-1"

    def revision_2() -> bool:
        return store.get_or_none(TENANT, "IntentRevision", "shop", "resourcereservation-r-2") is not None

    async def scenario() -> None:
        hub = WatchHub(store, poll_interval=0.2)
        await hub.start()
        task = asyncio.create_task(HistoryController(store, hub).run())
        try:
            await until(lambda: store.get_or_none(TENANT, "IntentRevision", "shop", revision_1))
            await asyncio.sleep(3.0)  # quiet
            started = time.monotonic()
            await asyncio.to_thread(update, store, reservation("2"))
            await until(revision_2, timeout=10)
            took = time.monotonic() - started
            assert took < 1.5, f"revision 2 was written after {took:.2f} s"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_newer_revision_supersedes_a_running_rollout(store: Store) -> None:
    store.create(TENANT, vs("prod", "env=prod"))
    canary = {"type": "canary", "canary": {"sites": ["s0"], "promotion": "manual"}}
    store.create(TENANT, reservation("1", canary))
    fleet = FakeFleet(store, SITES)

    async def scenario() -> None:
        async with Controllers(store, fleet):
            await until(phase(store, "resourcereservation-r-1", "Soaking"))  # waits for a promotion
            assert revisions(store) == [1, None, None, None, None, None]
            update(store, reservation("2", canary))  # a new revision with a strategy
            old = await until(phase(store, "resourcereservation-r-1", "Aborted"))
            assert old["reason"] == "Aborted"
            ro = store.get(TENANT, "Rollout", "shop", "resourcereservation-r-1")
            assert ro["spec"]["abort"] is True  # superseded: the controller asked it to abort
            await until(phase(store, "resourcereservation-r-2", "Soaking"))
            assert revisions(store) == [2, None, None, None, None, None]
            update(store, reservation("3"))  # no strategy: at once, everywhere
            await until(phase(store, "resourcereservation-r-2", "Aborted"))
            await until(lambda: revisions(store) == [3] * 6)
            assert rollout_status(store, "resourcereservation-r-3") == {}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_nothing_is_planned_while_nothing_is_targeted(store: Store) -> None:
    store.create(TENANT, reservation("1", {"batchSize": 3}, target="later"))
    fleet = FakeFleet(store, SITES)

    async def scenario() -> None:
        async with Controllers(store, fleet):
            await until(lambda: store.get_or_none(TENANT, "Rollout", "shop", "resourcereservation-r-1"))
            await asyncio.sleep(0.5)
            assert rollout_status(store, "resourcereservation-r-1")["phase"] == "Pending"  # not Completed
            store.create(TENANT, vs("later", "env=prod"))  # the virtual site appears: now it plans
            st = await until(phase(store, "resourcereservation-r-1", "Completed"))
            assert [len(w["sites"]) for w in st["waves"]] == [3, 3]
            assert revisions(store) == [1] * 6

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_history_is_bounded_and_goes_with_its_intent(store: Store) -> None:
    store.create(TENANT, vs("prod", "env=prod"))
    store.create(TENANT, reservation("1", {"batchSize": 6}))

    def stored(kind: str) -> list[str]:
        return sorted(o["metadata"]["name"] for _, o in store.scan((kind,))[1])

    async def scenario() -> None:
        async with Controllers(store, FakeFleet(store, SITES)):
            await until(phase(store, "resourcereservation-r-1", "Completed"))
            for cpu in range(2, 14):  # 12 more revisions, without a strategy
                update(store, reservation(str(cpu)))
            await until(lambda: revisions(store) == [13] * 6)
            want = {f"resourcereservation-r-{g}" for g in range(13 - MAX_REVISIONS + 1, 14)}
            want.add("resourcereservation-r-1")  # a Rollout still names it
            await until(lambda: set(stored("IntentRevision")) == want)
            old = store.get(TENANT, "IntentRevision", "shop", "resourcereservation-r-1")
            assert old["spec"]["spec"]["cpu"] == "1" and old["spec"]["intent"]["generation"] == 1
            store.delete(TENANT, RESOURCE_RESERVATION.kind, "shop", "r")
            await until(lambda: stored("IntentRevision") == [] and stored("Rollout") == [])
            await until(lambda: revisions(store) == [None] * 6)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_restart_resumes_from_the_stored_rollout(store: Store) -> None:
    store.create(TENANT, vs("prod", "env=prod"))
    store.create(TENANT, reservation("1"))
    fleet = FakeFleet(store, SITES)

    async def scenario() -> None:
        async with Controllers(store, fleet):
            await until(lambda: all(fleet.applied.get(n) == [1] for n in SITES))
            update(store, reservation("2", {"batchSize": 1}))
            await until(
                lambda: (
                    (rollout_status(store, "resourcereservation-r-2").get("counts") or {}).get("succeeded", 0)
                    >= 2
                )
            )
        before = rollout_status(store, "resourcereservation-r-2")
        async with Controllers(store, fleet):
            st = await until(phase(store, "resourcereservation-r-2", "Completed"))
        done = [n for n, r in before["sites"].items() if r["state"] == "Succeeded"]
        assert all(st["sites"][n] == before["sites"][n] for n in done)
        assert all(fleet.applied[n] == [1, 2] for n in SITES)  # each got revision 2 exactly once

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_health_is_derived_until_sites_report_a_score() -> None:
    report = {
        "generation": 3,
        "state": "Failed",
        "items": [
            {"section": "os", "name": "v", "state": "Failed"},
            {"section": "reservations", "name": "reservations", "state": "Applied"},
        ],
    }
    assert site_health({"phase": "Online", "manifest": report}) == 50.0
    assert site_health({"phase": "Offline", "manifest": report}) == 0.0
    assert site_health({"phase": "Online", "manifest": {**report, "items": []}}) == 100.0
    assert site_health({"phase": "Pending"}) is None  # never reported: unknown
    assert site_health({"phase": "Online", "health": {"score": 72}, "manifest": report}) == 72.0


def test_old_rollouts_are_pruned_once_a_newer_one_completed_everywhere(store: Store) -> None:
    store.create(TENANT, vs("prod", "env=prod"))
    fleet = FakeFleet(store, SITES)
    rolling = {"type": "rolling", "batchSize": 3}

    def rollouts() -> list[str]:
        return sorted(o["metadata"]["name"] for o in store.list(TENANT, "Rollout", namespace="shop").items)

    async def scenario() -> None:
        async with Controllers(store, fleet, keep=2):
            store.create(TENANT, reservation("1", rolling))
            await until(phase(store, "resourcereservation-r-1", "Completed"))
            for generation in (2, 3, 4):
                update(store, reservation(str(generation), rolling))
                await until(phase(store, f"resourcereservation-r-{generation}", "Completed"))
            # The newest two are kept; the older ones go (their revisions stay in the history).
            await until(lambda: rollouts() == ["resourcereservation-r-3", "resourcereservation-r-4"])
            await asyncio.sleep(0.3)
            assert revisions(store) == [4] * 6  # pruning changed no site's revision
            assert store.list(TENANT, "IntentRevision", namespace="shop").items

    asyncio.run(asyncio.wait_for(scenario(), 60))
