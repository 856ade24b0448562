"""The controller loop's stall watch: a sleep that ends far later than asked is a stall."""

from __future__ import annotations

import pytest

from fleetplane.controllers.loop import StallWatch


def test_a_sleep_that_ends_late_by_more_than_the_slack_is_a_stall() -> None:
    now = [100.0]
    stalls = StallWatch(slack=2.0, clock=lambda: now[0])
    stalls.mark()
    now[0] += 1.0  # slept as asked
    assert stalls.stalled(1.0) is None
    stalls.mark()
    now[0] += 0.2  # woken early (a wake event): no stall either
    assert stalls.stalled(1.0) is None
    stalls.mark()
    now[0] += 2.9  # late by 1.9 s: within the slack
    assert stalls.stalled(1.0) is None
    stalls.mark()
    now[0] += 31.0  # stopped for half a minute
    assert stalls.stalled(1.0) == pytest.approx(30.0)
    # Work between the sleeps is not counted: only the sleep is timed.
    now[0] += 60.0
    stalls.mark()
    now[0] += 1.0
    assert stalls.stalled(1.0) is None
