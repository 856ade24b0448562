"""``fleetplane top sites`` and ``fleetplane health``: the row building and sorting, then the
real CLI against a real server process with ``fleetplane simulate`` sites, two of which go
silent and turn red."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.cli.top_cmd import _since, site_rows, sort_rows
from tests.integration.test_fleet_e2e import Pending, Simulator, sites, wait_for
from tests.support.server import ServerProcess

V = "fleetplane.io/v1"
GIB = 1 << 30


def fake(name: str, score: int | None, cpu: int, memory_gib: int) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Online",
        "usage": {"cpuMillis": cpu, "memoryBytes": memory_gib * GIB},
        "allocatable": {"cpuMillis": 4000, "memoryBytes": 8 * GIB},
    }
    if score is not None:
        status["health"] = {"score": score, "colour": "green" if score > 75 else "orange", "parts": {}}
    return {"metadata": {"name": name}, "status": status}


def test_rows_and_sorting() -> None:
    rows = site_rows(
        [fake("a", 90, 1000, 6), fake("b", 50, 3000, 2), fake("c", None, 2000, 4), fake("d", 50, 0, 0)]
    )
    assert rows[0]["cpuPercent"] == 25.0 and rows[0]["memoryPercent"] == 75.0
    assert [r["name"] for r in sort_rows(rows, "health")] == ["b", "d", "a", "c"]  # unscored last
    assert [r["name"] for r in sort_rows(rows, "cpu")] == ["b", "c", "a", "d"]
    assert [r["name"] for r in sort_rows(rows, "memory")] == ["a", "c", "b", "d"]


def test_since() -> None:
    now = dt.datetime(2026, 11, 24, 3, 0, 0, tzinfo=dt.UTC)
    assert _since("2026-11-24T02:59:58.5Z", now) == "1s ago"
    assert _since("2026-11-24T02:57:00Z", now) == "3m ago"
    assert _since(None, now) == "<never>"


# -- against a real server and simulated sites ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("top") / "server", extra_args=["--offline-after", "3"]
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def cli(server: ServerProcess, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fleetplane", *args],
        capture_output=True,
        text=True,
        env={**server.env(), "COLUMNS": "250"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def health_of(server: ServerProcess) -> dict[str, dict[str, Any]]:
    return {n: (s.get("status") or {}).get("health") or {} for n, s in sites(server, "fleet=top").items()}


@pytest.mark.slow
def test_top_sites_and_health_with_sim_sites(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {
                "apiVersion": V,
                "kind": "RegistrationToken",
                "metadata": {"name": "top"},
                "spec": {"autoAccept": True, "labels": {"fleet": "top"}},
            },
        )["status"]["token"]
        c.create(
            "virtualsites",
            {
                "apiVersion": V,
                "kind": "VirtualSite",
                "metadata": {"name": "topfleet"},
                "spec": {"selector": "fleet=top"},
            },
            "ops",
        )
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    steady = Simulator(
        server, tmp_path / "steady", token_file, "--sites", "3", "--seed", "1", "--prefix", "steady"
    )
    quiet = Simulator(
        server, tmp_path / "quiet", token_file, "--sites", "2", "--seed", "2", "--prefix", "quiet"
    )
    logs = (steady.output, quiet.output, server.log_tail)
    try:
        steady.start()
        quiet.start()

        def all_scored() -> dict[str, dict[str, Any]] | Pending:
            found = health_of(server)
            scored = {n: h for n, h in found.items() if h.get("parts", {}).get("connectivity") == 100}
            return found if len(scored) == 5 else Pending(f"{len(scored)}/{len(found)} scored: {found}")

        wait_for("every site to get a health score", all_scored, 120, *logs)
        table = cli(server, "top", "sites", "-l", "fleet=top", "--sort", "cpu")
        lines = table.splitlines()
        assert lines[0].split() == ["NAME", "HEALTH", "CPU", "%", "MEMORY", "%", "PHASE", "LAST", "SEEN"]
        assert len(lines) == 6 and all("Online" in line for line in lines[1:])
        assert "\x1b[" not in table  # not a terminal: plain text
        as_json = json.loads(cli(server, "top", "sites", "-l", "fleet=top", "--sort", "memory", "-o", "json"))
        memory = [r["memoryPercent"] for r in as_json]
        assert memory == sorted(memory, reverse=True) and all(m is not None for m in memory)

        quiet.stop()  # two sites go silent: offline after 3 s, then red

        def quiet_red() -> bool | Pending:
            found = health_of(server)
            red = sorted(n for n, h in found.items() if h.get("colour") == "red")
            return red == sorted(n for n in found if n.startswith("quiet")) or Pending(f"red: {red}")

        wait_for("the silent sites to turn red", quiet_red, 60, *logs)
        top = cli(server, "top", "sites", "-l", "fleet=top", "--limit", "2").splitlines()
        assert len(top) == 3
        assert all(line.startswith("quiet") and "red" in line and "Offline" in line for line in top[1:])

        summary = cli(server, "health", "topfleet", "-n", "ops")
        first = summary.splitlines()[0]
        assert first.startswith("ops/topfleet: 5 sites: ") and first.endswith(", 2 red"), summary
        worst = [line for line in summary.splitlines() if line.startswith("quiet")]
        assert len(worst) == 2 and all("offline" in line for line in worst)
        fleet = cli(server, "health")
        assert "ops/topfleet" in fleet and fleet.splitlines()[0].startswith("fleet: ")
        missing = subprocess.run(
            [sys.executable, "-m", "fleetplane", "health", "nope", "-n", "ops"],
            capture_output=True,
            text=True,
            env=server.env(),
            timeout=60,
            check=False,
        )
        assert missing.returncode == 1 and "NotFound" in missing.stderr
    finally:
        steady.stop()
        quiet.stop()
