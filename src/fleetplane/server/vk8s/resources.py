"""Kubernetes objects through vK8s: get, list (tables, selectors, paging), create, replace,
patch (JSON merge, JSON patch, strategic merge, server-side apply), delete, and the ``status``
and ``scale`` subresources. Every write goes to the one store; ``resourceVersion`` is the
store's revision."""

from __future__ import annotations

import asyncio
import copy
import secrets
from typing import Any

import orjson
from fastapi import Request

from fleetplane.core.errors import ApiError, Cause, bad_request
from fleetplane.core.objects import Obj
from fleetplane.core.patch import json_patch, merge_patch
from fleetplane.kinds.vk8s import K8sResource
from fleetplane.server.requests import (
    JsonResponse,
    bool_param,
    int_param,
    label_selector,
    read_body,
    read_object,
)
from fleetplane.server.vk8s import managed, openapi, protobuf, tables
from fleetplane.server.vk8s.common import VScope, plural_q, success, translate
from fleetplane.server.vk8s.pod_view import PodView, pod_view
from fleetplane.server.vk8s.strategic import strategic_merge
from fleetplane.server.vk8s.validation import validate

PATCH_RETRIES = 5
APPLY = "application/apply-patch+yaml"
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    APPLY,
)
FIELDS = {"metadata.name", "metadata.namespace"}
EXTRA_FIELDS = {
    "Pod": {"spec.nodeName", "status.phase", "spec.restartPolicy", "spec.schedulerName", "status.podIP"},
    "Event": {
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "reason",
        "type",
        "source",
    },
    "Secret": {"type"},
}


def field_filter(request: Request, r: K8sResource) -> Any:
    from fleetplane.core.fields import parse_field_selector

    text = request.query_params.get("fieldSelector", "")
    allowed = FIELDS | EXTRA_FIELDS.get(r.kind, set())
    try:
        return parse_field_selector(text, allowed)
    except ApiError as exc:
        prefix = "field label not supported: "
        if exc.message.startswith(prefix):
            raise bad_request(f'{prefix}"{exc.message.removeprefix(prefix)}"') from exc
        raise


async def read_k8s_object(request: Request) -> Obj:
    """A JSON or YAML object, or a protobuf one for the kinds kubectl sends that way."""
    if request.headers.get("content-type", "").split(";")[0].strip() == protobuf.MEDIA_TYPE:
        return protobuf.decode(await request.body())
    return await read_object(request)


def manager_of(request: Request) -> str:
    manager = request.query_params.get("fieldManager")
    if manager:
        return manager
    agent = request.headers.get("user-agent", "unknown")
    return agent.split("/")[0] or "unknown"


def dry_run(request: Request) -> bool:
    return request.query_params.get("dryRun") == "All"


# -- the write pipeline ---------------------------------------------------------------------


def strict_validation(request: Request) -> bool:
    return request.query_params.get("fieldValidation") == "Strict"


def check_fields(r: K8sResource, obj: Obj) -> None:
    """``fieldValidation=Strict``: refuse fields the kind's schema does not know, as upstream."""
    unknown = openapi.unknown_fields(r.kind, obj)
    if unknown:
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise bad_request(
            f'{r.kind} in version "{r.version}" cannot be handled as a {r.kind}: '
            f"strict decoding error: {fields}"
        )


