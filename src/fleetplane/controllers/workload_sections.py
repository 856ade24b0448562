"""The ``workloads`` section: vK8s objects fanned out to the sites they are placed on.

A vK8s workload (Deployment, StatefulSet, Job; ``K8sResource.workload``) is **placed** on the
members of its namespace's ``VK8s`` ``spec.virtualSite``, or on the union of the virtual sites
its annotation ``ves.io/virtual-sites: "<ns>/<vs>,shared/<vs2>"`` names (a bare name means the
workload's own namespace; another namespace than its own or ``shared`` is ignored, as for
intents). Services, ConfigMaps, Secrets and PVCs **follow** the workloads that use them: a
Service whose selector matches a placed workload's pod labels, the ConfigMaps/Secrets its pod
spec references (volumes, projected volumes, ``envFrom``, ``env.valueFrom``,
``imagePullSecrets``), the claims its volumes name.

Per site the workload is **rendered** (``render_workload``): the ``Override`` objects named in
order by ``ves.io/overrides`` whose ``spec.sites`` list the site replace its spec by their
``spec.spec`` (the last one listing the site wins; an unknown name is reported in the
section's ``problems``), then ``ves.io/workload-flavor`` (``tiny`` default, ``medium``,
``large``) sets every container's limits, with requests at 50 %. Everything goes into the
site-local namespace ``<tenant>-<namespace>``.

The compile controller cannot follow these objects like intents (they have no
``spec.virtualSites``, and placement depends on the namespace's VK8s and on annotations), so
``ManifestState`` keeps a ``FanoutIndex`` beside its intents: it answers which virtual sites a
change touches, and hands the contributor one *bundle* per namespace placed on the site (the
workloads placed there, and every follower and Override of the namespace). The contributor is
registered in ``SECTIONS`` under the pseudo kind ``vk8s`` (never stored, so the generic intent
machinery — history, rollouts — sees no objects of it).

Secrets are carried as stored: their ``data`` values stay sealed in the SiteManifest (at rest,
as in the store); the site-facing manifest endpoint opens them for the one site whose mTLS
certificate asks (``server/site_manifest_api.py``). Each rendered Secret names its source in
the annotation ``fleetplane.io/vk8s-source`` — the sealing context.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetplane.core.objects import Obj
from fleetplane.core.store import Event, EventType
from fleetplane.kinds.intents import SHARED_NAMESPACE, parse_ref
from fleetplane.kinds.vk8s import BY_STORE_KIND, K8S_RESOURCES, OVERRIDE, VK8S, virtual_site_ref

VsKey = tuple[str, str, str]  # tenant, namespace, name
NsKey = tuple[str, str]  # tenant, namespace

FANOUT_KIND = "vk8s"  # the contributor's key in SECTIONS: a pseudo kind, never stored
SECTION = "workloads"
WORKLOAD_KINDS = tuple(r.store_kind for r in K8S_RESOURCES if r.workload)
FOLLOWER_KINDS = tuple(
    r.store_kind
    for r in K8S_RESOURCES
    if r.kind in ("Service", "ConfigMap", "Secret", "PersistentVolumeClaim")
)
OVERRIDE_KIND = OVERRIDE.store_kind
# What the compile controller must watch besides its intents.
FANOUT_KINDS = (VK8S.kind, *WORKLOAD_KINDS, *FOLLOWER_KINDS, OVERRIDE_KIND)

VIRTUAL_SITES_ANNOTATION = "ves.io/virtual-sites"
OVERRIDES_ANNOTATION = "ves.io/overrides"
FLAVOR_ANNOTATION = "ves.io/workload-flavor"
SOURCE_ANNOTATION = "fleetplane.io/vk8s-source"  # "<namespace>/<name>" of the vK8s object
GENERATION_ANNOTATION = "fleetplane.io/vk8s-generation"  # its metadata.generation
OVERRIDES_APPLIED_ANNOTATION = "fleetplane.io/vk8s-overrides"  # the Overrides applied on this site
# Rendered objects, in this order per namespace: what a workload uses comes before it.
_ORDER = {"ConfigMap": 0, "Secret": 1, "PersistentVolumeClaim": 2, "Service": 3}


@dataclass(frozen=True)
class Flavor:
    cpu_millis: int
    memory_mib: int

    def limits(self) -> dict[str, str]:
        return {"cpu": f"{self.cpu_millis}m", "memory": f"{self.memory_mib}Mi"}

    def requests(self) -> dict[str, str]:
        """50 % of the limits (rounded down to a millicore / MiB)."""
        return {"cpu": f"{self.cpu_millis // 2}m", "memory": f"{self.memory_mib // 2}Mi"}


FLAVORS = {"tiny": Flavor(100, 100), "medium": Flavor(250, 250), "large": Flavor(1000, 1024)}
DEFAULT_FLAVOR = "tiny"


def site_namespace(tenant: str, namespace: str) -> str:
    return f"{tenant}-{namespace}"


def workload_key(namespace: str, kind: str, name: str) -> str:
    """How a section and a site's pods name a vK8s workload: ``<namespace>/<Kind>/<name>``."""
    return f"{namespace}/{kind}/{name}"


