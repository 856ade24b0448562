"""Injectable faults: ``connectivity_loss`` (the agent cannot reach the control
plane), ``slow`` (every latency and duration times ``factor``), ``install_failure``
(OS installs, or with ``stage="health_check"`` their health checks, fail; ``count``
limits how many), ``clock_skew`` (the site's clock is off by ``seconds``) and
``memory_pressure`` / ``cpu_pressure`` (every ready node uses at least ``percent`` of its
memory / CPU; ``simmodel.usage``). Each may be given a ``duration`` after which it clears
itself and an ``after`` (seconds) before which it has not begun, so a fleet can start healthy
and fall ill on schedule."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["FAULTS", "ActiveFault", "FaultError", "Faults", "parse_fault"]

FAULTS: tuple[str, ...] = ("connectivity_loss", "slow", "install_failure", "clock_skew")
FAULTS += ("memory_pressure", "cpu_pressure")  # usage floors (simmodel.usage)
FAULTS += ("node_failure",)  # a bare-metal node step fails (simmodel.baremetal)

_PARAMS: dict[str, dict[str, Any]] = {
    "connectivity_loss": {},
    "slow": {"factor": 10.0},
    "install_failure": {"stage": "install", "count": None, "reason": "injected install failure"},
    "clock_skew": {"seconds": None},
    "memory_pressure": {"percent": 97.0},
    "cpu_pressure": {"percent": 97.0},
    # phase: os | packages | cluster | containers; node: which node (None: the first one tried)
    "node_failure": {"phase": "os", "node": None, "count": 1, "reason": "injected node failure"},
}
PRESSURE = {"cpu": "cpu_pressure", "memory": "memory_pressure"}


class FaultError(ValueError):
    pass


@dataclasses.dataclass
class ActiveFault:
    name: str
    params: dict[str, Any]
    until: float | None = None
    since: float | None = None  # not active before (``after``)


class Faults:
    def __init__(self) -> None:
        self._active: dict[str, ActiveFault] = {}

    def inject(
        self,
        fault: str,
        now: float,
        *,
        duration: float | None = None,
        after: float | None = None,
        **params: Any,
    ) -> ActiveFault:
        if fault not in _PARAMS:
            raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if unknown := sorted(set(params) - set(_PARAMS[fault])):
            raise FaultError(f"fault {fault} takes no {', '.join(unknown)}")
        merged = {**_PARAMS[fault], **params}
        if fault == "slow" and not float(merged["factor"]) >= 1.0:
            raise FaultError("slow: factor must be at least 1")
        if fault == "clock_skew" and merged["seconds"] is None:
            raise FaultError("clock_skew: seconds is required")
        if fault == "install_failure" and merged["stage"] not in ("install", "health_check"):
            raise FaultError("install_failure: stage is install or health_check")
        if fault in PRESSURE.values() and not 0 < float(merged["percent"]) <= 100:
            raise FaultError(f"{fault}: percent must be in (0, 100]")
        if duration is not None and duration <= 0:
            raise FaultError("duration must be positive")
        if after is not None and after < 0:
            raise FaultError("after must not be negative")
        start = now + (after or 0.0)
        active = ActiveFault(fault, merged, None if duration is None else start + duration, start)
        self._active[fault] = active
        return active

    def clear(self, fault: str | None = None) -> None:
        """Clear one fault, or every fault."""
        if fault is None:
            self._active.clear()
        elif fault not in _PARAMS:
            raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        else:
            self._active.pop(fault, None)

    def get(self, fault: str, now: float) -> ActiveFault | None:
        active = self._active.get(fault)
        if active is not None and active.until is not None and now >= active.until:
            del self._active[fault]
            return None
        if active is not None and active.since is not None and now < active.since:
            return None  # scheduled, not begun
        return active

    def names(self, now: float) -> list[str]:
        return [f for f in FAULTS if self.get(f, now)]

    def connected(self, now: float) -> bool:
        return self.get("connectivity_loss", now) is None

    def slow_factor(self, now: float) -> float:
        active = self.get("slow", now)
        return 1.0 if active is None else float(active.params["factor"])

    def skew(self, now: float) -> float:
        active = self.get("clock_skew", now)
        return 0.0 if active is None else float(active.params["seconds"])

    def pressure(self, now: float) -> dict[str, float]:
        """``{"cpu": fraction, "memory": fraction}``: the least share of each node in use, for
        the resources under an active pressure fault."""
        out = {}
        for resource, fault in PRESSURE.items():
            active = self.get(fault, now)
            if active is not None:
                out[resource] = float(active.params["percent"]) / 100.0
        return out

    def install_failure(self, stage: str, now: float) -> str | None:
        """Why this OS install stage fails, if it does; uses up one of ``count``."""
        active = self.get("install_failure", now)
        if active is None or active.params["stage"] != stage:
            return None
        count = active.params["count"]
        if count is not None:
            if count <= 1:
                self.clear("install_failure")
            else:
                active.params["count"] = count - 1
        return str(active.params["reason"])


def parse_fault(text: str) -> tuple[str, dict[str, Any]]:
    """``"install_failure:stage=health_check,count=1"`` -> ``("install_failure", {...})``
    (numbers become numbers); refused like ``Faults.inject`` refuses it."""
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FaultError(f"fault {name}: expected key=value, not {pair!r}")
        try:
            params[key] = int(value)
        except ValueError:
            try:
                params[key] = float(value)
            except ValueError:
                params[key] = value
    Faults().inject(name, 0.0, **params)  # refuse an unknown fault or parameter now
    return name, params
