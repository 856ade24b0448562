"""Content-addressed blob storage for the artifact repository, behind one interface.

A blob is named by the SHA-256 of its bytes. Writing is a stream: :meth:`BlobStore.begin`
returns a :class:`BlobWriter` that hashes every chunk while spooling it to a temporary file
(never holding the blob in memory) and, on :meth:`BlobWriter.commit`, checks an expected
digest if one was given and moves the bytes under their digest. The same bytes written twice
are stored once (the second commit finds the blob and drops its spool).

Two backends pass the same contract tests (``tests/core/test_blobstore*.py``):

- :class:`FileBlobStore`: ``<root>/sha256/ab/cdef...`` (the first two hex digits fan out the
  directory), committed by an atomic ``rename`` from ``<root>/tmp``, so a reader never sees a
  partial blob;
- :class:`S3BlobStore`: the same key layout in an S3-compatible bucket, through the ``minio``
  client; the spool is uploaded (multipart when large, ``fput_object``) once its digest is
  known, since an object's key is its digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from minio import Minio

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    """A blob could not be written or read."""


class DigestMismatch(BlobError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the uploaded bytes have SHA-256 {actual}, not the expected {expected}")
        self.expected, self.actual = expected, actual


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    created: bool  # False: the same bytes were stored already (deduplicated)


def check_digest(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise BlobError(f"{sha256!r} is not a SHA-256 digest (64 lower-case hex digits)")
    return sha256


def blob_key(sha256: str) -> str:
    """The relative path / object key of a blob: ``sha256/ab/cdef...``."""
    check_digest(sha256)
    return f"sha256/{sha256[:2]}/{sha256[2:]}"


class BlobWriter:
    """One streamed write: ``write`` chunks, then ``commit`` or ``abort`` (blocking calls;
    the server runs them in a worker thread)."""

    def __init__(self, store: _SpoolingStore, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool_dir, prefix="upload-", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self._store = store
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def commit(self, expected_sha256: str | None = None) -> BlobInfo:
        """Store the bytes under their digest; ``DigestMismatch`` (nothing stored) when they
        are not the ``expected_sha256``."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        try:
            if expected_sha256 is not None and expected_sha256 != digest:
                raise DigestMismatch(expected_sha256, digest)
            created = self._store._adopt(self.path, digest, self.size)
        finally:
            self._done = True
            self.path.unlink(missing_ok=True)
        return BlobInfo(digest, self.size, created)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()
            self.path.unlink(missing_ok=True)


