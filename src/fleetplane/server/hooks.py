"""The few places where a kind needs the server to do more than store it.

Access keys: the secret is minted by the server, stored only as a hash and revealed
once in the create response. Tenants: creating one mints its first admin key.
"""

from __future__ import annotations

from typing import Any

from fleetplane.core.errors import forbidden
from fleetplane.core.objects import Obj
from fleetplane.core.registry import KindInfo
from fleetplane.kinds import ACCESS_KEY, TENANT
from fleetplane.server.auth import Principal, mint_key
from fleetplane.server.context import ServerContext

Reveal = dict[str, Any]


def _is_system_key(obj: Obj | None) -> bool:
    return bool(obj and (obj.get("spec") or {}).get("system"))


def before_write(ctx: ServerContext, who: Principal, info: KindInfo, obj: Obj, current: Obj | None) -> Obj:
    if info is ACCESS_KEY and not who.system:
        if _is_system_key(obj):
            raise forbidden(f"{who.describe()} cannot grant system access")
        if _is_system_key(current):
            raise forbidden(f"{who.describe()} cannot change a system key")
    return obj


def before_delete(ctx: ServerContext, who: Principal, info: KindInfo, current: Obj) -> None:
    if info is ACCESS_KEY and _is_system_key(current) and not who.system:
        raise forbidden(f"{who.describe()} cannot delete a system key")
    if info is TENANT and current["metadata"]["name"] == who.tenant:
        raise forbidden(f"{who.describe()} cannot delete its own tenant")


def prepare_create(ctx: ServerContext, who: Principal, info: KindInfo, obj: Obj) -> tuple[Obj, Reveal]:
    obj = before_write(ctx, who, info, obj, None)
    if info is ACCESS_KEY:
        secret, digest = mint_key(who.tenant, obj["metadata"]["name"])
        return {**obj, "status": {**(obj.get("status") or {}), "keyHash": digest}}, {"accessKey": secret}
    return obj, {}


def after_create(ctx: ServerContext, who: Principal, info: KindInfo, created: Obj, reveal: Reveal) -> Obj:
    if info is TENANT:
        tenant = created["metadata"]["name"]
        secret, digest = mint_key(tenant, "admin")
        key = ACCESS_KEY.normalize(
            {
                "metadata": {"name": "admin", "labels": {"fleetplane.io/bootstrap": "true"}},
                "spec": {"role": "admin", "description": f"first admin key of tenant {tenant}"},
            }
        )
        key["status"] = {"keyHash": digest}
        if ctx.store.get_or_none(tenant, ACCESS_KEY.kind, "", "admin") is None:
            ctx.store.create(tenant, key)
        else:  # a tenant re-created under an old name: its old admin key must not come back
            ctx.store.update(tenant, key)
        reveal = {**reveal, "adminAccessKey": secret}
    if reveal:
        return {**created, "status": {**(created.get("status") or {}), **reveal}}
    return created
