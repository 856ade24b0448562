"""Store throughput and list latency, SQLite and PostgreSQL side by side.

Per backend, on a fresh store: one writer creates the small fleet (``writes/s, 1 writer``),
four threads create the large fleet (``writes/s, 4 threads``), then full lists of both
fleets and a selector list of the large one are timed.
"""

from __future__ import annotations

import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

from bench.common import Report, percentile, site_labels, timed_ms
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Store
from fleetplane.core.store.postgres import PostgresStore
from fleetplane.core.store.sqlite import SqliteStore
from fleetplane.kinds import SITE
from fleetplane.testing.postgres import ThrowawayPostgres, postgres_available

SECTION = "store"
SELECTOR = "region in (eu-west,eu-central,us-east),env=prod"
SMALL_TENANT, LARGE_TENANT = "small", "large"


@dataclass(frozen=True)
class StoreSizes:
    small: int  # objects written by one writer, then listed
    large: int  # objects written by four threads, then listed
    threads: int
    list_small_repeats: int
    list_large_repeats: int

    @classmethod
    def for_run(cls, quick: bool) -> StoreSizes:
        if quick:
            return cls(small=200, large=1_000, threads=4, list_small_repeats=20, list_large_repeats=5)
        return cls(small=1_000, large=10_000, threads=4, list_small_repeats=100, list_large_repeats=20)


def _site(name: str, labels: dict[str, str]) -> dict[str, object]:
    return SITE.normalize({"metadata": {"name": name, "labels": labels}, "spec": {}})


def _objects(prefix: str, count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [_site(f"{prefix}-{i:05d}", site_labels(rng)) for i in range(count)]


def _measure(store: Store, column: str, sizes: StoreSizes, report: Report) -> None:
    small = _objects("s", sizes.small, seed=1)
    large = _objects("l", sizes.large, seed=2)

    start = time.perf_counter()
    for obj in small:
        store.create(SMALL_TENANT, obj)
    single = sizes.small / (time.perf_counter() - start)
    report.add(
        SECTION, f"{column}.writes_per_s.single", "create Site, 1 writer", single, "writes/s", column=column
    )

    chunks = [large[i :: sizes.threads] for i in range(sizes.threads)]

    def write(chunk: list[dict[str, object]]) -> None:
        for obj in chunk:
            store.create(LARGE_TENANT, obj)

    start = time.perf_counter()
    with ThreadPoolExecutor(sizes.threads) as pool:
        list(pool.map(write, chunks))
    threaded = sizes.large / (time.perf_counter() - start)
    report.add(
        SECTION,
        f"{column}.writes_per_s.threads",
        f"create Site, {sizes.threads} threads",
        threaded,
        "writes/s",
        column=column,
    )

    def list_all(tenant: str, expect: int) -> None:
        got = len(store.list(tenant, SITE.kind).items)
        if got != expect:
            raise RuntimeError(f"listed {got} objects of {tenant}, expected {expect}")

    for key, tenant, count, repeats in (
        ("list_small", SMALL_TENANT, sizes.small, sizes.list_small_repeats),
        ("list_large", LARGE_TENANT, sizes.large, sizes.list_large_repeats),
    ):
        samples = timed_ms(partial(list_all, tenant, count), repeats)
        for pct in (50, 99):
            report.add(
                SECTION,
                f"{column}.{key}.p{pct}_ms",
                f"list {count:,} Sites p{pct}",
                percentile(samples, pct),
                "ms",
                column=column,
            )

    selector = parse_selector(SELECTOR)
    matched = len(store.list(LARGE_TENANT, SITE.kind, selector=selector).items)
    samples = timed_ms(
        lambda: store.list(LARGE_TENANT, SITE.kind, selector=selector), sizes.list_large_repeats
    )
    for pct in (50, 99):
        report.add(
            SECTION,
            f"{column}.list_selector.p{pct}_ms",
            f"selector list of {sizes.large:,} ({matched} match) p{pct}",
            percentile(samples, pct),
            "ms",
            column=column,
        )


def run(report: Report, quick: bool) -> None:
    sizes = StoreSizes.for_run(quick)
    report.params[SECTION] = {
        **sizes.__dict__,
        "selector": SELECTOR,
        "sqlite": "file in a temp dir, WAL, synchronous=FULL",
        "postgres": "ThrowawayPostgres (fsync=on, synchronous_commit=on)",
    }
    with tempfile.TemporaryDirectory(prefix="fleetplane-bench-") as tmp:
        sqlite = SqliteStore(Path(tmp) / "store.db")
        try:
            _measure(sqlite, "sqlite", sizes, report)
        finally:
            sqlite.close()
    if not postgres_available():
        report.notes.append("PostgreSQL binaries not found: store figures for postgres are missing")
        return
    with ThrowawayPostgres() as pg:
        with psycopg.connect(pg.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            report.params[SECTION]["postgres_version"] = str(row[0]) if row else "?"
        store = PostgresStore(pg.sqlalchemy_url)
        try:
            _measure(store, "postgres", sizes, report)
        finally:
            store.close()
