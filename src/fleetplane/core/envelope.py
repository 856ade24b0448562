"""Envelope encryption for secrets at rest (CA keys, token material, secret values).

Each value is encrypted with a fresh 256-bit data key under AES-256-GCM, with the
caller's ``context`` (e.g. ``b"tenant/kind/ns/name"``) as associated data, and the
data key is wrapped by a key-encryption key (KEK): a local AES key (``FileKek``,
``EnvKek``) or one held inside a PKCS#11 token (``fleetplane.core.kek_pkcs11``).

Blob layout, version 1 (all lengths big-endian)::

    u8  version (1)     u8  len(kek_id)    kek_id (UTF-8)
    u16 len(wrapped)    wrapped data key
    4   context check   first 4 bytes of SHA-256(domain || context); diagnostics only
    12  nonce           rest: AES-256-GCM ciphertext || 16-byte tag

Rotating the KEK (``Envelope.rewrap``) replaces only the kek id and wrapped key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
ARMOUR_PREFIX = "fpenc:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_DATA_AAD = b"fleetplane/envelope/v1\x00"
WRAP_AAD = b"fleetplane/kek-wrap/v1"
_CONTEXT_DOMAIN = b"fleetplane/envelope-context\x00"
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class EnvelopeError(Exception):
    """A value could not be sealed or opened, or a KEK could not be loaded."""


class KekConfigError(EnvelopeError, ValueError):
    """A KEK spec or its key material is unusable."""


@runtime_checkable
class KeyEncryptionKey(Protocol):
    """Wraps and unwraps data keys; the KEK itself is never exposed."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, blob: bytes) -> bytes: ...


def split_wrapped(blob: bytes, key_id: str) -> tuple[bytes, bytes]:
    """Split a wrapped data key in the AES-GCM KEKs' format, nonce || ciphertext || tag."""
    if len(blob) < NONCE_BYTES + _TAG_BYTES + 1:
        raise EnvelopeError(f"wrapped data key is truncated ({len(blob)} bytes) for KEK {key_id!r}")
    return blob[:NONCE_BYTES], blob[NONCE_BYTES:]


class _LocalAesKek:
    """A 256-bit AES key held in process memory; wraps with AES-256-GCM."""

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise KekConfigError(f"{source} holds {len(key)} bytes; a KEK must be exactly {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        digest = hashlib.sha256(b"fleetplane/kek-id\x00" + key).hexdigest()
        self._key_id = f"aes256:{digest[:16]}"
        self.source = source

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, WRAP_AAD)

    def unwrap(self, blob: bytes) -> bytes:
        nonce, sealed = split_wrapped(blob, self._key_id)
        try:
            return self._aead.decrypt(nonce, sealed, WRAP_AAD)
        except InvalidTag:
            raise EnvelopeError(
                f"wrapped data key failed authentication under KEK {self._key_id!r} (tampered)"
            ) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id!r}, source={self.source!r})"


