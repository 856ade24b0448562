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
from collections.abc import Callable, Coroutine
from typing import Any

from fleetplane.core.errors import ApiError

log = logging.getLogger(__name__)


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
