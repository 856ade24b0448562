"""Onboarding against a real server process: tokens, the device path, decisions, refusals."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from fleetplane.server.site_api import check_nonce, make_nonce
from tests.support.onboarding import (
    API,
    SITE_API,
    Agent,
    anonymous,
    device_proof,
    make_ca,
    make_device,
    new_token,
    operator,
    pem,
)
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("onboard") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def op(server: ServerProcess) -> Iterator[httpx.Client]:
    with operator(server) as http:
        yield http


def refused(r: httpx.Response, code: int, words: str) -> None:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["code"] == code, body
    assert words in body["message"], body["message"]


def test_token_is_shown_once_and_stored_as_hash(op: httpx.Client) -> None:
    r = op.post(f"{API}/registrationtokens", json={"metadata": {"name": "once"}, "spec": {}})
    assert r.status_code == 201, r.text
    status = r.json()["status"]
    assert status["token"].startswith("fpt_default_once_") and len(status["token"].split("_")[3]) == 64
    assert status["caHash"].startswith("sha256:") and "keyHash" not in status
    again = op.get(f"{API}/registrationtokens/once").json()["status"]
    assert "token" not in again and "keyHash" not in again and again["uses"] == 0


def test_manual_accept(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    token = new_token(op, "manual", labels={"region": "jp-north"})
    agent = Agent(server, tmp_path, "store-1")
    r = agent.register(token=token, requestedLabels={"model": "x1"})
    assert r.status_code == 201, r.text
    name, poll = r.json()["name"], r.json()["pollToken"]
    assert r.json()["phase"] == "Pending"
    assert agent.poll(name, poll).json() == {"phase": "Pending"}
    listed = op.get(f"{API}/registrations").json()["items"]
    reg = next(i for i in listed if i["metadata"]["name"] == name)
    assert reg["spec"]["method"] == "token" and "pollHash" not in reg["status"]
    r = op.post(f"{API}/registrations/{name}/accept", json={"labels": {"function": "weld"}})
    assert r.status_code == 200, r.text
    assert r.json()["status"]["phase"] == "Accepted" and r.json()["status"]["site"] == "store-1"
    answer = agent.poll(name, poll).json()
    assert answer["phase"] == "Accepted" and answer["site"] == "store-1"
    site = op.get(f"{API}/sites/store-1").json()
    assert site["metadata"]["labels"] == {"region": "jp-north", "model": "x1", "function": "weld"}
    assert site["spec"]["coordinates"] == {"latitude": 35.6, "longitude": 139.7}
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert site["status"]["identity"]["serial"] == f"{cert.serial_number:x}"
    # openssl verifies the site certificate against the CA bundle from the poll answer
    (tmp_path / "bundle.pem").write_text(answer["caBundle"])
    (tmp_path / "site.pem").write_text(answer["certificate"])
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"), str(tmp_path / "site.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "site.pem")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "URI:spiffe://default.fleetplane/site/store-1" in text or "URI:spiffe://" in text
    # deciding twice is refused with the phase
    refused(op.post(f"{API}/registrations/{name}/reject", json={"reason": "x"}), 409, "already Accepted")


def test_auto_accept(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path, "store-auto")
    r = agent.register(token=new_token(op, "auto", autoAccept=True, labels={"tier": "gold"}))
    assert r.status_code == 201 and r.json()["phase"] == "Accepted", r.text
    # the certificate comes with the answer (no poll needed), and a poll returns the same one
    assert "BEGIN CERTIFICATE" in r.json()["certificate"] and r.json()["site"] == "store-auto"
    answer = agent.poll(r.json()["name"], r.json()["pollToken"]).json()
    assert answer["phase"] == "Accepted" and answer["certificate"] == r.json()["certificate"]
    assert op.get(f"{API}/sites/store-auto").json()["metadata"]["labels"] == {"tier": "gold"}


def test_reject_reason_reaches_the_poller(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path, "store-no")
    r = agent.register(token=new_token(op, "rej"))
    name, poll = r.json()["name"], r.json()["pollToken"]
    refused(op.post(f"{API}/registrations/{name}/reject", json={}), 400, "reason is required")
    assert op.post(f"{API}/registrations/{name}/reject", json={"reason": "unknown box"}).status_code == 200
    assert agent.poll(name, poll, wait=1).json() == {"phase": "Rejected", "reason": "unknown box"}
    refused(op.post(f"{API}/registrations/{name}/accept", json={}), 409, "already Rejected (unknown box)")
    assert op.get(f"{API}/sites/store-no").status_code == 404


def test_long_poll_returns_when_decided(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path, "store-wait")
    r = agent.register(token=new_token(op, "wait"))
    name, poll = r.json()["name"], r.json()["pollToken"]
    import threading

    threading.Timer(0.5, lambda: op.post(f"{API}/registrations/{name}/accept", json={})).start()
    started = time.monotonic()
    assert agent.poll(name, poll, wait=20).json()["phase"] == "Accepted"
    assert time.monotonic() - started < 5
    refused(agent.poll(name, poll + "0"), 401, "wrong poll token")


def test_token_refusals(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    agent = Agent(server, tmp_path, "store-r")
    past = new_token(op, "old", expiresAt="2020-01-01T00:00:00Z")
    refused(agent.register(token=past), 401, "expired at 2020-01-01T00:00:00Z")
    once = new_token(op, "single", maxUses=1)
    assert agent.register(token=once).status_code == 201
    refused(agent.register(token=once), 401, 'registration token "single" is used up (1 of 1 uses)')
    refused(agent.register(token=once[:-4] + "0000"), 401, "unknown or deleted registration token")
    refused(agent.register(token="nonsense"), 401, "malformed registration token")
    refused(agent.register(), 401, "a registration token or a device proof is required")
    assert op.delete(f"{API}/registrationtokens/old").status_code == 200
    refused(agent.register(token=past), 401, "unknown or deleted")
    bad_csr = agent.csr.replace("A", "B", 3)
    r = agent.register(token=new_token(op, "csr"), csr=bad_csr)
    assert r.status_code == 422, r.text


def test_device_path(server: ServerProcess, op: httpx.Client, tmp_path: Path) -> None:
    vendor, stranger = make_ca("Acme TPM CA"), make_ca("Unknown CA")
    spec = {"caBundle": pem(vendor[1]), "labels": {"hw": "acme"}, "autoAccept": True}
    r = op.post(f"{API}/trustedmanufacturers", json={"metadata": {"name": "acme"}, "spec": spec})
    assert r.status_code == 201, r.text
    agent = Agent(server, tmp_path, "box-1")
    with anonymous(server) as http:
        nonce = http.get(f"{SITE_API}/nonce").json()["nonce"]
    device = make_device(vendor, "SN-1")
    r = agent.register(tenant="default", device=device_proof(device, nonce, agent.csr))
    assert r.status_code == 201 and r.json()["phase"] == "Accepted", r.text
    reg = op.get(f"{API}/registrations/{r.json()['name']}").json()
    assert reg["spec"]["method"] == "device" and reg["spec"]["manufacturer"] == "acme"
    assert reg["spec"]["deviceSubject"] == "2.5.4.5=SN-1"
    assert op.get(f"{API}/sites/box-1").json()["metadata"]["labels"] == {"hw": "acme"}
    # untrusted manufacturer: 403
    other = make_device(stranger, "SN-2")
    refused(
        agent.register(device=device_proof(other, nonce, agent.csr)), 403, "not from a manufacturer trusted"
    )
    # bad signature (signed another CSR): 401
    proof = device_proof(device, nonce, Agent(server, tmp_path / "x", "x").csr)
    refused(agent.register(device=proof), 401, "signature over nonce")
    # a nonce the server did not make (tampered expiry): 401
    forged = "9999999999." + nonce.split(".", 1)[1]
    refused(agent.register(device=device_proof(device, forged, agent.csr)), 401, "not issued by this server")


def test_stale_nonce_is_refused() -> None:
    key = b"k" * 32
    fresh, _ = make_nonce(key)
    check_nonce(key, fresh)
    stale, _ = make_nonce(key, now=time.time() - 301)
    with pytest.raises(Exception, match="stale"):
        check_nonce(key, stale)


def test_server_managed_kinds_are_read_only(op: httpx.Client, server: ServerProcess, tmp_path: Path) -> None:
    Agent(server, tmp_path, "ca-trigger")  # the CA exists after any accept in this module
    new_token(op, "ca-auto")
    ca = op.get(f"{API}/certificateauthorities/tenant")
    if ca.status_code == 404:
        a = Agent(server, tmp_path, "store-ca")
        r = a.register(token=new_token(op, "ca2", autoAccept=True))
        assert r.status_code == 201
        ca = op.get(f"{API}/certificateauthorities/tenant")
    assert ca.status_code == 200, ca.text
    body = ca.json()
    assert "BEGIN CERTIFICATE" in body["spec"]["rootCertificate"]
    assert not {"sealedIssuingKey", "sealedRootKey", "state"} & set(body.get("status") or {})
    refused(op.delete(f"{API}/certificateauthorities/tenant"), 403, "managed by the server")
    refused(op.put(f"{API}/certificateauthorities/tenant", json=body), 403, "managed by the server")
    refused(
        op.post(f"{API}/certificateauthorities", json={**body, "metadata": {"name": "x"}}),
        403,
        "managed by the server",
    )
    reg = {"metadata": {"name": "fake"}, "spec": {"method": "token", "csr": "x"}}
    refused(op.post(f"{API}/registrations", json=reg), 403, "managed by the server")


def test_cli_tokens_and_registrations(server: ServerProcess, tmp_path: Path) -> None:
    r = server.cli("tokens", "create", "cli-tok", "--labels", "a=1,b=2", "--expires", "7d", "--max-uses", "3")
    assert r.returncode == 0, r.stderr
    token = next(w for w in r.stdout.split() if w.startswith("fpt_"))
    assert "--ca-hash sha256:" in r.stdout
    agent = Agent(server, tmp_path, "cli-site")
    facts = {
        "hostname": "cli-site.local",
        "hardware": {"model": "FB-2024", "cpuCores": 8, "memoryMiB": 16384, "serial": "SN-42"},
        "coordinates": {"latitude": 35.6, "longitude": 139.7},
    }
    reg = agent.register(token=token, facts=facts).json()["name"]
    r = server.cli("get", "registrations")
    assert r.returncode == 0, r.stderr
    assert "REQUESTED NAME" in r.stdout and "HOSTNAME" in r.stdout and reg in r.stdout
    # The box and where it is, to decide on (SCENARIOS step 4); more with -o wide.
    row = next(line for line in r.stdout.splitlines() if reg in line)
    assert "FB-2024" in row and "latitude=35.6,longitude=139.7" in row and "SN-42" not in row
    wide = server.cli("get", "registrations", "-o", "wide").stdout
    assert "SN-42" in next(line for line in wide.splitlines() if reg in line)
    r = server.cli("registrations", "accept", reg, "--name", "cli-site-2", "--label", "c=3")
    assert r.returncode == 0, r.stderr
    assert "cli-site-2" in r.stdout
    r = server.cli("registrations", "reject", reg, "--reason", "late")
    assert r.returncode == 1 and "already Accepted" in r.stderr
    with operator(server) as op:
        labels = op.get(f"{API}/sites/cli-site-2").json()["metadata"]["labels"]
    assert labels == {"a": "1", "b": "2", "c": "3"}


def test_pending_registration_expires(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", extra_args=["--registration-ttl", "1"]).start()
    try:
        with operator(srv) as op:
            agent = Agent(srv, tmp_path / "a", "late")
            r = agent.register(token=new_token(op, "ttl"))
            name, poll = r.json()["name"], r.json()["pollToken"]
            time.sleep(2.1)
            answer = agent.poll(name, poll).json()
            assert answer["phase"] == "Expired" and "not accepted within 1s" in answer["reason"]
            refused(op.post(f"{API}/registrations/{name}/accept", json={}), 409, "already Expired")
    finally:
        srv.stop()
