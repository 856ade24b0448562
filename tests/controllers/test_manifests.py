"""The compile controller: per-site manifests from ResourceReservations over virtual sites,
recompiled only where a change lands, written only when the hash changes; on a real store and
watch hub (both backends), restarts included. Plus the pure sections and state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from fleetplane.controllers.manifests import ManifestController, ManifestState
from fleetplane.controllers.sections import SECTIONS, ReservationContributor, manifest_hash, targets_of
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import RESOURCE_RESERVATION, SITE, SITE_MANIFEST, VIRTUAL_SITE
from tests.support.waiting import converges

GI = 2**30


def site(name: str, **labels: str) -> Obj:
    return SITE.normalize({"metadata": {"name": name, "labels": labels}})


def virtual_site(name: str, selector: str, namespace: str = "shop") -> Obj:
    return VIRTUAL_SITE.normalize(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"selector": selector}}
    )


def reservation(
    name: str, targets: list[str], cpu: str = "0", memory: str = "0", namespace: str = "shop"
) -> Obj:
    return RESOURCE_RESERVATION.normalize(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"virtualSites": targets, "cpu": cpu, "memory": memory},
        }
    )


# -- the kind and the pure parts ----------------------------------------------------------------


def test_reservation_validation() -> None:
    ok = reservation("r", ["prod", "shop/eu", "shared/base"], cpu="500m", memory="1Gi")
    assert ok["spec"]["virtualSites"] == ["prod", "shop/eu", "shared/base"]
    for spec, words in (
        ({"virtualSites": ["prod"], "cpu": "1 core"}, "regular expression"),
        ({"virtualSites": ["prod"], "memory": "-1Gi"}, "must not be negative"),
        ({"virtualSites": []}, "at least 1"),
        ({"virtualSites": ["Bad_Name"]}, "virtual site"),
        ({"virtualSites": ["a/b/c"]}, "virtual site"),
        ({"virtualSites": ["finance/prod"]}, "may target only its own namespace"),
        ({"virtualSites": ["prod"], "cpus": "1"}, "unknown field"),
    ):
        with pytest.raises(ApiError) as exc:
            RESOURCE_RESERVATION.normalize({"metadata": {"name": "r", "namespace": "shop"}, "spec": spec})
        assert words in str(exc.value.to_status()), (spec, exc.value.to_status())


def test_targets_resolve_from_the_intent_namespace() -> None:
    r = reservation("r", ["prod", "shop/eu", "shared/base"])
    assert targets_of("t", r) == {("t", "shop", "prod"), ("t", "shop", "eu"), ("t", "shared", "base")}
    stored = {**r, "spec": {**r["spec"], "virtualSites": ["other/x", "y"]}}  # refused by validation
    assert targets_of("t", stored) == {("t", "shop", "y")}


def test_reservation_section_sums_and_lists_sources() -> None:
    rs = [reservation("a", ["x"], "500m", "1Gi", "base"), reservation("b", ["x"], "1", "512Mi")]
    section = ReservationContributor().contribute(rs, site("s"))
    assert section == {
        "cpuMillis": 1500,
        "memoryBytes": GI + GI // 2,
        "sources": ["base/a", "shop/b"],
        "revisions": {"base/a": 1, "shop/b": 1},  # the intent revision each one was compiled from
    }
    assert ReservationContributor().contribute([], site("s")) is None
    assert manifest_hash({"b": 1, "a": {"d": [1], "c": "x"}}) == manifest_hash(
        {"a": {"c": "x", "d": [1]}, "b": 1}
    )
    assert manifest_hash({}).startswith("sha256:") and len(manifest_hash({})) == 71


def test_state_recompiles_only_the_affected_sites() -> None:
    st = ManifestState(SECTIONS)
    for name, env in (("s1", "prod"), ("s2", "prod"), ("s3", "dev")):
        assert st.set_site("t", name, {"env": env}) == {("t", name)}
    assert st.set_site("t", "s1", {"env": "prod"}) == set()  # heartbeat: labels unchanged
    vs = ("t", "shop", "prod")
    assert st.set_virtual_site(vs, parse_selector("env=prod"), 1) == set()  # not targeted yet
    assert st.set_intent("ResourceReservation", "t", reservation("r", ["prod"], "1")) == {
        ("t", "s1"),
        ("t", "s2"),
    }
    assert st.compile("t", "s1") == {"reservations": res(1000, 0, "shop/r")}
    assert st.compile("t", "s3") == {}
    assert st.set_site("t", "s3", {"env": "prod"}) == {("t", "s3")}
    assert st.set_virtual_site(vs, parse_selector("env=prod,!x"), 2) == set()  # same members
    assert st.set_virtual_site(vs, parse_selector("env=dev"), 3) == {("t", "s1"), ("t", "s2"), ("t", "s3")}
    assert st.remove_intent("ResourceReservation", ("t", "shop", "r")) == set()  # no members now
    assert st.compile("t", "gone") is None
    # An intent that reaches a site through two virtual sites counts once.
    st.set_virtual_site(("t", "shop", "all"), parse_selector(""), 1)
    st.set_intent("ResourceReservation", "t", reservation("twice", ["prod", "all"], "1"))
    assert st.compile("t", "s1") == {"reservations": res(1000, 0, "shop/twice")}


# -- the controller on a real store ------------------------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def manifest(store: Store, name: str, tenant: str = "acme") -> Obj | None:
    return store.get_or_none(tenant, SITE_MANIFEST.kind, "", name)


def section(store: Store, name: str, tenant: str = "acme") -> dict[str, Any] | None:
    m = manifest(store, name, tenant)
    if m is None:
        return {"deleted": True}
    found: dict[str, Any] | None = m["spec"]["sections"].get("reservations")
    return found


def res(cpu: int, memory: int, *sources: str, revisions: dict[str, int] | None = None) -> dict[str, Any]:
    """The reservations section; each source at revision 1 unless ``revisions`` says otherwise."""
    revs = {src: (revisions or {}).get(src, 1) for src in sources}
    return {"cpuMillis": cpu, "memoryBytes": memory, "sources": list(sources), "revisions": revs}


class Running:
    """The compile controller with its own hub (it keeps its own membership: no need for the
    membership controller, whose status writes would only blur the revision checks)."""

    def __init__(self, store: Store, flush_delay: float = 0.01) -> None:
        self.store = store
        self.flush_delay = flush_delay

    async def __aenter__(self) -> ManifestController:
        self.hub = WatchHub(self.store, poll_interval=0.2)
        await self.hub.start()
        self.controller = ManifestController(self.store, self.hub, flush_delay=self.flush_delay)
        self.tasks = [asyncio.create_task(self.controller.run())]
        return self.controller

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hub.stop()


def write(store: Store, fn: str, *args: Any, **kw: Any) -> Any:
    return asyncio.to_thread(getattr(store, fn), *args, **kw)


def test_reservations_compile_into_the_member_sites(store: Store) -> None:
    store.create("acme", site("s1", env="prod", zone="eu"))
    store.create("acme", site("s2", env="prod"))
    store.create("acme", site("s3", env="dev"))
    store.create("other", site("s1", env="prod"))
    store.create("acme", virtual_site("prod", "env=prod"))
    store.create("acme", virtual_site("eu", "zone=eu", namespace="shared"))
    asyncio.run(asyncio.wait_for(_scenario_full(store), 60))


PLATFORM_2 = {"shop/platform": 2}


async def _scenario_full(store: Store) -> None:
    async with Running(store):
        await converges(lambda: manifest(store, "s3") is not None, True)
        empty = manifest(store, "s3")
        assert empty is not None
        assert empty["spec"] == {"site": "s3", "hash": manifest_hash({}), "sections": {}}
        await write(store, "create", "acme", reservation("platform", ["prod"], "500m", "1Gi"))
        await converges(lambda: section(store, "s1"), res(500, GI, "shop/platform"))
        await converges(lambda: section(store, "s2"), res(500, GI, "shop/platform"))
        assert section(store, "s3") is None and section(store, "s1", "other") is None
        # Overlapping reservations sum; sources are sorted by namespace/name.
        await write(
            store, "create", "acme", reservation("base", ["shared/eu"], "1", "512Mi", namespace="base")
        )
        await converges(lambda: section(store, "s1"), res(1500, GI + GI // 2, "base/base", "shop/platform"))
        assert section(store, "s2") == res(500, GI, "shop/platform")
        # A relabel: s3 joins prod (gains the section), s1 leaves eu (loses base).
        await write(store, "update", "acme", site("s3", env="prod"))
        await write(store, "update", "acme", site("s1", env="prod"))
        await converges(lambda: section(store, "s3"), res(500, GI, "shop/platform"))
        await converges(lambda: section(store, "s1"), res(500, GI, "shop/platform"))
        # ...and leaving prod loses it: the section is absent, the manifest stays.
        await write(store, "update", "acme", site("s2", env="dev"))
        await converges(lambda: section(store, "s2"), None)
        # The intent is retargeted: its old members lose it, its new ones gain it.
        await write(store, "create", "acme", virtual_site("dev", "env=dev"))
        await write(store, "update", "acme", reservation("platform", ["dev"], "2", "1Gi"))
        await converges(lambda: section(store, "s2"), res(2000, GI, "shop/platform", revisions=PLATFORM_2))
        await converges(lambda: section(store, "s1"), None)
        await converges(lambda: section(store, "s3"), None)
        # A selector change: the members that join gain it.
        await write(store, "update", "acme", virtual_site("dev", "env in (dev,prod)"))
        await converges(lambda: section(store, "s3"), res(2000, GI, "shop/platform", revisions=PLATFORM_2))
        # Deleting the reservation removes the section; deleting a site deletes its manifest.
        await write(store, "delete", "acme", RESOURCE_RESERVATION.kind, "shop", "platform")
        await converges(lambda: section(store, "s3"), None)
        await write(store, "delete", "acme", SITE.kind, "", "s3")
        await converges(lambda: manifest(store, "s3"), None)
        # A new site gets its manifest at once.
        await write(store, "create", "acme", site("s4", zone="eu"))
        await converges(lambda: section(store, "s4"), res(1000, GI // 2, "base/base"))


def test_unchanged_recompile_writes_nothing_and_generation_moves_only_on_change(store: Store) -> None:
    store.create("acme", site("s1", env="prod"))
    store.create("acme", virtual_site("prod", "env=prod"))
    store.create("acme", reservation("r", ["prod"], "1", "1Gi"))

    async def scenario() -> None:
        async with Running(store):
            await converges(lambda: section(store, "s1"), res(1000, GI, "shop/r"))
            before = manifest(store, "s1")
            assert before is not None and before["metadata"]["generation"] == 1
            revision = await write(store, "revision")
            # A heartbeat (status) and a label that moves nothing: no manifest write.
            await write(
                store,
                "update",
                "acme",
                {**site("s1", env="prod"), "status": {"phase": "Online"}},
                part="status",
            )
            await write(store, "update", "acme", site("s1", env="prod", extra="x"))
            await asyncio.sleep(0.5)
            after = manifest(store, "s1")
            assert after == before
            assert await write(store, "revision") == revision + 2  # only our two writes
            # A new revision of the intent (a description) moves the manifest to that revision,
            # with the same amounts: a rollout needs to see the site apply it.
            r = reservation("r", ["prod"], "1000m", "1Gi")
            await write(store, "update", "acme", {**r, "spec": {**r["spec"], "description": "same amount"}})
            await converges(lambda: section(store, "s1"), res(1000, GI, "shop/r", revisions={"shop/r": 2}))
            assert (manifest(store, "s1") or {})["metadata"]["generation"] == 2
            # A real change bumps the generation by one.
            await write(store, "update", "acme", reservation("r", ["prod"], "2", "1Gi"))
            await converges(lambda: (manifest(store, "s1") or {})["metadata"]["generation"], 3)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_change_after_a_quiet_spell_goes_out_at_once_and_a_burst_coalesces(store: Store) -> None:
    """A rollout wave waits on its manifests: the first change after a quiet spell is not
    held for the coalescing delay; changes that follow within it share one write."""
    store.create("acme", site("s1", env="prod"))
    store.create("acme", virtual_site("prod", "env=prod"))
    delay = 3.0

    async def scenario() -> None:
        async with Running(store, flush_delay=delay):
            await converges(lambda: manifest(store, "s1") is not None, True)
            await asyncio.sleep(delay)  # quiet
            await write(store, "create", "acme", reservation("a", ["prod"], "1", "1Gi"))
            took = await converges(lambda: section(store, "s1"), res(1000, GI, "shop/a"))
            assert took < delay / 2, f"the first change waited {took:.2f} s"
            generation = (manifest(store, "s1") or {})["metadata"]["generation"]
            # Two more at once, right after that write: one manifest write for both.
            await write(store, "create", "acme", reservation("b", ["prod"], "1", "0"))
            await write(store, "create", "acme", reservation("c", ["prod"], "1", "0"))
            await converges(lambda: section(store, "s1"), res(3000, GI, "shop/a", "shop/b", "shop/c"))
            assert (manifest(store, "s1") or {})["metadata"]["generation"] == generation + 1

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_restart_converges_and_then_writes_nothing(store: Store) -> None:
    for name, env in (("a", "prod"), ("b", "prod"), ("c", "dev")):
        store.create("acme", site(name, env=env))
    store.create("acme", virtual_site("prod", "env=prod"))
    store.create("acme", reservation("r", ["prod"], "1", "1Gi"))

    async def scenario() -> None:
        async with Running(store):
            await converges(lambda: section(store, "a"), res(1000, GI, "shop/r"))
            await converges(lambda: section(store, "c"), None)

        # While no controller runs, the fleet and the intents change.
        await write(store, "update", "acme", site("a", env="dev"))
        await write(store, "delete", "acme", SITE.kind, "", "b")
        await write(store, "create", "acme", site("d", env="prod"))
        await write(store, "update", "acme", reservation("r", ["prod"], "3", "1Gi"))

        async with Running(store):
            await converges(lambda: section(store, "d"), res(3000, GI, "shop/r", revisions={"shop/r": 2}))
            await converges(lambda: section(store, "a"), None)
            await converges(lambda: manifest(store, "b"), None)

        # A restart with nothing changed writes nothing.
        revision = await write(store, "revision")
        async with Running(store) as controller:
            await asyncio.wait_for(controller.synced.wait(), 10)
            await asyncio.sleep(0.5)
            assert await write(store, "revision") == revision
            await write(store, "update", "acme", site("c", env="prod"))
            await converges(lambda: section(store, "c"), res(3000, GI, "shop/r", revisions={"shop/r": 2}))

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_site_manifests_are_read_only_to_clients() -> None:
    assert SITE_MANIFEST.api_write_verbs == frozenset()
