"""The site-facing API, ``/site-api/v1``: registration, polling, and the mTLS calls of a
registered site. The contract is ``docs/onboarding-protocol.md``.

A site is authenticated only by the client certificate its TLS connection presented, as
the ASGI TLS extension carries it (``server/tls.py``), never by a header; the certificate is
verified again here (chain, validity, revocation, tenant) and must be the one the Site's
``status.identity`` names, of a Site that exists and is not decommissioned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from fleetplane.core.errors import ApiError, Cause, bad_request, forbidden, invalid, unauthorized
from fleetplane.core.objects import Obj
from fleetplane.identity.pki import IdentityError, check_issued_by, check_window, public_key_from_request
from fleetplane.kinds import REGISTRATION, SITE, TRUSTED_MANUFACTURER
from fleetplane.server.context import ServerContext
from fleetplane.server.identity import identity
from fleetplane.server.onboarding import (
    accepted_status,
    check_poll_token,
    check_token,
    consume_token,
    create_site,
    expire_if_stale,
    plan_accept,
    poll_token,
    registration_name,
)
from fleetplane.server.requests import JsonResponse, read_object
from fleetplane.server.site_status import status_writer, validated_status
from fleetplane.server.tls import PemChain

PREFIX = "/site-api/v1"
NONCE_LIFETIME = 300
MAX_WAIT = 60
DEFAULT_TENANT = "default"
RETRIES = 20
router = APIRouter(prefix=PREFIX)
log = logging.getLogger("fleetplane.server")


def _ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


# -- nonces: self-verifying, so any replica can check one -------------------------------------


def make_nonce(key: bytes, now: float | None = None) -> tuple[str, int]:
    expires = int((now or time.time()) + NONCE_LIFETIME)
    payload = f"{expires}.{secrets.token_hex(16)}"
    mac = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}", expires


def check_nonce(key: bytes, nonce: str) -> None:
    parts = nonce.split(".") if isinstance(nonce, str) else []
    if len(parts) != 3 or not parts[0].isdigit():
        raise unauthorized("Unauthorized: malformed device nonce; get one from GET /site-api/v1/nonce")
    mac = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, parts[2]):
        raise unauthorized("Unauthorized: the device nonce was not issued by this server")
    if int(parts[0]) < time.time():
        raise unauthorized("Unauthorized: the device nonce is stale (older than 5 minutes); get a new one")


@router.get("/nonce")
async def nonce(request: Request) -> JsonResponse:
    key = await asyncio.to_thread(identity(_ctx(request)).nonce_key)
    value, expires = make_nonce(key)
    when = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return JsonResponse({"nonce": value, "expiresAt": when})


# -- device proof ---------------------------------------------------------------------------------


def _verify_signature(leaf: x509.Certificate, message: bytes, signature: bytes) -> None:
    key = leaf.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise unauthorized("Unauthorized: device keys must be ECDSA or RSA")
    except InvalidSignature:
        raise unauthorized(
            "Unauthorized: bad device proof: the signature over nonce + SHA-256(csr) does not verify"
        ) from None


def _chains_to(chain: list[x509.Certificate], anchors: list[x509.Certificate], now: dt.datetime) -> bool:
    """Whether ``chain`` (leaf first) leads to one of ``anchors`` through valid CA certificates."""
    current, rest = chain[0], list(chain[1:])
    for _ in range(len(chain) + 1):
        for anchor in anchors:
            try:
                check_issued_by(current, anchor, "device certificate")
                check_window(anchor, now, "manufacturer CA")
                return True
            except IdentityError:
                continue
        nxt = None
        for cand in rest:
            try:
                check_issued_by(current, cand, "device certificate")
                bc = cand.extensions.get_extension_for_class(x509.BasicConstraints).value
                check_window(cand, now, "device intermediate")
            except (IdentityError, x509.ExtensionNotFound):
                continue
            if bc.ca:
                nxt = cand
                break
        if nxt is None:
            return False
        rest.remove(nxt)
        current = nxt
    return False


def device_proof(ctx: ServerContext, tenant: str, device: Any, csr: str) -> tuple[str, Obj]:
    """(subject, manufacturer) for a valid device proof; 401 (bad proof) or 403 (untrusted)."""
    if not isinstance(device, dict):
        raise bad_request("device must be an object", [Cause("device", "must be an object")])
    check_nonce(identity(ctx).nonce_key(), str(device.get("nonce") or ""))
    try:
        pems = device.get("certificates") or []
        chain = [x509.load_pem_x509_certificate(str(p).encode()) for p in pems]
        signature = base64.b64decode(str(device.get("signature") or ""), validate=True)
    except (ValueError, binascii.Error, TypeError):
        raise unauthorized("Unauthorized: bad device proof: unreadable certificates or signature") from None
    if not chain:
        raise unauthorized("Unauthorized: bad device proof: no device certificate")
    message = str(device["nonce"]).encode() + hashlib.sha256(csr.encode()).digest()
    _verify_signature(chain[0], message, signature)
    now = dt.datetime.now(dt.UTC)
    try:
        check_window(chain[0], now, "device certificate")
    except IdentityError as exc:
        raise unauthorized(f"Unauthorized: {exc.message}") from None
    subject = chain[0].subject.rfc4514_string()
    for maker in ctx.store.list(tenant, TRUSTED_MANUFACTURER.kind).items:
        anchors = x509.load_pem_x509_certificates(str(maker["spec"]["caBundle"]).encode())
        if _chains_to(chain, anchors, now):
            return subject, maker
    raise forbidden(
        f'Forbidden: device certificate "{subject}" is not from a manufacturer trusted by tenant "{tenant}"'
    )


# -- registration ---------------------------------------------------------------------------------


def register(ctx: ServerContext, body: dict[str, Any]) -> dict[str, Any]:
    csr = body.get("csr")
    if not isinstance(csr, str) or not csr.strip():
        raise bad_request("csr is required", [Cause("csr", "required", "FieldValueRequired")])
    try:
        public_key_from_request(csr.encode())
    except IdentityError as exc:
        raise invalid(REGISTRATION.kind, "", [Cause("csr", exc.message, exc.reason)]) from None
    spec: dict[str, Any] = {
        "csr": csr,
        "facts": body.get("facts") or {},
        "requestedLabels": body.get("requestedLabels") or {},
    }
    if body.get("requestedName"):
        spec["requestedName"] = body["requestedName"]
    token = str(body["token"]) if body.get("token") else None
    if token:
        tenant, source = check_token(ctx, token)  # refused before any work is done for it
        spec |= {"method": "token", "tokenName": source["metadata"]["name"]}
    elif body.get("device") is not None:
        tenant = str(body.get("tenant") or DEFAULT_TENANT)
        subject, source = device_proof(ctx, tenant, body["device"], csr)
        spec |= {"method": "device", "manufacturer": source["metadata"]["name"], "deviceSubject": subject}
    else:
        raise unauthorized("Unauthorized: a registration token or a device proof is required")
    name = registration_name(spec.get("requestedName"), (spec["facts"] or {}).get("hostname"))
    secret, digest = poll_token(tenant, name)
    # Auto-accept: sign before the write transaction (the signature needs no lock), then
    # count the token's use, create the registration and the Site and mark it Accepted in
    # ONE transaction, so one durable commit per registration instead of four.
    plan = None
    if (source.get("spec") or {}).get("autoAccept"):
        plan = plan_accept(ctx, tenant, name, spec, None, {}, source)
    with ctx.store.batch() as batch:
        if token:
            tenant, source = consume_token(ctx, token, batch)  # checked again under the write lock
        auto = bool((source.get("spec") or {}).get("autoAccept"))
        obj = REGISTRATION.normalize({"metadata": {"name": name}, "spec": spec})
        obj["status"] = {"phase": "Pending", "pollHash": digest, "autoAccept": auto}
        if auto and plan is not None:
            site_obj, issued = plan
            # A taken site name leaves the registration Pending for the operator (who can
            # accept it under another name); the certificate signed for it is never handed out.
            if batch.get_or_none(tenant, SITE.kind, "", site_obj["metadata"]["name"]) is None:
                create_site(batch, tenant, site_obj)
                # Created Accepted at once: one write for the registration, not two.
                obj["status"] = accepted_status(ctx, tenant, obj["status"], site_obj, issued)
        created = batch.create(tenant, obj)
    # An auto-accepted registration answers with the certificate at once (as a poll would),
    # so the agent needs no poll round trip; the poll token still works for a retry.
    return {"name": name, "pollToken": secret, **_answer(created)}


@router.post("/registrations")
async def create_registration(request: Request) -> JsonResponse:
    ctx = _ctx(request)
    body = await read_object(request)
    return JsonResponse(await asyncio.to_thread(register, ctx, body), status_code=201)


def _answer(reg: Obj) -> dict[str, Any]:
    status = reg.get("status") or {}
    out = {"phase": status.get("phase", "Pending")}
    for key in ("reason", "site", "certificate", "caBundle"):
        if status.get(key):
            out[key] = status[key]
    return out


@router.get("/registrations/{name}")
async def poll_registration(request: Request, name: str) -> JsonResponse:
    ctx = _ctx(request)
    tenant, reg = await asyncio.to_thread(check_poll_token, ctx, request.headers.get("authorization"), name)
    try:
        wait = min(float(request.query_params.get("waitSeconds") or 0), MAX_WAIT)
    except ValueError:
        raise bad_request(
            "waitSeconds must be a number", [Cause("waitSeconds", "must be a number")]
        ) from None
    deadline = time.monotonic() + wait
    while True:
        reg = await asyncio.to_thread(expire_if_stale, ctx, tenant, reg)
        if (reg.get("status") or {}).get("phase", "Pending") != "Pending" or time.monotonic() >= deadline:
            return JsonResponse(_answer(reg))
        await asyncio.sleep(min(0.25, max(deadline - time.monotonic(), 0)))
        reg = await asyncio.to_thread(ctx.store.get, tenant, REGISTRATION.kind, "", name)


# -- calls of a registered site (mutual TLS) ---------------------------------------------------


def peer_certificate(request: Request) -> bytes:
    """The DER client certificate of this connection, from the ASGI TLS extension."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise unauthorized("Unauthorized: this call needs the site's client certificate (mutual TLS)")
    if isinstance(chain, PemChain):
        return chain.der
    return ssl.PEM_cert_to_DER_cert(chain[0])


