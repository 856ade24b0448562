"""The OS on two slots, A and B: a new version installs into the inactive slot, the
site reboots into it, a health check runs, and the slot is committed (made the
default boot slot) on success. A failed install leaves the site on the old slot; a
failed health check reboots it back into the old slot. Either way the reason is kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from fleetplane.agent.drivers.simmodel.engine import EventQueue

__all__ = ["OsResult", "OsSlots", "OsState", "Slot"]

Slot = Literal["A", "B"]
OsState = Literal["Idle", "Installing", "Rebooting", "HealthCheck", "AwaitingCommit", "FallingBack"]
Stage = Literal["install", "health_check"]


@dataclasses.dataclass(frozen=True)
class OsResult:
    version: str
    slot: Slot
    outcome: Literal["Committed", "FellBack"]
    at: float
    reason: str | None = None


def _other(slot: Slot) -> Slot:
    return "B" if slot == "A" else "A"


class OsSlots:
    """``failure(stage, version)`` returns why that stage fails (faults), else None;
    ``set_ready(ready, t)`` takes the nodes down for a reboot and brings them back;
    ``scale()`` multiplies every duration (the slow fault)."""

    def __init__(
        self,
        version: str,
        queue: EventQueue,
        *,
        install_s: float,
        reboot_s: float,
        health_check_s: float,
        bad_versions: frozenset[str] = frozenset(),
        failure: Callable[[Stage, str], str | None] = lambda stage, version: None,
        set_ready: Callable[[bool, float], None] = lambda ready, t: None,
        scale: Callable[[], float] = lambda: 1.0,
        auto_commit: bool = True,
    ) -> None:
        self.slots: dict[Slot, str | None] = {"A": version, "B": None}
        self.active: Slot = "A"  # the committed default boot slot
        self.running: Slot = "A"  # the slot booted now (differs during a trial boot)
        self.state: OsState = "Idle"
        self.target: str | None = None
        self.history: list[OsResult] = []
        self.queue = queue
        self.install_s, self.reboot_s, self.health_check_s = install_s, reboot_s, health_check_s
        self.bad_versions = bad_versions
        self.failure = failure
        self.set_ready = set_ready
        self.scale = scale
        self.auto_commit = auto_commit

    @property
    def version(self) -> str | None:
        return self.slots[self.running]

    @property
    def last(self) -> OsResult | None:
        return self.history[-1] if self.history else None

    @property
    def rebooting(self) -> bool:
        return self.state in ("Rebooting", "FallingBack")

    def install(self, version: str, now: float) -> bool:
        """Start installing ``version`` into the inactive slot; False (and nothing
        done) when busy or when that version already runs committed."""
        if self.state != "Idle" or version == self.slots[self.active]:
            return False
        self.state, self.target = "Installing", version
        self.slots[_other(self.active)] = None
        self.queue.at(now + self.install_s * self.scale(), self._installed)
        return True

    def _installed(self, now: float) -> None:
        assert self.target is not None
        slot = _other(self.active)
        if why := self.failure("install", self.target):
            self._fell_back(now, f"install of {self.target} into slot {slot} failed: {why}")
            return
        self.slots[slot] = self.target
        self.state = "Rebooting"
        self.set_ready(False, now)
        self.queue.at(now + self.reboot_s * self.scale(), self._booted)

    def _booted(self, now: float) -> None:
        self.running = _other(self.active)
        self.state = "HealthCheck"
        self.set_ready(True, now)
        self.queue.at(now + self.health_check_s * self.scale(), self._checked)

    def _checked(self, now: float) -> None:
        assert self.target is not None
        why = "version marked bad" if self.target in self.bad_versions else None
        why = why or self.failure("health_check", self.target)
        if why:
            self._fall_back(now, f"health check of {self.target} in slot {self.running} failed: {why}")
        elif self.auto_commit:
            self.commit(now)
        else:
            self.state = "AwaitingCommit"

    def commit(self, now: float) -> bool:
        """Make the trial slot the default boot slot (after a passed health check)."""
        if self.state not in ("HealthCheck", "AwaitingCommit") or self.running == self.active:
            return False
        assert self.target is not None
        self.active = self.running
        self.history.append(OsResult(self.target, self.active, "Committed", now))
        self.state, self.target = "Idle", None
        return True

    def rollback(self, now: float, reason: str = "rolled back by request") -> bool:
        """Leave a trial boot that is awaiting commit for the committed slot."""
        if self.state != "AwaitingCommit":
            return False
        self._fall_back(now, reason)
        return True

    def _fall_back(self, now: float, reason: str) -> None:
        self.state = "FallingBack"
        self.set_ready(False, now)

        def back(t: float) -> None:
            self.running = self.active
            self.set_ready(True, t)
            self._fell_back(t, reason)

        self.queue.at(now + self.reboot_s * self.scale(), back)

    def _fell_back(self, now: float, reason: str) -> None:
        assert self.target is not None
        old = self.slots[self.active]
        self.history.append(
            OsResult(
                self.target,
                _other(self.active),
                "FellBack",
                now,
                f"{reason}; running {old} in slot {self.active}",
            )
        )
        self.state, self.target = "Idle", None
