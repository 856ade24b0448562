"""Fixtures for agent tests: a test manufacturer CA, device certificates, a real swtpm."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetplane.identity.pki import key_pem

SWTPM_INSTALL = "make test installs it (scripts/system-deps.sh, then requirements-test.lock)"


class ManufacturerCA:
    """A test device manufacturer: a CA that certifies device identity keys."""

    def __init__(self, name: str = "Acme Devices") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} device CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def certify(self, public_key_pem: bytes, serial: str) -> bytes:
        public = serialization.load_pem_public_key(public_key_pem)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def device_files(self, directory: Path, serial: str) -> tuple[Path, Path]:
        """A device key (0600) and its certificate in ``directory``."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / "device.crt", directory / "device.key"
        cert_file.write_bytes(self.certify(public, serial))
        key_file.write_bytes(key_pem(key))
        key_file.chmod(0o600)
        return cert_file, key_file


@pytest.fixture
def manufacturer() -> ManufacturerCA:
    return ManufacturerCA()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[str]:
    """A real software TPM 2.0 on loopback; yields its TCTI config string."""
    with running_swtpm(tmp_path) as tcti:
        yield tcti


def _start_swtpm(state: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> str | None:
    """None once swtpm accepts connections; its error output when it exited instead."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.stderr.read().decode() if proc.stderr else "exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return None
        except OSError:
            time.sleep(0.05)
    return None


@contextlib.contextmanager
def running_swtpm(tmp_path: Path) -> Iterator[str]:
    """Start ``swtpm`` with its state under ``tmp_path``; fails (never skips) when missing."""
    if shutil.which("swtpm") is None:
        pytest.fail(f"swtpm is not installed: {SWTPM_INSTALL}")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        pytest.fail(f"tpm2-pytss is not installed: {SWTPM_INSTALL}")
    state = tmp_path / "tpm-state"
    state.mkdir()
    # The swtpm TCTI expects the control channel on port + 1, which another process (a
    # parallel test worker) may hold: pick again when swtpm cannot bind.
    for _attempt in range(5):
        port = _free_port()
        proc = _start_swtpm(state, port)
        error = _wait_listening(proc, port)
        if error is None:
            break
        if "Address already in use" not in error:
            pytest.fail(f"swtpm exited: {error}")
    else:
        pytest.fail(f"swtpm could not bind a port: {error}")
    try:
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
