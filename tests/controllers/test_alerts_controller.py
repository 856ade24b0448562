"""The alert controller over a real store and a real local webhook receiver: Alerts written
and notified on fire and on resolve in the Alertmanager format, failures retried with
backoff until the receiver answers, a restart that neither re-fires nor loses an alert, and
the default rules created once per tenant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.controllers.alert_notify import RetryPolicy
from fleetplane.controllers.alerts import DEFAULT_RULES, AlertController
from fleetplane.controllers.health_controller import FleetHealth
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import ALERT, ALERT_RECEIVER, ALERT_RULE, TENANT
from tests.controllers.test_alert_eval import NOW, site
from tests.support.controllers import running_controller
from tests.support.webhook import Receiver


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def setup_rule(store: Store, url: str, **spec: Any) -> None:
    rule = {
        "expr": "site.memory.percent",
        "op": ">",
        "threshold": 90,
        "for": "60s",
        "receivers": ["ops"],
        **spec,
    }
    store.create(
        "acme", ALERT_RULE.normalize({"metadata": {"name": "mem", "namespace": "default"}, "spec": rule})
    )
    store.create(
        "acme",
        ALERT_RECEIVER.normalize(
            {"metadata": {"name": "ops", "namespace": "default"}, "spec": {"webhook": {"url": url}}}
        ),
    )


def running(
    store: Store, view: FleetHealth, clock: Clock, **kw: Any
) -> contextlib.AbstractAsyncContextManager[AlertController]:
    kw.setdefault("default_rules", False)

    def build(hub: WatchHub) -> AlertController:
        controller = AlertController(
            store, hub, lambda: view, interval=3600, clock=clock, external_url="https://fp", **kw
        )
        controller.enable()
        return controller

    return running_controller(store, build)


def alert(store: Store) -> dict[str, Any]:
    status: dict[str, Any] = store.get("acme", ALERT.kind, "default", "mem")["status"]
    return status


def test_fires_after_for_notifies_in_alertmanager_format_and_resolves(
    store: Store, receiver: Receiver
) -> None:
    setup_rule(store, receiver.url)
    clock = Clock()
    view = FleetHealth()
    view.set_site("acme", site("hot", memory=95), NOW)
    view.set_site("acme", site("cool", memory=20), NOW)

    async def scenario() -> None:
        async with running(store, view, clock) as ctl:
            await ctl.tick()
            assert alert(store)["state"] == "pending" and receiver.bodies == []
            clock.now += 61
            await ctl.tick()
            assert alert(store)["state"] == "firing" and alert(store)["affected"] == ["hot"]
            assert len(receiver.bodies) == 1
            body = receiver.bodies[0]
            assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "ops"
            assert body["groupLabels"] == {"alertname": "mem"}
            assert body["externalURL"] == "https://fp"
            assert body["groupKey"] == '{}/{namespace="default"}:{alertname="mem"}'
            (one,) = body["alerts"]
            assert one["status"] == "firing" and one["labels"]["site"] == "hot"
            assert one["labels"]["alertname"] == "mem" and one["labels"]["severity"] == "warning"
            assert body["commonLabels"]["alertname"] == "mem" and "summary" in one["annotations"]
            assert one["endsAt"] == "0001-01-01T00:00:00Z" and len(one["fingerprint"]) == 16
            assert one["generatorURL"] == "https://fp/apis/fleetplane.io/v1/namespaces/default/alertrules/mem"
            assert set(body) >= {"commonAnnotations", "truncatedAlerts"}
            await ctl.tick()  # nothing changed: nothing sent
            assert len(receiver.bodies) == 1
            view.set_site("acme", site("hot", memory=40), clock.now)
            clock.now += 5
            await ctl.tick()
            assert alert(store)["state"] == "resolved"
            assert len(receiver.bodies) == 2
            resolved = receiver.bodies[1]
            assert resolved["status"] == "resolved"
            assert [a["status"] for a in resolved["alerts"]] == ["resolved"]
            assert resolved["alerts"][0]["fingerprint"] == one["fingerprint"]
            assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
            assert alert(store)["resolved"] == {}  # told: nothing left to tell

    asyncio.run(scenario())


def test_failed_webhook_is_retried_with_backoff_until_it_succeeds(store: Store) -> None:
    flaky = Receiver(codes=[500, 503])
    setup_rule(store, flaky.url, **{"for": "0s"})
    clock = Clock()
    view = FleetHealth()
    view.set_site("acme", site("hot", memory=95), NOW)

    async def scenario() -> None:
        async with running(store, view, clock, retry=RetryPolicy(base=10, cap=100, max_attempts=5)) as ctl:
            await ctl.tick()
            assert flaky.attempts == 1 and flaky.bodies == []
            state = alert(store)["receivers"]["ops"]
            assert state["attempts"] == 1 and "500" in state["lastError"]
            clock.now += 9  # backoff: 10 s after the first failure
            await ctl.tick()
            assert flaky.attempts == 1
            clock.now += 1
            await ctl.tick()
            assert flaky.attempts == 2  # second failure: next in 20 s
            clock.now += 19
            await ctl.tick()
            assert flaky.attempts == 2
            clock.now += 1
            await ctl.tick()
            assert flaky.attempts == 3 and len(flaky.bodies) == 1
            state = alert(store)["receivers"]["ops"]
            assert state["attempts"] == 0 and "lastError" not in state and state["notified"].keys() == {"hot"}

    try:
        asyncio.run(scenario())
    finally:
        flaky.close()


def test_gives_up_after_max_attempts(store: Store) -> None:
    dead = Receiver(codes=[500] * 10)
    setup_rule(store, dead.url, **{"for": "0s"})
    clock = Clock()
    view = FleetHealth()
    view.set_site("acme", site("hot", memory=95), NOW)

    async def scenario() -> None:
        async with running(store, view, clock, retry=RetryPolicy(base=1, cap=1, max_attempts=3)) as ctl:
            for _ in range(6):
                await ctl.tick()
                clock.now += 2
            assert dead.attempts == 3
            assert "gave up after 3 attempts" in alert(store)["receivers"]["ops"]["lastError"]

    try:
        asyncio.run(scenario())
    finally:
        dead.close()


def test_restart_neither_refires_nor_loses_the_alert(store: Store, receiver: Receiver) -> None:
    setup_rule(store, receiver.url)
    clock = Clock()
    view = FleetHealth()
    view.set_site("acme", site("hot", memory=95), NOW)

    async def scenario() -> None:
        async with running(store, view, clock) as ctl:
            await ctl.tick()
            clock.now += 30
            await ctl.tick()
        assert alert(store)["state"] == "pending"
        async with running(store, view, clock) as ctl:  # restarted: the for clock kept running
            clock.now += 31
            await ctl.tick()
            assert alert(store)["state"] == "firing" and len(receiver.bodies) == 1
        async with running(store, view, clock) as ctl:  # restarted while firing: no second POST
            clock.now += 10
            await ctl.tick()
            assert alert(store)["state"] == "firing" and len(receiver.bodies) == 1
            view.set_site("acme", site("hot", memory=10), clock.now)
            await ctl.tick()
            assert alert(store)["state"] == "resolved" and len(receiver.bodies) == 2
            assert ctl.firing() == [(("acme", "default", "mem"), "warning", 0, 0)]

    asyncio.run(scenario())


def test_deleting_the_rule_deletes_its_alert(store: Store, receiver: Receiver) -> None:
    setup_rule(store, receiver.url, **{"for": "0s"})
    clock = Clock()
    view = FleetHealth()
    view.set_site("acme", site("hot", memory=95), NOW)

    async def scenario() -> None:
        async with running(store, view, clock) as ctl:
            await ctl.tick()
            assert alert(store)["state"] == "firing"
            await asyncio.to_thread(store.delete, "acme", ALERT_RULE.kind, "default", "mem")
            for _ in range(100):
                if ("acme", "default", "mem") not in ctl.rules:
                    break
                await asyncio.sleep(0.02)
            await ctl.tick()
            assert store.get_or_none("acme", ALERT.kind, "default", "mem") is None

    asyncio.run(scenario())


def test_default_rules_created_once_per_tenant(store: Store) -> None:
    store.create("", TENANT.normalize({"metadata": {"name": "acme"}, "spec": {}}))
    clock = Clock()

    async def scenario() -> None:
        async with running(store, FleetHealth(), clock, default_rules=True):
            pass
        names = {
            r["metadata"]["name"] for r in store.list("acme", ALERT_RULE.kind, namespace="default").items
        }
        assert names == {name for name, _ in DEFAULT_RULES}
        disabled = store.get("acme", ALERT_RULE.kind, "default", "site-cpu-high")
        disabled["spec"]["disabled"] = True
        store.update("acme", disabled)
        async with running(store, FleetHealth(), clock, default_rules=True):
            pass  # again: nothing duplicated, the operator's change kept
        again = store.list("acme", ALERT_RULE.kind, namespace="default").items
        assert len(again) == len(DEFAULT_RULES)
        assert store.get("acme", ALERT_RULE.kind, "default", "site-cpu-high")["spec"]["disabled"] is True

    asyncio.run(scenario())
