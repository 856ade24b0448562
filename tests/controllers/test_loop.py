"""The controller loop's helpers: the stall watch (a sleep that ends far later than asked is
a stall) and the deadline heap that stays the size of the fleet."""

from __future__ import annotations

import heapq

import pytest

from fleetplane.controllers.loop import STALE_ALLOWANCE, Deadline, StallWatch, push_deadline


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


def test_a_deadline_heap_drops_superseded_entries_and_keeps_the_current_ones() -> None:
    current: dict[tuple[str, str], float] = {}

    def valid(entry: Deadline) -> bool:
        return current.get((entry[1], entry[2])) == entry[0]

    heap: list[Deadline] = []
    for report in range(200):  # 200 reports from each of 50 sites, each a later deadline
        for site in range(50):
            current[("t", f"s{site}")] = when = float(report * 100 + site)
            push_deadline(heap, (when, "t", f"s{site}"), live=len(current), valid=valid)
            assert len(heap) <= 2 * len(current) + STALE_ALLOWANCE + 1
    due = sorted(heapq.heappop(heap) for _ in range(len(heap)))
    current_entries = sorted((when, *key) for key, when in current.items())
    # Every current deadline is still there, in order; what else is left is stale.
    assert [e for e in due if valid(e)] == current_entries
