"""End-to-end membership: a relabel written to the real SQLite store, until the membership
controller has written every affected VirtualSite's status.

The fleet is loaded into the file with ``synchronous=OFF`` (only to save time), then the
store is reopened with the default ``synchronous=FULL`` and a ``WatchHub`` plus the
``MembershipController`` run in this process, as in the server. Each sample is one
relabel: from just before ``store.update`` until the watch delivers the last affected
VirtualSite's new status.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Report, percentile, relabel, site_labels, virtual_site_selectors
from fleetplane.controllers.membership import MembershipController
from fleetplane.core.selectors import Selector, parse_selector
from fleetplane.core.store.sqlite import SqliteStore
from fleetplane.core.watch import WatchFilter, WatchHub
from fleetplane.kinds import SITE, VIRTUAL_SITE

SECTION = "e2e"
TENANT, NAMESPACE = "bench", "default"
SETTLE_TIMEOUT_S = 120.0
SAMPLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class E2eSizes:
    fleet: int
    virtual: int
    relabels: int

    @classmethod
    def for_run(cls, quick: bool) -> E2eSizes:
        if quick:
            return cls(fleet=1_000, virtual=20, relabels=10)
        return cls(fleet=10_000, virtual=100, relabels=50)


@dataclass
class Seen:
    """The latest status the watch delivered per virtual site, and when."""

    members: dict[str, set[str]] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    revision: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def _follow(hub: WatchHub, since: int, seen: Seen) -> None:
    async for ev in hub.watch(WatchFilter(tenant=TENANT, kinds=(VIRTUAL_SITE.kind,)), since=since):
        status = ev.object.get("status") or {}
        if "members" in status:
            seen.members[ev.name] = set(status["members"])
            seen.at[ev.name] = time.perf_counter()
            seen.revision[ev.name] = ev.revision
            seen.changed.set()


async def _until(seen: Seen, done: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            seen.changed.clear()
            if done():
                return
            await seen.changed.wait()


def _populate(path: Path, sites: dict[str, dict[str, str]], selectors: dict[str, Selector]) -> None:
    store = SqliteStore(path, synchronous="OFF")
    try:
        for name, labels in sites.items():
            store.create(TENANT, SITE.normalize({"metadata": {"name": name, "labels": labels}, "spec": {}}))
        for name, sel in selectors.items():
            store.create(
                TENANT,
                VIRTUAL_SITE.normalize(
                    {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"selector": str(sel)}}
                ),
            )
    finally:
        store.close()


async def _measure(
    path: Path,
    sizes: E2eSizes,
    rng: random.Random,
    sites: dict[str, dict[str, str]],
    selectors: dict[str, Selector],
    report: Report,
) -> None:
    store = SqliteStore(path)
    hub = WatchHub(store)
    await hub.start()
    seen = Seen()
    follower = asyncio.create_task(_follow(hub, await asyncio.to_thread(store.revision), seen))
    controller = MembershipController(store, hub)
    start = time.perf_counter()
    running = asyncio.create_task(controller.run())
    try:
        expected = {
            vs: {n for n, labels in sites.items() if sel.matches(labels)} for vs, sel in selectors.items()
        }
        await _until(
            seen, lambda: all(seen.members.get(vs) == m for vs, m in expected.items()), SETTLE_TIMEOUT_S
        )
        report.add(
            SECTION,
            "initial_sync_s",
            f"controller start until all {sizes.virtual} VS statuses written",
            time.perf_counter() - start,
            "s",
        )

        total: list[float] = []
        first: list[float] = []
        writes: list[float] = []
        affected_count = 0
        names = list(sites)
        while len(total) < sizes.relabels:
            name = rng.choice(names)
            new = relabel(rng, sites[name])
            affected = {
                vs: sel.matches(new)
                for vs, sel in selectors.items()
                if sel.matches(new) != sel.matches(sites[name])
            }
            if not affected:
                continue
            current = await asyncio.to_thread(store.get, TENANT, SITE.kind, "", name)
            obj = {**current, "metadata": {**current["metadata"], "labels": new}}
            t0 = time.perf_counter()
            written = await asyncio.to_thread(store.update, TENANT, obj)
            writes.append((time.perf_counter() - t0) * 1000)
            rev = int(written["metadata"]["resourceVersion"])
            sites[name] = new

            def done(rev: int = rev, name: str = name, affected: dict[str, bool] = affected) -> bool:
                return all(
                    seen.revision.get(vs, 0) > rev and (name in seen.members[vs]) == member
                    for vs, member in affected.items()
                )

            await _until(seen, done, SAMPLE_TIMEOUT_S)
            times = [(seen.at[vs] - t0) * 1000 for vs in affected]
            total.append(max(times))
            first.append(min(times))
            affected_count += len(affected)

        for pct in (50, 99):
            report.add(
                SECTION,
                f"relabel_to_status.p{pct}_ms",
                f"relabel write -> all affected VS statuses written p{pct}",
                percentile(total, pct),
                "ms",
            )
        report.add(
            SECTION,
            "relabel_to_status.max_ms",
            "relabel write -> all affected VS statuses max",
            max(total),
            "ms",
        )
        report.add(
            SECTION,
            "relabel_to_first_status.p50_ms",
            "relabel write -> first VS status p50",
            percentile(first, 50),
            "ms",
        )
        report.add(
            SECTION,
            "relabel_write.p50_ms",
            "the relabel write itself (store.update) p50",
            percentile(writes, 50),
            "ms",
        )
        report.add(
            SECTION,
            "affected_vs_avg",
            "virtual sites affected per relabel (mean)",
            affected_count / len(total),
            "VS",
        )
    finally:
        for task in (running, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await hub.stop()
        store.close()


def run(report: Report, quick: bool) -> None:
    sizes = E2eSizes.for_run(quick)
    rng = random.Random(7)
    selectors = {
        f"vs-{i:03d}": parse_selector(text)
        for i, text in enumerate(virtual_site_selectors(rng, sizes.virtual))
    }
    sites = {f"site-{i:05d}": site_labels(rng) for i in range(sizes.fleet)}
    flush_delay = inspect.signature(MembershipController).parameters["flush_delay"].default
    report.params[SECTION] = {
        **sizes.__dict__,
        "backend": "sqlite, synchronous=FULL",
        "flush_delay_s": flush_delay,
    }
    with tempfile.TemporaryDirectory(prefix="fleetplane-bench-e2e-") as tmp:
        path = Path(tmp) / "store.db"
        start = time.perf_counter()
        _populate(path, sites, selectors)
        report.add(
            SECTION,
            "load_s",
            f"load {sizes.fleet:,} sites + {sizes.virtual} VS (synchronous=OFF)",
            time.perf_counter() - start,
            "s",
        )
        asyncio.run(_measure(path, sizes, rng, sites, selectors, report))
