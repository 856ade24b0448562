"""Small JSON state files in a site's agent data dir, for what a real site keeps on its disks
across an agent restart (``rack.json``, ``os.json``, ``images.json``).

Written atomically (a temporary file renamed over the old one, as ``agent/infra.py`` does), so a
simulator killed mid-write leaves the previous version; not fsynced: a simulated site need not
survive a power cut of the machine running it. Read tolerantly: a missing file is a fresh site,
a damaged one is logged and ignored, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["read_state", "write_state"]

log = logging.getLogger("fleetplane.agent.sim")


def read_state(path: Path, what: str) -> dict[str, Any] | None:
    """The object in ``path``; ``None`` when the file is missing, or unreadable or not a JSON
    object (logged: the caller starts from ``what``'s factory state)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s): %s; starting from the factory state", path, what, exc)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring %s (%s): not a JSON object; starting from the factory state", path, what)
        return None
    return data


def write_state(path: Path, data: dict[str, Any]) -> bool:
    """Replace ``path`` with ``data``; False (logged) when the disk refuses: the model goes on,
    as a site whose state file cannot be written still runs (it is called from the models'
    event time line, where an exception would stop the site's clock)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not write %s: %s; it keeps its previous content", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True
