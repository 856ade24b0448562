"""Process settings for the long-running services (the server, simulator workers): the cycle
collector and, on glibc, the allocator.

**Cycle collector.** CPython's default runs a young-generation collection every 700 net
allocations, which suits scripts. A server that parses and builds thousands of JSON objects a
second spent a large share of its CPU in the collector under it, and paused for up to 350 ms on
full collections (``bench/vk8s.py``, a Deployment change to 1,000 sites: the server's CPU for
the change fell from 3.3-4.7 s to 2.4-2.6 s with the settings below). Reference counting frees
almost all of what these processes allocate; the cycle collector only has to find the rare
cycle, so it can run far less often. ``FLEETPLANE_GC_THRESHOLD="700,10,10"`` restores the
interpreter's default (to compare).

**Allocator.** uvloop gives every TLS connection a 256 KiB read buffer (``malloc``). glibc's
dynamic mmap threshold rises past that size as soon as a few such buffers were freed, and
from then on serves them from the heap, where the pages earlier buffers touched stay resident
and fragment. A fixed threshold of 128 KiB keeps them mmapped: only the pages a connection
reads into are resident, and a closed connection's buffer goes back to the system (1,000
connected sites: 100 -> 87 KB of server memory per site). glibc's own
``MALLOC_MMAP_THRESHOLD_`` wins when set; other C libraries are left alone.

**Event loop.** The server runs on uvloop (uvicorn picks it). ``run_loop`` gives the site
agents (``fleetplane agent``, the simulator's workers) the same: asyncio's own TLS transport is
pure Python, and py-spy put about a sixth of a 5,000-site simulator worker's CPU in it
(``asyncio/sslproto.py``). ``FLEETPLANE_EVENT_LOOP=asyncio`` keeps asyncio's (to compare, or
where uvloop is not installed, which is also what happens without it).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["MMAP_THRESHOLD", "SERVICE_THRESHOLDS", "Tuning", "loop_kind", "run_loop", "tune_for_service"]
T = TypeVar("T")

log = logging.getLogger(__name__)
SERVICE_THRESHOLDS = (50_000, 20, 100)
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@dataclass(frozen=True)
class Tuning:
    gc_thresholds: tuple[int, int, int]
    mmap_threshold: int | None  # None: the allocator was left as it was


def _gc_thresholds() -> tuple[int, int, int]:
    raw = os.environ.get("FLEETPLANE_GC_THRESHOLD", "")
    if not raw:
        return SERVICE_THRESHOLDS
    try:
        parsed = tuple(int(part) for part in raw.split(","))
    except ValueError:
        parsed = ()
    if len(parsed) == 3 and min(parsed) >= 0:
        return parsed[0], parsed[1], parsed[2]
    # A tuning knob never stops a service: say so, and run with the defaults.
    log.warning(
        "FLEETPLANE_GC_THRESHOLD must be three integers like 700,10,10, not %r; using %s",
        raw,
        ",".join(map(str, SERVICE_THRESHOLDS)),
    )
    return SERVICE_THRESHOLDS


def _fix_mmap_threshold() -> int | None:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    try:
        process = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    mallopt = getattr(process, "mallopt", None)
    gnu = getattr(process, "gnu_get_libc_version", None)
    if mallopt is None or gnu is None:  # not glibc: its allocator has no such threshold
        return None
    return MMAP_THRESHOLD if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 else None


def tune_for_service() -> Tuning:
    """Freeze what start-up built (modules, schemas, routes: alive for the whole process, never
    worth scanning again), collect cycles less often, and fix glibc's mmap threshold."""
    thresholds = _gc_thresholds()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return Tuning(thresholds, _fix_mmap_threshold())


def loop_kind() -> str:
    """``uvloop`` when it is installed and not turned off, else ``asyncio``."""
    if os.environ.get("FLEETPLANE_EVENT_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401  (an optional speed-up: uvicorn[standard] brings it on Linux)
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the event loop ``loop_kind`` names."""
    if loop_kind() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
