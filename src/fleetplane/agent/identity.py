"""Key storage of the agent: the site key (``SiteKeyStore``) and the device identity (``DeviceKey``).

The site's private key is generated on the site and never leaves it: only a CSR is sent.
:class:`FileSiteKeyStore` keeps it in the agent's data directory with owner-only
permissions (directory 0700, key file 0600) and refuses a key file that anybody but its
owner can read.

The device identity proves "this box was made by a manufacturer the tenant trusts"
(``TrustedManufacturer``). Two implementations of :class:`DeviceKey`:

- :class:`FileDeviceKey`: a PEM certificate (chain) and a PEM private key on disk.
- :class:`TpmDeviceKey`: the private key is a primary ECC P-256 signing key inside a
  TPM 2.0 (real, or ``swtpm`` for tests), reached through ``tpm2-pytss`` (PyPI; it needs
  Debian's ``libtss2-dev`` to build and ``swtpm swtpm-tools`` for a software TPM). The
  primary key is re-derived deterministically from the TPM's owner seed and the fixed
  template on every start, so nothing but the certificate is stored. Its certificate
  (the manufacturer's certification of :func:`tpm_public_key_pem`) lives in a file.
  ``tpm2-pytss`` is imported only when a TPM key is used.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fleetplane.identity.pki import IdentityError, load_private_key, make_csr, make_key


class KeyStoreError(Exception):
    """A key or certificate the agent cannot (or must not) use; the message says why."""


# -- files with owner-only permissions ------------------------------------------------------------


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) or check an existing one belongs to us; tighten it to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise KeyStoreError(f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.chmod(0o600)
    tmp.replace(path)


def write_public(path: Path, data: bytes) -> None:
    """Write atomically with mode 0644 (certificates, bundles, state without secrets)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def read_private(path: Path, what: str = "private key") -> bytes:
    """Read a secret file, refusing one that group or others may read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyStoreError(f"{what} {path} does not exist") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyStoreError(
            f"{what} {path} has mode {mode:04o}: it must be readable by its owner only (chmod 600 {path})"
        )
    if st.st_uid != os.getuid():
        raise KeyStoreError(f"{what} {path} belongs to uid {st.st_uid}, not to this user")
    return path.read_bytes()


# -- the site key ---------------------------------------------------------------------------------


class SiteKeyStore(Protocol):
    """Where the site's private key lives. The key never leaves the store except as a file
    path handed to the local TLS stack (``key_path``) and as signatures."""

    def has_key(self) -> bool: ...

    def ensure_key(self) -> None:
        """Generate the key if there is none."""

    def csr(self, site: str) -> bytes:
        """A PEM CSR for ``site`` signed by the stored key."""

    def key_path(self) -> Path:
        """A file the TLS stack can load the key from (checked owner-only)."""

    def key_pem(self) -> bytes:
        """The key PEM, for the site's own CA (``SiteCA``) running in this process."""

    def stage_new_key(self) -> bytes:
        """Generate a replacement key (renewal) and return a CSR-able PEM; not yet active."""

    def commit_new_key(self) -> None:
        """Make the staged key the active one."""


class FileSiteKeyStore:
    """The site key as ``<dir>/site.key`` (0600) in a 0700 directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "site.key"
        self.staged = directory / "site.key.new"

    def has_key(self) -> bool:
        return self.path.exists()

    def ensure_key(self) -> None:
        ensure_private_dir(self.directory)
        if not self.path.exists():
            write_private(self.path, make_key())
        self.key_pem()  # permission + format check

    def key_pem(self) -> bytes:
        data = read_private(self.path, "site key")
        try:
            load_private_key(data)
        except IdentityError as exc:
            raise KeyStoreError(f"site key {self.path}: {exc.message}") from None
        return data

    def key_path(self) -> Path:
        self.key_pem()
        return self.path

    def csr(self, site: str) -> bytes:
        return make_csr(self.key_pem(), site)

    def stage_new_key(self) -> bytes:
        ensure_private_dir(self.directory)
        data = make_key()
        write_private(self.staged, data)
        return data

    def commit_new_key(self) -> None:
        read_private(self.staged, "staged site key")
        self.staged.replace(self.path)


# -- the device identity --------------------------------------------------------------------------


class DeviceKey(Protocol):
    """A device identity: a key that signs, and the certificate chain that names it."""

    def sign(self, data: bytes) -> bytes:
        """An ECDSA (DER) or RSA PKCS#1 v1.5 signature with SHA-256 over ``data``."""

    def certificates(self) -> list[bytes]:
        """PEM certificates: the leaf first, then intermediates."""


def split_pem_certificates(data: bytes) -> list[bytes]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise KeyStoreError(f"cannot read certificates: {exc}") from None
    return [c.public_bytes(serialization.Encoding.PEM) for c in certs]


def device_proof(device: DeviceKey, nonce: str, csr_pem: bytes) -> dict[str, Any]:
    """The ``device`` member of a registration: the signature covers the nonce and the CSR."""
    import base64

    data = nonce.encode() + hashlib.sha256(csr_pem).digest()
    return {
        "certificates": [c.decode() for c in device.certificates()],
        "nonce": nonce,
        "signature": base64.b64encode(device.sign(data)).decode(),
    }


