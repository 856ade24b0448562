"""Virtual-site membership: the pure engine (incl. a property test against brute force) and the
controller on a real store and watch hub (both backends), restarts included."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetplane.controllers.membership import Membership, MembershipController, VsKey
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import Selector, parse_selector
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import SITE, VIRTUAL_SITE
from fleetplane.kinds.virtualsite import MAX_LISTED_MEMBERS
from tests.support.waiting import converges

# -- the pure engine ----------------------------------------------------------------------------------

PROD: VsKey = ("acme", "default", "prod")
EU: VsKey = ("acme", "default", "eu")


def engine() -> Membership:
    m = Membership()
    m.set_site("acme", "berlin", {"env": "prod", "zone": "eu"})
    m.set_site("acme", "paris", {"env": "dev", "zone": "eu"})
    m.set_site("acme", "austin", {"env": "prod", "zone": "us"})
    assert m.set_virtual_site(PROD, parse_selector("env=prod"), 1)
    assert m.set_virtual_site(EU, parse_selector("zone=eu"), 1)
    return m


def members(m: Membership, key: VsKey) -> list[str]:
    return list(m.status_of(key)["members"])


def test_virtual_site_members_and_status() -> None:
    m = engine()
    assert m.status_of(PROD) == {
        "observedGeneration": 1,
        "selector": "env=prod",
        "memberCount": 2,
        "members": ["austin", "berlin"],
        "membersTruncated": False,
    }
    assert members(m, EU) == ["berlin", "paris"]


def test_huge_membership_lists_the_first_names_and_keeps_the_exact_count() -> None:
    m = Membership()
    for i in range(MAX_LISTED_MEMBERS + 25):
        m.set_site("t", f"site-{i:05d}", {"env": "prod"})
    m.set_virtual_site(("t", "ns", "all"), parse_selector("env=prod"), 1)
    status = m.status_of(("t", "ns", "all"))
    assert status["memberCount"] == MAX_LISTED_MEMBERS + 25
    assert status["membersTruncated"] is True
    assert status["members"] == [f"site-{i:05d}" for i in range(MAX_LISTED_MEMBERS)]


def test_relabel_reports_exactly_the_changed_virtual_sites() -> None:
    m = engine()
    # paris joins prod; it stays in eu.
    assert m.set_site("acme", "paris", {"env": "prod", "zone": "eu"}) == {PROD}
    assert members(m, PROD) == ["austin", "berlin", "paris"]
    # berlin leaves eu, stays in prod.
    assert m.set_site("acme", "berlin", {"env": "prod", "zone": "us"}) == {EU}
    assert members(m, EU) == ["paris"]
    # A change that moves nothing reports nothing.
    assert m.set_site("acme", "berlin", {"env": "prod", "zone": "us", "extra": "x"}) == set()
    assert m.set_site("acme", "berlin", {"env": "prod", "zone": "us", "extra": "x"}) == set()
    # Leaving both and joining both at once.
    assert m.set_site("acme", "austin", {}) == {PROD}
    assert m.set_site("acme", "austin", {"env": "prod", "zone": "eu"}) == {PROD, EU}
    # A new site is reported where it joins.
    assert m.set_site("acme", "rome", {"zone": "eu"}) == {EU}
    assert members(m, EU) == ["austin", "paris", "rome"]


def test_removing_a_site() -> None:
    m = engine()
    assert m.remove_site("acme", "berlin") == {PROD, EU}
    assert members(m, PROD) == ["austin"]
    assert members(m, EU) == ["paris"]
    assert m.remove_site("acme", "berlin") == set()  # already gone
    assert m.remove_site("acme", "never-existed") == set()
    assert m.remove_site("nobody", "x") == set()
    # A virtual site created afterwards does not see it either.
    m.set_virtual_site(("acme", "default", "all"), Selector(), 1)
    assert members(m, ("acme", "default", "all")) == ["austin", "paris"]


def test_selector_change_recomputes_and_generation_is_tracked() -> None:
    m = engine()
    assert m.set_virtual_site(PROD, parse_selector("env in (prod,dev),zone=eu"), 2)
    assert m.status_of(PROD) == {
        "observedGeneration": 2,
        "selector": "env in (dev,prod),zone=eu",
        "memberCount": 2,
        "members": ["berlin", "paris"],
        "membersTruncated": False,
    }
    # Same selector (even spelled differently): no recompute, but the generation moves.
    assert not m.set_virtual_site(PROD, parse_selector("zone=eu , env in (dev,prod)"), 3)
    assert m.status_of(PROD)["observedGeneration"] == 3
    # Removed virtual sites no longer react to relabels.
    m.remove_virtual_site(EU)
    assert m.set_site("acme", "paris", {"zone": "us"}) == {PROD}
    assert EU not in m.virtual
    m.remove_virtual_site(EU)  # idempotent


def test_tenants_are_independent() -> None:
    m = engine()
    other: VsKey = ("other", "default", "prod")
    m.set_site("other", "berlin", {"env": "dev"})
    m.set_virtual_site(other, parse_selector("env=prod"), 1)
    assert members(m, other) == []
    assert m.set_site("other", "berlin", {"env": "prod"}) == {other}
    assert members(m, other) == ["berlin"]
    assert members(m, PROD) == ["austin", "berlin"]
    assert m.remove_site("acme", "berlin") == {PROD, EU}
    assert members(m, other) == ["berlin"]
    assert m.set_site("acme", "lyon", {"env": "prod"}) == {PROD}
    assert members(m, other) == ["berlin"]


# -- property: the engine always equals brute force -------------------------------------------------------

KEYS = ("a", "b", "c")
VALUES = ("x", "y")
TENANTS = ("t1", "t2")
SITE_NAMES = ("s1", "s2", "s3", "s4", "s5")
VS_KEYS = [(t, ns, n) for t in TENANTS for ns in ("n1", "n2") for n in ("v1", "v2")]

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
requirement_st = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.builds(lambda k, v: f"{k}!={v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.builds(
        lambda k, vs: f"{k} in ({','.join(vs)})",
        st.sampled_from(KEYS),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
    ),
    st.builds(
        lambda k, vs: f"{k} notin ({','.join(vs)})",
        st.sampled_from(KEYS),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
    ),
    st.sampled_from(KEYS),
    st.builds(lambda k: f"!{k}", st.sampled_from(KEYS)),
)
selector_st = st.lists(requirement_st, max_size=3).map(lambda reqs: parse_selector(",".join(reqs)))
op_st = st.one_of(
    st.tuples(st.just("set_site"), st.sampled_from(TENANTS), st.sampled_from(SITE_NAMES), labels_st),
    st.tuples(st.just("remove_site"), st.sampled_from(TENANTS), st.sampled_from(SITE_NAMES)),
    st.tuples(st.just("set_vs"), st.sampled_from(VS_KEYS), selector_st),
    st.tuples(st.just("remove_vs"), st.sampled_from(VS_KEYS)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op_st, max_size=40))
def test_membership_always_equals_brute_force(ops: list[tuple[Any, ...]]) -> None:
    m = Membership()
    sites: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TENANTS}
    selectors: dict[VsKey, Selector] = {}

    def brute(key: VsKey) -> set[str]:
        return {n for n, labels in sites[key[0]].items() if selectors[key].matches(labels)}

    for gen, op in enumerate(ops, start=1):
        before = {k: brute(k) for k in selectors}
        if op[0] == "set_site":
            _, tenant, name, labels = op
            sites[tenant][name] = labels
            changed = m.set_site(tenant, name, labels)
        elif op[0] == "remove_site":
            _, tenant, name = op
            sites[tenant].pop(name, None)
            changed = m.remove_site(tenant, name)
        elif op[0] == "set_vs":
            _, key, sel = op
            selectors[key] = sel
            m.set_virtual_site(key, sel, gen)
            changed = None
        else:
            _, key = op
            selectors.pop(key, None)
            m.remove_virtual_site(key)
            changed = None
        if changed is not None:
            assert changed == {k for k in selectors if brute(k) != before[k]}
        assert set(m.virtual) == set(selectors)
        for key in selectors:
            status = m.status_of(key)
            assert status["members"] == sorted(brute(key))
            assert status["memberCount"] == len(status["members"])
    m.recompute_all()
    for key in selectors:
        assert m.status_of(key)["members"] == sorted(brute(key))


# -- the controller on a real store ----------------------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def site(name: str, **labels: str) -> Obj:
    return SITE.normalize({"metadata": {"name": name, "labels": labels}})


def virtual_site(name: str, selector: Any, namespace: str = "default") -> Obj:
    return VIRTUAL_SITE.normalize(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"selector": selector}}
    )


def relabel(store: Store, tenant: str, name: str, **labels: str) -> None:
    current = store.get(tenant, "Site", "", name)
    store.update(tenant, {**current, "metadata": {**current["metadata"], "labels": labels}}, part="main")


def reselect(store: Store, tenant: str, name: str, selector: Any, namespace: str = "default") -> None:
    current = store.get(tenant, "VirtualSite", namespace, name)
    store.update(tenant, {**current, "spec": {**current["spec"], "selector": selector}}, part="main")


def status_of(store: Store, tenant: str, name: str, namespace: str = "default") -> dict[str, Any]:
    return dict(store.get(tenant, "VirtualSite", namespace, name).get("status") or {})


def want(members: list[str], selector: str, generation: int = 1) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "selector": selector,
        "memberCount": len(members),
        "members": sorted(members),
        "membersTruncated": False,
    }


class Running:
    """A controller with its own hub, as one server process would run it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __aenter__(self) -> MembershipController:
        self.hub = WatchHub(self.store, poll_interval=0.2)
        await self.hub.start()
        self.controller = MembershipController(self.store, self.hub, flush_delay=0.01)
        self.task = asyncio.create_task(self.controller.run())
        return self.controller

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.hub.stop()


