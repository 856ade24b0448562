"""kill -9 in the middle of a write stream loses nothing the server acknowledged, on both backends."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
SITES = f"{API}/sites"
WRITERS = 4
ACKS_BEFORE_KILL = 80


def http_for(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, verify=server.tls, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def rv_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Watcher(threading.Thread):
    """Follow a watch until the connection breaks (the server is killed) or ``until`` names arrive."""

    def __init__(self, server: ServerProcess, key: str, since: int, until: str = "") -> None:
        super().__init__(daemon=True)
        self.server, self.key, self.since, self.until = server, key, since, until
        self.events: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        params = {"watch": "true", "resourceVersion": str(self.since), "timeoutSeconds": "60"}
        try:
            with (
                http_for(self.server, self.key) as http,
                http.stream("GET", SITES, params=params, timeout=httpx.Timeout(10, read=70)) as resp,
            ):
                assert resp.status_code == 200, resp.read()
                self.connected.set()
                for line in resp.iter_lines():
                    if line.strip():
                        self.events.append(json.loads(line))
                        if self.until and self.events[-1]["object"]["metadata"]["name"] == self.until:
                            return
        except httpx.TransportError:
            pass  # the server died under us: expected
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill9_loses_no_acknowledged_write(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = "" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, store_url=store_url).start()
    key = server.admin_key
    with http_for(server, key) as http:
        rv0 = int(http.get(SITES).json()["metadata"]["resourceVersion"])
    run = uuid.uuid4().hex[:6]

    acked: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    unexpected: list[str] = []

    def writer(i: int) -> None:
        with http_for(server, key) as http:
            for n in range(100_000):
                name = f"d{run}-w{i}-{n:05d}"
                body = {
                    "metadata": {"name": name, "labels": {"writer": str(i), "run": run}},
                    "spec": {
                        "displayName": f"writer {i} object {n}",
                        "coordinates": {"latitude": i, "longitude": n % 180},
                    },
                }
                try:
                    resp = http.post(SITES, json=body)
                except httpx.TransportError:
                    return  # killed mid-request: not acknowledged, may or may not exist
                if resp.status_code != 201:
                    unexpected.append(f"{resp.status_code} {resp.text[:200]}")
                    return
                with lock:
                    acked[name] = resp.json()

    watcher = Watcher(server, key, rv0)
    watcher.start()
    assert watcher.connected.wait(10)
    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < ACKS_BEFORE_KILL and time.monotonic() < deadline and not unexpected:
        time.sleep(0.01)
    server.kill9()
    for t in threads:
        t.join(15)
    watcher.join(15)
    assert not unexpected, unexpected
    assert watcher.error is None, watcher.error
    assert len(acked) >= ACKS_BEFORE_KILL, f"only {len(acked)} writes acknowledged before the deadline"
    max_acked = max(rv_of(o) for o in acked.values())
    before = watcher.events
    assert before, "the watch saw nothing before the kill"
    last_seen = rv_of(before[-1]["object"])

    restarted = ServerProcess(data_dir, store_url=store_url).start()
    try:
        assert restarted.admin_key == key  # the same data dir keeps its admin key
        with http_for(restarted, key) as http:
            # Every acknowledged object is there, exactly as acknowledged.
            for name, obj in acked.items():
                resp = http.get(f"{SITES}/{name}")
                assert resp.status_code == 200, f"acknowledged {name} lost after kill -9: {resp.text}"
                assert resp.json() == obj
            listed = http.get(SITES, params={"labelSelector": f"run={run}"}).json()
            assert int(listed["metadata"]["resourceVersion"]) >= max_acked
            present = {o["metadata"]["name"]: o for o in listed["items"]}
            assert set(acked) <= set(present)
            # Revisions never go backwards: the next write comes after everything acknowledged.
            end = f"d{run}-end"
            created = http.post(SITES, json={"metadata": {"name": end, "labels": {"run": run}}})
            assert created.status_code == 201, created.text
            assert rv_of(created.json()) > max(rv_of(o) for o in present.values())

        # Resume the watch from the last revision seen before the kill: no gap, no repeat.
        resumed = Watcher(restarted, key, last_seen, until=end)
        resumed.start()
        resumed.join(30)
        assert not resumed.is_alive() and resumed.error is None, resumed.error
        after = resumed.events
        revs = [rv_of(e["object"]) for e in before + after]
        assert revs == sorted(set(revs)), "watch events out of order or repeated across the restart"
        added = [e["object"]["metadata"]["name"] for e in before + after if e["type"] == "ADDED"]
        assert len(added) == len(set(added))
        assert set(added) == set(present) | {end}, "the watch missed objects across the restart"
        for event in before + after:
            name = event["object"]["metadata"]["name"]
            if name in acked:
                assert event["object"] == acked[name]
    finally:
        restarted.stop()
