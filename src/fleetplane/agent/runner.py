"""The agent process: onboard if needed, then run the async agent core (``agent/core.py``)
for this one site with its driver: long-poll the manifest, apply it, heartbeat over mutual
TLS, renew the certificate when a third of its lifetime is left.

Exit codes: 0 stopped (or ``--once`` done), 1 unusable configuration or files,
2 registration rejected or expired, 3 the site's identity is refused (revoked,
decommissioned, deleted, or the certificate expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

from fleetplane.agent.core import AgentCore, SiteRefused
from fleetplane.agent.drivers.base import Driver
from fleetplane.agent.identity import KeyStoreError
from fleetplane.agent.onboard import (
    EXIT_REVOKED,
    AgentConfig,
    AgentError,
    SavedIdentity,
    collect_facts,
    onboard,
)
from fleetplane.core.errors import ApiError
from fleetplane.core.process_tuning import run_loop

log = logging.getLogger("fleetplane.agent")
DRIVERS = ("sim",)


def make_driver(kind: str, site: str, seed: int | None = None) -> Driver:
    """The driver a single-site agent runs. ``sim`` models this one site (one node) in memory,
    deterministic from the site name (or ``seed``)."""
    if kind == "sim":
        import dataclasses

        from fleetplane.agent.drivers.sim import SimDriver, SimSite
        from fleetplane.agent.drivers.simmodel.profile import resolve_profile

        profile = dataclasses.replace(resolve_profile("default"), nodes=1)
        return SimDriver(SimSite(site if seed is None else seed, site, profile=profile))
    raise AgentError(f"unknown driver {kind!r}; available: {', '.join(DRIVERS)}")


class Agent:
    def __init__(self, config: AgentConfig, stop: threading.Event | None = None, driver: str = "sim") -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.driver = driver
        self.facts = collect_facts(config.latitude, config.longitude)

    def run(self) -> int:
        ident = onboard(self.config, self.stop)
        if self.stop.is_set():
            return 0
        return run_loop(self.run_core(ident))

    async def run_core(self, ident: SavedIdentity) -> int:
        core = AgentCore(
            ident,
            make_driver(self.driver, ident.site),
            heartbeat=self.config.heartbeat,
            facts=self.facts,
            once=self.config.once,
        )
        task = asyncio.create_task(core.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, task.cancel)
        # A caller's threading.Event (tests, embedding) stops the core too.
        watcher = asyncio.create_task(asyncio.to_thread(self.stop.wait))
        watcher.add_done_callback(lambda _: task.cancel())
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except SiteRefused as exc:
            raise AgentError(f"{exc.message}: stopping", EXIT_REVOKED) from None
        finally:
            self.stop.set()  # ends the watcher thread
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        log.info(
            "site %s: reported generation %d (%s)", ident.site, core.generation, core.state or "no manifest"
        )
        return 0


def run_agent(config: AgentConfig, driver: str = "sim") -> int:
    """Run until stopped (SIGTERM/SIGINT) or ``config.once``; returns the exit code. Expected
    failures are logged as one line, never a traceback."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():  # onboarding; the core has its own
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        return Agent(config, stop, driver=driver).run()
    except AgentError as exc:
        if exc.exit_code == 0:
            return 0
        log.error("%s", exc.message)
        return exc.exit_code
    except KeyStoreError as exc:
        log.error("%s", exc)
        return 1
    except ApiError as exc:
        log.error("%s", exc.message)
        return 1
