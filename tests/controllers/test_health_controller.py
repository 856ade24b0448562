"""The health controller writes ``status.health`` only when the score moves (N reports that
change nothing write nothing), keeps its view current for virtual-site summaries, moves a
score when time alone moves it, and a site's own report never overwrites the health."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.health_controller import FleetHealth, HealthController
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import NETWORK_POLICY, REGISTRY, SITE, VIRTUAL_SITE
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.site_status import StatusWriter, validated_status
from tests.support.controllers import running_controller
from tests.support.waiting import eventually

GIB = 1 << 30


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def status(memory_gib: float = 4, **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Online",
        "lastSeen": now_rfc3339(),
        "usage": {"cpuMillis": 1000, "memoryBytes": int(memory_gib * GIB)},
        "allocatable": {"cpuMillis": 8000, "memoryBytes": 16 * GIB},
        **extra,
    }


def report(store: Store, name: str, labels: dict[str, str] | None = None, **kw: Any) -> Obj:
    """A site report; like the server's, it keeps the stored health."""
    for _ in range(20):  # the controller may write the health in between: retry
        site = store.get_or_none("acme", SITE.kind, "", name)
        if site is None:
            site = store.create("acme", SITE.normalize({"metadata": {"name": name, "labels": labels or {}}}))
        keep = {k: v for k, v in (site.get("status") or {}).items() if k == "health"}
        try:
            return store.update("acme", {**site, "status": {**status(**kw), **keep}}, part="status")
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
    raise AssertionError("the site kept changing")


def stored_health(store: Store, name: str) -> dict[str, Any] | None:
    health: dict[str, Any] | None = (store.get("acme", SITE.kind, "", name).get("status") or {}).get("health")
    return health


def running(store: Store, **kw: Any) -> contextlib.AbstractAsyncContextManager[HealthController]:
    return running_controller(store, lambda hub: HealthController(store, hub, tick=0.05, **kw))


def test_writes_health_once_and_not_on_reports_that_change_nothing(store: Store) -> None:
    for i in range(3):
        report(store, f"s{i}")

    async def scenario() -> None:
        async with running(store, min_interval=0.0) as controller:
            for i in range(3):
                await eventually(functools.partial(stored_health, store, f"s{i}"))
            h = stored_health(store, "s0")
            assert h is not None
            assert (h["score"], h["colour"], h["reasons"]) == (100, "green", [])
            assert h["parts"] == {
                "connectivity": 100,
                "reliability": 100,
                "security": 100,
                "performance": 100,
            }
            await asyncio.sleep(0.3)
            writes = controller.writes
            assert writes == 3
            # 20 heartbeats with a fresh lastSeen and load that stays in its band: no write.
            for n in range(20):
                await asyncio.to_thread(report, store, "s1", memory_gib=4 + n * 0.1)
            await asyncio.sleep(0.5)
            assert controller.writes == writes
            # Memory pressure: the score moves, one write, orange.
            await asyncio.to_thread(report, store, "s1", memory_gib=15.5)
            moved = await eventually(lambda: (stored_health(store, "s1") or {}).get("colour") == "orange")
            assert moved
            h = stored_health(store, "s1")
            assert h is not None and h["score"] == 75 and h["parts"]["performance"] == 0
            await asyncio.sleep(0.3)
            assert controller.writes == writes + 1

    asyncio.run(scenario())


def test_coalesces_to_one_write_per_interval(store: Store) -> None:
    report(store, "s0")

    async def scenario() -> None:
        async with running(store, min_interval=60.0) as controller:
            await eventually(lambda: stored_health(store, "s0"))
            writes = controller.writes
            # The score flaps: within the interval nothing more is written.
            for memory in (15.5, 4, 15.5, 4, 15.5):
                await asyncio.to_thread(report, store, "s0", memory_gib=memory)
            await asyncio.sleep(0.5)
            assert controller.writes == writes
            assert controller.view.sites[("acme", "s0")].health.colour == "orange"  # the view is current

    asyncio.run(scenario())


