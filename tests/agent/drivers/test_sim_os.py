"""OS A/B slots: install, reboot, health check, commit, and falling back."""

from __future__ import annotations

from typing import Any

from fleetplane.agent.drivers.sim import SimSite
from fleetplane.agent.drivers.simmodel.workloads import Workload
from tests.agent.drivers.conftest import make_site, step

# uniform_profile timings: install 120 s, reboot 60 s, health check 30 s


def site(**kw: Any) -> SimSite:
    return make_site(nodes=2, os_version="os-1", **kw)


def test_install_reboot_check_commit() -> None:
    s = site()
    assert s.install_os("os-2")
    assert not s.install_os("os-3")  # busy
    assert (s.os.state, s.os.slots) == ("Installing", {"A": "os-1", "B": None})
    step(s, 120)
    assert s.os.state == "Rebooting" and s.os.slots["B"] == "os-2"
    assert not s.connected()
    assert not any(n.ready for n in s.observation().nodes)
    assert s.observation().os_version == "os-1"
    step(s, 60)
    assert (s.os.state, s.os.running, s.os.active) == ("HealthCheck", "B", "A")
    assert s.connected() and all(n.ready for n in s.nodes)
    assert s.observation().os_version == "os-2"
    step(s, 30)
    assert (s.os.state, s.os.active) == ("Idle", "B")
    assert s.os.last is not None and (s.os.last.outcome, s.os.last.slot) == ("Committed", "B")
    # the next install goes into the other slot
    assert not s.install_os("os-2")  # already running
    assert s.install_os("os-3")
    step(s, 210)
    assert s.os.slots == {"A": "os-3", "B": "os-2"} and s.os.active == "A"


def test_install_failure_keeps_the_old_slot() -> None:
    s = site()
    s.inject("install_failure", count=1)
    s.install_os("os-2")
    step(s, 120)
    assert (s.os.state, s.os.running, s.os.version) == ("Idle", "A", "os-1")
    assert s.os.last is not None and s.os.last.outcome == "FellBack"
    assert s.os.last.reason == (
        "install of os-2 into slot B failed: injected install failure; running os-1 in slot A"
    )
    assert s.connected()  # never rebooted
    assert "install_failure" not in s.active_faults()  # count used up
    s.install_os("os-2")
    step(s, 210)
    assert s.os.version == "os-2" and s.os.last is not None and s.os.last.outcome == "Committed"


def test_failed_health_check_falls_back_to_the_old_slot() -> None:
    s = site(bad_os_versions=frozenset({"os-2"}))
    s.install_os("os-2")
    step(s, 120 + 60)
    assert s.os.version == "os-2"  # trial boot
    step(s, 30)
    assert s.os.state == "FallingBack" and not s.connected()
    step(s, 60)
    assert (s.os.state, s.os.running, s.os.active, s.os.version) == ("Idle", "A", "A", "os-1")
    assert s.os.last is not None and s.os.last.outcome == "FellBack"
    assert s.os.last.reason == (
        "health check of os-2 in slot B failed: version marked bad; running os-1 in slot A"
    )


def test_health_check_failure_fault() -> None:
    s = site()
    s.inject("install_failure", stage="health_check", reason="kubelet did not start")
    s.install_os("os-2")
    step(s, 120 + 60 + 30 + 60)
    assert s.os.version == "os-1"
    assert s.os.last is not None and "kubelet did not start" in (s.os.last.reason or "")


def test_explicit_commit_and_rollback() -> None:
    s = site()
    s.os.auto_commit = False
    s.install_os("os-2")
    step(s, 210)
    assert s.os.state == "AwaitingCommit" and s.os.active == "A"
    assert s.commit_os()
    assert s.os.active == "B" and s.os.state == "Idle"
    assert not s.commit_os()
    s.install_os("os-3")
    step(s, 210)
    assert s.os.rollback(s.clock.now())
    step(s, 60)
    assert s.os.version == "os-2" and s.os.last is not None
    assert s.os.last.reason == "rolled back by request; running os-2 in slot B"


def test_slow_fault_stretches_install() -> None:
    s = site()
    s.inject("slow", factor=2.0)
    s.install_os("os-2")
    step(s, 239)
    assert s.os.state == "Installing"
    step(s, 1)
    assert s.os.state == "Rebooting"


def test_pending_pods_are_scheduled_after_the_reboot() -> None:
    s = site(image_sizes={"app:1": 1})
    s.install_os("os-2")
    step(s, 120)
    s.set_workloads([Workload("web", "app:1")])
    assert "2 node(s) not ready" in (s.workloads.pods["web-0"].reason or "")
    step(s, 60)
    assert s.workloads.pods["web-0"].node is not None
