"""The ``kubernetes`` driver: a site that is a Kubernetes cluster, reached through a
kubeconfig with the official ``kubernetes`` Python client (imported lazily, so the rest
of fleetplane works without it).

Sections:

``workloads``
    A list of Kubernetes objects (``Deployment``, ``Service``, ``ConfigMap``, ...),
    already rendered for the site; or the vK8s fan-out form ``{namespaces, objects}``,
    where each object goes into its own site-local namespace (server-side applied as a
    ``Namespace`` first, with the ``NetworkPolicy`` ``fleetplane-namespace-isolation``
    that admits ingress only from pods of the same namespace: the vK8s namespace's
    isolated network; items named ``<namespace>/<Kind>/<name>``). Each is server-side
    applied (``PATCH`` with ``Content-Type: application/apply-patch+yaml``, ``fieldManager=fleetplane``,
    ``force=true``) into the site namespace, labelled ``fleetplane.io/managed=true``.
    Objects of the managed kinds that carry that label but left the section are
    deleted (``propagationPolicy=Background``). Only namespaced objects are accepted.
    An absent section deletes every managed object.
``reservations``
    Not something the API can set: a node's reservation is the kubelet's
    ``--system-reserved``/``--kube-reserved`` configuration. The driver does not
    pretend to apply it; it *checks* it: the item is ``Applied`` when the cluster
    already holds back at least the requested amount (sum over nodes of capacity minus
    allocatable) and ``Failed`` otherwise, with the reason saying fleetplane cannot
    change it.

``observe()`` reads nodes (capacity, allocatable, readiness, OS image) from the API.
Usage is not measured (that needs metrics-server): ``usage`` reports the CPU and
memory *requested* by pods that are not finished, which is what the scheduler sees,
not what is consumed; disk usage is reported as 0. ``policyHits`` is always empty.

What is verified, and what is not: the tests check the pure parts (the apply/delete
requests, the managed-object diff, the node mapping, against the client's own model
classes) and that the official client, configured from a real kubeconfig file, sends
exactly the expected method, path, query, content type and body to a small recording
HTTP server in the test. No live cluster (nor kind/k3s) exists on the machine the
tests run on, so **this driver has not been run against a real Kubernetes API
server**: the API server's own behaviour (apply conflicts, admission, defaulting,
RBAC) is not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleetplane.agent.drivers.base import (
    Allocatable,
    ItemStatus,
    NodeInfo,
    NodeRole,
    Observation,
    Usage,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from kubernetes.client import ApiClient, V1Node, V1Pod

__all__ = ["DEFAULT_MANAGED_KINDS", "FIELD_MANAGER", "MANAGED_LABEL", "ApplyRequest", "KubernetesDriver"]
__all__ += ["ObjectRef", "managed_diff", "node_info", "plural", "render_apply", "render_delete"]

FIELD_MANAGER = "fleetplane"
MANAGED_LABEL = "fleetplane.io/managed"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
SUPPORTED_SECTIONS = ("reservations", "workloads")

# The kinds listed (by label) to find managed objects that left the section, besides
# those in the section now and those this process applied before.
DEFAULT_MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)

_IRREGULAR_PLURALS = {"Endpoints": "endpoints", "Ingress": "ingresses", "NetworkPolicy": "networkpolicies"}


def plural(kind: str) -> str:
    """The resource name of a kind, by the API's own convention (lower case, plural)."""
    if kind in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[kind]
    low = kind.lower()
    if low.endswith("y") and low[-2:-1] not in ("a", "e", "i", "o", "u"):
        return low[:-1] + "ies"
    if low.endswith(("s", "x", "ch", "sh")):
        return low + "es"
    return low + "s"


def _collection_path(api_version: str, kind: str, namespace: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural(kind)}"


