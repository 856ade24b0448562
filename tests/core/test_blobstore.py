"""One contract for both blob stores: the filesystem and an S3-compatible bucket.

The S3 backend runs against moto's standalone server (``moto_server``), a mock of S3 named
as such: no real object store can exist on this machine. It speaks the S3 HTTP API, so the
backend's ``minio`` calls (HEAD, ranged GET, multipart PUT, DELETE, list) are exercised over
the wire. moto lives in its own virtualenv, ``.venv-s3mock`` (``requirements-s3mock.lock``,
built by ``make test``): its boto3/botocore pin a python-dateutil that the project's
kubernetes client cannot share, and the tests need only its HTTP port.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio

from fleetplane.core import blobstore as blobstore_module
from fleetplane.core.blobstore import (
    BlobError,
    BlobStore,
    DigestMismatch,
    FileBlobStore,
    S3BlobStore,
    blob_key,
    open_blobstore,
)
from tests.support.artifacts import pattern
from tests.support.server import free_port

MIB = 1 << 20
MOTO_SERVER = Path(__file__).resolve().parents[2] / ".venv-s3mock" / "bin" / "moto_server"


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Mock S3: moto's standalone server on loopback, from its own virtualenv."""
    if not MOTO_SERVER.exists():
        pytest.fail(
            f"{MOTO_SERVER} is missing: the S3 tests need moto's server in its own virtualenv;"
            " run `make test` (it builds .venv-s3mock from requirements-s3mock.lock)",
            pytrace=False,
        )
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def s3_client(url: str) -> Minio:
    return Minio(url.removeprefix("http://"), access_key="test", secret_key="test", secure=False)


def new_bucket(url: str, tmp_path: Path) -> str:
    bucket = f"artifacts-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3_client(url).make_bucket(bucket)
    return bucket


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    url = request.getfixturevalue("moto_server")
    bucket = new_bucket(url, tmp_path)
    return S3BlobStore(bucket, prefix="fleet/", spool_dir=tmp_path / "spool", client=s3_client(url))


def put(store: BlobStore, data: bytes, expected: str | None = None) -> tuple[str, bool]:
    writer = store.begin()
    for i in range(0, len(data), 100_000):
        writer.write(data[i : i + 100_000])
    info = writer.commit(expected)
    assert info.size == len(data)
    return info.sha256, info.created


def test_put_stat_read_ranges_delete(store: BlobStore) -> None:
    data = pattern(3 * MIB + 11, seed=1)
    digest, created = put(store, data)
    assert created and digest == hashlib.sha256(data).hexdigest()
    assert store.stat(digest) == len(data)
    assert b"".join(store.read(digest)) == data
    assert b"".join(store.read(digest, 10, 20)) == data[10:20]
    assert b"".join(store.read(digest, len(data) - 5)) == data[-5:]
    assert store.list() == [digest]
    store.delete(digest)
    assert store.stat(digest) is None and store.list() == []


def test_the_same_bytes_are_stored_once(store: BlobStore) -> None:
    data = pattern(MIB, seed=2)
    first, created = put(store, data)
    again, created_again = put(store, data)
    assert first == again and created and not created_again
    assert store.list() == [first]


def test_a_digest_mismatch_stores_nothing(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(DigestMismatch) as err:
        put(store, b"some bytes", expected="f" * 64)
    assert err.value.actual == hashlib.sha256(b"some bytes").hexdigest()
    assert store.list() == []
    spool = getattr(store, "spool_dir", None)
    assert spool is None or not any(Path(spool).iterdir())


def test_an_aborted_write_leaves_nothing(store: BlobStore) -> None:
    writer = store.begin()
    writer.write(b"half of it")
    writer.abort()
    assert store.list() == [] and not writer.path.exists()


def test_file_layout_is_content_addressed(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    digest, _ = put(store, b"hello")
    assert blob_key(digest) == f"sha256/{digest[:2]}/{digest[2:]}"
    assert (tmp_path / "blobs" / "sha256" / digest[:2] / digest[2:]).read_bytes() == b"hello"


def test_a_big_blob_goes_up_in_parts(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobstore_module, "_PART", 5 * MIB)  # S3's smallest part: 3 parts here
    data = pattern(12 * MIB + 7, seed=3)
    digest, created = put(store, data)
    assert created and store.stat(digest) == len(data)
    assert b"".join(store.read(digest, 5 * MIB - 3, 10 * MIB + 3)) == data[5 * MIB - 3 : 10 * MIB + 3]
    chunks = list(store.read(digest))
    assert max(len(c) for c in chunks) <= blobstore_module.CHUNK and b"".join(chunks) == data


def test_reading_a_missing_blob_is_a_blob_error(store: BlobStore) -> None:
    with pytest.raises(BlobError, match="not stored"):
        b"".join(store.read("0" * 64))
    store.delete("0" * 64)  # deleting what is not there is no error


def test_store_urls(tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_blobstore("", tmp_path), FileBlobStore)
    assert isinstance(open_blobstore(f"file:{tmp_path / 'x'}", tmp_path), FileBlobStore)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    bucket = new_bucket(moto_server, tmp_path)
    s3 = open_blobstore(f"s3://{bucket}/some/prefix?endpoint={moto_server}&region=us-east-1", tmp_path)
    assert isinstance(s3, S3BlobStore) and s3.bucket == bucket and s3.prefix == "some/prefix/"
    digest, _ = put(s3, b"through the URL")
    assert s3.stat(digest) == len(b"through the URL")
    keys = [o.object_name for o in s3_client(moto_server).list_objects(bucket, recursive=True)]
    assert keys == [f"some/prefix/{blob_key(digest)}"]
    for bad in ("ftp://x", "s3://", "s3://b?endpoint=localhost:9000", "s3://b?endpoint=http://h/path"):
        with pytest.raises(ValueError, match="artifact store"):
            open_blobstore(bad, tmp_path)


def test_s3_without_credentials_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(BlobError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_blobstore("s3://bucket?endpoint=http://127.0.0.1:9", tmp_path)


def test_s3_failures_are_blob_errors(tmp_path: Path, moto_server: str) -> None:
    gone = S3BlobStore("no-such-bucket", spool_dir=tmp_path / "spool", client=s3_client(moto_server))
    with pytest.raises(BlobError, match=r"s3://no-such-bucket/.*NoSuchBucket"):
        gone.list()
    with pytest.raises(BlobError, match="NoSuchBucket"):
        put(gone, b"nowhere to go")
