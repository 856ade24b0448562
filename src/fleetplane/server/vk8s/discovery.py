"""Plain (unaggregated) discovery, as kubectl 1.32 falls back to it: ``/version``, ``/api``,
``/apis``, ``/api/v1``, ``/apis/<group>``, ``/apis/<group>/<version>``, with the ``status``
and ``scale`` subresources listed (``scale`` as ``autoscaling/v1 Scale``)."""

from __future__ import annotations

from typing import Any

import fleetplane
from fleetplane.kinds.vk8s import K8S_RESOURCES, K8sResource

KUBERNETES_VERSION = ("1", "32")
WRITE_VERBS = ["create", "delete", "patch", "update"]
READ_VERBS = ["get", "list", "watch"]


def version() -> dict[str, Any]:
    major, minor = KUBERNETES_VERSION
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{major}.{minor}.0+fleetplane-{fleetplane.__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "",
        "platform": "fleetplane/vk8s",
    }


def groups() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for r in K8S_RESOURCES:
        if r.group and (r.group, r.version) not in out:
            out.append((r.group, r.version))
    return out


def api_versions(host: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def _group(name: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g, v) for g, v in groups()]}


def api_group(name: str) -> dict[str, Any] | None:
    for g, v in groups():
        if g == name:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(g, v)}
    return None


def _entries(r: K8sResource) -> list[dict[str, Any]]:
    verbs = READ_VERBS if r.read_only else sorted([*READ_VERBS, *WRITE_VERBS])
    main: dict[str, Any] = {
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": True,
        "kind": r.kind,
        "verbs": verbs,
    }
    if r.short_names:
        main["shortNames"] = list(r.short_names)
    if r.categories:
        main["categories"] = list(r.categories)
    out = [main]
    sub_verbs = ["get"] if r.read_only else ["get", "patch", "update"]
    if "status" in r.subresources:
        out.append(
            {
                "name": f"{r.plural}/status",
                "singularName": "",
                "namespaced": True,
                "kind": r.kind,
                "verbs": sub_verbs,
            }
        )
    if "scale" in r.subresources:
        out.append(
            {
                "name": f"{r.plural}/scale",
                "singularName": "",
                "namespaced": True,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": sub_verbs,
            }
        )
    return out


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    chosen = [r for r in K8S_RESOURCES if r.group == group and r.version == version]
    if not chosen:
        return None
    gv = f"{group}/{version}" if group else version
    resources = [e for r in chosen for e in _entries(r)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
