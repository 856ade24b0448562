"""Metrics history: every site's current load and a bounded, downsampled history, kept in
``SiteMetrics`` objects (``kinds/site_metrics.py``; docs/alerts.md, "Metrics history"),
stored columnar (``Column``).

The leader follows the Sites: each site report (a new ``lastSeen``) is one sample of CPU and
memory (in use / allocatable, as the health score sees them) and disk (in use / capacity).
Samples fold, in memory, into the open bucket of the finest resolution (1 minute by
default); a bucket closes when a sample of a later window comes or its window has passed,
and becomes one point (the means). A coarser resolution's point is the mean of the finer
points of its window, made when that window is complete, so the roll-ups are rebuilt from
what is stored and a restart loses at most the open buckets. Points older than their
resolution's retention are dropped: a site's history never grows past
``sum(retention / step)`` points.

Writes are batched: every ``flush_interval`` the sites whose history changed are written,
``MAX_BATCH`` per transaction; a site report itself never writes anything here. The flush
is spread over the interval, one of ``SLICES`` fixed parts of the fleet at a time, so that
10,000 sites cost a few hundred writes every few seconds rather than one burst of 10,000
that delays whatever the server is doing then (a fan-out, a rollout wave).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
import zlib
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, cast

from fleetplane.controllers.health import disk_percent, load_percent
from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import SITE, SITE_METRICS

__all__ = ["DEFAULT_RETENTION", "MetricsHistoryController", "Resolution", "decode"]
__all__ += ["parse_retention"]

log = logging.getLogger(__name__)
SiteKey = tuple[str, str]
Point = list[float | None]  # [epoch seconds (window start), cpu %, memory %, disk %]
MAX_BATCH = 256
SLICES = 12  # the flush loop writes one part of the sites every flush_interval / SLICES
DEFAULT_RETENTION = "1m:3h,10m:24h,1h:7d"
_SPAN = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A step without a value, in a Column's array. Not NaN: -inf equals itself, so a column without
# a gap is found so with one C-speed ``in`` (a percentage is never -inf).
_MISSING = float("-inf")


@dataclass(frozen=True)
class Resolution:
    name: str
    step: int  # seconds
    keep: int  # seconds

    @property
    def max_points(self) -> int:
        return max(1, self.keep // self.step)


def _seconds(text: str) -> int:
    match = _SPAN.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a positive span such as 30s, 1m, 24h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_retention(text: str) -> tuple[Resolution, ...]:
    """``"1m:3h,10m:24h,1h:7d"``: per resolution its step and how long it is kept. Steps must
    grow, each a multiple of the previous, and a resolution must keep at least one step of
    the next (its points are what the next is made of)."""
    out: list[Resolution] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        step_text, sep, keep_text = part.partition(":")
        if not sep:
            raise ValueError(f"{part!r}: expected STEP:RETENTION, e.g. 1m:3h")
        step, keep = _seconds(step_text), _seconds(keep_text)
        if keep < step:
            raise ValueError(f"{part!r}: the retention is shorter than the step")
        if out and (step <= out[-1].step or step % out[-1].step):
            raise ValueError(f"{part!r}: each step must be a larger multiple of the previous one")
        if out and out[-1].keep < step:
            raise ValueError(f"{part!r}: the previous resolution must keep at least {step_text}")
        out.append(Resolution(step_text.strip(), step, keep))
    if not out:
        raise ValueError("at least one resolution is needed, e.g. 1m:3h")
    return tuple(out)


def decode(series: dict[str, Any]) -> list[Point]:
    """A stored (columnar) series as ``[t, cpu, memory, disk]`` rows, steps without data left out."""
    start, step = series.get("start"), int(series.get("stepSeconds") or 0)
    if not isinstance(start, int | float) or step <= 0:
        return []
    columns = [series.get(name) or [] for name in ("cpu", "memory", "disk")]
    points: list[Point] = []
    for i in range(max(len(c) for c in columns)):
        values = [c[i] if i < len(c) else None for c in columns]
        if any(v is not None for v in values):
            points.append([float(start + i * step), *values])
    return points


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None and v != _MISSING]
    return round(sum(known) / len(known), 1) if known else None


def _values(stored: Any) -> array[float]:
    """A stored column (numbers and nulls) as a ``Column`` holds it: ``_MISSING`` for null."""
    if not isinstance(stored, list):
        return array("d")
    return array(
        "d",
        (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else _MISSING for v in stored),
    )


@dataclass(slots=True)
class _Bucket:
    """A site's open window: per metric the sum and the count of its samples, not the samples
    (a site may report every few seconds, and a list of them grew with each report)."""

    start: int
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, sample: tuple[float | None, ...]) -> None:
        for i, value in enumerate(sample):
            if value is not None:
                self.sums[i] += value
                self.counts[i] += 1

    def point(self) -> Point:
        means = (round(total / n, 1) if n else None for total, n in zip(self.sums, self.counts, strict=True))
        return [float(self.start), *means]


def _listed(column: array[float]) -> list[float | None]:
    """A column as stored: a list, None for a step without a value."""
    values = cast(list[float | None], column.tolist())  # a new list already: no second copy
    if _MISSING in values:
        values = [None if v == _MISSING else v for v in values]
    return values


class Column:
    """One resolution of one site, columnar as stored: value ``i`` of ``cpu``/``memory``/``disk``
    is the step starting at ``start + i * step``. Appending and trimming are array operations
    (C speed), so a flush of 10,000 sites does not hold the event loop.

    A column is an ``array('d')``, ``_MISSING`` where a step has no value: 8 bytes a value. A site at
    the default retention keeps 1,476 values; as lists of Python floats they were 50 KB of
    the server's memory per site (half a gigabyte at 10,000 sites, reached after a week),
    now 12 KB (``bench/alerts.py``, "history.memory_kb_per_site")."""

    __slots__ = ("level", "start", "values")

    def __init__(self, level: Resolution, stored: dict[str, Any] | None = None) -> None:
        self.level = level
        stored = stored or {}
        start = stored.get("start")
        ok = isinstance(start, int | float) and stored.get("stepSeconds") == level.step
        self.start: int | None = int(start) if ok and isinstance(start, int | float) else None
        self.values: tuple[array[float], ...] = tuple(
            _values(stored.get(name)) if self.start is not None else array("d")
            for name in ("cpu", "memory", "disk")
        )

    def __len__(self) -> int:
        return max(len(v) for v in self.values)

    @property
    def end(self) -> int | None:
        """Where the next step starts."""
        return None if self.start is None else self.start + len(self) * self.level.step

    def append(self, t: int, row: tuple[float | None, ...]) -> None:
        if self.start is None:
            self.start = t
        index = (t - self.start) // self.level.step
        if index < len(self):
            return  # not after what we have (a clock step back): keep the first
        for column, value in zip(self.values, row, strict=True):
            column.extend(repeat(_MISSING, index - len(column)))
            column.append(_MISSING if value is None else value)

    def means(self, since: int, until: int) -> tuple[float | None, ...] | None:
        """Means over the steps in ``[since, until)``; None when there is no value there."""
        if self.start is None:
            return None
        lo = max(0, (since - self.start) // self.level.step)
        hi = min(len(self), max(0, (until - self.start) // self.level.step))
        if lo >= hi:
            return None
        out = tuple(_mean(column[lo:hi]) for column in self.values)
        return out if any(v is not None for v in out) else None

    def trim(self, now: float) -> None:
        if self.start is None:
            return
        step = self.level.step
        old = max(0, -int((self.start - (now - self.level.keep)) // step))  # steps before the cutoff
        drop = min(len(self), max(old, len(self) - self.level.max_points))
        if drop:
            for column in self.values:
                del column[:drop]
            self.start += drop * step
        if not len(self):
            self.start = None

    def stored(self) -> dict[str, Any]:
        cpu, memory, disk = (_listed(c) for c in self.values)
        level = self.level
        return {"resolution": level.name, "stepSeconds": level.step, "start": self.start, "cpu": cpu,
                "memory": memory, "disk": disk}  # fmt: skip


@dataclass(slots=True)
class SiteHistory:
    columns: list[Column]
    current: dict[str, Any] = field(default_factory=dict)
    bucket: _Bucket | None = None
    last_seen: str | None = None
    dirty: bool = False
    part: int = 0  # which of the SLICES flush ticks writes this site

    def add(self, now: float, sample: tuple[float | None, ...]) -> None:
        cpu, memory, disk = sample
        # "at" formatted at flush time: a report stays a few dict writes.
        self.current = {"at": now, "cpuPercent": cpu, "memoryPercent": memory, "diskPercent": disk}
        self.dirty = True
        step = self.columns[0].level.step
        start = int(now // step * step)
        if self.bucket is not None and self.bucket.start != start:
            self.close(now)
        if self.bucket is None:
            self.bucket = _Bucket(start)
        self.bucket.add(sample)

    def close(self, now: float) -> None:
        """Turn the open bucket into a point, roll up what completed, drop what expired."""
        if self.bucket is None:
            return
        point = self.bucket.point()
        self.columns[0].append(int(point[0] or 0), tuple(point[1:]))
        self.bucket = None
        for finer, coarser in zip(self.columns, self.columns[1:], strict=False):
            self._roll_up(finer, coarser, now)
        for column in self.columns:
            column.trim(now)
        self.dirty = True

    @staticmethod
    def _roll_up(finer: Column, coarser: Column, now: float) -> None:
        """Every step of ``coarser`` that ended by ``now`` (its finer points are all closed:
        only the current finer bucket is ever open) and is not rolled up yet."""
        if finer.start is None:
            return
        step = coarser.level.step
        first = finer.start // step * step
        window = max(first, coarser.end or first)
        while window + step <= now:
            row = finer.means(window, window + step)
            if row is not None:
                coarser.append(window, row)
            window += step

    def status(self) -> dict[str, Any]:
        current = dict(self.current)
        if isinstance(current.get("at"), float | int):
            current["at"] = _stamp(float(current["at"]))
        return {"current": current, "series": [c.stored() for c in self.columns]}


class MetricsHistoryController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        retention: tuple[Resolution, ...] | str = DEFAULT_RETENTION,
        flush_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.levels = parse_retention(retention) if isinstance(retention, str) else retention
        self.flush_interval = flush_interval
        self.clock = clock
        self.sites: dict[SiteKey, SiteHistory] = {}
        self.gone: set[SiteKey] = set()  # sites deleted whose SiteMetrics must go
        self.synced = asyncio.Event()
        self.writes = 0  # SiteMetrics written (tests, metrics)

    async def run(self) -> None:
        await run_controller("metrics-history", self._sync_and_follow, self._flush_loop)

    def _history(self, key: SiteKey) -> SiteHistory:
        history = self.sites.get(key)
        if history is None:
            # A stable part per site (not hash(), which changes per process): each site is
            # flushed at the same point of every interval, before and after a restart.
            part = zlib.crc32(f"{key[0]}/{key[1]}".encode()) % SLICES
            history = self.sites[key] = SiteHistory([Column(level) for level in self.levels], part=part)
        return history

    def _load(self, tenant: str, obj: Obj) -> None:
        """A stored SiteMetrics: its points per resolution we keep (others are dropped)."""
        history = self._history((tenant, obj["metadata"]["name"]))
        status = obj.get("status") or {}
        stored = {s.get("resolution"): s for s in status.get("series") or [] if isinstance(s, dict)}
        history.columns = [Column(level, stored.get(level.name)) for level in self.levels]
        history.current = dict(status.get("current") or {})

    def observe(self, tenant: str, site: Obj) -> None:
        """One Site event: a sample when it carries a new report."""
        status = site.get("status") or {}
        seen = status.get("lastSeen")
        if not isinstance(seen, str) or not seen:
            return
        history = self._history((tenant, site["metadata"]["name"]))
        if history.last_seen == seen:
            return  # not a report (a health write, a relabel)
        history.last_seen = seen
        cpu, memory = load_percent(status)
        disk = disk_percent(status)
        if cpu is None and memory is None and disk is None:
            return
        rounded = tuple(None if v is None else round(v, 1) for v in (cpu, memory, disk))
        history.add(self.clock(), rounded)

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, (SITE.kind, SITE_METRICS.kind))
        self.sites, self.gone = {}, set()
        sites = set()
        for tenant, obj in sorted(objects, key=lambda item: item[1]["kind"] != SITE_METRICS.kind):
            if obj["kind"] == SITE_METRICS.kind:
                self._load(tenant, obj)
            else:
                sites.add((tenant, obj["metadata"]["name"]))
                seen = (obj.get("status") or {}).get("lastSeen")
                history = self._history((tenant, obj["metadata"]["name"]))
                history.last_seen = seen if isinstance(seen, str) else None  # sampled already
        self.gone = set(self.sites) - sites
        self.synced.set()
        watch = WatchFilter(ANY_TENANT, (SITE.kind,))
        async for ev in self.hub.watch(watch, since=revision):
            key = (ev.tenant, ev.object["metadata"]["name"])
            if ev.type is EventType.DELETED:
                self.sites.pop(key, None)
                self.gone.add(key)
            else:
                self.gone.discard(key)
                self.observe(ev.tenant, ev.object)

    async def _flush_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.flush_interval / SLICES)
            try:
                await self.flush(part=tick)
            except Exception:
                log.exception("metrics history flush failed")
            tick = (tick + 1) % SLICES

    async def flush(self, part: int | None = None) -> int:
        """Close buckets whose window passed, write every changed history (or those of one
        ``part`` of the sites, 0 to ``SLICES - 1``); how many written. Deleted sites' metrics
        go at every call."""
        now = self.clock()
        step = self.levels[0].step
        due: list[tuple[SiteKey, dict[str, Any] | None]] = []
        for key, history in self.sites.items():
            if part is not None and history.part != part:
                continue
            if history.bucket is not None and now >= history.bucket.start + step:
                history.close(now)
            if history.dirty:
                history.dirty = False
                due.append((key, history.status()))
        due += [(key, None) for key in sorted(self.gone)]
        written = 0
        for start in range(0, len(due), MAX_BATCH):
            batch = due[start : start + MAX_BATCH]
            try:
                written += await asyncio.to_thread(self._write, batch)
            except Exception as exc:
                log.warning("could not write the metrics history: %s", exc)
                for key, _ in batch:
                    if key in self.sites:
                        self.sites[key].dirty = True
                continue
            self.gone -= {key for key, status in batch if status is None}
        self.writes += written
        return written

    def _write(self, batch: list[tuple[SiteKey, dict[str, Any] | None]]) -> int:
        count = 0
        with self.store.batch() as tx:
            for (tenant, name), status in batch:
                current = tx.get_or_none(tenant, SITE_METRICS.kind, "", name)
                if status is None:
                    if current is not None:
                        try:
                            tx.delete(tenant, SITE_METRICS.kind, "", name)
                        except ApiError as exc:
                            if exc.code != 404:
                                raise
                    continue
                if current is None:
                    tx.create(tenant, SITE_METRICS.normalize({"metadata": {"name": name}, "status": status}))
                else:
                    tx.update(tenant, {**current, "status": status}, part="status", stored=current)
                count += 1
        return count
