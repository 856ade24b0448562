"""vK8s fan-out, the compile side: placement (the VK8s's default virtual site, the union of
``ves.io/virtual-sites``), Overrides in order, flavors (limits, requests at 50 %), followers,
and which sites a change recompiles."""

from __future__ import annotations

import copy
from typing import Any

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.workload_sections import FLAVORS, references
from fleetplane.core.objects import Obj
from fleetplane.core.store import Event, EventType
from fleetplane.kinds import SITE, VIRTUAL_SITE

T = "acme"
_rv = iter(range(1, 10_000))


def _m(name: str, namespace: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "resourceVersion": str(next(_rv)), **extra}


def site(name: str, **labels: str) -> Obj:
    obj = SITE.normalize({"metadata": {"name": name, "labels": labels}})
    obj["metadata"]["resourceVersion"] = str(next(_rv))
    return obj


def vsite(name: str, selector: str, namespace: str = "shop") -> Obj:
    obj = VIRTUAL_SITE.normalize(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"selector": selector}}
    )
    obj["metadata"]["resourceVersion"] = str(next(_rv))
    return obj


def vk8s(default: str, namespace: str = "shop") -> Obj:
    return {"kind": "VK8s", "metadata": _m("vk", namespace), "spec": {"virtualSite": default}}


def deployment(
    name: str = "web",
    *,
    annotations: dict[str, str] | None = None,
    image: str = "nginx:1.27",
    generation: int = 1,
    volumes: list[dict[str, Any]] | None = None,
) -> Obj:
    pod: dict[str, Any] = {
        "containers": [
            {"name": "web", "image": image, "resources": {"limits": {"cpu": "4"}}},
            {"name": "side", "image": "busybox"},
        ]
    }
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "vk8s.apps.Deployment",
        "metadata": _m(name, "shop", generation=generation, uid=f"uid-{name}", annotations=annotations or {}),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


def override(name: str, sites: list[str], image: str, replicas: int = 1) -> Obj:
    return {
        "apiVersion": "ves.io/v1",
        "kind": "vk8s.ves.io.Override",
        "metadata": _m(name, "shop"),
        "spec": {
            "sites": sites,
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]},
                },
            },
        },
    }


def fleet(*extra: Obj) -> ManifestState:
    objects = [
        site("tokyo", region="jp", tier="edge"),
        site("osaka", region="jp"),
        site("paris", region="eu"),
        site("berlin", region="eu", tier="edge"),
        vsite("jp", "region=jp"),
        vsite("eu", "region=eu"),
        vsite("edge", "tier=edge", namespace="shared"),
        vsite("secret-vs", "region", namespace="other"),
        vk8s("jp"),
        *extra,
    ]
    return ManifestState.from_snapshot([(T, o) for o in objects])


def section(state: ManifestState, name: str) -> dict[str, Any] | None:
    sections = state.compile(T, name)
    assert sections is not None
    return sections.get("workloads")


def placed(state: ManifestState) -> dict[str, list[str]]:
    out = {}
    for name in ("tokyo", "osaka", "paris", "berlin"):
        sec = section(state, name)
        out[name] = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in (sec or {}).get("objects", []))
    return out


def test_default_virtual_site_places_on_its_members_in_the_site_namespace() -> None:
    state = fleet(deployment())
    assert placed(state) == {
        "tokyo": ["Deployment/web"],
        "osaka": ["Deployment/web"],
        "paris": [],
        "berlin": [],
    }
    sec = section(state, "tokyo")
    assert sec is not None
    assert sec["namespaces"] == ["acme-shop"]
    assert sec["generations"] == {"shop/Deployment/web": 1}
    web = sec["objects"][0]
    assert web["apiVersion"] == "apps/v1" and web["metadata"]["namespace"] == "acme-shop"
    assert web["metadata"]["annotations"]["fleetplane.io/vk8s-source"] == "shop/web"
    assert web["spec"]["replicas"] == 3


def test_virtual_sites_annotation_is_a_union_and_ignores_foreign_namespaces() -> None:
    state = fleet(
        deployment(annotations={"ves.io/virtual-sites": "shop/eu, shared/edge,other/secret-vs"}),
        deployment("api", annotations={"ves.io/virtual-sites": "eu"}),
    )
    assert placed(state) == {
        "tokyo": ["Deployment/web"],  # through shared/edge
        "osaka": [],
        "paris": ["Deployment/api", "Deployment/web"],
        "berlin": ["Deployment/api", "Deployment/web"],
    }


