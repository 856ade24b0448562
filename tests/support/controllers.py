"""One controller running against a live store watch, for the controller tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from fleetplane.core.store import Store
from fleetplane.core.watch import WatchHub


class Controller(Protocol):
    synced: asyncio.Event

    async def run(self) -> None: ...


C = TypeVar("C", bound=Controller)


@contextlib.asynccontextmanager
async def running_controller(
    store: Store, build: Callable[[WatchHub], C], *, poll_interval: float = 0.05
) -> AsyncIterator[C]:
    """``build(hub)`` running on a hub that follows ``store``, once it has read the store;
    the controller and the hub are stopped on exit."""
    hub = WatchHub(store, poll_interval=poll_interval)
    await hub.start()
    controller = build(hub)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.synced.wait(), 10)
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hub.stop()
