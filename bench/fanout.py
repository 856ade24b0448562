"""Time to effect (issue 4): one intent change that affects N connected sites, from the
write to the last site's status report of that revision, against a NATS fan-out floor.

fleetplane: a real server process (SQLite, ``--offline-after`` large); N simulated sites
onboarded by ``fleetplane simulate`` worker processes (real agent cores: mTLS, long-polls
on ``/site-api/v1/manifest``) until every site reports its manifest Applied. Server RSS
(``/proc/<pid>/status`` VmRSS) before the sites connect and with all N connected gives KB
per connected site. Then a ResourceReservation targeting a VirtualSite that selects all N
sites is created; a native-API watch on sites (admin key) sees every site's report; a
site's latency is the time its report with a newer ``status.manifest.generation`` and
state ``Applied`` arrives on the watch, minus the time the write was sent (so it includes
the write itself). Server CPU (utime + stime, ``/proc/<pid>/stat``) during the fan-out is
reported per site.

NATS baseline: a plain ``nats-server`` on loopback, N subscribers to one subject (the NATS
text protocol over asyncio streams, one connection each, in this process), one message of
the size of a site manifest published; publish to each delivery, over a few repetitions.

TLS floor (``bench/tls_floor.py``): the server's own TLS setup on uvloop, with N idle
mutual-TLS connections and no application: what any server terminating the sites' TLS in
this process holds per site. The memory target leaves the fan-out that much less.

``FLEETPLANE_BENCH_FANOUT_BIG=0`` skips the N = 10,000 attempt.

Targets: all N applied <= 5 s at p99; <= 50 KB server memory per connected site; our
fan-out p99 <= 5x the NATS baseline p99.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Report, percentile
from bench.nats_baseline import nats_fanout
from bench.procs import cpu_s, free_port, profile, rss_kb, simulator_processes, stop_process, stop_profile
from bench.tls_floor import tls_floor
from bench.watch import API, FLEET_LABEL, applied_generations, watch_change

SECTION = "fanout"
FULL, QUICK = 1000, 10
BIG = 10_000
# Attempt N = 10,000 only when N = 1,000 (onboarding + fan-out) ran in under 2 minutes
# and the extrapolated 10,000 run fits this budget on the machine.
BIG_IF_SMALL_UNDER_S = 120.0
BIG_BUDGET_S = 1200.0
NATS_REPS, NATS_REPS_QUICK = 5, 3
# A site that asks for its manifest before the compile controller wrote it gets 204 and asks
# again only with its next heartbeat (agent core): a long heartbeat leaves such sites without
# a manifest that long. 60 s keeps the background load low (N/60 reports/s) and bounds that.
HEARTBEAT_S, HEARTBEAT_QUICK_S = 60, 5
STALL_MARGIN_S = 15.0  # no more site Applied for a heartbeat and this long: onboarding is over
MIN_CONNECTED = 0.99  # ... and at least this share of N came up: time the fan-out over those


# -- fleetplane ---------------------------------------------------------------------------------------


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "server"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FLEETPLANE_CONFIG": str(root / "config.yaml")}
        self.log = root / "server.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetplane",
                    "server",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--offline-after",
                    "86400",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.ca_file = self.data_dir / "tls" / "serving-ca.crt"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file)
                if self.ca_file.exists() and httpx.get(f"{self.url}/readyz", verify=ctx).is_success:
                    break
            except (httpx.TransportError, OSError):
                pass
            if time.monotonic() > deadline:
                stop_process(self.proc)
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        self.ctx = ssl.create_default_context(cafile=self.ca_file)
        key = (self.data_dir / "admin.key").read_text().strip()
        self.headers = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=self.url, verify=self.ctx, headers=self.headers, timeout=60)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.http.close()
        stop_process(self.proc)

    def post(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(path, json=obj)
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        result: dict[str, Any] = r.json()
        return result

    def sites(self) -> tuple[list[dict[str, Any]], str]:
        """Every bench site and the list's resource version (paged)."""
        items: list[dict[str, Any]] = []
        cont, rv = "", ""
        while True:
            params: dict[str, str | int] = {"labelSelector": f"fleet={FLEET_LABEL}", "limit": 2000}
            if cont:
                params["continue"] = cont
            r = self.http.get(f"{API}/sites", params=params)
            r.raise_for_status()
            page = r.json()
            items += page["items"]
            rv = rv or page["metadata"]["resourceVersion"]
            cont = page["metadata"].get("continue") or ""
            if not cont:
                return items, rv


