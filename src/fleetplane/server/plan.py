"""``POST /apis/fleetplane.io/v1/plan``: what writing some objects would do, writing nothing.

The body is one object or a ``List`` of them (what ``fleetplane apply -f`` would send). Each
is checked as a write would check it (kind, namespace, authorization, validation with field
paths, references such as an ``OsUpgrade``'s catalogue version, which may also come from
the same request) and merged with the stored object as ``apply`` merges it; the plan itself
is ``controllers.plan.plan_changes``. ``?limit=N`` caps the sites listed (0: all; the counts
are always exact); ``?namespace=NS`` is the namespace of objects that name none (default
``default``). Errors name the offending field, prefixed ``items[i].`` for a ``List`` body.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from fleetplane.controllers.plan import Change, plan_changes
from fleetplane.controllers.sections import SECTIONS
from fleetplane.core.apply import applied
from fleetplane.core.errors import ApiError, Cause, bad_request, invalid
from fleetplane.core.objects import Obj
from fleetplane.core.registry import API_VERSION, KindInfo, Scope
from fleetplane.kinds import SITE, VIRTUAL_SITE
from fleetplane.server.auth import Principal, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.native import BASE, check_identity, context, who
from fleetplane.server.requests import JsonResponse, int_param, read_object

router = APIRouter()
PATH = f"{BASE}/plan"
MAX_OBJECTS = 1000


def _items(body: dict[str, Any]) -> tuple[list[Any], bool]:
    if body.get("kind") == "List":
        items = body.get("items")
        if not isinstance(items, list):
            raise bad_request("a List needs items", [Cause("items", "must be a list of objects")])
        return items, True
    return [body], False


def _refuse(err: ApiError, where: str, what: str) -> ApiError:
    """``err`` about one document, its fields prefixed with where that document is."""
    causes = [
        Cause(f"{where}{c.field}" if c.field else where.rstrip("."), c.message, c.reason) for c in err.causes
    ]
    if not causes:
        causes = [Cause(where.rstrip(".") or "body", err.message)]
    if err.reason == "Invalid":
        message = f"{what} is invalid: " + "; ".join(f"{c.field}: {c.message}" for c in causes)
    else:
        message = f"{what}: {err.message}"
    return ApiError(err.code, err.reason, message, kind=err.kind, name=err.name, causes=causes)


def _merged(info: KindInfo, doc: Obj, current: Obj | None) -> Obj:
    """What ``fleetplane apply`` would store (``core/apply.py``: the file's labels, annotations
    and spec merged three ways over the stored object; the server owns the rest), with the
    defaults the server fills in on write."""
    if current is None:
        normal = info.normalize(applied(None, doc))
        return {**normal, "metadata": {**normal["metadata"], "generation": 1}}
    out = applied(current, doc)
    if info.spec_model is not None:
        out["spec"] = info.normalize({**doc, "spec": out.get("spec") or {}}).get("spec") or {}
    return out


Planned = dict[tuple[str, str, str], Obj]  # kind, namespace, name -> the object as it would be


def _check_one(
    ctx: ServerContext, principal: Principal, raw: Any, default_ns: str, planned: Planned
) -> Change:
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str) or not raw["kind"]:
        raise bad_request("every object needs a kind", [Cause("kind", "required", "FieldValueRequired")])
    info = _by_kind(ctx, raw["kind"])
    if info is None:
        raise bad_request(f'unknown kind "{raw["kind"]}"', [Cause("kind", f'unknown kind "{raw["kind"]}"')])
    if info.scope is Scope.SYSTEM or info.sealed_paths:
        raise bad_request(
            f"{info.plural} cannot be planned", [Cause("kind", f"{info.kind} cannot be planned")]
        )
    given = raw.get("metadata")
    meta: dict[str, Any] = given if isinstance(given, dict) else {}
    namespace = (meta.get("namespace") or default_ns) if info.namespaced else None
    doc = check_identity(info, {**raw, "metadata": dict(meta)}, namespace, None)
    doc.pop("status", None)
    tenant = principal.tenant
    name = str(doc["metadata"].get("name") or "")
    current = ctx.store.get_or_none(tenant, info.kind, namespace or "", name) if name else None
    authorize(principal, "update" if current is not None else "create", info, namespace)
    info.normalize(doc)  # refuses a bad file by field, as apply would
    obj = _merged(info, doc, current)
    _check_references(ctx, tenant, info, obj, current, planned)
    planned[(info.kind, namespace or "", name)] = obj
    return Change(obj=obj, current=current)


def _by_kind(ctx: ServerContext, kind: str) -> KindInfo | None:
    try:
        return ctx.registry.get(kind)
    except ApiError:
        return None


def _check_references(
    ctx: ServerContext,
    tenant: str,
    info: KindInfo,
    obj: Obj,
    current: Obj | None,
    planned: Planned,
) -> None:
    """As ``server.admission.check_references``, except that an object planned earlier in
    the same request counts as existing (a catalogue entry and the upgrade that uses it)."""
    check = info.extra.get("references")
    if check is None or (current is not None and current.get("spec") == obj.get("spec")):
        return

    def lookup(kind: str, namespace: str, name: str) -> Obj | None:
        if not name:
            return None
        return planned.get((kind, namespace, name)) or ctx.store.get_or_none(tenant, kind, namespace, name)

    causes = check(obj, lookup)
    if causes:
        raise invalid(info.kind, str(obj["metadata"].get("name") or ""), causes)


def _stored(ctx: ServerContext, tenant: str) -> tuple[int, list[Obj]]:
    revision = ctx.store.revision()
    out: list[Obj] = []
    for kind in (SITE.kind, VIRTUAL_SITE.kind, *SECTIONS.kinds):
        out += ctx.store.list(tenant, kind).items
    return revision, out


def make_plan(
    ctx: ServerContext, principal: Principal, body: dict[str, Any], default_ns: str, limit: int
) -> dict[str, Any]:
    items, is_list = _items(body)
    if not items:
        raise bad_request("nothing to plan", [Cause("items", "must not be empty")])
    if len(items) > MAX_OBJECTS:
        raise bad_request(
            f"at most {MAX_OBJECTS} objects per plan", [Cause("items", f"at most {MAX_OBJECTS}")]
        )
    planned: Planned = {}
    changes: list[Change] = []
    for i, raw in enumerate(items):
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        kind = raw.get("kind") if isinstance(raw, dict) else None
        what = f'{kind} "{name}"' if kind and name else (str(kind) if kind else "")
        try:
            changes.append(_check_one(ctx, principal, raw, default_ns, planned))
        except ApiError as exc:
            if not is_list or exc.code in (401, 403):
                raise
            raise _refuse(exc, f"items[{i}].", f"items[{i}] ({what})" if what else f"items[{i}]") from exc
    revision, stored = _stored(ctx, principal.tenant)
    plan = plan_changes(principal.tenant, stored, changes, limit=limit)
    return {"apiVersion": API_VERSION, "kind": "Plan", "metadata": {"resourceVersion": str(revision)}, **plan}


@router.post(PATH)
async def plan(request: Request) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    body = await read_object(request)
    limit = int_param(request, "limit", 0)
    default_ns = request.query_params.get("namespace") or "default"
    result = await asyncio.to_thread(make_plan, ctx, principal, body, default_ns, limit)
    return JsonResponse(result)
