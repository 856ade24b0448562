"""Console sessions: a signed cookie instead of a bearer header, with a CSRF token for writes.

Logging in checks a pasted access key exactly as the API does (``server/auth.authenticate``)
and sets ``fp_session`` (HttpOnly, Secure, SameSite=Strict): ``payload.signature`` where the
payload names the tenant, the key, a fingerprint of the key's stored hash, an expiry and a
random session id, signed with HMAC-SHA256 by a secret kept in the data dir
(``console-session.key``). The key itself is never in the cookie. Every request re-reads the
AccessKey, so deleting or re-minting a key ends its sessions at once.

Writes made with the cookie must carry ``X-CSRF-Token``: an HMAC of the session id that the
console shell page embeds. SameSite=Strict already keeps other sites' requests cookie-less;
the header is the second lock. Requests with a bearer key need neither (no ambient
credential to abuse).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import Request

from fleetplane.core.errors import ApiError, forbidden, unauthorized
from fleetplane.kinds import ACCESS_KEY, TENANT
from fleetplane.server.auth import Principal, authenticate
from fleetplane.server.context import ServerContext

COOKIE = "fp_session"
CSRF_HEADER = "x-csrf-token"
LIFETIME_S = 12 * 3600
SECRET_FILE = "console-session.key"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class Session:
    principal: Principal
    session_id: str  # "" for a bearer-key request


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret(ctx: ServerContext) -> bytes:
    """The signing secret, made once per data dir (0600) and cached."""
    cached = ctx.extras.get("console_secret")
    if isinstance(cached, bytes):
        return cached
    path = Path(ctx.settings.data_dir) / SECRET_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another request (or replica sharing the dir) made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    value = bytes.fromhex(path.read_text().strip())
    ctx.extras["console_secret"] = value
    return value


def _sign(ctx: ServerContext, payload: bytes) -> str:
    return _b64(hmac.new(secret(ctx), payload, hashlib.sha256).digest())


def _fingerprint(key_hash: str) -> str:
    return hashlib.sha256(key_hash.encode()).hexdigest()[:16]


def csrf_token(ctx: ServerContext, session_id: str) -> str:
    return hmac.new(secret(ctx), b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()[:32]


def login(ctx: ServerContext, key: str) -> tuple[Principal, str]:
    """Check a pasted access key; the principal and the cookie value. Raises 401."""
    principal = authenticate(ctx.store, "Bearer " + key.strip())
    stored = ctx.store.get(principal.tenant, ACCESS_KEY.kind, "", principal.key_name)
    payload = orjson.dumps(
        {
            "t": principal.tenant,
            "k": principal.key_name,
            "f": _fingerprint(str((stored.get("status") or {}).get("keyHash") or "")),
            "e": int(time.time()) + LIFETIME_S,
            "n": secrets.token_hex(16),
        }
    )
    return principal, f"{_b64(payload)}.{_sign(ctx, payload)}"


def _from_cookie(ctx: ServerContext, value: str) -> Session:
    expired = unauthorized("Unauthorized: no valid console session; log in again")
    try:
        body, signature = value.split(".", 1)
        payload = _unb64(body)
    except ValueError as exc:
        raise expired from exc
    if not hmac.compare_digest(signature, _sign(ctx, payload)):
        raise expired
    try:
        data = orjson.loads(payload)
        tenant, name, fingerprint = str(data["t"]), str(data["k"]), str(data["f"])
        expiry, session_id = int(data["e"]), str(data["n"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise expired from exc
    if expiry < time.time():
        raise expired
    key = ctx.store.get_or_none(tenant, ACCESS_KEY.kind, "", name)
    if key is None or ctx.store.get_or_none("", TENANT.kind, "", tenant) is None:
        raise expired
    if not hmac.compare_digest(
        _fingerprint(str((key.get("status") or {}).get("keyHash") or "")), fingerprint
    ):
        raise expired  # the key was re-minted since this session began
    spec = key.get("spec") or {}
    principal = Principal(
        tenant=tenant,
        key_name=name,
        role=str(spec.get("role", "viewer")),
        namespaces=tuple(spec.get("namespaces") or ()),
        system=bool(spec.get("system", False)),
    )
    return Session(principal, session_id)


def resolve(ctx: ServerContext, authorization: str | None, cookie: str | None) -> Session:
    if authorization:
        return Session(authenticate(ctx.store, authorization), "")
    if not cookie:
        raise unauthorized("Unauthorized: log in to the console or send a bearer access key")
    return _from_cookie(ctx, cookie)


async def session(request: Request, *, write: bool = False) -> Session:
    """The caller of a console request (cookie or bearer); for a write made with the cookie,
    the CSRF header must match."""
    ctx: ServerContext = request.app.state.ctx
    found = await asyncio.to_thread(
        resolve, ctx, request.headers.get("authorization"), request.cookies.get(COOKIE)
    )
    if write and found.session_id:
        sent = request.headers.get(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent, csrf_token(ctx, found.session_id)):
            raise forbidden("Forbidden: a console write needs the X-CSRF-Token header of its session")
    return found


def is_unauthorized(exc: ApiError) -> bool:
    return exc.code == 401
