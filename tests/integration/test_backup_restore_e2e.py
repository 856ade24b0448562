"""Disaster recovery end to end: a server with a small sim fleet is backed up (CLI → API),
stopped, restored into a fresh data directory, and a new server started there on the same
address; the running agents reconnect with their existing certificates, the objects, the
sealed secrets and the artifacts are intact, and a new change still reaches every site.
Wrong passphrases, tampered archives and non-empty targets are refused in one line.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from fleetplane.client.artifacts import upload_artifact
from tests.integration.test_fleet_e2e import Pending, Simulator, applied_everywhere, sites, wait_for
from tests.support.artifacts import pattern
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow
SITES = 4
PASSPHRASE = "a long and secret passphrase"


def reserve(server: ServerProcess, cpu: str) -> None:
    rr: dict[str, Any] = {
        "kind": "ResourceReservation",
        "metadata": {"name": "base"},
        "spec": {"virtualSites": ["all"], "cpu": cpu, "memory": "256Mi"},
    }
    with server.client() as c:
        current = c.list("resourcereservations", "default")["items"]
        if current:
            rr["metadata"]["resourceVersion"] = current[0]["metadata"]["resourceVersion"]
            c.replace("resourcereservations", rr, "default")
        else:
            c.create("resourcereservations", rr, "default")


def seen(site: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(site["status"]["lastSeen"]).replace("Z", "+00:00")).timestamp()


def test_a_restored_control_plane_takes_the_fleet_back(tmp_path: Path) -> None:
    port = free_port()
    old = ServerProcess(tmp_path / "old", port=port).start()
    sim: Simulator | None = None
    new: ServerProcess | None = None
    try:
        with old.client() as c:
            token = c.create(
                "registrationtokens",
                {"metadata": {"name": "dr"}, "spec": {"autoAccept": True, "labels": {"fleet": "dr"}}},
            )["status"]["token"]
            c.create(
                "virtualsites", {"metadata": {"name": "all"}, "spec": {"selector": "fleet=dr"}}, "default"
            )
            secret = base64.b64encode(b"s3cr3t-value").decode()
            c.create(
                "secrets", {"metadata": {"name": "db"}, "spec": {"data": {"password": secret}}}, "default"
            )
            data = pattern(3 << 20, seed=11)
            upload_artifact(c, "infra", "os-1", iter([data]), type="os-image", version="1.0.0")
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        sim = Simulator(old, tmp_path / "sim", token_file, "--sites", str(SITES), "--seed", "5").start()
        logs = (sim.output, old.log_tail)
        reserve(old, "250m")

        def fleet_applied(server: ServerProcess) -> bool | Pending:
            names = set(sites(server, "fleet=dr"))
            if len(names) != SITES:
                return Pending(f"{len(names)} of {SITES} sites")
            return applied_everywhere(server, names, reserved=True)

        wait_for("the fleet applies the reservation", lambda: fleet_applied(old), 90, *logs)
        before = sites(old, "fleet=dr")
        serials = {n: s["status"]["identity"]["serial"] for n, s in before.items()}
        with old.client() as c:
            registrations = len(c.list_all("registrations"))

        # Back up through the CLI (the API streams the encrypted archive).
        pass_file = tmp_path / "pass"
        pass_file.write_text(PASSPHRASE + "\n")
        archive = tmp_path / "fleet.fpbak"
        r = old.cli(
            "admin", "backup", "--out", str(archive), "--passphrase-file", str(pass_file), "--with-artifacts"
        )
        assert r.returncode == 0, r.stderr
        assert archive.stat().st_size > len(data) and b"s3cr3t" not in archive.read_bytes()
        old.stop()

        # Refusals: one line each, and nothing is left behind.
        wrong = tmp_path / "wrong"
        wrong.write_text("not the passphrase\n")
        target = tmp_path / "new"
        r = old.cli(
            "admin",
            "restore",
            "--in",
            str(archive),
            "--data-dir",
            str(target),
            "--passphrase-file",
            str(wrong),
        )
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "wrong passphrase" in r.stderr
        tampered = tmp_path / "tampered.fpbak"
        raw = bytearray(archive.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        tampered.write_bytes(bytes(raw))
        r = old.cli(
            "admin",
            "restore",
            "--in",
            str(tampered),
            "--data-dir",
            str(target),
            "--passphrase-file",
            str(pass_file),
        )
        assert r.returncode == 1 and "tampered" in r.stderr and r.stderr.strip().count("\n") == 0
        r = old.cli(
            "admin",
            "restore",
            "--in",
            str(archive),
            "--data-dir",
            str(old.data_dir),
            "--passphrase-file",
            str(pass_file),
        )
        assert r.returncode == 1 and "not empty" in r.stderr
        assert not target.exists() and not list(tmp_path.glob(".new.restoring-*"))

        r = old.cli(
            "admin",
            "restore",
            "--in",
            str(archive),
            "--data-dir",
            str(target),
            "--passphrase-file",
            str(pass_file),
        )
        assert r.returncode == 0, r.stderr
        assert "restored" in r.stdout and "1 artifact blobs" in r.stdout
        restored_at = time.time()

        # A new server on the restored directory, same address: the agents come back by themselves.
        new = ServerProcess(target, port=port).start()
        assert Path(new.ca_file).read_bytes() == (old.data_dir / "tls" / "serving-ca.crt").read_bytes()

        def reconnected() -> bool | Pending:
            found = sites(new, "fleet=dr")
            fresh = [
                n
                for n, s in found.items()
                if (s.get("status") or {}).get("phase") == "Online" and seen(s) >= restored_at - 1
            ]
            return len(fresh) == SITES or Pending(f"{len(fresh)} of {SITES} reported to the new server")

        wait_for("the agents reconnect", reconnected, 90, sim.output, new.log_tail)
        after = sites(new, "fleet=dr")
        assert {n: s["status"]["identity"]["serial"] for n, s in after.items()} == serials
        with new.client() as c:  # the old admin key works: it came back with the store
            assert len(c.list_all("registrations")) == registrations  # nobody registered again
            assert c.get("secrets", "db", "default")["spec"]["data"]["password"] == secret
            art = c.get("artifacts", "os-1", "infra")
            got = c.http.get("/apis/fleetplane.io/v1/namespaces/infra/artifacts/os-1/content").content
        assert art["status"]["sha256"] == hashlib.sha256(data).hexdigest() and got == data

        # A change made on the restored control plane reaches every site.
        reserve(new, "300m")

        def new_reservation() -> bool | Pending:
            done = fleet_applied(new)
            if done is not True:
                return done
            with new.client() as c:
                cpu = {
                    m["spec"]["sections"]["reservations"]["cpuMillis"] for m in c.list_all("sitemanifests")
                }
            return cpu == {300} or Pending(f"cpuMillis {cpu}")

        wait_for("the new change is applied everywhere", new_reservation, 60, sim.output, new.log_tail)
        assert "Traceback" not in sim.output()
    finally:
        if sim is not None:
            sim.stop()
        old.stop()
        if new is not None:
            new.stop()
