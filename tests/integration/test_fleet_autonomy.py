"""Site autonomy with real processes (issue 4, "done means").

1. The server SIGKILLed and kept down for 60 s under a fleet of 50 simulated sites: the
   simulator keeps running, every site keeps its persisted manifest (it keeps enforcing its
   last config); after a restart on the same data every site reports Online again at the same
   generation and hash, liveness leaves none Offline, and a change reaches all 50 (their
   long-polls are back).
2. A single ``fleetplane agent --driver sim`` SIGKILLed right after it persisted a new manifest,
   before it reported it Applied: restarted on the same data dir it converges to the latest
   generation with the same identity (same certificate serial, no new registration).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_fleet_e2e import (
    Pending,
    Simulator,
    applied_everywhere,
    manifests,
    new_token,
    sites,
    wait_for,
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
FLEET = 50
OUTAGE_SECONDS = 60
OFFLINE_AFTER = 5


def reserve(server: ServerProcess, selector: str, cpu: str) -> None:
    """A VirtualSite over ``selector`` and a ResourceReservation of ``cpu`` on it (or, when
    they exist, the reservation changed to ``cpu``)."""
    with server.client() as c:
        if not any(r["metadata"]["name"] == "base" for r in c.list_all("resourcereservations")):
            c.create(
                "virtualsites",
                {"kind": "VirtualSite", "metadata": {"name": "all"}, "spec": {"selector": selector}},
                "default",
            )
            c.create(
                "resourcereservations",
                {
                    "kind": "ResourceReservation",
                    "metadata": {"name": "base"},
                    "spec": {"virtualSites": ["all"], "cpu": cpu, "memory": "256Mi"},
                },
                "default",
            )
            return
        rr = c.get("resourcereservations", "base", "default")
        rr["spec"]["cpu"] = cpu
        c.replace("resourcereservations", rr, "default")


def reported(server: ServerProcess, selector: str) -> dict[str, tuple[Any, Any, Any]]:
    """Each site's reported (generation, hash, state) of its manifest."""
    out = {}
    for name, s in sites(server, selector).items():
        rep = (s.get("status") or {}).get("manifest") or {}
        out[name] = (rep.get("generation"), rep.get("hash"), rep.get("state"))
    return out


def seen_since(site: dict[str, Any], since: float) -> bool:
    last = (site.get("status") or {}).get("lastSeen") or ""
    if not last:
        return False
    return dt.datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() >= int(since)


