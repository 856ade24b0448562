"""A simulated fleet end to end: the real server process and ``fleetplane simulate`` processes.

20 sim sites onboard through the zero-touch path (auto-accept token, CSR, mTLS) and report
Online with nodes and usage; a VirtualSite + ResourceReservation reaches every member
(``status.manifest.state == Applied`` at the manifest's generation) and no other site; a site
relabelled out loses the section; a matching site that joins later gets it on first connect;
the simulator killed (SIGKILL, like a power cut) and restarted keeps every identity (no new
registration) and converges to a change made while it was down. And ``kill -USR1`` on the
simulator, while the server is frozen, lists every silent agent with the call it waits in;
a server frozen for longer than ``--offline-after`` marks no site Offline for it.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
SITES = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fleet")
    srv = ServerProcess(root / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


class Simulator:
    def __init__(self, server: ServerProcess, data_dir: Path, token_file: Path, *args: str) -> None:
        self.server, self.data_dir, self.args = server, data_dir, list(args)
        self.token_file = token_file
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Simulator:
        cmd = [
            sys.executable, "-m", "fleetplane", "simulate", "--server", self.server.url,
            "--ca-file", self.server.ca_file, "--token-file", str(self.token_file),
            "--data-dir", str(self.data_dir), "--heartbeat", "1", *self.args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.server.env(), start_new_session=True
            )
        return self

    def kill9(self) -> None:
        """SIGKILL the simulator and its worker processes at once (a power cut)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def silent(self, timeout: float = 5.0) -> str:
        """Ask the simulator which agents are silent and where they wait (SIGUSR1; its
        workers answer each for its own sites); what it printed, for a failure message."""
        if self.proc is None or self.proc.poll() is not None:
            return "<simulator not running>"
        start = self.log.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        deadline, workers = time.monotonic() + timeout, self._workers()
        text = ""
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            if text.count("agents silent for over") >= workers:
                break
            time.sleep(0.1)
        return text[-6000:]

    def _workers(self) -> int:
        if "--processes" in self.args:
            return max(1, int(self.args[self.args.index("--processes") + 1]))
        return 1


def new_token(server: ServerProcess, name: str, labels: dict[str, str]) -> str:
    """An auto-accept registration token whose sites get ``labels``."""
    with server.client() as c:
        token: str = c.create(
            "registrationtokens",
            {
                "apiVersion": "fleetplane.io/v1",
                "kind": "RegistrationToken",
                "metadata": {"name": name},
                "spec": {"autoAccept": True, "labels": labels},
            },
        )["status"]["token"]
    return token


class Pending(str):
    """Not there yet (and why): a check's answer that keeps ``wait_for`` waiting."""


def wait_for(what: str, check: Callable[[], Any], timeout: float, *logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last and not isinstance(last, Pending):
            return last
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}\n" + "\n".join(f() for f in logs))


def sites(server: ServerProcess, selector: str = "") -> dict[str, dict[str, Any]]:
    with server.client() as c:
        return {s["metadata"]["name"]: s for s in c.list_all("sites", selector=selector)}


def manifests(server: ServerProcess) -> dict[str, dict[str, Any]]:
    with server.client() as c:
        return {m["metadata"]["name"]: m for m in c.list_all("sitemanifests")}


