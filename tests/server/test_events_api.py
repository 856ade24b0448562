"""Events through the native API of a real server: the site events controller records a new
site and its transitions, the list takes the upstream field selectors, and no client (not
even the admin) may write an Event."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.server.test_metrics import API, client, ok
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = ServerProcess(tmp_path_factory.mktemp("events") / "data").start()
    try:
        with client(server, server.admin_key) as http:
            for name in ("alpha", "beta"):
                ok(http.post(f"{API}/sites", json={"metadata": {"name": name}}), 201)
            yield http
    finally:
        server.stop()


def listed(http: httpx.Client, selector: str) -> list[dict[str, Any]]:
    body = ok(http.get(f"{API}/events", params={"fieldSelector": selector}))
    assert body["kind"] == "EventList"
    items: list[dict[str, Any]] = body["items"]
    return items


def eventually(get: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def mark_beta_offline(admin: httpx.Client) -> None:
    """Site beta goes Offline (once: the tests run in any order and share the server)."""
    if (ok(admin.get(f"{API}/sites/beta")).get("status") or {}).get("phase") == "Offline":
        return
    time.sleep(1.1)  # a later second than the registration: the newest-first order is certain
    for _ in range(10):  # a controller may write the status in between: retry on 409
        site = ok(admin.get(f"{API}/sites/beta"))
        site["status"] = {**site.get("status", {}), "phase": "Offline"}
        resp = admin.put(f"{API}/sites/beta/status", json=site)
        if resp.status_code != 409:
            break
    ok(resp)


def test_new_sites_get_an_event_and_field_selectors_filter(admin: httpx.Client) -> None:
    registered = eventually(lambda: listed(admin, "reason=Registered"), lambda items: len(items) == 2)
    assert sorted(e["spec"]["involvedObject"]["name"] for e in registered) == ["alpha", "beta"]
    (alpha,) = listed(admin, "involvedObject.name=alpha")
    assert alpha["kind"] == "Event"
    assert alpha["spec"]["type"] == "Normal" and alpha["spec"]["count"] == 1
    assert alpha["spec"]["involvedObject"]["kind"] == "Site"
    assert len(listed(admin, "involvedObject.kind=Site,type=Normal")) == 2
    assert listed(admin, "type=Warning") == []
    assert [e["spec"]["involvedObject"]["name"] for e in listed(admin, "involvedObject.name!=alpha")] == [
        "beta"
    ]

    mark_beta_offline(admin)
    warnings = eventually(lambda: listed(admin, "type=Warning"), lambda items: len(items) == 1)
    assert [(e["spec"]["reason"], e["spec"]["involvedObject"]["name"]) for e in warnings] == [
        ("SiteOffline", "beta")
    ]


def test_events_are_read_only_even_for_the_admin(admin: httpx.Client) -> None:
    (event,) = eventually(lambda: listed(admin, "involvedObject.name=alpha"), lambda items: len(items) == 1)
    name = event["metadata"]["name"]
    body = {"metadata": {"name": "forged"}, "spec": {**event["spec"], "message": "forged"}}
    attempts = [
        admin.post(f"{API}/events", json=body),
        admin.put(f"{API}/events/{name}", json={**event, "spec": {**event["spec"], "count": 99}}),
        admin.patch(
            f"{API}/events/{name}",
            json={"spec": {"count": 99}},
            headers={"Content-Type": "application/merge-patch+json"},
        ),
        admin.delete(f"{API}/events/{name}"),
    ]
    for resp in attempts:
        assert resp.status_code == 403, resp.text
        assert resp.json()["kind"] == "Status"
        assert "managed by the server" in resp.json()["message"]
    assert ok(admin.get(f"{API}/events/{name}"))["spec"]["count"] == event["spec"]["count"]


def test_a_malformed_field_selector_is_a_400_naming_it(admin: httpx.Client) -> None:
    resp = admin.get(f"{API}/events", params={"fieldSelector": "reason"})
    assert resp.status_code == 400
    assert resp.json()["details"]["causes"][0]["field"] == "fieldSelector"


def test_the_console_site_page_lists_the_site_events_newest_first(admin: httpx.Client) -> None:
    def page() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = ok(admin.get("/console/api/sites/beta"))["events"]
        return events

    mark_beta_offline(admin)
    events = eventually(page, lambda items: len(items) == 2)
    assert [(e["type"], e["reason"]) for e in events] == [
        ("Warning", "SiteOffline"),
        ("Normal", "Registered"),
    ]
    assert events[0]["count"] == 1 and events[0]["lastTimestamp"] >= events[1]["lastTimestamp"]
