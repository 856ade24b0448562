"""Site events: each transition an operator cares about becomes one Event (and a plain report
none), repeats bump ``count``, writes are batched, a restart records nothing again, and the
retention sweep keeps a site's history bounded; all on a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.site_events import SiteEventsController, facts_of, recent_events, transitions
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import ALERT, EVENT, SITE
from tests.support.controllers import running_controller

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def site(name: str = "s1", **status: Any) -> Obj:
    return SITE.normalize({"metadata": {"name": name}, "status": {"phase": "Online", **status}})


def item(name: str, state: str, reason: str | None = None) -> dict[str, Any]:
    return {"section": "policies", "name": name, "state": state, **({"reason": reason} if reason else {})}


def manifest(generation: int, state: str = "Applied", items: list[dict[str, Any]] | None = None) -> Any:
    return {"generation": generation, "state": state, "items": items or []}


def health(colour: str) -> dict[str, Any]:
    score = {"green": 90, "orange": 60, "red": 20}[colour]
    parts = {"connectivity": score, "reliability": score, "security": score, "performance": score}
    return {"score": score, "colour": colour, "parts": parts}


def alarm(alarm_id: str) -> dict[str, Any]:
    return {"alarms": [{"id": alarm_id, "severity": "major", "message": "fan failure"}]}


def events(store: Store, site_name: str | None = None) -> list[dict[str, Any]]:
    items = store.list("acme", EVENT.kind).items
    specs = [o["spec"] for o in items]
    return [s for s in specs if site_name is None or s["involvedObject"]["name"] == site_name]


CASES: list[tuple[dict[str, Any], dict[str, Any], str, str, str]] = [
    ({}, {"phase": "Offline"}, "Warning", "SiteOffline", "went Offline"),
    ({"phase": "Offline"}, {}, "Normal", "SiteOnline", "back Online"),
    ({"manifest": manifest(3)}, {"manifest": manifest(4)}, "Normal", "ManifestApplied", "revision 4 applied"),
    (
        {"manifest": manifest(4, items=[item("allow-dns", "Applied")])},
        {"manifest": manifest(4, "Failed", [item("allow-dns", "Failed", "iptables: bad rule")])},
        "Warning",
        "ItemFailed",
        "policies/allow-dns failed: iptables: bad rule",
    ),
    (
        {"manifest": manifest(4, "Failed", [item("allow-dns", "Failed", "bad")])},
        {"manifest": manifest(4, "Failed", [item("allow-dns", "Applied")])},
        "Normal",
        "ItemRecovered",
        "policies/allow-dns recovered",
    ),
    ({"os": {"current": "1.0"}}, {"os": {"current": "1.1"}}, "Normal", "OsVersionChanged", "from 1.0 to 1.1"),
    (
        {"os": {"current": "1.0"}},
        {
            "os": {
                "current": "1.0",
                "lastResult": {"version": "1.1", "outcome": "FellBack", "reason": "health check failed"},
            }
        },
        "Warning",
        "OsFellBack",
        "OS upgrade to 1.1 fell back: health check failed",
    ),
    ({"health": health("green")}, {"health": health("red")}, "Warning", "HealthChanged", "green -> red"),
    ({"health": health("red")}, {"health": health("orange")}, "Normal", "HealthChanged", "red -> orange"),
    ({}, {"infra": alarm("fan-1")}, "Warning", "AlarmRaised", "major alarm fan-1: fan failure"),
    ({"infra": alarm("fan-1")}, {}, "Normal", "AlarmCleared", "alarm fan-1 cleared"),
]


@pytest.mark.parametrize(("before", "after", "type_", "reason", "text"), CASES, ids=[c[3] for c in CASES])
def test_each_transition_is_one_event(
    before: dict[str, Any], after: dict[str, Any], type_: str, reason: str, text: str
) -> None:
    (found,) = transitions(facts_of(site(**before)), facts_of(site(**after)))
    assert found[:2] == (type_, reason)
    assert text in found[2]


def test_a_report_that_changes_no_fact_records_nothing() -> None:
    quiet = {"manifest": manifest(4), "health": health("green"), "os": {"current": "1.0"}}
    noisy = {**quiet, "lastSeen": "2027-01-15T08:00:00Z", "usage": {"cpuMillis": 900}, "nodeCount": 3}
    assert transitions(facts_of(site(**quiet)), facts_of(site(**noisy))) == []
    # A first health score, or a manifest still applying, is not a transition either.
    first = {**quiet, "health": None, "manifest": manifest(5, "Applying")}
    assert transitions(facts_of(site(**first)), facts_of(site(**{**first, "health": health("red")}))) == []


def test_new_sites_and_transitions_are_written_in_one_transaction(store: Store) -> None:
    commits: list[int] = []
    store.add_commit_listener(commits.append)
    ctl = SiteEventsController(store, WatchHub(store), clock=Clock())
    for name in ("a", "b", "c"):
        ctl.observe_site("acme", site(name, phase="Pending"), added=True)
        ctl.observe_site("acme", site(name))  # and it came Online
    assert events(store) == []  # nothing written per report
    commits.clear()
    assert asyncio.run(ctl.flush()) == 6
    assert len(commits) == 1
    got = sorted((e["involvedObject"]["name"], e["reason"], e["type"]) for e in events(store))
    assert got == [(n, r, "Normal") for n in "abc" for r in ("Registered", "SiteOnline")]
    assert all(e["source"]["component"] and e["count"] == 1 for e in events(store))


def test_a_repeated_event_bumps_count_and_last_timestamp(store: Store) -> None:
    clock = Clock()
    ctl = SiteEventsController(store, WatchHub(store), clock=clock)
    ctl.load([("acme", site("s1"))])
    for phase in ("Offline", "Online", "Offline"):  # merged before the flush
        clock.now += 10
        ctl.observe_site("acme", site("s1", phase=phase))
    asyncio.run(ctl.flush())
    clock.now += 100
    ctl.observe_site("acme", site("s1"))
    ctl.observe_site("acme", site("s1", phase="Offline"))  # bumps the stored one
    asyncio.run(ctl.flush())
    offline = [e for e in events(store) if e["reason"] == "SiteOffline"]
    assert len(offline) == 1
    assert offline[0]["count"] == 3
    assert offline[0]["firstTimestamp"] == "2027-01-15T08:00:10Z"
    assert offline[0]["lastTimestamp"] == "2027-01-15T08:02:10Z"
    assert [e["count"] for e in events(store) if e["reason"] == "SiteOnline"] == [2]


def test_alerts_firing_for_a_site_and_resolving(store: Store) -> None:
    ctl = SiteEventsController(store, WatchHub(store), clock=Clock())

    def alert(*firing: str) -> Obj:
        status = {
            "state": "firing" if firing else "pending",
            "instances": {s: {"state": "firing", "activeAt": "x", "value": 95} for s in firing},
        }
        body = {"metadata": {"name": "mem", "namespace": "default"}, "status": status}
        return ALERT.normalize(
            {**body, "spec": {"rule": "mem", "expr": "site.memory.percent", "severity": "warning"}}
        )

    ctl.load([("acme", alert("s1"))])  # already firing for s1 at start: nothing
    ctl.observe_alert("acme", alert("s1", "s2"))
    ctl.observe_alert("acme", alert("s2"))
    asyncio.run(ctl.flush())
    assert sorted((e["involvedObject"]["name"], e["reason"]) for e in events(store)) == [
        ("s1", "AlertResolved"),
        ("s2", "AlertFiring"),
    ]
    assert "default/mem" in events(store, "s2")[0]["message"]


def running(store: Store, clock: Clock) -> contextlib.AbstractAsyncContextManager[SiteEventsController]:
    return running_controller(
        store, lambda hub: SiteEventsController(store, hub, clock=clock, flush_interval=0.05)
    )


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def set_status(store: Store, name: str, **status: Any) -> None:
    current = store.get("acme", SITE.kind, "", name)
    store.update("acme", {**current, "status": {**current["status"], **status}}, part="status")


def test_following_the_store_and_a_restart_records_nothing_twice(store: Store) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with running(store, clock):
            store.create("acme", site("s1", phase="Pending"))
            await until(lambda: len(events(store, "s1")) == 1)
            set_status(store, "s1", phase="Online", health=health("green"))
            set_status(store, "s1", phase="Offline")
            await until(lambda: len(events(store, "s1")) == 3)
        before = sorted((e["reason"], e["count"]) for e in events(store, "s1"))
        assert before == [("Registered", 1), ("SiteOffline", 1), ("SiteOnline", 1)]
        set_status(store, "s1", health=health("red"))  # while no controller runs
        async with running(store, clock) as ctl:
            set_status(store, "s1", lastSeen="2027-01-15T09:00:00Z")  # a plain report
            await asyncio.sleep(0.3)
            assert await ctl.flush() == 0
        assert sorted((e["reason"], e["count"]) for e in events(store, "s1")) == before

    asyncio.run(scenario())


def test_retention_keeps_the_newest_per_site_and_sweeps_expired(store: Store) -> None:
    clock = Clock()
    ctl = SiteEventsController(store, WatchHub(store), clock=clock, ttl=600, per_site=3)
    ctl.load([("acme", site("s1")), ("acme", site("s2"))])
    for n in range(5):
        clock.now += 60
        ctl.observe_site("acme", site("s1", os={"current": f"1.{n}"}))
        asyncio.run(ctl.flush())
    ctl.observe_site("acme", site("s2", phase="Offline"))
    asyncio.run(ctl.flush())
    kept = [e["message"] for e in sorted(events(store, "s1"), key=lambda e: e["lastTimestamp"])]
    assert kept == [f"OS version changed from 1.{n} to 1.{n + 1}" for n in (1, 2, 3)]
    newest = recent_events(store, "acme", "s1", ctl)
    assert [e["message"] for e in newest] == kept[::-1]
    assert recent_events(store, "acme", "s1") == newest  # without the controller: a list
    assert [e["message"] for e in recent_events(store, "acme", "s1", limit=1)] == kept[-1:]

    clock.now = T0 + 800  # s1's oldest kept (at +180 s) is now past the TTL, the others not
    assert asyncio.run(ctl.sweep()) == 1
    assert len(events(store, "s1")) == 2 and len(events(store, "s2")) == 1
    clock.now += 3600
    asyncio.run(ctl.sweep())
    assert events(store) == []
