"""The URL space of one vK8s, ``/api/vK8s/namespaces/<namespace>/<name>/<kubernetes path>``:
one route that parses the Kubernetes path itself, so that every unknown resource is a 404
and every unsupported verb a 405, each with a ``Status`` body."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from fleetplane.core.errors import ApiError
from fleetplane.core.registry import API_VERSION
from fleetplane.kinds.vk8s import API_PREFIX, VK8S, k8s_resource
from fleetplane.server import native
from fleetplane.server.auth import authorize
from fleetplane.server.requests import JsonResponse, bool_param
from fleetplane.server.vk8s import discovery, openapi, resources, watch, workload_view
from fleetplane.server.vk8s.common import VScope, method_not_allowed, not_found, resolve

router = APIRouter()
router.include_router(workload_view.router)
PREFIX = API_PREFIX + "/{vns}/{vname}"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
POD_STREAMS = ("log", "exec", "attach", "portforward")


async def _discovery(s: VScope, request: Request, parts: list[str]) -> Any:
    if parts == ["version"]:
        return JsonResponse(discovery.version())
    if parts == ["api"]:
        return JsonResponse(discovery.api_versions(request.headers.get("host", "")))
    if parts == ["apis"]:
        return JsonResponse(discovery.api_group_list())
    if parts == ["openapi", "v3"]:
        return JsonResponse(openapi.index(s.prefix))
    if parts[:2] == ["openapi", "v3"]:
        doc = await asyncio.to_thread(openapi.lookup, parts[2:])
        if doc is None:
            raise not_found()
        return Response(doc, media_type="application/json")
    if len(parts) == 2 and parts[0] == "apis":
        group = discovery.api_group(parts[1])
        if group is None:
            raise not_found()
        return JsonResponse(group)
    if parts == ["api", "v1"]:
        return JsonResponse(discovery.resource_list("", "v1"))
    if len(parts) == 3 and parts[0] == "apis":
        found = discovery.resource_list(parts[1], parts[2])
        if found is None:
            raise not_found()
        return JsonResponse(found)
    return None


def _namespace(s: VScope, name: str) -> dict[str, Any]:
    """The one namespace a vK8s serves, as a read-only Namespace (kubectl looks it up)."""
    if name != s.namespace:
        raise ApiError(404, "NotFound", f'namespaces "{name}" not found', kind="namespaces", name=name)
    meta = s.vk8s["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": meta.get("uid"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


async def _resource(s: VScope, request: Request, group: str, version: str, tail: list[str]) -> Any:
    namespace = s.namespace
    if group == "" and tail[:1] == ["namespaces"] and len(tail) == 2 and request.method == "GET":
        return JsonResponse(_namespace(s, tail[1]))
    if tail and tail[0] == "namespaces":
        if len(tail) < 3:
            raise not_found()  # the Namespace resource itself is not served
        namespace, tail = tail[1], tail[2:]
    r = k8s_resource(group, version, tail[0]) if tail else None
    if r is None or len(tail) > 3:
        raise not_found()
    name = tail[1] if len(tail) > 1 else None
    sub = tail[2] if len(tail) > 2 else None
    if r.kind == "Pod" and name is not None and sub in POD_STREAMS and request.method in ("GET", "POST"):
        s.authorize("get", r, namespace)
        await resources.get_object(s, r, request, namespace, name)  # a missing pod is a 404 first
        raise ApiError(
            400,
            "BadRequest",
            f'pod "{name}": {sub} is not supported by vK8s: the pod runs on a site '
            "(its ves.io/site label); read its logs or open a shell there",
        )
    if sub is not None and sub not in r.subresources:
        raise not_found()
    method = request.method
    if name is None:
        if method == "GET":
            watching = bool_param(request, "watch")
            s.authorize("watch" if watching else "list", r, namespace)
            if watching:
                return await watch.watch(s, r, request, namespace)
            return await resources.list_objects(s, r, request, namespace)
        if method == "POST" and not r.read_only:
            s.authorize("create", r, namespace)
            return await resources.create(s, r, request, namespace)
        raise method_not_allowed()
    if method == "GET":
        s.authorize("get", r, namespace)
        if sub == "scale":
            return await resources.get_scale(s, r, namespace, name)
        return await resources.get_object(s, r, request, namespace, name)
    if r.read_only or method == "POST" or (method == "DELETE" and sub is not None):
        raise method_not_allowed()
    if method == "PUT":
        s.authorize("update", r, namespace)
        return await resources.replace(s, r, request, namespace, name, sub)
    if method == "PATCH":
        s.authorize("patch", r, namespace)
        return await resources.patch(s, r, request, namespace, name, sub)
    s.authorize("delete", r, namespace)
    return await resources.delete(s, r, request, namespace, name)


@router.api_route(PREFIX + "/{rest:path}", methods=METHODS, include_in_schema=False)
async def dispatch(request: Request) -> Any:
    """Every vK8s request; a complete answer carries ``Server-Timing: app;dur=<ms>`` (from
    routing to the rendered body: what ``bench/vk8s.py`` reports as server time)."""
    start = time.perf_counter()
    answer = await _dispatch(request)
    if isinstance(answer, Response) and not isinstance(answer, StreamingResponse):
        answer.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
    return answer


async def _dispatch(request: Request) -> Any:
    s = await resolve(request)
    parts = [p for p in request.path_params["rest"].split("/") if p]
    if not parts:
        raise not_found()
    # /version, /api, /api/v1, /apis, /apis/<g>, /apis/<g>/<v>, /openapi/...: read-only documents.
    discovery_path = parts[0] == "openapi" or (
        parts[0] in ("version", "api", "apis") and len(parts) <= (3 if parts[0] == "apis" else 2)
    )
    if discovery_path:
        if request.method != "GET":
            raise method_not_allowed()
        shown = await _discovery(s, request, parts)
        if shown is not None:
            return shown
    if parts[:2] == ["api", "v1"]:
        return await _resource(s, request, "", "v1", parts[2:])
    if parts[0] == "apis" and len(parts) > 3:
        return await _resource(s, request, parts[1], parts[2], parts[3:])
    raise not_found()


@router.post(f"/apis/{API_VERSION}/namespaces/{{namespace}}/{VK8S.plural}", include_in_schema=False)
async def create_vk8s(request: Request) -> JsonResponse:
    """At most one VK8s per namespace; otherwise the native create, unchanged."""
    ctx = native.context(request)
    principal = await native.who(request)
    namespace = request.path_params["namespace"]
    authorize(principal, "create", VK8S, namespace)
    existing = await asyncio.to_thread(
        ctx.store.list, principal.tenant, VK8S.kind, namespace=namespace, limit=1
    )
    if existing.items:
        other = existing.items[0]["metadata"]["name"]
        raise ApiError(
            409,
            "AlreadyExists",
            f'namespace "{namespace}" already has a vK8s ("{other}"): at most one per namespace',
            kind=VK8S.plural,
            name=other,
        )
    request.scope["path_params"] = {**request.path_params, "plural": VK8S.plural}
    return await native.create(request)