def site_calls(server: ServerProcess) -> dict[tuple[str, str], float]:
    """Answered site calls by (method, route), from the server's request metrics."""
    text = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.admin_key}"}, verify=server.tls
    ).text
    out: dict[tuple[str, str], float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name == "fleetplane_http_request_duration_seconds_count" and route.startswith(
                "/site-api"
            ):
                out[(sample.labels["method"], route)] += sample.value
    return dict(out)


def applied_everywhere(server: ServerProcess, names: set[str], *, reserved: bool) -> bool | Pending:
    """Every site in ``names`` reports Applied at its manifest's current generation, and its
    manifest has (or has not) the reservations section."""
    found, mans = sites(server), manifests(server)
    for name in names:
        man = mans.get(name)
        if man is None:
            return Pending(f"{name}: no manifest")
        if ("reservations" in man["spec"]["sections"]) != reserved:
            return Pending(f"{name}: manifest sections {sorted(man['spec']['sections'])}")
        rep = (found[name].get("status") or {}).get("manifest") or {}
        if rep.get("generation") != man["metadata"]["generation"] or rep.get("state") != "Applied":
            return Pending(f"{name}: reports {rep}, manifest generation {man['metadata']['generation']}")
        if rep.get("hash") != man["spec"]["hash"]:
            return Pending(f"{name}: hash {rep.get('hash')} != {man['spec']['hash']}")
    return True


def test_simulated_fleet(server: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(new_token(server, "sim-fleet", {"fleet": "sim"}) + "\n")
    sim = Simulator(
        server, tmp_path / "sim", token_file, "--sites", str(SITES), "--seed", "3", "--processes", "2"
    )
    late = Simulator(server, tmp_path / "late", token_file, "--sites", "1", "--prefix", "late", "--seed", "9")
    logs = (sim.output, server.log_tail)
    try:
        sim.start()

        # 1. All 20 sites onboard and report Online with nodes, usage, allocatable.
        def online() -> bool | Pending:
            found = sites(server, "fleet=sim")
            good = [
                s
                for s in found.values()
                if (s.get("status") or {}).get("phase") == "Online"
                and s["status"].get("nodes")
                and s["status"].get("usage")
                and s["status"].get("allocatable")
            ]
            return len(good) == SITES or Pending(f"{len(good)} of {SITES} online")

        wait_for("20 sites Online with nodes and usage", online, 90, *logs)
        fleet = sites(server, "fleet=sim")
        for s in fleet.values():
            labels = s["metadata"]["labels"]
            assert {"region", "country", "city", "model-year", "function", "environment"} <= set(labels)
            assert 2015 <= int(labels["model-year"]) <= 2024
            assert labels["environment"] in ("dev", "test", "prod")
            assert s["spec"]["coordinates"]["latitude"] and s["spec"]["coordinates"]["longitude"]
            st = s["status"]
            assert st["nodeCount"] == len(st["nodes"]) >= 1
            assert st["facts"]["hostname"] == s["metadata"]["name"]
        assert len({s["metadata"]["labels"]["region"] for s in fleet.values()}) >= 3

        # 2. A VirtualSite over the biggest region + a ResourceReservation: every member applies it.
        region, _ = collections.Counter(
            s["metadata"]["labels"]["region"] for s in fleet.values()
        ).most_common(1)[0]
        members = {n for n, s in fleet.items() if s["metadata"]["labels"]["region"] == region}
        others = set(fleet) - members
        with server.client() as c:
            c.create(
                "virtualsites",
                {
                    "kind": "VirtualSite",
                    "metadata": {"name": "big-region"},
                    "spec": {"selector": f"region={region}"},
                },
                "default",
            )
            c.create(
                "resourcereservations",
                {
                    "kind": "ResourceReservation",
                    "metadata": {"name": "base"},
                    "spec": {"virtualSites": ["big-region"], "cpu": "250m", "memory": "512Mi"},
                },
                "default",
            )
        wait_for("members Applied", lambda: applied_everywhere(server, members, reserved=True), 60, *logs)
        wait_for(
            "non-members without it", lambda: applied_everywhere(server, others, reserved=False), 30, *logs
        )
        for name in members:
            st = sites(server)[name]["status"]
            capacity = sum(n["cpuMillis"] for n in st["nodes"])
            assert st["allocatable"]["cpuMillis"] <= capacity - 250
        man_files = list((tmp_path / "sim" / "sites").glob("*/manifest.json"))
        assert len(man_files) == SITES
        # Each report went out with the long-poll after it, as one call (PUT /site-api/v1/sync).
        calls = site_calls(server)
        assert calls.get(("PUT", "/site-api/v1/sync"), 0) >= SITES + len(members), calls
        assert calls.get(("PUT", "/site-api/v1/site/status"), 0) == 0, calls

        # 3. Relabel one member out: its manifest loses the section, it reports the new generation.
        out = sorted(members)[0]
        before = manifests(server)[out]["metadata"]["generation"]
        with server.client() as c:
            c.patch("sites", out, {"metadata": {"labels": {"region": "elsewhere"}}})
        wait_for(
            "relabelled site converges", lambda: applied_everywhere(server, {out}, reserved=False), 30, *logs
        )
        assert manifests(server)[out]["metadata"]["generation"] > before
        members.discard(out)

        # 4. A site with matching labels that joins later gets the reservation on first connect.
        world = fleet[sorted(members)[0]]["metadata"]["labels"]["region"]
        late.args += ["--regions", world]
        late.start()
        late_name = wait_for(
            "the late site",
            lambda: next(iter(sites(server, "fleet=sim,city").keys() - fleet.keys()), None),
            60,
        )
        assert sites(server)[late_name]["metadata"]["labels"]["region"] == region
        wait_for(
            "late site Applied",
            lambda: applied_everywhere(server, {late_name}, reserved=True),
            30,
            late.output,
            server.log_tail,
        )

        # 5. Power cut: kill the simulator, change the reservation, restart it on the same data.
        with server.client() as c:
            registrations = len(c.list_all("registrations"))
        serials = {n: s["status"]["identity"]["serial"] for n, s in sites(server, "fleet=sim").items()}
        sim.kill9()
        with server.client() as c:
            rr = c.get("resourcereservations", "base", "default")
            rr["spec"]["cpu"] = "300m"
            c.replace("resourcereservations", rr, "default")
        wait_for(
            "the new reservation compiled",
            lambda: all(
                manifests(server)[n]["spec"]["sections"]["reservations"]["cpuMillis"] == 300 for n in members
            ),
            30,
            server.log_tail,
        )
        sim.start()
        wait_for(
            "members converge after restart",
            lambda: applied_everywhere(server, members, reserved=True),
            60,
            *logs,
        )
        with server.client() as c:
            assert len(c.list_all("registrations")) == registrations  # nobody registered again
        after = {n: s["status"]["identity"]["serial"] for n, s in sites(server, "fleet=sim").items()}
        assert after == serials
        assert len(sites(server, "fleet=sim")) == SITES + 1
        assert "Traceback" not in sim.output()
    finally:
        sim.stop()
        late.stop()


def test_the_simulator_says_which_agents_are_silent_and_where_they_wait(
    server: ServerProcess, tmp_path: Path
) -> None:
    """``kill -USR1`` on ``fleetplane simulate`` (two workers) while the server is frozen:
    every site is listed as silent, with the call it waits in; the simulator goes on."""
    token_file = tmp_path / "token"
    token_file.write_text(new_token(server, "silent", {"fleet": "silent"}) + "\n")
    sim = Simulator(
        server,
        tmp_path / "sim",
        token_file,
        "--sites",
        "4",
        "--prefix",
        "quiet",
        "--seed",
        "4",
        "--processes",
        "2",
    )
    try:
        sim.start()

        def online() -> bool | Pending:
            found = sites(server, "fleet=silent")
            up = [n for n, s in found.items() if (s.get("status") or {}).get("phase") == "Online"]
            return len(up) == 4 or Pending(f"{len(up)} of 4 online")

        wait_for("4 sites Online", online, 60, sim.output, server.log_tail)

        def reporting() -> bool | Pending:  # each worker runs 2 sites; none silent
            now = sim.silent()
            return now.count("0 of 2 agents silent") == 2 or Pending(now)

        wait_for("the agents to report", reporting, 30, sim.output, server.log_tail)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)  # the server takes calls and answers none
        try:
            time.sleep(3.5)  # heartbeat 1 s: silent after 2 s
            dump = sim.silent()
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert dump.count("2 of 2 agents silent for over 2 s") == 2, dump
        for name in sites(server, "fleet=silent"):
            assert f"{name}: silent " in dump, dump
        waits = [line for line in dump.splitlines() if line.startswith("  waiting in ")]
        assert len(waits) == 4, dump
        for line in waits:  # in the agent's round, inside its one call to the server
            assert "fleetplane/agent/core.py" in line and "fleetplane/client/site.py" in line, line
        assert sim.proc is not None and sim.proc.poll() is None, sim.output()  # SIGUSR1 kills nothing
        wait_for("the agents report again", reporting, 30, sim.output, server.log_tail)
    finally:
        sim.stop()


def test_a_frozen_server_marks_no_site_offline_for_the_time_it_was_frozen(tmp_path: Path) -> None:
    """``--offline-after 2`` and the server frozen (SIGSTOP) for 6 s: the sites' silence was
    the server's doing, not theirs. After SIGCONT they report again and none is ever marked
    Offline; the server logs how long it did not watch."""
    server = ServerProcess(tmp_path / "server", extra_args=["--offline-after", "2"]).start()
    token_file = tmp_path / "token"
    token_file.write_text(new_token(server, "frozen", {"fleet": "frozen"}) + "\n")
    sim = Simulator(server, tmp_path / "sim", token_file, "--sites", "3", "--prefix", "frozen")
    try:
        sim.start()

        def phases() -> dict[str, str]:
            found = sites(server, "fleet=frozen")
            return {n: str((s.get("status") or {}).get("phase")) for n, s in found.items()}

        def online() -> bool | Pending:
            now = phases()
            return list(now.values()).count("Online") == 3 or Pending(repr(now))

        wait_for("3 sites Online", online, 60, sim.output, server.log_tail)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(6.0)  # three offline windows
        finally:
            server.proc.send_signal(signal.SIGCONT)
        resumed, offline = time.monotonic(), set()
        while time.monotonic() - resumed < 6.0:
            offline |= {n for n, phase in phases().items() if phase == "Offline"}
            time.sleep(0.2)
        assert not offline, server.log_tail()
        assert "liveness: the control plane did not watch sites for" in server.log_tail()
    finally:
        sim.stop()
        server.stop()
