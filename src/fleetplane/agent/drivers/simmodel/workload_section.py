"""The manifest's ``workloads`` section on the sim's workload model.

The section (``docs/site-manifest.md``) lists Kubernetes objects already rendered for the
site (namespace ``<tenant>-<namespace>``, overrides and flavor applied). Deployments,
StatefulSets and Jobs become ``Workload``\\ s of ``simmodel.workloads`` (scheduling, image
pulls, crash loops, OOMKilled): one model workload per object, its pod requests and limits
the sums over its containers, its image the first bad one if any (the pod crash-loops then),
else the first. ``replicas`` (Jobs: ``parallelism``, completion is not modelled: Job pods
keep running). Services, ConfigMaps, Secrets and PVCs are accepted as they are (one
``Applied`` item each); Services also join the site's namespace networks
(``services.NamespaceNetwork``: each site-local namespace isolated, other namespaces reach it
only through its Services; ``network_hits`` counts the verdicts of the generated connections).

``pods()`` is what the site reports in ``Site.status.pods``: per pod its workload
(``<namespace>/<Kind>/<name>``), the generation it runs, phase, reason, restarts, node,
labels and containers (image, resources), named as upstream's controllers name pods
(``<deploy>-<template hash>-<5>``, ``<sts>-<ordinal>``, ``<job>-<5>``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fleetplane.agent.drivers.base import ItemStatus
from fleetplane.agent.drivers.simmodel.services import NamespaceNetwork, NetPod, NetService
from fleetplane.agent.drivers.simmodel.workloads import Workload, WorkloadModel
from fleetplane.core.quantity import QuantityError, cpu_millis, memory_bytes

SECTION = "workloads"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
SOURCE_ANNOTATION = "fleetplane.io/vk8s-source"
GENERATION_ANNOTATION = "fleetplane.io/vk8s-generation"
# A pod template annotation the sim reads: the memory a container set uses (to model OOMKilled).
MEMORY_USAGE_ANNOTATION = "sim.fleetplane.io/memory-usage"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # upstream's rand.SafeEncodeString


def _safe(digest: bytes, n: int) -> str:
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:n])


def _hash(*parts: object) -> bytes:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()


@dataclasses.dataclass(frozen=True)
class Placed:
    """One workload object of the section: how its pods are named and reported."""

    key: str  # <namespace>/<Kind>/<name> of the vK8s object
    namespace: str  # the site-local namespace
    kind: str
    name: str
    generation: int
    template_hash: str
    labels: dict[str, str]
    containers: tuple[dict[str, Any], ...]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resources(containers: list[dict[str, Any]]) -> tuple[int, int, int | None, int | None]:
    cpu = mem = 0
    cpu_limit: int | None = 0
    mem_limit: int | None = 0
    for c in containers:
        res = _dict(c.get("resources"))
        req, lim = _dict(res.get("requests")), _dict(res.get("limits"))
        cpu += cpu_millis(req.get("cpu") or lim.get("cpu") or "0")
        mem += memory_bytes(req.get("memory") or lim.get("memory") or "0")
        cpu_limit = None if cpu_limit is None or "cpu" not in lim else cpu_limit + cpu_millis(lim["cpu"])
        mem_limit = (
            None if mem_limit is None or "memory" not in lim else mem_limit + memory_bytes(lim["memory"])
        )
    return cpu, mem, cpu_limit, mem_limit


def parse_workload(obj: Mapping[str, Any], is_bad: Any) -> tuple[Workload, Placed] | str:
    """The model workload of one Deployment/StatefulSet/Job, or why it cannot run."""
    meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
    kind, name, namespace = str(obj.get("kind")), meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return "a workload needs metadata.name and metadata.namespace"
    template = _dict(spec.get("template"))
    pod = _dict(template.get("spec"))
    containers = [c for c in pod.get("containers") or [] if isinstance(c, dict)]
    if not containers or not all(isinstance(c.get("image"), str) for c in containers):
        return "the pod template needs containers with images"
    replicas = spec.get("parallelism" if kind == "Job" else "replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        return f"replicas must be a non-negative integer, not {replicas!r}"
    try:
        cpu, mem, cpu_limit, mem_limit = _resources(containers)
        usage = _dict(_dict(template.get("metadata")).get("annotations")).get(MEMORY_USAGE_ANNOTATION)
        memory_usage = memory_bytes(usage) if isinstance(usage, str) else None
    except QuantityError as exc:
        return f"bad resources: {exc}"
    images = [str(c["image"]) for c in containers]
    image = next((i for i in images if is_bad(i)), images[0])
    annotations = _dict(meta.get("annotations"))
    source = str(annotations.get(SOURCE_ANNOTATION) or f"{namespace}/{name}")
    key = f"{source.partition('/')[0]}/{kind}/{name}"
    generation = str(annotations.get(GENERATION_ANNOTATION) or "0")
    workload = Workload(
        f"{namespace}/{kind}/{name}",
        image,
        replicas,
        cpu_request=cpu,
        memory_request=mem,
        cpu_limit=cpu_limit,
        memory_limit=mem_limit,
        memory_usage=memory_usage,
    )
    labels = {str(k): str(v) for k, v in _dict(_dict(template.get("metadata")).get("labels")).items()}
    shown = tuple(
        {
            "name": str(c.get("name") or ""),
            "image": str(c["image"]),
            "resources": {
                str(k): {str(q): str(v) for q, v in _dict(values).items()}
                for k, values in _dict(c.get("resources")).items()
            },
        }
        for c in containers
    )
    generation_ = int(generation) if generation.isdigit() else 0
    placed = Placed(key, namespace, kind, name, generation_, _safe(_hash(template), 10), labels, shown)
    return workload, placed


def _net_service(obj: Mapping[str, Any]) -> NetService:
    meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
    namespace = str(meta.get("namespace") or "")
    source = str(_dict(meta.get("annotations")).get(SOURCE_ANNOTATION) or f"{namespace}/")
    selector = tuple(sorted((str(k), str(v)) for k, v in _dict(spec.get("selector")).items()))
    return NetService(namespace, source.partition("/")[0], str(meta.get("name") or ""), selector)


class WorkloadSection:
    """The ``workloads`` section applied to one site's ``WorkloadModel``."""

    def __init__(self, site: str, model: WorkloadModel, is_bad: Any) -> None:
        self.site = site
        self.model = model
        self.is_bad = is_bad
        self.placed: dict[str, Placed] = {}  # model workload name -> what it came from
        self.created: dict[str, float] = {}  # model pod name -> when this section created it
        self.active = False  # a section was applied (its absence then removes the workloads)
        self.network: NamespaceNetwork | None = None  # from the first section on
        self.services: list[NetService] = []

    def apply(self, section: Any, now: float) -> list[ItemStatus]:
        if section is None:
            if self.active:
                self.model.set_workloads([], now)
                self.placed, self.active, self.services = {}, False, []
            return []
        if self.network is None:
            self.network = NamespaceNetwork(("vk8s-network", self.site), now)
        self.active = True
        objects = _dict(section).get("objects") if isinstance(section, dict) else None
        if not isinstance(objects, list):
            self.model.set_workloads([], now)
            self.placed = {}
            return [ItemStatus(SECTION, SECTION, "Failed", "the workloads section must hold an objects list")]
        items: list[ItemStatus] = []
        workloads: list[Workload] = []
        placed: dict[str, Placed] = {}
        services: list[NetService] = []
        for index, obj in enumerate(objects):
            if not isinstance(obj, dict):
                items.append(ItemStatus(SECTION, f"#{index}", "Failed", "not an object"))
                continue
            meta = _dict(obj.get("metadata"))
            item = f"{meta.get('namespace')}/{obj.get('kind')}/{meta.get('name')}"
            if obj.get("kind") not in WORKLOAD_KINDS:
                if obj.get("kind") == "Service":
                    services.append(_net_service(obj))
                items.append(ItemStatus(SECTION, item, "Applied"))
                continue
            parsed = parse_workload(obj, self.is_bad)
            if isinstance(parsed, str):
                items.append(ItemStatus(SECTION, item, "Failed", parsed))
                continue
            workloads.append(parsed[0])
            placed[parsed[0].name] = parsed[1]
        self.model.set_workloads(workloads, now)
        self.placed, self.services = placed, services
        self.created = {n: self.created.get(n, now) for n in self.model.pods}
        for name in sorted(placed):
            status = self.model.item_status(name)
            items.append(dataclasses.replace(status, name=name))
        return items

    def network_hits(self, now: float) -> dict[str, int]:
        """The namespace networks' verdict counters (``services.NamespaceNetwork``), as policy
        hits; the running pods are taken as they are now."""
        if self.network is None:
            return {}
        running = []
        for pod in self.model.pods.values():
            placed = self.placed.get(pod.workload.name)
            if placed is not None and pod.phase == "Running":
                labels = tuple(sorted(placed.labels.items()))
                running.append(NetPod(placed.namespace, placed.key.split("/", 1)[0], labels))
        self.network.set_state(running if self.active else [], self.services, now)
        return self.network.hits_at(now)

    def pod_name(self, placed: Placed, model_pod: str) -> str:
        index = model_pod.rsplit("-", 1)[1]
        if placed.kind == "StatefulSet":
            return f"{placed.name}-{index}"
        suffix = _safe(_hash(self.site, model_pod, placed.template_hash), 5)
        if placed.kind == "Job":
            return f"{placed.name}-{suffix}"
        return f"{placed.name}-{placed.template_hash}-{suffix}"

    def pods(self) -> tuple[dict[str, Any], ...] | None:
        """``Site.status.pods``; None when no section was ever applied."""
        if not self.active:
            return None
        out: list[dict[str, Any]] = []
        for pod in self.model.pods.values():
            placed = self.placed.get(pod.workload.name)
            if placed is None:
                continue
            labels = dict(placed.labels)
            if placed.kind == "Deployment":
                labels["pod-template-hash"] = placed.template_hash
            report: dict[str, Any] = {
                "namespace": placed.namespace,
                "name": self.pod_name(placed, pod.name),
                "workload": placed.key,
                "generation": placed.generation,
                "phase": pod.phase,
                "ready": pod.phase == "Running",
                "restarts": pod.restarts,
                "labels": labels,
                "containers": [dict(c) for c in placed.containers],
            }
            if pod.reason:
                report["reason"] = pod.reason[:1024]
            if pod.last_termination:
                report["lastTermination"] = pod.last_termination
            if pod.node:
                report["node"] = pod.node
            if pod.name in self.created:
                when = dt.datetime.fromtimestamp(self.created[pod.name], dt.UTC)
                report["createdAt"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(report)
        out.sort(key=lambda p: (p["namespace"], p["name"]))
        return tuple(out)