def verify_signature(cert_pem_data: bytes, data: bytes, signature: bytes) -> None:
    """Check a :meth:`DeviceKey.sign` signature against the leaf certificate (raises)."""
    key = x509.load_pem_x509_certificate(cert_pem_data).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise KeyStoreError(f"unsupported device key type {type(key).__name__}")


class FileDeviceKey:
    """Device certificate chain and private key from PEM files (key owner-only)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        try:
            self._certs = split_pem_certificates(cert_file.read_bytes())
        except OSError as exc:
            raise KeyStoreError(f"cannot read device certificate {cert_file}: {exc.strerror}") from None
        if not self._certs:
            raise KeyStoreError(f"device certificate file {cert_file} holds no certificate")
        try:
            self._key = load_private_key(read_private(key_file, "device key"))
        except IdentityError as exc:
            raise KeyStoreError(f"device key {key_file}: {exc.message}") from None
        leaf = x509.load_pem_x509_certificate(self._certs[0]).public_key()
        mine = self._key.public_key()
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if not isinstance(leaf, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or leaf.public_bytes(
            der, spki
        ) != mine.public_bytes(der, spki):
            raise KeyStoreError(f"device key {key_file} does not belong to certificate {cert_file}")

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def certificates(self) -> list[bytes]:
        return list(self._certs)


def _tss() -> tuple[Any, Any, Any]:
    """``tpm2_pytss`` and its types/constants modules, or a clear error naming the install step."""
    try:
        root = importlib.import_module("tpm2_pytss")
        types = importlib.import_module("tpm2_pytss.types")
        consts = importlib.import_module("tpm2_pytss.constants")
    except ImportError as exc:
        raise KeyStoreError(
            f"TPM support needs tpm2-pytss ({exc}): apt-get install libtss2-dev && pip install tpm2-pytss"
        ) from None
    return root, types, consts


class TpmDeviceKey:
    """A primary ECC P-256 signing key in a TPM 2.0 owner hierarchy; the private part never
    leaves the TPM. ``tcti`` is a TCTI config such as ``swtpm:host=127.0.0.1,port=2321`` or
    ``device:/dev/tpmrm0``."""

    def __init__(self, tcti: str, cert_file: Path | None = None) -> None:
        self.tcti = tcti
        self.cert_file = cert_file
        self._certs: list[bytes] = []
        if cert_file is not None:
            try:
                self._certs = split_pem_certificates(cert_file.read_bytes())
            except OSError as exc:
                raise KeyStoreError(f"cannot read device certificate {cert_file}: {exc.strerror}") from None

    def _open(self) -> tuple[Any, Any, Any, Any]:
        root, t, c = _tss()
        name, _, conf = self.tcti.partition(":")
        try:
            esys = root.ESAPI(root.TCTILdr(name, conf or None))
        except Exception as exc:
            raise KeyStoreError(f"cannot open TPM {self.tcti!r}: {exc}") from None
        attrs = (
            c.TPMA_OBJECT.SIGN_ENCRYPT
            | c.TPMA_OBJECT.FIXEDTPM
            | c.TPMA_OBJECT.FIXEDPARENT
            | c.TPMA_OBJECT.SENSITIVEDATAORIGIN
            | c.TPMA_OBJECT.USERWITHAUTH
        )
        template = t.TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attrs)
        handle, public, *_ = esys.create_primary(t.TPM2B_SENSITIVE_CREATE(), template, c.ESYS_TR.OWNER)
        return esys, handle, public, (t, c)

    def public_key_pem(self) -> bytes:
        esys, handle, public, _ = self._open()
        try:
            return bytes(public.to_pem())
        finally:
            esys.flush_context(handle)
            esys.close()

    def sign(self, data: bytes) -> bytes:
        esys, handle, _, (t, c) = self._open()
        try:
            scheme = t.TPMT_SIG_SCHEME(
                scheme=c.TPM2_ALG.ECDSA,
                details=t.TPMU_SIG_SCHEME(ecdsa=t.TPMS_SCHEME_HASH(hashAlg=c.TPM2_ALG.SHA256)),
            )
            ticket = t.TPMT_TK_HASHCHECK(tag=c.TPM2_ST.HASHCHECK, hierarchy=c.TPM2_RH.NULL)
            digest = t.TPM2B_DIGEST(hashlib.sha256(data).digest())
            sig = esys.sign(handle, digest, scheme, ticket)
        except KeyStoreError:
            raise
        except Exception as exc:
            raise KeyStoreError(f"TPM signing failed: {exc}") from None
        finally:
            esys.flush_context(handle)
            esys.close()
        r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
        return encode_dss_signature(r, s)

    def certificates(self) -> list[bytes]:
        if not self._certs:
            raise KeyStoreError("no device certificate for the TPM key (pass its certificate file)")
        return list(self._certs)


def tpm_public_key_pem(tcti: str) -> bytes:
    """The public key of the TPM's device identity key, for a manufacturer to certify."""
    return TpmDeviceKey(tcti).public_key_pem()