def test_time_alone_moves_the_score(store: Store) -> None:
    report(store, "s0")

    async def scenario() -> None:
        async with running(store, min_interval=0.0, offline_after=1.0) as controller:
            # No heartbeat: late after 0.5 s, offline (red) after 1 s, without any report.
            await eventually(lambda: (stored_health(store, "s0") or {}).get("colour") == "red", timeout=5)
            assert controller.view.sites[("acme", "s0")].health.parts["connectivity"] == 0
            assert controller.writes >= 2  # green first, then (late and) red

    asyncio.run(scenario())


def test_a_stalled_control_plane_costs_no_site_its_connectivity(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The event loop blocked for longer than the offline window: heartbeats count again from
    the end of the stall (as after a restart), so no site turns late or red for it."""
    report(store, "s0")

    async def scenario() -> None:
        async with running(store, min_interval=0.0, offline_after=2.0) as controller:
            await eventually(lambda: (stored_health(store, "s0") or {}).get("colour") == "green")
            time.sleep(3.0)  # nothing runs: no report could have been taken
            resumed = time.monotonic()
            while time.monotonic() - resumed < 0.6:
                await asyncio.sleep(0.05)
                assert controller.view.sites[("acme", "s0")].health.parts["connectivity"] == 100
            # Then silence counts again: late after half the window, red after the window.
            await eventually(lambda: (stored_health(store, "s0") or {}).get("colour") == "red", timeout=5)

    asyncio.run(scenario())
    assert "did not watch sites for" in caplog.text


def test_policy_denials_and_virtual_site_summary(store: Store) -> None:
    for i in range(4):
        report(store, f"s{i}", labels={"region": "jp" if i < 3 else "us"})
    store.create(
        "acme",
        VIRTUAL_SITE.normalize(
            {"metadata": {"name": "jp", "namespace": "default"}, "spec": {"selector": "region=jp"}}
        ),
    )

    async def scenario() -> None:
        async with running(store, min_interval=0.0) as controller:
            view = controller.view
            summary = view.summary(("acme", "default", "jp"))
            assert summary is not None
            assert summary["sites"] == 3 and summary["counts"] == {"green": 3, "orange": 0, "red": 0}
            assert view.summary(("acme", "default", "nope")) is None
            # s2 gets memory pressure and most of its hits denied by a policy created later.
            hits = {"default/github/allow-github": 10, "default/github/default-egress": 90}
            await asyncio.to_thread(report, store, "s2", labels=None, memory_gib=15.5, policyHits=hits)
            policy = NETWORK_POLICY.normalize(
                {
                    "metadata": {"name": "github", "namespace": "default"},
                    "spec": {
                        "virtualSites": ["jp"],
                        "egress": [{"name": "allow-github", "action": "allow", "domains": ["github.com"]}],
                        "defaultAction": {"egress": "deny"},
                    },
                }
            )
            await asyncio.to_thread(store.create, "acme", policy)
            await eventually(
                lambda: (stored_health(store, "s2") or {}).get("parts", {}).get("security") == 60
            )
            summary = controller.view.summary(("acme", "default", "jp"))
            assert summary is not None
            assert summary["counts"] == {"green": 2, "orange": 1, "red": 0}
            assert summary["worst"][0]["site"] == "s2" and summary["worst"][0]["score"] == 65
            fleet = controller.view.summary_of("acme")
            assert fleet["sites"] == 4

    asyncio.run(scenario())


def test_a_site_report_keeps_the_health(tmp_path: Path, store: Store) -> None:
    ctx = ServerContext(ServerSettings(data_dir=tmp_path), store, REGISTRY, WatchHub(store))
    site = store.create("acme", SITE.normalize({"metadata": {"name": "s0"}, "spec": {}}))
    health = {
        "score": 50,
        "colour": "orange",
        "parts": dict.fromkeys(("connectivity", "reliability", "security", "performance"), 50),
        "reasons": [],
    }
    site["status"] = {"phase": "Online", "identity": {"serial": "a1"}, "health": health}
    store.update("acme", site, part="status")
    # The site may not set its own health; the stored one stays.
    wanted = validated_status("s0", {"softwareVersion": "v2", "health": {**health, "score": 100}})
    assert "health" not in wanted
    updated = asyncio.run(StatusWriter(ctx).submit("acme", "s0", "a1", wanted)).site
    assert updated["status"]["health"] == health
    assert updated["status"]["softwareVersion"] == "v2"


def test_view_forgets_deleted_sites_and_policies() -> None:
    view = FleetHealth()
    now = time.time()
    view.set_site(
        "acme", {"kind": "Site", "metadata": {"name": "a", "labels": {"x": "1"}}, "status": status()}, now
    )
    view.set_virtual_site(
        "acme",
        {"kind": "VirtualSite", "metadata": {"name": "v", "namespace": "d"}, "spec": {"selector": "x=1"}},
    )
    assert view.members(("acme", "d", "v")) == {"a"}
    view.remove_site("acme", "a")
    assert view.members(("acme", "d", "v")) == set()
    policy = {
        "kind": "ServicePolicy",
        "metadata": {"name": "p", "namespace": "d"},
        "spec": {"defaultAction": "deny"},
    }
    assert view.set_policy("acme", policy) is True
    assert view.set_policy("acme", policy) is False
    assert view.deny["acme"] == {"d/p/default"}
    assert view.remove_policy("acme", policy) is True
    assert view.deny["acme"] == frozenset()


def test_a_site_event_takes_the_writers_score_unless_the_policies_moved(store: Store) -> None:
    """The status writer scores a report as it writes it (``score_report``); the Site event of
    that write takes that score instead of computing it again, unless a policy folded since
    changed the tenant's deny keys: then the event is scored afresh, against the new ones."""
    hits = {"default/github/allow-github": 10, "default/github/default-egress": 90}
    report(store, "s0")
    policy = NETWORK_POLICY.normalize(
        {
            "metadata": {"name": "github", "namespace": "default"},
            "spec": {
                "virtualSites": ["everywhere"],
                "egress": [{"name": "allow-github", "action": "allow", "domains": ["github.com"]}],
                "defaultAction": {"egress": "deny"},
            },
        }
    )

    def write(controller: HealthController, wanted: dict[str, Any], scored: Any) -> None:
        """What the status writer does: in one batch, the report with its score, and
        ``prescored`` before the commit (once committed, the hub may fold the event at once)."""
        with store.batch() as tx:
            site = tx.get_or_none("acme", SITE.kind, "", "s0")
            assert site is not None
            body = {**site, "status": {**wanted, "health": scored[0]}}
            written = tx.update("acme", body, part="status", stored=site)
            controller.prescored("acme", "s0", written["metadata"]["resourceVersion"], scored[1])

    def probe(controller: HealthController) -> Any:
        entry = controller.view.sites.get(("acme", "s0"))
        # A latency that costs nothing marks which write the entry holds.
        return (entry.status.get("link") or {}).get("latencyMs") if entry else None

    async def scenario() -> None:
        async with running(store, min_interval=0.0) as controller:
            # Deny keys unchanged: the event's entry holds the very score the writer made.
            wanted = status(policyHits=hits, link={"latencyMs": 1})
            scored = controller.score_report("acme", "s0", wanted)
            assert scored is not None
            await asyncio.to_thread(write, controller, wanted, scored)
            await eventually(lambda: probe(controller) == 1)
            assert controller.view.sites[("acme", "s0")].health is scored[1].health
            assert scored[1].health.to_status()["parts"]["security"] == 100

            # Scored before the policy is folded, written after: the event scores afresh.
            wanted = status(policyHits=hits, link={"latencyMs": 2})
            scored = controller.score_report("acme", "s0", wanted)
            assert scored is not None and scored[1].health.to_status()["parts"]["security"] == 100
            await asyncio.to_thread(store.create, "acme", policy)
            await eventually(lambda: bool(controller.view.deny.get("acme")))
            await asyncio.to_thread(write, controller, wanted, scored)
            await eventually(lambda: probe(controller) == 2)
            entry = controller.view.sites[("acme", "s0")]
            assert entry.health is not scored[1].health
            assert entry.health.to_status()["parts"]["security"] == 60

    asyncio.run(scenario())


def test_the_writers_score_waits_for_its_own_revision_and_is_dropped_when_not_committed(
    store: Store,
) -> None:
    """The writer hands its score over before its commit. An event of an earlier write (the
    controller's own health write, say) folds first: it is scored afresh and leaves the score
    for its write. A write that did not commit takes its score back, so the next event of
    the site, whatever it holds, is scored afresh."""
    site = report(store, "s0", policyHits={"default/x/y": 1})
    controller = HealthController(store, WatchHub(store), tick=0.05)
    controller.synced.set()
    revision = int(site["metadata"]["resourceVersion"])

    def at(rv: int) -> Obj:
        return {**site, "metadata": {**site["metadata"], "resourceVersion": str(rv)}}

    controller._fold("acme", at(revision), False)
    scored = controller.score_report("acme", "s0", site["status"])
    assert scored is not None
    controller.prescored("acme", "s0", str(revision + 2), scored[1])

    controller._fold("acme", at(revision + 1), False)  # an earlier write: not its score
    assert controller.view.sites[("acme", "s0")].health is not scored[1].health
    controller._fold("acme", at(revision + 2), False)  # the writer's own: its score
    assert controller.view.sites[("acme", "s0")].health is scored[1].health

    controller.prescored("acme", "s0", str(revision + 3), scored[1])
    controller.forget_prescored("acme", "s0")  # the batch raised: nothing committed
    controller._fold("acme", at(revision + 3), False)
    assert controller.view.sites[("acme", "s0")].health is not scored[1].health

    # A site deleted before its write's event: nothing of it stays behind.
    controller.prescored("acme", "s0", str(revision + 5), scored[1])
    controller._fold("acme", at(revision + 4), True)
    assert ("acme", "s0") not in controller.view.sites and not controller._prescored


def test_a_score_that_moves_while_its_write_runs_is_written_next(store: Store) -> None:
    """The flush writes a score in a worker thread; a policy folded meanwhile moves the score.
    The controller must remember what it wrote, not the newer score, or the store keeps the
    old one until the site next reports (here: never)."""
    hits = {"default/github/allow-github": 10, "default/github/default-egress": 90}
    site = report(store, "s0", policyHits=hits)
    policy = store.create(
        "acme",
        NETWORK_POLICY.normalize(
            {
                "metadata": {"name": "github", "namespace": "default"},
                "spec": {
                    "virtualSites": ["everywhere"],
                    "egress": [{"name": "allow-github", "action": "allow", "domains": ["github.com"]}],
                    "defaultAction": {"egress": "deny"},
                },
            }
        ),
    )
    controller = HealthController(store, WatchHub(store), tick=0.05, min_interval=0.0)
    controller.synced.set()
    controller.enable_writes()
    controller._fold("acme", site, False)  # the site, before the policy: security 100
    write = controller._write

    def write_while_the_policy_folds(batch: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
        done = write(batch)
        # The policy's event, folded on the loop while this thread finishes (the loop waits
        # on this thread here, so touching the view from it is safe in this test).
        controller._fold("acme", policy, False)
        return done

    async def scenario() -> None:
        controller._write = write_while_the_policy_folds  # type: ignore[method-assign]
        assert await controller.flush() == 1
        first = stored_health(store, "s0")
        assert first is not None and first["parts"]["security"] == 100  # the score it wrote
        controller._write = write  # type: ignore[method-assign]
        assert await controller.flush() == 1  # the moved score is still due
        second = stored_health(store, "s0")
        assert second is not None and second["parts"]["security"] == 60

    asyncio.run(scenario())


def test_a_site_that_reports_often_leaves_no_trail_of_re_evaluations() -> None:
    # Each report moves the time its score would change by itself (lateness): the earlier
    # re-evaluation it superseded must not stay queued until that time.
    now = [1_700_000_000.0]
    controller = HealthController(None, None, offline_after=600, clock=lambda: now[0])  # type: ignore[arg-type]
    for n in range(120):  # ten minutes of reports every 5 s from 100 sites
        stamp = dt.datetime.fromtimestamp(now[0], dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for i in range(100):
            site = {"kind": SITE.kind, "metadata": {"name": f"s{i}", "resourceVersion": str(n)}}
            controller._fold("acme", {**site, "status": {**status(), "lastSeen": stamp}}, deleted=False)
        now[0] += 5
    assert len(controller._heap) <= 2 * 100 + 64  # was one per report
    now[0] += 600  # every site silent past the window: each is evaluated again, none lost
    assert controller.expire() == 100
    assert all(entry.health.colour == "red" for entry in controller.view.sites.values())