def bench_fleet(server: Server, token_name: str, virtual_site: str) -> str:
    """An auto-accept token labelling its sites ``fleet=<FLEET_LABEL>`` and a virtual site
    (namespace default) selecting them; the token's secret."""
    token: str = server.post(
        f"{API}/registrationtokens",
        {
            "apiVersion": "fleetplane.io/v1",
            "kind": "RegistrationToken",
            "metadata": {"name": token_name},
            "spec": {"autoAccept": True, "labels": {"fleet": FLEET_LABEL}},
        },
    )["status"]["token"]
    server.post(
        f"{API}/namespaces/default/virtualsites",
        {
            "apiVersion": "fleetplane.io/v1",
            "kind": "VirtualSite",
            "metadata": {"name": virtual_site},
            "spec": {"selector": f"fleet={FLEET_LABEL}"},
        },
    )
    return token


def start_simulator(
    server: Server, root: Path, n: int, processes: int, token: str, heartbeat: int
) -> subprocess.Popen[bytes]:
    token_file = root / "token"
    token_file.write_text(token + "\n")
    log = (root / "sim.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetplane",
            "simulate",
            "--server",
            server.url,
            "--ca-file",
            str(server.ca_file),
            "--token-file",
            str(token_file),
            "--sites",
            str(n),
            "--processes",
            str(processes),
            "--data-dir",
            str(root / "sim"),
            # Between the fan-out's reports the sites long-poll and heartbeat (60 s in the full run).
            "--heartbeat",
            str(heartbeat),
            "--start-rate",
            "1000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server.env,
        start_new_session=True,
    )


def wait_onboarded(
    sim: subprocess.Popen[bytes],
    root: Path,
    n: int,
    processes: int,
    heartbeat: int,
    timeout: float,
    t_onboard: float,
) -> float:
    """Wait until the simulator's N sites report their manifest Applied (or, after a stall,
    at least ``MIN_CONNECTED`` of them); the onboarding time since ``t_onboard``."""
    stall_s = heartbeat + STALL_MARGIN_S
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        if sim.poll() is not None:
            raise RuntimeError(f"simulator exited with {sim.returncode}: {_tail(root / 'sim.log')}")
        # The simulator's own progress lines, not a list of N sites every second:
        # at 10,000 sites that list alone kept the server busy.
        applied = _simapplied(root / "sim.log", processes)
        if applied == n:
            break
        if applied != last:
            last, last_change = applied, time.monotonic()
        stalled = time.monotonic() - last_change > stall_s
        if stalled and applied >= n * MIN_CONNECTED:
            break  # a few sites failed to come up: measure over the rest
        if stalled or time.monotonic() > deadline:
            raise RuntimeError(
                f"only {applied}/{n} sites Applied after {onboard_wait(t_onboard):.0f} s; "
                f"simulator log: {_tail(root / 'sim.log')}"
            )
        time.sleep(1.0)
    return time.perf_counter() - t_onboard - (stall_s if applied < n else 0.0)


