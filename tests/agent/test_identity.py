"""Key storage: owner-only files, CSRs from the stored key, device keys (file and TPM)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fleetplane.agent.identity import (
    FileDeviceKey,
    FileSiteKeyStore,
    KeyStoreError,
    TpmDeviceKey,
    device_proof,
    tpm_public_key_pem,
    verify_signature,
)
from fleetplane.identity.authority import TenantAuthority
from tests.agent.conftest import ManufacturerCA


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_site_key_is_created_owner_only(tmp_path: Path) -> None:
    store = FileSiteKeyStore(tmp_path / "agent")
    assert not store.has_key()
    store.ensure_key()
    assert store.has_key()
    assert mode(tmp_path / "agent") == 0o700
    assert mode(store.path) == 0o600
    first = store.key_pem()
    store.ensure_key()  # idempotent: the key is never replaced behind our back
    assert store.key_pem() == first


def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "agent"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    FileSiteKeyStore(d).ensure_key()
    assert mode(d) == 0o700


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660, 0o644])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, loose: int) -> None:
    store = FileSiteKeyStore(tmp_path / "agent")
    store.ensure_key()
    store.path.chmod(loose)
    with pytest.raises(KeyStoreError, match="readable by its owner only"):
        store.key_pem()
    with pytest.raises(KeyStoreError):
        store.csr("store-1")
    with pytest.raises(KeyStoreError):
        store.key_path()


def test_csr_from_stored_key_verifies_and_is_signed_by_the_authority(tmp_path: Path) -> None:
    store = FileSiteKeyStore(tmp_path / "agent")
    store.ensure_key()
    csr = x509.load_pem_x509_csr(store.csr("store-1"))
    assert csr.is_signature_valid
    ca = TenantAuthority.create("acme")
    cert = x509.load_pem_x509_certificate(ca.sign_site_csr(store.csr("store-1"), "store-1"))
    key = x509.load_pem_x509_csr(store.csr("store-1")).public_key()
    assert cert.public_key() == key


def test_staged_key_replaces_the_active_one_only_on_commit(tmp_path: Path) -> None:
    store = FileSiteKeyStore(tmp_path / "agent")
    store.ensure_key()
    old = store.key_pem()
    new = store.stage_new_key()
    assert store.key_pem() == old and new != old
    assert mode(store.staged) == 0o600
    store.commit_new_key()
    assert store.key_pem() == new and not store.staged.exists()


def test_file_device_key_signs_and_the_proof_verifies(tmp_path: Path, manufacturer: ManufacturerCA) -> None:
    cert_file, key_file = manufacturer.device_files(tmp_path / "dev", "SN-0001")
    device = FileDeviceKey(cert_file, key_file)
    [leaf] = device.certificates()
    x509.load_pem_x509_certificate(leaf).verify_directly_issued_by(manufacturer.cert)
    signature = device.sign(b"hello")
    verify_signature(leaf, b"hello", signature)
    with pytest.raises(InvalidSignature):
        verify_signature(leaf, b"hellO", signature)
    # The registration proof covers nonce + SHA-256(csr).
    proof = device_proof(device, "n0nce", b"CSR")
    import base64

    data = b"n0nce" + hashlib.sha256(b"CSR").digest()
    verify_signature(proof["certificates"][0].encode(), data, base64.b64decode(proof["signature"]))


def test_file_device_key_refuses_loose_key_and_foreign_cert(
    tmp_path: Path, manufacturer: ManufacturerCA
) -> None:
    cert_file, key_file = manufacturer.device_files(tmp_path / "a", "SN-A")
    other_cert, _ = manufacturer.device_files(tmp_path / "b", "SN-B")
    key_file.chmod(0o644)
    with pytest.raises(KeyStoreError, match="owner only"):
        FileDeviceKey(cert_file, key_file)
    key_file.chmod(0o600)
    with pytest.raises(KeyStoreError, match="does not belong"):
        FileDeviceKey(other_cert, key_file)


def test_tpm_device_key_signs_inside_a_real_swtpm(
    tmp_path: Path, swtpm: str, manufacturer: ManufacturerCA
) -> None:
    public = tpm_public_key_pem(swtpm)
    assert public == tpm_public_key_pem(swtpm)  # the primary key is re-derived, stable
    cert_file = tmp_path / "tpm-device.crt"
    cert_file.write_bytes(manufacturer.certify(public, "TPM-0001"))
    device = TpmDeviceKey(swtpm, cert_file)
    [leaf] = device.certificates()
    x509.load_pem_x509_certificate(leaf).verify_directly_issued_by(manufacturer.cert)
    data = b"nonce" + hashlib.sha256(b"csr").digest()
    verify_signature(leaf, data, device.sign(data))
    with pytest.raises(InvalidSignature):
        verify_signature(leaf, data + b"x", device.sign(data))


def test_tpm_device_key_without_certificate_says_so(swtpm: str) -> None:
    with pytest.raises(KeyStoreError, match="no device certificate"):
        TpmDeviceKey(swtpm).certificates()
