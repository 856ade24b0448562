"""Process helpers the benchmarks share: free ports, stopping, RSS and CPU from /proc, and
py-spy profiles on request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

# -- /proc ------------------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)


# -- profiles ---------------------------------------------------------------------------------------


def profile(pids: dict[str, int], phase: str) -> list[subprocess.Popen[bytes]]:
    """``FLEETPLANE_BENCH_PYSPY=DIR``: py-spy (on PATH) records each process during a phase, as
    raw stacks of the thread holding the GIL (what uses the CPU), into ``DIR/<phase>-<name>.txt``,
    at ``FLEETPLANE_BENCH_PYSPY_RATE`` samples a second (py-spy's default, 100, if unset)."""
    where = os.environ.get("FLEETPLANE_BENCH_PYSPY")
    if not where:
        return []
    rate = os.environ.get("FLEETPLANE_BENCH_PYSPY_RATE", "100")
    spy = ["py-spy", "record", "--gil", "--threads", "--format", "raw", "--rate", rate]
    return [
        subprocess.Popen([*spy, "--pid", str(pid), "-o", f"{where}/{phase}-{name}.txt"])
        for name, pid in pids.items()
    ]


def stop_profile(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.wait(30)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (e.g. a simulator's worker processes)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def simulator_processes(pid: int) -> dict[str, int]:
    """The processes running a ``fleetplane simulate``'s agents: its workers, or itself when it
    runs them in-process (one process)."""
    return {f"sim{i}": child for i, child in enumerate(children(pid))} or {"sim": pid}
