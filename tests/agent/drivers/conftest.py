"""Helpers for the sim driver tests: sites with known hardware on a virtual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleetplane.agent.drivers.base import VirtualClock
from fleetplane.agent.drivers.sim import SimSite
from fleetplane.agent.drivers.simmodel.profile import GI, Hardware, SiteProfile

# Every role 4 CPUs, 8 GiB memory, 100 GiB disk; 100 MB/s pulls; no noise.
UNIFORM = Hardware((4000,), (8 * GI,), (100 * GI,))


def uniform_profile(nodes: int, **overrides: object) -> SiteProfile:
    fields: dict[str, object] = {
        "nodes": nodes,
        "hardware": {"controller": UNIFORM, "worker": UNIFORM, "storage": UNIFORM},
        "pull_bytes_per_s": 100e6,
        "noise": 0.0,
    }
    fields.update(overrides)
    return SiteProfile(**fields)  # type: ignore[arg-type]


def make_site(nodes: int = 2, seed: int = 7, name: str = "site-a", **overrides: object) -> SimSite:
    return SimSite(seed, name, {"env": "test"}, VirtualClock(), uniform_profile(nodes, **overrides))


def step(site: SimSite, seconds: float) -> None:
    clock = site.clock
    assert isinstance(clock, VirtualClock)
    clock.advance(seconds)
    site.advance()


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    yield VirtualClock()
