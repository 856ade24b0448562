"""The shared driver shapes: what they serialise to, the protocols, the clocks."""

from __future__ import annotations

import asyncio

from fleetplane.agent.drivers.base import (
    Allocatable,
    Clock,
    Driver,
    ItemStatus,
    NodeInfo,
    Observation,
    RealClock,
    Usage,
    VirtualClock,
)
from fleetplane.agent.drivers.sim import SimDriver
from tests.agent.drivers.conftest import make_site


def test_item_status_shape() -> None:
    assert ItemStatus("reservations", "reservations", "Applied").to_status() == {
        "section": "reservations",
        "name": "reservations",
        "state": "Applied",
    }
    failed = ItemStatus("reservations", "reservations", "Failed", "too small").to_status()
    assert failed["reason"] == "too small"


def test_observation_shape() -> None:
    obs = Observation(
        nodes=(NodeInfo("node-0", "controller", 8000, 16, 32, True),),
        usage=Usage(100, 2, 3, 1.2, 12.5),
        allocatable=Allocatable(7000, 10),
        os_version="fleetos-1.0",
        policy_hits={"p/b": 2, "p/a": 1},
        now=5.0,
    )
    assert obs.to_status() == {
        "nodes": [
            {
                "name": "node-0",
                "role": "controller",
                "cpuMillis": 8000,
                "memoryBytes": 16,
                "diskBytes": 32,
                "ready": True,
            }
        ],
        "nodeCount": 1,
        "usage": {
            "cpuMillis": 100,
            "memoryBytes": 2,
            "diskBytes": 3,
            "cpuPercent": 1.2,
            "memoryPercent": 12.5,
        },
        "allocatable": {"cpuMillis": 7000, "memoryBytes": 10},
        "policyHits": {"p/a": 1, "p/b": 2},
        "osVersion": "fleetos-1.0",
    }


def test_protocols() -> None:
    assert isinstance(SimDriver(make_site()), Driver)
    assert isinstance(VirtualClock(), Clock)
    assert isinstance(RealClock(), Clock)


def test_virtual_clock_sleep_moves_time_without_waiting() -> None:
    clock = VirtualClock(100.0)

    async def main() -> None:
        await clock.sleep(3600)

    asyncio.run(main())
    assert clock.now() == 3700.0