def fleetplane_fanout(n: int, processes: int, timeout: float, heartbeat: int = HEARTBEAT_S) -> dict[str, Any]:
    """One full run at N sites: onboarding, memory per site, then the timed fan-out."""
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fp-bench-fanout-") as tmp:
        root = Path(tmp)
        server = Server(root)
        sim: subprocess.Popen[bytes] | None = None
        try:
            token = bench_fleet(server, "fanout", "all-bench-sites")
            time.sleep(1.0)
            rss_before = rss_kb(server.proc.pid)

            t_onboard = time.perf_counter()
            sim = start_simulator(server, root, n, processes, token, heartbeat)
            onboard_s = wait_onboarded(sim, root, n, processes, heartbeat, timeout, t_onboard)
            time.sleep(2.0)  # let the last reports settle
            rss_connected = rss_kb(server.proc.pid)

            items, rv = server.sites()
            before = applied_generations(items)
            missing = n - len(before)
            sim_errors = _errors(root / "sim.log") if missing else []
            # Write -> manifest stored (compile) and manifest stored -> site report
            # (distribution + agent + status).
            watcher, compiled = watch_change(server, rv, before)
            time.sleep(0.5)
            workers = simulator_processes(sim.pid)
            spy = profile({"server": server.proc.pid, **workers}, f"fanout{n}")
            cpu0 = cpu_s(server.proc.pid)
            sim0 = sum(cpu_s(pid) for pid in workers.values())
            t0 = time.perf_counter()
            server.post(
                f"{API}/namespaces/default/resourcereservations",
                {
                    "apiVersion": "fleetplane.io/v1",
                    "kind": "ResourceReservation",
                    "metadata": {"name": "fanout"},
                    "spec": {"virtualSites": ["all-bench-sites"], "cpu": "250m", "memory": "512Mi"},
                },
            )
            write_ms = (time.perf_counter() - t0) * 1000
            finished = watcher.all_done.wait(timeout)
            cpu1 = cpu_s(server.proc.pid)
            sim1 = sum(cpu_s(pid) for pid in workers.values())
            rss_after = rss_kb(server.proc.pid)
            compiled.all_done.wait(5)
            stop_profile(spy)
            watcher.close()
            compiled.close()
            if not finished:
                raise RuntimeError(
                    f"only {len(watcher.done)}/{n} sites reported the new generation after {timeout:.0f} s"
                    + (f" (watch: {watcher.error})" if watcher.error else "")
                )
            latencies = sorted((t - t0) * 1000 for t in watcher.done.values())
            compile_ms = sorted((t - t0) * 1000 for t in compiled.done.values())
            after_compile = sorted(
                (watcher.done[k] - compiled.done[k]) * 1000 for k in watcher.done if k in compiled.done
            )
            if missing:
                (Path(tempfile.gettempdir()) / "fp-bench-fanout-sim.log").write_bytes(
                    (root / "sim.log").read_bytes()
                )
            r = server.http.get(f"{API}/sitemanifests/{items[0]['metadata']['name']}")
            r.raise_for_status()
            manifest_bytes = len(r.content)
        finally:
            if sim is not None:
                stop_process(sim, group=True)
            server.close()
    return {
        "n": n,
        "connected": len(before),
        "missing": missing,
        "sim_errors": sim_errors,
        "latencies_ms": latencies,
        "compile_ms": compile_ms or [0.0],
        "after_compile_ms": after_compile or [0.0],
        "write_ms": write_ms,
        "onboard_s": onboard_s,
        "rss_before_kb": rss_before,
        "rss_connected_kb": rss_connected,
        "rss_after_kb": rss_after,
        "cpu_fanout_s": cpu1 - cpu0,
        # The simulated agents run on the same machine: their CPU is the bench's own, and it
        # competes with the server's for the same cores.
        "sim_cpu_fanout_s": sim1 - sim0,
        "manifest_bytes": manifest_bytes,
        "site_writes": watcher.events,
        "total_s": time.perf_counter() - t_start,
    }


# "simulator[3]: ..." per worker, or "simulator: ..." when there is one process
_PROGRESS = re.compile(r"^simulator(\[\d+\])?: .*?(\d+) manifest Applied", re.M)


def _simapplied(path: Path, processes: int) -> int:
    """Sites with their manifest Applied, from each simulator worker's latest progress line."""
    latest: dict[str, int] = {}
    for worker, count in _PROGRESS.findall(_tail(path, 20_000 * processes)):
        latest[worker] = int(count)
    return sum(latest.values())


def onboard_wait(since: float) -> float:
    return time.perf_counter() - since


def _errors(path: Path, most: int = 5) -> list[str]:
    """The first distinct error lines of the simulator's log (sites that did not come up)."""
    seen: dict[str, None] = {}
    for line in _tail(path, 200_000).splitlines():
        if "site " in line or "rror" in line:
            seen.setdefault(line.split(" ", 1)[-1][:200], None)
    return list(seen)[:most]


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# -- the benchmark ------------------------------------------------------------------------------------------


