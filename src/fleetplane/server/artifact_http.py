"""Serving blob bytes over HTTP with single ``Range`` requests (RFC 9110 §14).

Shared by the operator download and the sites' download. The ETag is the blob's SHA-256,
so it never changes for a given URL's bytes and a client may resume with ``Range`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from fleetplane.core.blobstore import BlobStore
from fleetplane.core.errors import ApiError
from fleetplane.server.requests import JsonResponse

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single byte range; ``None`` for the whole blob
    (no header, or one we do not serve, e.g. several ranges: RFC 9110 lets us ignore it).
    Raises 416 when the range lies outside the blob."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # a suffix: the last N bytes
        suffix = int(match[2])
        if suffix == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - suffix), size
    start = int(match[1])
    end = size if not match[2] else min(int(match[2]) + 1, size)
    if start >= size or end <= start:
        raise _unsatisfiable(header, size)
    return start, end


class RangeNotSatisfiable(ApiError):
    size: int = 0


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    err = RangeNotSatisfiable(
        416, "RequestedRangeNotSatisfiable", f"range {header!r} is outside the artifact's {size} bytes"
    )
    err.size = size
    return err


def serve_blob(request: Request, blobs: BlobStore, sha256: str, size: int, *, filename: str = "") -> Response:
    """200 with the whole blob, 206 with the asked range, or 416 with ``Content-Range: */size``."""
    etag = f'"{sha256}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() not in (etag, sha256):
        wanted = None  # the client's partial copy is of other bytes: send them all
    try:
        span = parse_range(wanted, size)
    except RangeNotSatisfiable as exc:
        return JsonResponse(
            exc.to_status(), status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
        )
    start, end = span or (0, size)

    def body() -> Iterator[bytes]:
        yield from blobs.read(sha256, start, end)

    headers["Content-Length"] = str(end - start)
    if span is None:
        return StreamingResponse(
            body(), status_code=200, headers=headers, media_type="application/octet-stream"
        )
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(body(), status_code=206, headers=headers, media_type="application/octet-stream")
