"""What every benchmark shares: figures, percentiles, and a realistic synthetic fleet."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetplane.core.selectors import parse_selector

# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One measured number. ``key`` is its name in the JSON; ``column`` groups figures of a
    section side by side (e.g. the store backend)."""

    section: str
    key: str
    label: str
    value: float
    unit: str
    column: str = "value"
    target: float | None = None  # lower is better: PASS when value <= target

    @property
    def verdict(self) -> str | None:
        if self.target is None:
            return None
        return "PASS" if self.value <= self.target else "MISS"


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        section: str,
        key: str,
        label: str,
        value: float,
        unit: str,
        *,
        column: str = "value",
        target: float | None = None,
    ) -> None:
        self.figures.append(Figure(section, key, label, float(value), unit, column, target))


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def timed_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; milliseconds per run."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


# -- a synthetic fleet ------------------------------------------------------------------------------

# 20 regions, each with the countries a site there may be in.
REGIONS: dict[str, tuple[str, ...]] = {
    "us-east": ("us",), "us-west": ("us",), "us-central": ("us",), "ca-east": ("ca",),
    "ca-west": ("ca",), "mx-central": ("mx",), "br-south": ("br",), "ar-central": ("ar", "cl", "uy"),
    "eu-west": ("ie", "uk", "fr"), "eu-central": ("de", "at", "ch"), "eu-north": ("se", "no", "fi"),
    "eu-south": ("it", "es", "pt"), "me-central": ("ae", "sa"), "af-south": ("za",),
    "in-west": ("in",), "sg-central": ("sg", "my"), "jp-north": ("jp",), "jp-south": ("jp",),
    "kr-central": ("kr",), "au-east": ("au", "nz"),
}  # fmt: skip
FUNCTIONS = ("pos", "kiosk", "camera", "gateway", "signage", "inventory", "hvac", "router")
ENVS = ("dev", "test", "prod")
ENV_WEIGHTS = (10, 15, 75)
MODEL_YEARS = tuple(str(y) for y in range(2015, 2025))
TIERS = ("gold", "silver", "bronze")


def site_labels(rng: random.Random) -> dict[str, str]:
    """Labels of one site: region, country, model-year, function, env, and some optional keys."""
    region = rng.choice(tuple(REGIONS))
    labels = {
        "region": region,
        "country": rng.choice(REGIONS[region]),
        "model-year": rng.choice(MODEL_YEARS),
        "function": rng.choice(FUNCTIONS),
        "env": rng.choices(ENVS, ENV_WEIGHTS)[0],
    }
    if rng.random() < 0.6:
        labels["tier"] = rng.choice(TIERS)
    if rng.random() < 0.2:
        labels["gpu"] = "true"
    if rng.random() < 0.03:
        labels["pilot"] = "true"
    return labels


def relabel(rng: random.Random, labels: dict[str, str]) -> dict[str, str]:
    """A plausible edit of one site's labels: move region, change env, bump model, toggle gpu."""
    new = dict(labels)
    change = rng.randrange(5)
    if change == 0:
        region = rng.choice([r for r in REGIONS if r != labels["region"]])
        new["region"], new["country"] = region, rng.choice(REGIONS[region])
    elif change == 1:
        new["env"] = rng.choice([e for e in ENVS if e != labels["env"]])
    elif change == 2:
        new["model-year"] = rng.choice([y for y in MODEL_YEARS if y != labels["model-year"]])
    elif change == 3:
        new["function"] = rng.choice([f for f in FUNCTIONS if f != labels["function"]])
    elif "gpu" in new:
        del new["gpu"]
    else:
        new["gpu"] = "true"
    return new


def _some(rng: random.Random, values: Sequence[str], low: int, high: int) -> str:
    return ",".join(sorted(rng.sample(list(values), rng.randint(low, high))))


def virtual_site_selectors(rng: random.Random, count: int) -> list[str]:
    """``count`` varied selectors: equality, set-based, notin, exists, !exists and combinations."""
    regions, countries = tuple(REGIONS), sorted({c for cs in REGIONS.values() for c in cs})
    templates: list[Callable[[], str]] = [
        lambda: f"region={rng.choice(regions)}",
        lambda: f"region in ({_some(rng, regions, 2, 4)})",
        lambda: f"env notin (dev,test),function notin ({_some(rng, FUNCTIONS, 1, 3)})",
        lambda: rng.choice(("gpu", "tier", "pilot", "tier,gpu")),
        lambda: f"function={rng.choice(FUNCTIONS)},!pilot",
        lambda: f"region in ({_some(rng, regions, 2, 5)}),env=prod,model-year notin (2015,2016,2017)",
        lambda: f"country={rng.choice(countries)},gpu",
        lambda: (
            f"model-year in ({_some(rng, MODEL_YEARS, 2, 4)}),"
            f"function in ({_some(rng, FUNCTIONS, 2, 3)}),env!=dev"
        ),
        lambda: f"tier in (gold,silver),region notin ({_some(rng, regions, 3, 8)})",
        lambda: f"env={rng.choice(ENVS)}",
    ]
    selectors = []
    for i in range(count):
        text = templates[i % len(templates)]()
        parse_selector(text)  # every one must be valid
        selectors.append(text)
    return selectors
