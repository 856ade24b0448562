"""The rollout benchmark's engine-only figures and shared sizes: the pure rollout engine
driven in-process with real SQLite writes (no fleet, no HTTP), and a patch of 100 sites
with the sim's A/B upgrade model in virtual time. ``bench/rollout.py`` is the entry and
the fleet run."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import Report
from bench.fanout import (
    HEARTBEAT_QUICK_S,
    HEARTBEAT_S,
)
from fleetplane.agent.drivers.simmodel.engine import EventQueue
from fleetplane.agent.drivers.simmodel.os_section import OsSection
from fleetplane.agent.drivers.simmodel.os_slots import OsSlots
from fleetplane.agent.drivers.simmodel.profile import PROFILES
from fleetplane.controllers.os_sections import OsContributor
from fleetplane.controllers.rollout import RolloutState, SiteObservation, Strategy, initial_state, step
from fleetplane.controllers.sections import manifest_hash
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store, open_store
from fleetplane.kinds import OS_UPGRADE, ROLLOUT, SITE, SITE_MANIFEST

SECTION = "rollout"
TENANT = "bench"
NS = "ops"
OVERHEAD_TARGET_S = 2.0
PATCH_TARGET_S = 600.0
OLD, NEW = 1, 2
OLD_VERSION, NEW_VERSION = "fleetos-1.4.2", "fleetos-1.5.0"
STOPPED = frozenset({"Completed", "Failed", "Aborted", "RolledBack"})


@dataclass(frozen=True)
class RolloutSizes:
    sites: int  # engine-only overhead
    batch: int
    patch_sites: int
    patch_batch: str
    fleet_sites: int  # the fleet run
    fleet_batch: int
    fleet_processes: int
    fleet_heartbeat_s: int
    fleet_timeout_s: float

    @classmethod
    def for_run(cls, quick: bool) -> RolloutSizes:
        if quick:
            return cls(
                sites=200,
                batch=20,
                patch_sites=100,
                patch_batch="50%",
                fleet_sites=20,
                fleet_batch=2,
                fleet_processes=1,
                fleet_heartbeat_s=HEARTBEAT_QUICK_S,
                fleet_timeout_s=60.0,
            )
        return cls(
            sites=1000,
            batch=100,
            patch_sites=100,
            patch_batch="50%",
            fleet_sites=1000,
            fleet_batch=100,
            fleet_processes=2,
            fleet_heartbeat_s=HEARTBEAT_S,
            fleet_timeout_s=300.0,
        )


def _names(n: int) -> list[str]:
    return [f"site-{i:05d}" for i in range(n)]


def _intent(generation: int, version: str) -> Obj:
    obj = OS_UPGRADE.normalize(
        {
            "metadata": {"name": "fleetos", "namespace": NS},
            "spec": {"virtualSites": ["all"], "version": version},
        }
    )
    obj["metadata"]["generation"] = generation
    return obj


# -- fleet: a real server and simulated sites over mTLS -------------------------------------------


class _Timers:
    def __init__(self) -> None:
        self.engine = self.status = self.manifests = self.reports = 0.0
        self.steps = self.status_writes = 0
        self.status_bytes = 0


def _setup(store: Store, names: list[str], old: Obj, strategy: dict[str, Any]) -> None:
    contributor = OsContributor()
    with store.batch() as batch:
        for name in names:
            site = SITE.normalize({"metadata": {"name": name, "labels": {"env": "prod"}}, "spec": {}})
            batch.create(TENANT, site)
            sections = {"os": contributor.contribute([old], site)}
            batch.create(TENANT, _manifest(name, sections))
    rollout = ROLLOUT.normalize(
        {
            "metadata": {"name": "osupgrade-fleetos-2", "namespace": NS},
            "spec": {
                "intent": {
                    "kind": "OsUpgrade",
                    "name": "fleetos",
                    "generation": NEW,
                    "previousGeneration": OLD,
                },
                "strategy": strategy,
            },
        }
    )
    store.create(TENANT, rollout)


def _manifest(name: str, sections: dict[str, Any]) -> Obj:
    return SITE_MANIFEST.normalize(
        {
            "metadata": {"name": name},
            "spec": {"site": name, "hash": manifest_hash(sections), "sections": sections},
        }
    )


def _hand_out(store: Store, names: tuple[str, ...], new: Obj, t: _Timers) -> None:
    """Compile and write the manifests of the sites handed out (one transaction), then the
    sites' reports that they applied it (one group commit)."""
    contributor = OsContributor()
    start = time.perf_counter()
    with store.batch() as batch:
        for name in names:
            site = {"kind": SITE.kind, "metadata": {"name": name, "labels": {"env": "prod"}}}
            current = batch.get_or_none(TENANT, SITE_MANIFEST.kind, "", name)
            obj = _manifest(name, {"os": contributor.contribute([new], site)})
            if current is not None:
                batch.update(TENANT, {**current, "spec": obj["spec"]}, part="main")
    t.manifests += time.perf_counter() - start
    start = time.perf_counter()
    with store.batch() as batch:
        for name in names:
            current = batch.get_or_none(TENANT, SITE.kind, "", name)
            if current is None:
                continue
            status = {
                "phase": "Online",
                "manifest": {
                    "generation": 2,
                    "state": "Applied",
                    "items": [{"section": "os", "name": NEW_VERSION, "state": "Applied"}],
                },
                "osVersion": NEW_VERSION,
            }
            batch.update(TENANT, {**current, "status": status}, part="status")
    t.reports += time.perf_counter() - start


