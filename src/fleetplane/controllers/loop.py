"""The loop every controller runs: follow the store, rebuild on any loss, with a helper task.

A controller rebuilds its in-memory view from a snapshot and then follows the watch
(``sync_and_follow``); when the watch is lost (compacted, overflowed) or anything
fails, it simply starts again from a fresh snapshot. That is what makes controllers
level-triggered: a restart or a lost event costs a resync, never a wrong state.
The ``helper`` (a status flusher, a deadline ticker) runs alongside for the whole life.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fleetplane.core.errors import ApiError

log = logging.getLogger(__name__)
Deadline = tuple[float, str, str]  # (when, tenant, name)
STALE_ALLOWANCE = 64  # stale entries a deadline heap may hold beyond one per live key


def push_deadline(
    heap: list[Deadline], item: Deadline, *, live: int, valid: Callable[[Deadline], bool]
) -> None:
    """Push onto a heap of lazily invalidated deadlines (a ticker pops the due ones and skips
    those a later push superseded). When the heap holds more than twice ``live`` entries (at
    most one per key is current), the stale ones are dropped: the heap stays the size of the
    fleet, not of the reports since the oldest deadline (a site reporting every 5 s with
    ``--offline-after 600`` left 120 entries each). ``valid``: whether an entry is current."""
    heapq.heappush(heap, item)
    if len(heap) > 2 * live + STALE_ALLOWANCE:
        heap[:] = [entry for entry in heap if valid(entry)]
        heapq.heapify(heap)


class StallWatch:
    """Tells a deadline ticker that the control plane stopped watching: a sleep that ends far
    later than asked (the process was stopped, its VM paused, its event loop blocked or
    swamped). Liveness and health then hold none of that time against the sites: a site's
    silence counts from the end of the stall, as it counts from the start after a restart.
    Only the sleep is timed: a tick whose own work is slow (a flush of many writes) is no
    stall, the loop runs meanwhile."""

    def __init__(self, slack: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.slack = slack
        self.clock = clock
        self._since = clock()

    def mark(self) -> None:
        """Call right before the sleep."""
        self._since = self.clock()

    def stalled(self, slept: float) -> float | None:
        """Call right after a sleep of at most ``slept`` seconds: how much later than that it
        ended, when that is more than ``slack``; else None."""
        late = self.clock() - self._since - slept
        return late if late > self.slack else None


async def run_controller(
    name: str,
    sync_and_follow: Callable[[], Coroutine[Any, Any, None]],
    helper: Callable[[], Coroutine[Any, Any, None]],
    *,
    retry_delay: float = 1.0,
) -> None:
    task = asyncio.create_task(helper(), name=f"{name}-helper")
    try:
        while True:
            try:
                await sync_and_follow()
            except ApiError as exc:  # compacted or overflowed: rebuild from a snapshot
                log.warning("%s watch lost (%s); resyncing", name, exc.message)
            except Exception:
                log.exception("%s controller failed; resyncing", name)
                await asyncio.sleep(retry_delay)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
