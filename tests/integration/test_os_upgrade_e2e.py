"""An OS upgrade end to end: the real server process and ``fleetplane simulate`` processes.

16 sim sites (``--profile fast``: an A/B upgrade takes seconds) onboard; two of them come from
a simulator started with ``--fault install_failure``. An OsUpgrade to the catalogue's latest
version on their virtual site makes the 14 healthy sites install, reboot, health-check and
commit it, while the two faulty ones fall back to their old slot and say why; ``fleetplane os
status`` shows every site behind before, and 14 up to date and 2 failed after.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_fleet_e2e import Pending, Simulator, manifests, sites, wait_for
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
V = "fleetplane.io/v1"
GOOD, BAD = 14, 2
OLD, NEW = "fleetos-1.4.2", "fleetos-1.5.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("os-fleet") / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


def os_status(server: ServerProcess) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fleetplane", "os", "status", "-l", "fleet=osup"],
        capture_output=True,
        text=True,
        env={**server.env(), "COLUMNS": "250"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def os_item(site: dict[str, Any]) -> dict[str, Any]:
    items = ((site.get("status") or {}).get("manifest") or {}).get("items") or []
    return next((i for i in items if i["section"] == "os"), {})


def test_os_upgrade_with_two_install_failures(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {
                "apiVersion": V,
                "kind": "RegistrationToken",
                "metadata": {"name": "os-fleet"},
                "spec": {"autoAccept": True, "labels": {"fleet": "osup"}},
            },
        )["status"]["token"]
        for name, date in ((OLD, "2025-06-01"), (NEW, "2026-02-01")):
            c.create(
                "osversions",
                {
                    "apiVersion": V,
                    "kind": "OsVersion",
                    "metadata": {"name": name},
                    "spec": {"releaseDate": date},
                },
            )
        c.create(
            "virtualsites",
            {
                "apiVersion": V,
                "kind": "VirtualSite",
                "metadata": {"name": "osfleet"},
                "spec": {"selector": "fleet=osup"},
            },
            "ops",
        )
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    common = ("--profile", "fast")
    good = Simulator(server, tmp_path / "good", token_file, "--sites", str(GOOD), "--seed", "5", *common)
    bad = Simulator(
        server, tmp_path / "bad", token_file, "--sites", str(BAD), "--seed", "6", "--prefix", "bad",
        "--fault", "install_failure", *common,
    )  # fmt: skip
    logs = (good.output, bad.output, server.log_tail)
    try:
        good.start()
        bad.start()

        def all_on_old() -> bool | Pending:
            found = sites(server, "fleet=osup")
            on_old = [
                n for n, s in found.items() if ((s.get("status") or {}).get("os") or {}).get("current") == OLD
            ]
            return len(on_old) == GOOD + BAD or Pending(f"{len(on_old)}/{len(found)} sites report {OLD}")

        wait_for("every site to report its OS", all_on_old, 120, *logs)
        before = os_status(server)
        assert f"{GOOD + BAD} sites: 0 up to date, 0 upgrading, {GOOD + BAD} behind, 0 failed" in before

        with server.client() as c:
            c.create(
                "osupgrades",
                {
                    "apiVersion": V,
                    "kind": "OsUpgrade",
                    "metadata": {"name": "to-1-5"},
                    "spec": {"virtualSites": ["osfleet"], "version": NEW},
                },
                "ops",
            )

        def settled() -> dict[str, dict[str, Any]] | Pending:
            found, mans = sites(server, "fleet=osup"), manifests(server)
            for name, s in found.items():
                man = mans.get(name) or {"metadata": {}, "spec": {"sections": {}}}
                rep = (s.get("status") or {}).get("manifest") or {}
                if (man["spec"]["sections"].get("os") or {}).get("version") != NEW:
                    return Pending(f"{name}: manifest has no os target {NEW} yet")
                if rep.get("generation") != man["metadata"]["generation"]:
                    return Pending(f"{name}: reports generation {rep.get('generation')}")
                if os_item(s).get("state") not in ("Applied", "Failed"):
                    return Pending(f"{name}: os item {os_item(s)}")
            return found

        found = wait_for("every site to finish its upgrade", settled, 120, *logs)
        failed = {n for n, s in found.items() if os_item(s)["state"] == "Failed"}
        assert failed == {n for n in found if n.startswith("bad-")} and len(failed) == BAD
        for name, s in found.items():
            reported = s["status"]["os"]
            assert reported["target"] == NEW, name
            if name in failed:
                # Fell back to the old slot on its own, and says why.
                assert reported["current"] == OLD and reported["running"] == reported["active"] == "A"
                assert reported["lastResult"]["outcome"] == "FellBack"
                assert "injected install failure" in os_item(s)["reason"]
                assert s["status"]["manifest"]["state"] == "Failed"
            else:
                assert reported["current"] == NEW and reported["active"] == "B", name
                assert reported["slots"] == {"A": OLD, "B": NEW}
                assert s["status"]["osVersion"] == NEW
                assert s["status"]["manifest"]["state"] == "Applied"

        after = os_status(server)
        assert f"{GOOD + BAD} sites: {GOOD} up to date, 0 upgrading, 0 behind, {BAD} failed" in after
        for line in after.splitlines():
            if line.startswith("bad-"):
                assert "Failed" in line and "injected install failure" in line
    finally:
        good.stop()
        bad.stop()