def _add_size(
    report: Report,
    n: int,
    fp: dict[str, Any],
    nats: dict[str, Any] | None,
    tls: tuple[int, float] | None,
    tag: str,
) -> None:
    lat = fp["latencies_ms"]
    if fp["missing"]:
        report.notes.append(
            f"fanout N = {n:,}: {fp['missing']} site(s) never came up (simulator log copied to "
            f"{tempfile.gettempdir()}/fp-bench-fanout-sim.log); the fan-out is timed over the "
            f"{fp['connected']} connected: "
            + ("; ".join(fp["sim_errors"]) or "no error logged, i.e. no manifest yet")
        )
    p99, mx = percentile(lat, 99), max(lat)
    report.add(SECTION, f"{tag}.sites", f"N = {n:,}: sites connected and Applied", fp["connected"], "sites")
    report.add(SECTION, f"{tag}.onboard_s", f"N = {n:,}: onboarding until all Applied", fp["onboard_s"], "s")
    report.add(SECTION, f"{tag}.write_ms", f"N = {n:,}: the write (POST 201)", fp["write_ms"], "ms")
    report.add(
        SECTION, f"{tag}.effect.p50_ms", f"N = {n:,}: write to site Applied, p50", percentile(lat, 50), "ms"
    )
    report.add(
        SECTION, f"{tag}.effect.p99_ms", f"N = {n:,}: write to site Applied, p99", p99, "ms", target=5000.0
    )
    report.add(SECTION, f"{tag}.effect.max_ms", f"N = {n:,}: write to last site Applied", mx, "ms")
    report.add(SECTION, f"{tag}.effect.min_ms", f"N = {n:,}: write to first site Applied", min(lat), "ms")
    comp, after = fp["compile_ms"], fp["after_compile_ms"]
    report.add(
        SECTION,
        f"{tag}.compiled.p50_ms",
        f"N = {n:,}: write to manifest stored, p50",
        percentile(comp, 50),
        "ms",
    )
    report.add(
        SECTION, f"{tag}.compiled.max_ms", f"N = {n:,}: write to last manifest stored", max(comp), "ms"
    )
    report.add(
        SECTION,
        f"{tag}.delivered.p50_ms",
        f"N = {n:,}: manifest stored to site Applied, p50",
        percentile(after, 50),
        "ms",
    )
    report.add(
        SECTION,
        f"{tag}.delivered.p99_ms",
        f"N = {n:,}: manifest stored to site Applied, p99",
        percentile(after, 99),
        "ms",
    )
    report.add(
        SECTION,
        f"{tag}.site_writes_per_site",
        f"N = {n:,}: Site writes until the last Applied, per site (reports, heartbeats)",
        fp["site_writes"] / fp["connected"],
        "writes",
    )
    per_site_kb = (fp["rss_connected_kb"] - fp["rss_before_kb"]) / fp["connected"]
    report.add(
        SECTION,
        f"{tag}.server_rss_before_mb",
        f"N = {n:,}: server RSS before sites",
        fp["rss_before_kb"] / 1024,
        "MB",
    )
    report.add(
        SECTION,
        f"{tag}.server_rss_connected_mb",
        f"N = {n:,}: server RSS, N connected",
        fp["rss_connected_kb"] / 1024,
        "MB",
    )
    report.add(
        SECTION,
        f"{tag}.server_kb_per_site",
        f"N = {n:,}: server memory per connected site",
        per_site_kb,
        "KB",
        target=50.0,
    )
    if tls is not None:
        conns, tls_kb = tls
        report.add(
            SECTION,
            f"{tag}.tls_floor_kb_per_conn",
            f"N = {n:,}: floor: an idle mTLS connection, the server's TLS setup, no app ({conns:,})",
            tls_kb,
            "KB",
        )
        report.add(
            SECTION,
            f"{tag}.server_kb_per_site_above_tls",
            f"N = {n:,}: server memory per connected site above that floor",
            per_site_kb - tls_kb,
            "KB",
        )
    report.add(
        SECTION,
        f"{tag}.server_cpu_ms_per_site",
        f"N = {n:,}: server CPU during fan-out, per site",
        fp["cpu_fanout_s"] * 1000 / fp["connected"],
        "ms",
    )
    report.add(
        SECTION,
        f"{tag}.sim_cpu_ms_per_site",
        f"N = {n:,}: simulated agents' CPU during fan-out, per site (same cores)",
        fp["sim_cpu_fanout_s"] * 1000 / fp["connected"],
        "ms",
    )
    report.add(
        SECTION,
        f"{tag}.manifest_bytes",
        f"N = {n:,}: one site manifest (JSON)",
        fp["manifest_bytes"],
        "bytes",
    )
    if nats is None:
        return
    allv = nats["all"]
    n99, nmax = percentile(allv, 99), max(max(s) for s in nats["samples"])
    report.add(
        SECTION, f"{tag}.nats.p50_ms", f"N = {n:,}: NATS publish to delivery, p50", percentile(allv, 50), "ms"
    )
    report.add(SECTION, f"{tag}.nats.p99_ms", f"N = {n:,}: NATS publish to delivery, p99", n99, "ms")
    report.add(
        SECTION, f"{tag}.nats.max_ms", f"N = {n:,}: NATS publish to last delivery (worst rep)", nmax, "ms"
    )
    report.add(
        SECTION,
        f"{tag}.nats.kb_per_conn",
        f"N = {n:,}: nats-server memory per subscriber",
        nats["rss_kb_per_conn"],
        "KB",
    )
    report.add(
        SECTION, f"{tag}.ratio_p99", f"N = {n:,}: fleetplane p99 / NATS p99", p99 / n99, "x", target=5.0
    )
    report.add(SECTION, f"{tag}.ratio_max", f"N = {n:,}: fleetplane max / NATS max", mx / nmax, "x")


