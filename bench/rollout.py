"""Rolling upgrades: a fleet-level run, the engine's own cost, and patching 100 sites with real
install times.

* fleet (the figure the issue asks for): a real server process (SQLite) and ``fleet_sites``
  simulated sites from ``fleetplane simulate`` worker processes (real agent cores over mTLS, long-polling
  their manifests; ``bench/fanout.py``'s helpers), a VirtualSite selecting them and a
  ResourceReservation on it, applied by every site at revision 1. Then one change of it to
  revision 2 with ``spec.strategy: {type: rolling, batchSize: fleet_batch}`` (10 waves). The
  sim driver applies a reservation at once apart from the profile's apply latency
  (``apply_latency_s``, 50 ms): install time 0. Timed from sending the write to the arrival of
  the last site's report (native-API watch on Sites) of a manifest that carries revision 2
  (watch on SiteManifests: ``sections.reservations.revisions[default/NAME] == 2``, the report's
  ``status.manifest.generation`` at least that manifest's, state Applied). The sites' own work
  is, per wave, the slowest site's time from its new manifest arriving on the watch to its
  Applied report arriving on the watch (so it includes the long-poll wake-up, HTTP/TLS, the
  agent's apply and report and the server's status write), summed over the waves; the
  control-plane overhead is total minus that (target <= 2 s). A second overhead figure
  subtracts only what the sim models as the site's own time, per wave: the profile's apply
  latency (``apply_latency_s``, 50 ms) and the observation the agent makes before it reports
  (``observe_latency_s``, 10 ms): the strict reading of "the sites' own work" (same target).
  A third, for comparison with earlier runs, subtracts the apply latency alone. At the end
  the Rollout's status must say Completed with 10 waves.
* engine-only overhead (in-process, not a fleet): ``sites`` sites, rolling in batches
  of ``batch``, install time 0, driving the pure engine (``controllers.rollout.step``)
  with real SQLite writes (synchronous=FULL): build the observations and ``step``; write the
  Rollout's status whenever it changes; compile and write the handed-out sites' manifests
  (the real ``os`` contributor, one transaction per wave); write the sites' status reports
  (one group commit per wave, as ``StatusWriter`` does). Not included: HTTP, TLS, the agents'
  long-poll wake-ups, the RolloutController's pacing between rounds.
* patch100 (engine-only, virtual time): 100 sites on the sim driver's own OS A/B model
  (``OsSlots``: install 120 s, reboot 60 s, health check 30 s, the ``default`` profile),
  reporting every second as the agent core does while an item is in progress; rolling in 2
  waves of 50, ``maxFailures: 2``. Figure: simulated seconds until ``Completed`` (target
  < 600 s, the "patch 100 sites in under 10 minutes" requirement), plus the engine's real CPU
  for it.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import Report
from bench.fanout import Server, bench_fleet, start_simulator, wait_onboarded
from bench.procs import cpu_s, profile, simulator_processes, stop_process, stop_profile
from bench.rollout_engine import (
    OVERHEAD_TARGET_S,
    SECTION,
    STOPPED,
    RolloutSizes,
    engine_overhead_figures,
    patch100_figures,
)
from bench.watch import API, Watcher, applied_generations, watch_change
from fleetplane.agent.drivers.simmodel.profile import PROFILES
from fleetplane.kinds.rollout import rollout_name

RESERVATION = "rollout-bench"
VIRTUAL_SITE = "all-bench-sites"
COMPLETED_WAIT_S = 15.0


def _reservation(cpu: str, strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"virtualSites": [VIRTUAL_SITE], "cpu": cpu, "memory": "512Mi"}
    if strategy is not None:
        spec["strategy"] = strategy
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "ResourceReservation",
        "metadata": {"name": RESERVATION},
        "spec": spec,
    }


def _carries(revision: int) -> Callable[[dict[str, Any]], bool]:
    """Does a SiteManifest carry ``revision`` of the bench reservation?"""
    source = f"default/{RESERVATION}"

    def accept(manifest: dict[str, Any]) -> bool:
        sections = (manifest.get("spec") or {}).get("sections") or {}
        revisions = (sections.get("reservations") or {}).get("revisions") or {}
        return bool(revisions.get(source) == revision)

    return accept


@dataclass
class FleetRun:
    sites: int  # connected and Applied before the change
    onboard_s: float
    write_ms: float
    total_s: float  # write sent -> last site's Applied report of revision 2
    waves: list[dict[str, Any]]  # per wave: sites, start/end (s after the write), slowest site
    phase: str  # the Rollout's, at the end
    status_waves: int
    completed_s: float | None  # write -> the Rollout's phaseSince of Completed (server clock)
    server_cpu_s: float
    apply_latency_s: float
    observe_latency_s: float


def _fleet(sizes: RolloutSizes) -> FleetRun:
    n, batch = sizes.fleet_sites, sizes.fleet_batch
    with tempfile.TemporaryDirectory(prefix="fp-bench-rollout-") as tmp:
        root = Path(tmp)
        server = Server(root)
        sim: subprocess.Popen[bytes] | None = None
        watchers: list[Watcher] = []
        try:
            token = bench_fleet(server, "rollout", VIRTUAL_SITE)
            # Revision 1, no strategy: every site gets it when it comes up.
            server.post(f"{API}/namespaces/default/resourcereservations", _reservation("250m"))
            t_onboard = time.perf_counter()
            sim = start_simulator(server, root, n, sizes.fleet_processes, token, sizes.fleet_heartbeat_s)
            onboard_s = wait_onboarded(
                sim, root, n, sizes.fleet_processes, sizes.fleet_heartbeat_s, sizes.fleet_timeout_s, t_onboard
            )
            time.sleep(2.0)  # let the last reports settle

            items, rv = server.sites()
            before = applied_generations(items)
            reports, manifests = watch_change(server, rv, before, accept_manifest=_carries(2))
            watchers = [reports, manifests]
            time.sleep(0.5)
            strategy = {"type": "rolling", "batchSize": batch}
            spy = profile({"server": server.proc.pid, **simulator_processes(sim.pid)}, f"rollout{n}")
            cpu0 = cpu_s(server.proc.pid)
            wall0 = time.time()
            t0 = time.perf_counter()
            r = server.http.patch(
                f"{API}/namespaces/default/resourcereservations/{RESERVATION}",
                content=orjson.dumps({"spec": _reservation("500m", strategy)["spec"]}),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            write_ms = (time.perf_counter() - t0) * 1000
            if r.status_code >= 400:
                raise RuntimeError(f"PATCH reservation: {r.status_code} {r.text}")
            generation = int(r.json()["metadata"]["generation"])
            if generation != 2:
                raise RuntimeError(f"the reservation is at generation {generation}, expected 2")
            finished = reports.all_done.wait(sizes.fleet_timeout_s)
            cpu1 = cpu_s(server.proc.pid)
            stop_profile(spy)
            manifests.all_done.wait(5)
            rollout = _rollout_when_stopped(server, rollout_name("ResourceReservation", RESERVATION, 2))
            if not finished:
                raise RuntimeError(
                    f"only {len(reports.done)}/{len(before)} sites reported revision 2 after "
                    f"{sizes.fleet_timeout_s:.0f} s (Rollout phase {_phase(rollout)})"
                    + (f" (watch: {reports.error})" if reports.error else "")
                )
            # A report counts only for a manifest that carries revision 2.
            early = [
                k
                for k in reports.done
                if k not in manifests.generation or reports.generation[k] < manifests.generation[k]
            ]
            if early:
                raise RuntimeError(
                    f"{len(early)} site(s) reported Applied before a manifest with revision 2 "
                    f"was seen for them, e.g. {early[:3]}"
                )
        finally:
            for watcher in watchers:
                watcher.close()
            if sim is not None:
                stop_process(sim, group=True)
            server.close()
    status = rollout.get("status") or {}
    total_s = max(reports.done.values()) - t0
    waves = []
    for wave in status.get("waves") or []:
        names = [name for name in wave.get("sites") or [] if name in reports.done]
        if not names:
            continue
        work = {name: reports.done[name] - manifests.done[name] for name in names}
        slowest = max(work, key=lambda name: work[name])
        waves.append(
            {
                "index": wave.get("index"),
                "sites": len(names),
                "first_manifest_s": min(manifests.done[k] for k in names) - t0,
                "last_report_s": max(reports.done[k] for k in names) - t0,
                "slowest_site": slowest,
                "slowest_site_work_s": work[slowest],
                "controller_started_s": _since(wave.get("startedAt"), wall0),
                "controller_finished_s": _since(wave.get("finishedAt"), wall0),
            }
        )
    completed = _since(status.get("phaseSince"), wall0) if status.get("phase") == "Completed" else None
    return FleetRun(
        sites=len(before),
        onboard_s=onboard_s,
        write_ms=write_ms,
        total_s=total_s,
        waves=waves,
        phase=_phase(rollout),
        status_waves=len(status.get("waves") or []),
        completed_s=completed,
        server_cpu_s=cpu1 - cpu0,
        apply_latency_s=PROFILES["default"].apply_latency_s,
        observe_latency_s=PROFILES["default"].observe_latency_s,
    )


def _since(at: Any, wall0: float) -> float | None:
    return float(at) - wall0 if isinstance(at, int | float) else None


def _phase(rollout: dict[str, Any]) -> str:
    return str((rollout.get("status") or {}).get("phase") or "none")


def _rollout_when_stopped(server: Server, name: str) -> dict[str, Any]:
    """The Rollout, once its phase is a stopped one (or as it is after ``COMPLETED_WAIT_S``)."""
    deadline = time.monotonic() + COMPLETED_WAIT_S
    rollout: dict[str, Any] = {}
    while True:
        r = server.http.get(f"{API}/namespaces/default/rollouts/{name}")
        if r.status_code == 200:
            rollout = r.json()
            if _phase(rollout) in STOPPED:
                return rollout
        if time.monotonic() > deadline:
            return rollout
        time.sleep(0.1)


def _fleet_figures(report: Report, sizes: RolloutSizes) -> None:
    n, batch = sizes.fleet_sites, sizes.fleet_batch
    expected_waves = -(-n // batch)
    try:
        run = _fleet(sizes)
    except RuntimeError as exc:
        report.notes.append(
            f"rollout: the fleet run ({n:,} sites) FAILED, no fleet figures: {str(exc)[:600]}"
        )
        return
    key = f"fleet_{n}"
    waves = run.waves
    what = f"{run.sites:,} sim sites, rolling {batch}/wave"
    sites_work = sum(w["slowest_site_work_s"] for w in waves)
    report.add(SECTION, f"{key}.sites", f"fleet: {what}: sites connected and Applied", run.sites, "sites")
    report.add(
        SECTION, f"{key}.onboard_s", "  onboarding until all Applied (untimed setup)", run.onboard_s, "s"
    )
    report.add(SECTION, f"{key}.write_ms", "  the write (PATCH, strategy + new spec)", run.write_ms, "ms")
    report.add(
        SECTION, f"{key}.total_s", "  write -> last site's Applied report of revision 2", run.total_s, "s"
    )
    report.add(
        SECTION,
        f"{key}.sites_work_s",
        f"  sites' own work: sum over {len(waves)} waves of the slowest manifest -> report",
        sites_work,
        "s",
    )
    report.add(
        SECTION,
        f"{key}.overhead_s",
        "  control-plane overhead = total - sites' own work",
        run.total_s - sites_work,
        "s",
        target=OVERHEAD_TARGET_S,
    )
    modelled = run.apply_latency_s + run.observe_latency_s
    report.add(
        SECTION,
        f"{key}.overhead_vs_modelled_s",
        f"  overhead = total - modelled site time x waves ((apply {run.apply_latency_s * 1000:.0f} + "
        f"observe {run.observe_latency_s * 1000:.0f} ms) x {len(waves)})",
        run.total_s - modelled * len(waves),
        "s",
        target=OVERHEAD_TARGET_S,
    )
    report.add(
        SECTION,
        f"{key}.overhead_vs_apply_latency_s",
        f"  overhead = total - apply latency alone x waves "
        f"({run.apply_latency_s * 1000:.0f} ms x {len(waves)})",
        run.total_s - run.apply_latency_s * len(waves),
        "s",
    )
    report.add(
        SECTION,
        f"{key}.waves",
        f"  waves (Rollout status: {run.status_waves}, {run.phase})",
        len(waves),
        "waves",
    )
    if run.completed_s is not None:
        report.add(
            SECTION, f"{key}.completed_s", "  write -> Rollout Completed (server clock)", run.completed_s, "s"
        )
    report.add(SECTION, f"{key}.server_cpu_s", "  server CPU during the rollout", run.server_cpu_s, "s")
    report.add(
        SECTION,
        f"{key}.wave_mean_s",
        "  waves: span (1st manifest -> last report), mean",
        sum(w["last_report_s"] - w["first_manifest_s"] for w in waves) / max(1, len(waves)),
        "s (mean)",
    )
    prev_end = 0.0
    gaps = []
    for w in waves:
        i = w["index"]
        gap = w["first_manifest_s"] - prev_end
        gaps.append(gap)
        report.add(
            SECTION,
            f"{key}.wave{i:02d}.duration_s",
            f"    wave {i} ({w['sites']}): span; slowest site {w['slowest_site_work_s'] * 1000:.0f} ms, "
            f"gap {gap * 1000:.0f} ms",
            w["last_report_s"] - w["first_manifest_s"],
            "s",
        )
        prev_end = w["last_report_s"]
    if gaps:
        report.add(
            SECTION,
            f"{key}.gap_mean_ms",
            "  gap (prev. last report, or the write -> 1st manifest), mean",
            sum(gaps) / len(gaps) * 1000,
            "ms",
        )
    # The gap split by the controller's own clock (server, epoch seconds; same host): wave k's
    # finishedAt is the step that saw its last result, which starts wave k + 1.
    react = [
        b["controller_started_s"] - a["last_report_s"]
        for a, b in itertools.pairwise(waves)
        if b["controller_started_s"] is not None
    ]
    compile_ = [
        w["first_manifest_s"] - w["controller_started_s"]
        for w in waves
        if w["controller_started_s"] is not None
    ]
    if react and compile_:
        react_ms = sum(react) / len(react) * 1000
        compile_ms = sum(compile_) / len(compile_) * 1000
        report.add(
            SECTION,
            f"{key}.react_mean_ms",
            "    of it: last report -> controller's step starting the next wave",
            react_ms,
            "ms",
        )
        report.add(
            SECTION,
            f"{key}.compile_mean_ms",
            "    of it: that step -> first manifest stored",
            compile_ms,
            "ms",
        )
        overhead = run.total_s - sites_work
        if overhead > OVERHEAD_TARGET_S:
            report.notes.append(
                f"rollout: fleet overhead MISS ({overhead:.2f} s > {OVERHEAD_TARGET_S:.0f} s): between waves "
                f"{sum(gaps) / len(gaps) * 1000:.0f} ms on average = the RolloutController noticing the "
                f"wave's last report ({react_ms:.0f} ms; between rounds it pauses as long as a round's "
                "CPU, 0.05-0.5 s) + "
                f"the compile writing the next wave's manifests ({compile_ms:.0f} ms)"
            )
    report.params[SECTION]["fleet_waves"] = waves
    problems = []
    if run.phase != "Completed":
        problems.append(f"the Rollout's phase is {run.phase}, not Completed")
    if run.status_waves != expected_waves or len(waves) != expected_waves:
        problems.append(
            f"{run.status_waves} waves in the Rollout's status ({len(waves)} seen), not {expected_waves}"
        )
    if run.sites < n:
        problems.append(f"only {run.sites}/{n} sites came up")
    if problems:
        report.notes.append("rollout: fleet run: " + "; ".join(problems))


# -- engine-only overhead: the control plane's work around 0-second installs --------------------


def run(report: Report, quick: bool) -> None:
    sizes = RolloutSizes.for_run(quick)
    report.params[SECTION] = {
        **sizes.__dict__,
        "fleet_driver": "server process + fleetplane simulate processes (mTLS), RolloutController",
        "engine_driver": "pure engine in-process (overhead_N, patch100; not the RolloutController)",
        "backend": "sqlite, synchronous=FULL",
    }
    _fleet_figures(report, sizes)
    engine_overhead_figures(report, sizes)
    patch100_figures(report, sizes)
    report.notes.append(
        "rollout: the fleet_N figures are a fleet run (server + sim sites over mTLS, the RolloutController); "
        "sites' own work = per wave the slowest site's new manifest -> its Applied report, both as seen on "
        "the watch (so it includes the long-poll wake-up, HTTP/TLS and the status write). "
        "overhead_N and patch100 are engine-only, not a fleet run: the overhead figure covers engine steps "
        "and the store writes a rollout causes (status, manifests, site reports), not HTTP/TLS, agent "
        "wake-ups or the controller's pacing between rounds; patch100 is virtual time on the sim driver's "
        "A/B model."
    )