def site_of(ctx: ServerContext, der: bytes) -> tuple[str, Obj]:
    tenant, name, serial = identity(ctx).verify_site_cert(der)
    site = ctx.store.get_or_none(tenant, SITE.kind, "", name)
    if site is None:
        raise unauthorized(f'Unauthorized: site "{name}" no longer exists; its certificate is revoked')
    status = site.get("status") or {}
    if status.get("phase") == "Decommissioned":
        raise unauthorized(f'Unauthorized: site "{name}" is decommissioned; its certificate is revoked')
    current = (status.get("identity") or {}).get("serial")
    if current != f"{serial:x}":
        raise unauthorized(
            f'Unauthorized: certificate {serial:x} is not the current certificate of site "{name}" '
            "(superseded or revoked)"
        )
    return tenant, site


async def authenticated_site(request: Request) -> tuple[ServerContext, str, Obj]:
    ctx = _ctx(request)
    tenant, site = await asyncio.to_thread(site_of, ctx, peer_certificate(request))
    return ctx, tenant, site


@router.get("/site")
async def get_site(request: Request) -> JsonResponse:
    _, _, site = await authenticated_site(request)
    return JsonResponse(SITE.redact(site))


async def authenticated_identity(request: Request) -> tuple[ServerContext, str, str, str]:
    """(ctx, tenant, site, serial hex) from the client certificate alone: for calls that check
    the Site itself inside their own transaction (status reports), so the common case
    reads nothing and does not leave the event loop."""
    ctx = _ctx(request)
    der = peer_certificate(request)
    service = identity(ctx)
    known = service.verified_before(der)
    if known is None:
        known = await asyncio.to_thread(service.verify_site_cert, der)
    tenant, name, serial = known
    return ctx, tenant, name, f"{serial:x}"