def _drive_overhead(store: Store, names: list[str], strategy: dict[str, Any]) -> tuple[RolloutState, _Timers]:
    t = _Timers()
    engine = Strategy.from_spec(strategy)
    new = _intent(NEW, NEW_VERSION)
    reported = dict.fromkeys(names, OLD)
    labels = {"env": "prod"}
    state = initial_state(NEW, OLD)
    for _ in range(10 * len(names) + 10):
        start = time.perf_counter()
        obs = {n: SiteObservation(labels=labels, revision=reported[n], applied=True) for n in names}
        result = step(state, engine, obs, time.time())
        t.engine += time.perf_counter() - start
        t.steps += 1
        if result.changed:
            start = time.perf_counter()
            current = store.get(TENANT, ROLLOUT.kind, NS, "osupgrade-fleetos-2")
            status = result.state.to_dict()
            store.update(TENANT, {**current, "status": status}, part="status")
            t.status += time.perf_counter() - start
            t.status_writes += 1
        if result.hand_out:
            _hand_out(store, result.hand_out, new, t)
            for name in result.hand_out:
                reported[name] = NEW  # install time 0: applied as soon as it is handed out
        state = result.state
        if state.phase in STOPPED:
            break
    return state, t


def engine_overhead_figures(report: Report, sizes: RolloutSizes) -> None:
    names = _names(sizes.sites)
    strategy = {"type": "rolling", "batchSize": sizes.batch, "maxFailures": 0}
    with tempfile.TemporaryDirectory(prefix="fleetplane-bench-rollout-") as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'store.db'}")
        try:
            _setup(store, names, _intent(OLD, OLD_VERSION), strategy)
            start = time.perf_counter()
            state, t = _drive_overhead(store, names, strategy)
            total = time.perf_counter() - start
            rollout = store.get(TENANT, ROLLOUT.kind, NS, "osupgrade-fleetos-2")
        finally:
            store.close()
    if state.phase != "Completed" or state.counts["succeeded"] != sizes.sites:
        raise RuntimeError(f"the rollout did not complete: {state.phase} {state.counts}")
    waves = len(state.waves)
    key = f"overhead_{sizes.sites}"
    what = f"{sizes.sites:,} sites, {waves} waves of {sizes.batch}, install 0"
    report.add(
        SECTION,
        f"{key}.total_s",
        f"engine-only overhead (no fleet): {what}",
        total,
        "s",
        target=OVERHEAD_TARGET_S,
    )
    report.add(SECTION, f"{key}.engine_s", "  engine steps (observations + step)", t.engine, "s")
    report.add(SECTION, f"{key}.status_s", f"  Rollout status writes ({t.status_writes})", t.status, "s")
    report.add(SECTION, f"{key}.manifests_s", "  manifest compile + write (1 txn/wave)", t.manifests, "s")
    report.add(SECTION, f"{key}.reports_s", "  site status reports (1 group commit/wave)", t.reports, "s")
    report.add(SECTION, f"{key}.steps", "  engine steps", t.steps, "steps")
    report.add(SECTION, f"{key}.per_wave_ms", "  per wave", total / waves * 1000, "ms")
    status_kb = len(orjson.dumps(rollout.get("status") or {})) / 1024
    report.add(SECTION, f"{key}.status_kb", "  Rollout status size", status_kb, "KiB")


