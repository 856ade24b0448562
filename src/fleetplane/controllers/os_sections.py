"""The ``os`` manifest section: which OS version a site must run, from ``OsUpgrade`` intents.

Conflict rule (docs/site-manifest.md, "The os section"): when several OsUpgrade intents
target one site, the **highest version** wins (``version_key`` order), so a site is never
asked to downgrade because an older intent also covers it; intents that asked for a lower
version are listed under ``superseded`` so the site manifest shows why. Intents are
independent of the catalogue here: deleting an ``OsVersion`` does not move any site.
"""

from __future__ import annotations

from typing import Any

from fleetplane.core.objects import Obj
from fleetplane.kinds.os_upgrade import OS_UPGRADE, version_key, version_problem


def _source(intent: Obj) -> str:
    # Not imported from controllers.sections: that module imports this one to register it.
    m = intent["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


class OsContributor:
    """``os``: ``{version, sources, superseded?, revisions}`` from every OsUpgrade targeting
    the site (``revisions``: ``{namespace/name: intent revision}``)."""

    kind = OS_UPGRADE.kind
    section = "os"

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        wanted: list[tuple[str, str]] = []  # (version, namespace/name), in intent order
        revisions: dict[str, int] = {}
        for intent in intents:
            version = (intent.get("spec") or {}).get("version")
            if isinstance(version, str) and version_problem(version) is None:
                wanted.append((version, _source(intent)))  # validation refuses others
                revisions[_source(intent)] = int((intent.get("metadata") or {}).get("generation") or 1)
        if not wanted:
            return None
        version = max((v for v, _ in wanted), key=lambda v: (version_key(v), v))
        section: dict[str, Any] = {
            "version": version,
            "sources": [src for v, src in wanted if v == version],
        }
        superseded = [{"source": src, "version": v} for v, src in wanted if v != version]
        if superseded:
            section["superseded"] = superseded
        section["revisions"] = revisions  # the intent revision each source was compiled from
        return section
