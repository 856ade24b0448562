"""What every driver shares: the item and observation shapes, the ``Driver`` protocol
and the ``Clock`` the drivers and the agent core tell time by.

The dataclasses serialise (``to_status()``) into the JSON shapes of ``Site.status``
described in docs/site-manifest.md ("What a site reports"); the agent core adds
``manifest``, ``lastSeen``, ``phase``, ``softwareVersion`` and ``facts`` itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Allocatable", "Clock", "Driver", "ItemState", "ItemStatus", "NodeInfo", "Observation"]
__all__ += ["NodeRole", "OsInfo", "RealClock", "Usage", "VirtualClock"]

ItemState = Literal["Applied", "Failed", "InProgress"]
NodeRole = Literal["controller", "worker", "storage"]


@dataclasses.dataclass(frozen=True)
class ItemStatus:
    """The outcome of applying one item of one manifest section."""

    section: str
    name: str
    state: ItemState
    reason: str | None = None

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"section": self.section, "name": self.name, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """One node of the site's inventory (capacity, not allocatable)."""

    name: str
    role: NodeRole
    cpu_millis: int
    memory_bytes: int
    disk_bytes: int
    ready: bool = True

    def to_status(self) -> dict[str, Any]:
        """A new dict each call (callers may change it); built once per NodeInfo."""
        return dict(self._status)

    @functools.cached_property
    def _status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "cpuMillis": self.cpu_millis,
            "memoryBytes": self.memory_bytes,
            "diskBytes": self.disk_bytes,
            "ready": self.ready,
        }


@dataclasses.dataclass(frozen=True)
class Usage:
    """Site-wide usage; percentages are of the site's capacity, 0-100."""

    cpu_millis: int
    memory_bytes: int
    disk_bytes: int
    cpu_percent: float
    memory_percent: float

    def to_status(self) -> dict[str, Any]:
        return {
            "cpuMillis": self.cpu_millis,
            "memoryBytes": self.memory_bytes,
            "diskBytes": self.disk_bytes,
            "cpuPercent": self.cpu_percent,
            "memoryPercent": self.memory_percent,
        }


@dataclasses.dataclass(frozen=True)
class Allocatable:
    """What workloads may request: capacity less reservations."""

    cpu_millis: int
    memory_bytes: int

    def to_status(self) -> dict[str, Any]:
        return {"cpuMillis": self.cpu_millis, "memoryBytes": self.memory_bytes}


@dataclasses.dataclass(frozen=True)
class OsInfo:
    """The site's OS: the running version, the version its manifest asks for, the A/B slots
    and the outcome of the last upgrade attempt (``Site.status.os``)."""

    current: str | None
    target: str | None = None
    state: str = "Idle"
    slots: dict[str, str | None] = dataclasses.field(default_factory=dict)
    active: str | None = None
    running: str | None = None
    last_result: dict[str, Any] | None = None  # {version, outcome, reason?, at?}

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"current": self.current, "target": self.target, "state": self.state}
        out |= {"slots": dict(self.slots), "active": self.active, "running": self.running}
        out["lastResult"] = self.last_result
        return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Observation:
    """One look at the site. ``now`` is the site's own clock (skew included), in
    seconds since the epoch; the agent core turns it into ``lastSeen``."""

    nodes: tuple[NodeInfo, ...]
    usage: Usage
    allocatable: Allocatable
    os_version: str | None
    policy_hits: dict[str, int] = dataclasses.field(default_factory=dict)
    now: float = 0.0
    os: OsInfo | None = None
    # Pods of the vK8s ``workloads`` section (``Site.status.pods``); None: no such section.
    pods: tuple[dict[str, Any], ...] | None = None
    # The infrastructure pipeline and nodes (``Site.status.infra``, agent/infra.py).
    infra: dict[str, Any] | None = None

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nodes": [n.to_status() for n in self.nodes],
            "nodeCount": len(self.nodes),
            "usage": self.usage.to_status(),
            "allocatable": self.allocatable.to_status(),
            "policyHits": dict(sorted(self.policy_hits.items())),
        }
        if self.os_version is not None:
            out["osVersion"] = self.os_version
        if self.os is not None:
            out["os"] = self.os.to_status()
        if self.pods is not None:
            out["pods"] = [dict(p) for p in self.pods]
        if self.infra is not None:
            out["infra"] = self.infra
        return out


@runtime_checkable
class Driver(Protocol):
    """Makes one site run its manifest and reports what it sees."""

    name: str

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        """Make the site run ``manifest["spec"]["sections"]``; idempotent and
        level-triggered: applying the same manifest twice changes nothing; a section
        absent means remove it."""
        ...

    async def observe(self) -> Observation:
        """Nodes, usage, allocatable, versions, policy hit counters, now."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Seconds since the epoch, and a sleep on the same time line."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """A clock that moves only when told: ``advance(s)`` or ``sleep(s)`` (which returns
    at once, after yielding to the event loop). For tests and fast simulation."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
