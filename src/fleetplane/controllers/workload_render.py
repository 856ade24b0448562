"""Pure parts of the workload status controller: a site's pod report as a Kubernetes Pod, a pod's
state as the workload view names it, and a workload's status summed over its sites.

- **Pods**: every pod a site reports for a vK8s namespace, named as the site names it
  (StatefulSet pods, whose names repeat on every site, get ``.<site>`` appended), labelled and
  annotated ``ves.io/site: <site>``, with ``spec.nodeName`` ``<site>-<node>``.
- **Workload status** (Deployments, StatefulSets, Jobs): ``replicas`` (pods reported),
  ``updatedReplicas`` (pods of the current generation), ``readyReplicas``/``availableReplicas``;
  ``observedGeneration`` reaches the generation once every placed site has applied a manifest
  carrying it; conditions ``Available``/``Progressing`` as upstream names them; and
  ``status.fleet``: the desired total, site counts by state, pod counts by state, the failing
  sites with their reasons and each site's counts (docs/vk8s.md, "Workload view").
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleetplane.core.objects import Obj

SITE_KEY = "ves.io/site"
POD_STORE_KIND = "vk8s.core.Pod"
_UID_NS = uuid.UUID("5b0f5b4e-4a52-4d39-9a57-0f2f1b9c3a11")
MAX_FAILING = 50  # failing sites listed in status.fleet (the counts cover all of them)
# Pod states of the workload view, in the order a console shows them.
POD_STATES = (
    "Running",
    "ContainerCreating",
    "ImagePullBackOff",
    "CrashLoopBackOff",
    "OOMKilled",
    "Pending",
)
WAITING = ("CrashLoopBackOff", "ContainerCreating", "ImagePullBackOff", "ErrImagePull")


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def pod_state(pod: dict[str, Any]) -> str:
    """One of :data:`POD_STATES` for a site's pod report."""
    phase = str(pod.get("phase") or "Pending")
    if phase == "Running":
        return "Running" if pod.get("ready", True) else "ContainerCreating"
    if phase == "CrashLoopBackOff":
        return "OOMKilled" if pod.get("lastTermination") == "OOMKilled" else "CrashLoopBackOff"
    if phase in ("ImagePullBackOff", "ErrImagePull"):
        return "ImagePullBackOff"
    if phase == "ContainerCreating":
        return phase
    return "Pending"


def pod_name(site: str, pod: dict[str, Any]) -> str:
    name = str(pod.get("name") or "")
    return f"{name}.{site}" if str(pod.get("workload") or "").split("/")[1:2] == ["StatefulSet"] else name


def _container_status(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    phase, reason = pod.get("phase"), pod.get("reason")
    state: dict[str, Any]
    if phase == "Running":
        state = {"running": {}}
    elif phase in WAITING:
        state = {"waiting": {"reason": phase, "message": reason or ""}}
    else:
        state = {"waiting": {"reason": "Pending"}}
    out = {
        "name": container.get("name", ""),
        "image": container.get("image", ""),
        "imageID": "",
        "ready": bool(pod.get("ready")),
        "started": phase == "Running",
        "restartCount": int(pod.get("restarts") or 0),
        "state": state,
    }
    if pod.get("lastTermination"):
        code = 137 if pod["lastTermination"] == "OOMKilled" else 1
        out["lastState"] = {"terminated": {"reason": pod["lastTermination"], "exitCode": code}}
    return out


def pod_object(namespace: str, site_name: str, pod: dict[str, Any]) -> Obj:
    """One reported pod as a Kubernetes Pod of the vK8s namespace (stored form: no server
    metadata, ``kind`` under the vK8s store prefix)."""
    workload = str(pod.get("workload") or "")
    _, kind, owner = [*workload.split("/", 2), "", ""][:3]
    name = pod_name(site_name, pod)
    phase = str(pod.get("phase") or "Pending")
    k8s_phase = "Running" if phase in ("Running", "CrashLoopBackOff") else "Pending"
    containers = [_d(c) for c in pod.get("containers") or []]
    ready = bool(pod.get("ready"))
    node = pod.get("node")
    conditions = [
        {"type": "PodScheduled", "status": "True" if node else "False"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "True" if ready else "False"},
        {"type": "Ready", "status": "True" if ready else "False"},
    ]
    if not node:
        conditions[0] |= {"reason": "Unschedulable", "message": pod.get("reason") or ""}
    annotations = {SITE_KEY: site_name, "ves.io/site-namespace": str(pod.get("namespace"))}
    if pod.get("createdAt"):
        annotations["ves.io/site-created-at"] = str(pod["createdAt"])  # the site's clock
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**{str(k): str(v) for k, v in _d(pod.get("labels")).items()}, SITE_KEY: site_name},
        "annotations": annotations,
    }
    if kind and owner:
        group = "batch/v1" if kind == "Job" else "apps/v1"
        meta["ownerReferences"] = [{"apiVersion": group, "kind": kind, "name": owner, "controller": True}]
    status: dict[str, Any] = {
        "phase": k8s_phase,
        "conditions": conditions,
        "containerStatuses": [_container_status(pod, c) for c in containers],
    }
    if phase in WAITING and pod.get("reason"):
        status["message"] = pod["reason"]
    return {
        "apiVersion": "v1",
        "kind": POD_STORE_KIND,
        "metadata": meta,
        "spec": {
            "nodeName": f"{site_name}-{node}" if node else "",
            "containers": [
                {"name": c.get("name", ""), "image": c.get("image", ""), "resources": _d(c.get("resources"))}
                for c in containers
            ],
            "restartPolicy": "Never" if kind == "Job" else "Always",
            "schedulerName": "default-scheduler",
        },
        "status": status,
    }


