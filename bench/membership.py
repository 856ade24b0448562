"""Virtual-site membership with the pure in-memory engine (``controllers.membership.Membership``).

* relabel: a fleet of ``fleet`` sites and ``virtual`` virtual sites; ``relabels`` times one
  site is relabelled with ``Membership.set_site`` and each call is timed (target 5 ms).
* recompute: ``recompute_sites`` sites are indexed (``set_site``) and ``virtual`` virtual
  sites added, then ``recompute_all`` runs; the index build plus the recompute has a 5 s target.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.common import Report, percentile, relabel, site_labels, virtual_site_selectors
from fleetplane.controllers.membership import Membership
from fleetplane.core.selectors import parse_selector

SECTION = "membership"
TENANT = "bench"
RELABEL_TARGET_MS = 5.0
RECOMPUTE_TARGET_S = 5.0


@dataclass(frozen=True)
class MembershipSizes:
    fleet: int
    virtual: int
    relabels: int
    recompute_sites: int

    @classmethod
    def for_run(cls, quick: bool) -> MembershipSizes:
        if quick:
            return cls(fleet=1_000, virtual=100, relabels=200, recompute_sites=10_000)
        return cls(fleet=10_000, virtual=100, relabels=1_000, recompute_sites=100_000)


def _load(sites: dict[str, dict[str, str]], selectors: list[str]) -> tuple[Membership, float, float]:
    """A loaded engine, the seconds to index the sites and the seconds to add the virtual sites."""
    engine = Membership()
    start = time.perf_counter()
    for name, labels in sites.items():
        engine.set_site(TENANT, name, labels)
    indexed = time.perf_counter() - start
    start = time.perf_counter()
    for i, text in enumerate(selectors):
        engine.set_virtual_site((TENANT, "default", f"vs-{i:03d}"), parse_selector(text), 1)
    added = time.perf_counter() - start
    return engine, indexed, added


def _mismatches(engine: Membership, sites: dict[str, dict[str, str]]) -> int:
    """Virtual sites whose members differ from evaluating the selector on every site."""
    wrong = 0
    for vs in engine.virtual.values():
        expected = {name for name, labels in sites.items() if vs.selector.matches(labels)}
        wrong += expected != vs.members
    return wrong


def run(report: Report, quick: bool) -> None:
    sizes = MembershipSizes.for_run(quick)
    rng = random.Random(42)
    selectors = virtual_site_selectors(rng, sizes.virtual)
    report.params[SECTION] = {**sizes.__dict__, "selectors": selectors}

    # -- one relabel at a time --------------------------------------------------------------
    sites = {f"site-{i:06d}": site_labels(rng) for i in range(sizes.fleet)}
    engine, _, _ = _load(sites, selectors)
    names = list(sites)
    samples: list[float] = []
    changed = 0
    for _ in range(sizes.relabels):
        name = rng.choice(names)
        sites[name] = relabel(rng, sites[name])
        start = time.perf_counter()
        changed += len(engine.set_site(TENANT, name, sites[name]))
        samples.append((time.perf_counter() - start) * 1000)
    label = f"relabel 1 site ({sizes.fleet:,} sites, {sizes.virtual} VS)"
    for key, value in (
        ("p50", percentile(samples, 50)),
        ("p99", percentile(samples, 99)),
        ("max", max(samples)),
    ):
        report.add(SECTION, f"relabel.{key}_ms", f"{label} {key}", value, "ms", target=RELABEL_TARGET_MS)
    report.add(
        SECTION,
        "relabel.vs_changed_avg",
        "virtual sites changed per relabel (mean)",
        changed / sizes.relabels,
        "VS",
    )
    report.add(
        SECTION,
        "relabel.mismatches",
        "VS whose members disagree with brute force",
        _mismatches(engine, sites),
        "VS",
    )

    # -- full recompute -----------------------------------------------------------------------
    big = {f"site-{i:06d}": site_labels(rng) for i in range(sizes.recompute_sites)}
    engine, indexed, added = _load(big, selectors)
    start = time.perf_counter()
    engine.recompute_all()
    recompute = time.perf_counter() - start
    where = f"{sizes.recompute_sites:,} sites x {sizes.virtual} VS"
    report.add(
        SECTION,
        "recompute.index_build_s",
        f"build label index ({sizes.recompute_sites:,} sites)",
        indexed,
        "s",
    )
    report.add(SECTION, "recompute.add_virtual_sites_s", f"add {sizes.virtual} VS (first select)", added, "s")
    report.add(
        SECTION,
        "recompute.recompute_all_s",
        f"recompute_all ({where})",
        recompute,
        "s",
        target=RECOMPUTE_TARGET_S,
    )
    report.add(
        SECTION,
        "recompute.build_plus_recompute_s",
        "index build + recompute_all",
        indexed + recompute,
        "s",
        target=RECOMPUTE_TARGET_S,
    )
    members = sum(len(vs.members) for vs in engine.virtual.values())
    report.add(SECTION, "recompute.members_total", "memberships after recompute", members, "members")
