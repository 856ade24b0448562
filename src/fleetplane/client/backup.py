"""The control-plane backup call (system admin key): the encrypted archive, streamed to a file."""

from __future__ import annotations

from typing import IO

import httpx

from fleetplane.client.http import Client, decode_response
from fleetplane.core.errors import ApiError

BACKUP_PATH = "/admin/v1/backup"


def download_backup(
    client: Client, sink: IO[bytes], passphrase: str, *, with_artifacts: bool = False, timeout: float = 3600.0
) -> int:
    """Ask the server for a backup encrypted under ``passphrase`` and write it to ``sink``;
    the store revision it was taken at."""
    body = {"passphrase": passphrase, "withArtifacts": with_artifacts}
    try:
        with client.http.stream("POST", BACKUP_PATH, json=body, timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                decode_response(resp)
            for chunk in resp.iter_bytes(1 << 20):
                sink.write(chunk)
            return int(resp.headers.get("x-fleetplane-backup-revision") or 0)
    except httpx.TransportError as exc:
        raise ApiError(0, "ConnectionError", f"backing up {client.conn.server} failed: {exc}") from exc
