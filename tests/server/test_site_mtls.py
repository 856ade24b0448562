"""Mutual TLS for sites against a real server: a site reaches only its own Site, and every
refused certificate is refused (at the handshake or with 401); secrets never reach the disk."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from fleetplane.identity.pki import make_csr, make_key
from tests.support.onboarding import (
    API,
    SITE_API,
    Agent,
    anonymous,
    make_ca,
    make_device,
    onboard,
    operator,
    pem,
)
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("mtls") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def op(server: ServerProcess) -> Iterator[httpx.Client]:
    with operator(server) as http:
        yield http


def unauthorized(r: httpx.Response, words: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["reason"] == "Unauthorized" and words in r.json()["message"], r.json()


def test_own_site_read_and_status(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = onboard(server, op, tmp_path, "m-own")
    onboard(server, op, tmp_path, "m-other")
    with agent.mtls() as site:
        me = site.get(f"{SITE_API}/site")
        assert me.status_code == 200 and me.json()["metadata"]["name"] == "m-own", me.text
        # a site cannot rewrite its own identity (status is replaced whole, identity kept)
        forged = {"status": {"identity": {"serial": "1", "notAfter": "x"}}}
        assert site.put(f"{SITE_API}/site/status", json=forged).status_code == 200
        r = site.put(f"{SITE_API}/site/status", json={"status": {"phase": "Online", "nodeCount": 3}})
        assert r.status_code == 200, r.text
        # the native API does not take a site certificate for a credential
        unauthorized(site.get(f"{API}/sites/m-other"), "bearer access key is required")
        unauthorized(site.get(f"{API}/sites/m-own"), "bearer access key is required")
        r = site.put(f"{SITE_API}/site/status", json={"status": {"phase": "Decommissioned"}})
        assert r.status_code == 403 and "cannot decommission itself" in r.text
    seen = op.get(f"{API}/sites/m-own").json()["status"]
    assert seen["phase"] == "Online" and seen["nodeCount"] == 3 and seen["lastSeen"]
    cert = x509.load_pem_x509_certificate(agent.certificate.encode())
    assert seen["identity"]["serial"] == f"{cert.serial_number:x}"
    # without a certificate the site calls are refused
    with anonymous(server) as http:
        unauthorized(http.get(f"{SITE_API}/site"), "client certificate (mutual TLS)")


def test_phase_and_last_seen_are_the_servers_to_say(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    agent = onboard(server, op, tmp_path, "m-clock")
    skewed = {"status": {"phase": "Offline", "lastSeen": "2001-01-01T00:00:00Z", "nodeCount": 2}}
    with agent.mtls() as site:
        r = site.put(f"{SITE_API}/site/status", json=skewed)
        assert r.status_code == 200, r.text
    seen = op.get(f"{API}/sites/m-clock").json()["status"]
    # A site that reports is Online, and its clock does not decide when it was last seen.
    assert seen["phase"] == "Online" and seen["nodeCount"] == 2
    last = dt.datetime.strptime(seen["lastSeen"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - last).total_seconds()) < 60


def test_delete_revokes_at_once_and_crl_lists_it(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    agent = onboard(server, op, tmp_path, "m-gone")
    serial = x509.load_pem_x509_certificate(agent.certificate.encode()).serial_number
    with agent.mtls() as site:
        assert site.get(f"{SITE_API}/site").status_code == 200
        assert op.delete(f"{API}/sites/m-gone").status_code == 200
        unauthorized(site.get(f"{SITE_API}/site"), "revoked")  # same connection, next call
    with agent.mtls() as site:
        unauthorized(site.get(f"{SITE_API}/site"), "revoked")
    with anonymous(server) as http:
        r = http.get(f"{SITE_API}/crl/default")
    assert r.status_code == 200, r.text
    crl = x509.load_pem_x509_crl(r.content)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_decommission_revokes(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = onboard(server, op, tmp_path, "m-retired")
    r = op.patch(
        f"{API}/sites/m-retired/status",
        json={"status": {"phase": "Decommissioned"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    with agent.mtls() as site:
        unauthorized(site.get(f"{SITE_API}/site"), "revoked")


def test_renewal(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = onboard(server, op, tmp_path, "m-renew")
    new_key = make_key()
    with agent.mtls() as site:
        r = site.post(f"{SITE_API}/site/certificate", json={"csr": make_csr(new_key, "m-renew").decode()})
        assert r.status_code == 200, r.text
    renewed = r.json()["certificate"]
    old = x509.load_pem_x509_certificate(agent.certificate.encode())
    assert x509.load_pem_x509_certificate(renewed.encode()).serial_number != old.serial_number
    with agent.mtls(renewed, new_key) as site:
        assert site.get(f"{SITE_API}/site").status_code == 200
    with agent.mtls() as site:
        unauthorized(site.get(f"{SITE_API}/site"), "revoked")


def test_foreign_ca_is_refused_at_the_handshake(server: ServerProcess, tmp_path: Path) -> None:
    ca = make_ca("Evil CA")
    key, cert = make_device(ca, "evil")
    agent = Agent(server, tmp_path, "evil")
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with agent.mtls(pem(cert), key_pem) as site, pytest.raises(httpx.TransportError):
        site.get(f"{SITE_API}/site")


def test_wrong_tenant_sees_only_itself(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    # A default-tenant site of the same name (an earlier test's, or made here when this test
    # runs alone: the default tenant's CA exists only once a site was issued a certificate).
    if op.get(f"{API}/sites/m-own").status_code == 404:
        onboard(server, op, tmp_path / "default", "m-own")
    r = op.post(f"{API}/tenants", json={"metadata": {"name": "other-co"}})
    assert r.status_code == 201, r.text
    with operator(server, r.json()["status"]["adminAccessKey"]) as other_op:
        agent = onboard(server, other_op, tmp_path, "m-own")  # same name as a default-tenant site
        with agent.mtls() as site:
            me = site.get(f"{SITE_API}/site").json()
        assert me["metadata"]["name"] == "m-own"
        assert "identity" in me["status"] and me["status"]["phase"] == "Pending"
        bundle = other_op.get(f"{API}/certificateauthorities/tenant").json()["spec"]["rootCertificate"]
    default_root = op.get(f"{API}/certificateauthorities/tenant").json()["spec"]["rootCertificate"]
    assert bundle != default_root
    cert = x509.load_pem_x509_certificate(agent.certificate.encode())
    assert "other-co" in cert.subject.rfc4514_string()


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", extra_args=["--site-cert-lifetime", "2"]).start()
    try:
        with operator(srv) as op:
            agent = onboard(srv, op, tmp_path, "m-short")
        with agent.mtls() as site:
            assert site.get(f"{SITE_API}/site").status_code == 200
        time.sleep(2.5)
        with agent.mtls() as site, pytest.raises(httpx.TransportError):
            site.get(f"{SITE_API}/site")
    finally:
        srv.stop()


def test_secrets_never_reach_disk_or_log(server: ServerProcess, op: httpx.Client) -> None:
    plaintext = "correct-horse-battery-staple-4711"
    encoded = base64.b64encode(plaintext.encode()).decode()
    secret = {"metadata": {"name": "db"}, "spec": {"data": {"password": encoded}}}
    r = op.post(f"{API}/namespaces/default/secrets", json=secret)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data"]["password"] == encoded
    assert op.get(f"{API}/namespaces/default/secrets/db").json()["spec"]["data"]["password"] == encoded
    listed = op.get(f"{API}/namespaces/default/secrets").json()["items"]
    assert listed[0]["spec"]["data"]["password"] == encoded
    r = op.patch(
        f"{API}/namespaces/default/secrets/db",
        json={"metadata": {"labels": {"x": "y"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200 and r.json()["spec"]["data"]["password"] == encoded, r.text
    token = op.post(f"{API}/registrationtokens", json={"metadata": {"name": "scan"}, "spec": {}}).json()
    token_text = token["status"]["token"]
    # a viewer may not read Secrets at all (as Kubernetes' view role)
    viewer = op.post(f"{API}/accesskeys", json={"metadata": {"name": "v"}, "spec": {"role": "viewer"}})
    with operator(server, viewer.json()["status"]["accessKey"]) as v:
        r = v.get(f"{API}/namespaces/default/secrets/db")
        assert r.status_code == 403 and "viewers may not read secrets" in r.json()["message"]
        assert v.get(f"{API}/namespaces/default/secrets").status_code == 403
    time.sleep(0.5)
    needles = [plaintext.encode(), encoded.encode(), token_text.encode(), token_text.split("_")[3].encode()]
    files = [p for p in server.data_dir.rglob("*") if p.is_file()] + [server.log_path]
    assert any(p.name == "fleetplane.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path}"
    # and the CA private keys are sealed too
    db = (server.data_dir / "fleetplane.db").read_bytes()
    wal = server.data_dir / "fleetplane.db-wal"
    for blob in (db, wal.read_bytes() if wal.exists() else b""):
        assert b"PRIVATE KEY" not in blob


def test_site_calls_are_counted_by_route_template(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    """The sites' hot calls skip FastAPI's layers (``SiteFastPath``) but not the request metrics."""
    agent = onboard(server, op, tmp_path, "m-counted")
    with agent.mtls() as site:
        for _ in range(3):
            assert site.put(f"{SITE_API}/site/status", json={"status": {"nodeCount": 1}}).status_code == 200
        assert site.put(f"{SITE_API}/site/status", json={"status": []}).status_code == 400
    counts = {
        (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(op.get("/metrics").text)
        for s in family.samples
        if s.name == "fleetplane_http_request_duration_seconds_count"
    }
    status = f"{SITE_API}/site/status"
    assert counts.get(("PUT", status, "200"), 0) >= 3, sorted(counts)
    assert counts.get(("PUT", status, "400"), 0) >= 1, sorted(counts)
    assert counts.get(("POST", f"{SITE_API}/registrations", "201"), 0) >= 1
    assert not any("m-counted" in route for _, route, _ in counts)  # templates, never names