def prepare(
    r: K8sResource, body: Obj, namespace: str, name: str | None, *, keep_status: bool, strict: bool = False
) -> Obj:
    """``body`` checked against the path (kind, namespace, name), validated and defaulted."""
    if body.get("apiVersion") not in (None, r.api_version):
        raise bad_request(
            f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
            f"({r.api_version})"
        )
    if body.get("kind") not in (None, r.kind):
        raise bad_request(
            f"the kind in the data ({body.get('kind')}) does not match the expected kind ({r.kind})"
        )
    if strict:
        check_fields(r, body)
    obj = copy.deepcopy(body)
    openapi.unknown_fields(r.kind, obj, prune=True)
    obj["apiVersion"], obj["kind"] = r.api_version, r.kind
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object", [Cause("metadata", "must be an object")])
    if meta.get("namespace") not in (None, "", namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    meta["namespace"] = namespace
    if name is not None:
        if meta.get("name") not in (None, "", name):
            raise bad_request("the name of the object does not match the name on the URL")
        meta["name"] = name
    elif not meta.get("name") and meta.get("generateName"):
        meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
    if not keep_status and "status" in r.subresources:
        obj.pop("status", None)
    return validate(r, obj)


def load(s: VScope, r: K8sResource, namespace: str, name: str) -> Obj | None:
    stored = s.ctx.store.get_or_none(s.tenant, r.store_kind, namespace, name)
    return s.to_k8s(r, stored) if stored is not None else None


def _at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def keep_sealed(s: VScope, r: K8sResource, obj: Obj, current: Obj) -> Obj:
    """Values that did not change keep their stored (sealed) form: sealing is randomized, and
    a fresh ciphertext for the same value would make every no-op write a new revision."""
    meta = current["metadata"]
    raw = s.ctx.store.get_or_none(s.tenant, r.store_kind, meta.get("namespace", ""), meta["name"])
    if raw is None:
        return obj
    out = copy.deepcopy(obj)
    for path in r.sealed:
        new, old, sealed = _at(out, path), _at(current, path), _at(raw, path)
        if not (isinstance(new, dict) and isinstance(old, dict) and isinstance(sealed, dict)):
            continue
        for key, value in new.items():
            if old.get(key) == value and key in sealed:
                new[key] = sealed[key]
    return out


def write(
    s: VScope, r: K8sResource, obj: Obj, current: Obj | None, *, part: str = "main", dry: bool = False
) -> Obj:
    if dry:
        return obj
    name = obj["metadata"]["name"]
    if r.sealed and current is not None:
        obj = keep_sealed(s, r, obj, current)
    try:
        if current is None:
            stored = s.ctx.store.create(s.tenant, s.to_store(r, obj))
        else:
            stored = s.ctx.store.update(
                s.tenant, s.to_store(r, obj), part="status" if part == "status" else "main"
            )
    except ApiError as exc:
        raise translate(exc, r, name) from exc
    return s.to_k8s(r, stored)


def get_existing(s: VScope, r: K8sResource, namespace: str, name: str) -> Obj:
    current = load(s, r, namespace, name)
    if current is None:
        raise translate(ApiError(404, "NotFound", ""), r, name)
    return current


# -- handlers -------------------------------------------------------------------------------


def tabled(request: Request, r: K8sResource, items: list[Obj], meta: dict[str, Any]) -> JsonResponse:
    if tables.wants_table(request):
        include = request.query_params.get("includeObject", "PartialObjectMetadata")
        return JsonResponse(tables.table(r.kind, items, include, meta))
    return JsonResponse(
        {"apiVersion": r.api_version, "kind": f"{r.kind}List", "metadata": meta, "items": items}
    )


async def list_objects(s: VScope, r: K8sResource, request: Request, namespace: str) -> JsonResponse:
    selector, fields = label_selector(request), field_filter(request, r)
    view = await pod_view(s.ctx) if r.kind == "Pod" else None
    if view is not None:  # Pods at fleet scale: from memory (server/vk8s/pod_view.py)
        return await list_pods(s, r, request, namespace, view)
    try:
        result = await asyncio.to_thread(
            s.ctx.store.list,
            s.tenant,
            r.store_kind,
            namespace=namespace,
            selector=selector,
            field_filter=fields,
            limit=int_param(request, "limit", 0),
            continue_token=request.query_params.get("continue") or None,
        )
    except ApiError as exc:
        if exc.code == 410:
            raise ApiError(410, "Expired", exc.message) from exc
        raise
    meta: dict[str, Any] = {"resourceVersion": str(result.revision)}
    if result.continue_token:
        meta["continue"] = result.continue_token
    items = [s.to_k8s(r, o) for o in result.items]
    return tabled(request, r, items, meta)


async def list_pods(
    s: VScope, r: K8sResource, request: Request, namespace: str, view: PodView
) -> JsonResponse:
    selector, fields = label_selector(request), field_filter(request, r)
    limit, token = int_param(request, "limit", 0), request.query_params.get("continue") or None
    pods, revision = view.snapshot(s.tenant, namespace), view.revision
    page = await asyncio.to_thread(view.page, pods, revision, namespace, selector, fields, limit, token)
    meta = {"resourceVersion": str(page.revision)}
    if page.token:
        meta["continue"] = page.token
    encoding = "json"
    if tables.wants_table(request):
        encoding = request.query_params.get("includeObject", "PartialObjectMetadata")
        encoding = encoding if encoding in ("None", "Object") else "PartialObjectMetadata"

    def kube(obj: Obj) -> Obj:
        return s.to_k8s(r, obj)

    def render() -> JsonResponse:  # off the event loop: each Pod is encoded once (cached)
        done = [view.encoded(s.tenant, o, encoding, kube) for o in page.items]
        if encoding != "json":
            return JsonResponse(
                tables.encoded_table(r.kind, [d for d in done if not isinstance(d, bytes)], meta)
            )
        items = [orjson.Fragment(d) for d in done if isinstance(d, bytes)]
        return JsonResponse(
            {"apiVersion": r.api_version, "kind": "PodList", "metadata": meta, "items": items}
        )

    return await asyncio.to_thread(render)


async def get_object(s: VScope, r: K8sResource, request: Request, namespace: str, name: str) -> JsonResponse:
    obj = await asyncio.to_thread(get_existing, s, r, namespace, name)
    if tables.wants_table(request):
        include = request.query_params.get("includeObject", "PartialObjectMetadata")
        return JsonResponse(tables.table(r.kind, [obj], include))
    return JsonResponse(obj)


async def create(s: VScope, r: K8sResource, request: Request, namespace: str) -> JsonResponse:
    body = await read_k8s_object(request)
    manager, dry, strictly = manager_of(request), dry_run(request), strict_validation(request)

    def run() -> Obj:
        obj = prepare(r, body, namespace, None, keep_status=False, strict=strictly)
        managed.record_update(None, obj, manager, r.api_version)
        return write(s, r, obj, None, dry=dry)

    return JsonResponse(await asyncio.to_thread(run), status_code=201)


async def replace(
    s: VScope, r: K8sResource, request: Request, namespace: str, name: str, sub: str | None
) -> JsonResponse:
    body = await read_k8s_object(request)
    manager, dry, strictly = manager_of(request), dry_run(request), strict_validation(request)

    def run() -> Obj:
        current = get_existing(s, r, namespace, name)
        if sub == "scale":
            return scale_to(s, r, current, body, manager, dry)
        if sub == "status":
            obj = {**current, "status": body.get("status") or {}}
            rv = (body.get("metadata") or {}).get("resourceVersion")
            obj["metadata"] = {
                **current["metadata"],
                "resourceVersion": rv or current["metadata"]["resourceVersion"],
            }
            return write(s, r, obj, current, part="status", dry=dry)
        obj = prepare(r, body, namespace, name, keep_status=False, strict=strictly)
        managed.record_update(current, obj, manager, r.api_version)
        return write(s, r, obj, current, dry=dry)

    return JsonResponse(await asyncio.to_thread(run))


def apply_patch(current: Obj, ctype: str, patch: Any) -> Obj:
    if ctype == "application/json-patch+json":
        result = json_patch(current, patch)
    elif ctype == "application/merge-patch+json":
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        result = merge_patch(current, patch)
    else:
        result = strategic_merge(current, patch)
    if not isinstance(result, dict):
        raise bad_request("the patched object is not an object")
    return result


def scale_of(r: K8sResource, obj: Obj) -> Obj:
    meta = obj["metadata"]
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def scale_to(s: VScope, r: K8sResource, current: Obj, scale: Obj, manager: str, dry: bool) -> Obj:
    replicas = (scale.get("spec") or {}).get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ApiError(
            422,
            "Invalid",
            f'Scale.autoscaling "{current["metadata"]["name"]}" is invalid: spec.replicas: '
            f"Invalid value: {replicas!r}: must be greater than or equal to 0",
            kind="Scale",
            name=current["metadata"]["name"],
            group="autoscaling",
            causes=[Cause("spec.replicas", "must be greater than or equal to 0")],
        )
    obj = copy.deepcopy(current)
    obj["spec"]["replicas"] = replicas
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    obj["metadata"]["resourceVersion"] = rv or current["metadata"]["resourceVersion"]
    managed.record_update(current, obj, manager, r.api_version)
    return scale_of(r, write(s, r, obj, current, dry=dry))


async def patch(
    s: VScope, r: K8sResource, request: Request, namespace: str, name: str, sub: str | None
) -> JsonResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in PATCH_TYPES:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(PATCH_TYPES),
        )
    body = await read_body(request)
    manager, dry = manager_of(request), dry_run(request)
    force, strictly = bool_param(request, "force"), strict_validation(request)
    if ctype == APPLY and not request.query_params.get("fieldManager"):
        raise bad_request("PATCH: fieldManager is required for apply requests")
    if ctype == APPLY and sub is not None:
        raise ApiError(415, "UnsupportedMediaType", "apply patches are not supported on this subresource")

    def attempt() -> Obj:
        current = load(s, r, namespace, name)
        if ctype == APPLY:
            if not isinstance(body, dict):
                raise bad_request("an apply patch must be an object")
            if body.get("apiVersion") != r.api_version or body.get("kind") != r.kind:
                raise bad_request(
                    f"apply: the applied configuration must have apiVersion {r.api_version} and kind {r.kind}"
                )
            if strictly:
                check_fields(r, body)
            applied = copy.deepcopy(body)
            openapi.unknown_fields(r.kind, applied, prune=True)
            applied.setdefault("metadata", {}).setdefault("name", name)
            applied["metadata"].setdefault("namespace", namespace)
            merged = managed.apply(current, applied, manager, force, r.api_version)
            obj = prepare(r, merged, namespace, name, keep_status=False)
            return write(s, r, obj, current, dry=dry)
        if current is None:
            raise translate(ApiError(404, "NotFound", ""), r, name)
        if sub == "scale":
            patched_scale = apply_patch(scale_of(r, current), ctype, body)
            return scale_to(s, r, current, patched_scale, manager, dry)
        patched = apply_patch(current, ctype, body)
        if sub == "status":
            obj = {**current, "status": patched.get("status") or {}}
            obj["metadata"] = {
                **current["metadata"],
                "resourceVersion": patched["metadata"].get("resourceVersion"),
            }
            return write(s, r, obj, current, part="status", dry=dry)
        obj = prepare(r, patched, namespace, name, keep_status=False, strict=strictly)
        managed.record_update(current, obj, manager, r.api_version)
        return write(s, r, obj, current, dry=dry)

    def run() -> Obj:
        for _ in range(PATCH_RETRIES):
            try:
                return attempt()
            except ApiError as exc:
                explicit = isinstance(body, dict) and (body.get("metadata") or {}).get("resourceVersion")
                if (
                    exc.reason != "Conflict"
                    or exc.causes
                    or explicit
                    or ctype == "application/json-patch+json"
                ):
                    raise
        raise ApiError(409, "Conflict", f'{plural_q(r)} "{name}": too many concurrent changes, try again')

    return JsonResponse(await asyncio.to_thread(run))


