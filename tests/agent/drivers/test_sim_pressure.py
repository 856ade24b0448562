"""Pressure faults drive the reported usage up for their duration; ``after`` schedules a fault."""

from __future__ import annotations

import pytest

from fleetplane.agent.drivers.simmodel.faults import FaultError, parse_fault
from tests.agent.drivers.conftest import make_site, step


def test_memory_pressure_lifts_memory_for_its_duration() -> None:
    site = make_site()
    calm = site.observation().usage
    assert calm.memory_percent < 50
    site.inject("memory_pressure", duration=30)
    hot = site.observation().usage
    assert hot.memory_percent >= 96.9
    assert hot.cpu_percent == pytest.approx(calm.cpu_percent)  # CPU untouched
    step(site, 30)
    assert site.observation().usage.memory_percent == pytest.approx(calm.memory_percent)


def test_cpu_pressure_with_a_chosen_percent() -> None:
    site = make_site()
    site.inject("cpu_pressure", percent=92)
    assert site.observation().usage.cpu_percent == pytest.approx(92, abs=0.1)
    site.clear("cpu_pressure")
    assert site.observation().usage.cpu_percent < 50


def test_after_delays_a_fault_and_duration_counts_from_its_start() -> None:
    site = make_site()
    site.inject("connectivity_loss", after=10, duration=5)
    assert site.connected() and site.active_faults() == []
    step(site, 10)
    assert not site.connected() and site.active_faults() == ["connectivity_loss"]
    step(site, 5)
    assert site.connected()


@pytest.mark.parametrize(
    "text",
    ["memory_pressure:percent=0", "cpu_pressure:percent=101", "memory_pressure:after=-1", "cpu_pressure:x=1"],
)
def test_bad_pressure_faults_are_refused(text: str) -> None:
    with pytest.raises(FaultError):
        parse_fault(text)


def test_parse_pressure_fault_with_schedule() -> None:
    assert parse_fault("memory_pressure:after=8,duration=9,percent=95") == (
        "memory_pressure",
        {"after": 8, "duration": 9, "percent": 95},
    )