# -- patch100: real A/B install times in virtual time ----------------------------------------------


def _patch(profile_name: str, sites: int, batch: str) -> tuple[RolloutState, float, float]:
    """Simulated seconds to Completed and the engine's real seconds, on the sim OS model."""
    profile = PROFILES[profile_name]
    queue = EventQueue(0.0)
    models: dict[str, OsSection] = {}
    for name in _names(sites):
        slots = OsSlots(
            OLD_VERSION,
            queue,
            install_s=profile.install_s,
            reboot_s=profile.reboot_s,
            health_check_s=profile.health_check_s,
        )
        models[name] = OsSection(slots)
    engine = Strategy.from_spec({"type": "rolling", "batchSize": batch, "maxFailures": 2})
    section = {"version": NEW_VERSION, "sources": [f"{NS}/fleetos"]}
    handed: set[str] = set()
    state = initial_state(NEW, OLD)
    cpu = 0.0
    now = 0.0
    while now < 4 * 3600:
        queue.run_until(now)
        obs: dict[str, SiteObservation] = {}
        for name, model in models.items():
            if name not in handed:
                model.apply(None, now)
                obs[name] = SiteObservation(revision=OLD, applied=True)
                continue
            (item,) = model.apply(section, now)
            failed = (f"os/{item.name}: {item.reason}",) if item.state == "Failed" else ()
            obs[name] = SiteObservation(revision=NEW, applied=item.state == "Applied", failed=failed)
        start = time.perf_counter()
        result = step(state, engine, obs, now)
        cpu += time.perf_counter() - start
        handed.update(result.hand_out)
        state = result.state
        if state.phase in STOPPED:
            return state, now, cpu
        now += 1.0  # the agent core re-applies and reports about every second while in progress
    return state, now, cpu


def patch100_figures(report: Report, sizes: RolloutSizes) -> None:
    profile = PROFILES["default"]
    state, simulated, cpu = _patch("default", sizes.patch_sites, sizes.patch_batch)
    if state.phase != "Completed":
        raise RuntimeError(
            f"patching {sizes.patch_sites} sites did not complete: {state.phase} {state.reason}"
        )
    per_site = profile.install_s + profile.reboot_s + profile.health_check_s
    stages = (
        f"install {profile.install_s:.0f} + reboot {profile.reboot_s:.0f} "
        f"+ check {profile.health_check_s:.0f}"
    )
    label = (
        f"engine-only patch {sizes.patch_sites} sites: {len(state.waves)} waves, "
        f"{per_site:.0f} s/site ({stages})"
    )
    report.add(SECTION, "patch100.sim_s", label, simulated, "s (sim)", target=PATCH_TARGET_S)
    report.add(SECTION, "patch100.engine_cpu_ms", "  engine CPU for it (real)", cpu * 1000, "ms")
    edge = PROFILES["edge"]
    state, simulated, _ = _patch("edge", sizes.patch_sites, "100%")
    report.add(
        SECTION,
        "patch100.edge_one_wave_sim_s",
        f"  edge profile ({edge.install_s + edge.reboot_s + edge.health_check_s:.0f} s/site), one wave",
        simulated,
        "s (sim)",
    )
