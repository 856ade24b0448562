"""Artifact repository calls: the operator's streamed upload/download (API key) and a site's
resumable download by digest (mutual TLS).

Bodies are streamed both ways in chunks, so a multi-GB file never sits in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import httpx

from fleetplane.client.http import Client, decode_response, resource_path
from fleetplane.client.site import SITE_API, AsyncSiteClient, SiteResponse
from fleetplane.core.errors import ApiError

CHUNK = 1 << 20
Progress = Callable[[int], None]


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        resp.read()
        decode_response(resp)


def _file_chunks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if progress is not None:
                progress(len(chunk))
            yield chunk


def upload_artifact(
    client: Client,
    namespace: str,
    name: str,
    source: Path | Iterator[bytes],
    *,
    type: str,
    version: str,
    architecture: str = "",
    signature: str = "",
    description: str = "",
    sha256: str = "",
    size: int | None = None,
    progress: Progress | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Stream ``source`` (a file or an iterator of chunks) as the artifact's content; the
    Artifact the server created (or found with the very same bytes)."""
    params = {
        k: v
        for k, v in {
            "type": type,
            "version": version,
            "architecture": architecture,
            "signature": signature,
            "description": description,
            "sha256": sha256,
        }.items()
        if v
    }
    headers = {"Content-Type": "application/octet-stream"}
    if isinstance(source, Path):
        size = source.stat().st_size
        content: Iterator[bytes] = _file_chunks(source, progress)
    else:
        content = source
    if size is not None:
        headers["Content-Length"] = str(size)
    path = resource_path("artifacts", namespace, name, "content")
    try:
        resp = client.http.put(path, params=params, content=content, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise ApiError(0, "ConnectionError", f"uploading to {client.conn.server} failed: {exc}") from exc
    result: dict[str, Any] = decode_response(resp)
    return result


def download_artifact(
    client: Client,
    namespace: str,
    name: str,
    sink: IO[bytes],
    *,
    offset: int = 0,
    progress: Progress | None = None,
    timeout: float = 3600.0,
) -> str:
    """Write the artifact's bytes from ``offset`` to ``sink``; the SHA-256 the server names
    (its ``ETag``), for the caller to verify against."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    path = resource_path("artifacts", namespace, name, "content")
    try:
        with client.http.stream("GET", path, headers=headers, timeout=timeout) as resp:
            _raise_for(resp)
            if offset and resp.status_code == 200:  # the server sent everything: start over
                sink.seek(0)
                sink.truncate()
            for chunk in resp.iter_bytes(CHUNK):
                sink.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            return str(resp.headers.get("etag", "")).strip('"')
    except httpx.TransportError as exc:
        raise ApiError(0, "ConnectionError", f"downloading from {client.conn.server} failed: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- the site side (mutual TLS) ----------------------------------------------------------------


async def fetch_artifact(
    client: AsyncSiteClient, sha256: str, sink: IO[bytes], *, offset: int = 0, timeout: float = 3600.0
) -> int:
    """Append the bytes of blob ``sha256`` from ``offset`` to ``sink`` (``Range: bytes=N-``);
    the number of bytes ``sink`` holds afterwards. If the server answers with the whole blob
    (200) the sink is rewound first. A connection cut mid-body raises
    ``ApiError(0, "ConnectionError")`` after writing what arrived, so the caller can resume.
    Uses the site client's connection: do not call it while a long-poll holds it."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    held = offset
    try:
        async with client.stream(
            "GET", f"{SITE_API}/artifacts/{sha256}", headers=headers, timeout=timeout
        ) as resp:
            if resp.status >= 400:
                decode_response(SiteResponse(resp.status, resp.headers, await resp.read()))
            if resp.status == 200:
                sink.seek(0)
                sink.truncate()
                held = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                sink.write(chunk)
                held += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        sink.flush()
        raise ApiError(0, "ConnectionError", f"downloading {sha256[:12]} was cut off: {exc!r}") from exc
    sink.flush()
    return held
