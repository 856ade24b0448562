"""Onboarding on the server: registration tokens, registrations and the operator's decisions.

Tokens are ``fpt_<tenant>_<name>_<64 hex>``; only the SHA-256 of the secret part is stored.
A registration stays ``Pending`` until accepted (which creates the Site and signs its CSR)
or rejected, and expires when left pending longer than ``--registration-ttl``.
The wire protocol is ``docs/onboarding-protocol.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Request

from fleetplane.core.errors import ApiError, Cause, bad_request, conflict, unauthorized
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.core.registry import GROUP, VERSION
from fleetplane.core.store import Store, StoreBatch
from fleetplane.kinds import REGISTRATION, REGISTRATION_TOKEN, SITE
from fleetplane.server.auth import Principal, authenticate, authorize, hash_secret
from fleetplane.server.context import ServerContext
from fleetplane.server.identity import Issued, identity
from fleetplane.server.requests import JsonResponse, read_object

TOKEN_PREFIX = "fpt"  # noqa: S105  (a prefix, not a secret)
POLL_PREFIX = "fpp"
RETRIES = 20
router = APIRouter()


def _ts(value: str) -> dt.datetime:
    return dt.datetime.strptime(value.split(".", maxsplit=1)[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.UTC
    )


def ca_hash(ca_file: Path) -> str | None:
    """``sha256:<hex>`` over the DER SubjectPublicKeyInfo of the serving CA (kubeadm-style)."""
    try:
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError):
        return None
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def mint_token(ctx: ServerContext, tenant: str, name: str) -> tuple[dict[str, Any], str]:
    """The token to reveal once (with the CA hash agents pin) and the hash to store."""
    secret = secrets.token_hex(32)
    reveal: dict[str, Any] = {"token": f"{TOKEN_PREFIX}_{tenant}_{name}_{secret}"}
    digest = ca_hash(ctx.settings.data_dir / "tls" / "serving-ca.crt") if ctx.settings.tls else None
    if digest:
        reveal["caHash"] = digest
    return reveal, hash_secret(secret)


def _check_token(reader: Store | StoreBatch, token: str) -> tuple[str, Obj]:
    """(tenant, token object) of a valid, unexpired, not used-up registration token, or 401."""
    parts = token.split("_")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise unauthorized("Unauthorized: malformed registration token")
    _, tenant, name, secret = parts
    obj = reader.get_or_none(tenant, REGISTRATION_TOKEN.kind, "", name) if tenant and name else None
    stored = str(((obj or {}).get("status") or {}).get("keyHash") or "")
    if obj is None or not hmac.compare_digest(stored, hash_secret(secret)):
        raise unauthorized("Unauthorized: unknown or deleted registration token")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    expires = spec.get("expiresAt")
    if expires and _ts(str(expires)) <= dt.datetime.now(dt.UTC):
        raise unauthorized(f'Unauthorized: registration token "{name}" expired at {expires}')
    uses, max_uses = int(status.get("uses") or 0), spec.get("maxUses")
    if max_uses is not None and uses >= int(max_uses):
        raise unauthorized(
            f'Unauthorized: registration token "{name}" is used up ({uses} of {max_uses} uses)'
        )
    return tenant, obj


def check_token(ctx: ServerContext, token: str) -> tuple[str, Obj]:
    """A read-only :func:`consume_token`: to refuse a bad token before doing any work for it."""
    return _check_token(ctx.store, token)


def _count_use(writer: Store | StoreBatch, tenant: str, obj: Obj) -> Obj:
    status = obj.get("status") or {}
    updated = {
        **obj,
        "status": {**status, "uses": int(status.get("uses") or 0) + 1, "lastUsed": now_rfc3339()},
    }
    return writer.update(tenant, updated, part="status")


def consume_token(ctx: ServerContext, token: str, batch: StoreBatch | None = None) -> tuple[str, Obj]:
    """Check a registration token and count one use; (tenant, token object) or 401 saying why.
    In a ``batch`` (which holds the write lock) the check and the count cannot race."""
    if batch is not None:
        tenant, obj = _check_token(batch, token)
        return tenant, _count_use(batch, tenant, obj)
    for _ in range(RETRIES):
        tenant, obj = _check_token(ctx.store, token)
        try:
            return tenant, _count_use(ctx.store, tenant, obj)
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
    raise ApiError(409, "Conflict", "the registration token is being used concurrently; try again")


def registration_name(requested: str | None, hostname: str | None) -> str:
    base = "".join(c if c.isalnum() else "-" for c in (requested or hostname or "site").lower())
    base = "-".join(p for p in base.split("-") if p)[:40] or "site"
    return f"{base}-{secrets.token_hex(3)}"


def poll_token(tenant: str, name: str) -> tuple[str, str]:
    secret = secrets.token_hex(32)
    return f"{POLL_PREFIX}_{tenant}_{name}_{secret}", hash_secret(secret)


def check_poll_token(ctx: ServerContext, authorization: str | None, name: str) -> tuple[str, Obj]:
    token = (authorization or "").removeprefix("Bearer ").strip()
    parts = token.split("_")
    if len(parts) != 4 or parts[0] != POLL_PREFIX or parts[2] != name:
        raise unauthorized("Unauthorized: the poll token from the registration answer is required")
    tenant = parts[1]
    obj = ctx.store.get_or_none(tenant, REGISTRATION.kind, "", name)
    stored = str(((obj or {}).get("status") or {}).get("pollHash") or "")
    if obj is None or not hmac.compare_digest(stored, hash_secret(parts[3])):
        raise unauthorized(f'Unauthorized: unknown registration "{name}" or wrong poll token')
    return tenant, obj


def expire_if_stale(ctx: ServerContext, tenant: str, reg: Obj) -> Obj:
    """Level-triggered expiry: a Pending registration older than the TTL becomes Expired."""
    status = reg.get("status") or {}
    if status.get("phase", "Pending") != "Pending":
        return reg
    created = _ts(str(reg["metadata"]["creationTimestamp"]))
    if dt.datetime.now(dt.UTC) - created < dt.timedelta(seconds=ctx.settings.registration_ttl):
        return reg
    reason = f"not accepted within {int(ctx.settings.registration_ttl)}s; the agent must register again"
    try:
        return ctx.store.update(
            tenant,
            {**reg, "status": {**status, "phase": "Expired", "reason": reason, "decidedAt": now_rfc3339()}},
            part="status",
        )
    except ApiError as exc:
        if exc.reason != "Conflict":
            raise
        return ctx.store.get(tenant, REGISTRATION.kind, "", reg["metadata"]["name"])


def _decided(reg: Obj) -> ApiError:
    status = reg.get("status") or {}
    name = reg["metadata"]["name"]
    detail = f"the registration is already {status.get('phase')}"
    if status.get("reason"):
        detail += f" ({status['reason']})"
    return conflict(REGISTRATION.kind, name, detail, REGISTRATION.plural)


def plan_accept(
    ctx: ServerContext,
    tenant: str,
    name: str,
    spec: dict[str, Any],
    site_name: str | None,
    labels: dict[str, str],
    source: Obj | None,
) -> tuple[Obj, Issued]:
    """The Site that accepting registration ``name`` (of ``spec``) creates, with the
    certificate signed for it; nothing is written yet (see :func:`record_accept`)."""
    site = site_name or spec.get("requestedName") or name
    wanted = {
        **((source or {}).get("spec") or {}).get("labels", {}),
        **spec.get("requestedLabels", {}),
        **labels,
    }
    site_spec: dict[str, Any] = {}
    facts = spec.get("facts") or {}
    if facts.get("coordinates"):
        site_spec["coordinates"] = facts["coordinates"]
    if facts.get("hostname"):
        site_spec["description"] = f"registered from host {facts['hostname']}"
    site_obj = SITE.normalize(
        {
            "metadata": {
                "name": site,
                "labels": wanted,
                "annotations": {"fleetplane.io/registration": name},
            },
            "spec": site_spec,
        }
    )
    issued = identity(ctx).sign(tenant, spec["csr"], site)
    site_obj["status"] = {
        "phase": "Pending",
        "softwareVersion": facts.get("agentVersion"),
        "osVersion": facts.get("osVersion"),
        "identity": {"serial": issued.serial_hex, "notAfter": issued.not_after, "registration": name},
    }
    return SITE.normalize(site_obj), issued


def record_accept(
    ctx: ServerContext, writer: Store | StoreBatch, tenant: str, reg: Obj, site_obj: Obj, issued: Issued
) -> Obj:
    """Create the planned Site and mark the registration Accepted with its certificate."""
    create_site(writer, tenant, site_obj)
    decided = accepted_status(ctx, tenant, reg.get("status") or {}, site_obj, issued)
    return writer.update(tenant, {**reg, "status": decided}, part="status")


def create_site(writer: Store | StoreBatch, tenant: str, site_obj: Obj) -> None:
    site = site_obj["metadata"]["name"]
    try:
        writer.create(tenant, site_obj)
    except ApiError as exc:
        if exc.code == 409:
            raise ApiError(
                409,
                "AlreadyExists",
                f'site "{site}" already exists: accept with another name (--name) or delete that site first',
                kind=SITE.plural,
                name=site,
            ) from None
        raise


def accepted_status(
    ctx: ServerContext, tenant: str, status: dict[str, Any], site_obj: Obj, issued: Issued
) -> dict[str, Any]:
    """A registration's status once accepted: the site and the certificate handed to the agent."""
    return {
        **status,
        "phase": "Accepted",
        "site": site_obj["metadata"]["name"],
        "certificate": issued.certificate,
        "caBundle": identity(ctx).bundle(tenant),
        "decidedAt": now_rfc3339(),
    }


