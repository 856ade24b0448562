"""Metrics history: samples per site report fold into 1-minute points, roll up into coarser
resolutions, stay bounded by the retention, are written in batches (never per report), and
survive a restart; plus the load distribution over the fleet view."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.health_controller import FleetHealth
from fleetplane.controllers.load_distribution import distribution, resource_distribution
from fleetplane.controllers.metrics_history import (
    SLICES,
    Column,
    MetricsHistoryController,
    decode,
    parse_retention,
)
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import SITE, SITE_METRICS
from tests.controllers.test_alert_eval import NOW, site
from tests.support.controllers import running_controller

T0 = 1_800_000_000.0 // 3600 * 3600  # on the hour: windows line up


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def running(store: Store, **kw: Any) -> contextlib.AbstractAsyncContextManager[MetricsHistoryController]:
    """The controller running on a live watch, once it has read the store."""
    return running_controller(store, lambda hub: MetricsHistoryController(store, hub, **kw))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def report(ctl: MetricsHistoryController, name: str, n: int, memory: float) -> None:
    """One site report as the watch shows it: a new lastSeen."""
    obj = site(name, memory=memory)
    obj["status"]["lastSeen"] = f"report-{n}"
    ctl.observe("acme", obj)


def stored(store: Store, name: str) -> dict[str, Any]:
    status: dict[str, Any] = store.get("acme", SITE_METRICS.kind, "", name)["status"]
    return status


def points(status: dict[str, Any], resolution: str) -> list[list[float | None]]:
    (series,) = [s for s in status["series"] if s["resolution"] == resolution]
    return decode(series)


def test_retention_syntax() -> None:
    levels = parse_retention("1m:3h,10m:24h,1h:7d")
    assert [(r.name, r.step, r.keep, r.max_points) for r in levels] == [
        ("1m", 60, 10800, 180),
        ("10m", 600, 86400, 144),
        ("1h", 3600, 604800, 168),
    ]
    for bad in ("", "1m", "1m:30s", "10m:1h,1m:1h", "1m:1h,90s:2h", "1m:5m,10m:1h", "0m:1h", "1x:1h"):
        with pytest.raises(ValueError):
            parse_retention(bad)


def test_reports_fold_into_minute_points_and_roll_up(store: Store) -> None:
    clock = Clock()
    ctl = MetricsHistoryController(store, WatchHub(store), retention="1m:30m,10m:2h", clock=clock)
    n = 0
    for minute in range(21):
        for second in (0, 20, 40):  # three reports a minute: 40 % then 60 % memory, ...
            clock.now = T0 + minute * 60 + second
            n += 1
            report(ctl, "a", n, memory=40 if minute < 10 else 60)
    asyncio.run(ctl.flush())
    status = stored(store, "a")
    minutes = points(status, "1m")
    assert len(minutes) == 20  # minute 20 is still open
    assert minutes[0][0] == T0 and minutes[0][2] == pytest.approx(40, abs=0.2)
    assert minutes[-1][0] == T0 + 19 * 60 and minutes[-1][2] == pytest.approx(60, abs=0.2)
    tens = points(status, "10m")
    assert [p[0] for p in tens] == [T0, T0 + 600]  # the third window is not complete
    assert tens[0][2] == pytest.approx(40, abs=0.2) and tens[1][2] == pytest.approx(60, abs=0.2)
    assert status["current"]["memoryPercent"] == pytest.approx(60, abs=0.2)
    assert status["current"]["diskPercent"] == pytest.approx(30)


def test_history_stays_bounded_by_retention(store: Store) -> None:
    clock = Clock()
    ctl = MetricsHistoryController(store, WatchHub(store), retention="1m:10m,5m:30m", clock=clock)
    for minute in range(120):
        clock.now = T0 + minute * 60
        report(ctl, "a", minute, memory=50)
    asyncio.run(ctl.flush())
    status = stored(store, "a")
    assert len(points(status, "1m")) <= 10
    assert len(points(status, "5m")) <= 6
    assert min(p[0] or 0 for p in points(status, "1m")) >= clock.now - 600


def test_columnar_storage_keeps_gaps_and_round_trips() -> None:
    (level,) = parse_retention("1m:1h")
    column = Column(level)
    column.append(int(T0), (1.0, 2.0, None))
    column.append(int(T0) + 180, (4.0, None, 6.0))
    column.append(int(T0) + 60, (9.0, 9.0, 9.0))  # older than the newest: ignored
    series = column.stored()
    assert series == {
        "resolution": "1m",
        "stepSeconds": 60,
        "start": int(T0),
        "cpu": [1.0, None, None, 4.0],
        "memory": [2.0, None, None, None],
        "disk": [None, None, None, 6.0],
    }
    assert decode(series) == [[T0, 1.0, 2.0, None], [T0 + 180, 4.0, None, 6.0]]
    assert Column(level, series).stored() == series
    assert Column(level).stored()["start"] is None and decode(Column(level).stored()) == []
    # A roll-up's means leave the gaps out.
    assert column.means(int(T0), int(T0) + 240) == (2.5, 2.0, 6.0)
    assert column.means(int(T0) + 60, int(T0) + 180) is None
    # A stored value that is not a number (a damaged object) loads as a gap, not an error.
    damaged = Column(level, {**series, "cpu": [1.0, "x", True, 4], "memory": "not a list"})
    assert damaged.stored()["cpu"] == [1.0, None, None, 4.0] and damaged.stored()["memory"] == []


def test_reports_write_nothing_until_the_flush_which_batches_them(store: Store) -> None:
    clock = Clock()
    ctl = MetricsHistoryController(store, WatchHub(store), clock=clock)
    for i in range(30):
        report(ctl, f"s{i % 10}", i, memory=30)
    assert store.list("acme", SITE_METRICS.kind).items == []
    before = store.revision()
    assert asyncio.run(ctl.flush()) == 10
    assert store.revision() - before == 10  # one write per site, whatever the reports
    assert asyncio.run(ctl.flush()) == 0  # nothing new: nothing written


def test_the_flush_is_spread_over_the_interval_one_part_of_the_fleet_at_a_time(store: Store) -> None:
    """Each flush tick writes one part of the sites, so a large fleet never writes all its
    histories in one burst; over the SLICES ticks of an interval every site is written once."""
    clock = Clock()
    ctl = MetricsHistoryController(store, WatchHub(store), clock=clock)
    sites = 240
    for i in range(sites):
        report(ctl, f"s{i}", i, memory=30)
    per_tick = [asyncio.run(ctl.flush(part=tick)) for tick in range(SLICES)]
    assert sum(per_tick) == sites  # every site, once
    assert max(per_tick) <= sites // 4  # spread: no tick writes the bulk
    assert len(store.list("acme", SITE_METRICS.kind).items) == sites
    assert asyncio.run(ctl.flush()) == 0  # nothing left behind for a full flush


def test_the_running_flush_loop_writes_every_site_within_an_interval(store: Store) -> None:
    async def scenario() -> None:
        async with running(store, flush_interval=1.2) as ctl:
            for i in range(48):
                report(ctl, f"s{i}", i, memory=30)
            for _ in range(60):  # one interval is 1.2 s; allow for a slow machine
                if len(store.list("acme", SITE_METRICS.kind).items) == 48:
                    break
                await asyncio.sleep(0.1)
            assert len(store.list("acme", SITE_METRICS.kind).items) == 48

    asyncio.run(scenario())


def test_a_report_that_repeats_lastseen_is_not_a_sample(store: Store) -> None:
    clock = Clock()
    ctl = MetricsHistoryController(store, WatchHub(store), clock=clock)
    report(ctl, "a", 1, memory=30)
    report(ctl, "a", 1, memory=99)  # e.g. a health write: same report
    asyncio.run(ctl.flush())
    assert stored(store, "a")["current"]["memoryPercent"] == pytest.approx(30, abs=0.2)


def test_restart_keeps_the_history_and_deleting_the_site_deletes_it(store: Store) -> None:
    clock = Clock()
    store.create("acme", SITE.normalize({"metadata": {"name": "a"}}))
    first = MetricsHistoryController(store, WatchHub(store), retention="1m:1h", clock=clock)
    for minute in range(5):
        clock.now = T0 + minute * 60
        report(first, "a", minute, memory=45)
    asyncio.run(first.flush())
    assert len(points(stored(store, "a"), "1m")) == 4

    async def scenario() -> None:
        async with running(store, retention="1m:1h", clock=clock, flush_interval=3600) as again:
            clock.now = T0 + 6 * 60
            report(again, "a", 99, memory=55)
            await again.flush()
            assert len(points(stored(store, "a"), "1m")) == 4  # kept; minute 6 still open
            await asyncio.to_thread(store.delete, "acme", SITE.kind, "", "a")
            for _ in range(100):
                if ("acme", "a") in again.gone:
                    break
                await asyncio.sleep(0.02)
            await again.flush()
            assert store.get_or_none("acme", SITE_METRICS.kind, "", "a") is None

    asyncio.run(scenario())


def test_distribution_statements_histogram_and_quantiles() -> None:
    values = [10.0, 20.0, 80.0, 85.0, 95.0, None]
    d = resource_distribution(values, "memory", (75.0, 90.0))
    assert d["reported"] == 5 and d["mean"] == 58.0 and (d["min"], d["max"]) == (10.0, 95.0)
    assert d["quantiles"] == {"p50": 80.0, "p90": 95.0, "p99": 95.0}
    assert d["above"][0] == {
        "threshold": 75.0,
        "sites": 3,
        "percent": 60.0,
        "statement": "60 % of sites use more than 75 % of memory",
    }
    assert d["above"][1]["sites"] == 1
    bins = {b["from"]: b["sites"] for b in d["histogram"]}
    assert (bins[10], bins[20], bins[80], bins[90], bins[0]) == (1, 1, 2, 1, 0)
    assert resource_distribution([100.0], "cpu")["histogram"][-1]["sites"] == 1  # 100 % is the last bin
    empty = resource_distribution([], "cpu")
    assert empty["reported"] == 0 and empty["mean"] is None and empty["above"][0]["percent"] == 0.0


def test_distribution_over_the_fleet_view() -> None:
    view = FleetHealth()
    for i, memory in enumerate((20, 80, 90, 96)):
        view.set_site("acme", site(f"s{i}", memory=memory), NOW)
    d = distribution(view.entries("acme"), (75.0,))
    assert d["sites"] == 4
    assert d["memory"]["above"][0]["statement"] == "75 % of sites use more than 75 % of memory"
    assert d["disk"]["quantiles"]["p50"] == pytest.approx(30)
