"""Usage: per node, a platform baseline by role, plus what running pods use (their
CPU request times utilisation, their working set), plus bounded noise that changes
every ``NOISE_PERIOD_S`` seconds; disk holds the OS, cached images and, on storage
nodes, data. A rebooting (not ready) node uses nothing. A pressure fault
(``faults.Faults.pressure``) lifts each ready node's CPU or memory to at least its share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetplane.agent.drivers.base import Usage
from fleetplane.agent.drivers.simmodel.engine import unit_noise
from fleetplane.agent.drivers.simmodel.nodes import Node
from fleetplane.agent.drivers.simmodel.profile import GI
from fleetplane.agent.drivers.simmodel.workloads import WorkloadModel

__all__ = ["NOISE_PERIOD_S", "OS_DISK_BYTES", "PLATFORM_CPU", "PLATFORM_MEMORY", "site_usage"]

NOISE_PERIOD_S = 10.0
OS_DISK_BYTES = 12 * GI
PLATFORM_CPU = {"controller": 0.10, "worker": 0.04, "storage": 0.06}  # of capacity
PLATFORM_MEMORY = {"controller": 0.15, "worker": 0.06, "storage": 0.10}


def _noise(node: Node, seed: object, period: int) -> tuple[float, float]:
    """The node's CPU and memory noise in ``period``, unit values: hashed once a period, not
    at every look (a simulated fleet looks thousands of times a second)."""
    cached = node.noise
    if cached is None or cached[1] != period or cached[0] != seed:
        cpu, mem = unit_noise(seed, node.name, "cpu", period), unit_noise(seed, node.name, "mem", period)
        cached = node.noise = (seed, period, cpu, mem)
    return cached[2], cached[3]


def _data_noise(node: Node, seed: object) -> float:
    cached = node.data_noise
    if cached is None or cached[0] != seed:
        cached = node.data_noise = (seed, unit_noise(seed, node.name, "data"))
    return cached[1]


def _clamp(value: float, high: int) -> int:
    return int(min(max(value, 0.0), float(high)))


def site_usage(
    nodes: Sequence[Node],
    pods: WorkloadModel,
    seed: object,
    elapsed: float,
    noise: float,
    pressure: Mapping[str, float] | None = None,
) -> Usage:
    floor = pressure or {}
    period = int(elapsed // NOISE_PERIOD_S)
    cpu = mem = disk = 0
    for node in nodes:
        data = 0
        if node.role == "storage":
            data = int(node.disk_bytes * (0.35 + 0.25 * _data_noise(node, seed)))
        pod_cpu, pod_mem, images = pods.node_use(node.name)
        disk += min(OS_DISK_BYTES + images + data, node.disk_bytes)
        if not node.ready:
            continue
        cpu_noise, mem_noise = _noise(node, seed, period)
        jitter_cpu = cpu_noise * noise * node.cpu_millis
        jitter_mem = mem_noise * noise / 2 * node.memory_bytes
        node_cpu = PLATFORM_CPU[node.role] * node.cpu_millis + pod_cpu + jitter_cpu
        node_mem = PLATFORM_MEMORY[node.role] * node.memory_bytes + pod_mem + jitter_mem
        cpu += _clamp(max(node_cpu, floor.get("cpu", 0.0) * node.cpu_millis), node.cpu_millis)
        mem += _clamp(max(node_mem, floor.get("memory", 0.0) * node.memory_bytes), node.memory_bytes)
    cpu_cap = sum(n.cpu_millis for n in nodes)
    mem_cap = sum(n.memory_bytes for n in nodes)
    return Usage(
        cpu_millis=cpu,
        memory_bytes=mem,
        disk_bytes=disk,
        cpu_percent=round(100 * cpu / cpu_cap, 1) if cpu_cap else 0.0,
        memory_percent=round(100 * mem / mem_cap, 1) if mem_cap else 0.0,
    )
