"""The sim bare-metal model: a rack of hosts with realistic provisioning timings.

Implements ``agent/drivers/baremetal.py``'s ``BareMetal``. A site's rack holds
``rack_size`` hosts named ``node-01`` .. ``node-NN`` (hardware drawn from the seed: one CPU
model per site, as hosts are bought in batches), each with a BMC and a provisioning NIC.
Every call takes the time the real operation takes (``Timings``, from field numbers for
PXE/virtual-media installs, package installs and a kubeadm-style bring-up) divided by the
time scale (``FLEETPLANE_SIM_TIME_SCALE``, default 1: real time), on the site's clock.

The hosts' disks outlive the agent: with ``persist_to(path)`` (the sim driver uses
``<data-dir>/rack.json``) what is installed, powered, cordoned and clustered is kept in a
file, as real hardware keeps it across an agent restart.

The ``node_failure`` fault (``simmodel/faults.py``) makes one step fail: ``phase`` (os,
packages, cluster, containers), ``node`` (default: the first node that tries it), ``count``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

from fleetplane.agent.drivers.baremetal import Artifact, ClusterInfo, DiscoveredNode, StepFailed
from fleetplane.agent.drivers.base import Clock
from fleetplane.agent.drivers.simmodel.engine import derived_random
from fleetplane.agent.drivers.simmodel.faults import Faults
from fleetplane.agent.drivers.simmodel.state_file import read_state, write_state

__all__ = ["DEFAULT_RACK_SIZE", "SimBareMetal", "Timings", "time_scale"]

GI = 1024**3
DEFAULT_RACK_SIZE = 12
SCALE_ENV = "FLEETPLANE_SIM_TIME_SCALE"
RACK_ENV = "FLEETPLANE_SIM_RACK_SIZE"
log = logging.getLogger("fleetplane.agent.sim")
_CPUS = (
    ("Intel Xeon Gold 6338N", 32),
    ("Intel Xeon Silver 4314", 16),
    ("AMD EPYC 7313P", 16),
    ("AMD EPYC 9354P", 32),
    ("Intel Xeon D-2796NT", 20),
)


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds each operation takes on real hardware."""

    power_s: float = 5.0
    os_install_s: float = 180.0  # PXE / virtual media boot, write the image to disk
    reboot_s: float = 45.0  # POST + first boot into the new OS
    package_s: float = 15.0  # one binary package on one node
    cluster_s: float = 90.0  # control plane up (etcd, API server, CNI)
    cluster_node_s: float = 5.0  # each node joining
    container_package_s: float = 20.0  # one Helm chart / image archive
    drain_s: float = 30.0
    release_s: float = 60.0  # leave, wipe, power off

    def scaled(self, scale: float) -> Timings:
        return Timings(**{f.name: getattr(self, f.name) / scale for f in dataclasses.fields(self)})


def time_scale() -> float:
    """``FLEETPLANE_SIM_TIME_SCALE`` (a speed-up factor, >= 1 in practice; default 1)."""
    try:
        value = float(os.environ.get(SCALE_ENV, "1") or 1)
    except ValueError:
        return 1.0
    return value if value > 0 else 1.0


def rack_size() -> int:
    try:
        return max(1, min(100, int(os.environ.get(RACK_ENV, DEFAULT_RACK_SIZE))))
    except ValueError:
        return DEFAULT_RACK_SIZE


def draw_rack(seed: int | str, site: str, size: int) -> list[DiscoveredNode]:
    rng: random.Random = derived_random(seed, site, "rack")
    cpu_model, cores = rng.choice(_CPUS)
    memory = rng.choice((64, 128, 256, 512)) * GI
    disk = rng.choice((480, 960, 1920)) * 10**9
    hosts = []
    for i in range(1, size + 1):
        mac = f"52:54:00:{rng.randrange(256):02x}:{rng.randrange(256):02x}:{i:02x}"
        hosts.append(
            DiscoveredNode(
                name=f"node-{i:02d}",
                mac=mac,
                bmc=f"10.0.{rng.randrange(1, 255)}.{i}",
                cpu_model=cpu_model,
                cpu_cores=cores,
                memory_bytes=memory,
                disks=(("sda", disk, "ssd"), ("nvme0n1", disk * 2, "nvme")),
                nics=(("eno1", mac, 10_000), ("eno2", mac[:-2] + "ff", 10_000)),
            )
        )
    return hosts