def reported_status(site: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ``status`` of a site's report (``{"status": {...}}``), validated (400/403/422)."""
    wanted = body.get("status")
    if not isinstance(wanted, dict):
        raise bad_request("status must be an object", [Cause("status", "must be an object")])
    return validated_status(site, wanted)


@router.put("/site/status")
async def put_status(request: Request) -> Response:
    ctx, tenant, name, serial = await authenticated_identity(request)
    status = reported_status(name, await read_object(request))
    site = (await status_writer(ctx).submit(tenant, name, serial, status)).site
    if "return=minimal" in request.headers.get("prefer", ""):  # RFC 7240: the agent's reports
        return Response(status_code=204, headers={"Preference-Applied": "return=minimal"})
    return JsonResponse(SITE.redact(site))


def renew(ctx: ServerContext, tenant: str, site: Obj, csr: str) -> str:
    name = site["metadata"]["name"]
    service = identity(ctx)
    issued = service.sign(tenant, csr, name)
    old: str | None = None
    for _ in range(RETRIES):
        status = dict(site.get("status") or {})
        old = (status.get("identity") or {}).get("serial")
        status["identity"] = {**(status.get("identity") or {}), "serial": issued.serial_hex}
        status["identity"]["notAfter"] = issued.not_after
        try:
            ctx.store.update(tenant, {**site, "status": status}, part="status")
            break
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
        site = ctx.store.get(tenant, SITE.kind, "", name)
    else:
        raise ApiError(409, "Conflict", "the site changed too often; try again")
    if old and old != issued.serial_hex:
        service.revoke(tenant, int(old, 16), "superseded")
    return issued.certificate


@router.post("/site/certificate")
async def renew_certificate(request: Request) -> JsonResponse:
    ctx, tenant, site = await authenticated_site(request)
    body = await read_object(request)
    csr = body.get("csr")
    if not isinstance(csr, str) or not csr.strip():
        raise bad_request("csr is required", [Cause("csr", "required", "FieldValueRequired")])
    return JsonResponse({"certificate": await asyncio.to_thread(renew, ctx, tenant, site, csr)})


@router.get("/crl/{tenant}")
async def crl(request: Request, tenant: str) -> Response:
    pem = await asyncio.to_thread(identity(_ctx(request)).crl, tenant)
    return Response(pem, media_type="application/x-pem-file")


# -- the hot path ---------------------------------------------------------------------------------

FAST = ("POST /registrations", "PUT /site/status", "GET /manifest", "PUT /sync")


class SiteFastPath:
    """The calls every site makes at onboarding and then for every change and heartbeat
    (register; report status; long-poll its manifest; or both in one ``sync``), answered
    straight by their handlers, past FastAPI's routing, dependency, exception and middleware
    layers. ``server/app.py`` puts this in front of the whole application, with the request
    metrics and the body limit of its own. The same
    handler code runs and errors answer as everywhere (``ApiError.to_status``).
    ``routers``: where those handlers live (this module's and the manifest's)."""

    def __init__(self, routers: Sequence[APIRouter] = (router,)) -> None:
        wanted = {f"{m} {PREFIX}{path}" for m, path in (item.split(" ", 1) for item in FAST)}
        self.routes: dict[tuple[str, str], APIRoute] = {}
        for route in (r for each in routers for r in each.routes):
            if isinstance(route, APIRoute):
                for method in route.methods or ():
                    if f"{method} {route.path}" in wanted:
                        self.routes[(method, route.path)] = route

    def route_for(self, scope: Scope) -> APIRoute | None:
        if scope["type"] != "http":
            return None
        return self.routes.get((scope.get("method", ""), scope.get("path", "")))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a call ``route_for`` matched; ``scope["route"]`` names its route."""
        try:
            response = await scope["route"].endpoint(Request(scope, receive))
        except ApiError as exc:
            response = JsonResponse(exc.to_status(), status_code=exc.code)
        except Exception:  # as the application's own handler of the unexpected does
            log.exception("internal error")
            err = ApiError(500, "InternalError", "an internal error occurred; see the server log")
            response = JsonResponse(err.to_status(), status_code=500)
        await response(scope, receive, send)
