"""The per-tenant identity authority: a root CA, an online issuing CA, site certificates, CRLs.

A pure library: no HTTP and no store. Callers persist what :meth:`TenantAuthority.export`
returns (the ``*.key`` entries are plaintext PKCS#8 PEM and must be encrypted at rest, see
:data:`SECRET_ENTRIES`) and rebuild the authority with :meth:`TenantAuthority.load`.
Methods that change state (``sign_site_csr``, ``revoke``, ``crl``) must be followed by an
export + persist, or the next process will forget serials / reuse CRL numbers.

Chain and path lengths (pathLen counts the CA certificates that may follow)::

    root (pathLen 2) -> issuing (pathLen 1) -> site (CA, pathLen 0) -> pod (leaf)

The root key is needed only to create the authority; ``load`` works without it, so an
operator may keep ``root.key`` offline.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetplane.identity.pki import (
    CLOCK_SKEW,
    TLS_EKU,
    CAPrivateKey,
    IdentityError,
    SiteCA,
    cert_pem,
    check_issued_by,
    check_window,
    key_pem,
    key_usage,
    load_cert,
    load_private_key,
    make_csr,
    make_key,
    new_serial,
    parse_id,
    public_key_from_request,
    signing_hash,
    site_id,
    spiffe_uris,
    spki,
    trust_domain,
    utcnow,
    validate_label,
)

__all__ = [
    "CRL_VALIDITY",
    "SECRET_ENTRIES",
    "IdentityError",
    "SiteCA",
    "TenantAuthority",
    "make_csr",
    "make_key",
]

ROOT_LIFETIME = dt.timedelta(days=3650)
ISSUING_LIFETIME = dt.timedelta(days=5 * 365)
SITE_LIFETIME = dt.timedelta(days=30)
CRL_VALIDITY = dt.timedelta(hours=1)
SECRET_ENTRIES = frozenset({"root.key", "issuing.key"})
_STATE_VERSION = 1


@dataclass(frozen=True)
class Revocation:
    reason: x509.ReasonFlags
    revoked_at: dt.datetime


def _name(tenant: str, cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _org(tenant: str, unit: str | None = None) -> x509.DirectoryName:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant)]
    if unit is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.DirectoryName(x509.Name(attrs))


def _reason(reason: x509.ReasonFlags | str) -> x509.ReasonFlags:
    try:
        flag = x509.ReasonFlags(reason)
    except ValueError:
        raise ValueError(f"unknown revocation reason {reason!r}") from None
    if flag is x509.ReasonFlags.remove_from_crl:
        raise ValueError("removeFromCRL is only meaningful in delta CRLs")
    return flag


class TenantAuthority:
    """The identity authority of one tenant. Build with :meth:`create` or :meth:`load`."""

    def __init__(
        self,
        tenant: str,
        root_cert: x509.Certificate,
        issuing_cert: x509.Certificate,
        issuing_key: CAPrivateKey,
        *,
        root_key: CAPrivateKey | None = None,
        crl_number: int = 0,
        issued: set[int] | None = None,
        revoked: dict[int, Revocation] | None = None,
    ) -> None:
        self.tenant = validate_label("tenant", tenant)
        self.root_cert = root_cert
        self.issuing_cert = issuing_cert
        self._issuing_key = issuing_key
        self._root_key = root_key
        self._crl_number = crl_number
        self._issued: set[int] = set(issued or ())
        self._revoked: dict[int, Revocation] = dict(revoked or {})

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, tenant: str, *, now: dt.datetime | None = None) -> TenantAuthority:
        """A new root CA (10 years) and issuing CA (5 years) for ``tenant``."""
        validate_label("tenant", tenant)
        now = utcnow(now)
        root_key = ec.generate_private_key(ec.SECP256R1())
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name(tenant, f"fleetplane {tenant} root CA")
        root_serial, issuing_serial = new_serial(()), new_serial(())
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(root_serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=2), critical=True)
            .add_extension(key_usage(digital_signature=False, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, signing_hash(root_key))
        )
        issuing = (
            x509.CertificateBuilder()
            .subject_name(_name(tenant, f"fleetplane {tenant} issuing CA"))
            .issuer_name(root_name)
            .public_key(issuing_key.public_key())
            .serial_number(issuing_serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ISSUING_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(key_usage(digital_signature=False, cert_sign=True), critical=True)
            .add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain(tenant)), _org(tenant)],
                    excluded_subtrees=None,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
            )
            .sign(root_key, signing_hash(root_key))
        )
        return cls(
            tenant, root, issuing, issuing_key, root_key=root_key, issued={root_serial, issuing_serial}
        )

    def export(self, *, include_root_key: bool = True) -> dict[str, bytes]:
        """Everything needed to :meth:`load` this authority again. Entries named in
        :data:`SECRET_ENTRIES` are private keys: encrypt them before they touch storage."""
        state = {
            "version": _STATE_VERSION,
            "tenant": self.tenant,
            "crl_number": self._crl_number,
            "issued": sorted(f"{s:x}" for s in self._issued),
            "revoked": {
                f"{s:x}": {"reason": r.reason.value, "revoked_at": r.revoked_at.isoformat()}
                for s, r in sorted(self._revoked.items())
            },
        }
        data = {
            "root.crt": cert_pem(self.root_cert),
            "issuing.crt": cert_pem(self.issuing_cert),
            "issuing.key": key_pem(self._issuing_key),
            "state.json": json.dumps(state, sort_keys=True).encode(),
        }
        if include_root_key and self._root_key is not None:
            data["root.key"] = key_pem(self._root_key)
        return data

    @classmethod
    def load(cls, tenant: str, data: Mapping[str, bytes]) -> TenantAuthority:
        """Rebuild an authority from :meth:`export` output (``root.key`` is optional)."""
        validate_label("tenant", tenant)
        try:
            root = load_cert(data["root.crt"])
            issuing = load_cert(data["issuing.crt"])
            issuing_key = load_private_key(data["issuing.key"])
            root_key = load_private_key(data["root.key"]) if "root.key" in data else None
            state = json.loads(data["state.json"])
            if state.get("version") != _STATE_VERSION or state.get("tenant") != tenant:
                raise IdentityError(
                    "corrupt_state", f"state is not version {_STATE_VERSION} of tenant {tenant!r}"
                )
            issued = {int(s, 16) for s in state["issued"]}
            revoked = {
                int(s, 16): Revocation(
                    x509.ReasonFlags(r["reason"]), dt.datetime.fromisoformat(r["revoked_at"])
                )
                for s, r in state["revoked"].items()
            }
            crl_number = int(state["crl_number"])
        except (KeyError, TypeError, ValueError) as e:
            raise IdentityError("corrupt_state", f"cannot load authority state: {e!r}") from None
        check_issued_by(issuing, root, "issuing CA certificate")
        if root.subject != _name(tenant, f"fleetplane {tenant} root CA"):
            raise IdentityError(
                "wrong_tenant", f"root CA {root.subject.rfc4514_string()} is not tenant {tenant!r}'s"
            )
        for key, cert, what in ((issuing_key, issuing, "issuing"), (root_key, root, "root")):
            if key is not None and spki(key.public_key()) != spki(cert.public_key()):
                raise IdentityError("corrupt_state", f"the {what} key does not match the {what} certificate")
        return cls(
            tenant,
            root,
            issuing,
            issuing_key,
            root_key=root_key,
            crl_number=crl_number,
            issued=issued,
            revoked=revoked,
        )

    # ----------------------------------------------------------------- trust material

    @property
    def root_pem(self) -> bytes:
        return cert_pem(self.root_cert)

    @property
    def issuing_pem(self) -> bytes:
        return cert_pem(self.issuing_cert)

    def ssl_bundle(self) -> bytes:
        """PEM of root + issuing CA: the trust bundle (CA file) for servers and clients."""
        return self.root_pem + self.issuing_pem

    # ----------------------------------------------------------------- issuing

    def sign_site_csr(
        self,
        csr_pem: bytes,
        site: str,
        *,
        lifetime: dt.timedelta = SITE_LIFETIME,
        now: dt.datetime | None = None,
    ) -> bytes:
        """Sign a site's CSR; only its public key is used, subject and SANs are ours."""
        validate_label("site", site)
        now = utcnow(now)
        if lifetime <= dt.timedelta(0):
            raise ValueError("lifetime must be positive")
        if b"CERTIFICATE REQUEST" not in csr_pem:
            raise IdentityError("bad_csr", "expected a PEM certificate signing request")
        public_key = public_key_from_request(csr_pem)
        check_window(self.issuing_cert, now, "issuing CA certificate")
        serial = new_serial(self._issued)
        constraints = x509.NameConstraints(
            permitted_subtrees=[
                x509.UniformResourceIdentifier(trust_domain(self.tenant)),
                _org(self.tenant, site),
            ],
            excluded_subtrees=None,
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.tenant, site))
            .issuer_name(self.issuing_cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + lifetime, self.issuing_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(digital_signature=True, cert_sign=True), critical=True)
            .add_extension(TLS_EKU, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(site_id(self.tenant, site))]),
                critical=False,
            )
            .add_extension(constraints, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._issuing_key.public_key()),
                critical=False,
            )
            .sign(self._issuing_key, signing_hash(self._issuing_key))
        )
        self._issued.add(serial)
        return cert_pem(cert)

    # ----------------------------------------------------------------- revocation

    def revoke(
        self,
        serial: int,
        reason: x509.ReasonFlags | str = x509.ReasonFlags.unspecified,
        *,
        now: dt.datetime | None = None,
    ) -> None:
        """Revoke a certificate this authority issued (idempotent; the first revocation wins)."""
        flag = _reason(reason)
        if serial not in self._issued or serial in (
            self.root_cert.serial_number,
            self.issuing_cert.serial_number,
        ):
            raise IdentityError(
                "unknown_serial", f"serial {serial:x} is not a site certificate of this authority"
            )
        self._revoked.setdefault(serial, Revocation(flag, utcnow(now)))

    def is_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    @property
    def crl_number(self) -> int:
        return self._crl_number

    def crl(self, *, now: dt.datetime | None = None) -> bytes:
        """A fresh CRL (PEM) signed by the issuing CA, valid for one hour. Each call takes
        the next CRL number, so persist the authority afterwards."""
        now = utcnow(now)
        self._crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing_cert.subject)
            .last_update(now)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._issuing_key.public_key()),
                critical=False,
            )
        )
        for serial, rev in sorted(self._revoked.items()):
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(rev.revoked_at)
            if rev.reason is not x509.ReasonFlags.unspecified:
                entry = entry.add_extension(x509.CRLReason(rev.reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._issuing_key, signing_hash(self._issuing_key))
        return crl.public_bytes(serialization.Encoding.PEM)

    # ----------------------------------------------------------------- verification

    def verify_site_cert(self, cert_pem_data: bytes, *, now: dt.datetime | None = None) -> str:
        """Check a presented site certificate and return the site name, or raise
        :class:`IdentityError` with reason ``wrong_tenant``, ``not_site_cert``, ``foreign_ca``,
        ``expired``, ``not_yet_valid``, ``revoked`` or ``malformed``."""
        now = utcnow(now)
        cert = load_cert(cert_pem_data)
        uris = spiffe_uris(cert)
        if len(uris) != 1:
            raise IdentityError("not_site_cert", f"expected exactly one SPIFFE ID, found {len(uris)}")
        try:
            tenant, site, workload = parse_id(uris[0])
        except IdentityError:
            raise IdentityError("not_site_cert", f"{uris[0]!r} is not a fleetplane site identity") from None
        if tenant != self.tenant:
            raise IdentityError(
                "wrong_tenant", f"certificate belongs to tenant {tenant!r}, not {self.tenant!r}"
            )
        if workload is not None:
            raise IdentityError("not_site_cert", f"{uris[0]!r} is a workload identity, not a site")
        check_issued_by(cert, self.issuing_cert, "site certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = x509.BasicConstraints(ca=False, path_length=None)
        if not bc.ca or bc.path_length != 0 or cert.subject != _name(self.tenant, site):
            raise IdentityError("not_site_cert", "certificate is not a site CA certificate")
        check_window(self.root_cert, now, "root CA certificate")
        check_window(self.issuing_cert, now, "issuing CA certificate")
        check_window(cert, now, f"site certificate of {site!r}")
        if cert.serial_number in self._revoked:
            rev = self._revoked[cert.serial_number]
            raise IdentityError(
                "revoked",
                f"site certificate {cert.serial_number:x} of {site!r} was revoked "
                f"({rev.reason.value}) at {rev.revoked_at.isoformat()}",
            )
        return site
