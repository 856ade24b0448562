"""The tenant identity authority, checked against the real ``openssl`` CLI where it matters."""

from __future__ import annotations

import datetime as dt
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fleetplane.identity.authority import IdentityError, SiteCA, TenantAuthority, make_csr, make_key

OPENSSL = "/usr/bin/openssl"
NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


def openssl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


def verify(
    cwd: Path, cert: str, *untrusted: bytes, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` against root.pem (written by the fixture), current time."""
    args: list[str] = ["verify", "-CAfile", "root.pem", *extra]
    if untrusted:
        (cwd / "untrusted.pem").write_bytes(b"".join(untrusted))
        args += ["-untrusted", "untrusted.pem"]
    return openssl(*args, cert, cwd=cwd)


@dataclass
class Site:
    name: str
    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def ca(self) -> SiteCA:
        return SiteCA(self.cert_pem, self.key_pem)


@pytest.fixture
def authority(tmp_path: Path) -> TenantAuthority:
    ta = TenantAuthority.create("acme")
    (tmp_path / "root.pem").write_bytes(ta.root_pem)
    (tmp_path / "issuing.pem").write_bytes(ta.issuing_pem)
    return ta


def enroll(ta: TenantAuthority, name: str = "store-1", **kw: object) -> Site:
    key = make_key()
    return Site(name, key, ta.sign_site_csr(make_csr(key, name), name, **kw))  # type: ignore[arg-type]


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def pod_csr() -> bytes:
    return make_csr(make_key(), "ignored")


def forge_pod(site: Site, uri: str, subject: x509.Name) -> bytes:
    """A leaf signed directly with the site key (what a compromised site could mint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    site_key = serialization.load_pem_private_key(site.key_pem, None)
    assert isinstance(site_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(site.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(site_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def hexserial(serial: int) -> str:
    """A serial as ``openssl ... -text`` prints it in CRLs (upper-case hex, whole bytes)."""
    return serial.to_bytes((serial.bit_length() + 7) // 8, "big").hex().upper()


def pod_subject(tenant: str, site: str, workload: str = "web") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
            x509.NameAttribute(NameOID.COMMON_NAME, workload),
        ]
    )


# --------------------------------------------------------------------------- openssl: chains


def test_site_cert_verifies_with_openssl(authority: TenantAuthority, tmp_path: Path) -> None:
    site = enroll(authority)
    name = write(tmp_path / "site.pem", site.cert_pem)
    r = openssl("verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "site.pem: OK"
    # ssl_bundle() works as a plain CA file, too.
    write(tmp_path / "bundle.pem", authority.ssl_bundle())
    r = openssl("verify", "-CAfile", "bundle.pem", name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_site_cert_without_issuing_ca_does_not_verify(authority: TenantAuthority, tmp_path: Path) -> None:
    name = write(tmp_path / "site.pem", enroll(authority).cert_pem)
    r = verify(tmp_path, name)
    assert r.returncode != 0
    assert "unable to get local issuer certificate" in r.stdout + r.stderr


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_pod_cert_verifies_with_openssl(authority: TenantAuthority, tmp_path: Path, purpose: str) -> None:
    site = enroll(authority)
    pod = site.ca.issue_pod_cert(pod_csr(), "web-1")
    name = write(tmp_path / "pod.pem", pod)
    r = verify(tmp_path, name, authority.issuing_pem, site.cert_pem, extra=("-purpose", purpose))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "pod.pem: OK"
    text = openssl("x509", "-in", name, "-noout", "-text", cwd=tmp_path).stdout
    assert "URI:spiffe://acme.fleetplane/site/store-1/pod/web-1" in text
    assert "CA:FALSE" in text
    assert "TLS Web Client Authentication, TLS Web Server Authentication" in text
    assert "Subject: O = acme, OU = store-1, CN = web-1" in text


def test_site_cert_profile_in_openssl_text(authority: TenantAuthority, tmp_path: Path) -> None:
    key = make_key()
    # A CSR asking for a different subject and extra SANs: all of it must be ignored.
    loaded = serialization.load_pem_private_key(key, None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root-of-everything")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("evil.example"), x509.UniformResourceIdentifier("spiffe://globex.fleetplane/x")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=5), critical=True)
        .sign(loaded, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = authority.sign_site_csr(greedy, "store-1")
    text = openssl("x509", "-in", write(tmp_path / "s.pem", cert), "-noout", "-text", cwd=tmp_path).stdout
    assert "Subject: O = acme, CN = store-1" in text
    assert "URI:spiffe://acme.fleetplane/site/store-1\n" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign" in text
    assert "TLS Web Client Authentication, TLS Web Server Authentication" in text
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0" in text
    assert "X509v3 Name Constraints: critical" in text
    assert re.search(r"Permitted:\n\s+URI:acme\.fleetplane\n\s+DirName:O = acme, OU = store-1\n", text), text
    assert "X509v3 Subject Key Identifier" in text
    assert "X509v3 Authority Key Identifier" in text
    for unwanted in ("evil.example", "globex", "root-of-everything", "pathlen:5"):
        assert unwanted not in text
    serial = x509.load_pem_x509_certificate(cert).serial_number
    assert 0 < serial < 2**128


def test_ca_path_lengths_and_issuing_constraints(authority: TenantAuthority, tmp_path: Path) -> None:
    root = openssl("x509", "-in", "root.pem", "-noout", "-text", cwd=tmp_path).stdout
    issuing = openssl("x509", "-in", "issuing.pem", "-noout", "-text", cwd=tmp_path).stdout
    assert "CA:TRUE, pathlen:2" in root
    assert "Certificate Sign, CRL Sign" in root
    assert "CA:TRUE, pathlen:1" in issuing
    assert re.search(r"Permitted:\n\s+URI:acme\.fleetplane\n\s+DirName:O = acme\n", issuing), issuing
    assert authority.root_cert.not_valid_after_utc - authority.root_cert.not_valid_before_utc > dt.timedelta(
        days=3650
    )
    life = authority.issuing_cert.not_valid_after_utc - authority.issuing_cert.not_valid_before_utc
    assert dt.timedelta(days=5 * 365) < life < dt.timedelta(days=5 * 365 + 1)


# --------------------------------------------------------------------------- openssl: name constraints


@pytest.mark.parametrize(
    ("uri", "subject"),
    [
        ("spiffe://globex.fleetplane/site/store-1/pod/web", pod_subject("acme", "store-1")),  # other tenant
        ("spiffe://x.acme.fleetplane/site/store-1/pod/web", pod_subject("acme", "store-1")),  # sub-host
        ("spiffe://acme.fleetplane/site/store-2/pod/web", pod_subject("acme", "store-2")),  # other site
        ("spiffe://acme.fleetplane/site/store-1/pod/web", pod_subject("acme", "store-2")),  # other site's DN
        (
            "spiffe://acme.fleetplane/site/store-1/pod/web",
            pod_subject("globex", "store-1"),
        ),  # other tenant DN
    ],
)
def test_openssl_rejects_pod_outside_site_constraints(
    authority: TenantAuthority, tmp_path: Path, uri: str, subject: x509.Name
) -> None:
    site = enroll(authority)
    good = write(tmp_path / "good.pem", site.ca.issue_pod_cert(pod_csr(), "web"))
    assert verify(tmp_path, good, authority.issuing_pem, site.cert_pem).returncode == 0
    bad = write(tmp_path / "bad.pem", forge_pod(site, uri, subject))
    r = verify(tmp_path, bad, authority.issuing_pem, site.cert_pem)
    assert r.returncode != 0
    assert "permitted subtree violation" in r.stdout + r.stderr


def test_openssl_cannot_enforce_uri_paths_so_verify_pod_cert_does(
    authority: TenantAuthority, tmp_path: Path
) -> None:
    """The finding: OpenSSL matches URI name constraints on the host only. A site key that
    mints another site's URI path under its own DN passes ``openssl verify``; relying
    parties must check the path, as SiteCA.verify_pod_cert does."""
    site = enroll(authority)
    forged = forge_pod(site, "spiffe://acme.fleetplane/site/store-2/pod/web", pod_subject("acme", "store-1"))
    r = verify(tmp_path, write(tmp_path / "f.pem", forged), authority.issuing_pem, site.cert_pem)
    assert r.returncode == 0, "openssl now enforces URI paths: tighten the site name constraints"
    with pytest.raises(IdentityError) as exc:
        site.ca.verify_pod_cert(forged)
    assert exc.value.reason == "not_pod_cert"
    assert site.ca.verify_pod_cert(site.ca.issue_pod_cert(pod_csr(), "web")) == "web"


@pytest.mark.parametrize(
    "constraint",
    [
        "spiffe://acme.fleetplane/site/store-1/",
        "acme.fleetplane/site/store-1/",
        "acme.fleetplane/site/store-1",
    ],
)
def test_openssl_path_form_uri_constraint_rejects_even_legitimate_pods(
    authority: TenantAuthority, tmp_path: Path, constraint: str
) -> None:
    """Why the site cert pins only the host: a constraint with a path matches nothing."""
    issuing_key = serialization.load_pem_private_key(authority.export()["issuing.key"], None)
    assert isinstance(issuing_key, ec.EllipticCurvePrivateKey)
    good = enroll(authority)
    site_cert = good.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(site_cert.subject)
        .issuer_name(site_cert.issuer)
        .public_key(site_cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(site_cert.not_valid_before_utc)
        .not_valid_after(site_cert.not_valid_after_utc)
    )
    for ext in site_cert.extensions:
        value = ext.value
        if isinstance(value, x509.NameConstraints):
            value = x509.NameConstraints([x509.UniformResourceIdentifier(constraint)], None)
        builder = builder.add_extension(value, critical=ext.critical)
    path_site = Site(
        "store-1",
        good.key_pem,
        builder.sign(issuing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM),
    )
    pod = write(tmp_path / "pod.pem", path_site.ca.issue_pod_cert(pod_csr(), "web"))
    assert verify(tmp_path, pod, authority.issuing_pem, good.cert_pem).returncode == 0
    r = verify(tmp_path, pod, authority.issuing_pem, path_site.cert_pem)
    assert r.returncode != 0
    assert "permitted subtree violation" in r.stdout + r.stderr


# --------------------------------------------------------------------------- openssl: CRL


def test_crl_revokes_site_cert_in_openssl(authority: TenantAuthority, tmp_path: Path) -> None:
    revoked, kept = enroll(authority, "store-1"), enroll(authority, "store-2")
    authority.revoke(revoked.cert.serial_number, "keyCompromise")
    crl_pem = authority.crl()
    write(tmp_path / "crl.pem", crl_pem)
    check = ("-crl_check", "-CRLfile", "crl.pem")
    r = verify(tmp_path, write(tmp_path / "kept.pem", kept.cert_pem), authority.issuing_pem, extra=check)
    assert r.returncode == 0, r.stdout + r.stderr
    r = verify(
        tmp_path, write(tmp_path / "revoked.pem", revoked.cert_pem), authority.issuing_pem, extra=check
    )
    assert r.returncode != 0
    assert "certificate revoked" in r.stdout + r.stderr

    text = openssl("crl", "-in", "crl.pem", "-noout", "-text", cwd=tmp_path).stdout
    assert f"Serial Number: {hexserial(revoked.cert.serial_number)}\n" in text
    assert hexserial(kept.cert.serial_number) not in text
    assert "Key Compromise" in text
    assert "Issuer: O = acme, CN = fleetplane acme issuing CA" in text
    write(tmp_path / "bundle.pem", authority.ssl_bundle())
    r = openssl("crl", "-in", "crl.pem", "-noout", "-CAfile", "bundle.pem", cwd=tmp_path)
    assert "verify OK" in r.stdout + r.stderr


def test_crl_number_increments_and_next_update_is_one_hour(authority: TenantAuthority) -> None:
    numbers = []
    for _ in range(3):
        crl = x509.load_pem_x509_crl(authority.crl(now=NOW))
        numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        assert crl.next_update_utc == NOW + dt.timedelta(hours=1)
        assert crl.last_update_utc == NOW
        assert crl.is_signature_valid(authority.issuing_cert.public_key())  # type: ignore[arg-type]
    assert numbers == [1, 2, 3]
    assert authority.crl_number == 3


def test_revoke_unknown_serial_and_bad_reason(authority: TenantAuthority) -> None:
    with pytest.raises(IdentityError) as exc:
        authority.revoke(12345)
    assert exc.value.reason == "unknown_serial"
    with pytest.raises(IdentityError) as exc:  # the issuing CA belongs on the root's CRL, not its own
        authority.revoke(authority.issuing_cert.serial_number)
    assert exc.value.reason == "unknown_serial"
    site = enroll(authority)
    with pytest.raises(ValueError, match="unknown revocation reason"):
        authority.revoke(site.cert.serial_number, "because")
    assert not authority.is_revoked(site.cert.serial_number)
    authority.revoke(site.cert.serial_number)
    assert authority.is_revoked(site.cert.serial_number)


# --------------------------------------------------------------------------- CSR and key checks


def test_tampered_csr_is_refused(authority: TenantAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(make_key(), "store-1"))
    der = csr.public_bytes(serialization.Encoding.DER)
    tampered_der = der.replace(b"store-1", b"store-9")
    assert tampered_der != der
    tampered = x509.load_der_x509_csr(tampered_der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError, match="signature does not verify") as exc:
        authority.sign_site_csr(tampered, "store-1")
    assert exc.value.reason == "bad_csr"
    site = enroll(authority)
    with pytest.raises(IdentityError) as exc:
        site.ca.issue_pod_cert(tampered, "web")
    assert exc.value.reason == "bad_csr"


def test_not_a_csr_is_refused(authority: TenantAuthority) -> None:
    for data in (
        b"hello",
        authority.root_pem,
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        with pytest.raises(IdentityError) as exc:
            authority.sign_site_csr(data, "store-1")
        assert exc.value.reason == "bad_csr"


def _csr_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),  # noqa: S505 (on purpose)
        (lambda: ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1"),
    ],
)
def test_weak_keys_are_refused(authority: TenantAuthority, make: object, message: str) -> None:
    csr = _csr_for(make())  # type: ignore[operator]
    with pytest.raises(IdentityError, match=message) as exc:
        authority.sign_site_csr(csr, "store-1")
    assert exc.value.reason == "weak_key"
    site = enroll(authority)
    with pytest.raises(IdentityError) as exc:
        site.ca.issue_pod_cert(csr, "web")
    assert exc.value.reason == "weak_key"


@pytest.mark.parametrize(
    "key",
    [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())],
    ids=["rsa2048", "p384"],
)
def test_strong_enough_keys_are_accepted(authority: TenantAuthority, tmp_path: Path, key: object) -> None:
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    cert = authority.sign_site_csr(_csr_for(key), "store-1")
    assert authority.verify_site_cert(cert) == "store-1"
    assert verify(tmp_path, write(tmp_path / "s.pem", cert), authority.issuing_pem).returncode == 0


@pytest.mark.parametrize("bad", ["Store", "-store", "store-", "st_ore", "a.b", "", "x" * 64])
def test_site_and_tenant_names_must_be_dns1123_labels(authority: TenantAuthority, bad: str) -> None:
    with pytest.raises(IdentityError) as exc:
        authority.sign_site_csr(make_csr(make_key(), "ok"), bad)
    assert exc.value.reason == "invalid_name"
    with pytest.raises(IdentityError) as exc:
        TenantAuthority.create(bad)
    assert exc.value.reason == "invalid_name"
    assert authority.sign_site_csr(make_csr(make_key(), "ok"), "x" * 63)


# --------------------------------------------------------------------------- verify_site_cert


def _reason(ta: TenantAuthority, cert: bytes, now: dt.datetime | None = None) -> str:
    with pytest.raises(IdentityError) as exc:
        ta.verify_site_cert(cert, now=now)
    return exc.value.reason


def test_verify_site_cert_accepts_a_good_one(authority: TenantAuthority) -> None:
    site = enroll(authority, "store-7")
    assert authority.verify_site_cert(site.cert_pem) == "store-7"


def test_verify_site_cert_expired_and_not_yet_valid() -> None:
    ta = TenantAuthority.create("acme", now=NOW - dt.timedelta(days=100))
    site = enroll(ta, now=NOW - dt.timedelta(days=60))  # 30-day lifetime: expired at NOW
    assert ta.verify_site_cert(site.cert_pem, now=NOW - dt.timedelta(days=45)) == "store-1"
    assert _reason(ta, site.cert_pem, NOW) == "expired"
    assert _reason(ta, site.cert_pem, NOW - dt.timedelta(days=61)) == "not_yet_valid"


def test_verify_site_cert_revoked(authority: TenantAuthority) -> None:
    site = enroll(authority)
    authority.revoke(site.cert.serial_number, x509.ReasonFlags.superseded)
    with pytest.raises(IdentityError, match="superseded") as exc:
        authority.verify_site_cert(site.cert_pem)
    assert exc.value.reason == "revoked"


def test_verify_site_cert_foreign_ca(authority: TenantAuthority) -> None:
    # Same tenant name, different authority: identical subject names, different keys.
    impostor = TenantAuthority.create("acme")
    assert impostor.issuing_cert.subject == authority.issuing_cert.subject
    assert _reason(authority, enroll(impostor).cert_pem) == "foreign_ca"
    # Self-signed certificate claiming our site identity.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")])
    selfsigned = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(authority.issuing_cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://acme.fleetplane/site/s")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    assert _reason(authority, selfsigned, NOW) == "foreign_ca"


def test_verify_site_cert_wrong_tenant(authority: TenantAuthority) -> None:
    other = TenantAuthority.create("globex")
    with pytest.raises(IdentityError, match="tenant 'globex'") as exc:
        authority.verify_site_cert(enroll(other).cert_pem)
    assert exc.value.reason == "wrong_tenant"


def test_verify_site_cert_refuses_non_site_certs(authority: TenantAuthority) -> None:
    site = enroll(authority)
    pod = site.ca.issue_pod_cert(pod_csr(), "web")
    assert _reason(authority, pod) == "not_site_cert"
    assert _reason(authority, authority.issuing_pem) == "not_site_cert"
    assert _reason(authority, authority.root_pem) == "not_site_cert"
    assert _reason(authority, b"not a certificate") == "malformed"


# --------------------------------------------------------------------------- persistence


def test_export_load_round_trip(authority: TenantAuthority, tmp_path: Path) -> None:
    before = [enroll(authority, f"store-{i}") for i in range(3)]
    authority.revoke(before[0].cert.serial_number, "cessationOfOperation")
    authority.crl()
    data = authority.export()
    assert set(data) == {"root.crt", "root.key", "issuing.crt", "issuing.key", "state.json"}
    assert all(isinstance(v, bytes) for v in data.values())
    assert b"PRIVATE KEY" in data["issuing.key"]

    loaded = TenantAuthority.load("acme", data)
    assert loaded.root_pem == authority.root_pem and loaded.issuing_pem == authority.issuing_pem
    assert loaded.is_revoked(before[0].cert.serial_number)
    assert _reason(loaded, before[0].cert_pem) == "revoked"
    assert loaded.verify_site_cert(before[1].cert_pem) == "store-1"
    after = enroll(loaded, "store-9")
    assert authority.verify_site_cert(after.cert_pem) == "store-9"  # same CA, either instance verifies
    r = verify(tmp_path, write(tmp_path / "after.pem", after.cert_pem), authority.issuing_pem)
    assert r.returncode == 0, r.stdout + r.stderr
    serials = [s.cert.serial_number for s in [*before, after]]
    assert len(set(serials)) == len(serials)
    crl = x509.load_pem_x509_crl(loaded.crl())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.get_revoked_certificate_by_serial_number(before[0].cert.serial_number) is not None
    # The loaded authority can revoke what the original issued.
    loaded.revoke(before[1].cert.serial_number)


def test_load_avoids_serials_issued_before(
    authority: TenantAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = enroll(authority).cert.serial_number
    loaded = TenantAuthority.load("acme", authority.export())
    draws = iter([first, 0, first, 42])
    monkeypatch.setattr("fleetplane.identity.pki.secrets.randbits", lambda _bits: next(draws))
    assert enroll(loaded, "store-2").cert.serial_number == 42


def test_load_without_root_key_keeps_issuing(authority: TenantAuthority) -> None:
    data = authority.export(include_root_key=False)
    assert "root.key" not in data
    loaded = TenantAuthority.load("acme", data)
    assert loaded.verify_site_cert(enroll(loaded).cert_pem) == "store-1"
    assert "root.key" not in loaded.export()


def test_load_refuses_inconsistent_state(authority: TenantAuthority) -> None:
    data = authority.export()
    with pytest.raises(IdentityError) as exc:
        TenantAuthority.load("globex", data)
    assert exc.value.reason == "corrupt_state"
    other = TenantAuthority.create("acme").export()
    with pytest.raises(IdentityError) as exc:
        TenantAuthority.load("acme", {**data, "issuing.key": other["issuing.key"]})
    assert exc.value.reason == "corrupt_state"
    with pytest.raises(IdentityError) as exc:
        TenantAuthority.load("acme", {**data, "issuing.crt": other["issuing.crt"]})
    assert exc.value.reason == "foreign_ca"
    with pytest.raises(IdentityError) as exc:
        TenantAuthority.load("acme", {k: v for k, v in data.items() if k != "state.json"})
    assert exc.value.reason == "corrupt_state"


# --------------------------------------------------------------------------- SiteCA


def test_site_ca_issues_pods_from_csr_or_public_key(authority: TenantAuthority) -> None:
    site = enroll(authority, "store-3")
    ca = site.ca
    assert (ca.tenant, ca.site) == ("acme", "store-3")
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for request in (pod_csr(), pub):
        cert = x509.load_pem_x509_certificate(ca.issue_pod_cert(request, "api.v2", dt.timedelta(hours=2)))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://acme.fleetplane/site/store-3/pod/api.v2"
        ]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=2, minutes=5)
        assert ca.verify_pod_cert(cert.public_bytes(serialization.Encoding.PEM)) == "api.v2"


def test_site_ca_pod_never_outlives_site_cert(authority: TenantAuthority) -> None:
    site = enroll(authority, lifetime=dt.timedelta(days=1))
    pod = x509.load_pem_x509_certificate(site.ca.issue_pod_cert(pod_csr(), "web", dt.timedelta(days=90)))
    assert pod.not_valid_after_utc == site.cert.not_valid_after_utc
    with pytest.raises(IdentityError) as exc:
        site.ca.issue_pod_cert(pod_csr(), "web", now=site.cert.not_valid_after_utc + dt.timedelta(seconds=1))
    assert exc.value.reason == "expired"


def test_site_ca_refuses_bad_inputs(authority: TenantAuthority) -> None:
    site = enroll(authority)
    with pytest.raises(IdentityError) as exc:
        SiteCA(site.cert_pem, make_key())
    assert exc.value.reason == "malformed"
    pod = site.ca.issue_pod_cert(pod_csr(), "web")
    with pytest.raises(IdentityError) as exc:
        SiteCA(pod, make_key())
    assert exc.value.reason in {"malformed", "not_site_cert"}
    for bad in ("Web", "a/b", "../x", "web:443", ""):
        with pytest.raises(IdentityError) as exc:
            site.ca.issue_pod_cert(pod_csr(), bad)
        assert exc.value.reason == "invalid_name"
    other = enroll(authority, "store-2")
    with pytest.raises(IdentityError) as exc:
        site.ca.verify_pod_cert(other.ca.issue_pod_cert(pod_csr(), "web"))
    assert exc.value.reason == "foreign_ca"


# --------------------------------------------------------------------------- a real TLS handshake


def _context(purpose: ssl.Purpose, chain: bytes, key: bytes, trust: bytes, path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cadata=trust.decode())
    ctx.check_hostname = False  # identities are SPIFFE URIs, checked by the application
    ctx.verify_mode = ssl.CERT_REQUIRED
    path.with_suffix(".crt").write_bytes(chain)
    path.with_suffix(".key").write_bytes(key)
    ctx.load_cert_chain(path.with_suffix(".crt"), path.with_suffix(".key"))
    return ctx


def test_mutual_tls_between_site_and_pod(authority: TenantAuthority, tmp_path: Path) -> None:
    """Python's ssl (OpenSSL) accepts the whole chain, name constraints included, both ways."""
    site = enroll(authority)
    pod_key = make_key()
    pod = site.ca.issue_pod_cert(make_csr(pod_key, "ignored"), "web")
    server_ctx = _context(
        ssl.Purpose.CLIENT_AUTH,
        pod + site.cert_pem + authority.issuing_pem,
        pod_key,
        authority.root_pem,
        tmp_path / "server",
    )
    client_ctx = _context(
        ssl.Purpose.SERVER_AUTH,
        site.cert_pem + authority.issuing_pem,
        site.key_pem,
        authority.root_pem,
        tmp_path / "client",
    )
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3], server_side=False)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
        if all(done.values()):
            break
    assert all(done.values())
    server_sees = x509.load_der_x509_certificate(server.getpeercert(binary_form=True) or b"")
    client_sees = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    assert authority.verify_site_cert(server_sees.public_bytes(serialization.Encoding.PEM)) == "store-1"
    assert site.ca.verify_pod_cert(client_sees.public_bytes(serialization.Encoding.PEM)) == "web"
