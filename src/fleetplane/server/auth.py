"""Authentication (bearer access keys) and authorization (roles and namespaces).

Rules, each covered by a negative test in ``tests/server/test_authz.py``:
- a key sees only its own tenant; other tenants' objects are simply not found;
  deleting a tenant stops its keys at once;
- ``Tenant`` objects belong to system keys only;
- ``AccessKey`` objects are managed by unrestricted admins only, and only a system
  key may mint, change or delete a system key;
- no key may delete its own tenant;
- viewers only read; editors and admins write; viewers cannot read sensitive kinds (Secrets);
- server-managed kinds (CertificateAuthority; Registration except delete) are not writable;
- a key limited to namespaces reads and writes only those, reads ``shared``, reads
  tenant-wide kinds (sites) and writes none of them, and cannot list across namespaces.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fleetplane.core.errors import ApiError, forbidden, unauthorized
from fleetplane.core.registry import KindInfo, Scope
from fleetplane.core.store import Store
from fleetplane.kinds import ACCESS_KEY, TENANT

KEY_PREFIX = "fpk"
SHARED_NAMESPACE = "shared"
READ_VERBS = frozenset({"get", "list", "watch"})


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_name: str
    role: str
    namespaces: tuple[str, ...] = ()
    system: bool = False

    @property
    def restricted(self) -> bool:
        return bool(self.namespaces)

    def describe(self) -> str:
        return f'accesskey "{self.key_name}" (tenant {self.tenant}, role {self.role})'


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_key(tenant: str, name: str) -> tuple[str, str]:
    """A new bearer credential and the hash to store for it."""
    secret = secrets.token_hex(32)
    return f"{KEY_PREFIX}_{tenant}_{name}_{secret}", hash_secret(secret)


def authenticate(store: Store, authorization: str | None) -> Principal:
    if not authorization or not authorization.startswith("Bearer "):
        raise unauthorized("Unauthorized: a bearer access key is required")
    token = authorization.removeprefix("Bearer ").strip()
    parts = token.split("_")
    if len(parts) != 4 or parts[0] != KEY_PREFIX:
        raise unauthorized("Unauthorized: malformed access key")
    _, tenant, name, secret = parts
    try:
        key = store.get(tenant, ACCESS_KEY.kind, "", name)
    except ApiError as exc:
        if exc.code == 404:
            raise unauthorized("Unauthorized: unknown or revoked access key") from exc
        raise
    stored = (key.get("status") or {}).get("keyHash") or ""
    if not hmac.compare_digest(stored, hash_secret(secret)):
        raise unauthorized("Unauthorized: unknown or revoked access key")
    if store.get_or_none("", TENANT.kind, "", tenant) is None:
        raise unauthorized("Unauthorized: the key's tenant no longer exists")
    spec = key.get("spec") or {}
    return Principal(
        tenant=tenant,
        key_name=name,
        role=str(spec.get("role", "viewer")),
        namespaces=tuple(spec.get("namespaces") or ()),
        system=bool(spec.get("system", False)),
    )


def authorize(who: Principal, verb: str, info: KindInfo, namespace: str | None) -> None:
    """Raise ``Forbidden`` unless ``who`` may ``verb`` objects of ``info`` in ``namespace``
    (``None``: across all namespaces)."""
    reading = verb in READ_VERBS
    target = f'{info.plural} in namespace "{namespace}"' if namespace else info.plural
    denied = forbidden(f"{who.describe()} cannot {verb} {target}")
    if not reading and info.api_write_verbs is not None and verb not in info.api_write_verbs:
        raise forbidden(f"{info.plural} are managed by the server: no client may {verb} them")
    if reading and info.sensitive and who.role == "viewer":
        raise forbidden(f"{who.describe()} cannot {verb} {target}: viewers may not read {info.plural}")
    if info.scope is Scope.SYSTEM or info is TENANT:
        if not who.system:
            raise denied
        return
    if info is ACCESS_KEY:
        if who.role != "admin" or who.restricted:
            raise denied
        return
    if not reading and who.role == "viewer":
        raise denied
    if not who.restricted:
        return
    if info.scope is Scope.TENANT:
        if not reading:
            raise denied
        return
    if namespace is None:
        raise denied
    if namespace in who.namespaces:
        return
    if namespace == SHARED_NAMESPACE and reading:
        return
    raise denied
