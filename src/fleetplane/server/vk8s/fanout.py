"""The read side of fan-out: Pods and workload status aggregated from what sites report.

Computed when asked, from the stored ``Site`` objects (``status.pods``, ``status.manifest``)
and ``SiteManifest``\\ s (what each site should run): nothing is written back.

- **Pods** (read-only): every pod a site reports for the vK8s's namespace (its site-local
  namespace ``<tenant>-<namespace>``), named as the site names it (StatefulSet pods, whose
  names repeat on every site, get ``.<site>`` appended), labelled and annotated
  ``ves.io/site: <site>``, with ``spec.nodeName`` ``<site>-<node>``.
- **Workload status** (Deployments, StatefulSets, Jobs): summed over the sites the workload is
  placed on (its SiteManifests): ``replicas`` (pods reported), ``updatedReplicas`` (pods of
  the current generation), ``readyReplicas``/``availableReplicas`` (running);
  ``observedGeneration`` is the generation once every placed site has applied a manifest
  carrying it; conditions ``Available`` and ``Progressing`` as upstream names them; and
  ``status.fleet``: the desired total (replicas per site, overrides included) and each site's
  counts. The Deployment table's READY column shows ready/desired-total (``9/9``).

A watch does not see these (they are not stored): ``kubectl get -w``/``rollout status`` see
the status of the first list, then changes of the object itself.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fleetplane.core.objects import Obj
from fleetplane.kinds import SITE, SITE_MANIFEST
from fleetplane.server.context import ServerContext

SITE_KEY = "ves.io/site"
SOURCE_ANNOTATION = "fleetplane.io/vk8s-source"
GENERATION_ANNOTATION = "fleetplane.io/vk8s-generation"
_UID_NS = uuid.UUID("5b0f5b4e-4a52-4d39-9a57-0f2f1b9c3a11")


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class FleetView:
    """One tenant's site reports and manifests, for one vK8s namespace."""

    tenant: str
    namespace: str
    sites: list[Obj] = field(default_factory=list)
    manifests: dict[str, Obj] = field(default_factory=dict)  # site -> SiteManifest

    @property
    def site_namespace(self) -> str:
        return f"{self.tenant}-{self.namespace}"

    def reported(self) -> list[tuple[Obj, dict[str, Any]]]:
        """(site, pod report) for every pod of this namespace."""
        out = []
        for site in self.sites:
            for pod in _d(site.get("status")).get("pods") or []:
                if isinstance(pod, dict) and pod.get("namespace") == self.site_namespace:
                    out.append((site, pod))
        return out


def load_view(ctx: ServerContext, tenant: str, namespace: str, *, manifests: bool) -> FleetView:
    view = FleetView(tenant, namespace)
    view.sites = ctx.store.list(tenant, SITE.kind).items
    if manifests:
        for obj in ctx.store.list(tenant, SITE_MANIFEST.kind).items:
            view.manifests[obj["metadata"]["name"]] = obj
    return view


# -- pods -----------------------------------------------------------------------------------


