"""Acting as an agent in tests: registration calls and mTLS clients made with identity.pki."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetplane.identity.pki import make_csr, make_key
from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
SITE_API = "/site-api/v1"


def operator(server: ServerProcess, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        verify=server.tls,
        headers={"Authorization": f"Bearer {key or server.admin_key}"},
        timeout=30,
    )


def anonymous(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=server.tls, timeout=30)


def new_token(op: httpx.Client, name: str, **spec: Any) -> str:
    r = op.post(f"{API}/registrationtokens", json={"metadata": {"name": name}, "spec": spec})
    assert r.status_code == 201, r.text
    token: str = r.json()["status"]["token"]
    return token


class Agent:
    """One would-be site: its key, CSR and (once accepted) certificate, in ``directory``."""

    def __init__(self, server: ServerProcess, directory: Path, name: str) -> None:
        self.server, self.dir, self.name = server, directory, name
        directory.mkdir(parents=True, exist_ok=True)
        self.key = make_key()
        self.csr = make_csr(self.key, name).decode()
        self.certificate = ""
        self.ca_bundle = ""

    def register(self, **body: Any) -> httpx.Response:
        body = {
            "csr": self.csr,
            "requestedName": self.name,
            "facts": {
                "hostname": f"{self.name}.local",
                "coordinates": {"latitude": 35.6, "longitude": 139.7},
            },
            **body,
        }
        with anonymous(self.server) as http:
            return http.post(f"{SITE_API}/registrations", json=body)

    def poll(self, name: str, poll_token: str, wait: float = 0) -> httpx.Response:
        with anonymous(self.server) as http:
            r = http.get(
                f"{SITE_API}/registrations/{name}",
                params={"waitSeconds": wait},
                headers={"Authorization": f"Bearer {poll_token}"},
            )
        if r.status_code == 200 and r.json().get("certificate"):
            self.certificate, self.ca_bundle = r.json()["certificate"], r.json()["caBundle"]
        return r

    def files(self, certificate: str | None = None, key: bytes | None = None) -> tuple[str, str]:
        cert_file, key_file = self.dir / "site.crt", self.dir / "site.key"
        cert_file.write_text(certificate or self.certificate)
        key_file.write_bytes(key or self.key)
        return str(cert_file), str(key_file)

    def mtls(
        self, certificate: str | None = None, key: bytes | None = None, *, keepalive: float = 5.0
    ) -> httpx.Client:
        """An mTLS client as the site; ``keepalive``: how long it keeps an idle connection
        (httpx's default 5 s; the agent's is 120 s)."""
        context = ssl.create_default_context(cafile=self.server.ca_file)
        context.load_cert_chain(*self.files(certificate, key))
        limits = httpx.Limits(keepalive_expiry=keepalive)
        return httpx.Client(base_url=self.server.url, verify=context, timeout=30, limits=limits)


def onboard(server: ServerProcess, op: httpx.Client, directory: Path, name: str, **token: Any) -> Agent:
    """Token + auto-accept: an agent with its certificate."""
    agent = Agent(server, directory / name, name)
    r = agent.register(token=new_token(op, f"tok-{name}", autoAccept=True, **token))
    assert r.status_code == 201, r.text
    assert agent.poll(r.json()["name"], r.json()["pollToken"]).json()["phase"] == "Accepted"
    return agent


# -- a test manufacturer (TPM vendor) CA and device certificates ---------------------------------


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_device(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], serial: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def device_proof(
    device: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], nonce: str, csr: str
) -> dict[str, Any]:
    key, cert = device
    message = nonce.encode() + hashlib.sha256(csr.encode()).digest()
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return {"certificates": [pem(cert)], "nonce": nonce, "signature": base64.b64encode(signature).decode()}
