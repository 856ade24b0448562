"""A simulated fleet: N sites onboarded through the real zero-touch path (registration token,
CSR, long-poll, mutual TLS), each running the real agent core with the ``sim`` driver, all
on one asyncio event loop per process (and across ``processes`` worker processes).

Every site has its own agent data directory ``<data-dir>/sites/<index>/`` (key,
certificate, manifest.json), so restarting the simulator with the same data dir reuses the
sites' identities instead of registering them again, and a site picks up where it left off.

What a site looks like is deterministic from ``(seed, index)``: its city (one of ~70 real
cities in several world regions, jittered by a few kilometres), its labels ``region``,
``country``, ``city``, ``model-year`` (2015-2024), ``function`` and ``environment``
(dev/test/prod), and its sim model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fleetplane
from fleetplane.agent.core import AgentCore, SiteRefused
from fleetplane.agent.drivers.base import Driver
from fleetplane.agent.identity import FileSiteKeyStore, ensure_private_dir, read_private, write_private
from fleetplane.agent.onboard import SavedIdentity, tenant_and_site
from fleetplane.client import AsyncSiteClient
from fleetplane.core.errors import ApiError
from fleetplane.core.process_tuning import run_loop, tune_for_service
from fleetplane.simulator.cities import CITIES, REGIONS, City
from fleetplane.simulator.silent import silent_agents

log = logging.getLogger("fleetplane.simulator")

FUNCTIONS = ("retail", "restaurant", "warehouse", "factory", "clinic", "cell-tower", "branch-office")
ENVIRONMENTS = (("prod", 75), ("test", 15), ("dev", 10))
MODEL_YEARS = tuple(range(2015, 2025))
JITTER_DEGREES = 0.15  # ~15 km around the city centre
POLL_SECONDS = 30


@dataclass(frozen=True)
class SitePlan:
    """What one simulated site is, drawn from ``(seed, index)`` only."""

    index: int
    name: str
    city: City
    latitude: float
    longitude: float
    labels: dict[str, str]
    seed: int


def _rng(seed: int, index: int) -> Any:
    from fleetplane.agent.drivers.simmodel.engine import derived_random

    return derived_random("fleetplane-simulator", seed, index)


def plan_site(
    index: int,
    seed: int = 1,
    regions: Sequence[str] = (),
    prefix: str = "",
    extra_labels: dict[str, str] | None = None,
) -> SitePlan:
    rng = _rng(seed, index)
    cities = [c for c in CITIES if not regions or c.region in regions]
    if not cities:
        raise ValueError(f"no city in regions {', '.join(regions)}; known regions: {', '.join(REGIONS)}")
    city = rng.choice(cities)
    env = rng.choices([e for e, _ in ENVIRONMENTS], weights=[w for _, w in ENVIRONMENTS])[0]
    labels = {
        "region": city.region,
        "country": city.country,
        "city": city.slug,
        "model-year": str(rng.choice(MODEL_YEARS)),
        "function": rng.choice(FUNCTIONS),
        "environment": env,
        **(extra_labels or {}),
    }
    name = f"{prefix + '-' if prefix else ''}{city.slug}-{index:05d}"
    lat = round(city.latitude + rng.uniform(-JITTER_DEGREES, JITTER_DEGREES), 5)
    lon = round(city.longitude + rng.uniform(-JITTER_DEGREES, JITTER_DEGREES), 5)
    return SitePlan(index, name, city, max(-90.0, min(90.0, lat)), lon, labels, rng.randrange(2**31))


@dataclass
class SimulateConfig:
    server: str
    data_dir: Path
    sites: int
    server_ca: bytes = b""
    token: str | None = None
    regions: tuple[str, ...] = ()
    seed: int = 1
    processes: int = 1
    heartbeat: float = 10.0
    prefix: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    profile: str = "default"
    onboard_concurrency: int = 64
    start_rate: float = 200.0  # agent cores started per second (per process)
    summary_every: float = 10.0
    durable: bool = False  # fsync manifest.json (a real site does; a simulated one need not)
    faults: tuple[str, ...] = ()  # injected into every site at start, e.g. "install_failure:count=1"
    # Stop when this process is gone (its pid, taken when the simulator started): set for a
    # simulator a demo started, and for the workers of a multi-process run. A simulator an
    # operator started from a shell in the background must outlive that shell.
    parent_pid: int | None = None


def make_driver(plan: SitePlan, profile: str, faults: Sequence[str] = ()) -> Driver:
    from fleetplane.agent.drivers.sim import SimDriver, SimSite
    from fleetplane.agent.drivers.simmodel.faults import parse_fault

    site = SimSite(plan.seed, plan.name, plan.labels, profile=profile)
    for fault in faults:
        name, params = parse_fault(fault)
        site.inject(name, **params)
    return SimDriver(site)


async def site_facts(plan: SitePlan, driver: Driver) -> dict[str, Any]:
    obs = await driver.observe()
    cpu = sum(n.cpu_millis for n in obs.nodes) // 1000
    mem = sum(n.memory_bytes for n in obs.nodes) // (1024 * 1024)
    return {
        "hostname": plan.name,
        "hardware": {
            "cpuCores": cpu,
            "memoryMiB": mem,
            "model": f"Fleetbox FB-{plan.labels['model-year']}",
            "serial": f"FB{plan.seed:010d}",
        },
        "agentVersion": fleetplane.__version__,
        "osVersion": obs.os_version or "",
        "coordinates": {"latitude": plan.latitude, "longitude": plan.longitude},
    }


# -- onboarding (async token path) ------------------------------------------------------------


async def onboard_site(
    config: SimulateConfig, plan: SitePlan, facts: dict[str, Any], anon: AsyncSiteClient
) -> SavedIdentity:
    """The saved identity of ``plan``'s site, registering with the token first if needed
    (the same files and resumption as ``fleetplane agent``)."""
    data_dir = config.data_dir / "sites" / f"{plan.index:05d}"
    ensure_private_dir(data_dir)
    saved = SavedIdentity.load(data_dir)
    if saved is not None:
        return saved
    keys = FileSiteKeyStore(data_dir)
    keys.ensure_key()
    pending = data_dir / "pending.json"
    if pending.exists():
        doc = json.loads(read_private(pending, "pending registration"))
        name, poll_token = str(doc["name"]), str(doc["pollToken"])
    else:
        if not config.token:
            raise ApiError(0, "ConfigError", "no registration token: give --token or --token-file")
        body = {
            "token": config.token,
            "csr": keys.csr(plan.name).decode(),
            "requestedName": plan.name,
            "requestedLabels": plan.labels,
            "facts": facts,
        }
        answer = await _retrying(lambda: anon.register(body))
        name, poll_token = str(answer["name"]), str(answer["pollToken"])
        write_private(pending, json.dumps({"name": name, "pollToken": poll_token}).encode())
    warned = False
    while True:
        decided = await _retrying(lambda: anon.poll(name, poll_token, POLL_SECONDS))
        phase = decided.get("phase")
        if phase == "Accepted" and decided.get("certificate"):
            break
        if phase == "Pending" and not warned:
            log.warning(
                "registration %s waits for an operator (no auto-accept, or site name %s is taken: "
                "another simulator on this server needs another --prefix)",
                name,
                plan.name,
            )
            warned = True
        if phase in ("Rejected", "Expired"):
            raise ApiError(403, phase, f"registration {name} {phase.lower()}: {decided.get('reason') or ''}")
    certificate = str(decided["certificate"]).encode()
    tenant, site = tenant_and_site(certificate)
    ident = SavedIdentity(data_dir, tenant, str(decided.get("site") or site), config.server, name)
    ident.save(certificate, str(decided.get("caBundle") or "").encode(), config.server_ca)
    pending.unlink(missing_ok=True)
    return ident


async def _retrying(call: Any, cap: float = 30.0) -> dict[str, Any]:
    from fleetplane.agent.onboard import Backoff

    backoff = Backoff(cap=cap)
    while True:
        try:
            result: dict[str, Any] = await call()
            return result
        except ApiError as exc:
            if exc.code not in (0, 429, 502, 503, 504):
                raise
            await asyncio.sleep(backoff.next_delay())


# -- one process ------------------------------------------------------------------------------


@dataclass
class SimSiteRun:
    plan: SitePlan
    core: AgentCore | None = None
    task: asyncio.Task[None] | None = None
    error: str = ""


class FleetRunner:
    """The sites of one process: onboard them (bounded concurrency), start each one's agent
    core (rate-limited, so a restart does not open thousands of TLS handshakes at once), and
    print a one-line summary now and then."""

    def __init__(self, config: SimulateConfig, indices: Sequence[int], label: str = "") -> None:
        self.config = config
        self.indices = list(indices)
        self.label = label
        self.runs: list[SimSiteRun] = []
        self._stop = asyncio.Event()
        self._parent = config.parent_pid

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        sem = asyncio.Semaphore(cfg.onboard_concurrency)
        anon = AsyncSiteClient(
            cfg.server,
            cfg.server_ca,
            timeout=POLL_SECONDS + 30.0,
            max_connections=cfg.onboard_concurrency,
        )
        starter = _RateLimiter(cfg.start_rate)
        onboarding = [asyncio.create_task(self._bring_up(i, anon, sem, starter)) for i in self.indices]
        summary = asyncio.create_task(self._summaries())
        everyone = asyncio.gather(*onboarding)
        stopped = asyncio.create_task(self._stop.wait())
        try:
            # A stop (SIGTERM, Ctrl-C, the parent gone) ends onboarding too: against a server
            # that is down, onboarding retries for ever.
            await asyncio.wait((everyone, stopped), return_when=asyncio.FIRST_COMPLETED)
            if everyone.done():
                everyone.result()  # a failure of the simulator itself, not of a site
                await anon.aclose()
                running = sum(1 for r in self.runs if r.task is not None)
                print(
                    f"simulator{self.label}: {running}/{len(self.indices)} sites running",
                    file=sys.stderr,
                    flush=True,
                )
                await stopped
        finally:
            stopped.cancel()
            everyone.cancel()
            summary.cancel()
            for t in onboarding:
                t.cancel()
            for r in self.runs:
                if r.core is not None:
                    r.core.stop()
                if r.task is not None:
                    r.task.cancel()
            tasks = [r.task for r in self.runs if r.task is not None]
            await asyncio.gather(*tasks, *onboarding, everyone, stopped, summary, return_exceptions=True)
            await anon.aclose()

    async def _bring_up(
        self, index: int, anon: AsyncSiteClient, sem: asyncio.Semaphore, starter: _RateLimiter
    ) -> None:
        cfg = self.config
        plan = plan_site(index, cfg.seed, cfg.regions, cfg.prefix, cfg.labels)
        run = SimSiteRun(plan)
        self.runs.append(run)
        try:
            driver = make_driver(plan, cfg.profile, cfg.faults)
            facts = await site_facts(plan, driver)
            async with sem:
                ident = await onboard_site(cfg, plan, facts, anon)
            await starter.wait()
            run.core = AgentCore(ident, driver, heartbeat=cfg.heartbeat, facts=facts, durable=cfg.durable)
            run.task = asyncio.create_task(self._site(run, run.core))
        except (ApiError, OSError, ValueError) as exc:
            run.error = getattr(exc, "message", None) or str(exc)
            log.error("site %s: %s", plan.name, run.error)

    async def _site(self, run: SimSiteRun, core: AgentCore) -> None:
        try:
            await core.run()
        except SiteRefused as exc:
            run.error = exc.message
            log.error("%s", exc.message)

    async def _summaries(self) -> None:
        last = ""
        while True:
            for _ in range(max(1, int(self.config.summary_every))):
                await asyncio.sleep(1.0)
                if self._parent is not None and os.getppid() != self._parent:  # killed with -9
                    log.error("simulator%s: parent process gone; stopping", self.label)
                    self._stop.set()
                    return
            line = self.summary()
            if line != last:
                print(f"simulator{self.label}: {line}", file=sys.stderr, flush=True)
                last = line

    def dump_silent(self) -> None:
        """``kill -USR1``: print every agent silent for more than twice its heartbeat and
        where it waits (a site cut off, or stuck: the line says which)."""
        count, lines = silent_agents(self.runs, self.config.heartbeat)
        over = 2 * self.config.heartbeat
        head = f"simulator{self.label}: {count} of {len(self.runs)} agents silent for over {over:g} s"
        print("\n".join([head, *lines]), file=sys.stderr, flush=True)

    def summary(self) -> str:
        cores = [r.core for r in self.runs if r.core is not None]
        reporting = sum(1 for c in cores if c.reports and c.connected)
        states: dict[str, int] = {}
        for c in cores:
            if c.manifest is not None:
                states[c.state] = states.get(c.state, 0) + 1
        failed = sum(1 for r in self.runs if r.error)
        parts = [f"{len(cores)} started", f"{reporting} reporting"]
        parts += [f"{n} manifest {s}" for s, n in sorted(states.items())]
        if failed:
            parts.append(f"{failed} failed")
        return ", ".join(parts)


class _RateLimiter:
    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def run_process(config: SimulateConfig, indices: Sequence[int], label: str = "") -> None:
    runner = FleetRunner(config, indices, label)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, runner.stop)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, runner.dump_silent)
    await runner.run()


def _worker(config: SimulateConfig, worker: int, workers: int) -> None:
    _setup_logging()
    tune_for_service()
    indices = range(worker, config.sites, workers)
    # A worker stops with the simulator that spawned it, whoever started that one.
    run_loop(run_process(replace(config, parent_pid=os.getppid()), indices, f"[{worker}]"))


def _setup_logging(level: int = logging.WARNING) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    for name in ("fleetplane.agent", "fleetplane.simulator"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def simulate(config: SimulateConfig) -> int:
    """Run the fleet until SIGTERM/SIGINT; returns the exit code."""
    # Until the event loop's handler (or, with workers, `forward`) takes over: a dump asked
    # for during start-up must not kill the simulator (SIGUSR1's default). Inherited by workers.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    ensure_private_dir(config.data_dir)
    write_private(
        config.data_dir / "simulator.json",
        json.dumps(
            {
                "server": config.server,
                "sites": config.sites,
                "seed": config.seed,
                "regions": list(config.regions),
            }
        ).encode(),
    )
    if config.processes <= 1:
        tune_for_service()  # the CLI's process is the simulator's
        run_loop(run_process(config, range(config.sites)))
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(config, k, config.processes), daemon=False)
        for k in range(config.processes)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
