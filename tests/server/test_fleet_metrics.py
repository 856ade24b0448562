"""Load distribution and metrics history over real HTTPS, the alert kinds' validation (bad
input is a 4xx naming the field), Alerts read-only for clients, and the default rules of a
new tenant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleetplane.core.envelope import is_sealed
from fleetplane.core.store import open_store
from tests.server.test_metrics import API, client, ok, uniq
from tests.server.test_metrics import add_site as add_metered_site
from tests.support.server import ServerProcess

GIB = 1 << 30


def add_site(http: httpx.Client, name: str, labels: dict[str, str], memory_gib: float) -> None:
    add_metered_site(http, name, labels, memory_gib, disk=True)


@dataclass
class World:
    server: ServerProcess
    admin: httpx.Client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    args = ["--metrics-flush", "0.2", "--metrics-retention", "1s:1m,5s:5m"]
    server = ServerProcess(tmp_path_factory.mktemp("fleetmetrics") / "data", extra_args=args).start()
    system = client(server, server.admin_key)
    tenant = uniq("acme")
    key = ok(system.post(f"{API}/tenants", json={"metadata": {"name": tenant}}), 201)["status"][
        "adminAccessKey"
    ]
    admin = client(server, key)
    for i, memory in enumerate((15.5, 13, 4, 2)):
        add_site(admin, f"jp-{i}", {"region": "jp"}, memory_gib=memory)
    add_site(admin, "us-0", {"region": "us"}, memory_gib=8)
    ok(
        admin.post(
            f"{API}/namespaces/ops/virtualsites",
            json={"metadata": {"name": "jp"}, "spec": {"selector": "region=jp"}},
        ),
        201,
    )
    try:
        yield World(server, admin)
    finally:
        admin.close()
        system.close()
        server.stop()


def eventually(fetch: Any, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_fleet_and_virtual_site_distribution(world: World) -> None:
    body = eventually(
        lambda: ok(world.admin.get(f"{API}/distribution", params={"above": "75"})),
        lambda b: b["sites"] == 5 and any(v["sites"] == 4 for v in b["virtualSites"]),
    )
    assert body["kind"] == "LoadDistribution" and body["scope"] == "fleet" and body["sites"] == 5
    memory = body["memory"]
    assert memory["above"] == [
        {
            "threshold": 75.0,
            "sites": 2,
            "percent": 40.0,
            "statement": "40 % of sites use more than 75 % of memory",
        }
    ]
    assert sum(b["sites"] for b in memory["histogram"]) == 5 and memory["quantiles"]["p50"] == 50.0
    assert body["disk"]["quantiles"]["p50"] == 25.0
    (jp,) = body["virtualSites"]
    assert (jp["namespace"], jp["name"], jp["sites"]) == ("ops", "jp", 4)
    assert jp["memory"]["above"][0]["percent"] == 50.0  # half the jp sites use more than 75 %
    one = ok(world.admin.get(f"{API}/namespaces/ops/virtualsites/jp/distribution"))
    assert one["scope"] == "ops/jp" and one["sites"] == 4
    assert [a["threshold"] for a in one["memory"]["above"]] == [50.0, 75.0, 90.0]


def test_bad_distribution_requests_are_4xx(world: World) -> None:
    for bad in ("abc", "101", "", "1,2,3,4,5,6,7,8,9,10,11"):
        resp = world.admin.get(f"{API}/distribution", params={"above": bad})
        assert resp.status_code == 400, resp.text
        assert resp.json()["details"]["causes"][0]["field"] == "above"
    resp = world.admin.get(f"{API}/namespaces/ops/virtualsites/nope/distribution")
    assert resp.status_code == 404 and resp.json()["kind"] == "Status"


def test_site_metrics_history(world: World) -> None:
    body = eventually(
        lambda: ok(world.admin.get(f"{API}/sites/jp-0/metrics")),
        lambda b: b["current"].get("memoryPercent") is not None,
    )
    assert body["kind"] == "SiteMetricsHistory" and body["site"] == "jp-0"
    assert body["current"]["memoryPercent"] == pytest.approx(96.9, abs=0.1)
    assert [s["resolution"] for s in body["series"]] == ["1s", "5s"]
    assert ok(world.admin.get(f"{API}/sitemetrics/jp-0"))["status"]["current"]["diskPercent"] == 25.0
    resp = world.admin.get(f"{API}/sites/jp-0/metrics", params={"resolution": "1h"})
    assert resp.status_code == 400 and resp.json()["details"]["causes"][0]["field"] == "resolution"
    assert world.admin.get(f"{API}/sites/nope/metrics").status_code == 404


def test_alert_rule_validation_names_the_field(world: World) -> None:
    base = {"expr": "site.memory.percent", "op": ">", "threshold": 90}
    for spec, field in (
        ({**base, "expr": "site.mood"}, "spec.expr"),
        ({**base, "op": "=>"}, "spec.op"),
        ({**base, "for": "5 minutes"}, "spec.for"),
        ({**base, "severity": "meh"}, "spec.severity"),
        ({**base, "scope": {"selector": "a in ("}}, "spec.scope.selector"),
        ({"expr": "site.cpu.percent"}, "spec.threshold"),
    ):
        resp = world.admin.post(
            f"{API}/namespaces/default/alertrules", json={"metadata": {"name": "x"}, "spec": spec}
        )
        assert resp.status_code == 422, resp.text
        assert [c["field"] for c in resp.json()["details"]["causes"]] == [field]
    bad_hook = {"metadata": {"name": "h"}, "spec": {"webhook": {"url": "ftp://x"}}}
    resp = world.admin.post(f"{API}/namespaces/default/alertreceivers", json=bad_hook)
    assert resp.status_code == 422 and resp.json()["details"]["causes"][0]["field"] == "spec.webhook.url"


def test_alerts_are_read_only_and_default_rules_exist(world: World) -> None:
    resp = world.admin.post(
        f"{API}/namespaces/default/alerts",
        json={"metadata": {"name": "a"}, "spec": {"rule": "r", "expr": "e", "severity": "x"}},
    )
    assert resp.status_code in (403, 405), resp.text
    names = eventually(
        lambda: {
            r["metadata"]["name"]
            for r in ok(world.admin.get(f"{API}/namespaces/default/alertrules"))["items"]
        },
        lambda n: len(n) == 5,
    )
    assert names == {
        "site-offline",
        "site-certificate-expiring",
        "rollout-failed",
        "site-cpu-high",
        "site-memory-high",
    }


def test_receiver_headers_are_sealed_and_never_returned(world: World) -> None:
    hook = {"url": "https://hooks.example/x", "headers": {"Authorization": "Bearer top-secret"}}
    created = ok(
        world.admin.post(
            f"{API}/namespaces/default/alertreceivers",
            json={"metadata": {"name": "pager"}, "spec": {"webhook": hook}},
        ),
        201,
    )
    assert "headers" not in created["spec"]["webhook"]
    assert (
        "headers"
        not in ok(world.admin.get(f"{API}/namespaces/default/alertreceivers/pager"))["spec"]["webhook"]
    )
    store = open_store(f"sqlite:///{world.server.data_dir / 'fleetplane.db'}")
    try:
        (tenant,) = {t for t, o in store.scan(("AlertReceiver",))[1] if o["metadata"]["name"] == "pager"}
        raw = store.get(tenant, "AlertReceiver", "default", "pager")["spec"]["webhook"]["headers"][
            "Authorization"
        ]
    finally:
        store.close()
    assert is_sealed(raw) and "top-secret" not in raw
