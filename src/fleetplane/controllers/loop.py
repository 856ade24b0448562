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
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fleetplane.core.errors import ApiError

log = logging.getLogger(__name__)


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
