"""vK8s at fleet scale (issue 6): ``kubectl get pods`` across N sites x 3 pods, and a
Deployment change reaching all N sites.

A real server process (SQLite) and N simulated sites onboarded by ``fleetplane simulate``
worker processes (real agent cores, as ``bench/fanout.py``), a VK8s in namespace ``default``
on a virtual site of all N, and a 3-replica Deployment created before the sites connect, so
each site runs its 3 pods once onboarded. Then:

(a) ``kubectl get pods`` (real kubectl, the kubeconfig's bearer is the admin key): the
    server time of the list (``Server-Timing`` of the vK8s route: routing to rendered Table)
    over direct requests with kubectl's Table ``Accept`` header, and kubectl's own wall time
    (process start to exit: discovery from its cache, the list, printing 3 N rows).
(b) an image bump (strategic-merge ``PATCH`` of the Deployment through vK8s): time to effect
    per site = from the PATCH sent to the site's report of a newer manifest generation with
    state ``Applied`` (its pods of the new image running, as the sim pulls and starts them), seen
    on a native watch of the Sites; and the time until the Deployment's stored status (the
    workload status controller's) shows every pod updated and ready.

Images are picked for small simulated sizes (the sim pulls at its profile's link speed), so
the figure is the control plane's and the agents', not a modelled download.

Work is counted beside the times (the machine is shared and wall times are noisy): the
server's CPU (utime + stime) per list and over the image bump, the simulator workers' CPU, the
store writes of the bump per kind with their bytes (from the server's SQLite ``events``), and
the sites applied per second. ``FLEETPLANE_BENCH_PYSPY=DIR`` (py-spy on ``PATH``) records raw
py-spy profiles of the server (both phases) and the workers (the bump) into ``DIR``.

Targets: (a) server p99 <= 300 ms; (b) time to effect p99 <= 5 s.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Report, percentile
from bench.fanout import Server, bench_fleet, start_simulator, wait_onboarded
from bench.procs import cpu_s, profile, simulator_processes, stop_process, stop_profile
from bench.watch import applied_generations, watch_change
from fleetplane.agent.drivers.simmodel.workloads import default_image_size

SECTION = "vk8s"
FULL, QUICK = 1000, 10
REPLICAS = 3
LISTS, LISTS_QUICK = 20, 5
HEARTBEAT_S, HEARTBEAT_QUICK_S = 60, 5
API = "/apis/fleetplane.io/v1"
PREFIX = "/api/vK8s/namespaces/default/vk"
# What kubectl get sends.
TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


def small_images(count: int = 2) -> list[str]:
    """The ``count`` image tags the sim draws smallest (of a few thousand candidates)."""
    tags = [f"bench/web:1.{i}" for i in range(3000)]
    return sorted(tags, key=default_image_size)[:count]


def deployment(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }


def kubeconfig(server: Server, path: Path) -> None:
    token = server.headers["Authorization"].split(" ", 1)[1]
    ca = base64.b64encode(server.ca_file.read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "vk",
                        "cluster": {"server": server.url + PREFIX, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": "admin", "user": {"token": token}}],
                "contexts": [
                    {"name": "vk", "context": {"cluster": "vk", "user": "admin", "namespace": "default"}}
                ],
                "current-context": "vk",
            }
        )
    )


def wait_status(server: Server, want: int, generation: int, timeout: float) -> float:
    """Poll the Deployment until its stored status shows ``want`` pods updated and ready at
    ``generation``; when (perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        r = server.http.get(f"{PREFIX}/apis/apps/v1/namespaces/default/deployments/web")
        r.raise_for_status()
        status = r.json().get("status") or {}
        done = (
            status.get("observedGeneration") == generation
            and status.get("updatedReplicas") == want
            and status.get("readyReplicas") == want
        )
        if done:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Deployment status never reached {want} ready/updated: {status}")
        time.sleep(0.1)


def events_by_kind(server: Server, after: int) -> dict[str, tuple[int, int]]:
    """Store writes after revision ``after``, per kind: (events, bytes of their objects), read
    from the server's SQLite file (the events table, read-only)."""
    uri = f"file:{server.data_dir / 'fleetplane.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        rows = db.execute(
            "SELECT kind, COUNT(*), SUM(LENGTH(data)) FROM events WHERE rev > ? GROUP BY kind", (after,)
        ).fetchall()
    return {str(kind): (int(count), int(size or 0)) for kind, count, size in rows}