def test_flavors_set_every_container_with_requests_at_half() -> None:
    expected = {
        None: ({"cpu": "100m", "memory": "100Mi"}, {"cpu": "50m", "memory": "50Mi"}),
        "tiny": ({"cpu": "100m", "memory": "100Mi"}, {"cpu": "50m", "memory": "50Mi"}),
        "medium": ({"cpu": "250m", "memory": "250Mi"}, {"cpu": "125m", "memory": "125Mi"}),
        "large": ({"cpu": "1000m", "memory": "1024Mi"}, {"cpu": "500m", "memory": "512Mi"}),
    }
    assert set(FLAVORS) == {"tiny", "medium", "large"}
    for flavor, (limits, requests) in expected.items():
        annotations = {"ves.io/workload-flavor": flavor} if flavor else {}
        sec = section(fleet(deployment(annotations=annotations)), "osaka")
        assert sec is not None and "problems" not in sec
        containers = sec["objects"][0]["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 2
        for c in containers:
            assert c["resources"] == {"limits": limits, "requests": requests}, (flavor, c)
    sec = section(fleet(deployment(annotations={"ves.io/workload-flavor": "huge"})), "osaka")
    assert sec is not None
    assert sec["problems"] == ['shop/Deployment/web: unknown ves.io/workload-flavor "huge": using "tiny"']
    assert (
        sec["objects"][0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "100m"
    )


def test_overrides_apply_in_order_on_the_sites_they_list() -> None:
    annotations = {"ves.io/overrides": "canary, second, missing", "ves.io/workload-flavor": "medium"}
    state = fleet(
        deployment(annotations=annotations),
        override("canary", ["tokyo", "osaka"], "nginx:1.28", replicas=2),
        override("second", ["osaka"], "nginx:1.29-beta", replicas=1),
    )
    by_site = {}
    for name in ("tokyo", "osaka"):
        sec = section(state, name)
        assert sec is not None
        assert sec["problems"] == ['shop/Deployment/web: Override "missing" not found']
        web = sec["objects"][0]
        spec = web["spec"]
        by_site[name] = (
            spec["replicas"],
            [c["image"] for c in spec["template"]["spec"]["containers"]],
            web["metadata"]["annotations"]["fleetplane.io/vk8s-overrides"],
        )
        # The flavor applies after the overrides, to the spec the site runs.
        assert spec["template"]["spec"]["containers"][0]["resources"]["limits"] == {
            "cpu": "250m",
            "memory": "250Mi",
        }
    # tokyo: canary only; osaka: canary, then second (the last listing the site wins).
    assert by_site == {
        "tokyo": (2, ["nginx:1.28"], "canary"),
        "osaka": (1, ["nginx:1.29-beta"], "canary,second"),
    }
    plain = fleet(
        deployment(annotations={"ves.io/overrides": "canary"}), override("canary", ["paris"], "x:1")
    )
    sec = section(plain, "tokyo")
    assert (
        sec is not None
        and sec["objects"][0]["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    )


def test_followers_go_where_their_workloads_go() -> None:
    volumes = [
        {"name": "cfg", "configMap": {"name": "web-config"}},
        {"name": "tls", "secret": {"secretName": "web-tls"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
    ]
    svc = {
        "kind": "vk8s.core.Service",
        "metadata": _m("web", "shop"),
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.9", "ports": [{"port": 80}]},
    }
    other_svc = {
        "kind": "vk8s.core.Service",
        "metadata": _m("db", "shop"),
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]},
    }
    cm = {"kind": "vk8s.core.ConfigMap", "metadata": _m("web-config", "shop"), "data": {"a": "1"}}
    unused = {"kind": "vk8s.core.ConfigMap", "metadata": _m("unused", "shop"), "data": {}}
    secret = {
        "kind": "vk8s.core.Secret",
        "metadata": _m(
            "web-tls", "shop", annotations={"kubectl.kubernetes.io/last-applied-configuration": "enc:..."}
        ),
        "type": "Opaque",
        "data": {"key": "enc:v1:sealed"},
    }
    pvc = {
        "kind": "vk8s.core.PersistentVolumeClaim",
        "metadata": _m("web-data", "shop"),
        "spec": {"accessModes": ["ReadWriteOnce"]},
    }
    state = fleet(deployment(volumes=volumes), svc, other_svc, cm, unused, secret, pvc)
    assert placed(state)["tokyo"] == [
        "ConfigMap/web-config",
        "Deployment/web",
        "PersistentVolumeClaim/web-data",
        "Secret/web-tls",
        "Service/web",
    ]
    assert placed(state)["paris"] == []
    sec = section(state, "tokyo")
    assert sec is not None
    kinds = [o["kind"] for o in sec["objects"]]
    assert kinds == [
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
    ]  # what is used first
    rendered = {o["kind"]: o for o in sec["objects"]}
    assert "clusterIP" not in rendered["Service"]["spec"]
    # The Secret travels as stored (sealed), without its (sealed) annotations.
    assert rendered["Secret"]["data"] == {"key": "enc:v1:sealed"}
    assert rendered["Secret"]["metadata"]["annotations"] == {"fleetplane.io/vk8s-source": "shop/web-tls"}


def test_references_of_a_pod_spec() -> None:
    pod = {
        "volumes": [
            {"projected": {"sources": [{"configMap": {"name": "p-cm"}}, {"secret": {"name": "p-s"}}]}}
        ],
        "imagePullSecrets": [{"name": "pull"}],
        "containers": [
            {
                "envFrom": [{"configMapRef": {"name": "ef-cm"}}, {"secretRef": {"name": "ef-s"}}],
                "env": [
                    {"valueFrom": {"secretKeyRef": {"name": "k-s"}}},
                    {"valueFrom": {"configMapKeyRef": {"name": "k-cm"}}},
                ],
            }
        ],
    }
    assert references(pod) == ({"p-cm", "ef-cm", "k-cm"}, {"p-s", "pull", "ef-s", "k-s"}, set())


def _event(kind: str, obj: Obj, type_: EventType = EventType.MODIFIED) -> Event:
    m = obj["metadata"]
    return Event(next(_rv), type_, T, kind, m.get("namespace") or "", m["name"], obj)


def test_changes_recompile_the_sites_they_touch() -> None:
    web = deployment()
    state = fleet(web)
    changed = copy.deepcopy(web)
    changed["metadata"]["generation"] = 2
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    assert state.apply(_event(web["kind"], changed)) == {(T, "tokyo"), (T, "osaka")}
    # A status write (the workload status controller's) reaches no site: nothing recompiles.
    counted = {**copy.deepcopy(changed), "status": {"readyReplicas": 6}}
    counted["metadata"]["resourceVersion"] = str(next(_rv))
    assert state.apply(_event(web["kind"], counted)) == set()
    # Moving it to eu recompiles the old and the new sites.
    moved = copy.deepcopy(changed)
    moved["metadata"]["annotations"] = {"ves.io/virtual-sites": "eu"}
    assert state.apply(_event(web["kind"], moved)) == {(T, s) for s in ("tokyo", "osaka", "paris", "berlin")}
    assert placed(state)["paris"] == ["Deployment/web"] and placed(state)["tokyo"] == []
    # A new member of a virtual site a workload is placed on gets it.
    assert state.apply(_event(SITE.kind, site("lyon", region="eu"), EventType.ADDED)) == {(T, "lyon")}
    sec = section(state, "lyon")
    assert sec is not None and sec["generations"] == {"shop/Deployment/web": 2}
    # The VK8s's default virtual site moves every workload that has no annotation.
    api = deployment("api")
    state.apply(_event(api["kind"], api, EventType.ADDED))
    assert placed(state)["tokyo"] == ["Deployment/api"]
    state.apply(_event("VK8s", vk8s("eu")))
    assert placed(state)["tokyo"] == [] and placed(state)["paris"] == ["Deployment/api", "Deployment/web"]
    # Deleting the workload removes it (and the section once nothing is placed).
    state.apply(_event(web["kind"], moved, EventType.DELETED))
    state.apply(_event(api["kind"], api, EventType.DELETED))
    assert section(state, "paris") is None
