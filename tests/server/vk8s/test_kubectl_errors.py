"""Error paths through real kubectl: what it prints for each Status reason it relies on —
NotFound, AlreadyExists, Conflict (a stale ``replace``; concurrent patches that the server
retries until they all land), Invalid with field causes, Expired (410 on a watch from, and a
list continued from, a compacted revision) — in upstream's wording where kubectl formats it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server.vk8s.conftest import NAMESPACE, VK8S, VK8sEnv, apply_native, uniq
from tests.support.server import ServerProcess


def configmap(name: str, **data: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})


def failed(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    return done.stderr.strip()


def test_not_found(env: VK8sEnv) -> None:
    assert failed(env.kubectl("get", "deployment", "nope")) == (
        'Error from server (NotFound): deployments.apps "nope" not found'
    )
    assert failed(env.kubectl("delete", "configmap", "nope")) == (
        'Error from server (NotFound): configmaps "nope" not found'
    )
    # kubectl logs words it itself (and the e2e test reads the "not supported" of an existing pod).
    assert failed(env.kubectl("logs", "nope")) == (
        'error: error from server (NotFound): pods "nope" not found in namespace "shop"'
    )


def test_already_exists(env: VK8sEnv) -> None:
    name = uniq("cm")
    env.ok("create", "-f", "-", stdin=configmap(name, a="1"))
    assert failed(env.kubectl("create", "-f", "-", stdin=configmap(name, a="1"))) == (
        f'Error from server (AlreadyExists): error when creating "STDIN": configmaps "{name}" already exists'
    )


def test_conflict_on_a_stale_replace_and_patches_retried_until_they_land(env: VK8sEnv) -> None:
    name = uniq("cm")
    env.ok("create", "-f", "-", stdin=configmap(name, a="1"))
    stale = json.loads(env.ok("get", "configmap", name, "-o", "json"))
    env.ok("patch", "configmap", name, "--type=merge", "-p", '{"data":{"a":"2"}}')
    stale["data"] = {"a": "3"}
    assert failed(env.kubectl("replace", "-f", "-", stdin=json.dumps(stale))) == (
        f'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on '
        f'configmaps "{name}": the object has been modified; please apply your changes to the latest '
        "version and try again"
    )

    # Patches without a resourceVersion racing on one object: the server retries its
    # read-modify-write on a conflict, so every one of them lands.
    def label(i: int) -> subprocess.CompletedProcess[str]:
        return env.kubectl(
            "patch", "configmap", name, "--type=merge", "-p", json.dumps({"data": {f"k{i}": "v"}})
        )

    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(label, range(6)))
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    data = json.loads(env.ok("get", "configmap", name, "-o", "json"))["data"]
    assert data == {"a": "2", **{f"k{i}": "v" for i in range(6)}}


def test_invalid_with_field_causes(env: VK8sEnv) -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "negative"},
        "spec": {
            "replicas": -1,
            "selector": {"matchLabels": {"app": "n"}},
            "template": {
                "metadata": {"labels": {"app": "n"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }
    assert failed(env.kubectl("apply", "-f", "-", stdin=json.dumps(bad))) == (
        'The Deployment "negative" is invalid: spec.replicas: Invalid value: -1: '
        "must be greater than or equal to 0"
    )
    assert failed(env.kubectl("scale", "deployment", "nope", "--replicas=-2")).startswith("error:")


@pytest.fixture(scope="module")
def compacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    args = ["--history", "5", "--compact-interval", "0.2", "--no-controllers"]
    proc = ServerProcess(tmp_path_factory.mktemp("vk8s-expired") / "data", extra_args=args).start()
    apply_native(
        proc,
        [
            {
                "apiVersion": "fleetplane.io/v1",
                "kind": "VirtualSite",
                "metadata": {"name": "all", "namespace": NAMESPACE},
                "spec": {"selector": "region"},
            },
            {
                "apiVersion": "fleetplane.io/v1",
                "kind": "VK8s",
                "metadata": {"name": VK8S, "namespace": NAMESPACE},
                "spec": {"virtualSite": "all"},
            },
        ],
    )
    kubeconfig = tmp_path_factory.mktemp("expired-kube") / "config"
    done = proc.cli("kubeconfig", f"{NAMESPACE}/{VK8S}", "-o", str(kubeconfig))
    assert done.returncode == 0, done.stderr
    yield proc, kubeconfig
    proc.stop()


def test_expired_watch_and_continue(compacting: tuple[ServerProcess, Path]) -> None:
    server, kubeconfig = compacting
    kube = VK8sEnv(server, kubeconfig, kubeconfig.parent / "cache", "")
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    for i in range(4):
        kube.ok("create", "configmap", f"c{i}")
    prefix = f"/api/vK8s/namespaces/{NAMESPACE}/{VK8S}"
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    base = f"{server.url}{prefix}"
    with httpx.Client(base_url=base, verify=server.tls, headers={"Authorization": f"Bearer {token}"}) as http:
        first = http.get(path, params={"limit": "2"}).json()
    for i in range(12):
        kube.ok("create", "configmap", f"d{i}")
    time.sleep(1)  # compaction runs every 0.2 s and keeps 5 revisions
    # --raw takes the path from the server's root, prefix included.
    continued = kube.kubectl(
        "get", "--raw", f"{prefix}{path}?limit=2&continue={first['metadata']['continue']}"
    )
    assert failed(continued) == (
        "Error from server (Expired): The provided continue parameter is too old to display a consistent "
        "list result."
    )
    # A watch from a compacted revision: one ERROR event carrying the 410 Status, then the end.
    watched = kube.kubectl("get", "--raw", f"{prefix}{path}?watch=true&resourceVersion=1", timeout=30)
    event = json.loads(watched.stdout.splitlines()[0])
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert event["object"]["message"].startswith("too old resource version: 1")
