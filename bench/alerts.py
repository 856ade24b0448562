"""Alerts and metrics history at fleet scale (in process, SQLite store in a temp dir).

* evaluate: the five default rules plus one rule per virtual site over ``sites`` sites; one
  tick that fires an alert for 10 % of the sites (creates the Alerts), then steady ticks
  where nothing changes (target 1 s per tick at 10,000 sites: the default interval is 15 s).
* history: ``sites`` site reports folded (``observe``, per-report cost), then one flush that
  writes every site's ``SiteMetrics`` in batches (target 30 s at 10,000 sites: the default
  flush interval is 60 s), the size of one ``SiteMetrics`` at full default retention, and the
  server's memory for one site's history at full retention (every site reaches it in a week).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Report, percentile, site_labels
from fleetplane.controllers.alerts import DEFAULT_RULES, AlertController
from fleetplane.controllers.health_controller import FleetHealth
from fleetplane.controllers.metrics_history import Column, MetricsHistoryController, SiteHistory
from fleetplane.core.objects import now_rfc3339
from fleetplane.core.store import open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import ALERT_RULE, SITE, VIRTUAL_SITE

SECTION = "alerts"
TENANT = "bench"
GIB = 1 << 30
TICK_TARGET_S = 1.0
FLUSH_TARGET_S = 30.0


@dataclass(frozen=True)
class AlertSizes:
    sites: int
    virtual: int
    ticks: int

    @classmethod
    def for_run(cls, quick: bool) -> AlertSizes:
        return cls(sites=1_000, virtual=10, ticks=3) if quick else cls(sites=10_000, virtual=50, ticks=10)


def _site(name: str, labels: dict[str, str], memory: float, report: int) -> dict[str, Any]:
    status = {
        "phase": "Online",
        "lastSeen": f"{now_rfc3339()}#{report}",  # a new report each time
        "usage": {"cpuMillis": 2000, "memoryBytes": int(memory / 100 * 16 * GIB), "diskBytes": 30 * GIB},
        "allocatable": {"cpuMillis": 8000, "memoryBytes": 16 * GIB},
        "nodes": [{"name": "n1", "diskBytes": 100 * GIB}],
    }
    return {"kind": "Site", "metadata": {"name": name, "labels": labels}, "status": status}


def _evaluate(report: Report, sizes: AlertSizes, root: Path, rng: random.Random) -> None:
    store = open_store(f"sqlite:///{root / 'alerts.db'}")
    view = FleetHealth()
    now = time.time()
    for i in range(sizes.sites):
        hot = i % 10 == 0
        view.set_site(
            TENANT, SITE.normalize(_site(f"s-{i:06d}", site_labels(rng), 95 if hot else 40, 0)), now
        )
    for i in range(sizes.virtual):
        vs = {
            "metadata": {"name": f"vs-{i}", "namespace": "default"},
            "spec": {"selector": f"model-year={2015 + i % 10}"},
        }
        view.set_virtual_site(TENANT, VIRTUAL_SITE.normalize(vs))
        rule = {
            "expr": "site.memory.percent",
            "op": ">",
            "threshold": 90,
            "scope": {"virtualSites": [f"vs-{i}"]},
        }
        store.create(
            TENANT,
            ALERT_RULE.normalize({"metadata": {"name": f"vs-{i}", "namespace": "default"}, "spec": rule}),
        )
    for name, spec in DEFAULT_RULES:
        store.create(
            TENANT,
            ALERT_RULE.normalize(
                {"metadata": {"name": name, "namespace": "default"}, "spec": {**spec, "for": "0s"}}
            ),
        )

    async def scenario() -> tuple[float, list[float]]:
        hub = WatchHub(store)
        await hub.start()
        ctl = AlertController(store, hub, lambda: view, interval=3600, default_rules=False)
        task = asyncio.create_task(ctl.run())
        await ctl.synced.wait()
        ctl.enable()
        start = time.perf_counter()
        await ctl.tick()
        first = time.perf_counter() - start
        steady = []
        for _ in range(sizes.ticks):
            start = time.perf_counter()
            await ctl.tick()
            steady.append(time.perf_counter() - start)
        task.cancel()
        await hub.stop()
        return first, steady

    first, steady = asyncio.run(scenario())
    store.close()
    rules = len(DEFAULT_RULES) + sizes.virtual
    where = f"{sizes.sites:,} sites, {rules} rules"
    report.add(SECTION, "evaluate.first_tick_s", f"first tick, 10 % of sites firing ({where})", first, "s")
    report.add(SECTION, "evaluate.steady_p50_s", f"steady tick p50 ({where})", percentile(steady, 50), "s")
    report.add(
        SECTION, "evaluate.steady_max_s", f"steady tick max ({where})", max(steady), "s", target=TICK_TARGET_S
    )


def _history(report: Report, sizes: AlertSizes, root: Path) -> None:
    store = open_store(f"sqlite:///{root / 'history.db'}")
    clock = [time.time()]
    ctl = MetricsHistoryController(store, WatchHub(store), clock=lambda: clock[0])
    # One site at full default retention: 180 + 144 + 168 points.
    one = MetricsHistoryController(store, WatchHub(store), clock=lambda: clock[0])
    t = clock[0]
    for n in range(7 * 24 * 60 + 61):
        clock[0] = t + n * 60
        one.observe(TENANT, _site("full", {}, 40 + n % 30, n))
    asyncio.run(one.flush())
    size = len(json.dumps(store.get(TENANT, "SiteMetrics", "", "full")["status"]))
    full = one.sites[(TENANT, "full")].columns
    memory_kb = _history_memory_kb(full)
    sites = [_site(f"s-{i:06d}", {}, 30 + i % 60, 0) for i in range(sizes.sites)]
    start = time.perf_counter()
    for n, obj in enumerate(sites):
        obj["status"]["lastSeen"] = f"r{n}"
        ctl.observe(TENANT, obj)
    observe_us = (time.perf_counter() - start) / len(sites) * 1e6
    clock[0] += 61
    created = asyncio.run(ctl.flush())  # creates every SiteMetrics
    for history in ctl.sites.values():  # steady state: every site at full retention
        history.columns = [Column(c.level, c.stored()) for c in full]
        history.dirty = True
    start = time.perf_counter()
    written = asyncio.run(ctl.flush())
    flush = time.perf_counter() - start
    store.close()
    report.add(SECTION, "history.observe_us", "fold one site report (observe)", observe_us, "us")
    label = f"flush {written:,} full SiteMetrics ({created:,} created before; batches of 256)"
    report.add(SECTION, "history.flush_s", label, flush, "s", target=FLUSH_TARGET_S)
    report.add(SECTION, "history.object_kb", "one SiteMetrics at full default retention", size / 1024, "KB")
    label = "server memory per site for its history at full default retention (a week on)"
    report.add(SECTION, "history.memory_kb_per_site", label, memory_kb, "KB")


def _history_memory_kb(full: list[Column], copies: int = 200) -> float:
    """What the server holds per site for a history at full retention: ``copies`` histories
    loaded from their stored JSON, as a restarted server loads them, under tracemalloc (the
    parsed JSON is dropped; what stays is the histories)."""
    blob = json.dumps([c.stored() for c in full])
    tracemalloc.start()
    try:
        held = []
        for _ in range(copies):
            stored = json.loads(blob)
            held.append(SiteHistory([Column(c.level, form) for c, form in zip(full, stored, strict=True)]))
        del stored
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == copies
    return used / copies / 1024


def run(report: Report, quick: bool) -> None:
    sizes = AlertSizes.for_run(quick)
    report.params[SECTION] = dict(sizes.__dict__)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        _evaluate(report, sizes, Path(tmp), rng)
        _history(report, sizes, Path(tmp))