@dataclasses.dataclass(frozen=True, order=True)
class ObjectRef:
    """One namespaced object: what the diff compares."""

    api_version: str
    kind: str
    name: str

    def path(self, namespace: str) -> str:
        return f"{_collection_path(self.api_version, self.kind, namespace)}/{self.name}"

    @property
    def item_name(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class ApplyRequest:
    """One HTTP request the driver makes: method, path, query, content type, body."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    content_type: str | None
    body: dict[str, Any] | None


def _ref(obj: Any) -> ObjectRef | str:
    if not isinstance(obj, Mapping):
        return "a workload must be a Kubernetes object (a mapping)"
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    for field, value in (("apiVersion", api_version), ("kind", kind), ("metadata.name", name)):
        if not isinstance(value, str) or not value:
            return f"a workload needs a non-empty {field}"
    assert isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)
    return ObjectRef(api_version, kind, name)


def render_apply(obj: Mapping[str, Any], namespace: str) -> ApplyRequest:
    """The server-side apply request for one object: into ``namespace`` (a different
    namespace in the object is an error), labelled as managed by fleetplane."""
    ref = _ref(obj)
    if isinstance(ref, str):
        raise ValueError(ref)
    body = json.loads(json.dumps(obj))  # a deep, JSON-clean copy
    meta = body["metadata"]
    if meta.get("namespace") not in (None, namespace):
        raise ValueError(f"{ref.item_name}: namespace {meta['namespace']!r} is not the site's {namespace!r}")
    meta["namespace"] = namespace
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"{ref.item_name}: metadata.labels must be a mapping")
    meta["labels"] = {**labels, MANAGED_LABEL: "true"}
    return ApplyRequest(
        "PATCH",
        ref.path(namespace),
        (("fieldManager", FIELD_MANAGER), ("force", "true")),
        APPLY_CONTENT_TYPE,
        body,
    )


def render_delete(ref: ObjectRef, namespace: str) -> ApplyRequest:
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    return ApplyRequest("DELETE", ref.path(namespace), (), "application/json", body)


def render_namespace(name: str) -> ApplyRequest:
    """Server-side apply of a site-local namespace (the vK8s fan-out form of the section)."""
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {MANAGED_LABEL: "true"}},
    }
    query = (("fieldManager", FIELD_MANAGER), ("force", "true"))
    return ApplyRequest("PATCH", f"/api/v1/namespaces/{name}", query, APPLY_CONTENT_TYPE, body)


ISOLATION_POLICY = "fleetplane-namespace-isolation"


def render_isolation(namespace: str) -> ApplyRequest:
    """The site-local namespace's isolated network: every pod of it admits ingress from pods
    of the same namespace only (a NetworkPolicy selecting all pods, one ``from`` peer that is
    ``podSelector: {}`` — same namespace). Egress stays open (DNS, the services it calls)."""
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": ISOLATION_POLICY, "namespace": namespace, "labels": {MANAGED_LABEL: "true"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]},
    }
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{ISOLATION_POLICY}"
    query = (("fieldManager", FIELD_MANAGER), ("force", "true"))
    return ApplyRequest("PATCH", path, query, APPLY_CONTENT_TYPE, body)


def render_list(api_version: str, kind: str, namespace: str) -> ApplyRequest:
    selector = f"{MANAGED_LABEL}=true"
    return ApplyRequest(
        "GET", _collection_path(api_version, kind, namespace), (("labelSelector", selector),), None, None
    )


def managed_diff(wanted: Iterable[ObjectRef], existing: Iterable[ObjectRef]) -> list[ObjectRef]:
    """The managed objects to delete: those that exist but are no longer wanted."""
    keep = set(wanted)
    return sorted(set(existing) - keep)


# --- nodes -------------------------------------------------------------------------


def _quantity(value: Any) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(value)) if value is not None else 0.0  # type: ignore[no-untyped-call]


def _role(labels: Mapping[str, str]) -> NodeRole:
    if "node-role.kubernetes.io/control-plane" in labels or "node-role.kubernetes.io/master" in labels:
        return "controller"
    if "node-role.kubernetes.io/storage" in labels:
        return "storage"
    return "worker"


def node_info(node: V1Node) -> tuple[NodeInfo, Allocatable, str | None]:
    """A node's inventory entry (capacity), its allocatable and its OS image."""
    meta, status = node.metadata, node.status
    capacity = (status.capacity if status else None) or {}
    allocatable = (status.allocatable if status else None) or {}
    conditions = (status.conditions if status else None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    info = NodeInfo(
        name=(meta.name if meta else None) or "",
        role=_role((meta.labels if meta else None) or {}),
        cpu_millis=round(_quantity(capacity.get("cpu")) * 1000),
        memory_bytes=int(_quantity(capacity.get("memory"))),
        disk_bytes=int(_quantity(capacity.get("ephemeral-storage"))),
        ready=ready,
    )
    alloc = Allocatable(
        round(_quantity(allocatable.get("cpu")) * 1000), int(_quantity(allocatable.get("memory")))
    )
    os_image = status.node_info.os_image if status and status.node_info else None
    return info, alloc, os_image


def pod_requests(pod: V1Pod) -> tuple[int, int]:
    """CPU millis and memory bytes requested by a pod that has not finished."""
    if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
        return 0, 0
    cpu = mem = 0
    for container in (pod.spec.containers if pod.spec else None) or []:
        requests = (container.resources.requests if container.resources else None) or {}
        cpu += round(_quantity(requests.get("cpu")) * 1000)
        mem += int(_quantity(requests.get("memory")))
    return cpu, mem


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


# --- the driver --------------------------------------------------------------------


class KubernetesDriver:
    """The ``Driver`` for a cluster. ``api_client`` (a ``kubernetes.client.ApiClient``)
    may be given; otherwise one is built from ``kubeconfig``/``context`` (the
    client's defaults: ``$KUBECONFIG`` or ``~/.kube/config``)."""

    name = "kubernetes"

    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: ApiClient | None = None,
        managed_kinds: Sequence[tuple[str, str]] = DEFAULT_MANAGED_KINDS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = namespace
        self._kubeconfig, self._context = kubeconfig, context
        self._api: ApiClient | None = api_client
        self._kinds: set[tuple[str, str]] = set(managed_kinds)
        self._namespaces: set[str] = {namespace}  # where managed objects may be (fan-out adds)
        self._now = now

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=self._kubeconfig, context=self._context)  # type: ignore[no-untyped-call]
        return self._api

    # --- HTTP through the official client ----------------------------------------

    def request(self, req: ApplyRequest) -> Any:
        """Send one request with the client's configuration (server, TLS, auth);
        the decoded JSON answer. Non-2xx raises ``kubernetes.client.ApiException``."""
        from kubernetes.client import ApiException

        headers = {"Accept": "application/json"}
        if req.content_type:
            headers["Content-Type"] = req.content_type
        method, url, hdrs, body, post = self.api.param_serialize(
            method=req.method,
            resource_path=req.path,
            query_params=list(req.query),
            header_params=headers,
            body=req.body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method, url, header_params=hdrs, body=body, post_params=post)
        resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return json.loads(resp.data) if resp.data else None

    # --- apply ---------------------------------------------------------------------

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        return await asyncio.to_thread(self.apply_sync, manifest)

    def apply_sync(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        spec = manifest.get("spec") or {}
        sections: Mapping[str, Any] = spec.get("sections") or {}
        items: list[ItemStatus] = []
        if "reservations" in sections:
            items.append(self._check_reservations(sections["reservations"]))
        items.extend(self._apply_workloads(sections.get("workloads", [])))
        for section in sorted(set(sections) - set(SUPPORTED_SECTIONS)):
            why = f"the kubernetes driver does not support section {section!r}"
            items.append(ItemStatus(section, section, "Failed", why))
        return items

    def _check_reservations(self, section: Any) -> ItemStatus:
        if not isinstance(section, Mapping):
            return ItemStatus(
                "reservations", "reservations", "Failed", "the reservations section must be an object"
            )
        want = (section.get("cpuMillis", 0), section.get("memoryBytes", 0))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in want):
            return ItemStatus(
                "reservations", "reservations", "Failed", "reservations must be non-negative integers"
            )
        try:
            nodes = self._nodes()
        except Exception as exc:
            return ItemStatus("reservations", "reservations", "Failed", f"cannot read nodes: {exc}")
        held_cpu = sum(n.cpu_millis - a.cpu_millis for n, a, _ in nodes)
        held_mem = sum(n.memory_bytes - a.memory_bytes for n, a, _ in nodes)
        if held_cpu >= want[0] and held_mem >= want[1]:
            why = (
                "enforced by the kubelet's system-reserved/kube-reserved (capacity - allocatable "
                "covers it); not set by fleetplane"
            )
            return ItemStatus("reservations", "reservations", "Applied", why)
        why = (
            f"the cluster holds back {held_cpu}m CPU and {held_mem} bytes (capacity - allocatable), "
            "less than "
            f"{want[0]}m and {want[1]} bytes; reservations are kubelet settings (system-reserved) that "
            "fleetplane cannot change through the API"
        )
        return ItemStatus("reservations", "reservations", "Failed", why)

    def _apply_workloads(self, section: Any) -> list[ItemStatus]:
        """The list form: objects into the driver's namespace. The vK8s fan-out form
        ``{namespaces, objects}`` (docs/site-manifest.md): each object into its own namespace
        (``<tenant>-<namespace>``), created (server-side applied, labelled managed) first;
        a namespace that leaves the section has its managed objects deleted, not itself."""
        qualify = isinstance(section, Mapping)
        by_ns: dict[str, list[Any]] = {}
        if isinstance(section, Mapping):
            objects = section.get("objects")
            if not isinstance(objects, list):
                return [
                    ItemStatus("workloads", "workloads", "Failed", "the workloads objects must be a list")
                ]
            for ns in section.get("namespaces") or []:
                if isinstance(ns, str) and ns:
                    by_ns[ns] = []
            for obj in objects:
                meta = obj.get("metadata") if isinstance(obj, Mapping) else None
                ns = meta.get("namespace") if isinstance(meta, Mapping) else None
                by_ns.setdefault(ns if isinstance(ns, str) and ns else self.namespace, []).append(obj)
        elif isinstance(section, list):
            by_ns[self.namespace] = section
        else:
            return [ItemStatus("workloads", "workloads", "Failed", "the workloads section must be a list")]
        items: list[ItemStatus] = []
        for ns in sorted(set(by_ns) | self._namespaces):
            if ns != self.namespace and ns in by_ns:
                try:
                    self.request(render_namespace(ns))
                    self.request(render_isolation(ns))
                except Exception as exc:
                    items.append(ItemStatus("workloads", f"Namespace/{ns}", "Failed", _reason(exc)))
                    continue
            items += self._apply_in(ns, by_ns.get(ns, []), qualify)
        self._namespaces = set(by_ns) | {self.namespace}
        return items

    def _apply_in(self, namespace: str, section: list[Any], qualify: bool) -> list[ItemStatus]:
        prefix = f"{namespace}/" if qualify else ""
        items: list[ItemStatus] = []
        wanted: list[ObjectRef] = []
        if namespace != self.namespace:  # a vK8s namespace: its isolation outlives its objects
            wanted.append(ObjectRef("networking.k8s.io/v1", "NetworkPolicy", ISOLATION_POLICY))
        for index, obj in enumerate(section):
            ref = _ref(obj)
            if isinstance(ref, str):
                items.append(ItemStatus("workloads", f"{prefix}#{index}", "Failed", ref))
                continue
            wanted.append(ref)  # a failed apply must not delete the object it left in place
            self._kinds.add((ref.api_version, ref.kind))
            try:
                self.request(render_apply(obj, namespace))
            except Exception as exc:
                items.append(ItemStatus("workloads", prefix + ref.item_name, "Failed", _reason(exc)))
            else:
                items.append(ItemStatus("workloads", prefix + ref.item_name, "Applied"))
        existing: list[ObjectRef] = []
        for api_version, kind in sorted(self._kinds):
            try:
                listed = self.request(render_list(api_version, kind, namespace))
            except Exception as exc:
                why = f"cannot list: {_reason(exc)}"
                items.append(ItemStatus("workloads", f"{prefix}{kind}/*", "Failed", why))
                continue
            for entry in (listed or {}).get("items") or []:
                name = (entry.get("metadata") or {}).get("name")
                if isinstance(name, str):
                    existing.append(ObjectRef(api_version, kind, name))
        for ref in managed_diff(wanted, existing):
            try:
                self.request(render_delete(ref, namespace))
            except Exception as exc:
                items.append(
                    ItemStatus(
                        "workloads", prefix + ref.item_name, "Failed", f"cannot delete: {_reason(exc)}"
                    )
                )
        return items

    # --- observe -------------------------------------------------------------------

    def _nodes(self) -> list[tuple[NodeInfo, Allocatable, str | None]]:
        from kubernetes.client import CoreV1Api

        return [node_info(n) for n in CoreV1Api(self.api).list_node().items]

    async def observe(self) -> Observation:
        return await asyncio.to_thread(self.observe_sync)

    def observe_sync(self) -> Observation:
        from kubernetes.client import CoreV1Api

        nodes = self._nodes()
        pods = CoreV1Api(self.api).list_pod_for_all_namespaces().items
        cpu = mem = 0
        for pod in pods:
            c, m = pod_requests(pod)
            cpu, mem = cpu + c, mem + m
        cap_cpu = sum(n.cpu_millis for n, _, _ in nodes)
        cap_mem = sum(n.memory_bytes for n, _, _ in nodes)
        images = sorted({img for _, _, img in nodes if img})
        return Observation(
            nodes=tuple(n for n, _, _ in nodes),
            usage=Usage(cpu, mem, 0, _percent(cpu, cap_cpu), _percent(mem, cap_mem)),
            allocatable=Allocatable(
                sum(a.cpu_millis for _, a, _ in nodes), sum(a.memory_bytes for _, a, _ in nodes)
            ),
            os_version=", ".join(images) if images else None,
            policy_hits={},
            now=self._now(),
        )


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is not None:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        with contextlib.suppress(ValueError, AttributeError):
            text = json.loads(text).get("message", text)
        return f"HTTP {status}: {text}".strip()
    return f"{type(exc).__name__}: {exc}"
