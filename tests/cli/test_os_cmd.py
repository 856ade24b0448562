"""``fleetplane os status`` / ``os versions`` and OS intents through ``fleetplane apply``.

The classification is checked on hand-made sites; the commands and the catalogue check run
against a real server process, as an operator types them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.cli.os_cmd import fleet_view, summary_line
from tests.cli.test_cli import ok, one_line_error, run, write_yaml
from tests.support.server import ServerProcess

V = "fleetplane.io/v1"


def site(name: str, current: str | None, item: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Online"}
    if current:
        status["os"] = {"current": current}
    if item:
        status["manifest"] = {"generation": 2, "state": "Applied", "items": [{"section": "os", **item}]}
    return {"metadata": {"name": name}, "status": status}


def manifest(name: str, target: str | None) -> dict[str, Any]:
    sections = {"os": {"version": target, "sources": ["ops/up"]}} if target else {}
    return {"metadata": {"name": name}, "spec": {"sections": sections}}


def version(name: str, channel: str = "stable") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"channel": channel}}


CATALOGUE = [version("fleetos-1.4.2"), version("fleetos-1.5.0"), version("fleetos-2.0.0-rc.1", "beta")]


def test_each_site_is_up_to_date_upgrading_behind_failed_or_unknown() -> None:
    fell_back = "upgrade to fleetos-1.5.0 fell back: install failed; running fleetos-1.4.2 in slot A"
    sites = [
        site("a-done", "fleetos-1.5.0", {"name": "fleetos-1.5.0", "state": "Applied"}),
        site(
            "b-installing", "fleetos-1.4.2", {"name": "fleetos-1.5.0", "state": "InProgress", "reason": "x"}
        ),
        site("c-not-yet", "fleetos-1.4.2"),
        site("d-failed", "fleetos-1.4.2", {"name": "fleetos-1.5.0", "state": "Failed", "reason": fell_back}),
        site("e-untargeted", "fleetos-1.4.2"),
        site("f-silent", None),
    ]
    mans = [manifest(n, "fleetos-1.5.0") for n in ("a-done", "b-installing", "c-not-yet", "d-failed")]
    view = fleet_view(sites, [*mans, manifest("e-untargeted", None)], CATALOGUE)
    states = {r["name"]: (r["current"], r["target"], r["state"]) for r in view["sites"]}
    assert states == {
        "a-done": ("fleetos-1.5.0", "fleetos-1.5.0", "UpToDate"),
        "b-installing": ("fleetos-1.4.2", "fleetos-1.5.0", "Upgrading"),
        "c-not-yet": ("fleetos-1.4.2", "fleetos-1.5.0", "Upgrading"),
        "d-failed": ("fleetos-1.4.2", "fleetos-1.5.0", "Failed"),
        "e-untargeted": ("fleetos-1.4.2", None, "Behind"),
        "f-silent": (None, None, "Unknown"),
    }
    assert next(r for r in view["sites"] if r["name"] == "d-failed")["reason"] == fell_back
    assert {r["latest"] for r in view["sites"]} == {"fleetos-1.5.0"}  # the beta rc is not stable
    assert summary_line(view) == (
        "6 sites: 1 up to date, 2 upgrading, 1 behind, 1 failed, 1 unknown (latest stable: fleetos-1.5.0)"
    )


def test_a_new_target_after_a_failure_counts_as_upgrading_again() -> None:
    failed_old = site("s", "fleetos-1.4.2", {"name": "fleetos-1.5.0", "state": "Failed", "reason": "bad"})
    view = fleet_view([failed_old], [manifest("s", "fleetos-1.5.1")], [*CATALOGUE, version("fleetos-1.5.1")])
    assert view["sites"][0]["state"] == "Upgrading"
    assert view["summary"]["Failed"] == 0


# -- against a real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("os-cli") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


def catalogue_docs() -> list[dict[str, Any]]:
    return [
        {"apiVersion": V, "kind": "OsVersion", "metadata": {"name": "fleetos-1.4.2"}, "spec": {}},
        {
            "apiVersion": V,
            "kind": "OsVersion",
            "metadata": {"name": "fleetos-1.5.0"},
            "spec": {"releaseDate": "2026-02-01", "description": "LTS kernel"},
        },
    ]


def upgrade_doc(version: str, name: str = "to-latest") -> dict[str, Any]:
    return {
        "apiVersion": V,
        "kind": "OsUpgrade",
        "metadata": {"name": name, "namespace": "ops"},
        "spec": {"virtualSites": ["prod"], "version": version},
    }


def test_an_upgrade_to_a_version_outside_the_catalogue_is_refused_naming_the_field(
    srv: ServerProcess, tmp_path: Path
) -> None:
    ok(run(srv, "apply", "-f", str(write_yaml(tmp_path / "catalogue.yaml", catalogue_docs()))))
    line = one_line_error(
        run(srv, "apply", "-f", str(write_yaml(tmp_path / "u.yaml", [upgrade_doc("fleetos-9.9.9")])))
    )
    assert "spec.version" in line and 'OS version "fleetos-9.9.9" is not in the catalogue' in line
    line = one_line_error(
        run(srv, "apply", "-f", str(write_yaml(tmp_path / "b.yaml", [upgrade_doc("FleetOS 2")])))
    )
    assert "spec.version" in line and "is not a version" in line
    # A known version is accepted, and changing it to an unknown one is refused the same way.
    ok(run(srv, "apply", "-f", str(write_yaml(tmp_path / "good.yaml", [upgrade_doc("fleetos-1.5.0")]))))
    line = one_line_error(
        run(srv, "apply", "-f", str(write_yaml(tmp_path / "u.yaml", [upgrade_doc("fleetos-9.9.9")])))
    )
    assert "spec.version" in line
    table = ok(run(srv, "get", "osupgrades", "-n", "ops"))
    assert "fleetos-1.5.0" in table and "prod" in table
    # Withdrawing a version from the catalogue leaves intents that use it in force.
    ok(run(srv, "delete", "osversions", "fleetos-1.5.0"))
    assert "fleetos-1.5.0" in ok(run(srv, "get", "osupgrades", "-n", "ops"))


def test_os_versions_marks_the_latest_and_os_status_counts_sites(srv: ServerProcess, tmp_path: Path) -> None:
    ok(run(srv, "apply", "-f", str(write_yaml(tmp_path / "catalogue.yaml", catalogue_docs()))))
    rows = json.loads(ok(run(srv, "os", "versions", "-o", "json")))
    assert [(r["version"], r["latest"]) for r in rows] == [("fleetos-1.5.0", True), ("fleetos-1.4.2", False)]
    # Sites made through the API have reported nothing yet: their OS is unknown.
    docs = [
        {"apiVersion": V, "kind": "Site", "metadata": {"name": f"os-{i}", "labels": {"os-test": "yes"}}}
        for i in range(2)
    ]
    ok(run(srv, "apply", "-f", str(write_yaml(tmp_path / "sites.yaml", docs))))
    text = ok(run(srv, "os", "status", "-l", "os-test=yes"))
    assert text.strip().splitlines()[0].split()[:5] == ["NAME", "PHASE", "CURRENT", "TARGET", "LATEST"]
    assert (
        "2 sites: 0 up to date, 0 upgrading, 0 behind, 0 failed, 2 unknown (latest stable: fleetos-1.5.0)"
        in text
    )
    view = json.loads(ok(run(srv, "os", "status", "-l", "os-test=yes", "-o", "json")))
    assert view["summary"]["Unknown"] == 2 and view["latest"] == "fleetos-1.5.0"
