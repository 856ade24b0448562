"""Backup and restore of the control plane (docs/backup.md).

A backup is one encrypted archive (``server/backup_archive.py``) holding a tar stream:

- ``backup.json``: format, time, store revision, object count, what else is inside;
- ``store.jsonl``: every object of every tenant, read in one transaction at one revision,
  one ``{"tenant", "rv", "object"}`` per line, exactly as stored (secret values stay sealed);
- ``tls/``: the serving CA and certificate, so agents that pinned the CA hash trust the
  restored server; the tenants' identity CAs are objects in the store (keys sealed);
- ``kek.key``: the key-encryption key that unseals them, when it is a file (the default).
  It is not re-sealed: the archive as a whole is encrypted under the backup passphrase, and
  keeping the KEK means a restored server opens its secrets unchanged. A KEK held in an
  HSM (``pkcs11:``) or the environment (``env:``) is not exportable; the archive names its
  id and the restored server must be given the same KEK;
- ``admin.key``: the system admin key file, so the operator's CLI config keeps working;
- ``artifacts/sha256/..``: the artifact blobs, only with ``withArtifacts`` (their metadata,
  the Artifact objects, is always in the store).

Restore is offline (``fleetplane admin restore``): it decrypts and verifies the whole archive
into a staging directory beside the target, imports the objects verbatim (same uid,
resourceVersion, generation: an agent long-polling ``after=<generation>`` carries on) and
sets the store's revision to the backup's, then renames the staging directory into place.
It never writes into an existing, non-empty data directory or store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import text
from starlette.background import BackgroundTask

import fleetplane
from fleetplane.core.blobstore import FileBlobStore, blob_key
from fleetplane.core.errors import Cause, bad_request, forbidden
from fleetplane.core.store import Store, open_store
from fleetplane.core.store.sql import SqlStore, objects_table
from fleetplane.kinds.artifact import ARTIFACT
from fleetplane.server.artifacts import blobstore
from fleetplane.server.backup_archive import BackupError, DecryptingReader, EncryptingWriter
from fleetplane.server.context import ServerSettings
from fleetplane.server.native import context, who
from fleetplane.server.requests import read_object
from fleetplane.server.sealing import envelope

FORMAT = 1
TLS_FILES = ("serving-ca.crt", "serving-ca.key", "server.crt", "server.key")
IMPORT_BATCH = 1000
_ALLOWED_TOP = {"backup.json", "store.jsonl", "kek.key", "admin.key"}

__all__ = ["BackupError", "RestoreReport", "restore", "snapshot", "write_backup"]


def snapshot(store: Store) -> tuple[int, list[tuple[str, int, str]]]:
    """Every stored object as ``(tenant, rv, json)`` and the revision they are all at, read in
    one transaction (a snapshot on both SQLite's WAL and PostgreSQL's REPEATABLE READ)."""
    if not isinstance(store, SqlStore):
        raise BackupError(f"backups need an SQL store, not {type(store).__name__}")
    with store.engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(store.begin_read)
        try:
            revision = int(conn.execute(text("SELECT value FROM meta WHERE key = 'revision'")).scalar_one())
            rows = conn.execute(
                text("SELECT tenant, rv, data FROM objects ORDER BY tenant, kind, namespace, name")
            ).all()
        finally:
            conn.exec_driver_sql("COMMIT")
    return revision, [(str(r.tenant), int(r.rv), str(r.data)) for r in rows]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(dt.datetime.now(dt.UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


def _jsonl(rows: list[tuple[str, int, str]]) -> bytes:
    """The rows as JSON lines, each object embedded as stored (no re-encoding)."""
    return b"".join(
        b'{"tenant":%s,"rv":%d,"object":%s}\n' % (orjson.dumps(tenant), rv, data.encode())
        for tenant, rv, data in rows
    )


def _kek_file(settings: ServerSettings) -> Path | None:
    spec = settings.resolved_kek()
    return Path(spec.removeprefix("file:")) if spec.startswith("file:") else None


def write_backup(
    out: IO[bytes],
    passphrase: bytes,
    *,
    store: Store,
    settings: ServerSettings,
    blobs: Any = None,
    with_artifacts: bool = False,
    kek_id: str = "",
) -> dict[str, Any]:
    """Write an encrypted backup to ``out``; what it holds (``backup.json``)."""
    revision, rows = snapshot(store)
    digests: dict[str, int] = {}
    for _, _, data in rows:
        if f'"kind":"{ARTIFACT.kind}"' in data:
            status = (orjson.loads(data).get("status") or {}) if with_artifacts else {}
            if status.get("phase") == "Ready" and status.get("sha256"):
                digests[str(status["sha256"])] = int(status.get("size") or 0)
    tls_dir = settings.data_dir / "tls"
    kek_file = _kek_file(settings)
    kek_included = bool(kek_file and kek_file.is_file())
    admin_key = settings.data_dir / "admin.key"
    tls_files = [n for n in TLS_FILES if (tls_dir / n).is_file()]
    artifacts = sorted(digests)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "createdAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "serverVersion": fleetplane.__version__,
        "revision": revision,
        "objects": len(rows),
        "tls": tls_files,
        "kek": {
            "id": kek_id,
            "included": kek_included,
            "spec": settings.resolved_kek(),
        },
        "adminKey": admin_key.is_file(),
        "artifacts": artifacts,
    }
    writer = EncryptingWriter(out, passphrase)
    with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
        _add_bytes(tar, "backup.json", json.dumps(manifest, indent=2).encode(), 0o644)
        # The rows are in memory already (one consistent read); their JSON lines join them once.
        _add_bytes(tar, "store.jsonl", _jsonl(rows))
        for name in tls_files:
            _add_bytes(tar, f"tls/{name}", (tls_dir / name).read_bytes())
        if kek_included and kek_file is not None:
            _add_bytes(tar, "kek.key", kek_file.read_bytes())
        if manifest["adminKey"]:
            _add_bytes(tar, "admin.key", admin_key.read_bytes())
        for digest in artifacts:
            size = blobs.stat(digest) if blobs is not None else None
            if size is None:
                raise BackupError(f"artifact blob {digest} is missing from the artifact store")
            info = tarfile.TarInfo(f"artifacts/{blob_key(digest)}")
            info.size, info.mode = size, 0o600
            tar.addfile(info, _Chunks(blobs.read(digest)))
    writer.close()
    return manifest


class _Chunks(io.RawIOBase):
    """An iterator of byte chunks as a readable stream (a blob streamed into the tar)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


