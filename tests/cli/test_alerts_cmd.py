"""``fleetplane get alertrules / alerts``, ``top virtualsites``, ``load`` and ``load history``
against a real server process; bad input is a one-line error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetplane.cli.alerts_cmd import histogram_lines
from fleetplane.core.objects import now_rfc3339
from tests.support.server import ServerProcess

GIB = 1 << 30
NAMES = {"site-offline", "site-certificate-expiring", "rollout-failed", "site-cpu-high", "site-memory-high"}


def test_histogram_bars_scale_to_the_biggest_bin() -> None:
    lines = histogram_lines(
        {"histogram": [{"from": 0, "to": 10, "sites": 2}, {"from": 10, "to": 20, "sites": 4}]}
    )
    assert lines[0].endswith(" 2 " + "#" * 15) and lines[1].endswith(" 4 " + "#" * 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--metrics-flush", "0.2", "--metrics-retention", "1s:1m"]
    srv = ServerProcess(tmp_path_factory.mktemp("alertscli") / "server", extra_args=args).start()
    try:
        with srv.client() as c:
            for name, memory in (("a-1", 15), ("a-2", 4), ("b-1", 2)):
                c.create("sites", {"kind": "Site", "metadata": {"name": name, "labels": {"zone": name[0]}}})
                site = c.get("sites", name)
                site["status"] = {
                    "phase": "Online",
                    "lastSeen": now_rfc3339(),
                    "usage": {"cpuMillis": 1000, "memoryBytes": memory * GIB},
                    "allocatable": {"cpuMillis": 4000, "memoryBytes": 16 * GIB},
                }
                c.request("PUT", f"/apis/fleetplane.io/v1/sites/{name}/status", body=site)
            c.create("virtualsites", {"kind": "VirtualSite", "metadata": {"name": "zone-a"},
                                      "spec": {"selector": "zone=a"}}, "default")  # fmt: skip
        yield srv
    finally:
        srv.stop()


def run(server: ServerProcess, *args: str) -> str:
    result = server.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def until(server: ServerProcess, args: tuple[str, ...], check: Any, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = run(server, *args)
        if check(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_get_alertrules_lists_the_default_rules(server: ServerProcess) -> None:
    out = until(server, ("get", "alertrules"), lambda o: "site-memory-high" in o)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "EXPR", "OP", "THRESHOLD", "FOR", "SEVERITY", "AGE"]
    row = next(line.split() for line in lines if line.startswith("site-memory-high"))
    assert row[1:6] == ["site.memory.percent", ">", "90.0", "5m", "warning"]
    listed = json.loads(run(server, "get", "alertrules", "-o", "json"))["items"]
    assert {r["metadata"]["name"] for r in listed} == NAMES
    none = server.cli("get", "alerts")
    assert none.returncode == 0 and "NAME" not in none.stdout  # nothing fired


def test_top_virtualsites_and_load(server: ServerProcess) -> None:
    out = until(server, ("top", "virtualsites"), lambda o: "default/zone-a" in o and " 3 " in o)
    lines = out.splitlines()
    header = ["NAME", "SITES", "CPU50", "CPU90", "CPU>75", "MEM50", "MEM90", "MEM>75", "DISK90"]
    assert lines[0].split() == header
    fleet = lines[1].split()
    assert fleet[0] == "(fleet)" and fleet[1] == "3"
    zone = next(line.split() for line in lines if line.startswith("default/zone-a"))
    assert zone[1] == "2" and zone[7] == "50%"  # one of the two zone-a sites above 75 % memory
    load = run(server, "load", "--above", "75")
    assert "33.3 % of sites use more than 75 % of memory" in load
    assert "0 % of sites use more than 75 % of cpu" in load
    one = run(server, "load", "--virtual-site", "zone-a", "-o", "json")
    assert json.loads(one)["scope"] == "default/zone-a"


def test_load_history(server: ServerProcess) -> None:
    out = until(server, ("load", "history", "a-1"), lambda o: "memory 94%" in o)
    assert out.startswith("a-1: now CPU 25%, memory 94%")


def test_bad_input_is_one_line_error(server: ServerProcess) -> None:
    for args in (("load", "--above", "x"), ("load", "history", "nope"), ("load", "-o", "xml")):
        result = server.cli(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
