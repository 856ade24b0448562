"""Onboarding throughput: N sites onboard against one server process with an auto-accept
token (key generation, CSR, register, long-poll, first mTLS heartbeat), driven from this
process with asyncio + httpx.AsyncClient (not N agent processes).

Target: >= 100 sites/s on 2 cores, reported as <= 10 ms of wall time per site.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import Report, percentile
from bench.procs import cpu_s
from fleetplane.identity.pki import make_csr, make_key

SECTION = "onboarding"
FULL, QUICK = 1000, 50
CONCURRENCY = 64
# Connections to the anonymous endpoints, spread over this many clients: httpcore scans its
# whole pool for every request, so one pool of 64 connections costs the bench more CPU
# than the server spends on a registration.
POOLS = 8

# httpcore asks ``import sniffio`` on every request; sniffio is not installed (anyio no
# longer needs it), so each call was a failed import that searches sys.path again. A None
# entry makes that import fail at once, as it would anyway.
sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "FLEETPLANE_CONFIG": str(data_dir.parent / "config.yaml")}
    log = (data_dir.parent / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetplane", "server", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"https://127.0.0.1:{port}"
    ca = data_dir / "tls" / "serving-ca.crt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if (
                ca.exists()
                and httpx.get(f"{url}/readyz", verify=ssl.create_default_context(cafile=ca)).is_success
            ):
                return proc, url
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


async def _onboard_one(
    i: int, url: str, ca_pem: str, token: str, anon: httpx.AsyncClient, scratch: Path, sem: asyncio.Semaphore
) -> float:
    async with sem:
        t0 = time.perf_counter()
        name = f"bench-{i:05d}"
        key = make_key()
        csr = make_csr(key, name)
        body = {"token": token, "csr": csr.decode(), "requestedName": name, "facts": {"hostname": name}}
        r = await anon.post("/site-api/v1/registrations", json=body)
        r.raise_for_status()
        reg = answer = r.json()
        while not (answer["phase"] == "Accepted" and answer.get("certificate")):
            r = await anon.get(
                f"/site-api/v1/registrations/{reg['name']}",
                params={"waitSeconds": 30},
                headers={"Authorization": f"Bearer {reg['pollToken']}"},
            )
            r.raise_for_status()
            answer = r.json()
            if answer["phase"] in ("Rejected", "Expired"):
                raise RuntimeError(f"{name}: {answer['phase']}")
        # ssl loads a client certificate only from a file: one owner-only file with the
        # certificate and its key (one open instead of two files and a chmod).
        pem_file = scratch / f"{name}.pem"
        fd = os.open(pem_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(answer["certificate"].encode() + key)
        ctx = ssl.create_default_context(cadata=ca_pem)
        ctx.load_cert_chain(pem_file)
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=60) as mtls:
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            r = await mtls.put(
                "/site-api/v1/site/status",
                json={
                    "status": {"phase": "Online", "lastSeen": now, "nodeCount": 1, "softwareVersion": "bench"}
                },
            )
            r.raise_for_status()
        return (time.perf_counter() - t0) * 1000


async def _run(n: int, url: str, ca_pem: str, admin_key: str, scratch: Path) -> tuple[float, list[float]]:
    ctx = ssl.create_default_context(cadata=ca_pem)
    async with httpx.AsyncClient(
        base_url=url, verify=ctx, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}
    ) as admin:
        r = await admin.post(
            "/apis/fleetplane.io/v1/registrationtokens",
            json={
                "apiVersion": "fleetplane.io/v1",
                "kind": "RegistrationToken",
                "metadata": {"name": "bench"},
                "spec": {"autoAccept": True},
            },
        )
        r.raise_for_status()
        token = r.json()["status"]["token"]
    per_pool = CONCURRENCY // POOLS
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    sem = asyncio.Semaphore(CONCURRENCY)
    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, verify=ctx, timeout=60, limits=limits)
            )
            for _ in range(POOLS)
        ]
        t0 = time.perf_counter()
        samples = await asyncio.gather(
            *(_onboard_one(i, url, ca_pem, token, pools[i % POOLS], scratch, sem) for i in range(n))
        )
        wall = time.perf_counter() - t0
    return wall, list(samples)


def run(report: Report, quick: bool) -> None:
    n = QUICK if quick else FULL
    report.params[SECTION] = {"sites": n, "concurrency": CONCURRENCY}
    with tempfile.TemporaryDirectory(prefix="fp-bench-onboard-") as tmp:
        root = Path(tmp)
        data_dir = root / "server"
        proc, url = _start_server(data_dir)
        try:
            ca_pem = (data_dir / "tls" / "serving-ca.crt").read_text()
            admin_key = (data_dir / "admin.key").read_text().strip()
            scratch = root / "sites"
            scratch.mkdir(mode=0o700)
            server_cpu0, own_cpu0 = cpu_s(proc.pid), time.process_time()
            wall, samples = asyncio.run(_run(n, url, ca_pem, admin_key, scratch))
            server_cpu, own_cpu = cpu_s(proc.pid) - server_cpu0, time.process_time() - own_cpu0
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    report.add(SECTION, "sites", "Sites onboarded", n, "sites")
    report.add(SECTION, "sites_per_s", "Onboarding throughput", n / wall, "sites/s")
    report.add(
        SECTION, "ms_per_site", "Wall time per site (>= 100 sites/s)", wall * 1000 / n, "ms", target=10.0
    )
    report.add(
        SECTION, "per_site.p50_ms", "Per site: key to first heartbeat, p50", percentile(samples, 50), "ms"
    )
    report.add(
        SECTION, "per_site.p99_ms", "Per site: key to first heartbeat, p99", percentile(samples, 99), "ms"
    )
    report.add(SECTION, "total_s", "Total wall time", wall, "s")
    # CPU per site says where the time goes; with 2 cores their sum bounds the throughput
    # (the driver here does the sites' key generation, CSR signing and TLS client side).
    report.add(SECTION, "server_cpu_ms_per_site", "Server CPU per site", server_cpu * 1000 / n, "ms")
    report.add(
        SECTION, "driver_cpu_ms_per_site", "Bench (sites' side) CPU per site", own_cpu * 1000 / n, "ms"
    )
