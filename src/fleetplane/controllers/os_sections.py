"""The ``os`` manifest section: which OS version a site must run, from ``OsUpgrade`` intents.

Conflict rule (docs/site-manifest.md, "The os section"): when several OsUpgrade intents
target one site, the **highest version** wins (``version_key`` order), so a site is never
asked to downgrade because an older intent also covers it; intents that asked for a lower
version are listed under ``superseded`` so the site manifest shows why. Intents are
independent of the catalogue here: deleting an ``OsVersion`` does not move any site.

No section means "keep the OS you run", so undoing an upgrade cannot simply drop the intent's
entry. ``baseline`` says what a site runs when a rollout hands it a revision (kept in the
rollout's site record); when the site is rolled back and no older revision of the intent
reaches it, the compile hands this contributor that version as revision ``RESTORED`` (0),
which ``revisions`` records as 0 and ``restored`` names (docs/rollouts.md, "Rollback (undo)").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetplane.controllers.revisions import RESTORED
from fleetplane.core.objects import Obj
from fleetplane.kinds.os_upgrade import OS_UPGRADE, version_key, version_problem


def _source(intent: Obj) -> str:
    # Not imported from controllers.sections: that module imports this one to register it.
    m = intent["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


class OsContributor:
    """``os``: ``{version, sources, superseded?, revisions, restored?}`` from every OsUpgrade
    targeting the site (``revisions``: ``{namespace/name: intent revision}``; ``restored``:
    the intents rolled back past every revision that reached the site, which ask for the
    version it ran before, revision 0)."""

    kind = OS_UPGRADE.kind
    section = "os"

    def baseline(self, site_status: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the site runs now, as the spec fields that would keep it there."""
        current = (site_status.get("os") or {}).get("current") or site_status.get("osVersion")
        if isinstance(current, str) and version_problem(current) is None:
            return {"version": current}
        return None

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        wanted: list[tuple[str, str]] = []  # (version, namespace/name), in intent order
        revisions: dict[str, int] = {}
        restored: list[str] = []
        for intent in intents:
            version = (intent.get("spec") or {}).get("version")
            if isinstance(version, str) and version_problem(version) is None:
                wanted.append((version, _source(intent)))  # validation refuses others
                generation = (intent.get("metadata") or {}).get("generation")
                # RESTORED stays 0 in ``revisions``: the rollout controller reads it as "not the
                # rolled-back revision", i.e. back, once the site runs it.
                revisions[_source(intent)] = RESTORED if generation == RESTORED else int(generation or 1)
                if generation == RESTORED:
                    restored.append(_source(intent))
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
        if restored:
            section["restored"] = restored
        return section
