"""Object helpers: the server's clock as RFC 3339 text."""

from __future__ import annotations

import time

import pytest

from fleetplane.core.objects import now_rfc3339, parse_timestamp


def test_now_is_the_utc_second_and_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    before = int(time.time())
    now = parse_timestamp(now_rfc3339())
    assert now is not None and before <= now <= time.time()

    clock = [1_800_000_000.2]
    monkeypatch.setattr("fleetplane.core.objects.time.time", lambda: clock[0])
    assert now_rfc3339() == "2027-01-15T08:00:00Z"
    clock[0] += 0.7  # the same second: the same text
    assert now_rfc3339() == "2027-01-15T08:00:00Z"
    clock[0] += 0.2  # the next second
    assert now_rfc3339() == "2027-01-15T08:00:01Z"
    clock[0] -= 3600  # a clock set back is followed too
    assert now_rfc3339() == "2027-01-15T07:00:01Z"
