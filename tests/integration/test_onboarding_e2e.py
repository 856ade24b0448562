"""Zero-touch onboarding end to end: the real server and real agent processes on loopback.

Token with manual accept, auto-accept, reject, device identity (file key and swtpm key);
then each site heartbeats over mTLS, and the saved identity is checked: another site's
certificate cannot change this site, a revoked one (Site deleted) and an expired one are
refused, the chain verifies with openssl, and a pod certificate issued on the site with
``SiteCA`` chains to the tenant root.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetplane.agent.onboard import SavedIdentity
from fleetplane.client import SiteClient, spki_sha256
from fleetplane.core.errors import ApiError
from fleetplane.identity.pki import SiteCA, make_csr
from tests.agent.conftest import ManufacturerCA, running_swtpm
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
TENANT = "default"
API = "/apis/fleetplane.io/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("onboard")
    srv = ServerProcess(root / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


def make_token(
    server: ServerProcess, name: str, *, auto: bool = False, labels: dict[str, str] | None = None
) -> str:
    with server.client() as c:
        obj = c.create(
            "registrationtokens",
            {
                "apiVersion": "fleetplane.io/v1",
                "kind": "RegistrationToken",
                "metadata": {"name": name},
                "spec": {"autoAccept": auto, "labels": labels or {}},
            },
        )
    token = obj["status"]["token"]
    assert token.startswith(f"fpt_{TENANT}_{name}_")
    return str(token)


def start_agent(
    server: ServerProcess, data_dir: Path, *args: str, ca: list[str] | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEETPLANE_TOKEN"}
    cmd = [
        sys.executable,
        "-m",
        "fleetplane",
        "agent",
        "--server",
        server.url,
        *(ca or ["--ca-file", server.ca_file]),
        "--data-dir",
        str(data_dir),
        "--heartbeat",
        "0.5",
        *args,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"agent did not finish in {timeout}s:\n{out}\n{err}")
    assert "Traceback" not in err, err
    return proc.returncode, out + err


def wait_for_registration(
    server: ServerProcess, phase: str = "Pending", timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.client() as c:
            items = [
                r for r in c.list_all("registrations") if r.get("status", {}).get("phase", "Pending") == phase
            ]
        if items:
            return items
        time.sleep(0.2)
    pytest.fail(f"no {phase} registration appeared:\n{server.log_tail()}")


def site(server: ServerProcess, name: str) -> dict[str, Any]:
    with server.client() as c:
        return c.get("sites", name)


def assert_online(server: ServerProcess, name: str) -> dict[str, Any]:
    obj = site(server, name)
    status = obj["status"]
    assert status["phase"] == "Online", status
    seen = dt.datetime.strptime(status["lastSeen"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - seen).total_seconds()) < 120
    assert status["nodeCount"] == 1
    assert status["softwareVersion"]
    # The agent's host facts reach the operator with every heartbeat.
    assert status["facts"]["hostname"] == socket.gethostname()
    assert status["facts"]["hardware"]["cpuCores"] >= 1
    return obj


def test_token_with_manual_accept_resumes_and_goes_online(server: ServerProcess, tmp_path: Path) -> None:
    token = make_token(server, "manual", labels={"fleet": "retail"})
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    data = tmp_path / "store-1"
    agent = start_agent(
        server,
        data,
        "--token-file",
        str(token_file),
        "--name",
        "store-1",
        "--label",
        "region=jp",
        "--latitude",
        "35.6",
        "--longitude",
        "139.7",
        "--once",
    )
    [reg] = wait_for_registration(server)
    name = reg["metadata"]["name"]
    # The agent is waiting; kill it and start again: it resumes instead of registering twice.
    time.sleep(1.0)
    agent.terminate()
    finish(agent)
    assert (data / "pending.json").exists()
    agent = start_agent(server, data, "--token-file", str(token_file), "--name", "store-1", "--once")
    time.sleep(1.0)
    with server.client() as c:
        assert len(c.list_all("registrations")) == 1
    result = server.cli("registrations", "accept", name)
    if result.returncode != 0:  # the CLI verb may not exist: the API call is the contract
        with server.client() as c:
            c.request("POST", f"{API}/registrations/{name}/accept", body={})
    code, output = finish(agent)
    assert code == 0, output
    assert f"waiting for an operator to accept registration {name}" in output or "resuming" in output
    obj = assert_online(server, "store-1")
    assert obj["metadata"]["labels"].get("region") == "jp"
    assert obj["metadata"]["labels"].get("fleet") == "retail"
    assert obj["spec"]["coordinates"] == {"latitude": 35.6, "longitude": 139.7}
    assert obj["status"]["identity"]["serial"]
    # Saved identity: owner-only key, no pending state left.
    assert (data / "site.key").stat().st_mode & 0o777 == 0o600
    assert not (data / "pending.json").exists()
    ident = SavedIdentity.load(data)
    assert ident is not None and (ident.tenant, ident.site) == (TENANT, "store-1")
    # openssl verifies the saved certificate against the saved tenant bundle.
    root, issuing = x509.load_pem_x509_certificates(ident.ca_bundle_file.read_bytes())[:2]
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "issuing.pem"),
            str(ident.cert_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    # A pod certificate issued on the site chains to the tenant root too.
    site_ca = SiteCA(ident.cert_file.read_bytes(), ident.key_file.read_bytes())
    pod_key = ec.generate_private_key(ec.SECP256R1())
    pod_csr = make_csr(
        pod_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "web",
    )
    pod = site_ca.issue_pod_cert(pod_csr, "web.shop")
    (tmp_path / "pod.pem").write_bytes(pod)
    (tmp_path / "chain.pem").write_bytes(
        issuing.public_bytes(serialization.Encoding.PEM) + ident.cert_file.read_bytes()
    )
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "pod.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_auto_accept_with_env_token(server: ServerProcess, tmp_path: Path) -> None:
    token = make_token(server, "auto", auto=True)
    env = {**os.environ, "FLEETPLANE_TOKEN": token}
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetplane",
                "agent",
                "--server",
                server.url,
                "--ca-file",
                server.ca_file,
                "--data-dir",
                str(tmp_path / f"auto-{i}"),
                "--name",
                f"auto-{i}",
                "--once",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(3)
    ]
    for i, proc in enumerate(agents):
        code, output = finish(proc)
        assert code == 0, output
        assert_online(server, f"auto-{i}")


def test_ca_hash_discovery(server: ServerProcess, tmp_path: Path) -> None:
    token = make_token(server, "by-hash", auto=True)
    ca_der = x509.load_pem_x509_certificate(Path(server.ca_file).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    code, output = finish(
        start_agent(
            server,
            tmp_path / "hash",
            "--token",
            token,
            "--name",
            "by-hash",
            "--once",
            ca=["--ca-hash", spki_sha256(ca_der)],
        )
    )
    assert code == 0, output
    assert_online(server, "by-hash")


def test_rejected_registration_exits_2_with_the_reason(server: ServerProcess, tmp_path: Path) -> None:
    token = make_token(server, "reject-me")
    agent = start_agent(server, tmp_path / "bad", "--token", token, "--name", "intruder")
    reg = next(r for r in wait_for_registration(server) if r["spec"].get("requestedName") == "intruder")
    with server.client() as c:
        c.request(
            "POST",
            f"{API}/registrations/{reg['metadata']['name']}/reject",
            body={"reason": "not one of our boxes"},
        )
    code, output = finish(agent)
    assert code == 2, output
    assert "not one of our boxes" in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 4


def test_bad_token_exits_2_without_traceback(server: ServerProcess, tmp_path: Path) -> None:
    code, output = finish(
        start_agent(server, tmp_path / "x", "--token", f"fpt_{TENANT}_nope_{'0' * 64}", "--once")
    )
    assert code == 2, output
    assert "Unauthorized" in output


def _manufacturer(server: ServerProcess, name: str, ca: ManufacturerCA) -> None:
    with server.client() as c:
        c.create(
            "trustedmanufacturers",
            {
                "apiVersion": "fleetplane.io/v1",
                "kind": "TrustedManufacturer",
                "metadata": {"name": name},
                "spec": {"caBundle": ca.pem.decode(), "autoAccept": True, "labels": {"maker": name}},
            },
        )


def test_device_identity_file_key(server: ServerProcess, tmp_path: Path) -> None:
    maker = ManufacturerCA("Acme")
    _manufacturer(server, "acme", maker)
    cert_file, key_file = maker.device_files(tmp_path / "dev", "SN-42")
    code, output = finish(
        start_agent(
            server,
            tmp_path / "dev-site",
            "--tenant",
            TENANT,
            "--device-cert",
            str(cert_file),
            "--device-key",
            str(key_file),
            "--name",
            "robot-42",
            "--once",
        )
    )
    assert code == 0, output
    obj = assert_online(server, "robot-42")
    assert obj["metadata"]["labels"].get("maker") == "acme"
    # A device certificate from an untrusted maker is refused (403) with exit 2.
    rogue = ManufacturerCA("Rogue")
    cert_file, key_file = rogue.device_files(tmp_path / "rogue", "SN-666")
    code, output = finish(
        start_agent(
            server,
            tmp_path / "rogue-site",
            "--tenant",
            TENANT,
            "--device-cert",
            str(cert_file),
            "--device-key",
            str(key_file),
            "--once",
        )
    )
    assert code == 2 and "Forbidden" in output, output


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[str]:
    with running_swtpm(tmp_path) as tcti:
        yield tcti


def test_device_identity_in_swtpm(server: ServerProcess, tmp_path: Path, swtpm: str) -> None:
    from fleetplane.agent.identity import tpm_public_key_pem

    maker = ManufacturerCA("TpmCo")
    _manufacturer(server, "tpmco", maker)
    cert_file = tmp_path / "tpm.crt"
    cert_file.write_bytes(maker.certify(tpm_public_key_pem(swtpm), "TPM-7"))
    code, output = finish(
        start_agent(
            server,
            tmp_path / "tpm-site",
            "--tenant",
            TENANT,
            "--device-tpm",
            swtpm,
            "--device-cert",
            str(cert_file),
            "--name",
            "tpm-7",
            "--once",
        )
    )
    assert code == 0, output
    assert_online(server, "tpm-7")


def _onboarded(server: ServerProcess, tmp_path: Path, name: str) -> SavedIdentity:
    token = make_token(server, f"t-{name}", auto=True)
    code, output = finish(start_agent(server, tmp_path / name, "--token", token, "--name", name, "--once"))
    assert code == 0, output
    ident = SavedIdentity.load(tmp_path / name)
    assert ident is not None
    return ident


def test_other_sites_certificate_cannot_change_this_site(server: ServerProcess, tmp_path: Path) -> None:
    a = _onboarded(server, tmp_path, "site-a")
    b = _onboarded(server, tmp_path, "site-b")
    before = site(server, "site-a")["status"]
    with b.client() as api:
        api.put_status({"phase": "Online", "softwareVersion": "evil-9.9", "nodeCount": 1})
        assert api.site()["metadata"]["name"] == "site-b"
    assert site(server, "site-a")["status"].get("softwareVersion") == before.get("softwareVersion")
    assert site(server, "site-b")["status"]["softwareVersion"] == "evil-9.9"
    with a.client() as api:
        assert api.site()["metadata"]["name"] == "site-a"
    # A certificate + key pair from another site's key does not authenticate (key mismatch).
    with pytest.raises(ssl.SSLError):
        SiteClient(server.url, a.server_ca_file.read_bytes(), cert_file=a.cert_file, key_file=b.key_file)
    # No client certificate at all: 401.
    with SiteClient(server.url, a.server_ca_file.read_bytes()) as anon, pytest.raises(ApiError) as err:
        anon.put_status({"phase": "Online"})
    assert err.value.code == 401


def test_renewal_then_revocation_is_refused_and_agent_exits_3(server: ServerProcess, tmp_path: Path) -> None:
    ident = _onboarded(server, tmp_path, "site-r")
    old_serial = ident.certificate().serial_number
    from fleetplane.agent.onboard import renew

    new = renew(ident)
    assert new.serial_number != old_serial
    with ident.client() as api:
        assert api.site()["metadata"]["name"] == "site-r"
    with server.client() as c:
        c.delete("sites", "site-r")
    with ident.client() as api, pytest.raises(ApiError) as err:
        api.put_status({"phase": "Online", "nodeCount": 1})
    assert err.value.code == 401
    code, output = finish(start_agent(server, tmp_path / "site-r", "--once"))
    assert code == 3, output
    assert "revoked or decommissioned" in output


def test_expired_certificate_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    """Restart a second server process on the same data under faketime, 40 days later: the
    30-day site certificate is then expired and must be refused."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed: make test installs it (scripts/system-deps.sh)")
    ident = _onboarded(server, tmp_path, "site-x")
    later = ServerProcess(server.data_dir, port=server.port, extra_args=["--no-controllers"])
    env = later.env
    later.env = lambda: {  # type: ignore[method-assign]
        **env(),
        "LD_PRELOAD": _libfaketime(),
        "FAKETIME": "+40d",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    server.stop()
    try:
        later.start()
        with ident.client() as api, pytest.raises(ApiError) as err:
            api.put_status({"phase": "Online", "nodeCount": 1})
        assert err.value.code in (0, 401), err.value
        if err.value.code == 0:  # refused in the TLS handshake (TLS 1.3: an alert after it)
            message = err.value.message.lower()
            assert "certificate" in message or "disconnected" in message, message
        # The server itself is up and answers calls without a client certificate.
        with SiteClient(later.url, ident.server_ca_file.read_bytes()) as anon:
            assert anon.nonce()["nonce"]
    finally:
        later.stop()
        server.start()


def _libfaketime() -> str:
    for cand in Path("/usr/lib").rglob("libfaketime.so.1"):
        return str(cand)
    pytest.fail("libfaketime.so.1 not found: make test installs it (scripts/system-deps.sh)")