def measure(n: int, processes: int, lists: int, heartbeat: int, timeout: float) -> dict[str, Any]:
    old, new = small_images()
    with tempfile.TemporaryDirectory(prefix="fp-bench-vk8s-") as tmp:
        root = Path(tmp)
        server = Server(root)
        sim: subprocess.Popen[bytes] | None = None
        try:
            token = bench_fleet(server, "vk8s", "all-bench-sites")
            server.post(
                f"{API}/namespaces/default/vk8s",
                {
                    "apiVersion": "fleetplane.io/v1",
                    "kind": "VK8s",
                    "metadata": {"name": "vk"},
                    "spec": {"virtualSite": "all-bench-sites"},
                },
            )
            server.post(f"{PREFIX}/apis/apps/v1/namespaces/default/deployments", deployment(old))
            t_onboard = time.perf_counter()
            sim = start_simulator(server, root, n, processes, token, heartbeat)
            onboard_s = wait_onboarded(sim, root, n, processes, heartbeat, timeout, t_onboard)
            wait_status(server, n * REPLICAS, 1, timeout)

            # (a) kubectl get pods
            config = root / "kubeconfig"
            kubeconfig(server, config)
            kubectl = ["kubectl", "--kubeconfig", str(config), "--cache-dir", str(root / "kcache")]
            subprocess.run([*kubectl, "get", "pods"], capture_output=True, check=True)  # warm discovery
            server_ms, kubectl_ms, rows = [], [], 0
            spy = profile({"server": server.proc.pid}, "lists")
            cpu_lists = cpu_s(server.proc.pid)
            pods_url = f"{PREFIX}/api/v1/namespaces/default/pods"
            for _ in range(lists):
                r = server.http.get(pods_url, params={"limit": "500000"}, headers={"Accept": TABLE})
                r.raise_for_status()
                server_ms.append(float(r.headers["server-timing"].split("dur=")[1]))
                t0 = time.perf_counter()
                done = subprocess.run([*kubectl, "get", "pods"], capture_output=True, text=True, check=True)
                kubectl_ms.append((time.perf_counter() - t0) * 1000)
                rows = len(done.stdout.strip().splitlines()) - 1
            # Server CPU per list pair (one direct Table request + one kubectl get pods).
            cpu_lists = (cpu_s(server.proc.pid) - cpu_lists) * 1000 / max(lists, 1)
            stop_profile(spy)

            # (b) an image bump to every site
            items, rv = server.sites()
            before = applied_generations(items)
            watcher, compiled = watch_change(server, rv, before)
            time.sleep(0.5)
            patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": new}]}}}}
            workers = simulator_processes(sim.pid)
            spy = profile({"server": server.proc.pid, **workers}, "bump")
            cpu_sim = sum(cpu_s(pid) for pid in workers.values())
            cpu_bump = cpu_s(server.proc.pid)
            t0 = time.perf_counter()
            r = server.http.patch(
                f"{PREFIX}/apis/apps/v1/namespaces/default/deployments/web",
                content=json.dumps(patch),
                headers={"Content-Type": "application/strategic-merge-patch+json"},
            )
            r.raise_for_status()
            finished = watcher.all_done.wait(timeout)
            compiled.all_done.wait(5)
            watcher.close()
            compiled.close()
            if not finished:
                raise RuntimeError(f"only {len(watcher.done)}/{len(before)} sites applied the image bump")
            status_done = wait_status(server, len(before) * REPLICAS, 2, timeout)
            cpu_bump = (cpu_s(server.proc.pid) - cpu_bump) * 1000
            cpu_sim = (sum(cpu_s(pid) for pid in workers.values()) - cpu_sim) * 1000
            writes = events_by_kind(server, int(rv))
            stop_profile(spy)
            effect = sorted((t - t0) * 1000 for t in watcher.done.values())
            compile_ms = sorted((t - t0) * 1000 for t in compiled.done.values()) or [0.0]
            first_report_ms = sorted((t - t0) * 1000 for t in watcher.first.values()) or [0.0]
        finally:
            if sim is not None:
                stop_process(sim, group=True)
            server.close()
    return {
        "n": n,
        "connected": len(before),
        "onboard_s": onboard_s,
        "rows": rows,
        "server_ms": sorted(server_ms),
        "kubectl_ms": sorted(kubectl_ms),
        "effect_ms": effect,
        "compile_ms": compile_ms,
        "first_report_ms": first_report_ms,
        "status_ms": (status_done - t0) * 1000,
        "cpu_list_ms": cpu_lists,
        "cpu_bump_ms": cpu_bump,
        "cpu_sim_ms": cpu_sim,
        "writes": writes,
        "load": os.getloadavg()[0],
        "images": [old, new],
    }


