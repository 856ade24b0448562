"""The native resource API: ``/apis/fleetplane.io/v1/...``, generic over every kind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from fleetplane.core.errors import ApiError, Cause, bad_request, expired
from fleetplane.core.objects import Obj
from fleetplane.core.patch import json_patch, merge_patch
from fleetplane.core.registry import API_VERSION, GROUP, VERSION, KindInfo, Scope
from fleetplane.core.store import Store
from fleetplane.core.watch import WatchFilter
from fleetplane.server.auth import Principal, authenticate, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.hooks import after_create, after_delete, before_delete, before_write, prepare_create
from fleetplane.server.requests import (
    JsonResponse,
    bool_param,
    field_selector,
    int_param,
    label_selector,
    read_body,
    read_object,
    revision_param,
)
from fleetplane.server.sealing import present, seal

BASE = f"/apis/{GROUP}/{VERSION}"
router = APIRouter()
PATCH_RETRIES = 5


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def who(request: Request) -> Principal:
    ctx = context(request)
    return await asyncio.to_thread(authenticate, ctx.store, request.headers.get("authorization"))


def kind_for(ctx: ServerContext, plural: str, namespace: str | None) -> KindInfo:
    info = ctx.registry.by_plural(plural)
    if info is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if namespace is not None and not info.namespaced:
        raise ApiError(404, "NotFound", f"{info.plural} are not namespaced")
    return info


def tenant_for(principal: Principal, info: KindInfo) -> str:
    return "" if info.scope is Scope.SYSTEM else principal.tenant


def check_identity(info: KindInfo, body: Obj, namespace: str | None, name: str | None) -> Obj:
    """The body must be of this kind and, where the path names them, this namespace and name."""
    if body.get("apiVersion") not in (None, API_VERSION):
        raise bad_request(f'apiVersion must be "{API_VERSION}"', [Cause("apiVersion", "unsupported version")])
    if body.get("kind") not in (None, info.kind):
        raise bad_request(
            f"the kind of the provided object ({body.get('kind')}) does not match the resource ({info.kind})",
            [Cause("kind", f"must be {info.kind}")],
        )
    meta = body.get("metadata")
    if meta is None:
        meta = body["metadata"] = {}
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object", [Cause("metadata", "must be an object")])
    if namespace is not None:
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
                [Cause("metadata.namespace", f"must be {namespace}")],
            )
        meta["namespace"] = namespace
    if name is not None:
        if meta.get("name") not in (None, name):
            raise bad_request(
                "the name of the object does not match the name on the URL",
                [Cause("metadata.name", f"must be {name}")],
            )
        meta["name"] = name
    return {**body, "kind": info.kind}


def respond(ctx: ServerContext, who: Principal, info: KindInfo, obj: Obj, code: int = 200) -> JsonResponse:
    return JsonResponse(present(ctx, tenant_for(who, info), info, obj), status_code=code)


# -- discovery ------------------------------------------------------------------------


@router.get("/apis")
async def api_groups() -> JsonResponse:
    version = {"groupVersion": API_VERSION, "version": VERSION}
    group = {"name": GROUP, "versions": [version], "preferredVersion": version}
    return JsonResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})


@router.get(BASE)
async def api_resources(request: Request) -> JsonResponse:
    await who(request)
    resources = []
    for info in context(request).registry.all():
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources.append(
            {
                "name": info.plural,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": verbs,
                "shortNames": list(info.short_names),
            }
        )
        if info.status_model is not None:
            resources.append(
                {
                    "name": f"{info.plural}/status",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return JsonResponse(
        {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": resources}
    )


# -- collection: list, watch, create ------------------------------------------------------


async def _collection_get(request: Request, plural: str, namespace: str | None) -> Any:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    watching = bool_param(request, "watch")
    authorize(principal, "watch" if watching else "list", info, namespace)
    selector = label_selector(request)
    fields = field_selector(request, aliases=info.extra.get("field_aliases"))
    tenant = tenant_for(principal, info)
    if watching:
        since = revision_param(request)
        if since is not None and since < await asyncio.to_thread(ctx.store.compacted_revision):
            raise expired(f"too old resource version: {since}")
        flt = WatchFilter(tenant, (info.kind,), namespace, selector, fields)
        timeout = float(int_param(request, "timeoutSeconds", int(ctx.settings.watch_timeout)))
        return StreamingResponse(_stream(ctx, info, flt, since, timeout), media_type="application/json")
    result = await asyncio.to_thread(
        ctx.store.list,
        tenant,
        info.kind,
        namespace=namespace,
        selector=selector,
        field_filter=fields,
        limit=int_param(request, "limit", 0),
        continue_token=request.query_params.get("continue") or None,
    )
    meta: dict[str, Any] = {"resourceVersion": str(result.revision)}
    if result.continue_token:
        meta["continue"] = result.continue_token
    items = [present(ctx, tenant, info, o) for o in result.items]
    return JsonResponse(
        {"apiVersion": API_VERSION, "kind": f"{info.kind}List", "metadata": meta, "items": items}
    )


async def _stream(
    ctx: ServerContext, info: KindInfo, flt: WatchFilter, since: int | None, timeout: float
) -> AsyncIterator[bytes]:
    events = ctx.hub.watch(flt, since, drain=True)
    try:
        async with asyncio.timeout(timeout):
            async for ev in events:
                shown = present(ctx, flt.tenant, info, ev.object)
                yield orjson.dumps({"type": ev.type.value, "object": shown}) + b"\n"
    except TimeoutError:
        return
    except ApiError as exc:
        yield orjson.dumps({"type": "ERROR", "object": exc.to_status()}) + b"\n"
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]


async def _create(request: Request, plural: str, namespace: str | None) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    if info.namespaced and namespace is None:
        raise ApiError(405, "MethodNotAllowed", f"{info.plural} must be created in a namespace")
    authorize(principal, "create", info, namespace)
    body = check_identity(info, await read_object(request), namespace, None)
    body.pop("status", None)  # status is the controllers' and agents' to write
    tenant = tenant_for(principal, info)

    def create() -> Obj:
        # In a worker thread: the hooks may read the store (reference checks).
        obj, reveal = prepare_create(ctx, principal, info, info.normalize(body))
        created = ctx.store.create(tenant, seal(ctx, tenant, info, obj))
        return after_create(ctx, principal, info, created, reveal)

    return respond(ctx, principal, info, await asyncio.to_thread(create), 201)


# -- one object: get, replace, patch, delete --------------------------------------------------


async def _get(request: Request, plural: str, namespace: str | None, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    authorize(principal, "get", info, namespace)
    obj = await asyncio.to_thread(
        ctx.store.get, tenant_for(principal, info), info.kind, namespace or "", name
    )
    return respond(ctx, principal, info, obj)


def _write(ctx: ServerContext, principal: Principal, info: KindInfo, body: Obj, status: bool) -> Obj:
    tenant = tenant_for(principal, info)
    obj = info.normalize(body)
    meta = body.get("metadata") or {}
    current = ctx.store.get(tenant, info.kind, meta.get("namespace") or "", meta["name"])
    if status:
        obj = {
            **current,
            "status": obj.get("status", {}),
            "metadata": {
                **current["metadata"],
                "resourceVersion": meta.get("resourceVersion") or current["metadata"]["resourceVersion"],
            },
        }
    sent = None if status else body  # a write-only sealed path the body carries is set from it
    obj = seal(ctx, tenant, info, before_write(ctx, principal, info, obj, current, sent), current)
    return ctx.store.update(tenant, obj, part="status" if status else "main")


async def _replace(
    request: Request, plural: str, namespace: str | None, name: str, status: bool
) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    if status and info.status_model is None:
        raise ApiError(404, "NotFound", f"{info.plural} have no status")
    authorize(principal, "update", info, namespace)
    body = check_identity(info, await read_object(request), namespace, name)
    obj = await asyncio.to_thread(_write, ctx, principal, info, body, status)
    return respond(ctx, principal, info, obj)


def _apply_patch(current: Obj, ctype: str, patch: Any) -> Obj:
    if ctype == "application/json-patch+json":
        result = json_patch(current, patch)
    elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be an object")
        result = merge_patch(current, patch)
    else:
        raise ApiError(415, "UnsupportedMediaType", f"the patch content type {ctype!r} is not supported")
    if not isinstance(result, dict):
        raise bad_request("the patched object is not an object")
    return result


async def _patch(
    request: Request, plural: str, namespace: str | None, name: str, status: bool
) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    authorize(principal, "patch", info, namespace)
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    patch = await read_body(request)
    tenant = tenant_for(principal, info)

    def attempt() -> Obj:
        for _ in range(PATCH_RETRIES):
            current = ctx.store.get(tenant, info.kind, namespace or "", name)
            wanted_rv = None
            if isinstance(patch, dict) and isinstance(patch.get("metadata"), dict):
                wanted_rv = patch["metadata"].get("resourceVersion")
            patched = _apply_patch(current, ctype, patch)
            body = check_identity(info, patched, namespace, name)
            # Without an explicit precondition, patch the version we read and retry on a race.
            body["metadata"]["resourceVersion"] = wanted_rv or current["metadata"]["resourceVersion"]
            try:
                return _write(ctx, principal, info, body, status)
            except ApiError as exc:
                if exc.reason != "Conflict" or wanted_rv:
                    raise
        raise ApiError(409, "Conflict", f'{info.plural} "{name}": too many concurrent changes, try again')

    return respond(ctx, principal, info, await asyncio.to_thread(attempt))


async def _delete(request: Request, plural: str, namespace: str | None, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    info = kind_for(ctx, plural, namespace)
    authorize(principal, "delete", info, namespace)
    precondition = None
    raw = await request.body()
    if raw.strip():
        options = await read_object(request)
        preconditions = options.get("preconditions") or {}
        if not isinstance(preconditions, dict):
            raise bad_request(
                "preconditions must be an object", [Cause("preconditions", "must be an object")]
            )
        precondition = preconditions.get("resourceVersion") or None
        if precondition is not None:
            precondition = str(precondition)
    store: Store = ctx.store
    tenant = tenant_for(principal, info)
    current = await asyncio.to_thread(store.get, tenant, info.kind, namespace or "", name)
    before_delete(ctx, principal, info, current)
    obj = await asyncio.to_thread(
        store.delete, tenant, info.kind, namespace or "", name, resource_version=precondition
    )
    await asyncio.to_thread(after_delete, ctx, principal, info, current)
    return respond(ctx, principal, info, obj)


# -- route table: each handler serves the namespaced and the tenant-wide path ------------------


def _where(request: Request) -> tuple[str, str | None, str]:
    params = request.path_params
    return params["plural"], params.get("namespace"), params.get("name", "")


async def list_or_watch(request: Request) -> Any:
    plural, namespace, _ = _where(request)
    return await _collection_get(request, plural, namespace)


async def create(request: Request) -> JsonResponse:
    plural, namespace, _ = _where(request)
    return await _create(request, plural, namespace)


async def get_one(request: Request) -> JsonResponse:
    return await _get(request, *_where(request))


async def replace(request: Request) -> JsonResponse:
    return await _replace(request, *_where(request), status=False)


async def replace_status(request: Request) -> JsonResponse:
    return await _replace(request, *_where(request), status=True)


async def patch(request: Request) -> JsonResponse:
    return await _patch(request, *_where(request), status=False)


async def patch_status(request: Request) -> JsonResponse:
    return await _patch(request, *_where(request), status=True)


async def delete(request: Request) -> JsonResponse:
    return await _delete(request, *_where(request))


ROUTES: list[tuple[str, str, Callable[[Request], Awaitable[Any]]]] = [
    ("", "GET", list_or_watch),
    ("", "POST", create),
    ("/{name}", "GET", get_one),
    ("/{name}", "PUT", replace),
    ("/{name}", "PATCH", patch),
    ("/{name}", "DELETE", delete),
    ("/{name}/status", "GET", get_one),
    ("/{name}/status", "PUT", replace_status),
    ("/{name}/status", "PATCH", patch_status),
]
# Namespaced paths first: "/namespaces/x/y" must not be read as plural "namespaces".
for _prefix in (BASE + "/namespaces/{namespace}/{plural}", BASE + "/{plural}"):
    for _suffix, _method, _handler in ROUTES:
        router.add_api_route(_prefix + _suffix, _handler, methods=[_method], name=f"{_handler.__name__}")
