"""Fleet policy hits: a policy's status sums its rules' hits over the sites enforcing it, with
the top sites per rule; the controller writes it from site reports, coalesced (not one write
per report), only when it changes, and again after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.policy_hits import PolicyHits, PolicyHitsController, split_hits
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import NETWORK_POLICY, SERVICE_POLICY, SITE
from tests.support.waiting import eventually


def status_of(st: PolicyHits, key: Any) -> dict[str, Any]:
    status = st.status_of(key)
    assert status is not None
    return status


NP = ("NetworkPolicy", "acme", "default", "github")
SP = ("ServicePolicy", "acme", "default", "github")


def github() -> Obj:
    return NETWORK_POLICY.normalize(
        {
            "metadata": {"name": "github", "namespace": "default", "generation": 1},
            "spec": {
                "virtualSites": ["test"],
                "egress": [{"name": "allow-github", "action": "allow", "domains": ["github.com"]}],
                "defaultAction": {"egress": "deny"},
            },
        }
    )


def counters(allow: int, deny: int, policy: str = "default/github") -> dict[str, int]:
    return {f"{policy}/allow-github": allow, f"{policy}/default-egress": deny}


def test_split_hits_ignores_what_is_not_a_policy_counter() -> None:
    got = split_hits({"a/b/c": 3, "legacy/rule": 5, "a/b/d": True, "x/y/z": -1, "a/b/e": "7"})
    assert got == {"a/b": {"c": 3}, "x/y": {"z": 0}}


def test_sums_top_sites_and_enforcing_count() -> None:
    st = PolicyHits()
    st.set_policy(NP, github())
    for i in range(7):
        st.set_site("acme", f"site-{i}", counters(allow=i, deny=10))
    st.set_site("acme", "prod-1", {"other/policy/x": 99})  # not enforcing it
    st.set_site("other-tenant", "site-0", counters(allow=100, deny=100))  # another tenant's fleet
    status = st.status_of(NP)
    assert status == {
        "observedGeneration": 1,
        "hits": {"allow-github": 21, "default-egress": 70},
        "totalHits": 91,
        "topSites": {
            "allow-github": [{"site": f"site-{i}", "hits": i} for i in (6, 5, 4, 3, 2)],
            "default-egress": [{"site": f"site-{i}", "hits": 10} for i in range(5)],  # ties by name
        },
        "sites": 7,
        "ruleCount": 1,
    }
    # A site report that moves only another policy's counters leaves this one alone.
    assert st.set_site("acme", "prod-1", {"other/policy/x": 100}) == set()
    assert st.set_site("acme", "site-0", counters(allow=1, deny=11)) == {NP}
    assert st.remove_site("acme", "site-6") == {NP}
    assert status_of(st, NP)["hits"] == {"allow-github": 16, "default-egress": 61}
    assert status_of(st, NP)["sites"] == 6


def test_network_and_service_policy_of_one_name_are_told_apart() -> None:
    st = PolicyHits()
    st.set_policy(NP, github())
    st.set_policy(
        SP,
        SERVICE_POLICY.normalize(
            {
                "metadata": {"name": "github", "namespace": "default"},
                "spec": {"virtualSites": ["test"], "rules": [{"name": "no-admin", "action": "deny"}]},
            }
        ),
    )
    st.set_site("acme", "a", counters(allow=2, deny=3))
    st.set_site("acme", "b", {"default/github/no-admin": 4, "default/github/default": 5})
    assert status_of(st, NP)["sites"] == 1 and status_of(st, NP)["totalHits"] == 5
    assert status_of(st, SP)["hits"] == {"no-admin": 4, "default": 5}
    assert status_of(st, SP)["sites"] == 1


def test_counters_of_rules_the_spec_no_longer_has_are_ignored() -> None:
    st = PolicyHits()
    st.set_policy(NP, github())
    st.set_site("acme", "a", {**counters(allow=2, deny=3), "default/github/old-rule": 50})
    assert status_of(st, NP)["hits"] == {"allow-github": 2, "default-egress": 3}


# -- the controller on a real store -----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


class CountingStore:
    """The store, counting status writes per kind (the batching is what is under test)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.status_writes: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def update(self, tenant: str, obj: Obj, *, part: Any = "all") -> Obj:
        if part == "status":
            self.status_writes[obj["kind"]] = self.status_writes.get(obj["kind"], 0) + 1
        return self._store.update(tenant, obj, part=part)


@contextlib.asynccontextmanager
async def running(store: Store, interval: float) -> AsyncIterator[tuple[PolicyHitsController, CountingStore]]:
    hub = WatchHub(store, poll_interval=0.05)
    await hub.start()
    counting = CountingStore(store)
    controller = PolicyHitsController(counting, hub, interval=interval)  # type: ignore[arg-type]
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.synced.wait(), 10)
        yield controller, counting
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hub.stop()


def report(store: Store, name: str, hits: dict[str, int]) -> None:
    site = store.get_or_none("acme", SITE.kind, "", name)
    if site is None:
        site = store.create("acme", SITE.normalize({"metadata": {"name": name}}))
    store.update("acme", {**site, "status": {**site["status"], "policyHits": hits}}, part="status")


def policy_status(store: Store) -> dict[str, Any]:
    status: dict[str, Any] = store.get("acme", NETWORK_POLICY.kind, "default", "github").get("status") or {}
    return status


def test_controller_writes_fleet_hits_coalesced(store: Store) -> None:
    async def scenario() -> None:
        store.create("acme", github())
        async with running(store, interval=0.5) as (_, counting):
            await eventually(lambda: policy_status(store).get("observedGeneration") == 1)
            assert policy_status(store)["sites"] == 0 and policy_status(store)["ruleCount"] == 1
            # 3 sites x 10 heartbeats, counters growing: far fewer status writes than reports.
            started = time.monotonic()
            for beat in range(1, 11):
                for name in ("a", "b", "c"):
                    await asyncio.to_thread(report, store, name, counters(allow=beat, deny=2 * beat))
                await asyncio.sleep(0.03)
            await eventually(
                lambda: policy_status(store)["hits"] == {"allow-github": 30, "default-egress": 60}
            )
            elapsed = time.monotonic() - started
            status = policy_status(store)
            assert status["sites"] == 3 and status["totalHits"] == 90
            assert status["topSites"]["allow-github"] == [{"site": s, "hits": 10} for s in "abc"]
            assert status["observedAt"].endswith("Z")
            writes = counting.status_writes["NetworkPolicy"]
            assert writes <= 2 + elapsed / 0.5, (writes, elapsed)  # at most one per interval
            # Heartbeats that move nothing write nothing.
            for _ in range(5):
                await asyncio.to_thread(report, store, "a", counters(allow=10, deny=20))
            await asyncio.sleep(1.2)
            assert counting.status_writes["NetworkPolicy"] == writes
        # A restart with a site changed meanwhile converges; the unchanged status is not rewritten.
        report(store, "c", {})  # c stopped enforcing it
        async with running(store, interval=0.5) as (_, counting):
            await eventually(lambda: policy_status(store)["sites"] == 2)
            assert policy_status(store)["hits"] == {"allow-github": 20, "default-egress": 40}

    asyncio.run(scenario())
