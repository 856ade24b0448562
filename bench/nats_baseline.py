"""The physical floor for fan-out: a plain nats-server delivering one message to N
subscribers (the NATS text protocol over asyncio streams, one connection each)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from typing import Any

from bench.procs import free_port, rss_kb, stop_process

# -- NATS baseline ------------------------------------------------------------------------------------

SUBJECT = "fleet.manifest"


async def _nats_handshake(port: int, sub: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    info = await reader.readline()
    if not info.startswith(b"INFO"):
        raise RuntimeError(f"nats: unexpected greeting {info[:80]!r}")
    writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
    if sub:
        writer.write(f"SUB {SUBJECT} 1\r\n".encode())
    writer.write(b"PING\r\n")
    await writer.drain()
    while True:  # PONG: the server has processed CONNECT and SUB
        line = await reader.readline()
        if line.startswith(b"PONG"):
            return reader, writer
        if line.startswith(b"-ERR") or not line:
            raise RuntimeError(f"nats: {line!r}")


async def _nats_subscriber(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    arrivals: list[float],
    done: asyncio.Event,
    n: int,
) -> None:
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"MSG"):
            size = int(line.split()[-1])
            await reader.readexactly(size + 2)
            arrivals.append(time.perf_counter())
            if len(arrivals) % n == 0:
                done.set()
        elif line.startswith(b"PING"):
            writer.write(b"PONG\r\n")


async def _nats_run(port: int, n: int, size: int, reps: int) -> list[list[float]]:
    conns = []
    for start in range(0, n, 200):  # connect in batches (the server's accept backlog)
        conns += await asyncio.gather(
            *(_nats_handshake(port, True) for _ in range(start, min(n, start + 200)))
        )
    pub_reader, pub = await _nats_handshake(port, False)
    arrivals: list[float] = []
    done = asyncio.Event()
    tasks = [asyncio.create_task(_nats_subscriber(r, w, arrivals, done, n)) for r, w in conns]
    payload = b"x" * size
    samples: list[list[float]] = []
    try:
        for rep in range(reps + 1):  # the first is a warm-up
            done.clear()
            mark = len(arrivals)
            t0 = time.perf_counter()
            pub.write(f"PUB {SUBJECT} {size}\r\n".encode() + payload + b"\r\n")
            await pub.drain()
            await asyncio.wait_for(done.wait(), 60)
            if rep:
                samples.append(sorted((t - t0) * 1000 for t in arrivals[mark : mark + n]))
            await asyncio.sleep(0.2)
    finally:
        for t in tasks:
            t.cancel()
        for _, w in [*conns, (pub_reader, pub)]:
            w.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def nats_fanout(n: int, size: int, reps: int) -> dict[str, Any]:
    binary = shutil.which("nats-server")
    if binary is None:
        raise FileNotFoundError("nats-server is not installed (scripts/system-deps.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
        rss_idle = rss_kb(proc.pid)
        samples = asyncio.run(_nats_run(port, n, size, reps))
        rss_connected = rss_kb(proc.pid)
    finally:
        stop_process(proc)
    return {
        "samples": samples,
        "all": sorted(x for s in samples for x in s),
        "rss_kb_per_conn": max(0, rss_connected - rss_idle) / n,
    }
