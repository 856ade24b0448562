"""Same seed, same calls, same clock steps: the same observations."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fleetplane.agent.drivers.base import Observation, VirtualClock
from fleetplane.agent.drivers.sim import SimDriver, SimSite
from fleetplane.agent.drivers.simmodel.profile import GI, MI
from fleetplane.agent.drivers.simmodel.traffic import NetworkPolicy, Rule
from fleetplane.agent.drivers.simmodel.workloads import Workload

POLICY = NetworkPolicy(
    "p",
    (
        Rule("fleet", "egress", "allow", domains=("*.fleetplane.io",)),
        Rule("dns", "egress", "allow", ports=(53,)),
    ),
)


def scenario(seed: int, steps: list[float], name: str = "lyon-00001") -> tuple[list[Observation], list[Any]]:
    clock = VirtualClock()
    site = SimSite(seed, name, {"region": "eu"}, clock, "default")
    driver = SimDriver(site)
    manifest = {"spec": {"sections": {"reservations": {"cpuMillis": 500, "memoryBytes": GI}}}}
    observations = []

    async def main() -> None:
        await driver.apply(manifest)
        site.set_policy(POLICY)
        site.set_workloads(
            [
                Workload("web", "nginx:1.27", 3, 500, 512 * MI, cpu_utilisation=0.7),
                Workload("bad", "app:bad", 1, 100, 64 * MI),
                Workload("hog", "hog:1", 1, 100, 64 * MI, memory_limit=128 * MI, memory_usage=256 * MI),
            ]
        )
        site.install_os("fleetos-1.5.0")
        for dt in steps:
            await clock.sleep(dt)
            observations.append(await driver.observe())

    asyncio.run(main())
    pods = [dataclasses.astuple(p) for p in site.workloads.pods.values()]
    return observations, [*pods, site.os.history, site.traffic.generated]


def test_same_seed_same_steps_same_observations() -> None:
    steps = [7.0, 13.0, 60.0, 45.0, 120.0, 300.0]
    assert scenario(42, steps) == scenario(42, steps)


def test_different_seed_differs() -> None:
    steps = [30.0, 300.0]
    a, _ = scenario(42, steps)
    b, _ = scenario(43, steps)
    assert a != b


def test_state_does_not_depend_on_how_often_it_is_observed() -> None:
    def final(steps: list[float]) -> tuple[Observation, list[Any]]:
        clock = VirtualClock()
        site = SimSite(5, "x", clock=clock, profile="default")
        site.reserve(500, GI)
        site.set_policy(POLICY)
        site.set_workloads([Workload("web", "nginx:1.27", 4, 500, 512 * MI), Workload("bad", "b:bad")])
        site.install_os("fleetos-2")
        for dt in steps:
            clock.advance(dt)
            site.observation()
        pods = [dataclasses.astuple(p) for p in site.workloads.pods.values()]
        return site.observation(), [*pods, site.os.history, site.traffic.generated]

    assert final([600.0]) == final([0.5] * 1200) == final([100.0, 0.25, 199.75, 300.0])


def test_noise_moves_usage_between_periods() -> None:
    clock = VirtualClock()
    site = SimSite(9, "n", clock=clock, profile="default")
    seen = set()
    for _ in range(10):
        clock.advance(10)
        seen.add(site.observation().usage.cpu_millis)
    assert len(seen) > 5
