"""Workloads: pods with requests, limits and images, bound by a bin-packing scheduler
onto ready nodes within their allocatable capacity; images pulled one at a time per
node (as the kubelet does by default) at the site's link speed; images marked bad
crash-loop, and pods whose memory use exceeds their limit are OOMKilled, both
restarted with the kubelet's exponential back-off (10 s doubling, capped at 300 s). An image
tagged ``:missing`` does not exist in its registry: its pull fails and is retried with the same
back-off (``ImagePullBackOff``), until the workload changes.

A node's pulled images are on its disk: with ``persist_images_to(path)`` (the sim driver:
``<data-dir>/images.json``) they outlive the agent, so pods created again after an agent
restart start without pulling, and the nodes' disk use stays what it was."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from fleetplane.agent.drivers.base import ItemStatus
from fleetplane.agent.drivers.simmodel.engine import EventQueue, unit_noise
from fleetplane.agent.drivers.simmodel.nodes import Node, fmt_bytes, fmt_cpu
from fleetplane.agent.drivers.simmodel.profile import MI
from fleetplane.agent.drivers.simmodel.state_file import read_state, write_state

__all__ = ["BACKOFF_CAP_S", "BACKOFF_START_S", "CRASH_AFTER_S", "OOM_AFTER_S", "Pod", "PodPhase"]
__all__ += ["Workload", "WorkloadModel", "backoff", "default_image_size", "image_is_bad", "image_is_missing"]

PodPhase = Literal["Pending", "ContainerCreating", "Running", "CrashLoopBackOff", "ImagePullBackOff"]

BACKOFF_START_S = 10.0
BACKOFF_CAP_S = 300.0
CRASH_AFTER_S = 3.0  # a bad image runs this long before it exits with an error
OOM_AFTER_S = 5.0  # memory use ramps to the working set over this long
PULL_FAIL_S = 1.0  # a registry answers "manifest unknown" this fast
IMAGES_FORMAT = 1  # of the state file

log = logging.getLogger("fleetplane.agent.sim")


def backoff(restarts: int) -> float:
    """The wait before restart number ``restarts`` (1-based)."""
    return min(BACKOFF_START_S * 2.0 ** (restarts - 1), BACKOFF_CAP_S)


def image_is_bad(image: str, bad: frozenset[str]) -> bool:
    """Marked bad by the profile, or tagged ``:bad``."""
    last = image.rsplit("/", 1)[-1]
    return image in bad or (":" in last and last.rsplit(":", 1)[1] == "bad")


def image_is_missing(image: str) -> bool:
    """Tagged ``:missing``: the registry does not have it."""
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] == "missing"


def default_image_size(image: str) -> int:
    """20 MiB to about 1.5 GiB, drawn from the name (the same everywhere)."""
    return int(20 * MI + (unit_noise("image", image) + 1) / 2 * 1500 * MI)


@dataclasses.dataclass(frozen=True)
class Workload:
    """``replicas`` pods named ``<name>-<i>``. Running, a pod uses ``cpu_utilisation``
    of its CPU request (within its limit) and ``memory_usage`` bytes (default: its
    request); over ``memory_limit`` it is OOMKilled."""

    name: str
    image: str
    replicas: int = 1
    cpu_request: int = 100
    memory_request: int = 128 * MI
    cpu_limit: int | None = None
    memory_limit: int | None = None
    cpu_utilisation: float = 0.5
    memory_usage: int | None = None

    @property
    def working_set(self) -> int:
        return self.memory_request if self.memory_usage is None else self.memory_usage

    @property
    def ooms(self) -> bool:
        return self.memory_limit is not None and self.working_set > self.memory_limit

    @property
    def cpu_use(self) -> float:
        use = self.cpu_request * self.cpu_utilisation
        return use if self.cpu_limit is None else min(use, float(self.cpu_limit))


@dataclasses.dataclass
class Pod:
    name: str
    workload: Workload
    node: str | None = None
    phase: PodPhase = "Pending"
    reason: str | None = None
    restarts: int = 0
    last_termination: str | None = None
    pull_failures: int = 0
    epoch: int = 0  # bumped on deletion: stale events see a different one


@dataclasses.dataclass
class _NodeImages:
    cached: dict[str, int] = dataclasses.field(default_factory=dict)  # image -> bytes
    pulling: dict[str, float] = dataclasses.field(default_factory=dict)  # image -> done at
    free_at: float = 0.0  # when the (serial) puller is next idle


class WorkloadModel:
    def __init__(
        self,
        nodes: Sequence[Node],
        queue: EventQueue,
        *,
        image_size: Callable[[str], int],
        is_bad: Callable[[str], bool],
        pull_rate: Callable[[], float],
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.queue = queue
        self.image_size = image_size
        self.is_bad = is_bad
        self.pull_rate = pull_rate  # bytes/s now (the slow fault lowers it)
        self.pods: dict[str, Pod] = {}
        self.workloads: dict[str, Workload] = {}
        self.images = {n.name: _NodeImages() for n in nodes}
        self._file: Path | None = None

    # --- across agent restarts ----------------------------------------------------------

    def persist_images_to(self, path: Path) -> None:
        """Keep the nodes' pulled images in ``path`` from now on (loaded now if it is there;
        entries for nodes the site does not have, or that do not read, are left out)."""
        self._file = path
        data = read_state(path, "pulled images")
        if data is None:
            return
        nodes = data.get("nodes")
        if data.get("format") != IMAGES_FORMAT or not isinstance(nodes, dict):
            log.warning("ignoring %s (pulled images): unknown format; the nodes pull again", path)
            return
        for node, cached in nodes.items():
            if node not in self.images or not isinstance(cached, dict):
                continue
            for image, size in cached.items():
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    self.images[node].cached[str(image)] = size

    def _save_images(self) -> None:
        if self._file is not None:
            nodes = {node: dict(i.cached) for node, i in self.images.items() if i.cached}
            write_state(self._file, {"format": IMAGES_FORMAT, "nodes": nodes})

    # --- desired state ------------------------------------------------------------

    def set_workloads(self, workloads: Sequence[Workload], now: float) -> None:
        """Level-triggered: pods of changed or removed workloads go, new ones are
        created Pending, then everything unbound is scheduled."""
        wanted = {w.name: w for w in sorted(workloads, key=lambda w: w.name)}
        for name, pod in list(self.pods.items()):
            if wanted.get(pod.workload.name) != pod.workload or _index(name) >= pod.workload.replicas:
                self._delete(name)
        self.workloads = wanted
        for w in wanted.values():
            for i in range(w.replicas):
                self.pods.setdefault(f"{w.name}-{i}", Pod(f"{w.name}-{i}", w))
        self.schedule(now)

    def _delete(self, name: str) -> None:
        pod = self.pods.pop(name)
        pod.epoch += 1

    # --- the scheduler --------------------------------------------------------------

    def free(self, node: Node) -> tuple[int, int]:
        cpu, mem = node.allocatable_cpu, node.allocatable_memory
        for pod in self.pods.values():
            if pod.node == node.name:
                cpu -= pod.workload.cpu_request
                mem -= pod.workload.memory_request
        return cpu, mem

    def schedule(self, now: float) -> None:
        """Bind every unbound pod, in creation order, to the fitting ready node that it
        leaves fullest (best fit: bin-packing); a pod that fits nowhere stays Pending."""
        free = {name: self.free(node) for name, node in self.nodes.items()}
        for pod in self.pods.values():
            if pod.node is not None:
                continue
            w = pod.workload
            best: tuple[float, int, str] | None = None
            not_ready = short_cpu = short_mem = 0
            for i, (name, node) in enumerate(self.nodes.items()):
                cpu, mem = free[name]
                if not node.ready:
                    not_ready += 1
                    continue
                fits = True
                if w.cpu_request > cpu:
                    short_cpu, fits = short_cpu + 1, False
                if w.memory_request > mem:
                    short_mem, fits = short_mem + 1, False
                if fits:
                    left = (cpu - w.cpu_request) / max(node.allocatable_cpu, 1) + (
                        mem - w.memory_request
                    ) / max(node.allocatable_memory, 1)
                    if best is None or (left, i) < best[:2]:
                        best = (left, i, name)
            if best is None:
                why = [f"{short_cpu} Insufficient cpu"] if short_cpu else []
                why += [f"{short_mem} Insufficient memory"] if short_mem else []
                why += [f"{not_ready} node(s) not ready"] if not_ready else []
                pod.reason = (
                    f"0/{len(self.nodes)} nodes are available: {', '.join(why)} "
                    f"(requests {fmt_cpu(w.cpu_request)} CPU, {fmt_bytes(w.memory_request)} memory)"
                )
                continue
            name = best[2]
            cpu, mem = free[name]
            free[name] = (cpu - w.cpu_request, mem - w.memory_request)
            pod.node = name
            self._pull_then_start(pod, now)

    # --- images, starts, crashes ----------------------------------------------------

    def _pull_then_start(self, pod: Pod, now: float) -> None:
        node = pod.node
        assert node is not None
        images = self.images[node]
        image = pod.workload.image
        if image_is_missing(image):
            if pod.phase != "ImagePullBackOff":
                pod.phase, pod.reason = "ContainerCreating", f"Pulling image {image!r}"
            epoch = pod.epoch
            self.queue.at(now + PULL_FAIL_S, lambda t: self._pull_failed(pod, epoch, t))
            return
        if image in images.cached:
            self._start(pod, pod.epoch, now)
            return
        done = images.pulling.get(image)
        if done is None:
            size = self.image_size(image)
            done = max(now, images.free_at) + size / self.pull_rate()
            images.free_at = done
            images.pulling[image] = done
            self.queue.at(done, lambda t: self._pulled(node, image, size))
        pod.phase, pod.reason = "ContainerCreating", f"Pulling image {image!r}"
        epoch = pod.epoch
        self.queue.at(done, lambda t: self._start(pod, epoch, t))

    def _pull_failed(self, pod: Pod, epoch: int, now: float) -> None:
        if not self._alive(pod, epoch):
            return
        pod.pull_failures += 1
        wait = backoff(pod.pull_failures)
        image = pod.workload.image
        pod.phase = "ImagePullBackOff"
        pod.reason = (
            f'Back-off pulling image "{image}": ErrImagePull: failed to pull and unpack image "{image}": '
            "manifest unknown"
        )
        self.queue.at(now + wait, lambda t: self._retry_pull(pod, epoch, t))

    def _retry_pull(self, pod: Pod, epoch: int, now: float) -> None:
        if self._alive(pod, epoch):
            self._pull_then_start(pod, now)

    def _pulled(self, node: str, image: str, size: int) -> None:
        images = self.images[node]
        images.pulling.pop(image, None)
        images.cached[image] = size
        self._save_images()

    def _alive(self, pod: Pod, epoch: int) -> bool:
        return pod.epoch == epoch and self.pods.get(pod.name) is pod

    def _start(self, pod: Pod, epoch: int, now: float) -> None:
        if not self._alive(pod, epoch):
            return
        pod.phase, pod.reason = "Running", None
        w = pod.workload
        if self.is_bad(w.image):
            self.queue.at(now + CRASH_AFTER_S, lambda t: self._exit(pod, epoch, t, "Error"))
        elif w.ooms:
            self.queue.at(now + OOM_AFTER_S, lambda t: self._exit(pod, epoch, t, "OOMKilled"))

    def _exit(self, pod: Pod, epoch: int, now: float, why: str) -> None:
        if not self._alive(pod, epoch):
            return
        pod.restarts += 1
        pod.last_termination = why
        wait = backoff(pod.restarts)
        pod.phase = "CrashLoopBackOff"
        pod.reason = f"{why}; back-off {wait:g}s restarting failed container"
        self.queue.at(now + wait, lambda t: self._start(pod, epoch, t))

    # --- what it looks like -----------------------------------------------------------

    def node_use(self, node: str) -> tuple[float, int, int]:
        """CPU millis and memory bytes used by running pods, and image disk use."""
        cpu, mem = 0.0, 0
        for pod in self.pods.values():
            if pod.node == node and pod.phase == "Running":
                w = pod.workload
                cpu += w.cpu_use
                mem += w.working_set if w.memory_limit is None else min(w.working_set, w.memory_limit)
        return cpu, mem, sum(self.images[node].cached.values())

    def item_status(self, name: str) -> ItemStatus:
        """The manifest item for one workload: Applied when every pod runs."""
        pods = [p for p in self.pods.values() if p.workload.name == name]
        for pod in pods:
            if pod.phase in ("CrashLoopBackOff", "ImagePullBackOff") or (
                pod.phase == "Pending" and pod.reason
            ):
                return ItemStatus("workloads", name, "Failed", f"{pod.name}: {pod.phase}: {pod.reason}")
        if all(p.phase == "Running" for p in pods):
            return ItemStatus("workloads", name, "Applied")
        return ItemStatus("workloads", name, "InProgress")


def _index(pod_name: str) -> int:
    return int(pod_name.rsplit("-", 1)[1])
