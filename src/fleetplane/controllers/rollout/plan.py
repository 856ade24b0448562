"""Wave planning: which sites go out together, in which order.

Sites are ordered by name so that the same fleet always gives the same plan. A gated
strategy puts its gate group (canary sites, or group A) in wave 0; every other site
goes in batches of ``batchSize``. Sites that join later go to a wave that has not
started yet (``place_joiner``), never to one already under way.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetplane.controllers.rollout.state import SiteRecord, WaveRecord, WaveRole
from fleetplane.controllers.rollout.strategy import Strategy

Labels = Mapping[str, str]


def gate_role(strategy: Strategy) -> WaveRole | None:
    if strategy.canary is not None:
        return "canary"
    if strategy.compare is not None:
        return "groupA"
    return None


def gate_group(strategy: Strategy, labels: Mapping[str, Labels], batch: int) -> list[str]:
    """The sites of wave 0 for a gated strategy, sorted; [] for ``rolling``."""
    names = sorted(labels)
    if strategy.canary is not None:
        wanted = set(strategy.canary.sites)
        sel = strategy.canary.selector
        group = [n for n in names if n in wanted or (sel is not None and sel.matches(labels[n]))]
        # No canary named or selected: the first batch is the canary, so there is always one.
        return group or names[:batch]
    if strategy.compare is not None:
        return [n for n in names if strategy.compare.group_a.matches(labels[n])]
    return []


def plan_waves(strategy: Strategy, labels: Mapping[str, Labels]) -> list[WaveRecord]:
    """The waves for the sites targeted when the rollout starts (``labels`` by site name)."""
    batch = strategy.batch(len(labels))
    waves: list[WaveRecord] = []
    role = gate_role(strategy)
    first = gate_group(strategy, labels, batch) if role else []
    if role is not None:
        waves.append(WaveRecord(index=0, role=role, sites=first))
    taken = set(first)
    rest = [n for n in sorted(labels) if n not in taken]
    for start in range(0, len(rest), batch):
        waves.append(WaveRecord(index=len(waves), role="batch", sites=rest[start : start + batch]))
    return waves


def place_joiner(
    waves: list[WaveRecord], sites: dict[str, SiteRecord], current: int, batch: int, name: str
) -> int:
    """Put a site that joined mid-rollout into the last wave if it has not started (and is
    not the gate wave) and has room, else into a new wave; the wave's index."""
    last = waves[-1] if waves else None
    if (
        last is not None
        and last.index > current
        and last.role == "batch"
        and last.startedAt is None
        and sum(1 for n in last.sites if sites[n].inTarget) < batch
    ):
        last.sites.append(name)
        return last.index
    waves.append(WaveRecord(index=len(waves), role="batch", sites=[name]))
    return len(waves) - 1


def late_wave(waves: list[WaveRecord], now: float) -> WaveRecord:
    """The wave of sites that joined after the rollout stopped (created on first use)."""
    if waves and waves[-1].role == "late":
        return waves[-1]
    wave = WaveRecord(index=len(waves), role="late", sites=[], startedAt=now)
    waves.append(wave)
    return wave
