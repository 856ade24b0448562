"""The sim driver applies the manifest's ``os`` section on the A/B slots: InProgress while it
installs and reboots, Applied once committed, Failed with the reason when it fell back; the
observation shows the running version, the target and the slots."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetplane.agent.drivers.base import ItemStatus
from fleetplane.agent.drivers.sim import SimDriver, SimSite
from tests.agent.drivers.conftest import make_site, step

# uniform_profile timings: install 120 s, reboot 60 s, health check 30 s


def manifest(version: str | None, **extra: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    if version is not None:
        sections["os"] = {"version": version, "sources": ["ops/upgrade"], **extra}
    return {"metadata": {"generation": 1}, "spec": {"sections": sections}}


def apply(driver: SimDriver, version: str | None, **extra: Any) -> list[ItemStatus]:
    return [i for i in asyncio.run(driver.apply(manifest(version, **extra))) if i.section == "os"]


def os_status(site: SimSite) -> dict[str, Any]:
    status = site.observation().to_status()
    assert status["osVersion"] == status["os"]["current"]
    return dict(status["os"])


def driver(**kw: Any) -> SimDriver:
    return SimDriver(make_site(nodes=2, os_version="fleetos-1.4.2", **kw))


def test_upgrade_reports_progress_then_applied_with_the_new_version() -> None:
    d = driver()
    [item] = apply(d, "fleetos-1.5.0")
    assert (item.name, item.state, item.reason) == (
        "fleetos-1.5.0",
        "InProgress",
        "installing fleetos-1.5.0 into slot B",
    )
    st = os_status(d.site)
    assert (st["current"], st["target"], st["state"]) == ("fleetos-1.4.2", "fleetos-1.5.0", "Installing")
    step(d.site, 120)
    [item] = apply(d, "fleetos-1.5.0")
    assert (item.state, item.reason) == ("InProgress", "rebooting into slot B (fleetos-1.5.0)")
    step(d.site, 60)
    [item] = apply(d, "fleetos-1.5.0")
    assert (item.state, item.reason) == ("InProgress", "health-checking fleetos-1.5.0 in slot B")
    step(d.site, 30)
    [item] = apply(d, "fleetos-1.5.0")
    assert (item.state, item.reason) == ("Applied", None)
    st = os_status(d.site)
    assert st["current"] == st["target"] == "fleetos-1.5.0"
    assert st["slots"] == {"A": "fleetos-1.4.2", "B": "fleetos-1.5.0"}
    assert (st["active"], st["running"], st["state"]) == ("B", "B", "Idle")
    assert st["lastResult"]["outcome"] == "Committed"
    # Level-triggered: applying the same manifest again changes nothing.
    assert apply(d, "fleetos-1.5.0")[0].state == "Applied"
    assert len(d.site.os.history) == 1


def test_install_failure_falls_back_reports_why_and_is_not_retried_until_the_section_changes() -> None:
    d = driver()
    d.inject("install_failure")
    apply(d, "fleetos-1.5.0")
    step(d.site, 120)
    [item] = apply(d, "fleetos-1.5.0")
    assert item.state == "Failed"
    assert item.reason == (
        "upgrade to fleetos-1.5.0 fell back: install of fleetos-1.5.0 into slot B failed: "
        "injected install failure; running fleetos-1.4.2 in slot A"
    )
    st = os_status(d.site)
    assert (st["current"], st["target"], st["running"]) == ("fleetos-1.4.2", "fleetos-1.5.0", "A")
    assert st["lastResult"]["outcome"] == "FellBack" and "injected" in st["lastResult"]["reason"]
    # The agent re-applies a failed manifest; the site must not reinstall a bad version in a loop.
    step(d.site, 600)
    assert apply(d, "fleetos-1.5.0")[0].state == "Failed"
    assert d.site.os.state == "Idle" and len(d.site.os.history) == 1
    # A changed os section (a new intent revision) is a new attempt.
    d.clear("install_failure")
    assert apply(d, "fleetos-1.5.0", revision=2)[0].state == "InProgress"
    step(d.site, 210)
    assert apply(d, "fleetos-1.5.0", revision=2)[0].state == "Applied"


def test_failed_health_check_reboots_back_into_the_old_slot() -> None:
    d = driver()
    d.inject("install_failure", stage="health_check", reason="kernel panic on boot")
    apply(d, "fleetos-1.5.0")
    step(d.site, 120 + 60 + 30)
    [item] = apply(d, "fleetos-1.5.0")
    assert (item.state, item.reason) == (
        "InProgress",
        "fleetos-1.5.0 failed its health check; rebooting back into slot A",
    )
    step(d.site, 60)
    [item] = apply(d, "fleetos-1.5.0")
    assert item.state == "Failed"
    assert (
        item.reason is not None
        and "health check of fleetos-1.5.0 in slot B failed: kernel panic on boot" in (item.reason)
    )
    assert os_status(d.site)["current"] == "fleetos-1.4.2"


def test_a_new_target_during_an_install_waits_for_it_then_installs() -> None:
    d = driver()
    apply(d, "fleetos-1.5.0")
    step(d.site, 10)
    [item] = apply(d, "fleetos-1.6.0")
    assert item.state == "InProgress"
    assert (
        item.reason == "waiting for the upgrade to fleetos-1.5.0 (Installing) to finish before fleetos-1.6.0"
    )
    step(d.site, 200)
    assert apply(d, "fleetos-1.6.0")[0].state == "InProgress"  # now installing 1.6.0
    step(d.site, 210)
    assert apply(d, "fleetos-1.6.0")[0].state == "Applied"
    assert os_status(d.site)["slots"] == {"A": "fleetos-1.6.0", "B": "fleetos-1.5.0"}


def test_no_os_section_keeps_the_running_version_and_reports_no_item() -> None:
    d = driver()
    assert apply(d, None) == []
    st = os_status(d.site)
    assert st["current"] == "fleetos-1.4.2" and "target" not in st
    assert apply(d, "fleetos-1.4.2")[0].state == "Applied"  # already running it: nothing to do
    assert d.site.os.history == []


def test_a_section_without_a_version_fails_with_a_reason() -> None:
    d = driver()
    items = [
        i for i in asyncio.run(d.apply({"spec": {"sections": {"os": {"sources": []}}}})) if i.section == "os"
    ]
    assert [(i.state, i.reason) for i in items] == [("Failed", "the os section must name a version")]


def test_faults_given_to_the_simulator_are_parsed_and_injected_into_its_sites() -> None:
    from fleetplane.agent.drivers.simmodel.faults import FaultError, parse_fault
    from fleetplane.simulator.fleet import make_driver, plan_site

    assert parse_fault("install_failure:stage=health_check,count=2") == (
        "install_failure",
        {"stage": "health_check", "count": 2},
    )
    for bad in ("power_cut", "install_failure:stage=reboot", "slow:factor"):
        with pytest.raises(FaultError):
            parse_fault(bad)
    sim = make_driver(plan_site(0), "fast", ["install_failure:reason=disk full"])
    assert isinstance(sim, SimDriver)
    assert sim.site.active_faults() == ["install_failure"]
