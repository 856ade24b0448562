"""``fleetplane events SITE`` (newest first) and ``fleetplane get events --field-selector``
against a real server process; an unknown site is a one-line error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from fleetplane.cli.events_cmd import newest_first
from fleetplane.core.errors import ApiError
from tests.support.server import ServerProcess


def test_newest_first_orders_by_last_then_first_timestamp() -> None:
    def ev(last: str, first: str) -> dict[str, dict[str, str]]:
        return {"spec": {"lastTimestamp": last, "firstTimestamp": first}}

    items = [
        ev("2027-01-01T00:00:01Z", "a"),
        ev("2027-01-01T00:00:03Z", "a"),
        ev("2027-01-01T00:00:01Z", "b"),
    ]
    assert newest_first(items) == [items[1], items[2], items[0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("eventscli") / "server", extra_args=["--event-ttl", "600"])
    srv.start()
    try:
        with srv.client() as c:
            for name in ("store-1", "store-2"):
                c.create("sites", {"kind": "Site", "metadata": {"name": name}})
        yield srv
    finally:
        srv.stop()


def run(server: ServerProcess, *args: str) -> str:
    result = server.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(server: ServerProcess, site: str, reason: str) -> None:
    """Until the controller wrote it (through the API: a CLI run per poll would be slow)."""
    deadline = time.monotonic() + 15
    with server.client() as c:
        while time.monotonic() < deadline:
            found = c.list("events", field_selector=f"involvedObject.name={site},reason={reason}")
            if found["items"]:
                return
            time.sleep(0.1)
    raise AssertionError(f"no {reason} event for {site}")


def go_offline(server: ServerProcess, name: str) -> None:
    with server.client() as c:
        for _ in range(10):  # a controller may write the status in between: retry on 409
            site = c.get("sites", name)
            site["status"] = {**(site.get("status") or {}), "phase": "Offline"}
            try:
                c.request("PUT", f"/apis/fleetplane.io/v1/sites/{name}/status", body=site)
                return
            except ApiError as exc:
                if exc.code != 409:
                    raise
    raise AssertionError("status write kept conflicting")


def test_events_lists_a_site_newest_first(server: ServerProcess) -> None:
    wait_for(server, "store-1", "Registered")
    time.sleep(1.1)  # a later second: the two events' lastTimestamp differ
    go_offline(server, "store-1")
    wait_for(server, "store-1", "SiteOffline")
    out = run(server, "events", "store-1")
    lines = out.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "COUNT", "MESSAGE"]
    assert [line.split()[1:3] for line in lines[1:]] == [["Warning", "SiteOffline"], ["Normal", "Registered"]]
    assert "store-2" not in out
    newest = json.loads(run(server, "events", "store-1", "--limit", "1", "-o", "json"))["items"]
    assert [(e["spec"]["reason"], e["spec"]["count"]) for e in newest] == [("SiteOffline", 1)]


def test_get_events_with_a_field_selector(server: ServerProcess) -> None:
    wait_for(server, "store-2", "Registered")
    out = run(server, "get", "events", "--field-selector", "involvedObject.name=store-2")
    lines = out.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert len(lines) == 2 and lines[1].split()[1:4] == ["Normal", "Registered", "store-2"]
    assert lines[1].split()[0].endswith(("s", "m"))  # an age, as kubectl shows it


def test_unknown_site_is_a_one_line_error(server: ServerProcess) -> None:
    result = server.cli("events", "nowhere")
    assert result.returncode != 0
    assert "nowhere" in result.stderr and len(result.stderr.strip().splitlines()) == 1
