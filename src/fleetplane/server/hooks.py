"""The few places where a kind needs the server to do more than store it.

Access keys and registration tokens: the secret is minted by the server, stored only as a
hash and revealed once in the create response. Tenants: creating one mints its first admin
key. Hidden (server-owned) fields survive a client's status write. Sites: their identity is
server-owned, and deleting or decommissioning one revokes its certificate at once.
"""

from __future__ import annotations

from typing import Any

from fleetplane.core.errors import forbidden
from fleetplane.core.objects import Obj
from fleetplane.core.registry import KindInfo
from fleetplane.kinds import ACCESS_KEY, REGISTRATION_TOKEN, SITE, TENANT
from fleetplane.server.admission import check_references
from fleetplane.server.auth import Principal, mint_key
from fleetplane.server.context import ServerContext

Reveal = dict[str, Any]


def _is_system_key(obj: Obj | None) -> bool:
    return bool(obj and (obj.get("spec") or {}).get("system"))


def _carries(obj: Obj, path: str) -> bool:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _keep_server_fields(info: KindInfo, obj: Obj, current: Obj, sent: Obj | None = None) -> Obj:
    """Clients never see hidden paths (nor a site's identity), so they cannot mean to change them.

    A hidden path that is also sealed is a write-only credential (an AlertReceiver's webhook
    headers): a request whose body (``sent``, as the client sent it, before defaults) carries
    it sets it, one that leaves it out keeps the stored value.
    """
    kept = [*info.hidden_paths, *(("status.identity",) if info is SITE else ())]
    kept = [p for p in kept if not (sent is not None and p in info.sealed_paths and _carries(sent, p))]
    out = {**obj}
    for path in kept:
        head, _, leaf = path.rpartition(".")
        src: Any = current
        dst: dict[str, Any] = out
        for part in head.split(".") if head else []:
            src = src.get(part) if isinstance(src, dict) else None
            child = dst.get(part)
            dst[part] = child = dict(child) if isinstance(child, dict) else {}
            dst = child
        if isinstance(src, dict) and leaf in src:
            dst[leaf] = src[leaf]
        else:
            dst.pop(leaf, None)
    return out


def _site_serial(site: Obj | None) -> int | None:
    serial = (((site or {}).get("status") or {}).get("identity") or {}).get("serial")
    return int(str(serial), 16) if serial else None


def before_write(
    ctx: ServerContext, who: Principal, info: KindInfo, obj: Obj, current: Obj | None, sent: Obj | None = None
) -> Obj:
    if info is ACCESS_KEY and not who.system:
        if _is_system_key(obj):
            raise forbidden(f"{who.describe()} cannot grant system access")
        if _is_system_key(current):
            raise forbidden(f"{who.describe()} cannot change a system key")
    check_references(ctx, who.tenant, info, obj, current)
    if current is not None:
        obj = _keep_server_fields(info, obj, current, sent)
    if info is SITE and current is not None:
        phase = (obj.get("status") or {}).get("phase")
        serial = _site_serial(current)
        if phase == "Decommissioned" and serial is not None:
            from fleetplane.server.identity import identity

            identity(ctx).revoke(who.tenant, serial, "cessationOfOperation")
    return obj


def before_delete(ctx: ServerContext, who: Principal, info: KindInfo, current: Obj) -> None:
    if info is ACCESS_KEY and _is_system_key(current) and not who.system:
        raise forbidden(f"{who.describe()} cannot delete a system key")
    if info is TENANT and current["metadata"]["name"] == who.tenant:
        raise forbidden(f"{who.describe()} cannot delete its own tenant")


def after_delete(ctx: ServerContext, who: Principal, info: KindInfo, current: Obj) -> None:
    serial = _site_serial(current) if info is SITE else None
    if serial is not None:
        from fleetplane.server.identity import identity

        identity(ctx).revoke(who.tenant, serial, "cessationOfOperation")


def prepare_create(ctx: ServerContext, who: Principal, info: KindInfo, obj: Obj) -> tuple[Obj, Reveal]:
    obj = before_write(ctx, who, info, obj, None)
    if info is ACCESS_KEY:
        secret, digest = mint_key(who.tenant, obj["metadata"]["name"])
        return {**obj, "status": {**(obj.get("status") or {}), "keyHash": digest}}, {"accessKey": secret}
    if info is REGISTRATION_TOKEN:
        from fleetplane.server.onboarding import mint_token

        reveal, digest = mint_token(ctx, who.tenant, obj["metadata"]["name"])
        return {**obj, "status": {"uses": 0, "keyHash": digest}}, reveal
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