def test_controller_keeps_virtual_site_status_current(store: Store) -> None:
    store.create("acme", site("s1", env="prod"))
    store.create("acme", site("s2", env="dev"))
    store.create("acme", site("s3", env="prod", zone="eu"))
    store.create("other", site("s1", env="prod"))
    store.create("acme", virtual_site("prod", "env=prod"))
    store.create("acme", virtual_site("eu", {"matchLabels": {"zone": "eu"}}, namespace="europe"))

    async def scenario() -> None:
        async with Running(store):
            await converges(lambda: status_of(store, "acme", "prod"), want(["s1", "s3"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "eu", "europe"), want(["s3"], "zone=eu"))
            # Relabel: s2 joins, s1 leaves.
            await asyncio.to_thread(relabel, store, "acme", "s2", env="prod")
            await asyncio.to_thread(relabel, store, "acme", "s1", env="dev")
            await converges(lambda: status_of(store, "acme", "prod"), want(["s2", "s3"], "env=prod"))
            # Delete: s3 leaves both.
            await asyncio.to_thread(store.delete, "acme", "Site", "", "s3")
            await converges(lambda: status_of(store, "acme", "prod"), want(["s2"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "eu", "europe"), want([], "zone=eu"))
            # A site created later joins.
            await asyncio.to_thread(store.create, "acme", site("s4", env="prod", zone="eu"))
            await converges(lambda: status_of(store, "acme", "prod"), want(["s2", "s4"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "eu", "europe"), want(["s4"], "zone=eu"))
            # A selector change recomputes and reports the new generation.
            await asyncio.to_thread(reselect, store, "acme", "prod", "env in (dev,prod),!zone")
            await converges(
                lambda: status_of(store, "acme", "prod"), want(["s1", "s2"], "env in (dev,prod),!zone", 2)
            )
            # Another tenant's virtual site sees only that tenant's sites.
            await asyncio.to_thread(store.create, "other", virtual_site("prod", "env=prod"))
            await converges(lambda: status_of(store, "other", "prod"), want(["s1"], "env=prod"))
            assert status_of(store, "acme", "prod")["members"] == ["s1", "s2"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_controller_restart_converges_and_then_writes_nothing(store: Store) -> None:
    for name, env in (("a", "prod"), ("b", "prod"), ("c", "dev")):
        store.create("acme", site(name, env=env))
    store.create("acme", virtual_site("prod", "env=prod"))
    store.create("acme", virtual_site("dev", "env=dev"))

    async def scenario() -> None:
        async with Running(store):
            await converges(lambda: status_of(store, "acme", "prod"), want(["a", "b"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "dev"), want(["c"], "env=dev"))

        # While no controller runs, the fleet changes and the statuses go stale.
        await asyncio.to_thread(relabel, store, "acme", "a", env="dev")
        await asyncio.to_thread(store.delete, "acme", "Site", "", "b")
        await asyncio.to_thread(store.create, "acme", site("d", env="prod"))
        await asyncio.to_thread(reselect, store, "acme", "dev", "env in (dev,test)")
        await asyncio.to_thread(store.create, "acme", virtual_site("all", ""))
        assert status_of(store, "acme", "prod") == want(["a", "b"], "env=prod")

        async with Running(store):
            await converges(lambda: status_of(store, "acme", "prod"), want(["d"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "dev"), want(["a", "c"], "env in (dev,test)", 2))
            await converges(lambda: status_of(store, "acme", "all"), want(["a", "c", "d"], ""))

        # A restart with nothing changed writes nothing.
        revision = await asyncio.to_thread(store.revision)
        async with Running(store) as controller:
            deadline = time.monotonic() + 10
            while len(controller.state.virtual) < 3:
                assert time.monotonic() < deadline, "the controller never synced"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(store.revision) == revision
            # ...and still reacts afterwards.
            await asyncio.to_thread(relabel, store, "acme", "c", env="prod")
            await converges(lambda: status_of(store, "acme", "prod"), want(["c", "d"], "env=prod"))
            await converges(lambda: status_of(store, "acme", "dev"), want(["a"], "env in (dev,test)", 2))

    asyncio.run(asyncio.wait_for(scenario(), 60))
