"""Nodes: drawn from a profile, with capacity by role, and reservations spread over
them in proportion to their capacity."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from fleetplane.agent.drivers.base import NodeInfo, NodeRole
from fleetplane.agent.drivers.simmodel.profile import GI, MI, TI, SiteProfile

__all__ = ["Node", "Reservation", "draw_node_count", "fmt_bytes", "fmt_cpu", "generate_nodes"]
__all__ += ["reserve", "roles_for", "spread"]


@dataclasses.dataclass
class Node:
    name: str
    role: NodeRole
    cpu_millis: int
    memory_bytes: int
    disk_bytes: int
    ready: bool = True
    reserved_cpu: int = 0
    reserved_memory: int = 0
    # usage.py's noise for this node, kept for its period: (seed, period, cpu, memory).
    noise: tuple[object, int, float, float] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    data_noise: tuple[object, float] | None = dataclasses.field(default=None, repr=False, compare=False)
    _info: NodeInfo | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def allocatable_cpu(self) -> int:
        return self.cpu_millis - self.reserved_cpu

    @property
    def allocatable_memory(self) -> int:
        return self.memory_bytes - self.reserved_memory

    def info(self) -> NodeInfo:
        """The node as the site reports it: the same object while nothing in it changed, so
        that its status (``NodeInfo.to_status``, cached) is built once, not at every look."""
        info = self._info
        if (
            info is None
            or info.ready != self.ready
            or info.cpu_millis != self.cpu_millis
            or info.memory_bytes != self.memory_bytes
            or info.disk_bytes != self.disk_bytes
            or info.role != self.role
            or info.name != self.name
        ):
            info = self._info = NodeInfo(
                self.name, self.role, self.cpu_millis, self.memory_bytes, self.disk_bytes, self.ready
            )
        return info


def draw_node_count(rng: random.Random, profile: SiteProfile) -> int:
    if profile.nodes is not None:
        return profile.nodes
    ranges = [r for r, _ in profile.node_counts]
    (low, high) = rng.choices(ranges, weights=[w for _, w in profile.node_counts])[0]
    return rng.randint(low, high)


def roles_for(count: int) -> list[NodeRole]:
    """One controller for small sites, three from six nodes; one storage node per ten."""
    controllers = 1 if count < 6 else 3
    storage = count // 10
    workers = count - controllers - storage
    roles: list[NodeRole] = []
    return roles + ["controller"] * controllers + ["worker"] * workers + ["storage"] * storage


def generate_nodes(rng: random.Random, profile: SiteProfile) -> list[Node]:
    roles = roles_for(draw_node_count(rng, profile))
    sku: dict[str, tuple[int, int, int]] = {}
    for role in ("controller", "worker", "storage"):
        hw = profile.hardware[role]
        sku[role] = (rng.choice(hw.cpu_millis), rng.choice(hw.memory_bytes), rng.choice(hw.disk_bytes))
    return [Node(f"node-{i}", role, *sku[role]) for i, role in enumerate(roles)]


def spread(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; sums exactly)."""
    whole = sum(weights)
    if whole <= 0:
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    rests = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in rests[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclasses.dataclass(frozen=True)
class Reservation:
    cpu_millis: int = 0
    memory_bytes: int = 0


def fmt_cpu(millis: int) -> str:
    return f"{millis}m"


def fmt_bytes(n: int) -> str:
    for unit, size in (("Ti", TI), ("Gi", GI), ("Mi", MI), ("Ki", 1024)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def reserve(nodes: Sequence[Node], want: Reservation) -> str | None:
    """Reserve ``want`` across ``nodes`` (in proportion to capacity), or leave them as
    they are and say why the site is too small."""
    cpu_cap = sum(n.cpu_millis for n in nodes)
    mem_cap = sum(n.memory_bytes for n in nodes)
    short = []
    if want.cpu_millis > cpu_cap:
        short.append(f"needs {fmt_cpu(want.cpu_millis)} CPU, site has {fmt_cpu(cpu_cap)} allocatable")
    if want.memory_bytes > mem_cap:
        short.append(
            f"needs {fmt_bytes(want.memory_bytes)} memory, site has {fmt_bytes(mem_cap)} allocatable"
        )
    if short:
        return "; ".join(short)
    cpus = spread(want.cpu_millis, [n.cpu_millis for n in nodes])
    mems = spread(want.memory_bytes, [n.memory_bytes for n in nodes])
    for node, cpu, mem in zip(nodes, cpus, mems, strict=True):
        node.reserved_cpu, node.reserved_memory = cpu, mem
    return None
