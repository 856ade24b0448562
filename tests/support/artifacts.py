"""Artifact test helpers: deterministic bytes, and assigning digests to a site's manifest."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

from fleetplane.core.store import open_store
from fleetplane.kinds import SITE_MANIFEST
from tests.support.server import ServerProcess


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ per ``seed`` (cheap to make, not compressible by accident)."""
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * 2048  # 64 KiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def generated(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """``size`` bytes as a stream of chunks, never held at once (the 2 GB upload)."""
    block = bytes(range(256)) * (chunk // 256)
    sent = 0
    while sent < size:
        piece = block[: min(chunk, size - sent)]
        sent += len(piece)
        yield piece


def assign(
    server: ServerProcess, site: str, artifacts: list[dict[str, Any]], tenant: str = "default"
) -> None:
    """Put artifact references into the site's compiled manifest, standing in for the infra
    compile (another package's job): what the download route checks is the manifest's content.
    Waits for the manifest controller's first manifest so it does not overwrite this one."""
    store = open_store(f"sqlite:///{server.data_dir / 'fleetplane.db'}")
    try:
        deadline = time.monotonic() + 15
        while (current := store.get_or_none(tenant, SITE_MANIFEST.kind, "", site)) is None:
            assert time.monotonic() < deadline, f"no manifest was compiled for {site}"
            time.sleep(0.1)
        spec = dict(current.get("spec") or {})
        sections = dict(spec.get("sections") or {})
        sections["test-artifacts"] = {"artifacts": artifacts}
        store.update(tenant, {**current, "spec": {**spec, "sections": sections}})
    finally:
        store.close()
