"""What every vK8s handler shares: the request's scope (caller, tenant, the VK8s object),
the stored <-> Kubernetes form of objects, and upstream-shaped errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from fleetplane.core.errors import ApiError, forbidden
from fleetplane.core.objects import Obj
from fleetplane.kinds.vk8s import VK8S, K8sResource, api_path
from fleetplane.server.auth import Principal, authenticate, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.sealing import seal, unseal

NOT_FOUND = "the server could not find the requested resource"


def not_found() -> ApiError:
    return ApiError(404, "NotFound", NOT_FOUND)


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def plural_q(r: K8sResource) -> str:
    return f"{r.plural}.{r.group}" if r.group else r.plural


@dataclass(frozen=True)
class VScope:
    """One request to one vK8s: who calls, in which tenant, for which namespace."""

    ctx: ServerContext
    principal: Principal
    namespace: str
    name: str
    vk8s: Obj

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def prefix(self) -> str:
        return api_path(self.namespace, self.name)

    def authorize(self, verb: str, r: K8sResource, namespace: str) -> None:
        if namespace != self.namespace:
            raise forbidden(
                f'{plural_q(r)} is forbidden: vK8s "{self.namespace}/{self.name}" serves only namespace '
                f'"{self.namespace}", not "{namespace}"'
            )
        try:
            authorize(self.principal, verb, r.info, namespace)
        except ApiError as exc:
            raise forbidden(
                f'{plural_q(r)} is forbidden: {self.principal.describe()} cannot {verb} resource "{r.plural}"'
                f' in API group "{r.group}" in the namespace "{namespace}"'
            ) from exc

    def to_k8s(self, r: K8sResource, stored: Obj) -> Obj:
        """The stored object as the Kubernetes API shows it (kind, apiVersion; secrets opened)."""
        opened = unseal(self.ctx, self.tenant, r.info, stored)
        out: Obj = {"apiVersion": r.api_version, "kind": r.kind}
        out.update((k, v) for k, v in opened.items() if k not in ("apiVersion", "kind"))
        return out

    def to_store(self, r: K8sResource, obj: Obj) -> Obj:
        stored: Obj = {"apiVersion": r.api_version, "kind": r.store_kind}
        stored.update((k, v) for k, v in obj.items() if k not in ("apiVersion", "kind"))
        return seal(self.ctx, self.tenant, r.info, stored)


async def resolve(request: Request) -> VScope:
    """Authenticate the caller and find the VK8s the path names (403 when the caller may not
    read its namespace, before anything is looked up; 404 when it does not exist in the
    caller's tenant)."""
    ctx: ServerContext = request.app.state.ctx
    principal = await asyncio.to_thread(authenticate, ctx.store, request.headers.get("authorization"))
    namespace, name = request.path_params["vns"], request.path_params["vname"]
    try:
        authorize(principal, "get", VK8S, namespace)
    except ApiError as exc:
        raise forbidden(f'{principal.describe()} cannot use vK8s "{namespace}/{name}"') from exc
    obj = await asyncio.to_thread(ctx.store.get_or_none, principal.tenant, VK8S.kind, namespace, name)
    if obj is None:
        raise ApiError(404, "NotFound", f'vK8s "{namespace}/{name}" not found', kind="vk8s", name=name)
    return VScope(ctx, principal, namespace, name, obj)


def translate(exc: ApiError, r: K8sResource, name: str) -> ApiError:
    """A store error in upstream's words (``deployments.apps "web" not found``)."""
    what = f'{plural_q(r)} "{name}"'
    if exc.reason == "NotFound":
        return ApiError(404, "NotFound", f"{what} not found", kind=r.plural, name=name, group=r.group)
    if exc.reason == "AlreadyExists":
        return ApiError(
            409, "AlreadyExists", f"{what} already exists", kind=r.plural, name=name, group=r.group
        )
    if exc.reason == "Conflict" and not exc.causes:
        return ApiError(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {what}: the object has been modified; "
            "please apply your changes to the latest version and try again",
            kind=r.plural,
            name=name,
            group=r.group,
        )
    return exc


def success(r: K8sResource, obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    details = {"name": meta.get("name", ""), "group": r.group, "kind": r.plural, "uid": meta.get("uid", "")}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
