"""Drawing sites, and the reservations section applied through the driver."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from fleetplane.agent.drivers.base import VirtualClock
from fleetplane.agent.drivers.sim import SimDriver, SimSite
from fleetplane.agent.drivers.simmodel.nodes import roles_for, spread
from fleetplane.agent.drivers.simmodel.profile import GI, SiteProfile
from tests.agent.drivers.conftest import make_site


def manifest(**sections: Any) -> dict[str, Any]:
    return {"metadata": {"name": "site-a", "generation": 1}, "spec": {"site": "site-a", "sections": sections}}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_node_counts_skew_small_and_stay_in_range() -> None:
    counts = [len(SimSite(1, f"s{i}", clock=VirtualClock()).nodes) for i in range(400)]
    assert min(counts) >= 1 and max(counts) <= 100
    small = sum(1 for c in counts if c <= 5)
    assert small / len(counts) > 0.6
    assert any(c > 20 for c in counts)


def test_roles_and_capacities_by_role() -> None:
    assert roles_for(1) == ["controller"]
    assert collections.Counter(roles_for(30)) == {"controller": 3, "worker": 24, "storage": 3}
    site = SimSite(3, "big", clock=VirtualClock(), profile=SiteProfile(nodes=40))
    storage = [n for n in site.nodes if n.role == "storage"]
    workers = [n for n in site.nodes if n.role == "worker"]
    assert len(site.nodes) == 40 and storage and workers
    assert min(n.disk_bytes for n in storage) > max(n.disk_bytes for n in workers)
    assert len({(n.cpu_millis, n.memory_bytes) for n in workers}) == 1  # one model per role


def test_edge_profile_is_small() -> None:
    sites = [SimSite(1, f"e{i}", clock=VirtualClock(), profile="edge") for i in range(50)]
    assert all(1 <= len(s.nodes) <= 3 for s in sites)
    with pytest.raises(ValueError, match="unknown sim profile"):
        SimSite(1, "x", clock=VirtualClock(), profile="huge")


def test_for_site_fixes_node_count_and_seeds_from_name() -> None:
    a = SimDriver.for_site("tokyo-1", nodes=1, clock=VirtualClock())
    b = SimDriver.for_site("tokyo-1", nodes=1, clock=VirtualClock())
    assert len(a.site.nodes) == 1
    assert run(a.observe()) == run(b.observe())


def test_spread_is_proportional_and_exact() -> None:
    assert spread(1000, [1, 1, 2]) == [250, 250, 500]
    assert sum(spread(1001, [3, 3, 3])) == 1001
    assert spread(5, [0, 0]) == [0, 0]


def test_reservation_lowers_allocatable_across_nodes() -> None:
    site = make_site(nodes=2)  # 2 x 4000m, 8 GiB
    driver = SimDriver(site)
    items = run(driver.apply(manifest(reservations={"cpuMillis": 1500, "memoryBytes": 2 * GI})))
    assert [i.to_status() for i in items] == [
        {"section": "reservations", "name": "reservations", "state": "Applied"}
    ]
    obs = run(driver.observe())
    assert obs.allocatable.cpu_millis == 8000 - 1500
    assert obs.allocatable.memory_bytes == 16 * GI - 2 * GI
    assert sorted(n.reserved_cpu for n in site.nodes) == [750, 750]
    # capacity in the inventory is unchanged
    assert [n.cpu_millis for n in obs.nodes] == [4000, 4000]
    # idempotent
    assert run(driver.apply(manifest(reservations={"cpuMillis": 1500, "memoryBytes": 2 * GI}))) == items
    assert run(driver.observe()).allocatable == obs.allocatable


def test_removing_the_section_restores_allocatable() -> None:
    driver = SimDriver(make_site(nodes=1))
    run(driver.apply(manifest(reservations={"cpuMillis": 1000, "memoryBytes": GI})))
    assert run(driver.observe()).allocatable.cpu_millis == 3000
    assert run(driver.apply(manifest())) == []
    alloc = run(driver.observe()).allocatable
    assert (alloc.cpu_millis, alloc.memory_bytes) == (4000, 8 * GI)


def test_site_too_small_fails_with_the_shortfall() -> None:
    driver = SimDriver(make_site(nodes=1))
    run(driver.apply(manifest(reservations={"cpuMillis": 500, "memoryBytes": 0})))
    [item] = run(driver.apply(manifest(reservations={"cpuMillis": 6000, "memoryBytes": 16 * GI})))
    assert item.state == "Failed"
    assert item.reason == (
        "needs 6000m CPU, site has 4000m allocatable; needs 16Gi memory, site has 8Gi allocatable"
    )
    # the reservation in force stays
    assert run(driver.observe()).allocatable.cpu_millis == 3500


def test_bad_section_values_and_unknown_sections_fail() -> None:
    driver = SimDriver(make_site())
    items = run(
        driver.apply(manifest(reservations={"cpuMillis": "1500m"}, workloads={"x": {}}, ingresses={"x": {}}))
    )
    assert [(i.section, i.state) for i in items] == [
        ("reservations", "Failed"),
        ("workloads", "Failed"),
        ("ingresses", "Failed"),
    ]
    assert "cpuMillis must be a non-negative integer" in (items[0].reason or "")
    assert "must hold an objects list" in (items[1].reason or "")
    assert "does not support section 'ingresses'" in (items[2].reason or "")


def test_apply_and_observe_take_virtual_time() -> None:
    site = make_site()
    driver = SimDriver(site)
    before = site.clock.now()
    run(driver.apply(manifest()))
    assert site.clock.now() == pytest.approx(before + site.profile.apply_latency_s)