def histogram(values_ms: list[float]) -> list[int]:
    counts = [0] * (int(max(values_ms, default=0) // 1000) + 1)
    for v in values_ms:
        counts[int(v // 1000)] += 1
    return counts


def run(report: Report, quick: bool) -> None:
    n = QUICK if quick else FULL
    processes = 1 if quick else 2
    lists = LISTS_QUICK if quick else LISTS
    heartbeat = HEARTBEAT_QUICK_S if quick else HEARTBEAT_S
    got = measure(n, processes, lists, heartbeat, timeout=120 if quick else 300)
    report.params[SECTION] = {
        "sites": n,
        "replicas_per_site": REPLICAS,
        "sim_processes": processes,
        "lists": lists,
        "heartbeat_s": heartbeat,
        "images": got["images"],
        # Sites applied per second after the PATCH: a spread-out curve is a CPU-bound server,
        # a step is a convoy (every site waiting on one thing).
        "effect_per_second": histogram(got["effect_ms"]),
        "compiled_per_second": histogram(got["compile_ms"]),
        "first_report_per_second": histogram(got["first_report_ms"]),
    }
    pods = f"N = {n:,}"
    report.add(SECTION, "sites", f"{pods}: sites connected", got["connected"], "sites")
    report.add(SECTION, "onboard_s", f"{pods}: onboarding, 3 pods each", got["onboard_s"], "s")
    report.add(SECTION, "load1", f"{pods}: machine load (1 min) at the end", got["load"], "")
    report.add(SECTION, "pods.rows", f"{pods}: rows kubectl get pods printed", got["rows"], "pods")
    sm, km = got["server_ms"], got["kubectl_ms"]
    report.add(
        SECTION, "pods.server.p50_ms", f"{pods}: get pods (Table), server time p50", percentile(sm, 50), "ms"
    )
    report.add(
        SECTION,
        "pods.server.p99_ms",
        f"{pods}: get pods (Table), server time p99",
        percentile(sm, 99),
        "ms",
        target=300.0,
    )
    report.add(
        SECTION, "pods.kubectl.p50_ms", f"{pods}: kubectl get pods wall time p50", percentile(km, 50), "ms"
    )
    report.add(
        SECTION, "pods.kubectl.p99_ms", f"{pods}: kubectl get pods wall time p99", percentile(km, 99), "ms"
    )
    report.add(
        SECTION,
        "pods.server_cpu_ms",
        f"{pods}: server CPU per list (Table + kubectl)",
        got["cpu_list_ms"],
        "ms",
    )
    eff = got["effect_ms"]
    report.add(
        SECTION, "bump.effect.p50_ms", f"{pods}: image bump to site Applied, p50", percentile(eff, 50), "ms"
    )
    report.add(
        SECTION,
        "bump.effect.p99_ms",
        f"{pods}: image bump to site Applied, p99",
        percentile(eff, 99),
        "ms",
        target=5000.0,
    )
    report.add(SECTION, "bump.effect.min_ms", f"{pods}: image bump to first site Applied", min(eff), "ms")
    report.add(SECTION, "bump.effect.max_ms", f"{pods}: image bump to last site Applied", max(eff), "ms")
    first = got["first_report_ms"]
    report.add(
        SECTION,
        "bump.first_report.p50_ms",
        f"{pods}: image bump to the site's first report of it (any state), p50",
        percentile(first, 50),
        "ms",
    )
    comp = got["compile_ms"]
    report.add(
        SECTION, "bump.compiled.max_ms", f"{pods}: image bump to last manifest stored", max(comp), "ms"
    )
    report.add(
        SECTION, "bump.status_ms", f"{pods}: image bump to stored status all updated", got["status_ms"], "ms"
    )
    report.add(
        SECTION,
        "bump.server_cpu_ms",
        f"{pods}: server CPU, image bump to stored status all updated",
        got["cpu_bump_ms"],
        "ms",
    )
    report.add(
        SECTION,
        "bump.sim_cpu_ms",
        f"{pods}: simulator workers' CPU, the same span",
        got["cpu_sim_ms"],
        "ms",
    )
    for kind, (count, size) in sorted(got["writes"].items()):
        report.add(SECTION, f"bump.writes.{kind}", f"{pods}: image bump, {kind} writes", count, "writes")
        report.add(
            SECTION, f"bump.bytes.{kind}", f"{pods}: image bump, {kind} bytes written", size / 1e6, "MB"
        )
