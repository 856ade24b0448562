"""The site's artifact cache: download what the manifest needs and the site lacks, by digest.

Layout under ``root`` (e.g. ``<agent-data-dir>/artifacts``)::

    sha256/ab/cdef...     verified blobs, named by their SHA-256 (content-addressed)
    partial/<sha256>      a download in progress, kept across failures and restarts

:meth:`ArtifactCache.ensure` returns the verified file. It downloads only when the blob is
missing, resumes a partial download with ``Range: bytes=N-`` after a cut connection (or an
agent restart), and hashes the complete file before it is moved into place: a file under
``sha256/`` has always been verified. On a digest mismatch the partial file is dropped and
the blob fetched once more from the start; a second mismatch raises :class:`ArtifactError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from pathlib import Path

from fleetplane.client.artifacts import fetch_artifact
from fleetplane.client.site import AsyncSiteClient
from fleetplane.core.errors import ApiError

log = logging.getLogger("fleetplane.agent.artifacts")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
RESUME_ATTEMPTS = 5  # cut connections tolerated per fetch, each resumed where it stopped
RETRY_DELAY = 0.5


class ArtifactError(Exception):
    """An artifact could not be obtained intact."""


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    def __init__(self, root: Path, client: AsyncSiteClient) -> None:
        self.root = root
        self.client = client
        self._locks: dict[str, asyncio.Lock] = {}
        # Statistics for status reports and tests: what was fetched and how.
        self.downloads = 0
        self.resumes = 0
        self.refetches = 0

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ArtifactError(f"{sha256!r} is not a SHA-256 digest")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def partial(self, sha256: str) -> Path:
        return self.root / "partial" / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def ensure(self, sha256: str, size: int, *, name: str = "") -> Path:
        """The verified file of blob ``sha256`` (``size`` bytes), downloaded if missing."""
        target = self.path(sha256)
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:  # two items needing one blob download it once
            if target.is_file() and target.stat().st_size == size:
                return target
            label = name or sha256[:12]
            for attempt in (1, 2):
                await self._download(sha256, size, label)
                partial = self.partial(sha256)
                actual = await asyncio.to_thread(_hash_file, partial)
                if actual == sha256:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(partial, target)
                    return target
                partial.unlink(missing_ok=True)
                log.warning(
                    "artifact %s: downloaded bytes hash to %s, not %s (attempt %d)",
                    label,
                    actual,
                    sha256,
                    attempt,
                )
                if attempt == 1:
                    self.refetches += 1
            raise ArtifactError(
                f"artifact {label}: the downloaded bytes do not match SHA-256 {sha256} after 2 attempts"
            )

    async def _download(self, sha256: str, size: int, label: str) -> None:
        partial = self.partial(sha256)
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists() and partial.stat().st_size > size:
            partial.unlink()  # longer than the blob: not a prefix of it
        self.downloads += 1
        cuts = 0
        with partial.open("ab") as sink:
            while True:
                held = sink.tell()
                if held == size:
                    return
                try:
                    held = await fetch_artifact(self.client, sha256, sink, offset=held)
                except ApiError as exc:
                    if exc.code == 416:  # our prefix is not servable: start over
                        sink.seek(0)
                        sink.truncate()
                        continue
                    if exc.code != 0 or cuts >= RESUME_ATTEMPTS:
                        raise ArtifactError(f"artifact {label}: download failed: {exc.message}") from exc
                    cuts += 1
                    self.resumes += 1
                    log.info("artifact %s: connection cut at %d bytes, resuming", label, sink.tell())
                    await asyncio.sleep(RETRY_DELAY * cuts)
                    continue
                if held != size:
                    # A complete answer of another length: the hash check decides, do not loop.
                    return