class BlobStore(Protocol):
    """What the artifact repository needs of a backend: put-stream, stat, get-range, delete."""

    def begin(self) -> BlobWriter: ...

    def stat(self, sha256: str) -> int | None:
        """The blob's size, or ``None`` when it is not stored."""
        ...

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start`` up to (excluding) ``end`` in chunks; ``end=None``: to the end."""
        ...

    def delete(self, sha256: str) -> None: ...

    def list(self) -> list[str]:
        """Every stored digest (for backups and garbage collection)."""
        ...


class _SpoolingStore:
    spool_dir: Path

    def begin(self) -> BlobWriter:
        return BlobWriter(self, self.spool_dir)

    def _adopt(self, spool: Path, sha256: str, size: int) -> bool:
        raise NotImplementedError


class FileBlobStore(_SpoolingStore):
    """Blobs as files under ``root`` (default ``<data-dir>/artifacts``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool_dir = root / "tmp"
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def _adopt(self, spool: Path, sha256: str, size: int) -> bool:
        target = self.path(sha256)
        if target.exists() and target.stat().st_size == size:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(spool, 0o600)
        os.replace(spool, target)  # atomic: readers see the whole blob or none
        return True

    def stat(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            f = self.path(sha256).open("rb")
        except FileNotFoundError:
            raise BlobError(f"blob {sha256} is not stored") from None
        with f:
            f.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def list(self) -> list[str]:
        base = self.root / "sha256"
        return sorted(
            p.parent.name + p.name
            for p in base.glob("??/*")
            if p.is_file() and _SHA256.match(p.parent.name + p.name)
        )


class S3BlobStore(_SpoolingStore):
    """Blobs as objects ``<prefix>sha256/ab/cdef...`` of an S3-compatible bucket, through the
    ``minio`` client (AWS S3, MinIO, Ceph RGW, ...).

    ``endpoint`` is a URL, ``http://host:port`` or ``https://host[:port]``; ``None`` is AWS S3
    (in ``region``, or the bucket's own region found by a request). Credentials: the
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optional ``AWS_SESSION_TOKEN``)
    environment variables, read once here. ``client`` replaces all of that with a ready
    ``minio.Minio``.
    Every failure of the object store is raised as :class:`BlobError`. ``minio`` is imported
    here, not with the module: only deployments that store artifacts in S3 load it."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        spool_dir: Path,
        client: Minio | None = None,
    ) -> None:
        import urllib3
        from minio.error import MinioException, S3Error

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.spool_dir = spool_dir
        self._s3_error = S3Error
        # What the client raises: S3 error replies, other HTTP answers, connection failures
        # (urllib3's, after its retries), ValueError for what it refuses before sending.
        self._errors = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)
        self._client = client or s3_client(endpoint, region)

    def _key(self, sha256: str) -> str:
        return self.prefix + blob_key(sha256)

    def _fail(self, what: str, exc: Exception) -> BlobError:
        reason = (
            f"{exc.code}: {exc.message}"
            if isinstance(exc, self._s3_error)
            else f"{type(exc).__name__}: {exc}"
        )
        return BlobError(f"S3 {what} in s3://{self.bucket}/{self.prefix} failed: {reason}")

    def _adopt(self, spool: Path, sha256: str, size: int) -> bool:
        if self.stat(sha256) == size:
            return False
        # One PUT up to the part size, a multipart upload above it: three parts in flight, each
        # held in memory while it is sent. Parts grow past _PART only for blobs over 10,000 of
        # them (S3's limit; 156 GiB at 16 MiB).
        part = max(_PART, -(-size // (10_000 * MIB)) * MIB)
        try:
            self._client.fput_object(self.bucket, self._key(sha256), str(spool), part_size=part)
        except self._errors as exc:
            raise self._fail(f"upload of {sha256}", exc) from exc
        return True

    def stat(self, sha256: str) -> int | None:
        try:
            obj = self._client.stat_object(self.bucket, self._key(sha256))
        except self._s3_error as exc:
            if exc.code in ("NoSuchKey", "NotFound"):
                return None
            raise self._fail(f"HEAD of {sha256}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"HEAD of {sha256}", exc) from exc
        return int(obj.size or 0)

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        try:
            resp = self._client.get_object(
                self.bucket, self._key(sha256), offset=start, length=0 if end is None else end - start
            )
        except self._s3_error as exc:
            if exc.code == "InvalidRange":  # starts at or past the end, as a file read would
                return
            if exc.code in ("NoSuchKey", "NotFound"):
                raise BlobError(f"blob {sha256} is not stored") from exc
            raise self._fail(f"GET of {sha256}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"GET of {sha256}", exc) from exc
        try:
            yield from resp.stream(CHUNK)
        except self._errors as exc:
            raise self._fail(f"GET of {sha256}", exc) from exc
        finally:
            resp.close()
            resp.release_conn()

    def delete(self, sha256: str) -> None:
        try:
            self._client.remove_object(self.bucket, self._key(sha256))
        except self._errors as exc:
            raise self._fail(f"DELETE of {sha256}", exc) from exc

    def list(self) -> list[str]:
        out: list[str] = []
        try:
            for obj in self._client.list_objects(self.bucket, prefix=self.prefix + "sha256/", recursive=True):
                parts = str(obj.object_name).rsplit("/", 2)
                digest = parts[-2] + parts[-1] if len(parts) == 3 else ""
                if _SHA256.match(digest):
                    out.append(digest)
        except self._errors as exc:
            raise self._fail("listing", exc) from exc
        return sorted(out)


MIB = 1 << 20
_PART = 16 * MIB  # multipart part size (S3: at least 5 MiB, at most 10,000 parts)


def s3_client(endpoint: str | None, region: str | None) -> Minio:
    """A ``minio.Minio`` for ``endpoint`` (a URL; ``None``: AWS S3) with the credentials of the
    environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optionally
    ``AWS_SESSION_TOKEN`` (:class:`BlobError` when they are missing)."""
    from minio import Minio

    if endpoint is None:
        host, secure = "s3.amazonaws.com", True
    else:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/") or url.query:
            raise ValueError(
                "artifact store endpoint must be http://HOST[:PORT] or https://HOST[:PORT]"
                f" (got {endpoint!r})"
            )
        host, secure = url.netloc, url.scheme == "https"
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        raise BlobError(
            "the S3 artifact store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            " (and AWS_SESSION_TOKEN for temporary ones) in the server's environment"
        )
    return Minio(
        host,
        access_key=access_key,
        secret_key=secret_key,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        secure=secure,
        region=region,
    )


def open_blobstore(url: str, data_dir: Path) -> BlobStore:
    """``""`` or ``file:PATH``: files (default ``<data-dir>/artifacts``);
    ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]``: an S3-compatible bucket."""
    if not url:
        return FileBlobStore(data_dir / "artifacts")
    if url.startswith("file:"):
        return FileBlobStore(Path(url.removeprefix("file:")))
    if url.startswith("s3://"):
        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"artifact store {url!r}: name the bucket, s3://BUCKET[/PREFIX]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return S3BlobStore(
            parts.netloc,
            prefix=parts.path,
            endpoint=query.get("endpoint"),
            region=query.get("region"),
            spool_dir=data_dir / "artifacts" / "tmp",
        )
    raise ValueError(f"artifact store must be file:PATH or s3://BUCKET[/PREFIX] (got {url!r})")
