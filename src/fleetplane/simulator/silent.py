"""What the simulator's silent agents are waiting on (``kill -USR1 <simulator pid>``).

A site whose agent has not had a report accepted for a while is either cut off on purpose
(a fault, a server down) or stuck. Either way the operator's question is the same: where
is it waiting? asyncio's own ``Task.print_stack()`` shows only the task's outermost frame
of a suspended coroutine, so this follows the ``await`` chain down to the innermost
awaitable (a future, an event, a sleep) and prints it as one line per agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from fleetplane.agent.core import AgentCore

MAX_LISTED = 20  # agents listed in full; the rest are counted
MAX_FRAMES = 16  # frames of one await chain (the innermost are the telling ones)


class AgentRun(Protocol):
    """One simulated site as the dump sees it (``fleet.SimSiteRun``)."""

    @property
    def core(self) -> AgentCore | None: ...

    @property
    def task(self) -> asyncio.Task[None] | None: ...

    @property
    def error(self) -> str: ...


_FRAMES = ("cr_frame", "gi_frame", "ag_frame")  # a coroutine's, a generator's, an async generator's
_AWAITS = ("cr_await", "gi_yieldfrom", "ag_await")  # ... and what each one waits on


def await_chain(awaitable: Any) -> tuple[list[str], str]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first, as
    ``file:line function`` (file relative to its package), and the innermost awaitable that
    is not a coroutine, when it can say what it is (``""`` for a bare future)."""
    frames: list[str] = []
    node = awaitable
    for _ in range(64):  # real chains are a dozen deep; the bound only guards against a cycle
        if not any(hasattr(node, name) for name in _FRAMES):
            # A future's iterator (C asyncio) does not say which future: the frame above does.
            leaf = "" if type(node).__name__ == "FutureIter" else _short(repr(node))
            return frames[-MAX_FRAMES:], leaf
        frame: FrameType | None = _first(node, _FRAMES)
        if frame is not None:  # None once finished
            frames.append(_where(frame))
        node = _first(node, _AWAITS)
        if node is None:
            break
    return frames[-MAX_FRAMES:], ""


def _first(node: Any, names: tuple[str, ...]) -> Any:
    return next((getattr(node, name) for name in names if hasattr(node, name)), None)


def _where(frame: FrameType) -> str:
    path = Path(frame.f_code.co_filename)
    parts = path.parts
    # From the package down (fleetplane/agent/core.py, aiohttp/client.py): short and exact.
    for anchor in ("fleetplane", "aiohttp", "asyncio"):
        if anchor in parts:
            path = Path(*parts[len(parts) - parts[::-1].index(anchor) - 1 :])
            break
    else:
        path = Path(path.name)
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def silent_agents(
    runs: Iterable[AgentRun], heartbeat: float, now: float | None = None
) -> tuple[int, list[str]]:
    """How many agents are silent for more than twice their heartbeat (no report accepted
    since), and lines on the longest silent (``MAX_LISTED``): state, then where it waits."""
    now = time.monotonic() if now is None else now
    quiet: list[tuple[float, AgentRun, AgentCore, asyncio.Task[None]]] = []
    for run in runs:
        core, task = run.core, run.task
        if core is None or task is None:
            continue  # still onboarding (or it failed: the summary counts those)
        silence = now - core.last_report if core.last_report else float("inf")
        if silence > 2 * heartbeat:
            quiet.append((silence, run, core, task))
    quiet.sort(key=lambda q: -q[0])
    lines = []
    for silence, run, core, task in quiet[:MAX_LISTED]:
        since = "never reported" if silence == float("inf") else f"silent {silence:.1f} s"
        lines.append(
            f"{core.site}: {since}, manifest generation {core.generation} {core.state or '-'}, "
            f"connected {'yes' if core.connected else 'no'}, backoff attempt {core.backoff.attempt}"
        )
        if task.done():  # refused by the server (the reason), or crashed
            exc = None if task.cancelled() else task.exception()
            why = f": {run.error}" if run.error else f": {exc!r}" if exc else ""
            lines.append(f"  agent stopped{why}")
            continue
        frames, leaf = await_chain(task.get_coro())
        lines.append("  waiting in " + " > ".join(frames) + (f" > {leaf}" if leaf else ""))
    if len(quiet) > MAX_LISTED:
        lines.append(f"… and {len(quiet) - MAX_LISTED} more")
    return len(quiet), lines