def _tls_floor(report: Report, n: int) -> tuple[int, float] | None:
    """Connections and KB per connection; at least 500 (RSS moves in pages and arenas)."""
    conns = max(n, 500)
    try:
        return conns, float(tls_floor(conns)["rss_kb_per_conn"])
    except (OSError, RuntimeError) as exc:
        report.notes.append(f"fanout: TLS floor with {conns:,} connections not measured: {exc}")
        return None


def run(report: Report, quick: bool) -> None:
    n = QUICK if quick else FULL
    processes = 1 if quick else 2
    reps = NATS_REPS_QUICK if quick else NATS_REPS
    heartbeat = HEARTBEAT_QUICK_S if quick else HEARTBEAT_S
    params: dict[str, Any] = {
        "sites": n,
        "sim_processes": processes,
        "nats_reps": reps,
        "heartbeat_s": heartbeat,
    }
    report.params[SECTION] = params
    fp = fleetplane_fanout(n, processes, timeout=120 if quick else 300, heartbeat=heartbeat)
    nats: dict[str, Any] | None
    try:
        nats = nats_fanout(n, fp["manifest_bytes"], reps)
        params["nats_message_bytes"] = fp["manifest_bytes"]
    except FileNotFoundError as exc:
        nats = None
        report.notes.append(f"fanout: NATS baseline not run: {exc}")
    _add_size(report, n, fp, nats, _tls_floor(report, n), "n1k" if not quick else "small")
    if quick:
        return
    if os.environ.get("FLEETPLANE_BENCH_FANOUT_BIG", "1") == "0":
        params["n10k"] = "skipped (FLEETPLANE_BENCH_FANOUT_BIG=0)"
        return
    estimate = fp["total_s"] * BIG / n
    if fp["total_s"] > BIG_IF_SMALL_UNDER_S or estimate > BIG_BUDGET_S:
        params["n10k"] = "not run"
        report.notes.append(
            f"fanout: N = 10,000 not run: N = 1,000 took {fp['total_s']:.0f} s end to end "
            f"(onboarding {fp['onboard_s']:.0f} s), so 10,000 would take ~{estimate:.0f} s "
            f"(limit {BIG_BUDGET_S:.0f} s); memory extrapolates to "
            f"~{(fp['rss_connected_kb'] - fp['rss_before_kb']) * BIG / n / 1024:.0f} MB server RSS growth"
        )
        return
    try:
        big = fleetplane_fanout(BIG, 2, timeout=BIG_BUDGET_S)
    except RuntimeError as exc:  # keep the N = 1,000 figures; say why 10,000 has none
        params["n10k"] = "failed"
        report.notes.append(f"fanout: N = 10,000 did not complete: {str(exc)[:300]}")
        return
    try:
        big_nats: dict[str, Any] | None = nats_fanout(BIG, big["manifest_bytes"], reps)
    except (FileNotFoundError, OSError, RuntimeError) as exc:
        big_nats = None
        report.notes.append(f"fanout: NATS baseline at 10,000 not run: {exc}")
    params["n10k"] = "run"
    _add_size(report, BIG, big, big_nats, _tls_floor(report, BIG), "n10k")
