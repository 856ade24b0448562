"""The simulator's answer to SIGUSR1: which agents are silent and where each one waits.
Against a real server and a frozen one: tests/integration/test_fleet_e2e.py."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.core import AgentCore
from fleetplane.agent.onboard import SavedIdentity
from fleetplane.simulator.fleet import make_driver, plan_site
from fleetplane.simulator.silent import await_chain, silent_agents

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_await_chain_goes_down_to_the_innermost_wait() -> None:
    ready = asyncio.Event()

    async def innermost() -> None:
        await ready.wait()

    async def outer() -> None:
        await innermost()

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    frames, leaf = await_chain(task.get_coro())
    names = [f.rsplit(" ", 1)[1] for f in frames]
    assert names == ["outer", "innermost", "wait"]
    assert frames[0].startswith("test_silent.py:") and frames[-1].startswith("asyncio/locks.py:")
    assert leaf == ""  # a bare future says nothing the frame above does not
    ready.set()
    await task
    assert await_chain(task.get_coro()) == ([], "")  # finished: nothing to wait in


class Hangs:
    """A server that takes the report and never answers (a frozen or wedged one)."""

    async def manifest(self, after: int, wait_seconds: float) -> dict[str, Any] | None:
        await asyncio.Event().wait()
        return None

    async def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def renew(self, csr_pem: bytes) -> bytes:
        raise AssertionError

    async def aclose(self) -> None:
        return None


@dataclass
class Run:
    core: AgentCore | None
    task: asyncio.Task[None] | None
    error: str = ""


def _core(tmp_path: Path, index: int) -> AgentCore:
    plan = plan_site(index, seed=4)
    site_dir = tmp_path / str(index)
    site_dir.mkdir(mode=0o700)
    return AgentCore(
        SavedIdentity(site_dir, "default", plan.name, "https://127.0.0.1:1"),
        make_driver(plan, "default"),
        heartbeat=1.0,
        client_factory=lambda _: Hangs(),
        durable=False,
    )


async def test_silent_agents_are_listed_longest_first_with_where_they_wait(tmp_path: Path) -> None:
    wedged, healthy, refused = (_core(tmp_path, i) for i in range(3))
    runs = [
        Run(wedged, asyncio.create_task(wedged.run())),
        Run(healthy, asyncio.create_task(asyncio.sleep(60))),
    ]
    done = asyncio.create_task(asyncio.sleep(0))
    runs += [Run(refused, done, error="the server refuses site x's identity"), Run(None, None)]
    await asyncio.sleep(0.05)  # the wedged agent is inside its first report now
    now = time.monotonic()
    healthy.last_report = now - 1.5  # within two heartbeats: not silent
    refused.last_report = now - 30.0
    count, lines = silent_agents(runs, heartbeat=1.0, now=now)
    assert count == 2
    assert lines[0].startswith(f"{wedged.site}: never reported, manifest generation 0")
    assert "connected no, backoff attempt 0" in lines[0]
    waits = lines[1]
    assert waits.startswith("  waiting in fleetplane/agent/core.py:")
    # The agent's round, its report, the (fake) server call, and the event it hangs on.
    assert re.search(
        r" _round > fleetplane/agent/core\.py:\d+ _report > test_silent\.py:\d+ put_status > "
        r"asyncio/locks\.py:\d+ wait$",
        waits,
    ), waits
    assert lines[2].startswith(f"{refused.site}: silent 30.0 s")
    assert lines[3] == "  agent stopped: the server refuses site x's identity"
    assert all(healthy.site not in line for line in lines)
    for run in runs:
        if run.task is not None:
            run.task.cancel()
    await asyncio.gather(*(r.task for r in runs if r.task is not None), return_exceptions=True)
