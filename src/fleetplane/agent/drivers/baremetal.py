"""The bare-metal driver interface: what the agent's infrastructure pipeline
(``agent/infra.py``) asks of a site's hardware, and nothing else.

The ``sim`` driver implements it with a timed model (``simmodel/baremetal.py``); a real
driver would implement it over Redfish (power, virtual media) or OpenStack Ironic /
Metal3 (inspection, PXE deploy) and a package/cluster installer. docs/infrastructure.md
describes what each call does on real hardware. Every call is idempotent: the pipeline
may repeat one after an agent restart. A failed step raises :class:`StepFailed` with a
reason an operator can act on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Artifact", "BareMetal", "ClusterInfo", "DiscoveredNode", "StepFailed"]


class StepFailed(Exception):
    """One step on one node (or the cluster) failed; ``reason`` says why."""

    def __init__(self, reason: str, node: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


@dataclasses.dataclass(frozen=True)
class DiscoveredNode:
    """A host found on the site (Ironic inspection / Redfish ``Systems``)."""

    name: str
    mac: str
    bmc: str | None
    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    disks: tuple[tuple[str, int, str], ...]  # (device, bytes, kind)
    nics: tuple[tuple[str, str, int], ...]  # (name, mac, Mbps)

    def hardware(self) -> dict[str, Any]:
        return {
            "cpuModel": self.cpu_model,
            "cpuCores": self.cpu_cores,
            "memoryBytes": self.memory_bytes,
            "disks": [{"name": d, "sizeBytes": b, "kind": k} for d, b, k in self.disks],
            "nics": [{"name": n, "mac": m, "speedMbps": s} for n, m, s in self.nics],
            **({"bmc": self.bmc} if self.bmc else {}),
        }


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An artifact the site holds, verified by hash (``agent/artifacts.py``)."""

    name: str
    type: str
    version: str
    sha256: str
    path: Path


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    endpoint: str
    kubeconfig: str  # secret: never logged, never in Site.status
    nodes: int


@runtime_checkable
class BareMetal(Protocol):
    """A site's hardware and its installers."""

    async def discover(self) -> list[DiscoveredNode]:
        """Every host the site can see, with its hardware."""
        ...

    async def power(self, node: str, on: bool) -> None: ...

    async def install_os(self, node: str, role: str, image: Artifact) -> None:
        """Write ``image`` to the node's boot disk and boot it (PXE or virtual media)."""
        ...

    async def install_packages(self, node: str, packages: list[Artifact]) -> None:
        """Install binary packages (kubelet, container runtime, ...) on a booted node."""
        ...

    async def bring_up_cluster(self, nodes: dict[str, str]) -> ClusterInfo:
        """Form (or join nodes into) the application cluster; ``{node: role}``."""
        ...

    async def install_container_packages(self, cluster: ClusterInfo, packages: list[Artifact]) -> None:
        """Install container packages (Helm charts, image archives) into the cluster."""
        ...

    async def drain(self, node: str) -> None:
        """Move workloads off the node and keep it out of scheduling (cordon)."""
        ...

    async def uncordon(self, node: str) -> None: ...

    async def release(self, node: str) -> None:
        """Leave the cluster, wipe the disks and power the node off."""
        ...
