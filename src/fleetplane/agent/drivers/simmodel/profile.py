"""How a simulated site is drawn: node counts, hardware by role, link speed,
OS timings, traffic rate. ``PROFILES`` holds the named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["GI", "MI", "PROFILES", "TI", "Hardware", "SiteProfile", "resolve_profile"]

MI = 1024**2
GI = 1024**3
TI = 1024**4


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The models one role may be built from; a site picks one per role (sites are
    bought in batches, so their nodes of one role match)."""

    cpu_millis: tuple[int, ...]
    memory_bytes: tuple[int, ...]
    disk_bytes: tuple[int, ...]


_HARDWARE: Mapping[str, Hardware] = {
    "controller": Hardware((4000, 8000, 16000), (8 * GI, 16 * GI, 32 * GI), (128 * GI, 256 * GI, 512 * GI)),
    "worker": Hardware(
        (8000, 16000, 32000, 64000), (16 * GI, 32 * GI, 64 * GI, 128 * GI), (256 * GI, 1 * TI)
    ),
    "storage": Hardware((8000, 16000), (32 * GI, 64 * GI), (4 * TI, 8 * TI, 16 * TI)),
}
_EDGE_HARDWARE: Mapping[str, Hardware] = {
    "controller": Hardware((2000, 4000, 8000), (4 * GI, 8 * GI, 16 * GI), (64 * GI, 128 * GI)),
    "worker": Hardware((4000, 8000), (8 * GI, 16 * GI), (128 * GI, 256 * GI)),
    "storage": Hardware((4000,), (16 * GI,), (2 * TI,)),
}


@dataclasses.dataclass(frozen=True)
class SiteProfile:
    """``nodes`` fixes the node count; otherwise it is drawn from ``node_counts``:
    ``((low, high), weight)`` ranges, uniform within a range."""

    nodes: int | None = None
    node_counts: tuple[tuple[tuple[int, int], int], ...] = (
        ((1, 1), 35),
        ((2, 5), 40),
        ((6, 20), 17),
        ((21, 100), 8),
    )
    hardware: Mapping[str, Hardware] = dataclasses.field(default_factory=lambda: dict(_HARDWARE))
    # Images: pulled at this rate; sizes by exact reference, else drawn from the name.
    pull_bytes_per_s: float = 50e6
    image_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    bad_images: frozenset[str] = frozenset()
    # OS A/B slots.
    os_version: str = "fleetos-1.4.2"
    install_s: float = 120.0
    reboot_s: float = 60.0
    health_check_s: float = 30.0
    bad_os_versions: frozenset[str] = frozenset()
    # Driver call latencies (multiplied by the "slow" fault).
    apply_latency_s: float = 0.05
    observe_latency_s: float = 0.01
    # Traffic: flows per second; usage noise as a fraction of capacity.
    traffic_per_s: float = 5.0
    noise: float = 0.02

    def __post_init__(self) -> None:
        if self.nodes is not None and not 1 <= self.nodes <= 100:
            raise ValueError(f"a site has 1-100 nodes, not {self.nodes}")
        for (low, high), weight in self.node_counts:
            if not 1 <= low <= high <= 100 or weight < 0:
                raise ValueError(f"bad node count range ({low}, {high}) weight {weight}")


PROFILES: Mapping[str, SiteProfile] = {
    "default": SiteProfile(),
    "edge": SiteProfile(
        node_counts=(((1, 1), 60), ((2, 3), 40)),
        hardware=dict(_EDGE_HARDWARE),
        pull_bytes_per_s=10e6,
        install_s=300.0,
        reboot_s=90.0,
    ),
    "datacenter": SiteProfile(node_counts=(((20, 100), 1),), pull_bytes_per_s=500e6, install_s=60.0),
    # Demos and tests: an OS upgrade in seconds rather than minutes.
    "fast": SiteProfile(install_s=2.0, reboot_s=1.0, health_check_s=1.0),
}


def resolve_profile(profile: SiteProfile | str) -> SiteProfile:
    if isinstance(profile, SiteProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown sim profile {profile!r}; known: {', '.join(sorted(PROFILES))}") from None
