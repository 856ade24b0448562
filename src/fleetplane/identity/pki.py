"""Shared X.509 building blocks for site identities, plus the agent-side helpers.

Identities are SPIFFE-style URIs in one trust domain per tenant::

    spiffe://<tenant>.fleetplane/site/<site>                  the site (a CA, pathLen 0)
    spiffe://<tenant>.fleetplane/site/<site>/pod/<workload>   a workload on that site

:class:`SiteCA` runs on the site (inside the agent, possibly disconnected) and issues
workload certificates from the site certificate the tenant authority signed.

Name constraints: RFC 5280 applies a URI constraint to the *host* of the URI only, and
OpenSSL 3.0 implements exactly that (an exact host, or a ``.domain`` suffix; a constraint
containing a path never matches anything). So the site certificate pins the URI host to
``<tenant>.fleetplane`` and pins subjects to ``O=<tenant>, OU=<site>`` (a directoryName
constraint OpenSSL does enforce); the per-site *URI path* cannot be expressed as a name
constraint, so relying parties that authorize on the SPIFFE ID must check it, as
:meth:`SiteCA.verify_pod_cert` does.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Container

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN_SUFFIX = "fleetplane"
CLOCK_SKEW = dt.timedelta(minutes=5)
POD_LIFETIME = dt.timedelta(hours=24)
MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SPIFFE = re.compile(
    r"spiffe://(?P<tenant>[^./]+)\.fleetplane/site/(?P<site>[^/]+)(?:/pod/(?P<workload>[^/]+))?"
)

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class IdentityError(Exception):
    """A refused identity operation. ``reason`` is a stable machine-readable code, e.g.
    ``expired``, ``not_yet_valid``, ``revoked``, ``wrong_tenant``, ``foreign_ca``,
    ``not_site_cert``, ``not_pod_cert``, ``bad_csr``, ``weak_key``, ``invalid_name``,
    ``malformed``, ``unknown_serial``, ``corrupt_state``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def utcnow(now: dt.datetime | None = None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def validate_label(kind: str, value: str) -> str:
    """Require a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters)."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise IdentityError("invalid_name", f"{kind} {value!r} is not a DNS-1123 label")
    return value


def validate_workload(value: str) -> str:
    """Require a DNS-1123 subdomain (dot-separated labels, at most 253 characters)."""
    if (
        not isinstance(value, str)
        or len(value) > 253
        or not all(_LABEL.fullmatch(p) for p in value.split("."))
    ):
        raise IdentityError("invalid_name", f"workload {value!r} is not a DNS-1123 subdomain")
    return value


def trust_domain(tenant: str) -> str:
    return f"{tenant}.{TRUST_DOMAIN_SUFFIX}"


def site_id(tenant: str, site: str) -> str:
    return f"spiffe://{trust_domain(tenant)}/site/{site}"


def pod_id(tenant: str, site: str, workload: str) -> str:
    return f"{site_id(tenant, site)}/pod/{workload}"


def parse_id(uri: str) -> tuple[str, str, str | None]:
    """Split one of our SPIFFE IDs into (tenant, site, workload-or-None)."""
    m = _SPIFFE.fullmatch(uri)
    if m is None:
        raise IdentityError("malformed", f"{uri!r} is not a fleetplane identity")
    return m["tenant"], m["site"], m["workload"]


def spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def key_pem(key: CAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_private_key(data: bytes) -> CAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as e:
        raise IdentityError("malformed", f"cannot read private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError("weak_key", f"unsupported private key type {type(key).__name__}")
    check_key_strength(key.public_key())
    return key


def load_cert(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise IdentityError("malformed", f"cannot read certificate: {e}") from None


def check_key_strength(key: object) -> PublicKey:
    """Accept EC keys on P-256/P-384/P-521 and RSA keys of at least 2048 bits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise IdentityError(
                "weak_key", f"EC curve {key.curve.name} is not allowed (need P-256 or better)"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise IdentityError("weak_key", f"RSA key of {key.key_size} bits is too weak (need >= 2048)")
        return key
    raise IdentityError("weak_key", f"unsupported key type {type(key).__name__}")


def public_key_from_request(data: bytes) -> PublicKey:
    """The public key of a PEM CSR (whose signature must verify) or of a PEM public key."""
    if b"CERTIFICATE REQUEST" in data:
        try:
            csr = x509.load_pem_x509_csr(data)
            valid = csr.is_signature_valid
            key: object = csr.public_key()
        except (ValueError, TypeError) as e:
            raise IdentityError("bad_csr", f"cannot read CSR: {e}") from None
        if not valid:
            raise IdentityError(
                "bad_csr", "CSR signature does not verify (tampered or not signed by its key)"
            )
        return check_key_strength(key)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise IdentityError("bad_csr", f"expected a PEM CSR or public key: {e}") from None
    return check_key_strength(key)


def new_serial(used: Container[int]) -> int:
    """A random positive 128-bit serial number not in ``used``."""
    while True:
        serial = secrets.randbits(128)
        if serial and serial not in used:
            return serial


def signing_hash(key: CAPrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def key_usage(*, digital_signature: bool, cert_sign: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


TLS_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])


def check_window(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise IdentityError(
            "not_yet_valid", f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if now > cert.not_valid_after_utc:
        raise IdentityError("expired", f"{what} expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError(
            "foreign_ca", f"{what} was not issued by {issuer.subject.rfc4514_string()}"
        ) from None


def spki(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key (to compare keys of any type)."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_key() -> bytes:
    """A fresh ECDSA P-256 private key as PKCS#8 PEM (for the agent; it never leaves the caller)."""
    return key_pem(ec.generate_private_key(ec.SECP256R1()))


def make_csr(key_pem_data: bytes, site: str) -> bytes:
    """A CSR for ``site`` signed by the key; the authority sets the real subject and SANs itself."""
    validate_label("site", site)
    key = load_private_key(key_pem_data)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
        .sign(key, signing_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class SiteCA:
    """The site's own CA (site certificate + key), issuing workload certificates offline."""

    def __init__(self, cert_pem_data: bytes, key_pem_data: bytes) -> None:
        self.cert = load_cert(cert_pem_data)
        self._key = load_private_key(key_pem_data)
        if spki(self._key.public_key()) != spki(self.cert.public_key()):
            raise IdentityError("malformed", "the private key does not belong to the site certificate")
        ids = [parse_id(u) for u in spiffe_uris(self.cert)]
        bc = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if len(ids) != 1 or ids[0][2] is not None or not bc.ca:
            raise IdentityError("not_site_cert", "certificate is not a fleetplane site certificate")
        self.tenant, self.site, _ = ids[0]

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue_pod_cert(
        self,
        csr_or_public_key: bytes,
        workload: str,
        lifetime: dt.timedelta = POD_LIFETIME,
        *,
        now: dt.datetime | None = None,
    ) -> bytes:
        """A leaf certificate for ``workload`` (PEM); never outlives the site certificate."""
        now = utcnow(now)
        validate_workload(workload)
        if lifetime <= dt.timedelta(0):
            raise ValueError("lifetime must be positive")
        public_key = public_key_from_request(csr_or_public_key)
        check_window(self.cert, now, "site certificate")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.tenant),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.site),
                x509.NameAttribute(NameOID.COMMON_NAME, workload[:64]),
            ]
        )
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(new_serial(()))
            .not_valid_before(max(now - CLOCK_SKEW, self.cert.not_valid_before_utc))
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                key_usage(digital_signature=True, cert_sign=False, key_encipherment=rsa_key), critical=True
            )
            .add_extension(TLS_EKU, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(pod_id(self.tenant, self.site, workload))]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, signing_hash(self._key))
        )
        return cert_pem(cert)

    def verify_pod_cert(self, cert_pem_data: bytes, *, now: dt.datetime | None = None) -> str:
        """Check a workload certificate of this site, including the URI path that name
        constraints cannot enforce; returns the workload name."""
        now = utcnow(now)
        cert = load_cert(cert_pem_data)
        check_issued_by(cert, self.cert, "pod certificate")
        ids = [parse_id(u) for u in spiffe_uris(cert)]
        if len(ids) != 1 or ids[0][:2] != (self.tenant, self.site) or ids[0][2] is None:
            raise IdentityError("not_pod_cert", f"certificate does not name a workload of site {self.site!r}")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise IdentityError("not_pod_cert", "a workload certificate must not be a CA")
        check_window(self.cert, now, "site certificate")
        check_window(cert, now, "pod certificate")
        return ids[0][2]