async def delete(s: VScope, r: K8sResource, request: Request, namespace: str, name: str) -> JsonResponse:
    precondition: str | None = None
    uid: str | None = None
    if (await request.body()).strip():
        options = await read_object(request)
        pre = options.get("preconditions") or {}
        if isinstance(pre, dict):
            precondition = str(pre["resourceVersion"]) if pre.get("resourceVersion") else None
            uid = str(pre["uid"]) if pre.get("uid") else None
    dry = dry_run(request)

    def run() -> Obj:
        current = get_existing(s, r, namespace, name)
        if uid is not None and uid != current["metadata"].get("uid"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural_q(r)} "{name}": Precondition failed: '
                f"UID in precondition: {uid}, UID in object meta: {current['metadata'].get('uid')}",
            )
        if dry:
            return current
        try:
            gone = s.ctx.store.delete(s.tenant, r.store_kind, namespace, name, resource_version=precondition)
        except ApiError as exc:
            raise translate(exc, r, name) from exc
        return s.to_k8s(r, gone)

    gone = await asyncio.to_thread(run)
    return JsonResponse(success(r, gone))


async def get_scale(s: VScope, r: K8sResource, namespace: str, name: str) -> JsonResponse:
    obj = await asyncio.to_thread(get_existing, s, r, namespace, name)
    return JsonResponse(scale_of(r, obj))
