"""How CPU, memory and disk load spread across a set of sites: histogram, quantiles and
statements such as "52 % of sites use more than 75 % of memory" (docs/alerts.md,
"Load distribution"). A pure function of the current values (the fleet health view)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from fleetplane.controllers.health_controller import SiteEntry

__all__ = ["DEFAULT_THRESHOLDS", "RESOURCES", "distribution", "load_of", "resource_distribution"]

DEFAULT_THRESHOLDS = (50.0, 75.0, 90.0)
RESOURCES = ("cpu", "memory", "disk")
QUANTILES = (0.5, 0.9, 0.99)
BIN = 10  # histogram bins of 10 percentage points: [0,10) ... [90,100]


def load_of(entry: SiteEntry) -> dict[str, float | None]:
    return {"cpu": entry.cpu, "memory": entry.memory, "disk": entry.disk}


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def resource_distribution(
    values: Iterable[float | None], resource: str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    ordered = sorted(v for v in values if v is not None)
    n = len(ordered)
    bins = [0] * (100 // BIN)
    for v in ordered:
        bins[min(len(bins) - 1, int(v // BIN))] += 1
    above = []
    for t in thresholds:
        count = sum(1 for v in ordered if v > t)
        share = round(100.0 * count / n, 1) if n else 0.0
        above.append(
            {
                "threshold": t,
                "sites": count,
                "percent": share,
                "statement": f"{share:g} % of sites use more than {t:g} % of {resource}",
            }
        )
    return {
        "reported": n,
        "mean": round(sum(ordered) / n, 1) if n else None,
        "min": ordered[0] if n else None,
        "max": ordered[-1] if n else None,
        "quantiles": {f"p{round(q * 100)}": (_quantile(ordered, q) if n else None) for q in QUANTILES},
        "histogram": [{"from": i * BIN, "to": (i + 1) * BIN, "sites": c} for i, c in enumerate(bins)],
        "above": above,
    }


def distribution(
    entries: Iterable[SiteEntry], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """Per resource, the distribution over ``entries`` (sites with a report)."""
    loads = [load_of(e) for e in entries]
    out: dict[str, Any] = {"sites": len(loads)}
    for resource in RESOURCES:
        out[resource] = resource_distribution((load[resource] for load in loads), resource, thresholds)
    return out
