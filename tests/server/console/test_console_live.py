"""The console's live stream over real HTTP: a small change arrives with its map rows; a burst
of many changes is coalesced into a few messages that tell the page to refetch."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.server.console.conftest import API, put_site
from tests.support.server import ServerProcess

DEADLINE_S = 20.0


@contextlib.contextmanager
def events(server: ServerProcess) -> Iterator[Iterator[dict[str, Any]]]:
    """The ``change`` messages of ``/console/api/events``, once the stream follows the store;
    leaving the block hangs up, as a closed tab does."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with (
        httpx.Client(base_url=server.url, verify=server.tls, headers=headers, timeout=60) as http,
        http.stream("GET", "/console/api/events") as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")  # sent once the stream follows the hub

        def messages() -> Iterator[dict[str, Any]]:
            deadline = time.monotonic() + DEADLINE_S
            for line in lines:  # keepalives and blank lines let the deadline be checked
                if time.monotonic() > deadline:
                    raise AssertionError("the expected messages did not arrive")
                if line.startswith("data: "):
                    yield json.loads(line.removeprefix("data: "))

        yield messages()


def test_one_change_comes_with_its_map_row(server: ServerProcess, admin: httpx.Client) -> None:
    with events(server) as messages:
        put_site(admin, "live-one", labels={}, where=(10.5, 20.25), health=None)
        for message in messages:
            rows = [r for r in message["sites"] or [] if r[0] == "live-one"]
            if rows:
                assert "Site" in message["kinds"]
                assert rows == [["live-one", 10.5, 20.25, "grey", None]]
                break


def test_a_burst_of_changes_is_coalesced(server: ServerProcess, admin: httpx.Client) -> None:
    wanted = {f"burst-{i:03d}" for i in range(250)}
    with events(server) as messages:
        with httpx.Client(base_url=server.url, verify=server.tls, headers=admin.headers, timeout=60) as http:

            def create(name: str) -> int:
                return http.post(f"{API}/sites", json={"metadata": {"name": name}, "spec": {}}).status_code

            with ThreadPoolExecutor(4) as pool:
                assert set(pool.map(create, sorted(wanted))) == {201}
        seen: set[str] = set()
        count = 0
        for message in messages:
            count += 1
            if message["sites"] is None:  # too many at once: the page refetches
                break
            seen |= {r[0] for r in message["sites"]}
            if wanted <= seen:
                break
        # 250 creates: a handful of coalesced messages, never one per change.
        assert count <= 25
