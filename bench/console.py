"""Console: response time of the web console's fleet map, sites table and HTML with 10,000
sites, measured through real HTTP against the real server process.

The fleet is written straight into the server's SQLite store before it starts (10,000 Sites
with coordinates, labels and a reported status: load, heartbeat), so the server begins
exactly as it would after a restart with a large fleet; its health controller then scores
every site, and the figures are taken once those scores are written (the map is all colour).
Each figure is the time from sending a request to having read the whole response, on
loopback, with the browser's session cookie: an upper bound of the server time. The native
API's paged list (same page, same selector) is measured alongside for comparison.
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Report, percentile, site_labels, timed_ms
from bench.fanout import Server
from fleetplane.core.store import open_store
from fleetplane.kinds import SITE

SECTION = "console"
TENANT = "default"  # the server's bootstrap tenant: its admin key reads it
TARGET_P99_MS = 300.0
SELECTOR = "region in (eu-west,eu-north,jp-north),env=prod"
# A rough centre per region, so the dots land where the labels say.
CENTRES: dict[str, tuple[float, float]] = {
    "us-east": (40, -75), "us-west": (37, -120), "us-central": (41, -95), "ca-east": (45, -73),
    "ca-west": (50, -120), "mx-central": (20, -100), "br-south": (-23, -47), "ar-central": (-34, -62),
    "eu-west": (50, 0), "eu-central": (49, 10), "eu-north": (60, 18), "eu-south": (41, 12),
    "me-central": (24, 50), "af-south": (-28, 26), "in-west": (19, 74), "sg-central": (2, 103),
    "jp-north": (40, 141), "jp-south": (33, 131), "kr-central": (37, 127), "au-east": (-33, 150),
}  # fmt: skip


def _site(rng: random.Random, i: int, stamp: str) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = site_labels(rng)
    lat, lon = CENTRES[labels["region"]]
    obj = SITE.normalize(
        {
            "metadata": {"name": f"site-{i:05d}", "labels": labels},
            "spec": {
                "coordinates": {"latitude": lat + rng.uniform(-4, 4), "longitude": lon + rng.uniform(-6, 6)}
            },
        }
    )
    status = {
        "phase": "Online",
        "lastSeen": stamp,
        "softwareVersion": "1.4.2",
        "nodeCount": rng.randint(1, 5),
        # A spread of load, so the colours and the distribution are not all alike.
        "usage": {
            "cpuPercent": round(rng.betavariate(2, 3) * 100, 1),
            "memoryPercent": round(rng.betavariate(3, 2) * 100, 1),
        },
    }
    return obj, status


def populate(db: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    store = open_store(f"sqlite:///{db}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        for start in range(0, n, 1000):
            made = [_site(rng, i, stamp) for i in range(start, min(n, start + 1000))]
            with store.batch() as batch:
                for obj, status in made:
                    created = batch.create(TENANT, obj)
                    batch.update(TENANT, {**created, "status": status}, part="status")
    finally:
        store.close()


def _scored(http: httpx.Client, n: int, timeout: float = 300.0) -> float:
    """Wait until every site has a health score on the map; seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        r = http.get("/console/api/map")
        if r.status_code == 200:
            counts = r.json()["counts"]
            if sum(counts.values()) == n and counts["grey"] == 0:
                return time.monotonic() - start
        time.sleep(1.0)
    raise RuntimeError("the health of the fleet was not ready in time")


def _settled(server: Server, quiet_s: float = 5.0, timeout: float = 300.0) -> None:
    """Wait until the health controller stopped writing (its start-up pass is over)."""
    last, since, start = -1.0, time.monotonic(), time.monotonic()
    while time.monotonic() - start < timeout:
        text = server.http.get("/metrics").text
        writes = next(
            (
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("fleetplane_health_status_writes ")
            ),
            0.0,
        )
        if writes != last:
            last, since = writes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(1.0)


def run(report: Report, quick: bool) -> None:
    n = 1_000 if quick else 10_000
    repeats = 20 if quick else 60
    report.params[SECTION] = {"sites": n, "repeats": repeats, "selector": SELECTOR, "page": 50}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        root = Path(tmp)
        (root / "server").mkdir()
        t0 = time.perf_counter()
        populate(root / "server" / "fleetplane.db", n)
        report.add(SECTION, "populate_s", f"write {n:,} sites into the store", time.perf_counter() - t0, "s")
        server = Server(root)
        try:
            key = server.headers["Authorization"].removeprefix("Bearer ")
            browser = httpx.Client(base_url=server.url, verify=server.ctx, timeout=60)
            r = browser.post("/console/login", data={"key": key})
            if r.status_code != 303:
                raise RuntimeError(f"console login failed: {r.status_code} {r.text[:200]}")
            report.add(SECTION, "scored_s", "every site scored after start", _scored(browser, n), "s")
            _settled(server)
            size = len(browser.get("/console/api/map").content)
            report.add(SECTION, "map_kb", "map data size", size / 1024, "KiB")
            cases = [
                ("map", "map data (every site)", browser, "/console/api/map"),
                ("table", "sites table, page 1 of 50", browser, "/console/api/sites?limit=50"),
                (
                    "table_selector",
                    "sites table, selector, page 2",
                    browser,
                    "/console/api/sites?"
                    + str(httpx.QueryParams({"labelSelector": SELECTOR, "offset": 50, "limit": 50})),
                ),
                ("html", "console HTML shell", browser, "/console/"),
            ]
            native = [
                (
                    "api_list",
                    "native API list, page of 50",
                    server.http,
                    "/apis/fleetplane.io/v1/sites?limit=50",
                ),
                (
                    "api_list_selector",
                    "native API list, selector",
                    server.http,
                    "/apis/fleetplane.io/v1/sites?"
                    + str(httpx.QueryParams({"labelSelector": SELECTOR, "limit": 50})),
                ),
            ]
            for key_, label, http, path in cases + native:

                def get(http: httpx.Client = http, path: str = path) -> None:
                    r = http.get(path)
                    if r.status_code != 200:
                        raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")

                samples = timed_ms(get, repeats, warmup=3)
                target = TARGET_P99_MS if (key_, label, http, path) in cases else None
                report.add(SECTION, f"{key_}_p50_ms", f"{label} p50", percentile(samples, 50), "ms")
                report.add(
                    SECTION, f"{key_}_p99_ms", f"{label} p99", percentile(samples, 99), "ms", target=target
                )
            browser.close()
        finally:
            server.close()
    report.notes.append(
        f"console: {n:,} sites; times are request-to-last-byte on loopback with the session cookie "
        "(an upper bound of server time); the native API rows have no target (for comparison)"
    )