def accept(
    ctx: ServerContext,
    tenant: str,
    name: str,
    site_name: str | None,
    labels: dict[str, str],
    source: Obj | None,
) -> Obj:
    """Create the Site, sign its certificate and mark the registration Accepted."""
    reg = expire_if_stale(ctx, tenant, ctx.store.get(tenant, REGISTRATION.kind, "", name))
    if (reg.get("status") or {}).get("phase", "Pending") != "Pending":
        raise _decided(reg)
    site_obj, issued = plan_accept(ctx, tenant, name, reg["spec"], site_name, labels, source)
    try:
        # One transaction: the Site exists exactly when the registration says Accepted.
        with ctx.store.batch() as batch:
            return record_accept(ctx, batch, tenant, reg, site_obj, issued)
    except ApiError as exc:
        if exc.reason != "AlreadyExists":  # someone decided first: the certificate is void
            identity(ctx).revoke(tenant, issued.serial, "superseded")
        raise


def reject(ctx: ServerContext, tenant: str, name: str, reason: str) -> Obj:
    reg = expire_if_stale(ctx, tenant, ctx.store.get(tenant, REGISTRATION.kind, "", name))
    status = reg.get("status") or {}
    if status.get("phase", "Pending") != "Pending":
        raise _decided(reg)
    decided = {**status, "phase": "Rejected", "reason": reason, "decidedAt": now_rfc3339()}
    return ctx.store.update(tenant, {**reg, "status": decided}, part="status")


