"""Waiting for a controller to converge, in async controller tests (a real store, a real hub)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first truthy answer of ``check`` (run off the loop), or AssertionError at timeout
    with the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(check)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never converged; last {got!r}")
        await asyncio.sleep(0.02)


async def converges(check: Callable[[], Any], expected: Any, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` equals ``expected``; AssertionError with the last answer at timeout."""
    started = time.monotonic()
    while True:
        got = await asyncio.to_thread(check)
        if got == expected:
            return time.monotonic() - started
        if time.monotonic() > started + timeout:
            raise AssertionError(f"never converged: got {got!r}, want {expected!r}")
        await asyncio.sleep(0.02)
