"""The encrypted container of a control-plane backup: a passphrase-keyed, authenticated stream.

Layout, version 1 (integers big-endian)::

    18  magic            b"FLEETPLANE-BACKUP\\n"
    u8  version (1)      u8 kdf (1 = scrypt)
    u32 log2(N)          u32 r        u32 p         scrypt cost
    16  salt             32 check     SHA-256 of the second half of the derived key
    frames               u32 len || AES-256-GCM(chunk), ...

scrypt derives 64 bytes from the passphrase and salt: the first 32 are the AES-256-GCM key,
the second half only proves the passphrase (``check``), so a wrong one is told apart from a
damaged archive before any decryption. Each frame's nonce is its index (the key is unique to
the archive through the random salt) and its associated data binds the header, the index and
whether it is the last frame: frames cannot be reordered, dropped, swapped between archives
or cut off at the end without the reader noticing. The plaintext is a tar stream
(``server/backup.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"FLEETPLANE-BACKUP\n"
VERSION = 1
KDF_SCRYPT = 1
LOG2_N, R, P = 16, 8, 1  # 64 MiB of memory and ~0.3 s per derivation: costly to guess
CHUNK = 1 << 20
_FIXED = struct.Struct(">BBIII16s32s")
_LEN = struct.Struct(">I")
_MAX_FRAME = CHUNK + 16


class BackupError(Exception):
    """The archive cannot be read: wrong passphrase, damaged, tampered with, or not one."""


def _derive(passphrase: bytes, salt: bytes, log2n: int, r: int, p: int) -> tuple[bytes, bytes]:
    if not passphrase:
        raise BackupError("the passphrase is empty")
    derived = Scrypt(salt=salt, length=64, n=1 << log2n, r=r, p=p).derive(passphrase)
    check = hashlib.sha256(b"fleetplane-backup-check\x00" + derived[32:]).digest()
    return derived[:32], check


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(index: int) -> bytes:
    return b"\x00" * 4 + struct.pack(">Q", index)


class EncryptingWriter:
    """A write-only file object: bytes written are encrypted in 1 MiB frames onto ``out``."""

    def __init__(self, out: IO[bytes], passphrase: bytes) -> None:
        salt = os.urandom(16)
        key, check = _derive(passphrase, salt, LOG2_N, R, P)
        header = MAGIC + _FIXED.pack(VERSION, KDF_SCRYPT, LOG2_N, R, P, salt, check)
        out.write(header)
        self._out, self._aead = out, AESGCM(key)
        self._digest = hashlib.sha256(header).digest()
        self._buffer = bytearray()
        self._index = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK:  # keep at least one byte back for the final frame
            self._frame(bytes(self._buffer[:CHUNK]), final=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _frame(self, chunk: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index), chunk, _aad(self._digest, self._index, final))
        self._out.write(_LEN.pack(len(sealed)) + sealed)
        self._index += 1

    def close(self) -> None:
        """Write the final frame (possibly empty); the archive is complete only after this."""
        if not self.closed:
            self._frame(bytes(self._buffer), final=True)
            self._buffer.clear()
            self._out.flush()
            self.closed = True

    def flush(self) -> None:
        self._out.flush()


class DecryptingReader:
    """A read-only file object over an archive: verifies the passphrase on open and every
    frame as it is read; raises :class:`BackupError` with the reason otherwise."""

    def __init__(self, source: IO[bytes], passphrase: bytes) -> None:
        head = source.read(len(MAGIC) + _FIXED.size)
        if len(head) < len(MAGIC) + _FIXED.size or not head.startswith(MAGIC):
            raise BackupError("not a fleetplane backup archive")
        version, kdf, log2n, r, p, salt, check = _FIXED.unpack(head[len(MAGIC) :])
        if version != VERSION or kdf != KDF_SCRYPT:
            raise BackupError(
                f"unsupported backup format version {version} (kdf {kdf}); this is version {VERSION}"
            )
        if not (10 <= log2n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
            raise BackupError("the archive header is damaged (implausible key-derivation cost)")
        key, expected = _derive(passphrase, salt, log2n, r, p)
        if not hmac.compare_digest(check, expected):
            raise BackupError("wrong passphrase for this backup")
        self._source, self._aead = source, AESGCM(key)
        self._digest = hashlib.sha256(head).digest()
        self._index = 0
        self._buffer = b""
        self._pos = 0  # read position in _buffer (slicing a 1 MiB frame per read would be quadratic)
        self._done = False

    def _next_frame(self) -> None:
        raw = self._source.read(_LEN.size)
        if len(raw) < _LEN.size:
            raise BackupError("the archive is truncated (its last part is missing)")
        (length,) = _LEN.unpack(raw)
        if not 16 <= length <= _MAX_FRAME:
            raise BackupError("the archive is damaged or was tampered with (bad frame length)")
        sealed = self._source.read(length)
        if len(sealed) < length:
            raise BackupError("the archive is truncated (its last part is missing)")
        nonce = _nonce(self._index)
        for final in (False, True):
            try:
                self._buffer = self._aead.decrypt(nonce, sealed, _aad(self._digest, self._index, final))
            except InvalidTag:
                continue
            self._index += 1
            if final:
                self._done = True
                if self._source.read(1):
                    raise BackupError("the archive is damaged or was tampered with (data after its end)")
            return
        raise BackupError(f"the archive is damaged or was tampered with (part {self._index} does not verify)")

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            left = len(self._buffer) - self._pos
            if not left:
                if self._done:
                    break
                self._next_frame()
                self._pos = 0
                continue
            take = left if size < 0 else min(size - len(out), left)
            out += self._buffer[self._pos : self._pos + take]
            self._pos += take
        return bytes(out)

    def drain(self) -> None:
        """Read to the end, so a damaged or cut tail is reported even if the tar ended early."""
        while not self._done:
            self._next_frame()
            self._buffer, self._pos = b"", 0
