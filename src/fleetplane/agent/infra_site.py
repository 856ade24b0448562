"""The infra pipeline's calls to the control plane, beside the agent core's own.

The core holds one connection per site (its long-poll and status reports); a download of
a multi-GB image must not queue behind a 60-second long-poll, nor hold that connection. So
artifact downloads (``agent/artifacts.py``, by hash, resumable, verified) and the kubeconfig
hand-over each open their own mutual-TLS connection, closed when done, with the site's
current certificate (read from its data dir, so a renewal is picked up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetplane.agent.artifacts import ArtifactCache
from fleetplane.agent.onboard import SavedIdentity
from fleetplane.client import AsyncSiteClient

__all__ = ["SiteLink"]

TIMEOUT_S = 300.0


class SiteLink:
    def __init__(self, ident: SavedIdentity) -> None:
        self.ident = ident
        self.root = ident.data_dir / "artifacts"

    def _client(self) -> AsyncSiteClient:
        ident = self.ident
        return AsyncSiteClient(
            ident.server,
            ident.server_ca_file.read_bytes(),
            cert_file=ident.cert_file,
            key_file=ident.key_file,
            timeout=TIMEOUT_S,
        )

    async def fetch(self, sha256: str, size: int, name: str) -> Path:
        # Held and verified already: ensure() answers without touching the network (httpx
        # connects on the first request only).
        async with self._client() as client:
            return await ArtifactCache(self.root, client).ensure(sha256, size, name=name)

    async def publish(self, namespace: str, kubeconfig: str) -> dict[str, Any]:
        async with self._client() as client:
            return await client.put_kubeconfig(namespace, kubeconfig)
