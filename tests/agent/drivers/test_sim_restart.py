"""What a sim site keeps across an agent restart (a new ``SimSite`` and driver over the same data
dir): the OS A/B slots (an upgrade under way resumes as an A/B updater does), the nodes' pulled
images and the rack; a damaged state file is logged and the site starts from its factory state."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.drivers.base import VirtualClock
from fleetplane.agent.drivers.sim import SimDriver, SimSite
from fleetplane.agent.drivers.simmodel.workloads import Workload
from fleetplane.agent.onboard import SavedIdentity
from tests.agent.drivers.conftest import step, uniform_profile

# uniform_profile timings: install 120 s, reboot 60 s, health check 30 s
SECTION = {"version": "os-2", "sources": ["ops/up"]}


def boot(data: Path, *, at: float = 1_700_000_000.0, **overrides: Any) -> SimSite:
    """A site on ``data`` as the agent core binds it (``SimDriver.bind_site``)."""
    data.mkdir(mode=0o700, exist_ok=True)
    profile = uniform_profile(2, os_version="os-1", **overrides)
    site = SimSite(7, "site-a", {"env": "test"}, VirtualClock(at), profile)
    SimDriver(site).bind_site(SavedIdentity(data, "default", "site-a", "https://127.0.0.1:1"))
    return site


def restart(site: SimSite, data: Path, *, after: float = 600.0, **overrides: Any) -> SimSite:
    """The agent stops and, ``after`` seconds later, a new one starts over the same data dir."""
    return boot(data, at=site.clock.now() + after, **overrides)


def os_item(site: SimSite, section: dict[str, Any] = SECTION) -> tuple[str, str | None]:
    item = site.os_section.apply(section, site.advance())[0]
    return item.state, item.reason


def test_a_committed_upgrade_survives_a_restart_and_is_not_installed_again(tmp_path: Path) -> None:
    s = boot(tmp_path)
    assert os_item(s)[0] == "InProgress"
    step(s, 210)
    assert os_item(s) == ("Applied", None)
    s2 = restart(s, tmp_path)
    assert (s2.os.version, s2.os.active, s2.os.slots) == ("os-2", "B", {"A": "os-1", "B": "os-2"})
    assert s2.observation().os_version == "os-2"
    assert os_item(s2) == ("Applied", None)
    assert s2.os.state == "Idle" and s2.next_change_in() is None  # nothing installing
    info = s2.os_section.info()
    assert info.last_result is not None and info.last_result["outcome"] == "Committed"
    assert (tmp_path / "os.json").stat().st_size < 1024
    # the next upgrade goes into the other slot, as on the first agent
    assert s2.install_os("os-3")
    step(s2, 210)
    assert s2.os.slots == {"A": "os-3", "B": "os-2"} and s2.os.active == "A"


def test_restart_mid_install_writes_the_image_again_then_finishes(tmp_path: Path) -> None:
    s = boot(tmp_path)
    os_item(s)
    step(s, 60)
    s2 = restart(s, tmp_path)
    assert (s2.os.state, s2.os.target, s2.os.slots["B"]) == ("Installing", "os-2", None)
    assert os_item(s2) == ("InProgress", "installing os-2 into slot B")
    step(s2, 119)
    assert s2.os.state == "Installing"  # the whole image again, not the half left
    step(s2, 1 + 60 + 30)
    assert (s2.os.version, s2.os.active) == ("os-2", "B")
    assert os_item(s2) == ("Applied", None)


def test_restart_while_rebooting_comes_up_in_the_trial_slot_and_checks_it(tmp_path: Path) -> None:
    s = boot(tmp_path)
    os_item(s)
    step(s, 150)
    assert s.os.state == "Rebooting"
    s2 = restart(s, tmp_path)
    assert (s2.os.state, s2.os.running, s2.os.active) == ("HealthCheck", "B", "A")
    assert s2.connected() and all(n.ready for n in s2.nodes)
    step(s2, 30)
    assert (s2.os.state, s2.os.active, s2.os.version) == ("Idle", "B", "os-2")


def test_restart_during_the_health_check_checks_again(tmp_path: Path) -> None:
    s = boot(tmp_path)
    os_item(s)
    step(s, 190)
    s2 = restart(s, tmp_path)
    assert (s2.os.state, s2.os.running) == ("HealthCheck", "B")
    step(s2, 29)
    assert s2.os.state == "HealthCheck"
    step(s2, 1)
    assert (s2.os.state, s2.os.active) == ("Idle", "B")


def test_restart_awaiting_commit_still_awaits_it(tmp_path: Path) -> None:
    s = boot(tmp_path)
    s.os.auto_commit = False
    s.install_os("os-2")
    step(s, 210)
    s2 = restart(s, tmp_path)
    assert (s2.os.state, s2.os.running, s2.os.active) == ("AwaitingCommit", "B", "A")
    assert s2.commit_os() and s2.os.active == "B"


def test_restart_while_falling_back_ends_on_the_old_slot_with_the_reason(tmp_path: Path) -> None:
    bad = frozenset({"os-2"})
    s = boot(tmp_path, bad_os_versions=bad)
    os_item(s)
    step(s, 215)
    assert s.os.state == "FallingBack"
    s2 = restart(s, tmp_path, bad_os_versions=bad)
    assert (s2.os.state, s2.os.running, s2.os.version) == ("Idle", "A", "os-1")
    assert s2.os.last is not None and s2.os.last.reason == (
        "health check of os-2 in slot B failed: version marked bad; running os-1 in slot A"
    )
    assert os_item(s2)[0] == "Failed"  # and not tried again


def test_an_upgrade_that_fell_back_is_not_retried_by_a_restart(tmp_path: Path) -> None:
    s = boot(tmp_path)
    s.inject("install_failure", count=1)
    os_item(s)
    step(s, 120)
    assert os_item(s)[0] == "Failed"
    s2 = restart(s, tmp_path)
    assert os_item(s2) == (
        "Failed",
        "upgrade to os-2 fell back: install of os-2 into slot B failed: injected install failure; "
        "running os-1 in slot A",
    )
    assert s2.os.state == "Idle"  # a bad image does not reboot the site at every agent start
    assert os_item(s2, {**SECTION, "revisions": {"ops/up": 2}})[0] == "InProgress"  # a new attempt


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        json.dumps({"format": 99}),
        json.dumps({"format": 1, "slots": {"A": None, "B": "os-2"}, "active": "A", "running": "A"}),
        json.dumps(
            {"format": 1, "slots": {"A": "os-1", "B": None}, "active": "A", "running": "B", "state": "Idle"}
        ),
        json.dumps(
            {
                "format": 1,
                "slots": {"A": "os-1", "B": "os-2"},
                "active": "B",
                "running": "B",
                "state": "Idle",
                "last": {"version": "os-2", "slot": "B", "outcome": "Committed", "at": "yesterday"},
            }
        ),
    ],
    ids=["empty", "not-json", "not-object", "format", "no-committed", "inconsistent", "bad-result"],
)
def test_a_damaged_os_file_starts_from_the_factory_os(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "os.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="fleetplane.agent.sim"):
        s = boot(tmp_path)
    assert (s.os.version, s.os.state, s.os.slots) == ("os-1", "Idle", {"A": "os-1", "B": None})
    assert any("os.json" in r.getMessage() and "factory" in r.getMessage() for r in caplog.records)
    # and the site upgrades, and keeps that, as usual
    os_item(s)
    step(s, 210)
    assert restart(s, tmp_path).os.version == "os-2"


def test_a_damaged_rack_file_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "rack.json").write_text(json.dumps({"images": ["node-01"], "powered": 3}))
    with caplog.at_level(logging.WARNING, logger="fleetplane.agent.sim"):
        s = boot(tmp_path)
    assert s.metal.images == {} and not any(s.metal.powered.values())
    assert any("rack.json" in r.getMessage() for r in caplog.records)


def test_pulled_images_survive_a_restart(tmp_path: Path) -> None:
    web = Workload("web", "nginx:1.27", replicas=2)
    s = boot(tmp_path)
    s.set_workloads([web])
    assert {p.phase for p in s.workloads.pods.values()} == {"ContainerCreating"}
    step(s, 60)
    assert {p.phase for p in s.workloads.pods.values()} == {"Running"}
    disk = s.observation().usage.disk_bytes
    s2 = restart(s, tmp_path)
    s2.set_workloads([web])  # the persisted manifest, applied again
    assert {p.phase for p in s2.workloads.pods.values()} == {"Running"}  # no second pull
    assert s2.observation().usage.disk_bytes == disk


def test_a_fresh_site_runs_as_without_a_data_dir(tmp_path: Path) -> None:
    """Persistence changes nothing for a new site: the same seed gives the same observations."""
    plain = SimSite(7, "site-a", {"env": "test"}, VirtualClock(), uniform_profile(2, os_version="os-1"))
    kept = boot(tmp_path)
    for s in (plain, kept):
        s.set_workloads([Workload("web", "nginx:1.27")])
        s.install_os("os-2")
        step(s, 100)
    assert plain.observation() == kept.observation()
    step(plain, 200)
    step(kept, 200)
    assert plain.observation() == kept.observation()


def test_an_unwritable_data_dir_is_logged_and_the_site_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "site"
    s = boot(data)
    data.rename(tmp_path / "gone")  # the data dir disappears under the running agent
    with caplog.at_level(logging.WARNING, logger="fleetplane.agent.sim"):
        os_item(s)
        step(s, 210)
    assert (s.os.version, s.os.state) == ("os-2", "Idle")
    assert any("could not write" in r.getMessage() for r in caplog.records)