# -- workload status -------------------------------------------------------------------------


@dataclass(slots=True)
class Placement:
    """One site a workload is rendered for (its SiteManifest) and what the site reports."""

    site: str
    desired: int  # replicas (Jobs: parallelism) as rendered for the site, overrides included
    at: int  # the workload generation the rendered object carries
    manifest_generation: int  # the SiteManifest's generation
    applied: int = 0  # the manifest generation the site reports
    item: tuple[str, str | None] | None = None  # (state, reason) of its manifest item
    pods: list[dict[str, Any]] = field(default_factory=list)


def desired_of(obj: Obj) -> int:
    spec = _d(obj.get("spec"))
    value = spec.get("parallelism" if obj.get("kind") == "Job" else "replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _site_state(p: Placement, generation: int, observed: bool) -> tuple[str, str | None]:
    """deployed / inProgress / failed, and why a site fails."""
    # A Pending pod fails its site only with a reason (the scheduler found no room).
    failing = [
        (pod_state(pod), str(pod.get("reason") or ""))
        for pod in p.pods
        if pod_state(pod) in POD_STATES[2:] and (pod_state(pod) != "Pending" or pod.get("reason"))
    ]
    if failing:
        bad, reason = min(failing, key=lambda f: POD_STATES.index(f[0]))
        return "failed", f"{bad}: {reason}" if reason else bad
    if p.item is not None and p.item[0] == "Failed":
        return "failed", p.item[1] or "failed"
    ready_now = sum(1 for pod in p.pods if pod.get("ready") and pod.get("generation") == generation)
    if observed and ready_now >= p.desired and len(p.pods) == p.desired:
        return "deployed", None
    return "inProgress", None


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """One placement's part of a workload status (:func:`summarize`)."""

    entry: dict[str, Any]  # the site's ``perSite`` entry (shared: never modified)
    observed: bool
    pod_states: tuple[tuple[str, int], ...]  # pod counts by state, the states present


def summarize(p: Placement, generation: int) -> SiteSummary:
    """What one site adds to the status of a workload at ``generation``: a pure function of
    the placement, so the controller keeps it while the site's report and manifest stay."""
    observed = p.at == generation and p.applied >= p.manifest_generation
    state, why = _site_state(p, generation, observed)
    states: dict[str, int] = {}
    updated = ready = 0
    for pod in p.pods:
        name = pod_state(pod)
        states[name] = states.get(name, 0) + 1
        updated += pod.get("generation") == generation
        ready += bool(pod.get("ready"))
    entry: dict[str, Any] = {
        "site": p.site,
        "state": state,
        "desiredReplicas": p.desired,
        "replicas": len(p.pods),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "observed": observed,
    }
    if why is not None:
        entry["reason"] = why
    return SiteSummary(entry, observed, tuple(states.items()))


def workload_status(
    kind: str,
    name: str,
    generation: int,
    placements: list[Placement],
    summaries: list[SiteSummary] | None = None,
) -> dict[str, Any]:
    """The status of one workload summed over ``placements`` (sorted by site), or over their
    ``summaries`` when the caller kept them."""
    if summaries is None:
        summaries = [summarize(p, generation) for p in placements]
    per_site: list[dict[str, Any]] = []
    failing: list[dict[str, Any]] = []
    site_states: Counter[str] = Counter()
    pod_states: Counter[str] = Counter()
    observed_all = True
    for summary in summaries:
        entry = summary.entry
        observed_all = observed_all and summary.observed
        site_states[entry["state"]] += 1
        for state, count in summary.pod_states:
            pod_states[state] += count
        per_site.append(entry)
        if "reason" in entry and len(failing) < MAX_FAILING:
            failing.append({"site": entry["site"], "reason": entry["reason"]})
    desired = sum(s["desiredReplicas"] for s in per_site)
    ready = sum(s["readyReplicas"] for s in per_site)
    updated = sum(s["updatedReplicas"] for s in per_site)
    # On no site (an empty virtual site), nothing runs: not available.
    available = bool(per_site) and observed_all and ready >= desired and updated >= desired
    fleet = {
        "sites": len(per_site),
        "desiredReplicas": desired,
        "siteStates": {s: site_states.get(s, 0) for s in ("deployed", "inProgress", "failed")},
        "podStates": {s: pod_states.get(s, 0) for s in POD_STATES},
        "failing": failing,
        "perSite": per_site,
    }
    status: dict[str, Any] = {
        "observedGeneration": generation if observed_all else max(generation - 1, 0),
        "replicas": sum(s["replicas"] for s in per_site),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "fleet": fleet,
    }
    if kind == "Deployment":
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": f"{ready}/{desired} replicas ready on {len(per_site)} sites"
                if per_site
                else "placed on no site (its virtual sites select none)",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                "message": f'Deployment "{name}" '
                + ("has successfully progressed." if available else "is progressing."),
            },
        ]
    elif kind == "StatefulSet":
        status["currentReplicas"] = updated
    else:  # Job: completion is not modelled; running pods are active
        status = {"active": ready, "fleet": fleet}
    return status
