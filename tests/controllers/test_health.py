"""The health formula (docs/health.md): each part moves the score as documented, the colour
boundaries are exact (75 is orange, 40 is orange, 39 is red), and a summary counts colours,
buckets scores and lists the worst sites."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fleetplane.controllers.health import (
    Health,
    Scored,
    bucket_of,
    colour_of,
    deny_keys_of,
    disk_percent,
    evaluate,
    load_percent,
    scored_status,
    summarize,
)
from fleetplane.core.objects import Obj

NOW = 1_800_000_000.25  # not a whole second: lastSeen is not credited to the end of its second
DAY = 86_400.0


def stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def site(**status: Any) -> Obj:
    """A healthy, fresh, lightly loaded site, with ``status`` fields replaced."""
    base: dict[str, Any] = {
        "phase": "Online",
        "lastSeen": stamp(NOW - 2),
        "identity": {"serial": "01", "notAfter": stamp(NOW + 30 * DAY)},
        "manifest": {"generation": 3, "state": "Applied", "items": []},
        "nodes": [{"name": "node-0", "ready": True}],
        "usage": {"cpuMillis": 2000, "memoryBytes": 4 << 30},
        "allocatable": {"cpuMillis": 8000, "memoryBytes": 16 << 30},
    }
    base.update(status)
    return {"kind": "Site", "metadata": {"name": "tokyo-1"}, "status": base}


def health(**status: Any) -> Health:
    return evaluate(site(**status), NOW, offline_after=30.0)


def test_a_healthy_site_is_100_and_green() -> None:
    h = health()
    assert (h.score, h.colour, h.reasons) == (100, "green", ())
    assert h.parts == {"connectivity": 100, "reliability": 100, "security": 100, "performance": 100}
    assert h.to_status() == {"score": 100, "colour": "green", "parts": h.parts, "reasons": []}


@pytest.mark.parametrize(
    ("score", "colour"),
    [(100, "green"), (76, "green"), (75.5, "green"), (75, "orange"), (40, "orange"), (39, "red"), (0, "red")],
)
def test_colour_boundaries_are_exact(score: float, colour: str) -> None:
    assert colour_of(score) == colour


def test_connectivity_fresh_late_offline_never() -> None:
    assert health(lastSeen=stamp(NOW - 14)).parts["connectivity"] == 100
    late = health(lastSeen=stamp(NOW - 15))
    assert late.parts["connectivity"] == 50
    assert late.score == 88 and late.colour == "green"  # (50 + 300) / 4 = 87.5 -> 88
    assert any("heartbeat late" in r for r in late.reasons)
    offline = health(lastSeen=stamp(NOW - 30))
    assert offline.parts["connectivity"] == 0
    assert (offline.score, offline.colour) == (39, "red")  # capped: unreachable is red
    assert health(phase="Offline").score == 39
    never = health(lastSeen=None, phase="Pending")
    assert never.parts["connectivity"] == 0 and "connectivity: never reported" in never.reasons


def test_connectivity_latency_and_loss_when_reported() -> None:
    assert health(link={"latencyMs": 100, "lossPercent": 0}).parts["connectivity"] == 100
    assert health(link={"latencyMs": 300}).parts["connectivity"] == 80
    assert health(link={"latencyMs": 1500}).parts["connectivity"] == 60
    assert health(link={"lossPercent": 1}).parts["connectivity"] == 90
    assert health(link={"lossPercent": 2}).parts["connectivity"] == 70
    assert health(link={"latencyMs": 1500, "lossPercent": 10}).parts["connectivity"] == 0


def test_connectivity_says_when_time_will_change_it() -> None:
    seen = NOW - 2
    h = health(lastSeen=stamp(seen))
    assert h.valid_until == pytest.approx(seen + 15)  # half the offline threshold
    h = health(lastSeen=stamp(NOW - 20))
    assert h.valid_until == pytest.approx(NOW - 20 + 30)


def test_not_before_credits_the_control_planes_own_downtime() -> None:
    old = site(lastSeen=stamp(NOW - 600))
    assert evaluate(old, NOW).parts["connectivity"] == 0
    assert evaluate(old, NOW, not_before=NOW - 1).parts["connectivity"] == 100


def item(state: str, reason: str | None = None, name: str = "x") -> dict[str, Any]:
    return {"section": "workloads", "name": name, "state": state, **({"reason": reason} if reason else {})}


def test_reliability_failed_items_crash_loops_nodes_and_os_fallback() -> None:
    def rel(**status: Any) -> int:
        return health(**status).parts["reliability"]

    assert rel(manifest={"generation": 1, "state": "Failed", "items": [item("Failed")]}) == 80
    many = [item("Failed", name=str(i)) for i in range(5)]
    assert rel(manifest={"generation": 1, "state": "Failed", "items": many}) == 40  # at most -60
    crash = item("Failed", "web-0: CrashLoopBackOff: exit 1; back-off 10s")
    assert rel(manifest={"generation": 1, "state": "Failed", "items": [crash]}) == 70
    nodes = [{"name": "a", "ready": False}, {"name": "b", "ready": True}]
    assert rel(nodes=nodes) == 85
    fell_back = {"current": "1.4", "lastResult": {"version": "1.5", "outcome": "FellBack"}}
    h = health(os=fell_back)
    assert h.parts["reliability"] == 70
    assert "reliability: OS upgrade to 1.5 fell back" in h.reasons
    assert rel(os={"current": "1.5", "lastResult": {"version": "1.5", "outcome": "Committed"}}) == 100
    # One part at 0 alone: (0 + 300) / 4 = 75 -> orange, exactly on the boundary.
    worst = [item("Failed", name=str(i)) for i in range(3)] + [crash, crash]
    h = health(manifest={"generation": 1, "state": "Failed", "items": worst})
    assert h.parts["reliability"] == 0
    assert (h.score, h.colour) == (75, "orange")


def test_security_certificate_expiry_and_revocation() -> None:
    def sec(not_after: float, **status: Any) -> Health:
        return health(identity={"serial": "01", "notAfter": stamp(not_after)}, **status)

    assert sec(NOW + 8 * DAY).parts["security"] == 100
    soon = sec(NOW + 3 * DAY)
    assert soon.parts["security"] == 50
    assert "security: certificate expires in 3 day(s)" in soon.reasons
    assert sec(NOW + 3600).parts["security"] == 20
    expired = sec(NOW - 1)
    assert (expired.parts["security"], expired.score, expired.colour) == (0, 39, "red")
    revoked = health(phase="Decommissioned")
    assert revoked.parts["security"] == 0 and revoked.colour == "red"
    assert sec(NOW + 8 * DAY, lastSeen=None).valid_until == pytest.approx(NOW + DAY)  # 7 days left


def test_security_denials_share() -> None:
    deny = frozenset(deny_keys_of("NetworkPolicy", "default", "github", NP_SPEC))
    assert deny == {"default/github/default-egress", "default/github/block-pastebin"}

    def sec(allowed: int, denied: int) -> int:
        hits = {"default/github/allow-github": allowed, "default/github/default-egress": denied}
        return evaluate(site(policyHits=hits), NOW, deny_keys=deny).parts["security"]

    assert sec(100, 0) == 100
    assert sec(95, 5) == 100  # 5 % is not more than 5 %
    assert sec(90, 10) == 90
    assert sec(70, 30) == 80
    assert sec(40, 60) == 60
    assert sec(0, 0) == 100  # no traffic: no share


NP_SPEC: dict[str, Any] = {
    "egress": [
        {"name": "allow-github", "action": "allow"},
        {"name": "block-pastebin", "action": "deny"},
    ],
    "ingress": [{"name": "ssh", "action": "allow"}],
    "defaultAction": {"egress": "deny"},
}


def test_deny_keys_of_service_policy() -> None:
    spec = {
        "rules": [{"name": "a", "action": "deny"}, {"name": "b", "action": "allow"}],
        "defaultAction": "deny",
    }
    assert deny_keys_of("ServicePolicy", "shop", "guard", spec) == {"shop/guard/a", "shop/guard/default"}


def test_performance_cpu_and_memory_pressure() -> None:
    def perf(cpu: int, memory_gib: float) -> int:
        usage = {"cpuMillis": cpu, "memoryBytes": int(memory_gib * (1 << 30))}
        return health(usage=usage).parts["performance"]

    assert perf(5000, 8) == 100
    assert perf(6000, 8) == 70  # CPU at 75 %
    assert perf(7200, 8) == 30  # CPU at 90 %
    assert perf(7600, 8) == 0  # CPU at 95 %
    assert perf(1000, 12) == 70  # memory at 75 %
    assert perf(6000, 15.5) == 0  # the worse of the two
    h = health(usage={"cpuMillis": 1000, "memoryBytes": 16 << 30})
    assert (h.score, h.colour) == (75, "orange")
    assert "performance: memory pressure: 95 % or more in use" in h.reasons


def test_load_percent_from_usage_or_reported_percentages() -> None:
    assert load_percent(site()["status"]) == (25.0, 25.0)
    assert load_percent({"usage": {"cpuPercent": 40, "memoryPercent": 60}}) == (40.0, 60.0)
    assert load_percent({}) == (None, None)


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"lastSeen": stamp(NOW - 20), "link": {"latencyMs": 400, "lossPercent": 3}},
        {"phase": "Decommissioned"},
        {"nodes": [{"name": f"n{i}", "ready": i % 3 != 0, "diskBytes": 100} for i in range(9)]},
        {"os": {"running": "v2", "lastResult": {"outcome": "FellBack", "version": "v3"}}},
        {"identity": {"serial": "02", "notAfter": stamp(NOW + 3 * DAY)}},
        {"policyHits": {"default/p/deny-all": 40, "default/p/allow-web": 60}},
        {"usage": {"cpuPercent": 96, "memoryPercent": 91}},
        {
            "manifest": {
                "generation": 4,
                "state": "Failed",
                "items": [
                    item("Applied"),
                    item("Failed", name="a"),
                    item("Failed", "OOMKilled", name="b"),
                    item("InProgress", "CrashLoopBackOff", name="c"),
                ],
            }
        },
    ],
)
def test_the_scored_part_of_a_status_scores_as_the_whole(status: dict[str, Any]) -> None:
    whole = site(**status)["status"]
    part = scored_status(whole)
    deny = frozenset({"default/p/deny-all"})
    for now in (NOW, NOW + 20, NOW + 5 * DAY):  # the view scores it again as time passes
        scored = evaluate({"status": part}, now, deny_keys=deny)
        assert scored == evaluate({"status": whole}, now, deny_keys=deny)
    # ... and keeps no more than scoring reads: no inventory, no healthy items
    assert [n for n in part.get("nodes", []) if n != {"ready": False}] == []
    assert all(i["state"] == "Failed" or i.get("reason") for i in part.get("manifest", {}).get("items", []))
    assert set(part) <= {"phase", "lastSeen", "link", "policyHits", "usage", "allocatable", "manifest"} | {
        "nodes",
        "os",
        "identity",
    }


def test_disk_percent_of_the_nodes_capacity() -> None:
    nodes = [{"name": "a", "diskBytes": 300}, {"name": "b", "diskBytes": 100}, {"name": "c"}]
    assert disk_percent({"usage": {"diskBytes": 100}, "nodes": nodes}) == 25.0
    assert disk_percent({"usage": {"diskBytes": 900}, "nodes": nodes}) == 100.0  # capped
    assert disk_percent({"usage": {"diskBytes": 100}, "nodes": [{"name": "c"}]}) is None  # no capacity
    assert disk_percent({"nodes": nodes}) is None  # no use reported
    assert disk_percent({}) is None


def test_two_parts_down_is_orange_at_50_and_three_is_red() -> None:
    crash = item("Failed", "CrashLoopBackOff")
    items = [crash, crash, item("Failed", name="1"), item("Failed", name="2"), item("Failed", name="3")]
    busy = {"cpuMillis": 8000, "memoryBytes": 16 << 30}
    h = health(manifest={"generation": 1, "state": "Failed", "items": items}, usage=busy)
    assert (h.score, h.colour) == (50, "orange")
    h = health(
        manifest={"generation": 1, "state": "Failed", "items": items},
        usage=busy,
        identity={"serial": "01", "notAfter": stamp(NOW + 3600)},
    )
    assert (h.score, h.colour) == (30, "red")  # (100 + 0 + 20 + 0) / 4


def test_summary_counts_buckets_and_worst() -> None:
    def scored(name: str, score: int) -> Scored:
        parts = dict.fromkeys(("connectivity", "reliability", "security", "performance"), score)
        return Scored(name, Health(score, colour_of(score), parts))

    sites = [scored(f"s{i:02d}", s) for i, s in enumerate([100, 76, 75, 40, 39, 0, 9, 10, 99, 55, 12, 39])]
    got = summarize(sites, worst=3)
    assert got["sites"] == 12
    assert got["counts"] == {"green": 3, "orange": 3, "red": 6}
    assert sum(b["count"] for b in got["histogram"]) == 12
    assert got["histogram"][0] == {"min": 0, "max": 9, "count": 2}
    assert got["histogram"][-1] == {"min": 90, "max": 100, "count": 2}
    assert [w["site"] for w in got["worst"]] == ["s05", "s06", "s07"]
    assert got["worst"][0]["score"] == 0 and got["worst"][0]["colour"] == "red"
    assert [bucket_of(s) for s in (0, 9, 10, 99, 100)] == [10, 10, 20, 100, 100]
    assert summarize([])["counts"] == {"green": 0, "orange": 0, "red": 0}


def test_documented_examples() -> None:
    """docs/health.md, the examples table."""
    fell_back = {"current": "1.4", "lastResult": {"version": "1.5", "outcome": "FellBack"}}
    crash = item("Failed", "web-0: CrashLoopBackOff")
    h = health(
        os=fell_back,
        manifest={"generation": 1, "state": "Failed", "items": [crash]},
        usage={"cpuMillis": 1000, "memoryBytes": int(0.92 * 16 * (1 << 30))},
    )
    assert h.parts == {"connectivity": 100, "reliability": 40, "security": 100, "performance": 30}
    assert (h.score, h.colour) == (68, "orange")
    h = health(
        manifest={"generation": 1, "state": "Failed", "items": [item("Failed")]},
        identity={"serial": "01", "notAfter": stamp(NOW + 3 * DAY)},
    )
    assert (h.score, h.colour) == (83, "green")
