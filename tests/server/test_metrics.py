"""``/metrics`` and the health summaries over real HTTPS: the documented series parse with
``prometheus_client``'s parser, a tenant sees only its own fleet, only a system key sees the
control plane's own series, and nothing is served without a key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetplane.controllers.health_controller import HealthController
from fleetplane.core.objects import now_rfc3339
from fleetplane.core.store import open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import REGISTRY
from fleetplane.server.auth import Principal
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.metrics import FleetCollector
from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
GIB = 1 << 30


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def client(server: ServerProcess, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, verify=server.tls, headers=headers, timeout=30)


def ok(resp: httpx.Response, code: int = 200) -> Any:
    assert resp.status_code == code, resp.text
    return resp.json()


def add_site(
    http: httpx.Client, name: str, labels: dict[str, str], memory_gib: float, *, disk: bool = False
) -> None:
    """A site reporting 2 of 8 CPUs and ``memory_gib`` of 16 GiB (with ``disk``: 25 of 100 GiB)."""
    ok(http.post(f"{API}/sites", json={"metadata": {"name": name, "labels": labels}}), 201)
    status: dict[str, Any] = {
        "phase": "Online",
        "lastSeen": now_rfc3339(),
        "usage": {"cpuMillis": 2000, "memoryBytes": int(memory_gib * GIB)},
        "allocatable": {"cpuMillis": 8000, "memoryBytes": 16 * GIB},
    }
    if disk:
        status["usage"]["diskBytes"] = 25 * GIB
        status["nodes"] = [{"name": "n1", "diskBytes": 100 * GIB}]
    for _ in range(10):  # the health controller may write the status in between: retry
        body = ok(http.get(f"{API}/sites/{name}"))
        resp = http.put(
            f"{API}/sites/{name}/status", json={**body, "status": {**body.get("status", {}), **status}}
        )
        if resp.status_code != 409:
            ok(resp)
            return
    raise AssertionError("status write kept conflicting")


@dataclass
class World:
    server: ServerProcess
    system: httpx.Client
    tenant: str
    tenant_key: str
    viewer_key: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ServerProcess(tmp_path_factory.mktemp("metrics") / "data").start()
    system = client(server, server.admin_key)
    tenant = uniq("acme")
    key = ok(system.post(f"{API}/tenants", json={"metadata": {"name": tenant}}), 201)["status"][
        "adminAccessKey"
    ]
    with client(server, key) as admin:
        for i in range(4):
            add_site(admin, f"jp-{i}", {"region": "jp"}, memory_gib=15.5 if i == 0 else 4)
        add_site(admin, "us-0", {"region": "us"}, memory_gib=8)
        ok(
            admin.post(
                f"{API}/namespaces/ops/virtualsites",
                json={"metadata": {"name": "jp"}, "spec": {"selector": "region=jp"}},
            ),
            201,
        )
        viewer = ok(
            admin.post(
                f"{API}/accesskeys",
                json={"metadata": {"name": "v"}, "spec": {"role": "viewer", "namespaces": ["team-a"]}},
            ),
            201,
        )["status"]["accessKey"]
    add_site(system, "other-tenant-site", {"region": "jp"}, memory_gib=1)
    yield World(server, system, tenant, key, viewer)
    system.close()
    server.stop()


def scrape(server: ServerProcess, key: str) -> dict[str, list[Sample]]:
    with client(server, key) as http:
        resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(resp.text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def value(samples: list[Sample], name: str | None = None, **labels: str) -> float:
    found = [
        s.value for s in samples if (name is None or s.name == name) and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except AssertionError:
            got = None
            if time.monotonic() > deadline:
                raise
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("never converged")
        time.sleep(0.1)


def test_metrics_need_a_key(world: World) -> None:
    with client(world.server) as anonymous:
        resp = anonymous.get("/metrics")
        assert resp.status_code == 401 and resp.json()["reason"] == "Unauthorized"
    with client(world.server, "fpk_nope_nope_0000") as forged:
        assert forged.get("/metrics").status_code == 401


def test_tenant_sees_its_fleet_series(world: World) -> None:
    def converged() -> dict[str, list[Sample]]:
        got = scrape(world.server, world.tenant_key)
        assert value(got["fleetplane_sites_health"], colour="orange", tenant=world.tenant) == 1
        return got

    got = eventually(converged)
    t = world.tenant
    assert value(got["fleetplane_sites"], phase="Online", tenant=t) == 5
    assert value(got["fleetplane_sites"], phase="Offline", tenant=t) == 0
    assert value(got["fleetplane_sites_health"], colour="green", tenant=t) == 4
    score = got["fleetplane_site_health_score"]
    assert value(score, "fleetplane_site_health_score_count", tenant=t) == 5
    assert value(score, "fleetplane_site_health_score_bucket", tenant=t, le="70.0") == 0
    assert value(score, "fleetplane_site_health_score_bucket", tenant=t, le="80.0") == 1
    memory = got["fleetplane_site_memory_utilization_ratio"]
    assert value(memory, "fleetplane_site_memory_utilization_ratio_bucket", tenant=t, le="0.25") == 3
    assert value(memory, "fleetplane_site_memory_utilization_ratio_bucket", tenant=t, le="0.5") == 4
    assert value(memory, "fleetplane_site_memory_utilization_ratio_bucket", tenant=t, le="+Inf") == 5
    cpu = got["fleetplane_site_cpu_utilization_ratio"]
    assert value(cpu, "fleetplane_site_cpu_utilization_ratio_bucket", tenant=t, le="0.25") == 5
    vs = {"tenant": t, "namespace": "ops", "virtualsite": "jp"}
    assert value(got["fleetplane_virtualsite_sites_health"], colour="green", **vs) == 3
    assert value(got["fleetplane_virtualsite_sites_health"], colour="orange", **vs) == 1
    vs_memory = got["fleetplane_virtualsite_memory_utilization_ratio"]
    assert value(vs_memory, "fleetplane_virtualsite_memory_utilization_ratio_count", **vs) == 4
    # Only its own tenant, and not the control plane's own series.
    assert {s.labels["tenant"] for s in got["fleetplane_sites"]} == {t}
    assert "fleetplane_http_request_duration_seconds" not in got
    assert "fleetplane_watchers" not in got


def test_system_key_sees_the_control_plane(world: World) -> None:
    # A request is counted once answered: scrape once so /metrics itself is in the second
    # scrape, whichever test of this module ran first on this server (xdist splits them).
    scrape(world.server, world.server.admin_key)
    got = scrape(world.server, world.server.admin_key)
    assert {s.labels["tenant"] for s in got["fleetplane_sites"]} >= {world.tenant, "default"}
    assert value(got["fleetplane_watchers"]) >= 0
    assert value(got["fleetplane_store_revision"]) > 0
    requests = got["fleetplane_http_request_duration_seconds"]
    count = value(
        requests,
        "fleetplane_http_request_duration_seconds_count",
        method="POST",
        route=f"{API}/namespaces/{{namespace}}/{{plural}}",
        code="201",
    )
    assert count >= 1
    # Route templates, never concrete paths (no label per site name).
    assert not any("jp-0" in s.labels.get("route", "") for s in requests)
    assert any(s.labels.get("route") == "/metrics" for s in requests)


def test_virtual_site_health_summary(world: World) -> None:
    with client(world.server, world.tenant_key) as http:
        path = f"{API}/namespaces/ops/virtualsites/jp/health"

        def converged() -> dict[str, Any]:
            body: dict[str, Any] = ok(http.get(path))
            assert body["counts"] == {"green": 3, "orange": 1, "red": 0}
            return body

        body = eventually(converged)
        assert body["kind"] == "HealthSummary" and body["virtualSite"] == "ops/jp" and body["sites"] == 4
        assert body["worst"][0]["site"] == "jp-0" and body["worst"][0]["score"] == 75
        assert body["worst"][0]["parts"]["performance"] == 0
        assert sum(b["count"] for b in body["histogram"]) == 4
        assert ok(http.get(f"{API}/namespaces/ops/virtualsites/nope/health"), 404)["reason"] == "NotFound"
        fleet = ok(http.get(f"{API}/health"))
        assert fleet["sites"] == 5 and fleet["counts"]["green"] == 4
        assert fleet["virtualSites"] == [
            {"namespace": "ops", "name": "jp", "sites": 4, "counts": {"green": 3, "orange": 1, "red": 0}}
        ]
    # A key limited to team-a cannot read a virtual site of ops.
    with client(world.server, world.viewer_key) as viewer:
        assert viewer.get(f"{API}/namespaces/ops/virtualsites/jp/health").status_code == 403
        assert ok(viewer.get(f"{API}/health"))["virtualSites"] == []
    # And the stored Site carries the same health.
    with client(world.server, world.tenant_key) as http:
        site = eventually(lambda: ok(http.get(f"{API}/sites/jp-0")).get("status", {}).get("health"))
        assert site["score"] == 75 and site["colour"] == "orange" and site["observedAt"]


def test_rollout_and_virtual_site_series_from_the_view(tmp_path: Path) -> None:
    """The collector alone, over a view fed by hand: rollout progress gauges, and a key limited
    to namespaces sees only those (and shared)."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        controller = HealthController(store, WatchHub(store))
        ctx = ServerContext(ServerSettings(data_dir=tmp_path), store, REGISTRY, controller.hub)
        ctx.extras["health"] = controller
        view = controller.view
        for ns in ("team-a", "team-b"):
            rollout = {
                "kind": "Rollout",
                "metadata": {"name": "r1", "namespace": ns},
                "status": {"phase": "InProgress", "counts": {"succeeded": 3, "inProgress": 1, "pending": 4}},
            }
            view.set_rollout("acme", rollout, deleted=False)
            vs = {
                "kind": "VirtualSite",
                "metadata": {"name": "all", "namespace": ns},
                "spec": {"selector": ""},
            }
            view.set_virtual_site("acme", vs)
        principal = Principal(tenant="acme", key_name="k", role="viewer", namespaces=("team-a",))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(ctx, principal))
        text = generate_latest(registry).decode()
        families = {f.name: f.samples for f in text_string_to_metric_families(text)}
        a = {"tenant": "acme", "namespace": "team-a", "rollout": "r1"}
        assert value(families["fleetplane_rollout_progress_ratio"], **a) == 3 / 8
        assert value(families["fleetplane_rollout_sites"], state="pending", **a) == 4
        assert value(families["fleetplane_rollout_phase"], phase="InProgress", **a) == 1
        assert {s.labels["namespace"] for s in families["fleetplane_rollout_sites"]} == {"team-a"}
        assert {s.labels["namespace"] for s in families["fleetplane_virtualsite_sites_health"]} == {"team-a"}
    finally:
        store.close()
