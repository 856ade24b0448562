"""The OS on two slots, A and B: a new version installs into the inactive slot, the
site reboots into it, a health check runs, and the slot is committed (made the
default boot slot) on success. A failed install leaves the site on the old slot; a
failed health check reboots it back into the old slot. Either way the reason is kept.

The slots are on the site's disk, not in the agent: ``snapshot()`` is what the sim driver keeps in
``<data-dir>/os.json`` after every change (``changed``), and ``restore()`` takes it back when the
agent starts again, resuming an upgrade that was under way (see ``restore``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from fleetplane.agent.drivers.simmodel.engine import EventQueue

__all__ = ["OsResult", "OsSlots", "OsState", "Slot"]

Slot = Literal["A", "B"]
OsState = Literal["Idle", "Installing", "Rebooting", "HealthCheck", "AwaitingCommit", "FallingBack"]
Stage = Literal["install", "health_check"]
_STATES: tuple[OsState, ...] = (
    "Idle",
    "Installing",
    "Rebooting",
    "HealthCheck",
    "AwaitingCommit",
    "FallingBack",
)


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
        self.reason: str | None = None  # why a fall-back under way falls back
        self.history: list[OsResult] = []
        self.changed: Callable[[], None] = lambda: None  # told after every change (persistence)
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
        self.changed()
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
        self.changed()

    def _booted(self, now: float) -> None:
        self.running = _other(self.active)
        self.state = "HealthCheck"
        self.set_ready(True, now)
        self.queue.at(now + self.health_check_s * self.scale(), self._checked)
        self.changed()

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
            self.changed()

    def commit(self, now: float) -> bool:
        """Make the trial slot the default boot slot (after a passed health check)."""
        if self.state not in ("HealthCheck", "AwaitingCommit") or self.running == self.active:
            return False
        assert self.target is not None
        self.active = self.running
        self.history.append(OsResult(self.target, self.active, "Committed", now))
        self.state, self.target = "Idle", None
        self.changed()
        return True

    def rollback(self, now: float, reason: str = "rolled back by request") -> bool:
        """Leave a trial boot that is awaiting commit for the committed slot."""
        if self.state != "AwaitingCommit":
            return False
        self._fall_back(now, reason)
        return True

    def _fall_back(self, now: float, reason: str) -> None:
        self.state, self.reason = "FallingBack", reason
        self.set_ready(False, now)
        self.queue.at(now + self.reboot_s * self.scale(), lambda t: self._back(t, reason))
        self.changed()

    def _back(self, now: float, reason: str) -> None:
        self.running = self.active
        self.set_ready(True, now)
        self._fell_back(now, reason)

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
        self.state, self.target, self.reason = "Idle", None, None
        self.changed()

    # --- across agent restarts -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What the disk holds: the slots, the boot slots, the upgrade under way and the last
        result (only the last: it is all the site reports, and it keeps the file small)."""
        last = self.last
        return {
            "slots": dict(self.slots),
            "active": self.active,
            "running": self.running,
            "state": self.state,
            "target": self.target,
            "reason": self.reason,
            "last": dataclasses.asdict(last) if last is not None else None,
        }

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Take back a ``snapshot()`` when the agent starts again (``ValueError``, and nothing
        changed, when it does not hold together), then resume what was under way the way an
        A/B updater (RAUC, Mender, update_engine) does after its process restarts:

        - ``Installing``: a half-written slot cannot be trusted, so the image is written again
          from the start; the upgrade itself goes on (it is still wanted, and "an upgrade under
          way still finishes" also without an ``os`` section).
        - ``Rebooting``: the image was complete and the boot loader set to try the new slot once;
          the agent starting again is that boot, so the site runs the trial slot and health-checks it.
        - ``HealthCheck``: the trial slot still runs uncommitted; the check starts over.
        - ``AwaitingCommit``: waits for its commit or rollback as before.
        - ``FallingBack``: the site has rebooted into its committed slot; the attempt fell back,
          with the reason kept.
        """
        slots = data.get("slots")
        if not isinstance(slots, Mapping) or set(slots) != {"A", "B"}:
            raise ValueError(f"slots must name A and B, not {slots!r}")
        versions: dict[Slot, str | None] = {"A": _version(slots["A"]), "B": _version(slots["B"])}
        active, running = _slot(data.get("active")), _slot(data.get("running"))
        state, target, reason = data.get("state"), _version(data.get("target")), data.get("reason")
        if state not in _STATES:
            raise ValueError(f"unknown OS state {state!r}")
        if versions[active] is None:
            raise ValueError(f"the committed slot {active} holds no version")
        trial = state in ("HealthCheck", "AwaitingCommit", "FallingBack")
        if running != (_other(active) if trial else active):
            raise ValueError(f"state {state} cannot run slot {running} with slot {active} committed")
        if state != "Idle" and target is None:
            raise ValueError(f"state {state} without a target version")
        if (trial or state == "Rebooting") and versions[_other(active)] != target:
            raise ValueError(f"slot {_other(active)} does not hold the target {target}")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"reason must be a string, not {reason!r}")
        last = _result(data.get("last"))
        self.slots, self.active, self.running = versions, active, running
        self.state, self.target = cast(OsState, state), target if state != "Idle" else None
        self.reason = reason if state == "FallingBack" else None
        self.history = [last] if last is not None else []
        if state == "Installing":
            self.slots[_other(active)] = None
            self.queue.at(now + self.install_s * self.scale(), self._installed)
        elif state == "Rebooting":
            self._booted(now)
        elif state == "HealthCheck":
            self.queue.at(now + self.health_check_s * self.scale(), self._checked)
        elif state == "FallingBack":
            self._back(now, self.reason or "the agent restarted during the fall-back")


def _slot(value: Any) -> Slot:
    if value not in ("A", "B"):
        raise ValueError(f"not a slot: {value!r}")
    return cast(Slot, value)


def _version(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"not a version: {value!r}")
    return value


def _result(value: Any) -> OsResult | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"not a result: {value!r}")
    version, at, reason = _version(value.get("version")), value.get("at"), value.get("reason")
    outcome = value.get("outcome")
    if version is None or outcome not in ("Committed", "FellBack"):
        raise ValueError(f"not a result: {dict(value)!r}")
    if (
        isinstance(at, bool)
        or not isinstance(at, int | float)
        or (reason is not None and not isinstance(reason, str))
    ):
        raise ValueError(f"not a result: {dict(value)!r}")
    return OsResult(version, _slot(value.get("slot")), outcome, float(at), reason)