class FileKek(_LocalAesKek):
    """A 32-byte AES key in a file: created owner-only (0600) if missing, refused if others can read it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__(self._load_or_create(), f"key file {self.path}")

    def _load_or_create(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self._create()
        except OSError as exc:
            raise KekConfigError(f"cannot read KEK file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KekConfigError(f"KEK file {self.path} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise KekConfigError(
                    f"KEK file {self.path} has mode {mode:04o}: it must not be readable or writable by "
                    f"group or others; fix it with 'chmod 600 {self.path}'"
                )
            return fh.read(KEY_BYTES + 1)

    def _create(self) -> bytes:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.urandom(KEY_BYTES)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # created concurrently: use that one
            return self._load_or_create()
        except OSError as exc:
            raise KekConfigError(f"cannot create KEK file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # the umask may only have narrowed it; make it exact
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        return key


class EnvKek(_LocalAesKek):
    """A base64-encoded 32-byte AES key in an environment variable."""

    def __init__(self, var: str) -> None:
        if not _ENV_VAR.match(var):
            raise KekConfigError(f"{var!r} is not a valid environment variable name")
        raw = os.environ.get(var)
        if not raw:
            raise KekConfigError(f"environment variable {var} is not set (expected a base64 32-byte KEK)")
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except binascii.Error:
            raise KekConfigError(f"environment variable {var} is not valid base64") from None
        super().__init__(key, f"environment variable {var}")


def _context_check(context: bytes) -> bytes:
    return hashlib.sha256(_CONTEXT_DOMAIN + context).digest()[:4]


class _Parsed:
    __slots__ = ("ciphertext", "context_check", "kek_id", "nonce", "wrapped")

    def __init__(self, blob: bytes) -> None:
        if not blob:
            raise EnvelopeError("sealed value is empty")
        if blob[0] != VERSION:
            raise EnvelopeError(
                f"unsupported envelope version {blob[0]} (this build reads version {VERSION})"
            )
        try:
            id_len = blob[1]
            self.kek_id = blob[2 : 2 + id_len].decode()
            pos = 2 + id_len
            (wrapped_len,) = struct.unpack_from(">H", blob, pos)
            pos += 2
            self.wrapped = blob[pos : pos + wrapped_len]
            pos += wrapped_len
            self.context_check = blob[pos : pos + 4]
            self.nonce = blob[pos + 4 : pos + 4 + NONCE_BYTES]
            self.ciphertext = blob[pos + 4 + NONCE_BYTES :]
        except (IndexError, struct.error, UnicodeDecodeError):
            raise EnvelopeError("sealed value is malformed (truncated or corrupted header)") from None
        if len(self.wrapped) != wrapped_len or len(self.ciphertext) < _TAG_BYTES or not self.kek_id:
            raise EnvelopeError("sealed value is malformed (truncated or corrupted header)")


def _encode(kek_id: str, wrapped: bytes, context_check: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    raw_id = kek_id.encode()
    if not 0 < len(raw_id) < 256 or len(wrapped) >= 1 << 16:
        raise EnvelopeError(f"KEK {kek_id!r} produced an id or wrapped key too long for the format")
    header = bytes((VERSION, len(raw_id))) + raw_id + struct.pack(">H", len(wrapped))
    return header + wrapped + context_check + nonce + ciphertext


def _armour(blob: bytes) -> str:
    return ARMOUR_PREFIX + base64.b64encode(blob).decode("ascii")


def _dearmour(value: str) -> bytes:
    if not value.startswith(ARMOUR_PREFIX):
        raise EnvelopeError(f"value is not sealed (expected the {ARMOUR_PREFIX!r} prefix)")
    try:
        return base64.b64decode(value[len(ARMOUR_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("sealed value has a corrupted base64 body") from None


def is_sealed(value: str) -> bool:
    """True when ``value`` is an armoured envelope this build can parse (does not decrypt)."""
    if not isinstance(value, str):
        return False
    try:
        _Parsed(_dearmour(value))
    except EnvelopeError:
        return False
    return True


class Envelope:
    """Seals values under ``kek``; ``previous`` KEKs can still open (and rewrap) older values."""

    def __init__(self, kek: KeyEncryptionKey, *, previous: Sequence[KeyEncryptionKey] = ()) -> None:
        self.kek = kek
        self._keks = {k.key_id: k for k in (*previous, kek)}

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _DATA_AAD + context)
        return _encode(self.kek.key_id, self.kek.wrap(data_key), _context_check(context), nonce, ciphertext)

    def open(self, blob: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        parsed = _Parsed(blob)
        self._kek_for(parsed.kek_id)  # name the missing KEK before judging the context
        if parsed.context_check != _context_check(context):
            raise EnvelopeError(
                f"value was sealed for a different context than {context.decode(errors='replace')!r} "
                "(moved from another object?)"
            )
        data_key = self._unwrap(parsed)
        try:
            return AESGCM(data_key).decrypt(parsed.nonce, parsed.ciphertext, _DATA_AAD + context)
        except (InvalidTag, ValueError):
            raise EnvelopeError(
                "sealed value failed authentication: ciphertext or nonce was tampered"
            ) from None

    def seal_text(self, plaintext: bytes | str, *, context: bytes) -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return _armour(self.seal(data, context=context))

    def open_text(self, value: str, *, context: bytes) -> bytes:
        return self.open(_dearmour(value), context=context)

    def kek_id_of(self, blob: bytes) -> str:
        return _Parsed(blob).kek_id

    def needs_rewrap(self, blob: bytes) -> bool:
        """True when ``blob`` is wrapped by a KEK other than the current one."""
        return self.kek_id_of(blob) != self.kek.key_id

    def rewrap(self, blob: bytes, new_kek: KeyEncryptionKey) -> bytes:
        """Re-wrap the data key under ``new_kek``; nonce and ciphertext are kept byte for byte."""
        parsed = _Parsed(blob)
        wrapped = new_kek.wrap(self._unwrap(parsed))
        return _encode(new_kek.key_id, wrapped, parsed.context_check, parsed.nonce, parsed.ciphertext)

    def rewrap_text(self, value: str, new_kek: KeyEncryptionKey) -> str:
        return _armour(self.rewrap(_dearmour(value), new_kek))

    def _unwrap(self, parsed: _Parsed) -> bytes:
        data_key = self._kek_for(parsed.kek_id).unwrap(parsed.wrapped)
        if len(data_key) != KEY_BYTES:
            raise EnvelopeError(f"KEK {parsed.kek_id!r} unwrapped a data key of the wrong length")
        return data_key

    def _kek_for(self, kek_id: str) -> KeyEncryptionKey:
        kek = self._keks.get(kek_id)
        if kek is None:
            known = ", ".join(repr(k) for k in self._keks)
            raise EnvelopeError(
                f"value was sealed under KEK {kek_id!r}, which is not configured (have {known})"
            )
        return kek


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes) or not context:
        raise EnvelopeError(
            "context must be non-empty bytes naming the owning object, e.g. b'tenant/kind/ns/name'"
        )


def kek_from_settings(spec: str) -> KeyEncryptionKey:
    """Build a KEK from ``file:/path``, ``env:VAR`` or ``pkcs11:module=...;token=...;key=...;pin-env=VAR``."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in ("file", "env", "pkcs11"):
        raise KekConfigError(f"KEK spec must start with 'file:', 'env:' or 'pkcs11:' (got scheme {scheme!r})")
    if scheme == "file":
        if not rest:
            raise KekConfigError("KEK spec 'file:' needs a path, e.g. file:/etc/fleetplane/kek")
        return FileKek(rest)
    if scheme == "env":
        return EnvKek(rest)
    from fleetplane.core.kek_pkcs11 import Pkcs11Kek

    return Pkcs11Kek.from_spec(rest)
