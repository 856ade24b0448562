"""vK8s fan-out end to end: the real server, ``fleetplane simulate`` (3 sites, ``fast``) and
real kubectl. A 3-replica Deployment on a virtual site of 3 sites lists 9 pods (the reference
example), ``get deploy`` shows 9/9, ``rollout status`` and ``wait --for=condition=Available``
finish, the flavor's limits are on the pods the sites report, a Secret reaches the sites opened
while their stored manifests keep it sealed, a Deployment annotated ``ves.io/virtual-sites`` runs
on exactly the union of the two virtual sites it names (asserted site by site), an Override
moves one site to another image, and
``kubectl logs`` answers that it is not supported."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetplane.agent.drivers.simmodel.profile import MI
from fleetplane.agent.drivers.simmodel.workloads import default_image_size
from tests.integration.test_fleet_e2e import Pending, Simulator, manifests, sites, wait_for
from tests.server.vk8s.conftest import VK8sEnv, apply_native
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
V = "fleetplane.io/v1"
NS, VK = "shop", "vk"
SITES = 3


def small_image(repo: str, after: int = 0) -> str:
    """An image the sim pulls in a few seconds (its size is drawn from the name)."""
    return next(
        f"{repo}:1.{i}" for i in range(after, 10_000) if default_image_size(f"{repo}:1.{i}") < 150 * MI
    )


IMAGE = small_image("nginx")
CANARY = small_image("nginx", int(IMAGE.rsplit(".", 1)[1]) + 1)
BUMP = small_image("nginx", int(CANARY.rsplit(".", 1)[1]) + 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("vk8s-fleet") / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


def deployment(flavor: str = "medium") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "annotations": {"ves.io/workload-flavor": flavor, "ves.io/overrides": "canary"},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "web", "image": IMAGE, "envFrom": [{"secretRef": {"name": "web-creds"}}]}
                    ]
                },
            },
        },
    }


def pods_by_site(server: ServerProcess) -> dict[str, list[dict[str, Any]]]:
    return {n: (s.get("status") or {}).get("pods") or [] for n, s in sites(server, "fleet=vk8s").items()}


def test_a_deployment_fans_out_to_every_site(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {
                "apiVersion": V,
                "kind": "RegistrationToken",
                "metadata": {"name": "vk8s-fleet"},
                "spec": {"autoAccept": True, "labels": {"fleet": "vk8s"}},
            },
        )["status"]["token"]
    vs = {"name": "all", "namespace": NS}
    apply_native(
        server,
        [
            {"apiVersion": V, "kind": "VirtualSite", "metadata": vs, "spec": {"selector": "fleet=vk8s"}},
            {
                "apiVersion": V,
                "kind": "VK8s",
                "metadata": {"name": VK, "namespace": NS},
                "spec": {"virtualSite": "all"},
            },
        ],
    )
    kubeconfig = tmp_path / "kubeconfig"
    done = server.cli("kubeconfig", f"{NS}/{VK}", "-o", str(kubeconfig))
    assert done.returncode == 0, done.stderr
    kube = VK8sEnv(
        server,
        kubeconfig,
        tmp_path / "cache",
        yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"],
    )
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    sim = Simulator(
        server, tmp_path / "sim", token_file, "--sites", str(SITES), "--seed", "11", "--profile", "fast"
    )
    logs = (sim.output, server.log_tail)
    try:
        sim.start()
        wait_for(
            "3 sites", lambda: len(sites(server, "fleet=vk8s")) == SITES or Pending("onboarding"), 60, *logs
        )
        names = sorted(sites(server, "fleet=vk8s"))

        kube.ok("create", "secret", "generic", "web-creds", "--from-literal=password=s3cr3t-value")
        kube.ok("apply", "-f", "-", stdin=json.dumps(deployment()))

        def nine_running() -> Any:
            listed = json.loads(kube.ok("get", "pods", "-o", "json"))["items"]
            running = [p for p in listed if p["status"]["phase"] == "Running"]
            ready = all(c.get("ready") for p in running for c in p["status"]["containerStatuses"])
            return (len(running) == 9 and ready and listed) or Pending(
                f"{len(running)}/{len(listed)} running"
            )

        wait_for("9 pods running", nine_running, 120, *logs)
        table = kube.ok("get", "pods", "-o", "wide")
        rows = table.strip().splitlines()[1:]
        assert len(rows) == 9, table
        assert all(row.split()[4].endswith("s") for row in rows), table  # AGE from the sites' reports
        nodes = {row.split()[6] for row in rows}
        assert all(any(n.startswith(f"{s}-node-") for s in names) for n in nodes), table
        one = sorted(nodes)[0]
        selected = kube.ok("get", "pods", "--field-selector", f"spec.nodeName={one}", "-o", "name")
        assert 1 <= len(selected.split()) <= 3
        by_label = kube.ok("get", "pods", "-l", f"ves.io/site={names[0]}", "-o", "name")
        assert len(by_label.split()) == 3

        wait_for("9/9", lambda: " 9/9 " in kube.ok("get", "deploy", "web") or Pending("not ready"), 30, *logs)
        kube.ok("rollout", "status", "deployment/web", "--timeout=30s")
        kube.ok("wait", "--for=condition=Available", "deployment/web", "--timeout=30s")
        status = json.loads(kube.ok("get", "deploy", "web", "-o", "json"))["status"]
        assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (9, 9, 9)
        assert status["fleet"]["sites"] == 3 and status["observedGeneration"] == 1

        # The flavor, on the pod specs the sites report.
        medium = {
            "limits": {"cpu": "250m", "memory": "250Mi"},
            "requests": {"cpu": "125m", "memory": "125Mi"},
        }
        for site, pods in pods_by_site(server).items():
            assert len(pods) == 3, site
            for pod in pods:
                assert pod["namespace"].endswith(f"-{NS}") and pod["workload"] == f"{NS}/Deployment/web"
                assert pod["containers"] == [{"name": "web", "image": IMAGE, "resources": medium}]

        # The Secret: sealed in the stored manifests, opened in what each site took.
        for man in manifests(server).values():
            objs = man["spec"]["sections"]["workloads"]["objects"]
            secret = next(o for o in objs if o["kind"] == "Secret")
            assert base64.b64encode(b"s3cr3t-value").decode() not in json.dumps(secret)
        taken = [json.loads(p.read_text()) for p in (tmp_path / "sim").rglob("manifest.json")]
        assert len(taken) == SITES
        for man in taken:
            objs = man["spec"]["sections"]["workloads"]["objects"]
            secret = next(o for o in objs if o["kind"] == "Secret")
            assert base64.b64decode(secret["data"]["password"]) == b"s3cr3t-value"

        # The virtual-sites annotation: the union of a namespace's and a shared virtual site.
        city = {n: s["metadata"]["labels"]["city"] for n, s in sites(server, "fleet=vk8s").items()}
        apply_native(
            server,
            [
                {"apiVersion": V, "kind": "VirtualSite", "metadata": {"name": "one", "namespace": NS},
                 "spec": {"selector": f"city={city[names[0]]}"}},
                {"apiVersion": V, "kind": "VirtualSite", "metadata": {"name": "two", "namespace": "shared"},
                 "spec": {"selector": f"city={city[names[2]]}"}},
            ],
        )  # fmt: skip
        api = deployment()
        api["metadata"] = {"name": "api", "annotations": {"ves.io/virtual-sites": f"{NS}/one,shared/two"}}
        api["spec"]["replicas"] = 2
        api["spec"]["selector"] = {"matchLabels": {"app": "api"}}
        api["spec"]["template"]["metadata"]["labels"] = {"app": "api"}
        kube.ok("apply", "-f", "-", stdin=json.dumps(api))
        tiny = {"limits": {"cpu": "100m", "memory": "100Mi"}, "requests": {"cpu": "50m", "memory": "50Mi"}}

        def api_placed() -> Any:
            found = {
                site: sorted(
                    p["containers"][0]["resources"] == tiny for p in pods if p["workload"].endswith("/api")
                )
                for site, pods in pods_by_site(server).items()
            }
            want = {names[0]: [True, True], names[1]: [], names[2]: [True, True]}
            return found == want or Pending(str(found))

        wait_for("api on the annotated virtual sites only", api_placed, 60, *logs)
        wait_for("4/4", lambda: " 4/4 " in kube.ok("get", "deploy", "api") or Pending("not ready"), 30, *logs)

        # An Override moves one site to another image.
        canary_spec = deployment()["spec"]
        canary_spec["template"]["spec"]["containers"][0]["image"] = CANARY
        override = {
            "apiVersion": "ves.io/v1",
            "kind": "Override",
            "metadata": {"name": "canary"},
            "spec": {"sites": [names[1]], "spec": canary_spec},
        }
        kube.ok("apply", "--validate=false", "-f", "-", stdin=json.dumps(override))

        def canary_running() -> Any:
            images = {
                site: {
                    (p["containers"][0]["image"], p["phase"]) for p in pods if p["workload"].endswith("/web")
                }
                for site, pods in pods_by_site(server).items()
            }
            want = {s: {(CANARY if s == names[1] else IMAGE, "Running")} for s in names}
            return images == want or Pending(str(images))

        wait_for("the canary site to run the other image", canary_running, 120, *logs)
        wide = kube.ok("get", "pods", "-o", "wide", "-l", f"ves.io/site={names[1]},app=web")
        assert len(wide.strip().splitlines()) == 4

        # Logs: the pod exists, its logs are not served.
        pod = json.loads(kube.ok("get", "pods", "-o", "json"))["items"][0]["metadata"]["name"]
        logs_done = kube.kubectl("logs", pod)
        assert logs_done.returncode != 0
        assert "not supported by vK8s" in logs_done.stderr, logs_done.stderr

        # A change watched from its middle: the stored status and pods move, so `rollout status`
        # started after the change finishes once every site runs it, and `get pods -w` sees it.
        base = ["kubectl", "--kubeconfig", str(kube.kubeconfig), "--cache-dir", str(kube.cache)]
        watcher = subprocess.Popen(
            [*base, "get", "pods", "-w", "--output-watch-events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            kube.ok("set", "image", "deployment/web", f"web={BUMP}")
            rolled = kube.kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=130)
            assert rolled.returncode == 0, rolled.stderr
            assert 'deployment "web" successfully rolled out' in rolled.stdout
            for site, pods in pods_by_site(server).items():  # finished only once every site has it
                web = {
                    (p["containers"][0]["image"], p["phase"]) for p in pods if p["workload"].endswith("/web")
                }
                assert web == {(CANARY if site == names[1] else BUMP, "Running")}, (site, web)
        finally:
            watcher.terminate()
            seen = watcher.communicate(timeout=10)[0]
        events = [line.split() for line in seen.splitlines() if line.strip()]
        # The new pods come and the old go. (A pull shorter than the agent's settle window is
        # reported once, finished: the new pods may arrive Running, with no MODIFIED between.)
        assert {"ADDED", "DELETED"} <= {e[0] for e in events}, seen
        gone = {e[1] for e in events if e[0] == "DELETED"}
        assert gone and all(name.startswith("web-") for name in gone), seen
        assert {e[1] for e in events if e[0] == "ADDED" and e[1].startswith("web-")} - gone, seen

        # The workload view: an image the registry lacks and a memory limit below the use fail
        # every site, each with its reason; `kubectl get pods` shows the waiting reason too.
        for name, image, usage in (("pull", "nginx:missing", None), ("oom", IMAGE, "300Mi")):
            broken = deployment("tiny")
            broken["metadata"] = {"name": name, "annotations": {"ves.io/workload-flavor": "tiny"}}
            broken["spec"]["replicas"] = 1
            broken["spec"]["selector"] = {"matchLabels": {"app": name}}
            template = broken["spec"]["template"]
            template["metadata"] = {"labels": {"app": name}}
            if usage:
                template["metadata"]["annotations"] = {"sim.fleetplane.io/memory-usage": usage}
            template["spec"]["containers"][0]["image"] = image
            kube.ok("apply", "-f", "-", stdin=json.dumps(broken))

        def view() -> Any:
            done = server.cli("workloads", NS, "-o", "json")
            assert done.returncode == 0, done.stderr
            by = {w["name"]: w for w in json.loads(done.stdout)}
            ok = (
                by["pull"]["podStates"]["ImagePullBackOff"] == SITES
                and by["oom"]["podStates"]["OOMKilled"] == SITES
                and by["web"]["siteStates"]["deployed"] == SITES
            )
            return (
                by
                if ok
                else Pending(json.dumps({k: (w["siteStates"], w["podStates"]) for k, w in by.items()}))
            )

        by = wait_for("the workload view to show the failures", view, 90, *logs)
        assert by["pull"]["siteStates"] == {"deployed": 0, "inProgress": 0, "failed": SITES}
        assert sorted(f["site"] for f in by["oom"]["failing"]) == names
        assert all(f["reason"].startswith("OOMKilled") for f in by["oom"]["failing"])
        assert all("manifest unknown" in f["reason"] for f in by["pull"]["failing"])
        shown = server.cli("workloads", NS)
        assert shown.returncode == 0, shown.stderr
        assert (
            "deployment/pull" in shown.stdout and "ImagePullBackOff: Back-off pulling image" in shown.stdout
        )
        assert "deployment/oom" in shown.stdout and names[0] in shown.stdout
        pulled = kube.ok("get", "pods", "-l", "app=pull")
        assert pulled.count("ImagePullBackOff") == SITES, pulled
    finally:
        sim.stop()
