"""The tenants' identity authorities, persisted in the store.

Each tenant's :class:`~fleetplane.identity.authority.TenantAuthority` lives in one
``CertificateAuthority`` object named ``tenant``: public certificates in ``spec``; the
private keys sealed with the server's envelope (context ``<tenant>/CertificateAuthority//
tenant/<entry>``), the issuing state (revocations, CRL number) and the current CRL in
``status`` (hidden from the API but the CRL).

Signing does not write the CA object: serials are 159 random bits (collisions are not a
practical concern, and each process also avoids the serials it has seen), and the record
of what was issued to whom is the Site's ``status.identity``. So signing costs one ECDSA
signature and no store round-trip, whatever the size of the fleet. Revocations and CRL
numbers do change the CA object: they are read-modify-written with the object's
``resourceVersion`` as a precondition and retried on conflict, so two replicas never lose
each other's revocations or reuse a CRL number.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetplane.core.errors import ApiError, unauthorized
from fleetplane.core.objects import Obj
from fleetplane.core.watch import ANY_TENANT, WatchFilter
from fleetplane.identity.authority import TenantAuthority
from fleetplane.identity.pki import IdentityError, cert_pem, parse_id, spiffe_uris
from fleetplane.kinds import CERTIFICATE_AUTHORITY, SECRET
from fleetplane.kinds.onboarding import CA_NAME
from fleetplane.server.context import ServerContext
from fleetplane.server.sealing import envelope

log = logging.getLogger(__name__)
KEY_ENTRIES = {"issuing.key": "sealedIssuingKey", "root.key": "sealedRootKey"}
CRL_REFRESH_BEFORE = dt.timedelta(minutes=30)
MUTATE_RETRIES = 20
SYSTEM_NAMESPACE = "fleetplane-system"
NONCE_SECRET = "site-api-nonce-key"  # noqa: S105  (an object name)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Cached:
    resource_version: str
    authority: TenantAuthority
    keys: dict[str, bytes]  # plaintext PEM keys, in memory only


@dataclass(frozen=True)
class Issued:
    certificate: str
    serial: int
    not_after: str

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"


class IdentityService:
    """Per-process cache and persistence of every tenant's authority."""

    def __init__(self, ctx: ServerContext, on_trust: Callable[[bytes], None] | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._on_trust = on_trust
        self._nonce_key: bytes | None = None
        # Certificates whose chain and form were checked, by SHA-256 of the DER: a site
        # presents the same one on every call. Entries hold the authority that checked them,
        # so a rebuilt authority (new CRL, rotation) checks again.
        self._verified: dict[bytes, _Verified] = {}

    # ----------------------------------------------------------------- loading

    def _lock(self, tenant: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tenant, threading.Lock())

    @staticmethod
    def _context(tenant: str, entry: str) -> bytes:
        return f"{tenant}/{CERTIFICATE_AUTHORITY.kind}//{CA_NAME}/{entry}".encode()

    def _build(self, tenant: str, obj: Obj, keys: dict[str, bytes] | None = None) -> _Cached:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if keys is None:
            env, keys = envelope(self.ctx), {}
            for entry, field in KEY_ENTRIES.items():
                if status.get(field):
                    keys[entry] = env.open_text(status[field], context=self._context(tenant, entry))
        data = {
            "root.crt": str(spec["rootCertificate"]).encode(),
            "issuing.crt": str(spec["issuingCertificate"]).encode(),
            "state.json": str(status.get("state") or "").encode(),
            **keys,
        }
        authority = TenantAuthority.load(tenant, data)
        return _Cached(str(obj["metadata"]["resourceVersion"]), authority, keys)

    def _create(self, tenant: str) -> Obj:
        authority = TenantAuthority.create(tenant)
        exported = authority.export()
        env = envelope(self.ctx)
        obj = CERTIFICATE_AUTHORITY.normalize(
            {
                "metadata": {"name": CA_NAME},
                "spec": {
                    "rootCertificate": exported["root.crt"].decode(),
                    "issuingCertificate": exported["issuing.crt"].decode(),
                },
            }
        )
        state = json.loads(exported["state.json"])
        state["issued"] = []  # see the module docstring: issued serials live on the sites
        obj["status"] = {
            field: env.seal_text(exported[entry], context=self._context(tenant, entry))
            for entry, field in KEY_ENTRIES.items()
        } | {"state": json.dumps(state, sort_keys=True)}
        try:
            return self.store.create(tenant, obj)
        except ApiError as exc:
            if exc.code != 409:
                raise
            return self.store.get(tenant, CERTIFICATE_AUTHORITY.kind, "", CA_NAME)  # another replica won

    def authority(self, tenant: str, *, create: bool = True) -> TenantAuthority | None:
        cached = self._cache.get(tenant)
        if cached is not None:
            return cached.authority
        with self._lock(tenant):
            cached = self._cache.get(tenant)
            if cached is not None:
                return cached.authority
            obj = self.store.get_or_none(tenant, CERTIFICATE_AUTHORITY.kind, "", CA_NAME)
            if obj is None:
                if not create:
                    return None
                obj = self._create(tenant)
                log.info("created the identity authority of tenant %s", tenant)
            cached = self._build(tenant, obj)
            self._cache[tenant] = cached
        self._trust(cached.authority)
        return cached.authority

    def _trust(self, authority: TenantAuthority) -> None:
        if self._on_trust is not None:
            self._on_trust(authority.ssl_bundle())

    def refresh(self, tenant: str, obj: Obj) -> None:
        """Take a changed CA object (seen by the watch) into the cache and the TLS trust."""
        with self._lock(tenant):
            cached = self._cache.get(tenant)
            rv = str(obj["metadata"]["resourceVersion"])
            if cached is not None and cached.resource_version != rv:
                self._cache[tenant] = self._build(tenant, obj, cached.keys)
        if self._on_trust is not None:
            spec = obj.get("spec") or {}
            self._on_trust(
                (str(spec.get("rootCertificate", "")) + str(spec.get("issuingCertificate", ""))).encode()
            )

    def trust_bundles(self) -> list[bytes]:
        """Root + issuing PEM of every tenant that has an authority (for the TLS context)."""
        _, found = self.store.scan((CERTIFICATE_AUTHORITY.kind,))
        return [
            (str(o["spec"]["rootCertificate"]) + str(o["spec"]["issuingCertificate"])).encode()
            for _, o in found
        ]

    async def watch(self) -> None:
        """Keep the cache and the TLS trust current with other replicas' changes."""
        flt = WatchFilter(ANY_TENANT, (CERTIFICATE_AUTHORITY.kind,))
        since = await asyncio.to_thread(self.store.revision)  # what is older came from trust_bundles
        while True:
            try:
                async for ev in self.ctx.hub.watch(flt, since):
                    since = ev.revision
                    if ev.type.value != "DELETED":
                        await asyncio.to_thread(self.refresh, ev.tenant, ev.object)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:  # e.g. compacted past ``since``: start over from a full scan
                log.warning("certificate authority watch restarts: %s", exc.message)
                for bundle in await asyncio.to_thread(self.trust_bundles):
                    if self._on_trust is not None:
                        self._on_trust(bundle)
                since = await asyncio.to_thread(self.store.revision)
            except Exception:
                log.exception("certificate authority watch failed; restarting")
                await asyncio.sleep(1)

    # ----------------------------------------------------------------- issuing

    def bundle(self, tenant: str) -> str:
        authority = self.authority(tenant)
        assert authority is not None
        return authority.ssl_bundle().decode()

    def sign(self, tenant: str, csr_pem: str, site: str) -> Issued:
        authority = self.authority(tenant)
        assert authority is not None
        lifetime = dt.timedelta(seconds=self.ctx.settings.site_cert_lifetime)
        try:
            with self._lock(tenant):
                pem = authority.sign_site_csr(csr_pem.encode(), site, lifetime=lifetime)
        except IdentityError as exc:
            raise ApiError(
                422, "Invalid", f"the certificate signing request is refused: {exc.message}"
            ) from None
        cert = x509.load_pem_x509_certificate(pem)
        # Issued by this authority just now, so it passes the full check by construction:
        # the site's first mTLS call is then admitted from the cache (its window and the
        # revocation list are still checked there) instead of verifying our own signature.
        self._remember(
            hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest(),
            _Verified(tenant, site, cert.serial_number, authority, cert.not_valid_after_utc),
        )
        return Issued(pem.decode(), cert.serial_number, _rfc3339(cert.not_valid_after_utc))

    # ----------------------------------------------------------------- revocation and CRL

    def _mutate(
        self, tenant: str, change: Callable[[TenantAuthority], TenantAuthority | None], *, new_crl: bool
    ) -> Obj:
        """Read-modify-write the CA object under its resourceVersion. ``change`` gets the
        authority as stored and returns the one to persist (``None``: nothing changed); a new
        CRL is signed when something changed or ``new_crl`` asks for one."""
        for _ in range(MUTATE_RETRIES):
            obj = self.store.get(tenant, CERTIFICATE_AUTHORITY.kind, "", CA_NAME)
            cached = self._cache.get(tenant)
            built = self._build(tenant, obj, cached.keys if cached is not None else None)
            status = dict(obj.get("status") or {})
            target = change(built.authority)
            if target is None and status.get("crl") and not new_crl:
                return obj
            target = target or built.authority
            crl = target.crl()
            new_state = json.loads(target.export()["state.json"])
            new_state["issued"] = sorted(new_state["revoked"])
            next_update = x509.load_pem_x509_crl(crl).next_update_utc
            assert next_update is not None
            status.update(state=json.dumps(new_state, sort_keys=True), crl=crl.decode())
            status["crlNextUpdate"] = _rfc3339(next_update)
            try:
                updated = self.store.update(tenant, {**obj, "status": status}, part="status")
            except ApiError as exc:
                if exc.reason != "Conflict":
                    raise
                continue
            with self._lock(tenant):
                self._cache[tenant] = self._build(tenant, updated, built.keys)
            return updated
        raise ApiError(409, "Conflict", f"the identity authority of {tenant} is too busy; try again")

    def revoke(self, tenant: str, serial: int, reason: str = "cessationOfOperation") -> None:
        """Revoke a site certificate at once, in the store (every replica) and the CRL."""
        if self.authority(tenant, create=False) is None:
            return

        def change(authority: TenantAuthority) -> TenantAuthority | None:
            if authority.is_revoked(serial):
                return None
            data = authority.export()
            state = json.loads(data["state.json"])
            state["issued"] = sorted({*state["issued"], f"{serial:x}"})
            fresh = TenantAuthority.load(tenant, {**data, "state.json": json.dumps(state).encode()})
            fresh.revoke(serial, reason)
            return fresh

        self._mutate(tenant, change, new_crl=False)
        log.info("revoked certificate %x of tenant %s (%s)", serial, tenant, reason)

    def crl(self, tenant: str) -> str:
        obj = self.store.get_or_none(tenant, CERTIFICATE_AUTHORITY.kind, "", CA_NAME)
        if obj is None:
            raise ApiError(404, "NotFound", f'tenant "{tenant}" has no certificate authority yet')
        status = obj.get("status") or {}
        next_update = status.get("crlNextUpdate")
        if status.get("crl") and next_update:
            when = dt.datetime.strptime(str(next_update), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            if when - dt.datetime.now(dt.UTC) > CRL_REFRESH_BEFORE:
                return str(status["crl"])
        self.authority(tenant)
        updated = self._mutate(tenant, lambda _: None, new_crl=True)
        return str((updated.get("status") or {}).get("crl"))

    # ----------------------------------------------------------------- verification

    def verified_before(self, der: bytes) -> tuple[str, str, int] | None:
        """(tenant, site, serial) of a certificate that passed :meth:`verify_site_cert` and
        is still in its window, unrevoked, under the same authority; None otherwise (then
        call :meth:`verify_site_cert`, which may read the store). Never blocks."""
        digest = hashlib.sha256(der).digest()
        seen = self._verified.get(digest)
        if seen is None:
            return None
        current = self._cache.get(seen.tenant)
        if (
            current is not None
            and current.authority is seen.authority
            and dt.datetime.now(dt.UTC) < seen.not_after
            and not seen.authority.is_revoked(seen.serial)
        ):
            return seen.tenant, seen.site, seen.serial
        self._verified.pop(digest, None)  # the full check says why, or admits it again
        return None

    def verify_site_cert(self, der: bytes) -> tuple[str, str, int]:
        """(tenant, site, serial) of a presented site certificate, or 401 saying why not."""
        seen = self.verified_before(der)
        if seen is not None:
            return seen
        digest = hashlib.sha256(der).digest()
        tenant, site, serial, authority, not_after = self._verify_fully(der)
        self._remember(digest, _Verified(tenant, site, serial, authority, not_after))
        return tenant, site, serial

    def _remember(self, digest: bytes, verified: _Verified) -> None:
        with self._guard:  # callers run on worker threads
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))  # oldest first (insertion order)
            self._verified[digest] = verified

    def _verify_fully(self, der: bytes) -> tuple[str, str, int, TenantAuthority, dt.datetime]:
        try:
            cert = x509.load_der_x509_certificate(der)
            uris = spiffe_uris(cert)
            tenant, _, _ = parse_id(uris[0]) if len(uris) == 1 else ("", "", None)
        except (ValueError, IdentityError):
            raise unauthorized(
                "Unauthorized: the client certificate is not a fleetplane site identity"
            ) from None
        authority = self.authority(tenant, create=False) if tenant else None
        if authority is None:
            raise unauthorized("Unauthorized: the client certificate is not a fleetplane site identity")
        try:
            site = authority.verify_site_cert(cert_pem(cert))
        except IdentityError as exc:
            raise unauthorized(
                f"Unauthorized: site certificate refused ({exc.reason}): {exc.message}"
            ) from None
        return tenant, site, cert.serial_number, authority, cert.not_valid_after_utc

    # ----------------------------------------------------------------- the nonce key

    def nonce_key(self) -> bytes:
        """A 256-bit server secret shared by all replicas, sealed in the store."""
        if self._nonce_key is not None:
            return self._nonce_key
        ctx_bytes = f"/{SECRET.kind}/{SYSTEM_NAMESPACE}/{NONCE_SECRET}".encode()
        env = envelope(self.ctx)
        obj = self.store.get_or_none("", SECRET.kind, SYSTEM_NAMESPACE, NONCE_SECRET)
        if obj is None:
            fresh = SECRET.normalize(
                {"metadata": {"name": NONCE_SECRET, "namespace": SYSTEM_NAMESPACE}, "spec": {}}
            )
            fresh["spec"]["data"] = {"key": env.seal_text(secrets.token_hex(32), context=ctx_bytes)}
            with contextlib.suppress(ApiError):
                self.store.create("", fresh)
            obj = self.store.get("", SECRET.kind, SYSTEM_NAMESPACE, NONCE_SECRET)
        self._nonce_key = env.open_text(obj["spec"]["data"]["key"], context=ctx_bytes)
        return self._nonce_key


VERIFIED_CACHE_SIZE = 100_000  # ~150 B each; more sites than this only costs re-checks


@dataclass(frozen=True, slots=True)
class _Verified:
    tenant: str
    site: str
    serial: int
    authority: TenantAuthority
    not_after: dt.datetime


def identity(ctx: ServerContext) -> IdentityService:
    service = ctx.extras.get("identity")
    if not isinstance(service, IdentityService):
        service = IdentityService(ctx)
        ctx.extras["identity"] = service
    return service