def _meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _annotations(obj: Obj) -> dict[str, Any]:
    a = _meta(obj).get("annotations")
    return a if isinstance(a, dict) else {}


def _names(text: Any) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else []


# -- placement ------------------------------------------------------------------------------


def default_virtual_site(tenant: str, vk8s: Obj) -> VsKey | None:
    """The VK8s's ``spec.virtualSite`` (its own namespace or ``shared``), else None."""
    ns, name = virtual_site_ref(vk8s)
    own = str(_meta(vk8s).get("namespace") or "")
    return (tenant, ns, name) if ns in (own, SHARED_NAMESPACE) and name else None


def placement(tenant: str, workload: Obj, default: VsKey | None) -> set[VsKey]:
    """The virtual sites a workload runs on: its annotation's (a union), else the default."""
    own = str(_meta(workload).get("namespace") or "")
    annotation = _annotations(workload).get(VIRTUAL_SITES_ANNOTATION)
    if isinstance(annotation, str) and annotation.strip():
        out: set[VsKey] = set()
        for ref in _names(annotation):
            ns, name = parse_ref(ref, own)
            if ns in (own, SHARED_NAMESPACE) and name:
                out.add((tenant, ns, name))
        return out
    return {default} if default is not None else set()


# -- rendering for one site -------------------------------------------------------------------


def pod_spec_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    template = spec.get("template")
    pod = template.get("spec") if isinstance(template, dict) else None
    return pod if isinstance(pod, dict) else None