def _container_status(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    phase, reason = pod.get("phase"), pod.get("reason")
    state: dict[str, Any]
    if phase == "Running":
        state = {"running": {}}
    elif phase == "CrashLoopBackOff":
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": reason or ""}}
    elif phase == "ContainerCreating":
        state = {"waiting": {"reason": "ContainerCreating", "message": reason or ""}}
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
        out["lastState"] = {"terminated": {"reason": pod["lastTermination"], "exitCode": 137}}
    return out


def pod_object(namespace: str, site: Obj, pod: dict[str, Any]) -> Obj:
    """One reported pod as a Kubernetes Pod of the vK8s namespace."""
    site_name = str(site["metadata"]["name"])
    workload = str(pod.get("workload") or "")
    _, kind, owner = [*workload.split("/", 2), "", ""][:3]
    name = str(pod.get("name") or "")
    if kind == "StatefulSet":
        name = f"{name}.{site_name}"
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
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid5(_UID_NS, f"{site_name}/{pod.get('namespace')}/{name}")),
        "resourceVersion": str(site["metadata"].get("resourceVersion", "")),
        "labels": {**{str(k): str(v) for k, v in _d(pod.get("labels")).items()}, SITE_KEY: site_name},
        "annotations": {SITE_KEY: site_name, "ves.io/site-namespace": str(pod.get("namespace"))},
    }
    if pod.get("createdAt"):
        meta["creationTimestamp"] = str(pod["createdAt"])
    if kind and owner:
        group = "batch/v1" if kind == "Job" else "apps/v1"
        meta["ownerReferences"] = [{"apiVersion": group, "kind": kind, "name": owner, "controller": True}]
    status: dict[str, Any] = {
        "phase": k8s_phase,
        "conditions": conditions,
        "containerStatuses": [_container_status(pod, c) for c in containers],
    }
    if phase == "CrashLoopBackOff" and pod.get("reason"):
        status["message"] = pod["reason"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
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


def pods(view: FleetView) -> list[Obj]:
    out = [pod_object(view.namespace, site, pod) for site, pod in view.reported()]
    out.sort(key=lambda p: p["metadata"]["name"])
    return out


# -- workload status -------------------------------------------------------------------------


def _desired(obj: Obj) -> int:
    spec = _d(obj.get("spec"))
    value = spec.get("parallelism" if obj.get("kind") == "Job" else "replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def with_status(view: FleetView, obj: Obj) -> Obj:
    """``obj`` (a workload in its Kubernetes form) with its status aggregated over its sites."""
    meta = obj["metadata"]
    kind, name = str(obj.get("kind")), str(meta["name"])
    generation = int(meta.get("generation") or 1)
    key = f"{view.namespace}/{kind}/{name}"
    source = f"{view.namespace}/{name}"
    reports: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reporter, pod in view.reported():
        if pod.get("workload") == key:
            reports[str(reporter["metadata"]["name"])].append(pod)
    applied = {
        str(s["metadata"]["name"]): int(_d(_d(s.get("status")).get("manifest")).get("generation") or 0)
        for s in view.sites
    }
    per_site: list[dict[str, Any]] = []
    observed_all = True
    for site, manifest in sorted(view.manifests.items()):
        section = _d(_d(_d(manifest.get("spec")).get("sections")).get("workloads"))
        rendered = next(
            (
                o
                for o in section.get("objects") or []
                if isinstance(o, dict)
                and o.get("kind") == kind
                and _d(_d(o.get("metadata")).get("annotations")).get(SOURCE_ANNOTATION) == source
            ),
            None,
        )
        if rendered is None:
            continue
        at = str(_d(_d(rendered.get("metadata")).get("annotations")).get(GENERATION_ANNOTATION) or "0")
        observed = at == str(generation) and applied.get(site, 0) >= int(
            manifest["metadata"].get("generation") or 0
        )
        observed_all = observed_all and observed
        pods_here = reports.get(site, [])
        per_site.append(
            {
                "site": site,
                "desiredReplicas": _desired(rendered),
                "replicas": len(pods_here),
                "updatedReplicas": sum(1 for p in pods_here if p.get("generation") == generation),
                "readyReplicas": sum(1 for p in pods_here if p.get("ready")),
                "observed": observed,
            }
        )
    desired = sum(s["desiredReplicas"] for s in per_site)
    ready = sum(s["readyReplicas"] for s in per_site)
    updated = sum(s["updatedReplicas"] for s in per_site)
    # On no site (an empty virtual site), nothing runs: not available.
    available = bool(per_site) and observed_all and ready >= desired and updated >= desired
    status: dict[str, Any] = {
        "observedGeneration": generation if observed_all else max(generation - 1, 0),
        "replicas": sum(s["replicas"] for s in per_site),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "fleet": {"sites": len(per_site), "desiredReplicas": desired, "perSite": per_site},
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
        status = {"active": ready, "fleet": status["fleet"]}
    return {**obj, "status": status}
