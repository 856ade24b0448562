"""The artifact repository's routes: streamed upload, download with ``Range``, delete.

Operators (API key):

- ``PUT  /apis/fleetplane.io/v1/namespaces/{ns}/artifacts/{name}/content?type=&version=&...``
  streams the request body into the blob store (hashed while written, never held in memory)
  and creates the ``Artifact``; ``sha256=`` makes the server refuse other bytes (400, nothing
  kept). Re-uploading the same bytes to a Ready artifact is a no-op (200); other bytes, 409.
- ``GET  .../artifacts/{name}/content`` downloads (``Range`` supported).
- ``DELETE .../artifacts/{name}`` deletes the object and, when no Artifact of any tenant
  references its digest any more, the blob.

Sites (mutual TLS): ``GET /site-api/v1/artifacts/{sha256}`` with ``Range``. Least privilege:
a site gets only a digest its current SiteManifest mentions (the manifest's JSON is searched
for the digest string, so any section may assign artifacts), 404 otherwise.

The object moves ``Uploading`` → ``Ready`` (or ``Failed`` with a message when the upload is cut
off); the server writes ``status`` from what it computed, never from what the client says.
Committing a blob and deleting an unreferenced one hold one lock, so a delete cannot drop a
blob that an upload is just making Ready. The lock is per process: replicas sharing a store
serialize through it only within one replica (see docs/artifacts.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from fleetplane.core.blobstore import BlobStore, BlobWriter, DigestMismatch, open_blobstore
from fleetplane.core.errors import ApiError, Cause, bad_request, conflict, not_found
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.kinds import SITE_MANIFEST
from fleetplane.kinds.artifact import ARTIFACT, SHA256
from fleetplane.server.artifact_http import serve_blob
from fleetplane.server.auth import Principal, authorize
from fleetplane.server.context import ServerContext
from fleetplane.server.native import BASE, context, who
from fleetplane.server.requests import JsonResponse
from fleetplane.server.sealing import present
from fleetplane.server.site_api import PREFIX as SITE_PREFIX
from fleetplane.server.site_api import authenticated_site

log = logging.getLogger(__name__)
router = APIRouter()
UPLOAD_PATH = r"^/apis/fleetplane\.io/v1/namespaces/[^/]+/artifacts/[^/]+/content$"
SPEC_PARAMS = ("type", "version", "architecture", "signature", "description")
WRITE_BATCH = 1 << 20  # bytes gathered before one trip to the writer thread
# The upload route creates Artifacts; the generic API may not (api_write_verbs), so the
# route checks the caller's rights as if it could.
_UPLOADABLE = dataclasses.replace(ARTIFACT, api_write_verbs=None)


def blobstore(ctx: ServerContext) -> BlobStore:
    blobs = ctx.extras.get("blobstore")
    if blobs is None:
        blobs = open_blobstore(ctx.settings.artifact_store, ctx.settings.data_dir)
        ctx.extras["blobstore"] = blobs
    return blobs  # type: ignore[return-value]


_LOCK = threading.Lock()


def _lock(ctx: ServerContext) -> threading.Lock:
    lock = ctx.extras.setdefault("artifact-lock", _LOCK)
    assert lock is _LOCK
    return _LOCK


def referenced(ctx: ServerContext, sha256: str) -> bool:
    """Whether an Artifact of any tenant still points at the blob."""
    _, items = ctx.store.scan((ARTIFACT.kind,))
    return any((obj.get("status") or {}).get("sha256") == sha256 for _, obj in items)


def _spec_from(request: Request, namespace: str, name: str) -> Obj:
    params = request.query_params
    spec = {k: params[k] for k in SPEC_PARAMS if params.get(k) not in (None, "")}
    return ARTIFACT.normalize({"metadata": {"name": name, "namespace": namespace}, "spec": spec})


def _expected(request: Request) -> str | None:
    raw = request.query_params.get("sha256")
    if not raw:
        return None
    value = raw.removeprefix("sha256:").lower()
    if not SHA256.match(value):
        raise bad_request(
            "sha256 must be 64 hex digits", [Cause("sha256", f"{raw!r} is not a SHA-256 digest")]
        )
    return value


def _begin(ctx: ServerContext, tenant: str, wanted: Obj) -> tuple[Obj, str]:
    """The Artifact in phase Uploading, and what the upload does on commit: ``create`` (a new
    object), ``retry`` (an Uploading/Failed one taken over) or ``same`` (a Ready one: the bytes
    must be the ones it has)."""
    meta = wanted["metadata"]
    current = ctx.store.get_or_none(tenant, ARTIFACT.kind, meta["namespace"], meta["name"])
    uploading = {"phase": "Uploading"}
    if current is None:
        return ctx.store.create(tenant, {**wanted, "status": uploading}), "create"
    if (current.get("status") or {}).get("phase") == "Ready":
        return current, "same"
    obj = {**current, "spec": wanted["spec"], "status": uploading}
    return ctx.store.update(tenant, obj), "retry"


def _finish(
    ctx: ServerContext, tenant: str, obj: Obj, mode: str, writer: BlobWriter, expected: str | None
) -> Obj:
    blobs = blobstore(ctx)
    with _lock(ctx):
        blob = writer.commit(expected)
        status = obj.get("status") or {}
        if mode == "same":
            if status.get("sha256") == blob.sha256:
                return obj
            if blob.created and not referenced(ctx, blob.sha256):
                blobs.delete(blob.sha256)
            name = obj["metadata"]["name"]
            raise conflict(
                ARTIFACT.kind,
                name,
                f"artifact {name} is Ready with SHA-256 {status.get('sha256')}; these bytes are "
                f"{blob.sha256}: delete it first or upload under another name",
                ARTIFACT.plural,
            )
        ready = {"phase": "Ready", "sha256": blob.sha256, "size": blob.size, "uploadedAt": now_rfc3339()}
        try:
            return ctx.store.update(tenant, {**obj, "status": ready})
        except ApiError:
            if blob.created and not referenced(ctx, blob.sha256):
                blobs.delete(blob.sha256)
            raise


def _failed(ctx: ServerContext, tenant: str, obj: Obj, mode: str, message: str, *, drop: bool) -> None:
    """Undo an upload that did not complete: a new object is deleted when ``drop`` (nothing is
    kept of refused bytes), otherwise it stays as Failed with the reason."""
    if mode == "same":
        return
    meta = obj["metadata"]
    try:
        if drop and mode == "create":
            ctx.store.delete(tenant, ARTIFACT.kind, meta["namespace"], meta["name"])
        else:
            ctx.store.update(tenant, {**obj, "status": {"phase": "Failed", "message": message}})
    except ApiError as exc:  # someone else changed it meanwhile: theirs wins
        log.info("artifact %s/%s not marked failed: %s", meta["namespace"], meta["name"], exc)


async def _receive(request: Request, writer: BlobWriter, limit: int) -> int:
    """Stream the body into ``writer`` in batches; the size written."""
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "RequestEntityTooLarge", f"the artifact is larger than {limit} bytes")
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= WRITE_BATCH:
            await asyncio.to_thread(writer.write, b"".join(pending))
            pending, pending_size = [], 0
    if pending:
        await asyncio.to_thread(writer.write, b"".join(pending))
    return size


@router.put(BASE + "/namespaces/{namespace}/artifacts/{name}/content")
async def upload(request: Request, namespace: str, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "create", _UPLOADABLE, namespace)
    wanted = _spec_from(request, namespace, name)  # 422 with field causes before any byte is read
    expected = _expected(request)
    tenant = principal.tenant
    obj, mode = await asyncio.to_thread(_begin, ctx, tenant, wanted)
    writer = await asyncio.to_thread(blobstore(ctx).begin)
    try:
        size = await _receive(request, writer, ctx.settings.max_artifact_bytes)
        done = await asyncio.to_thread(_finish, ctx, tenant, obj, mode, writer, expected)
    except DigestMismatch as exc:
        await asyncio.to_thread(_failed, ctx, tenant, obj, mode, str(exc), drop=True)
        raise bad_request(str(exc), [Cause("sha256", str(exc))]) from None
    except ClientDisconnect:
        await asyncio.to_thread(writer.abort)
        await asyncio.to_thread(_failed, ctx, tenant, obj, mode, "the upload was interrupted", drop=False)
        # Nobody reads this answer; it keeps a cut-off client out of the server's error log.
        raise ApiError(400, "BadRequest", "the upload was interrupted") from None
    except BaseException as exc:
        await asyncio.to_thread(writer.abort)
        why = exc.message if isinstance(exc, ApiError) else "the upload failed on the server"
        await asyncio.to_thread(_failed, ctx, tenant, obj, mode, why, drop=False)
        raise
    log.info("artifact %s/%s: %d bytes, sha256 %s", namespace, name, size, done["status"]["sha256"])
    return JsonResponse(present(ctx, tenant, ARTIFACT, done), status_code=201 if mode == "create" else 200)


def _ready(ctx: ServerContext, principal: Principal, namespace: str, name: str) -> Obj:
    obj = ctx.store.get(principal.tenant, ARTIFACT.kind, namespace, name)
    if (obj.get("status") or {}).get("phase") != "Ready":
        raise ApiError(
            409,
            "Conflict",
            f'artifact "{name}" has no content yet (phase {obj.get("status", {}).get("phase")})',
        )
    return obj


@router.get(BASE + "/namespaces/{namespace}/artifacts/{name}/content")
async def download(request: Request, namespace: str, name: str) -> Response:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "get", ARTIFACT, namespace)
    obj = await asyncio.to_thread(_ready, ctx, principal, namespace, name)
    sha256 = str(obj["status"]["sha256"])
    blobs = blobstore(ctx)
    size = await asyncio.to_thread(blobs.stat, sha256)
    if size is None:
        raise not_found(ARTIFACT.kind, f"{name} (blob {sha256} is missing from the store)", ARTIFACT.plural)
    return serve_blob(request, blobs, sha256, size, filename=name)


def _delete(ctx: ServerContext, tenant: str, namespace: str, name: str) -> Obj:
    with _lock(ctx):
        deleted = ctx.store.delete(tenant, ARTIFACT.kind, namespace, name)
        sha256 = (deleted.get("status") or {}).get("sha256")
        if sha256 and not referenced(ctx, sha256):
            blobstore(ctx).delete(sha256)
    return deleted


@router.delete(BASE + "/namespaces/{namespace}/artifacts/{name}")
async def delete(request: Request, namespace: str, name: str) -> JsonResponse:
    ctx = context(request)
    principal = await who(request)
    authorize(principal, "delete", ARTIFACT, namespace)
    deleted = await asyncio.to_thread(_delete, ctx, principal.tenant, namespace, name)
    return JsonResponse(present(ctx, principal.tenant, ARTIFACT, deleted))


# -- sites ------------------------------------------------------------------------------------


def _assigned(ctx: ServerContext, tenant: str, site: str, sha256: str) -> bool:
    manifest = ctx.store.get_or_none(tenant, SITE_MANIFEST.kind, "", site)
    if manifest is None:
        return False
    return sha256.encode() in orjson.dumps(manifest.get("spec") or {})


@router.get(SITE_PREFIX + "/artifacts/{sha256}")
async def site_download(request: Request, sha256: str) -> Response:
    ctx, tenant, site = await authenticated_site(request)
    name = str(site["metadata"]["name"])
    if not SHA256.match(sha256):
        raise bad_request(
            "an artifact is fetched by its SHA-256 (64 lower-case hex digits)",
            [Cause("sha256", f"{sha256!r} is not a SHA-256 digest")],
        )
    if not await asyncio.to_thread(_assigned, ctx, tenant, name, sha256):
        raise ApiError(404, "NotFound", f"artifact sha256:{sha256} is not assigned to site {name}")
    blobs = blobstore(ctx)
    size = await asyncio.to_thread(blobs.stat, sha256)
    if size is None:
        raise ApiError(404, "NotFound", f"artifact sha256:{sha256} is not in the repository")
    return serve_blob(request, blobs, sha256, size)