# -- operator routes: accept / reject --------------------------------------------------------

BASE = f"/apis/{GROUP}/{VERSION}/registrations"


async def _operator(request: Request) -> tuple[ServerContext, Principal]:
    ctx: ServerContext = request.app.state.ctx
    who = await asyncio.to_thread(authenticate, ctx.store, request.headers.get("authorization"))
    authorize(who, "create", SITE, None)  # deciding a registration creates a site
    return ctx, who


def _labels(body: dict[str, Any]) -> dict[str, str]:
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise bad_request("labels must be a map of strings", [Cause("labels", "must be a map of strings")])
    return {str(k): v for k, v in labels.items()}


@router.post(BASE + "/{name}/accept")
async def accept_route(request: Request, name: str) -> JsonResponse:
    ctx, who = await _operator(request)
    raw = await request.body()
    body = await read_object(request) if raw.strip() else {}
    site_name = body.get("name")
    if site_name is not None and not isinstance(site_name, str):
        raise bad_request("name must be a string", [Cause("name", "must be a string")])
    source = await asyncio.to_thread(_source_of, ctx, who.tenant, name)
    obj = await asyncio.to_thread(accept, ctx, who.tenant, name, site_name, _labels(body), source)
    return JsonResponse(REGISTRATION.redact(obj))


@router.post(BASE + "/{name}/reject")
async def reject_route(request: Request, name: str) -> JsonResponse:
    ctx, who = await _operator(request)
    body = await read_object(request)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise bad_request("a reason is required", [Cause("reason", "required", "FieldValueRequired")])
    obj = await asyncio.to_thread(reject, ctx, who.tenant, name, reason.strip())
    return JsonResponse(REGISTRATION.redact(obj))


def _source_of(ctx: ServerContext, tenant: str, name: str) -> Obj | None:
    """The token or manufacturer a registration came through (for its labels)."""
    from fleetplane.kinds import TRUSTED_MANUFACTURER

    reg = ctx.store.get(tenant, REGISTRATION.kind, "", name)
    spec = reg.get("spec") or {}
    if spec.get("method") == "token" and spec.get("tokenName"):
        return ctx.store.get_or_none(tenant, REGISTRATION_TOKEN.kind, "", spec["tokenName"])
    if spec.get("method") == "device" and spec.get("manufacturer"):
        return ctx.store.get_or_none(tenant, TRUSTED_MANUFACTURER.kind, "", spec["manufacturer"])
    return None