# -- restore ----------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    data_dir: Path
    revision: int
    objects: int
    artifacts: int
    kek_included: bool
    kek_spec: str
    created_at: str


def _safe_name(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or not name:
        raise BackupError(f"the archive holds an unsafe path {name!r}")
    if name in _ALLOWED_TOP or (parts[0] == "tls" and len(parts) == 2 and parts[1] in TLS_FILES):
        return name
    if parts[0] == "artifacts" and len(parts) == 4 and parts[1] == "sha256":
        blob_key(parts[2] + parts[3])
        return name
    raise BackupError(f"the archive holds an unexpected entry {name!r}")


def _write_private(path: Path, stream: IO[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(stream, f, 1 << 20)


def _import(store: Store, lines: Path, revision: int) -> int:
    """Insert the objects verbatim (one transaction) and move the revision counter to the
    backup's; the event log starts there (watches older than the backup get 410 Gone)."""
    if not isinstance(store, SqlStore):
        raise BackupError(f"restore needs an SQL store, not {type(store).__name__}")
    count = 0
    with store.engine.begin() as conn:
        if conn.execute(text("SELECT COUNT(*) FROM objects")).scalar_one():
            raise BackupError("the target store is not empty: restore into a new, empty store")
        batch: list[dict[str, Any]] = []
        with lines.open("rb") as f:
            for raw in f:
                row = orjson.loads(raw)
                obj, meta = row["object"], row["object"]["metadata"]
                batch.append(
                    {
                        "tenant": row["tenant"],
                        "kind": obj["kind"],
                        "namespace": meta.get("namespace") or "",
                        "name": meta["name"],
                        "rv": int(row["rv"]),
                        "data": orjson.dumps(obj).decode(),
                    }
                )
                if len(batch) >= IMPORT_BATCH:
                    conn.execute(objects_table.insert(), batch)
                    count += len(batch)
                    batch = []
        if batch:
            conn.execute(objects_table.insert(), batch)
            count += len(batch)
        for key in ("revision", "compacted"):
            conn.execute(text("UPDATE meta SET value = :v WHERE key = :k"), {"v": revision, "k": key})
    return count


def restore(source: IO[bytes], passphrase: bytes, data_dir: Path, *, store_url: str = "") -> RestoreReport:
    """Restore an archive into the new ``data_dir`` (and ``store_url``, default the SQLite file
    inside it); nothing is written to the target unless the whole archive verifies."""
    data_dir = data_dir.resolve()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} exists and is not empty: restore into a new data directory")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f".{data_dir.name}.restoring-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        reader = DecryptingReader(source, passphrase)
        manifest: dict[str, Any] | None = None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = _safe_name(member.name)
                    if not member.isfile():
                        raise BackupError(f"the archive entry {name!r} is not a file")
                    stream = tar.extractfile(member)
                    assert stream is not None
                    if name == "backup.json":
                        manifest = json.loads(stream.read())
                        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                            raise BackupError(f"unsupported backup format {manifest!r:.80}")
                        continue
                    _write_private(staging / name, stream)
        except tarfile.TarError as exc:
            raise BackupError(f"the archive is damaged: {exc}") from exc
        reader.drain()
        if manifest is None or not (staging / "store.jsonl").is_file():
            raise BackupError("the archive is incomplete: no backup.json or store.jsonl")
        url = store_url or f"sqlite:///{staging / 'fleetplane.db'}"
        store = open_store(url)
        try:
            count = _import(store, staging / "store.jsonl", int(manifest["revision"]))
        finally:
            store.close()
        (staging / "store.jsonl").unlink()
        FileBlobStore(staging / "artifacts")  # the layout the server expects, even when empty
        if data_dir.exists():
            data_dir.rmdir()
        os.replace(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    kek = manifest.get("kek") or {}
    return RestoreReport(
        data_dir=data_dir,
        revision=int(manifest["revision"]),
        objects=count,
        artifacts=len(manifest.get("artifacts") or []),
        kek_included=bool(kek.get("included")),
        kek_spec=str(kek.get("spec") or ""),
        created_at=str(manifest.get("createdAt") or ""),
    )


# -- the API the CLI calls --------------------------------------------------------------------

router = APIRouter()
MIN_PASSPHRASE = 8


@router.post("/admin/v1/backup")
async def create_backup(request: Request) -> Response:
    """An encrypted backup of this control plane, streamed back (system admin keys only).
    Body: ``{"passphrase": "...", "withArtifacts": false}``."""
    ctx = context(request)
    principal = await who(request)
    if not (principal.system and principal.role == "admin") or principal.restricted:
        raise forbidden(f"{principal.describe()} cannot back up the control plane: system admin keys only")
    body = await read_object(request)
    passphrase = body.get("passphrase")
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE:
        why = f"must be a string of at least {MIN_PASSPHRASE} characters"
        raise bad_request(f"passphrase {why}", [Cause("passphrase", why)])
    with_artifacts = body.get("withArtifacts", False)
    if not isinstance(with_artifacts, bool):
        raise bad_request(
            "withArtifacts must be true or false", [Cause("withArtifacts", "must be a boolean")]
        )
    spool = ctx.settings.data_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"backup-{secrets.token_hex(8)}.fpbak"

    def build() -> dict[str, Any]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            return write_backup(
                out,
                passphrase.encode(),
                store=ctx.store,
                settings=ctx.settings,
                blobs=blobstore(ctx),
                with_artifacts=with_artifacts,
                kek_id=envelope(ctx).kek.key_id,
            )

    try:
        manifest = await asyncio.to_thread(build)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    name = f"fleetplane-backup-r{manifest['revision']}.fpbak"
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=name,
        headers={"X-Fleetplane-Backup-Revision": str(manifest["revision"])},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
