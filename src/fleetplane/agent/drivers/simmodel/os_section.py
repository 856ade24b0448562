"""The manifest's ``os`` section on the A/B slot model: ``{version, sources, superseded?}``.

Level-triggered: each ``apply`` looks at the slots and says where the site stands.
Running ``version`` committed: ``Applied``. An install, reboot or health check under
way: ``InProgress`` (the stage in the reason). Idle on another version: start
installing ``version`` into the inactive slot. An attempt that fell back: ``Failed``
with the slot model's reason, and the site stays on its old slot; it is not retried
until the ``os`` section changes (a new intent revision), because a bad image would
otherwise reboot the site over and over. No section: nothing to install, the site
keeps what it runs (an OS cannot be removed); an upgrade under way still finishes.

``persist_to(path)`` keeps the slots and the attempt last started in ``path`` (the sim driver:
``<data-dir>/os.json``), so that a restarted agent reports the OS the site runs, does not
install it again, and does not retry an upgrade that fell back either. A missing file is a
factory-new site; a damaged one is logged and the site starts from its factory OS.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetplane.agent.drivers.base import ItemStatus, OsInfo
from fleetplane.agent.drivers.simmodel.os_slots import OsSlots
from fleetplane.agent.drivers.simmodel.state_file import read_state, write_state

__all__ = ["SECTION", "OsSection"]

SECTION = "os"
FORMAT = 1  # of the state file

log = logging.getLogger("fleetplane.agent.sim")


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OsSection:
    def __init__(self, slots: OsSlots) -> None:
        self.slots = slots
        self.target: str | None = None
        self._tried: Any = None  # the section an install was last started for
        self._file: Path | None = None

    def persist_to(self, path: Path, now: float) -> None:
        """Keep the OS state in ``path`` from now on, resuming from it if it is there."""
        self._file = path
        self.slots.changed = self._save
        data = read_state(path, "OS slots")
        if data is None:
            return
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            tried = data.get("tried")
            if tried is not None and not isinstance(tried, dict):
                raise ValueError(f"tried must be an os section, not {tried!r}")
            self._tried = tried  # before restore(): resuming saves, and must keep it
            self.slots.restore(data, now)
        except ValueError as exc:
            self._tried = None
            log.warning(
                "ignoring %s (OS slots): %s; starting from the factory OS %s", path, exc, self.slots.version
            )
            return
        if self.slots.state != "Idle":
            log.info("%s: resuming the upgrade to %s (%s)", path, self.slots.target, self.slots.state)

    def _save(self) -> None:
        if self._file is not None:
            write_state(self._file, {"format": FORMAT, **self.slots.snapshot(), "tried": self._tried})

    def apply(self, section: Any, now: float) -> list[ItemStatus]:
        """The ``os`` item for ``section`` (``None``: the manifest has none), after starting
        an install where one is due."""
        if section is None:
            self.target = None
            return []
        version = section.get("version") if isinstance(section, Mapping) else None
        if not isinstance(version, str) or not version:
            self.target = None
            return [ItemStatus(SECTION, SECTION, "Failed", "the os section must name a version")]
        self.target = version
        os = self.slots
        if os.state != "Idle":
            return [ItemStatus(SECTION, version, "InProgress", self._stage(version))]
        if os.slots[os.active] == version:
            return [ItemStatus(SECTION, version, "Applied")]
        last = os.last
        if (
            self._tried == section
            and last is not None
            and last.outcome == "FellBack"
            and last.version == version
        ):
            return [ItemStatus(SECTION, version, "Failed", f"upgrade to {version} fell back: {last.reason}")]
        self._tried = dict(section)  # before install(): its save keeps the attempt too
        os.install(version, now)
        return [ItemStatus(SECTION, version, "InProgress", self._stage(version))]

    def _stage(self, version: str) -> str:
        os = self.slots
        trial = "B" if os.active == "A" else "A"
        if os.target != version:
            return f"waiting for the upgrade to {os.target} ({os.state}) to finish before {version}"
        return {
            "Installing": f"installing {version} into slot {trial}",
            "Rebooting": f"rebooting into slot {trial} ({version})",
            "HealthCheck": f"health-checking {version} in slot {trial}",
            "AwaitingCommit": f"{version} in slot {trial} awaits commit",
            "FallingBack": f"{version} failed its health check; rebooting back into slot {os.active}",
        }.get(os.state, os.state)

    def info(self) -> OsInfo:
        os = self.slots
        last = os.last
        result: dict[str, Any] | None = None
        if last is not None:
            result = {"version": last.version, "outcome": last.outcome, "at": _rfc3339(last.at)}
            if last.reason:
                result["reason"] = last.reason
        return OsInfo(
            current=os.version,
            target=self.target,
            state=os.state,
            slots={str(k): v for k, v in os.slots.items()},
            active=os.active,
            running=os.running,
            last_result=result,
        )
