"""A real server with one vK8s (namespace ``shop``, named ``vk``), a kubeconfig written by
``fleetplane kubeconfig``, and real kubectl / the official kubernetes client pointed at it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.server import ServerProcess

NAMESPACE = "shop"
VK8S = "vk"


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class VK8sEnv:
    server: ServerProcess
    kubeconfig: Path
    cache: Path
    token: str

    @property
    def base(self) -> str:
        return f"{self.server.url}/api/vK8s/namespaces/{NAMESPACE}/{VK8S}"

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.kubectl(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr}\n{done.stdout}"
        return done.stdout

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        return httpx.Client(base_url=self.base, verify=self.server.tls, headers=headers, timeout=30)


@pytest.fixture(scope="package")
def vk8s_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is required for the vK8s tests")
    proc = ServerProcess(tmp_path_factory.mktemp("vk8s") / "data").start()
    yield proc
    proc.stop()


def apply_native(server: ServerProcess, docs: list[dict[str, Any]]) -> None:
    done = server.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="package")
def env(vk8s_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> VK8sEnv:
    apply_native(
        vk8s_server,
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
    where = tmp_path_factory.mktemp("kube")
    kubeconfig = where / "config"
    done = vk8s_server.cli("kubeconfig", f"{NAMESPACE}/{VK8S}", "-o", str(kubeconfig))
    assert done.returncode == 0, done.stderr
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    return VK8sEnv(vk8s_server, kubeconfig, where / "cache", token)
