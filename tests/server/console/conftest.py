"""Fixtures of the console tests: one real server process per module, sites whose status the
test writes through the native API (so their health is known), and, for the browser tests,
Debian's chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.onboarding import operator
from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
# The dot colours the console paints (static/app.js COLOURS), by health colour.
FILL = {"green": "#2e9e44", "orange": "#f08c00", "red": "#d63333", "grey": "#9aa0a6"}


def now(ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


# Statuses whose health colour docs/health.md fixes: fresh and idle (100, green); memory at
# 96 % (performance 0: mean 75, orange); a link with 1.5 s latency and 20 % loss
# (connectivity 0: capped at 39, red).
STATUS: dict[str, dict[str, Any]] = {
    "green": {"phase": "Online", "usage": {"cpuPercent": 20, "memoryPercent": 30}},
    "orange": {"phase": "Online", "usage": {"cpuPercent": 20, "memoryPercent": 96}},
    "red": {
        "phase": "Online",
        "usage": {"cpuPercent": 85, "memoryPercent": 50},
        "link": {"latencyMs": 1500, "lossPercent": 20},
    },
}


def put_site(
    http: httpx.Client,
    name: str,
    *,
    labels: dict[str, str],
    where: tuple[float, float] | None,
    health: str | None,
) -> None:
    """Create a site and, unless ``health`` is None (never reported), report a status."""
    spec: dict[str, Any] = {"displayName": name.upper()}
    if where is not None:
        spec["coordinates"] = {"latitude": where[0], "longitude": where[1]}
    r = http.post(f"{API}/sites", json={"metadata": {"name": name, "labels": labels}, "spec": spec})
    assert r.status_code == 201, r.text
    if health is not None:
        report_status(http, name, {**STATUS[health], "lastSeen": now()})


def report_status(http: httpx.Client, name: str, status: dict[str, Any]) -> None:
    site = http.get(f"{API}/sites/{name}").json()
    merged = {**(site.get("status") or {}), **status}
    r = http.put(f"{API}/sites/{name}/status", json={**site, "status": merged})
    assert r.status_code == 200, r.text


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def csrf_of(shell_html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]*)">', shell_html)
    assert found, "the console shell carries the session's CSRF token"
    return found.group(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Sites written by the test report once: keep them from going offline mid-module.
    proc = ServerProcess(
        tmp_path_factory.mktemp("console") / "server", extra_args=["--offline-after", "600"]
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with operator(server) as http:
        yield http
