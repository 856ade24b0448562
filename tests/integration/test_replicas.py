"""Two server replicas sharing one PostgreSQL database, as a highly available deployment runs them."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
SITES = f"{API}/sites"
LEADER_LINE = "this replica leads the controllers"
MERGE = {"Content-Type": "application/merge-patch+json"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def http_for(server: ServerProcess, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        verify=server.tls,
        headers={"Authorization": f"Bearer {key or server.admin_key}"},
        timeout=30,
    )


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def leads(server: ServerProcess) -> bool:
    return LEADER_LINE in server.log_path.read_text(errors="replace")


def members(http: httpx.Client, ns: str, name: str) -> list[str]:
    resp = http.get(f"{API}/namespaces/{ns}/virtualsites/{name}")
    assert resp.status_code == 200, resp.text
    out: list[str] = resp.json()["status"]["members"]
    return out


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(tmp_path / "a", store_url=pg_url).start()
    b = ServerProcess(tmp_path / "b", store_url=pg_url)
    try:
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_admin_keys_of_both_replicas_work_on_both(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    for key in (a.admin_key, b.admin_key):
        for server in (a, b):
            with http_for(server, key) as http:
                resp = http.get(f"{API}/tenants")
                assert resp.status_code == 200, f"{server.data_dir.name} refused a key: {resp.text}"
    # Restarting a replica keeps both keys working (no rotation on restart).
    b.stop()
    b.start()
    for key in (a.admin_key, b.admin_key):
        with http_for(a, key) as http:
            assert http.get(SITES).status_code == 200


def test_replica_with_copied_admin_key_shares_it(pg_url: str, tmp_path: Path) -> None:
    a = ServerProcess(tmp_path / "a", store_url=pg_url).start()
    b = ServerProcess(tmp_path / "b", store_url=pg_url)
    try:
        b.data_dir.mkdir(mode=0o700)
        (b.data_dir / "admin.key").write_text(a.admin_key + "\n")
        (b.data_dir / "admin.key").chmod(0o600)
        b.start()
        assert b.admin_key == a.admin_key
        for server in (a, b):
            with http_for(server, a.admin_key) as http:
                assert http.get(f"{API}/tenants").status_code == 200
    finally:
        b.stop()
        a.stop()


def test_watch_on_one_replica_sees_writes_through_the_other_within_a_second(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    key = a.admin_key
    group = uniq("notify")
    events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
    connected = threading.Event()

    def follow() -> None:
        params = {"watch": "true", "labelSelector": f"group={group}", "timeoutSeconds": "30"}
        with (
            http_for(b, key) as http,
            http.stream("GET", SITES, params=params, timeout=httpx.Timeout(10, read=40)) as resp,
        ):
            connected.set()
            seen = 0
            for line in resp.iter_lines():
                if line.strip():
                    events.put((time.monotonic(), json.loads(line)))
                    seen += 1
                    if seen == 3:
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert connected.wait(10)
    time.sleep(0.2)
    with http_for(a, key) as http:
        for i in range(3):
            name = f"{group}-{i}"
            sent = time.monotonic()
            assert (
                http.post(SITES, json={"metadata": {"name": name, "labels": {"group": group}}}).status_code
                == 201
            )
            arrived, event = events.get(timeout=5)
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", name)
            assert arrived - sent < 1.0, f"replica B saw the write {arrived - sent:.2f}s later"
    reader.join(5)
    assert not reader.is_alive()


def test_one_leader_runs_controllers_and_failover(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    key = a.admin_key
    poll(lambda: leads(a) or leads(b), timeout=10)
    time.sleep(2.5)  # the follower retries every 2 s: it must still not lead
    assert leads(a) != leads(b), "exactly one replica must lead the controllers"
    leader, follower = (a, b) if leads(a) else (b, a)

    group, ns, vs = uniq("lead"), uniq("ns"), uniq("vs")
    site = f"{group}-s"
    with http_for(leader, key) as via_leader, http_for(follower, key) as via_follower:
        assert (
            via_follower.post(
                f"{API}/namespaces/{ns}/virtualsites",
                json={"metadata": {"name": vs}, "spec": {"selector": "tier=hot"}},
            ).status_code
            == 201
        )
        assert (
            via_follower.post(
                SITES, json={"metadata": {"name": site, "labels": {"tier": "cold"}}}
            ).status_code
            == 201
        )
        # A relabel through the follower updates membership (the leader's controller does it) ...
        patch = json.dumps({"metadata": {"labels": {"tier": "hot"}}})
        assert via_follower.patch(f"{SITES}/{site}", content=patch, headers=MERGE).status_code == 200
        poll(lambda: members(via_follower, ns, vs) == [site], timeout=10)
        # ... and so does one through the leader.
        patch = json.dumps({"metadata": {"labels": {"tier": "cold"}}})
        assert via_leader.patch(f"{SITES}/{site}", content=patch, headers=MERGE).status_code == 200
        poll(lambda: members(via_follower, ns, vs) == [], timeout=10)

        leader.kill9()
        poll(lambda: leads(follower), timeout=15)
        patch = json.dumps({"metadata": {"labels": {"tier": "hot"}}})
        assert via_follower.patch(f"{SITES}/{site}", content=patch, headers=MERGE).status_code == 200
        poll(lambda: members(via_follower, ns, vs) == [site], timeout=15)
        second = f"{group}-t"
        body = {"metadata": {"name": second, "labels": {"tier": "hot"}}}
        assert via_follower.post(SITES, json=body).status_code == 201
        poll(lambda: members(via_follower, ns, vs) == sorted([site, second]), timeout=15)
