"""OpenAPI v3 documents for vK8s: ``/openapi/v3`` (the index kubectl reads) and one document
per group-version, enough for ``kubectl apply`` (field-validation support, patch merge keys)
and ``kubectl explain`` (schemas with descriptions, found by ``x-kubernetes-group-version-kind``).

The schemas are not written by hand: they come from the official ``kubernetes`` client's
generated models (Pydantic, with upstream's field descriptions), cleaned into OpenAPI 3.0
shape, plus upstream's ``x-kubernetes-patch-merge-key`` / ``-patch-strategy`` extensions
taken from the same table the server merges with (``strategic.py``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import logging
import threading
from typing import Any, Literal

import orjson

from fleetplane.kinds.vk8s import K8S_RESOURCES, K8sResource
from fleetplane.server.vk8s.discovery import groups
from fleetplane.server.vk8s.strategic import CONTAINER_LISTS, MERGE_KEYS, PRIMITIVE_MERGE

log = logging.getLogger(__name__)
REF = "#/components/schemas/{model}"
MODELS = {
    "Deployment": "V1Deployment",
    "StatefulSet": "V1StatefulSet",
    "Job": "V1Job",
    "Service": "V1Service",
    "ConfigMap": "V1ConfigMap",
    "Secret": "V1Secret",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Pod": "V1Pod",
    "Event": "CoreV1Event",
    "Override": "VesV1Override",
}
# Kinds with no model in the official client: their schema is written here (the fan-out's
# Override, docs/vk8s.md: a site list and a Deployment/StatefulSet/Job spec, kept as given).
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "VesV1Override": {
        "type": "object",
        "description": "Replaces the spec of the workloads that name it (annotation ves.io/overrides) "
        "on the sites it lists.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": REF.format(model="V1ObjectMeta")},
            "spec": {
                "type": "object",
                "properties": {
                    "sites": {"type": "array", "items": {"type": "string"}},
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
        },
    }
}
CONTAINER_SCHEMAS = {"V1Container", "V1EphemeralContainer"}
# The fan-out's roll-up the workload status controller writes into a workload's status
# (controllers/workload_render.py): published, so that strict decoding of an object read back
# from the server (kubectl's managed-fields migration, ``kubectl replace``) accepts it.
FLEET_STATUS = {
    "type": "object",
    "description": "fleetplane: the workload across its sites (desired replicas, site and pod states, "
    "failing sites, per-site replicas). Written by the server.",
    "x-kubernetes-preserve-unknown-fields": True,
}
WORKLOAD_STATUS_SCHEMAS = ("V1DeploymentStatus", "V1StatefulSetStatus", "V1JobStatus")
QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _clean(node: Any) -> Any:
    """Pydantic's JSON schema in OpenAPI 3.0 shape: no ``anyOf [X, null]``, no titles, no
    boolean ``additionalProperties``, ``$ref`` with siblings wrapped in ``allOf``."""
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    options = node.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o != {"type": "null"}]
        if len(rest) == 1:
            del node["anyOf"]
            node = {**rest[0], **node}
    node.pop("title", None)
    if node.get("default", 0) is None:
        node.pop("default")
    if isinstance(node.get("additionalProperties"), bool):
        node.pop("additionalProperties")
    out = {k: _clean(v) for k, v in node.items()}
    if "$ref" in out and len(out) > 1:
        out["allOf"] = [{"$ref": out.pop("$ref")}]
    return out


def _patch_extensions(schemas: dict[str, Any]) -> None:
    for name, schema in schemas.items():
        for prop, value in (schema.get("properties") or {}).items():
            if not isinstance(value, dict):
                continue
            if prop == "ports" and value.get("type") == "array":
                if name in CONTAINER_SCHEMAS:
                    value.update(
                        {
                            "x-kubernetes-patch-merge-key": "containerPort",
                            "x-kubernetes-patch-strategy": "merge",
                        }
                    )
                elif name == "V1ServiceSpec":
                    value.update(
                        {"x-kubernetes-patch-merge-key": "port", "x-kubernetes-patch-strategy": "merge"}
                    )
            elif prop in MERGE_KEYS and value.get("type") == "array":
                key, strategy = MERGE_KEYS[prop]
                if prop in CONTAINER_LISTS and name != "V1PodSpec":
                    continue
                value.update({"x-kubernetes-patch-merge-key": key, "x-kubernetes-patch-strategy": strategy})
            elif prop in PRIMITIVE_MERGE and value.get("type") == "array":
                value["x-kubernetes-patch-strategy"] = "merge"
            elif prop == "strategy" and name == "V1DeploymentSpec":
                value["x-kubernetes-patch-strategy"] = "retainKeys"


_SCHEMAS_LOCK = threading.Lock()
_SCHEMAS: dict[str, Any] | None = None


def _schemas() -> dict[str, Any]:
    """Built once under a lock: pydantic completes the client's models lazily, and two
    threads building them at once see half-built classes (``__pydantic_core_schema__``)."""
    global _SCHEMAS
    if _SCHEMAS is None:
        with _SCHEMAS_LOCK:
            if _SCHEMAS is None:
                _SCHEMAS = _build_schemas()
    return _SCHEMAS


def _build_schemas() -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    try:
        client = importlib.import_module("kubernetes.client")
    except ImportError:  # pragma: no cover - the lock always installs it
        log.warning("the kubernetes client is not installed: vK8s serves OpenAPI without schemas")
        return {}
    models: list[tuple[Any, Literal["validation"]]] = [
        (getattr(client, m), "validation") for m in [*MODELS.values(), "V1Scale"] if m not in CUSTOM_SCHEMAS
    ]
    _, doc = models_json_schema(models, by_alias=True, ref_template=REF)
    schemas: dict[str, Any] = {k: _clean(v) for k, v in doc.get("$defs", {}).items()}
    _patch_extensions(schemas)
    for name in WORKLOAD_STATUS_SCHEMAS:
        if name in schemas:
            schemas[name].setdefault("properties", {})["fleet"] = copy.deepcopy(FLEET_STATUS)
    schemas.update(copy.deepcopy(CUSTOM_SCHEMAS))
    for r in K8S_RESOURCES:
        gvk = {"group": r.group, "kind": r.kind, "version": r.version}
        schemas[MODELS[r.kind]]["x-kubernetes-group-version-kind"] = [gvk]
    schemas["V1Scale"]["x-kubernetes-group-version-kind"] = [
        {"group": "autoscaling", "kind": "Scale", "version": "v1"}
    ]
    return schemas


def _short(name: str) -> str:
    for prefix in ("CoreV1", "V1"):
        rest = name.removeprefix(prefix)
        if rest != name and rest[:1].isupper():
            return rest
    return name


@functools.cache
def _published() -> tuple[dict[str, str], dict[str, Any]]:
    """The schemas under upstream's short names (``ServicePort``, not the client's
    ``V1ServicePort``: ``kubectl explain`` shows them), where a short name is unique."""
    schemas = _schemas()
    shorts = [_short(n) for n in schemas]
    names = {n: (_short(n) if shorts.count(_short(n)) == 1 else n) for n in schemas}

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            out["$ref"] = REF.format(model=names.get(ref.rsplit("/", 1)[-1], ref.rsplit("/", 1)[-1]))
        return out

    return names, {names[n]: fix(v) for n, v in schemas.items()}


def _operation(r: K8sResource, verb: str, model: str) -> dict[str, Any]:
    params = [
        {"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": True} for p in QUERY_PARAMS
    ]
    ok = {"description": "OK", "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}
    return {
        "operationId": f"{verb}{r.kind}",
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": r.group, "kind": r.kind, "version": r.version},
        "parameters": params,
        "responses": {"200": ok},
    }


@functools.cache
def group_version_doc(group: str, version: str) -> bytes | None:
    chosen = [r for r in K8S_RESOURCES if r.group == group and r.version == version]
    if not chosen:
        return None
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    names, published = _published()
    paths: dict[str, Any] = {}
    for r in chosen:
        model = names.get(MODELS[r.kind], MODELS[r.kind])
        item: dict[str, Any] = {"get": _operation(r, "get", model)}
        if not r.read_only:
            item.update(put=_operation(r, "put", model), patch=_operation(r, "patch", model))
        paths[f"{base}/namespaces/{{namespace}}/{r.plural}/{{name}}"] = item
        paths[f"{base}/namespaces/{{namespace}}/{r.plural}"] = {"get": _operation(r, "list", model)}
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "fleetplane vK8s", "version": "v1.32"},
        "paths": paths,
        "components": {"schemas": published},
    }
    return orjson.dumps(doc)


def _gv_paths() -> list[tuple[str, str, str]]:
    out = [("api/v1", "", "v1")]
    out += [(f"apis/{g}/{v}", g, v) for g, v in groups()]
    return out


def index(prefix: str) -> dict[str, Any]:
    paths = {}
    for path, group, version in _gv_paths():
        doc = group_version_doc(group, version) or b""
        digest = hashlib.sha512(doc).hexdigest()[:64].upper()
        paths[path] = {"serverRelativeURL": f"{prefix}/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def lookup(parts: list[str]) -> bytes | None:
    """The document for ``/openapi/v3/<parts>`` (``api/v1``, ``apis/apps/v1``)."""
    if parts == ["api", "v1"]:
        return group_version_doc("", "v1")
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_doc(parts[1], parts[2])
    return None


def _resolve(node: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict):
        if "$ref" in node:
            node = schemas.get(str(node["$ref"]).rsplit("/", 1)[-1], {})
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node
    return {}


def unknown_fields(kind: str, obj: Any, *, prune: bool = False) -> list[str]:
    """Paths in ``obj`` its kind's schema does not know (refused with ``fieldValidation=Strict``);
    ``prune`` removes them from ``obj``, as upstream's decoding drops them otherwise."""
    schemas = _schemas()
    found: list[str] = []

    def walk(value: Any, node: Any, path: str) -> None:
        schema = _resolve(node, schemas)
        if isinstance(value, dict):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, item in list(value.items()):
                if isinstance(props, dict):
                    if key in props:
                        walk(item, props[key], f"{path}{key}.")
                    else:
                        found.append(f"{path}{key}")
                        if prune:
                            del value[key]
                elif isinstance(extra, dict):
                    walk(item, extra, f"{path}{key}.")
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                walk(item, schema["items"], f"{path[:-1]}[{i}].")

    if MODELS[kind] in schemas:
        walk(obj, schemas[MODELS[kind]], "")
    return found
