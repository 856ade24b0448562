"""Faults per site and by label selector."""

from __future__ import annotations

import asyncio

import pytest

from fleetplane.agent.drivers.base import VirtualClock
from fleetplane.agent.drivers.sim import SimDriver, SimSite, clear_where, inject_where, select_sites
from fleetplane.agent.drivers.simmodel.faults import FaultError
from tests.agent.drivers.conftest import make_site, step, uniform_profile


def test_connectivity_loss_on_and_off() -> None:
    driver = SimDriver(make_site())
    assert driver.connected()
    driver.inject("connectivity_loss")
    assert not driver.connected()
    assert driver.site.active_faults() == ["connectivity_loss"]
    driver.clear("connectivity_loss")
    assert driver.connected()


def test_faults_with_a_duration_clear_themselves() -> None:
    site = make_site()
    site.inject("connectivity_loss", duration=30)
    step(site, 29.9)
    assert not site.connected()
    step(site, 0.1)
    assert site.connected()


def test_clock_skew_moves_the_reported_time_only() -> None:
    site = make_site()
    true = site.clock.now()
    site.inject("clock_skew", seconds=-120.0)
    obs = site.observation()
    assert obs.now == pytest.approx(true - 120.0)
    assert site.now() == pytest.approx(true - 120.0)
    site.clear()
    assert site.observation().now == pytest.approx(true)


def test_slow_multiplies_driver_latency() -> None:
    driver = SimDriver(make_site())
    clock = driver.site.clock
    driver.inject("slow", factor=10)
    before = clock.now()
    asyncio.run(driver.observe())
    assert clock.now() - before == pytest.approx(10 * driver.site.profile.observe_latency_s)


def test_slow_stretches_image_pulls() -> None:
    from fleetplane.agent.drivers.simmodel.workloads import Workload

    site = make_site(nodes=1, image_sizes={"a:1": 100_000_000})
    site.inject("slow", factor=4)
    site.set_workloads([Workload("a", "a:1")])
    step(site, 3.9)
    assert site.workloads.pods["a-0"].phase == "ContainerCreating"
    step(site, 0.1)
    assert site.workloads.pods["a-0"].phase == "Running"


def test_bad_fault_arguments() -> None:
    site = make_site()
    with pytest.raises(FaultError, match="unknown fault"):
        site.inject("meteor")
    with pytest.raises(FaultError, match="takes no"):
        site.inject("slow", speed=3)
    with pytest.raises(FaultError, match="seconds is required"):
        site.inject("clock_skew")
    with pytest.raises(FaultError, match="at least 1"):
        site.inject("slow", factor=0.5)


def test_inject_and_clear_by_label_selector() -> None:
    clock = VirtualClock()
    sites = [
        SimSite(1, f"s{i}", {"region": region, "env": env}, clock, uniform_profile(1))
        for i, (region, env) in enumerate([("eu", "prod"), ("eu", "dev"), ("us", "prod"), ("ap", "prod")])
    ]
    assert [s.name for s in select_sites(sites, "region in (eu,us)")] == ["s0", "s1", "s2"]
    hit = inject_where(sites, "region in (eu,us),env=prod", "connectivity_loss")
    assert hit == ["s0", "s2"]
    assert [s.connected() for s in sites] == [False, True, False, True]
    assert clear_where(sites, "region=eu") == ["s0", "s1"]
    assert [s.connected() for s in sites] == [True, True, False, True]
    assert inject_where(sites, "", "clock_skew", seconds=5) == ["s0", "s1", "s2", "s3"]