def test_fleet_survives_a_60s_server_outage(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", extra_args=["--offline-after", str(OFFLINE_AFTER)]).start()
    token_file = tmp_path / "token"
    token_file.write_text(new_token(server, "fleet", {"fleet": "outage"}) + "\n")
    sim = Simulator(server, tmp_path / "sim", token_file, "--sites", str(FLEET), "--seed", "11")
    logs: tuple[Callable[[], str], ...] = (sim.output, sim.silent, server.log_tail)
    try:
        sim.start()
        wait_for(
            f"{FLEET} sites onboarded",
            lambda: (
                len(sites(server, "fleet=outage")) == FLEET
                or Pending(f"{len(sites(server, 'fleet=outage'))} of {FLEET}")
            ),
            120,
            *logs,
        )
        names = set(sites(server, "fleet=outage"))
        reserve(server, "fleet=outage", "200m")
        wait_for("every site Applied", lambda: applied_everywhere(server, names, reserved=True), 90, *logs)
        before = reported(server, "fleet=outage")
        assert {state for _, _, state in before.values()} == {"Applied"}
        serials = {n: s["status"]["identity"]["serial"] for n, s in sites(server, "fleet=outage").items()}
        files = sorted((tmp_path / "sim" / "sites").glob("*/manifest.json"))
        assert len(files) == FLEET
        persisted = {f: f.read_bytes() for f in files}
        by_name = {json.loads(b)["metadata"]["name"]: json.loads(b) for b in persisted.values()}
        assert set(by_name) == names
        for name, doc in by_name.items():
            assert (doc["metadata"]["generation"], doc["spec"]["hash"]) == before[name][:2]
            assert doc["spec"]["sections"]["reservations"]["cpuMillis"] == 200

        # The outage: SIGKILL the server and keep it down for 60 s (the one real sleep).
        server.kill9()
        down_until = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < down_until:
            assert sim.proc is not None and sim.proc.poll() is None, "the simulator died\n" + sim.output()
            for f, data in persisted.items():
                assert f.read_bytes() == data, f"{f} changed while the server was down"
            time.sleep(min(2.0, max(0.0, down_until - time.monotonic())))
        assert sim.proc is not None and sim.proc.poll() is None, sim.output()
        for f, data in persisted.items():
            doc = json.loads(f.read_bytes())
            assert f.read_bytes() == data
            assert doc["spec"]["sections"]["reservations"]["cpuMillis"] == 200

        restarted = time.time()
        server.start()

        def back_online() -> bool | Pending:
            found = sites(server, "fleet=outage")
            late = sorted(
                n
                for n, s in found.items()
                if (s.get("status") or {}).get("phase") != "Online" or not seen_since(s, restarted)
            )
            return not late or Pending(f"{len(late)} not Online since the restart, e.g. {late[:3]}")

        wait_for("every site Online after the restart", back_online, 90, *logs)
        assert reported(server, "fleet=outage") == before  # same generation, hash, Applied
        assert applied_everywhere(server, names, reserved=True) is True

        # Re-attached long-polls: a change reaches all 50.
        gens = {n: m["metadata"]["generation"] for n, m in manifests(server).items() if n in names}
        reserve(server, "fleet=outage", "300m")

        def converged() -> bool | Pending:
            mans = manifests(server)
            stale = [n for n in names if mans[n]["spec"]["sections"]["reservations"]["cpuMillis"] != 300]
            if stale:
                return Pending(f"{len(stale)} manifests not recompiled")
            return applied_everywhere(server, names, reserved=True)

        wait_for("all sites converge to the change", converged, 60, *logs)
        mans = manifests(server)
        assert all(mans[n]["metadata"]["generation"] > gens[n] for n in names)
        for f in files:
            assert json.loads(f.read_bytes())["spec"]["sections"]["reservations"]["cpuMillis"] == 300

        # Liveness leaves none Offline, well past --offline-after since the restart.
        assert time.time() - restarted > OFFLINE_AFTER
        found = sites(server, "fleet=outage")
        assert {s["status"]["phase"] for s in found.values()} == {"Online"}
        assert {n: s["status"]["identity"]["serial"] for n, s in found.items()} == serials
        assert "Traceback" not in sim.output()
    finally:
        sim.stop()
        server.stop()


class AgentProcess:
    """``fleetplane agent --driver sim`` in its own process with its own data dir."""

    def __init__(self, server: ServerProcess, data_dir: Path, token_file: Path, name: str) -> None:
        self.server, self.data_dir, self.token_file, self.name = server, data_dir, token_file, name
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        cmd = [
            sys.executable, "-m", "fleetplane", "agent", "--server", self.server.url,
            "--ca-file", self.server.ca_file, "--token-file", str(self.token_file),
            "--data-dir", str(self.data_dir), "--name", self.name, "--heartbeat", "1",
            "--driver", "sim",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.server.env())
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def persisted_generation(data_dir: Path) -> int:
    try:
        return int(json.loads((data_dir / "manifest.json").read_bytes())["metadata"]["generation"])
    except (OSError, ValueError, KeyError):
        return 0


def test_agent_killed_mid_apply_converges_after_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    token_file = tmp_path / "token"
    token_file.write_text(new_token(server, "one", {"fleet": "solo"}) + "\n")
    data_dir = tmp_path / "agent"
    agent = AgentProcess(server, data_dir, token_file, "solo-1")
    logs = (agent.output, server.log_tail)
    try:
        agent.start()
        wait_for("the agent onboarded", lambda: sites(server, "fleet=solo").get("solo-1"), 60, *logs)
        reserve(server, "fleet=solo", "100m")
        wait_for("Applied", lambda: applied_everywhere(server, {"solo-1"}, reserved=True), 60, *logs)
        site = sites(server)["solo-1"]
        serial = site["status"]["identity"]["serial"]
        with server.client() as c:
            registrations = len(c.list_all("registrations"))

        # Change the reservation and SIGKILL the agent as soon as it has persisted the new
        # manifest (written before the driver applies it), before it reports it. The apply
        # takes ~50 ms in the sim driver; retry the race a few times if it is lost.
        hit = False
        for attempt, cpu in enumerate(("150m", "175m", "190m", "195m")):
            old = persisted_generation(data_dir)
            reserve(server, "fleet=solo", cpu)
            deadline = time.monotonic() + 30
            while persisted_generation(data_dir) <= old:
                assert time.monotonic() < deadline, "the agent never took the new manifest\n" + agent.output()
                assert agent.proc is not None and agent.proc.poll() is None, agent.output()
                time.sleep(0.001)
            agent.kill9()
            new = persisted_generation(data_dir)
            rep = (sites(server)["solo-1"].get("status") or {}).get("manifest") or {}
            hit = not (rep.get("generation") == new and rep.get("state") == "Applied")
            if hit:
                break
            agent.start()  # lost the race (it reported first): again
            wait_for(
                f"Applied (attempt {attempt})",
                lambda: applied_everywhere(server, {"solo-1"}, reserved=True),
                30,
                *logs,
            )
        assert hit, "never killed the agent between persisting and reporting a manifest"
        want = manifests(server)["solo-1"]
        assert want["metadata"]["generation"] == new
        assert want["spec"]["sections"]["reservations"]["cpuMillis"] == int(cpu.rstrip("m"))

        agent.start()
        wait_for(
            "converged after restart",
            lambda: applied_everywhere(server, {"solo-1"}, reserved=True),
            30,
            *logs,
        )
        site = sites(server)["solo-1"]
        assert site["status"]["manifest"]["generation"] == new
        assert site["status"]["phase"] == "Online"
        assert site["status"]["identity"]["serial"] == serial
        with server.client() as c:
            assert len(c.list_all("registrations")) == registrations
        assert "enforcing persisted manifest generation" in agent.output()
        assert "Traceback" not in agent.output()
    finally:
        agent.stop()
        server.stop()
