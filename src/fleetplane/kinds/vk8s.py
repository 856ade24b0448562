"""VK8s: one namespace's virtual Kubernetes API, and the Kubernetes kinds it stores.

Creating a ``VK8s`` object (at most one per namespace) activates a Kubernetes-compatible API
at ``/api/vK8s/namespaces/<namespace>/<name>/`` (``server/vk8s``). ``spec.virtualSite`` names
the default virtual site its workloads fan out to (``name`` in the same namespace, or
``shared/name``).

The Kubernetes objects served there (Deployments, Services, ...) live in the one store like
every other object: keyed by (tenant, store kind, namespace, name), with the store's revision
as their ``resourceVersion``. Their store kind is the Kubernetes kind under a ``vk8s.<group>``
prefix (``vk8s.apps.Deployment``, ``vk8s.core.Secret``), so they never collide with native
kinds of the same name (the native ``Secret``); :data:`K8S_RESOURCES` is that mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from fleetplane.core.errors import Cause
from fleetplane.core.objects import Obj
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema

STORE_PREFIX = "vk8s."
OVERRIDE_GROUP = "ves.io"
API_PREFIX = "/api/vK8s/namespaces"


class VK8sSpec(Schema):
    # "name" (a VirtualSite in this namespace) or "shared/name".
    virtualSite: str = Field(min_length=1, max_length=317)
    description: str | None = Field(default=None, max_length=4096)


class VK8sStatus(Schema):
    # Written by the fan-out controller (next step); the API does not depend on it.
    apiPath: str = ""


def virtual_site_ref(obj: Obj) -> tuple[str, str]:
    """(namespace, name) of the VirtualSite that ``spec.virtualSite`` names."""
    ref = str((obj.get("spec") or {}).get("virtualSite") or "")
    ns, _, name = ref.rpartition("/")
    return ns or str((obj.get("metadata") or {}).get("namespace") or ""), name


def _references(obj: Obj, lookup: Callable[[str, str, str], Obj | None]) -> list[Cause]:
    ns, name = virtual_site_ref(obj)
    own = str((obj.get("metadata") or {}).get("namespace") or "")
    if ns not in (own, "shared"):
        return [Cause("spec.virtualSite", 'must name a VirtualSite of this namespace or of "shared"')]
    if lookup("VirtualSite", ns, name) is None:
        return [Cause("spec.virtualSite", f'VirtualSite "{ns}/{name}" not found', "FieldValueNotFound")]
    return []


VK8S = KindInfo(
    kind="VK8s",
    plural="vk8s",
    short_names=("vk8",),
    spec_model=VK8sSpec,
    status_model=VK8sStatus,
    scope=Scope.NAMESPACE,
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("VIRTUAL-SITE", "spec.virtualSite"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
    extra={"references": _references},
)


def api_path(namespace: str, name: str) -> str:
    return f"{API_PREFIX}/{namespace}/{name}"


# -- the Kubernetes kinds a vK8s serves ------------------------------------------------------


@dataclass(frozen=True)
class K8sResource:
    """One Kubernetes resource type as vK8s serves it, and how it is stored."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "scale"
    read_only: bool = False  # Pods: written by fan-out only
    sealed: tuple[str, ...] = ()
    sensitive: bool = False
    # Workloads fan out to sites; the rest follow their workloads (docs/vk8s.md).
    workload: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_kind(self) -> str:
        return f"{STORE_PREFIX}{self.group or 'core'}.{self.kind}"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def info(self) -> KindInfo:
        """The kind as authorization and sealing see it (not in the native registry)."""
        return _INFOS[self.store_kind]


K8S_RESOURCES: tuple[K8sResource, ...] = (
    K8sResource(
        "apps", "v1", "Deployment", "deployments", ("deploy",), ("all",), ("status", "scale"), workload=True
    ),
    K8sResource(
        "apps", "v1", "StatefulSet", "statefulsets", ("sts",), ("all",), ("status", "scale"), workload=True
    ),
    K8sResource("batch", "v1", "Job", "jobs", (), ("all",), ("status",), workload=True),
    K8sResource("", "v1", "Service", "services", ("svc",), ("all",), ("status",)),
    K8sResource("", "v1", "ConfigMap", "configmaps", ("cm",)),
    # The last-applied annotation kubectl writes holds the data too: annotations are sealed as well.
    K8sResource(
        "", "v1", "Secret", "secrets", (), (), (), sealed=("data", "metadata.annotations"), sensitive=True
    ),
    K8sResource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", ("pvc",), (), ("status",)),
    K8sResource("", "v1", "Pod", "pods", ("po",), ("all",), ("status",), read_only=True),
    K8sResource("", "v1", "Event", "events", ("ev",)),
    # The fan-out's own custom resource (docs/vk8s.md, "Fan-out"): a site list and a spec that
    # replaces a workload's spec on those sites, named in order by its ``ves.io/overrides``.
    K8sResource(OVERRIDE_GROUP, "v1", "Override", "overrides", ("ovr",)),
)

_INFOS: dict[str, KindInfo] = {
    r.store_kind: KindInfo(
        kind=r.store_kind,
        plural=r.plural,
        spec_model=None,
        scope=Scope.NAMESPACE,
        sealed_paths=r.sealed,
        sensitive=r.sensitive,
        api_write_verbs=frozenset() if r.read_only else None,
    )
    for r in K8S_RESOURCES
}
BY_STORE_KIND = {r.store_kind: r for r in K8S_RESOURCES}


OVERRIDE = next(r for r in K8S_RESOURCES if r.kind == "Override")


def k8s_resource(group: str, version: str, plural: str) -> K8sResource | None:
    for r in K8S_RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None