def apply_overrides(
    spec: dict[str, Any], names: list[str], overrides: dict[str, Obj], site: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``spec`` as ``site`` runs it: each named Override (in order) that lists the site replaces
    it by its ``spec.spec``. Returns the spec, the Overrides applied, the names not found."""
    applied: list[str] = []
    missing: list[str] = []
    for name in names:
        override = overrides.get(name)
        if override is None:
            missing.append(name)
            continue
        ospec = override.get("spec") if isinstance(override.get("spec"), dict) else {}
        assert isinstance(ospec, dict)
        sites = ospec.get("sites")
        replacement = ospec.get("spec")
        if isinstance(sites, list) and site in sites and isinstance(replacement, dict):
            spec = copy.deepcopy(replacement)
            applied.append(name)
    return spec, applied, missing


def apply_flavor(spec: dict[str, Any], flavor: Flavor) -> None:
    """Every container (and init container) of the pod template gets the flavor's limits and
    requests at 50 % of them, replacing what it asked for."""
    pod = pod_spec_of(spec)
    if pod is None:
        return
    for key in ("initContainers", "containers"):
        for container in pod.get(key) or []:
            if isinstance(container, dict):
                container["resources"] = {"limits": flavor.limits(), "requests": flavor.requests()}


def flavor_of(workload: Obj) -> tuple[Flavor, str | None]:
    """The workload's flavor, and a problem when its annotation names no flavor (then tiny)."""
    name = _annotations(workload).get(FLAVOR_ANNOTATION) or DEFAULT_FLAVOR
    if name in FLAVORS:
        return FLAVORS[name], None
    return FLAVORS[DEFAULT_FLAVOR], f'unknown {FLAVOR_ANNOTATION} "{name}": using "{DEFAULT_FLAVOR}"'


def _header(obj: Obj, site_ns: str, annotations: dict[str, str]) -> Obj:
    r = BY_STORE_KIND[obj["kind"]]
    m = _meta(obj)
    labels = m.get("labels") if isinstance(m.get("labels"), dict) else {}
    meta: dict[str, Any] = {"name": m["name"], "namespace": site_ns}
    if labels:
        meta["labels"] = dict(labels)
    source = {SOURCE_ANNOTATION: f"{m.get('namespace', '')}/{m['name']}"}
    meta["annotations"] = {**annotations, **source}
    return {"apiVersion": r.api_version, "kind": r.kind, "metadata": meta}


def render_workload(tenant: str, obj: Obj, overrides: dict[str, Obj], site: str) -> tuple[Obj, list[str]]:
    """The workload as ``site`` runs it, and the problems found (unknown Overrides/flavor)."""
    m = _meta(obj)
    annotations = _annotations(obj)
    names = _names(annotations.get(OVERRIDES_ANNOTATION))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    spec, applied, missing = apply_overrides(copy.deepcopy(spec), names, overrides, site)
    flavor, problem = flavor_of(obj)
    apply_flavor(spec, flavor)
    key = workload_key(str(m.get("namespace") or ""), BY_STORE_KIND[obj["kind"]].kind, m["name"])
    problems = [f'{key}: Override "{name}" not found' for name in missing]
    problems += [f"{key}: {problem}"] if problem else []
    kept = {k: str(v) for k, v in annotations.items() if k.startswith("ves.io/")}
    kept[GENERATION_ANNOTATION] = str(int(m.get("generation") or 1))
    if applied:
        kept[OVERRIDES_APPLIED_ANNOTATION] = ",".join(applied)
    out = _header(obj, site_namespace(tenant, str(m.get("namespace") or "")), kept)
    out["spec"] = spec
    return out, problems


def render_follower(tenant: str, obj: Obj) -> Obj:
    """A Service, ConfigMap, Secret or PVC as the site gets it (Secret values still sealed;
    a Service without the vK8s's virtual clusterIP: the site allocates its own)."""
    m = _meta(obj)
    out = _header(obj, site_namespace(tenant, str(m.get("namespace") or "")), {})
    kind = out["kind"]
    if kind == "Service":
        spec = copy.deepcopy(obj.get("spec") or {})
        for key in ("clusterIP", "clusterIPs"):
            spec.pop(key, None)
        out["spec"] = spec
    elif kind == "PersistentVolumeClaim":
        out["spec"] = copy.deepcopy(obj.get("spec") or {})
    else:  # ConfigMap, Secret
        for key in ("data", "binaryData", "stringData", "type", "immutable"):
            if key in obj:
                out[key] = copy.deepcopy(obj[key])
    return out


def references(pod: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """The ConfigMaps, Secrets and PersistentVolumeClaims a pod spec uses."""
    maps: set[str] = set()
    secrets: set[str] = set()
    claims: set[str] = set()

    def d(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    for raw_volume in pod.get("volumes") or []:
        volume = d(raw_volume)
        if name := d(volume.get("configMap")).get("name"):
            maps.add(name)
        if name := d(volume.get("secret")).get("secretName"):
            secrets.add(name)
        if name := d(volume.get("persistentVolumeClaim")).get("claimName"):
            claims.add(name)
        for source in d(volume.get("projected")).get("sources") or []:
            if name := d(d(source).get("configMap")).get("name"):
                maps.add(name)
            if name := d(d(source).get("secret")).get("name"):
                secrets.add(name)
    for ref in pod.get("imagePullSecrets") or []:
        if name := d(ref).get("name"):
            secrets.add(name)
    for key in ("initContainers", "containers"):
        for raw_container in pod.get(key) or []:
            container = d(raw_container)
            for source in container.get("envFrom") or []:
                if name := d(d(source).get("configMapRef")).get("name"):
                    maps.add(name)
                if name := d(d(source).get("secretRef")).get("name"):
                    secrets.add(name)
            for env in container.get("env") or []:
                value_from = d(d(env).get("valueFrom"))
                if name := d(value_from.get("configMapKeyRef")).get("name"):
                    maps.add(name)
                if name := d(value_from.get("secretKeyRef")).get("name"):
                    secrets.add(name)
    return maps, secrets, claims


def _selects(service: Obj, labels: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    return (
        isinstance(selector, dict) and bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    )


def render_bundle(tenant: str, bundle: Obj, site: str) -> tuple[list[Obj], dict[str, int], list[str]]:
    """One namespace's objects for one site: the placed workloads rendered, and the followers
    they use; their generations by ``workload_key``; the problems found."""
    workloads: list[Obj] = bundle["workloads"]
    others: list[Obj] = bundle["objects"]
    overrides = {_meta(o)["name"]: o for o in others if o["kind"] == OVERRIDE_KIND}
    rendered: list[Obj] = []
    generations: dict[str, int] = {}
    problems: list[str] = []
    maps: set[str] = set()
    secrets: set[str] = set()
    claims: set[str] = set()
    pod_labels: list[dict[str, Any]] = []
    for obj in workloads:
        out, found = render_workload(tenant, obj, overrides, site)
        rendered.append(out)
        problems += found
        m = _meta(obj)
        generations[workload_key(str(m.get("namespace") or ""), out["kind"], m["name"])] = int(
            m.get("generation") or 1
        )
        pod = pod_spec_of(out["spec"]) or {}
        used = references(pod)
        maps, secrets, claims = maps | used[0], secrets | used[1], claims | used[2]
        labels = ((out["spec"].get("template") or {}).get("metadata") or {}).get("labels")
        pod_labels.append(labels if isinstance(labels, dict) else {})
    followers: list[Obj] = []
    for obj in others:
        kind, name = BY_STORE_KIND[obj["kind"]].kind, _meta(obj)["name"]
        if (
            (kind == "ConfigMap" and name in maps)
            or (kind == "Secret" and name in secrets)
            or (kind == "PersistentVolumeClaim" and name in claims)
            or (kind == "Service" and any(_selects(obj, labels) for labels in pod_labels))
        ):
            followers.append(render_follower(tenant, obj))
    followers.sort(key=lambda o: (_ORDER[o["kind"]], o["metadata"]["name"]))
    return followers + rendered, generations, problems


class WorkloadContributor:
    """``workloads``: the vK8s objects the site runs (``docs/site-manifest.md``)."""

    kind = FANOUT_KIND
    section = SECTION

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        """``intents``: the bundles ``FanoutIndex.bundles`` hands over, one per namespace."""
        if not intents:
            return None
        name = str(_meta(site)["name"])
        namespaces: list[str] = []
        objects: list[Obj] = []
        generations: dict[str, int] = {}
        problems: list[str] = []
        for bundle in intents:
            tenant = str(bundle["tenant"])
            namespaces.append(site_namespace(tenant, str(_meta(bundle)["namespace"])))
            found, gens, probs = render_bundle(tenant, bundle, name)
            objects += found
            generations.update(gens)
            problems += probs
        section: dict[str, Any] = {"namespaces": namespaces, "objects": objects, "generations": generations}
        if problems:
            section["problems"] = problems
        return section


# -- the compile's index --------------------------------------------------------------------


@dataclass
class _Namespace:
    default: VsKey | None = None
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)  # (store kind, name)
    placed: dict[str, set[VsKey]] = field(default_factory=dict)  # workload (store kind/name)


_NOT_RENDERED = ("status", "metadata")
_META_NOT_RENDERED = ("resourceVersion", "managedFields")


def _rendered_part(obj: Obj) -> tuple[dict[str, Any], dict[str, Any]]:
    """What of a vK8s object can reach a site (everything but status and bookkeeping)."""
    return (
        {k: v for k, v in obj.items() if k not in _NOT_RENDERED},
        {k: v for k, v in _meta(obj).items() if k not in _META_NOT_RENDERED},
    )


class FanoutIndex:
    """The vK8s objects by namespace, and where each workload is placed. Every change answers
    the virtual sites whose members must be recompiled: all those any workload of the namespace
    was or is placed on (coarse, but the compile writes only manifests that changed)."""

    def __init__(self) -> None:
        self._ns: dict[NsKey, _Namespace] = {}
        self._by_vs: dict[VsKey, set[NsKey]] = {}  # virtual site -> namespaces placed on it

    def targeted(self, vs: VsKey) -> bool:
        return vs in self._by_vs

    def _union(self, key: NsKey) -> set[VsKey]:
        ns = self._ns.get(key)
        out: set[VsKey] = set()
        for vss in ns.placed.values() if ns is not None else ():
            out |= vss
        return out

    def _replace(self, key: NsKey) -> None:
        """Recompute every placement of the namespace (after its VK8s or a workload changed)."""
        ns = self._ns[key]
        ns.placed = {
            f"{kind}/{name}": placement(key[0], obj, ns.default)
            for (kind, name), obj in ns.objects.items()
            if kind in WORKLOAD_KINDS
        }

    def apply(self, ev: Event) -> set[VsKey]:
        key: NsKey = (ev.tenant, ev.namespace)
        before = self._union(key)
        ns = self._ns.setdefault(key, _Namespace())
        if ev.kind == VK8S.kind:
            ns.default = None if ev.type is EventType.DELETED else default_virtual_site(ev.tenant, ev.object)
        elif ev.type is EventType.DELETED:
            ns.objects.pop((ev.kind, ev.name), None)
        else:
            old = ns.objects.get((ev.kind, ev.name))
            ns.objects[(ev.kind, ev.name)] = ev.object
            if old is not None and _rendered_part(old) == _rendered_part(ev.object):
                # A status write (the workload status controller's) changes no site: skip the
                # recompile of every member, which each status write would otherwise cost.
                return set()
        self._replace(key)
        after = self._union(key)
        for vs in before - after:
            holders = self._by_vs.get(vs, set())
            holders.discard(key)
            if not holders:
                self._by_vs.pop(vs, None)
        for vs in after:
            self._by_vs.setdefault(vs, set()).add(key)
        if ns.default is None and not ns.objects:
            del self._ns[key]
        return before | after

    def bundles(self, tenant: str, is_member: Callable[[VsKey], bool]) -> list[Obj]:
        """One bundle per namespace with a workload placed on the site (``is_member`` says which
        virtual sites hold it), sorted by namespace: what ``WorkloadContributor`` renders."""
        candidates = {key for vs, keys in self._by_vs.items() if vs[0] == tenant for key in keys}
        out: list[Obj] = []
        for key in sorted(candidates):
            ns = self._ns[key]
            placed = [
                obj
                for (kind, name), obj in sorted(ns.objects.items())
                if kind in WORKLOAD_KINDS and any(is_member(vs) for vs in ns.placed.get(f"{kind}/{name}", ()))
            ]
            if not placed:
                continue
            others = [obj for (kind, _), obj in sorted(ns.objects.items()) if kind not in WORKLOAD_KINDS]
            out.append(
                {
                    "kind": FANOUT_KIND,
                    "tenant": tenant,
                    "metadata": {"namespace": key[1], "name": key[1]},
                    "workloads": placed,
                    "objects": others,
                }
            )
        return out