class SimBareMetal:
    def __init__(
        self,
        seed: int | str,
        site: str,
        clock: Clock,
        faults: Faults,
        *,
        size: int | None = None,
        timings: Timings | None = None,
        scale: float | None = None,
        slow: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.site = site
        self.clock = clock
        self.faults = faults
        self.scale = scale if scale is not None else time_scale()
        self.timings = (timings or Timings()).scaled(self.scale)
        self.hosts = {h.name: h for h in draw_rack(seed, site, size or rack_size())}
        self.powered: dict[str, bool] = dict.fromkeys(self.hosts, False)
        self.images: dict[str, str] = {}  # node -> OS image version on its disk
        self.cordoned: set[str] = set()
        self.cluster: dict[str, str] = {}  # node -> role, members of the application cluster
        self._slow = slow
        self.work_s = 0.0  # the hardware time spent (unscaled), for the benchmark's ideal
        self._file: Path | None = None

    def persist_to(self, path: Path) -> None:
        """Keep the hosts' state in ``path`` (loaded now if it exists)."""
        self._file = path
        data = read_state(path, "rack")
        if data is None:
            return
        try:
            images = {k: str(v) for k, v in (data.get("images") or {}).items() if k in self.hosts}
            cluster = {k: str(v) for k, v in (data.get("cluster") or {}).items() if k in self.hosts}
            cordoned = {n for n in data.get("cordoned") or [] if n in self.hosts}
            powered = {n for n in data.get("powered") or [] if n in self.hosts}
        except (AttributeError, TypeError) as exc:  # a field of the wrong type: damaged
            log.warning("ignoring %s (rack): %s; the hosts start bare", path, exc)
            return
        self.images, self.cluster, self.cordoned = images, cluster, cordoned
        for name in powered:
            self.powered[name] = True

    def _save(self) -> None:
        if self._file is None:
            return
        data = {
            "images": self.images,
            "cluster": self.cluster,
            "cordoned": sorted(self.cordoned),
            "powered": sorted(n for n, on in self.powered.items() if on),
        }
        write_state(self._file, data)

    async def _take(self, seconds: float) -> None:
        self.work_s += seconds * self.scale
        await self.clock.sleep(seconds * self._slow())

    def _fail(self, phase: str, node: str) -> None:
        active = self.faults.get("node_failure", self.clock.now())
        if active is None or active.params["phase"] != phase:
            return
        if active.params["node"] not in (None, node):
            return
        count = active.params["count"]
        if count is not None:
            if count <= 1:
                self.faults.clear("node_failure")
            else:
                active.params["count"] = count - 1
        raise StepFailed(f"{node}: {active.params['reason']} ({phase})", node)

    def _host(self, node: str) -> DiscoveredNode:
        host = self.hosts.get(node)
        if host is None:
            raise StepFailed(f"{node}: no such host on the site (not racked or not cabled)", node)
        return host

    async def discover(self) -> list[DiscoveredNode]:
        return list(self.hosts.values())

    async def power(self, node: str, on: bool) -> None:
        self._host(node)
        if self.powered[node] != on:
            await self._take(self.timings.power_s)
            self.powered[node] = on
            self._save()

    async def install_os(self, node: str, role: str, image: Artifact) -> None:
        await self.power(node, True)
        await self._take(self.timings.os_install_s)
        self._fail("os", node)
        await self._take(self.timings.reboot_s)
        self.images[node] = image.version
        self._save()

    async def install_packages(self, node: str, packages: list[Artifact]) -> None:
        self._host(node)
        if node not in self.images:
            raise StepFailed(f"{node}: no OS installed; packages need a booted node", node)
        for _ in packages:
            await self._take(self.timings.package_s)
        self._fail("packages", node)

    async def bring_up_cluster(self, nodes: dict[str, str]) -> ClusterInfo:
        if not any(role == "controller" for role in nodes.values()):
            raise StepFailed(
                f"none of the {len(nodes)} nodes asked to form the application cluster is a controller"
            )
        joining = [n for n in nodes if n not in self.cluster]
        if not self.cluster:
            await self._take(self.timings.cluster_s)
        for node in joining:
            self._fail("cluster", node)
        if joining:
            await self._take(self.timings.cluster_node_s * len(joining))
        for node in set(self.cluster) - set(nodes):
            del self.cluster[node]
        self.cluster.update(nodes)
        self._save()
        controller = sorted(n for n, r in nodes.items() if r == "controller")[0]
        endpoint = f"https://{controller}.{self.site}.local:6443"
        token = f"sim-{derived_random(self.site, 'token').getrandbits(64):016x}"
        kubeconfig = (
            "apiVersion: v1\nkind: Config\nclusters:\n- name: "
            f"{self.site}\n  cluster:\n    server: {endpoint}\n"
            f"users:\n- name: admin\n  user:\n    token: {token}\n"
        )
        return ClusterInfo(endpoint, kubeconfig, len(self.cluster))

    async def install_container_packages(self, cluster: ClusterInfo, packages: list[Artifact]) -> None:
        for package in packages:
            await self._take(self.timings.container_package_s)
            self._fail("containers", package.name)

    def _in_use(self, node: str) -> bool:
        """Whether the node runs anything: an installed OS or a cluster membership."""
        return node in self.images or node in self.cluster

    async def drain(self, node: str) -> None:
        self._host(node)
        if node not in self.cordoned:
            if self._in_use(node):  # a bare host (no OS) has nothing to move off: cordon only
                await self._take(self.timings.drain_s)
            self.cordoned.add(node)
            self._save()

    async def uncordon(self, node: str) -> None:
        self._host(node)
        self.cordoned.discard(node)
        self._save()

    async def release(self, node: str) -> None:
        self._host(node)
        await self.drain(node)
        if self._in_use(node):  # a bare host has nothing to leave or wipe: power off only
            await self._take(self.timings.release_s)
        elif self.powered[node]:
            await self._take(self.timings.power_s)
        self.cluster.pop(node, None)
        self.images.pop(node, None)
        self.cordoned.discard(node)
        self.powered[node] = False
        self._save()
