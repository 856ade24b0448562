"""The backup container on its own: round trip, and every way a bad archive is refused."""

from __future__ import annotations

import io

import pytest

from fleetplane.server.backup_archive import (
    _FIXED,
    CHUNK,
    MAGIC,
    BackupError,
    DecryptingReader,
    EncryptingWriter,
)

PASS = b"correct horse battery staple"
HEADER = len(MAGIC) + _FIXED.size


def sealed(data: bytes, passphrase: bytes = PASS) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, passphrase)
    for i in range(0, len(data), 70_000):
        writer.write(data[i : i + 70_000])
    writer.close()
    return out.getvalue()


def opened(archive: bytes, passphrase: bytes = PASS) -> bytes:
    reader = DecryptingReader(io.BytesIO(archive), passphrase)
    data = reader.read()
    reader.drain()
    return data


DATA = bytes(range(256)) * (3 * CHUNK // 256) + b"tail"


def test_round_trip_in_frames_and_small_reads() -> None:
    archive = sealed(DATA)
    assert DATA[:4096] not in archive  # encrypted, not merely framed
    assert opened(archive) == DATA
    reader = DecryptingReader(io.BytesIO(archive), PASS)
    pieces = []
    while piece := reader.read(10_240):
        pieces.append(piece)
    assert b"".join(pieces) == DATA
    assert opened(sealed(b"")) == b""


def test_a_wrong_passphrase_is_told_apart_from_damage() -> None:
    with pytest.raises(BackupError, match="wrong passphrase"):
        opened(sealed(b"secret"), b"not the passphrase")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: a[: len(a) - 100], "truncated"),  # the end cut off
        (lambda a: a[:5000] + bytes([a[5000] ^ 1]) + a[5001:], "tampered"),  # a flipped ciphertext bit
        (lambda a: a + b"\x00" * 20, "tampered"),  # data after the final frame
        (lambda a: b"NOT-A-BACKUP" + a[12:], "not a fleetplane backup"),
    ],
)
def test_damaged_archives_are_refused(damage: object, message: str) -> None:
    archive = sealed(DATA)
    with pytest.raises(BackupError, match=message):
        opened(damage(archive))  # type: ignore[operator]


def test_a_dropped_frame_is_detected() -> None:
    archive = sealed(DATA)
    header = HEADER
    first_len = int.from_bytes(archive[header : header + 4], "big")
    without_first = archive[:header] + archive[header + 4 + first_len :]
    with pytest.raises(BackupError, match="tampered"):
        opened(without_first)
