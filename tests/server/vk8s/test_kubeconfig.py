"""The VK8s object and ``fleetplane kubeconfig``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from tests.server.vk8s.conftest import NAMESPACE, VK8S, VK8sEnv, uniq


def test_kubeconfig_names_the_prefix_the_ca_and_a_namespace_limited_key(env: VK8sEnv) -> None:
    config = yaml.safe_load(env.kubeconfig.read_text())
    assert oct(env.kubeconfig.stat().st_mode & 0o777) == "0o600"
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"] == f"{env.server.url}/api/vK8s/namespaces/{NAMESPACE}/{VK8S}"
    ca = base64.b64decode(cluster["cluster"]["certificate-authority-data"])
    assert ca == Path(env.server.ca_file).read_bytes()
    (context,) = config["contexts"]
    assert context["context"]["namespace"] == NAMESPACE and config["current-context"] == context["name"]
    token = config["users"][0]["user"]["token"]
    key_name = token.split("_")[2]
    keys = json.loads(env.server.cli("get", "accesskeys", key_name, "-o", "json").stdout)
    assert keys["spec"]["role"] == "editor" and keys["spec"]["namespaces"] == [NAMESPACE]
    assert "keyHash" not in json.dumps(keys)  # stored as a hash, never shown
    version = json.loads(env.ok("version", "-o", "json"))
    assert version["serverVersion"]["major"] == "1" and version["serverVersion"]["minor"] == "32"


def test_kubeconfig_for_a_missing_vk8s_fails(env: VK8sEnv) -> None:
    done = env.server.cli("kubeconfig", f"{NAMESPACE}/nope")
    assert done.returncode != 0 and "NotFound" in done.stderr
    done = env.server.cli("kubeconfig", "no-slash")
    assert done.returncode != 0 and "NAMESPACE/VK8S" in done.stderr


def test_a_vk8s_needs_an_existing_virtual_site(env: VK8sEnv) -> None:
    obj = {
        "apiVersion": "fleetplane.io/v1",
        "kind": "VK8s",
        "metadata": {"name": "vk", "namespace": uniq("ns")},
        "spec": {"virtualSite": "missing"},
    }
    done = env.server.cli("apply", "-f", "-", stdin=json.dumps(obj))
    assert done.returncode != 0 and "spec.virtualSite" in done.stderr and "not found" in done.stderr
    # A path for a VK8s that does not exist is a 404, whatever follows it.
    with env.http() as http:
        resp = http.get(f"{env.server.url}/api/vK8s/namespaces/{NAMESPACE}/other/api/v1")
        assert resp.status_code == 404 and resp.json()["reason"] == "NotFound"
