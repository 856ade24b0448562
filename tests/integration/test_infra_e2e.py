"""Infrastructure end to end: the real server process and ``fleetplane simulate`` processes
with the sim bare-metal model sped up (``FLEETPLANE_SIM_TIME_SCALE``).

1. A site with a 10-node inventory is installed from scratch (artifacts uploaded through the
   API, downloaded by the site by hash); one node's OS install fails (injected): the pipeline
   stops at phase ``os`` with the reason, an alarm is raised, ``fleetplane infra retry``
   resumes from there and the site finishes; the alarm is cleared and kept as history. A node
   is added, locked, unlocked and removed through the inventory and ``fleetplane nodes``.
2. A patch (new binary package) goes out to 100 sites through a rolling strategy.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetplane.agent.onboard import SavedIdentity
from fleetplane.client.artifacts import upload_artifact
from fleetplane.core.errors import ApiError
from tests.integration.test_fleet_e2e import Pending, Simulator, sites, wait_for
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
V = "fleetplane.io/v1"
NS = "ops"
SCALE = "600"  # 10 simulated minutes per real second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("infra") / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetplane", *args],
        capture_output=True,
        text=True,
        env={**server.env(), "COLUMNS": "250"},
        timeout=60,
        check=False,
    )


def upload(server: ServerProcess, name: str, kind: str, version: str) -> None:
    with server.client() as c:
        data = f"{name} {version} ".encode() * 1000
        art = upload_artifact(c, NS, name, iter([data]), type=kind, version=version, size=len(data))
        assert art["status"]["phase"] == "Ready", art


def setup_fleet(server: ServerProcess, tmp_path: Path, label: str) -> Path:
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {
                "apiVersion": V,
                "kind": "RegistrationToken",
                "metadata": {"name": f"tok-{label}"},
                "spec": {"autoAccept": True, "labels": {"fleet": label}},
            },
        )["status"]["token"]
        c.create(
            "virtualsites",
            {
                "apiVersion": V,
                "kind": "VirtualSite",
                "metadata": {"name": label},
                "spec": {"selector": f"fleet={label}"},
            },
            NS,
        )
    token_file = tmp_path / f"token-{label}"
    token_file.write_text(token + "\n")
    return token_file


def inventory(site: str, count: int, **extra: Any) -> dict[str, Any]:
    nodes = [
        {"name": f"node-{i:02d}", "role": "controller" if i == 1 else "worker"} for i in range(1, count + 1)
    ]
    return {
        "apiVersion": V,
        "kind": "SiteInventory",
        "metadata": {"name": site},
        "spec": {"site": site, "nodes": nodes, **extra},
    }


def pipeline(name: str, label: str, packages: list[str], **extra: Any) -> dict[str, Any]:
    spec = {
        "virtualSites": [label],
        "osImage": "fleetos-img",
        "packages": packages,
        "containerPackages": ["edge-apps"],
    }
    return {"apiVersion": V, "kind": "InfraPipeline", "metadata": {"name": name}, "spec": spec | extra}


def infra_of(server: ServerProcess, site: str) -> dict[str, Any]:
    with server.client() as c:
        found: dict[str, Any] = (c.get("sites", site).get("status") or {}).get("infra") or {}
        return found


def node_states(server: ServerProcess, site: str) -> dict[str, str]:
    with server.client() as c:
        nodes = c.list_all("nodes", selector=f"fleetplane.io/site={site}")
    return {n["spec"]["node"]: n["status"]["state"] for n in nodes}


def alarms(server: ServerProcess, site: str) -> list[dict[str, Any]]:
    with server.client() as c:
        return c.list_all("alarms", selector=f"fleetplane.io/site={site}")


def refused(call: Any, code: int) -> ApiError:
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.code == code, err.value
    return err.value


def check_authz(server: ServerProcess, site_dir: Path, site: str) -> None:
    """Nodes and alarms are the controller's: no API key writes them; a site writes only its
    own status and its own kubeconfig; a viewer key cannot change an inventory."""
    node = {
        "apiVersion": V,
        "kind": "Node",
        "metadata": {"name": f"{site}.node-77"},
        "spec": {"site": site, "node": "node-77"},
    }
    alarm = {
        "apiVersion": V,
        "kind": "Alarm",
        "metadata": {"name": "x.y"},
        "spec": {"site": site, "id": "y", "severity": "minor", "message": "m"},
    }
    with server.client() as c:
        err = refused(lambda: c.create("nodes", node), 403)
        assert "managed by the server" in err.message
        refused(lambda: c.create("alarms", alarm), 403)
        refused(lambda: c.patch("nodes", f"{site}.node-01", {"spec": {"locked": True}}), 403)
        key = {
            "apiVersion": V,
            "kind": "AccessKey",
            "metadata": {"name": "infra-viewer"},
            "spec": {"role": "viewer"},
        }
        token = c.create("accesskeys", key)["status"]["accessKey"]
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=server.tls, headers=auth, timeout=30) as viewer:
        path = f"/apis/{V}/siteinventories/{site}"
        assert viewer.get(path).status_code == 200
        resp = viewer.patch(
            path, json={"spec": {"retry": 9}}, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status_code == 403 and resp.json()["reason"] == "Forbidden", resp.text
    ident = SavedIdentity.load(site_dir)
    assert ident is not None and ident.site == site
    with ident.client() as sc:
        # The site API takes the certificate's site: there is no way to name another site.
        assert sc.request("GET", "/site-api/v1/site")["metadata"]["name"] == site
        err = refused(
            lambda: sc.request(
                "PUT", "/site-api/v1/site/kubeconfig", body={"namespace": "default", "kubeconfig": "x"}
            ),
            403,
        )
        assert "runs no InfraPipeline" in err.message
        bad = refused(lambda: sc.request("PUT", "/site-api/v1/site/kubeconfig", body={"namespace": NS}), 400)
        assert bad.causes[0].field == "kubeconfig"
        # A site certificate is no operator credential.
        http = sc.http
        resp = http.post(f"/apis/{V}/nodes", json=node)
        assert resp.status_code == 401, resp.text


def test_install_retry_and_day2(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETPLANE_SIM_TIME_SCALE", SCALE)
    token_file = setup_fleet(server, tmp_path, "rack")
    for name, kind, version in (
        ("fleetos-img", "os-image", "2.0.1"),
        ("kube-bin", "package", "1.30.2"),
        ("edge-apps", "container-package", "3.1.0"),
    ):
        upload(server, name, kind, version)
    sim = Simulator(
        server, tmp_path / "sim", token_file, "--sites", "1", "--prefix", "rack", "--seed", "4",
        "--fault", "node_failure:phase=os,node=node-03",
    )  # fmt: skip
    logs = (sim.output, server.log_tail)
    try:
        sim.start()
        name = wait_for(
            "the site to onboard", lambda: next(iter(sites(server, "fleet=rack")), None), 60, *logs
        )
        with server.client() as c:
            c.create("siteinventories", inventory(name, 10))
            c.create("infrapipelines", pipeline("base", "rack", ["kube-bin"]), NS)

        def failed_at_os() -> dict[str, Any] | Pending:
            pipe = infra_of(server, name).get("pipeline") or {}
            return pipe if pipe.get("state") == "Failed" else Pending(str(pipe))

        pipe = wait_for("the injected OS failure", failed_at_os, 40, *logs)
        assert (
            pipe["phase"] == "os"
            and "node-03" in pipe["reason"]
            and "injected node failure" in pipe["reason"]
        )
        phases = {p["name"]: p["state"] for p in pipe["phases"]}
        assert (
            phases["upload"] == "Succeeded" and phases["os"] == "Failed" and phases["packages"] == "Pending"
        )
        # Every artifact the pipeline names was downloaded by hash before the OS phase.
        assert len(infra_of(server, name)["artifacts"]) == 3
        wait_for(
            "Node node-03 failed", lambda: node_states(server, name).get("node-03") == "failed", 20, *logs
        )
        raised = wait_for(
            "the node alarm",
            lambda: [a for a in alarms(server, name) if a["spec"]["id"] == "node-failed-node-03"],
            20,
            *logs,
        )
        assert raised[0]["spec"]["severity"] == "major" and raised[0]["status"]["state"] == "Active"

        def inventory_phase() -> str | Pending:
            # The infra controller folds the site's report into the inventory's status a moment
            # after the report itself lands.
            with server.client() as c:
                phase = str((c.get("siteinventories", name).get("status") or {}).get("phase"))
            return phase if phase == "os: Failed" else Pending(phase)

        assert wait_for("the inventory's phase", inventory_phase, 20, *logs) == "os: Failed"

        result = cli(server, "infra", "retry", name)
        assert result.returncode == 0, result.stderr

        def done() -> dict[str, Any] | Pending:
            pipe = infra_of(server, name).get("pipeline") or {}
            return pipe if pipe.get("state") == "Succeeded" else Pending(str(pipe))

        pipe = wait_for("the retried pipeline", done, 40, *logs)
        assert pipe["retry"] == 1
        states = {p["name"]: p["state"] for p in pipe["phases"]}
        assert states == {
            "upload": "Succeeded",
            "os": "Succeeded",
            "packages": "Succeeded",
            "cluster": "Succeeded",
            "containers": "Succeeded",
        }

        def all_ready(count: int) -> dict[str, str] | Pending:
            states = node_states(server, name)
            ready = [n for n, s in states.items() if s == "ready"]
            return states if len(ready) == count else Pending(str(states))

        wait_for("10 ready nodes", lambda: all_ready(10), 20, *logs)
        # The cluster's kubeconfig came over as a Secret of the pipeline's namespace, sealed
        # at rest: readable through the API, nowhere in the server's files.
        with server.client() as c:
            secret = c.get("secrets", f"{name}-kubeconfig", NS)
        kubeconfig = base64.b64decode(secret["spec"]["data"]["kubeconfig"]).decode()
        assert secret["spec"]["type"] == "fleetplane.io/kubeconfig" and "server: https://" in kubeconfig
        token = kubeconfig.split("token: ")[1].strip().encode()
        for path in [p for p in server.data_dir.rglob("*") if p.is_file()] + [server.log_path]:
            assert token not in path.read_bytes(), path
        assert "kubeconfig" not in json.dumps(infra_of(server, name))
        cleared = wait_for(
            "the alarm to clear",
            lambda: [a for a in alarms(server, name) if a["status"]["state"] == "Cleared"],
            20,
            *logs,
        )
        assert cleared[0]["spec"]["id"] == "node-failed-node-03" and cleared[0]["status"]["clearedAt"]
        with server.client() as c:
            inv = c.get("siteinventories", name)
        assert inv["status"]["ready"] == 10 and inv["status"]["missing"] == []
        assert inv["status"]["unexpected"] == ["node-11", "node-12"]  # spare hosts in the rack
        view = cli(server, "nodes", name)
        assert view.returncode == 0, view.stderr
        assert "10 intended, 12 discovered, 10 ready" in view.stdout
        status = cli(server, "infra", "status", "-l", "fleet=rack")
        assert status.returncode == 0, status.stderr
        assert "1 sites with a pipeline: 1 succeeded" in status.stdout
        row = next(ln for ln in status.stdout.splitlines() if ln.startswith(name))
        assert "ops/base" in row and row.count("Succeeded") == 6  # the pipeline and its 5 phases

        # Day 2: add node-11, lock it, unlock it, remove it.
        with server.client() as c:
            inv = c.get("siteinventories", name)
            nodes = inv["spec"]["nodes"] + [{"name": "node-11", "role": "storage", "bmc": "10.9.0.11"}]
            c.patch("siteinventories", name, {"spec": {"nodes": nodes}})
        wait_for("node-11 ready", lambda: all_ready(11), 30, *logs)
        assert cli(server, "nodes", "lock", name, "node-11").returncode == 0
        wait_for("node-11 locked", lambda: node_states(server, name).get("node-11") == "locked", 30, *logs)
        view = cli(server, "nodes", name)
        line = next(ln for ln in view.stdout.splitlines() if ln.startswith("node-11"))
        assert "locked" in line and "yes" in line and "storage" in line
        wait_for(
            "the lock alarm",
            lambda: any(a["spec"]["id"] == "node-locked-node-11" for a in alarms(server, name)),
            20,
            *logs,
        )
        assert cli(server, "nodes", "unlock", name, "node-11").returncode == 0
        wait_for("node-11 back in service", lambda: all_ready(11), 30, *logs)
        with server.client() as c:
            inv = c.get("siteinventories", name)
            kept = [n for n in inv["spec"]["nodes"] if n["name"] != "node-11"]
            c.patch("siteinventories", name, {"spec": {"nodes": kept}})
        wait_for("node-11 released", lambda: node_states(server, name).get("node-11") == "removed", 30, *logs)
        bad = cli(server, "nodes", "lock", name, "node-99")
        assert bad.returncode == 1 and 'node "node-99" is not in the inventory' in bad.stderr
        check_authz(server, tmp_path / "sim" / "sites" / "00000", name)
    finally:
        sim.stop()


def test_patch_100_sites_rolling(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETPLANE_SIM_TIME_SCALE", SCALE)
    monkeypatch.setenv("FLEETPLANE_SIM_RACK_SIZE", "2")
    total = 100
    token_file = setup_fleet(server, tmp_path, "patch")
    for name, kind, version in (
        ("fleetos-img", "os-image", "2.0.1"),
        ("kube-bin", "package", "1.30.2"),
        ("kube-bin-fix", "package", "1.30.3"),
        ("edge-apps", "container-package", "3.1.0"),
    ):
        upload(server, name, kind, version)
    sim = Simulator(
        server, tmp_path / "sim100", token_file, "--sites", str(total), "--prefix", "p", "--seed", "8",
        "--heartbeat", "5",
    )  # fmt: skip
    logs = (sim.output, server.log_tail)
    try:
        sim.start()
        names = wait_for(
            "100 sites online",
            lambda: (
                (s := sites(server, "fleet=patch"))
                and ((len(s) == total and sorted(s)) or Pending(str(len(s))))
            ),
            90,
            *logs,
        )
        with server.client() as c:
            for name in names:
                c.create("siteinventories", inventory(name, 2))
            c.create("infrapipelines", pipeline("fleet", "patch", ["kube-bin"]), NS)

        def counts(want: str) -> dict[str, Any] | Pending:
            with server.client() as c:
                obj = c.get("infrapipelines", "fleet", NS)
            found = (obj.get("status") or {}).get("counts") or {}
            return (
                obj
                if found.get("Succeeded") == total and obj["metadata"]["generation"] == int(want)
                else Pending(str(found))
            )

        wait_for("the base install on 100 sites", lambda: counts("1"), 60, *logs)
        with server.client() as c:
            patch = {
                "spec": {
                    "packages": ["kube-bin", "kube-bin-fix"],
                    "strategy": {"type": "rolling", "batchSize": "25%"},
                }
            }
            c.patch("infrapipelines", "fleet", patch, NS)

        def rolled() -> dict[str, Any] | Pending:
            with server.client() as c:
                ro = [r for r in c.list_all("rollouts", NS) if r["spec"]["intent"]["name"] == "fleet"]
            phase = ((ro[0].get("status") or {}).get("phase")) if ro else None
            return ro[0] if phase == "Completed" else Pending(f"rollout {phase}")

        ro = wait_for("the rolling patch", rolled, 60, *logs)
        assert len(ro["status"]["waves"]) == 4
        found = sites(server, "fleet=patch")
        for name, site in found.items():
            infra = site["status"]["infra"]
            assert infra["pipeline"]["state"] == "Succeeded", name
            # The patch skipped the OS (already on the image) and installed the packages.
            phases = {p["name"]: p["state"] for p in infra["pipeline"]["phases"]}
            assert phases["os"] == "Skipped" and phases["packages"] == "Succeeded", (name, phases)
            assert all(len(n["packages"]) == 2 for n in infra["nodes"] if n["state"] == "ready"), name
    finally:
        sim.stop()
