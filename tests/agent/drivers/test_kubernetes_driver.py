"""The kubernetes driver, as far as this machine allows: there is no cluster here.

The pure parts (apply/delete requests, the managed-object diff, node mapping) are
checked with the official client's own model classes; the HTTP calls go through the
official client, configured from a real kubeconfig file, to ``RecordingKubeApiForTests``,
a small HTTP server in this file that records what the client sends and answers with
canned JSON. It checks *our use of the client* (method, path, query, content type,
body, auth header); it is not a Kubernetes API server and proves nothing about one."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes.client import (
    V1Container,
    V1Node,
    V1NodeCondition,
    V1NodeStatus,
    V1NodeSystemInfo,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
    V1ResourceRequirements,
)

from fleetplane.agent.drivers.base import Driver
from fleetplane.agent.drivers.kubernetes import (
    KubernetesDriver,
    ObjectRef,
    managed_diff,
    node_info,
    plural,
    pod_requests,
    render_apply,
    render_delete,
)

NS = "site-a"
DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}},
}
CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}}


def node_json(
    name: str, role: str | None, cpu: str, mem: str, acpu: str, amem: str, ready: str = "True"
) -> Any:
    labels = {f"node-role.kubernetes.io/{role}": ""} if role else {}
    info = {
        "osImage": "Ubuntu 24.04 LTS",
        "architecture": "amd64",
        "bootID": "b",
        "containerRuntimeVersion": "containerd://2.0",
        "kernelVersion": "6.8",
        "kubeProxyVersion": "v1.33",
        "kubeletVersion": "v1.33",
        "machineID": "m",
        "operatingSystem": "linux",
        "systemUUID": "u",
    }
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": {"cpu": cpu, "memory": mem, "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": acpu, "memory": amem},
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": info,
        },
    }


class RecordingKubeApiForTests:
    """Records every request (method, path, query, content type, auth, JSON body) and
    answers from ``lists`` (GET of a collection path) or by echoing the body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lists: dict[str, list[Any]] = {}
        self.fail: dict[tuple[str, str], int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                owner.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qsl(url.query),
                        "content_type": self.headers.get("Content-Type"),
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status = owner.fail.get((self.command, url.path), 200)
                if status != 200:
                    answer: Any = {
                        "kind": "Status",
                        "status": "Failure",
                        "message": "denied by test",
                        "code": status,
                    }
                elif self.command == "GET":
                    answer = {
                        "kind": "List",
                        "apiVersion": "v1",
                        "metadata": {},
                        "items": owner.lists.get(url.path, []),
                    }
                elif self.command == "PATCH":
                    answer = json.loads(raw)
                else:
                    answer = {"kind": "Status", "apiVersion": "v1", "status": "Success"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "rec", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "t0k3n"}}],
                    "contexts": [{"name": "rec", "context": {"cluster": "rec", "user": "u"}}],
                    "current-context": "rec",
                }
            )
        )
        return path


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[RecordingKubeApiForTests, KubernetesDriver]]:
    api = RecordingKubeApiForTests()
    api.thread.start()
    try:
        driver = KubernetesDriver(
            NS, kubeconfig=str(api.kubeconfig(tmp_path / "kubeconfig")), now=lambda: 7.0
        )
        yield api, driver
    finally:
        api.server.shutdown()
        api.server.server_close()


# --- pure parts ----------------------------------------------------------------------


def test_plural() -> None:
    assert [plural(k) for k in ("Deployment", "Ingress", "NetworkPolicy", "Service", "Endpoints")] == [
        "deployments",
        "ingresses",
        "networkpolicies",
        "services",
        "endpoints",
    ]
    assert plural("Policy") == "policies" and plural("Gateway") == "gateways"


def test_render_apply_targets_the_site_namespace_and_labels_the_object() -> None:
    req = render_apply(DEPLOY, NS)
    assert (req.method, req.path, req.content_type) == (
        "PATCH",
        "/apis/apps/v1/namespaces/site-a/deployments/web",
        "application/apply-patch+yaml",
    )
    assert req.query == (("fieldManager", "fleetplane"), ("force", "true"))
    assert req.body is not None
    assert req.body["metadata"] == {
        "name": "web",
        "namespace": NS,
        "labels": {"app": "web", "fleetplane.io/managed": "true"},
    }
    assert "namespace" not in DEPLOY["metadata"]  # the input is not changed
    assert render_apply(CONFIG, NS).path == "/api/v1/namespaces/site-a/configmaps/cfg"
    with pytest.raises(ValueError, match="not the site's"):
        render_apply({**CONFIG, "metadata": {"name": "x", "namespace": "other"}}, NS)
    with pytest.raises(ValueError, match=r"metadata\.name"):
        render_apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, NS)


def test_render_delete_and_diff() -> None:
    web, cfg, old = (
        ObjectRef("apps/v1", "Deployment", "web"),
        ObjectRef("v1", "ConfigMap", "cfg"),
        ObjectRef("apps/v1", "Deployment", "old"),
    )
    assert managed_diff([web, cfg], [web, old, cfg]) == [old]
    assert managed_diff([], [web, old]) == [old, web]
    req = render_delete(old, NS)
    assert (req.method, req.path) == ("DELETE", "/apis/apps/v1/namespaces/site-a/deployments/old")
    assert req.body == {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


def test_node_mapping_with_client_models() -> None:
    node = V1Node(
        metadata=V1ObjectMeta(name="cp-0", labels={"node-role.kubernetes.io/control-plane": ""}),
        status=V1NodeStatus(
            capacity={"cpu": "4", "memory": "8Gi", "ephemeral-storage": "100Gi"},
            allocatable={"cpu": "3500m", "memory": "7Gi"},
            conditions=[V1NodeCondition(type="Ready", status="True")],
            node_info=V1NodeSystemInfo(
                os_image="Ubuntu 24.04 LTS",
                architecture="amd64",
                boot_id="b",
                container_runtime_version="containerd://2.0",
                kernel_version="6.8",
                kube_proxy_version="v1.33",
                kubelet_version="v1.33",
                machine_id="m",
                operating_system="linux",
                system_uuid="u",
            ),
        ),
    )
    info, alloc, image = node_info(node)
    assert info.to_status() == {
        "name": "cp-0",
        "role": "controller",
        "cpuMillis": 4000,
        "memoryBytes": 8 * 2**30,
        "diskBytes": 100 * 2**30,
        "ready": True,
    }
    assert (alloc.cpu_millis, alloc.memory_bytes, image) == (3500, 7 * 2**30, "Ubuntu 24.04 LTS")
    bare, _, none = node_info(V1Node(metadata=V1ObjectMeta(name="w", labels={})))
    assert (bare.role, bare.ready, bare.cpu_millis, none) == ("worker", False, 0, None)


def test_pod_requests_with_client_models() -> None:
    def pod(phase: str) -> V1Pod:
        containers = [
            V1Container(
                name="a", resources=V1ResourceRequirements(requests={"cpu": "250m", "memory": "64Mi"})
            ),
            V1Container(name="b", resources=V1ResourceRequirements(requests={"cpu": "1"})),
            V1Container(name="c"),
        ]
        return V1Pod(spec=V1PodSpec(containers=containers), status=V1PodStatus(phase=phase))

    assert pod_requests(pod("Running")) == (1250, 64 * 2**20)
    assert pod_requests(pod("Succeeded")) == (0, 0)


# --- what the official client sends ------------------------------------------------


def test_apply_sends_server_side_apply_and_deletes_what_left(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    assert isinstance(driver, Driver)
    api.lists["/apis/apps/v1/namespaces/site-a/deployments"] = [
        {"metadata": {"name": "web"}},
        {"metadata": {"name": "gone"}},
    ]
    items = asyncio.run(driver.apply({"spec": {"sections": {"workloads": [DEPLOY, CONFIG]}}}))
    assert [i.to_status() for i in items] == [
        {"section": "workloads", "name": "Deployment/web", "state": "Applied"},
        {"section": "workloads", "name": "ConfigMap/cfg", "state": "Applied"},
    ]
    assert all(r["authorization"] == "Bearer t0k3n" for r in api.requests)
    patch = api.requests[0]
    assert patch["method"] == "PATCH"
    assert patch["path"] == "/apis/apps/v1/namespaces/site-a/deployments/web"
    assert patch["query"] == [("fieldManager", "fleetplane"), ("force", "true")]
    assert patch["content_type"] == "application/apply-patch+yaml"
    assert patch["body"] == render_apply(DEPLOY, NS).body
    assert api.requests[1]["path"] == "/api/v1/namespaces/site-a/configmaps/cfg"
    lists = [r for r in api.requests if r["method"] == "GET"]
    assert {r["path"] for r in lists} >= {
        "/apis/apps/v1/namespaces/site-a/deployments",
        "/api/v1/namespaces/site-a/configmaps",
        "/apis/networking.k8s.io/v1/namespaces/site-a/networkpolicies",
    }
    assert all(r["query"] == [("labelSelector", "fleetplane.io/managed=true")] for r in lists)
    [delete] = [r for r in api.requests if r["method"] == "DELETE"]
    assert delete["path"] == "/apis/apps/v1/namespaces/site-a/deployments/gone"
    assert delete["content_type"] == "application/json"
    assert delete["body"] == {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


def test_an_absent_section_deletes_every_managed_object(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    api.lists["/api/v1/namespaces/site-a/configmaps"] = [{"metadata": {"name": "cfg"}}]
    assert driver.apply_sync({"spec": {"sections": {}}}) == []
    assert [(r["method"], r["path"]) for r in api.requests if r["method"] != "GET"] == [
        ("DELETE", "/api/v1/namespaces/site-a/configmaps/cfg")
    ]


def test_a_refused_apply_fails_its_item_and_keeps_the_object(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    api.fail[("PATCH", "/apis/apps/v1/namespaces/site-a/deployments/web")] = 403
    api.lists["/apis/apps/v1/namespaces/site-a/deployments"] = [{"metadata": {"name": "web"}}]
    items = driver.apply_sync({"spec": {"sections": {"workloads": [DEPLOY, {"kind": "x"}], "os": {}}}})
    assert [i.to_status() for i in items] == [
        {
            "section": "workloads",
            "name": "Deployment/web",
            "state": "Failed",
            "reason": "HTTP 403: denied by test",
        },
        {
            "section": "workloads",
            "name": "#1",
            "state": "Failed",
            "reason": "a workload needs a non-empty apiVersion",
        },
        {
            "section": "os",
            "name": "os",
            "state": "Failed",
            "reason": "the kubernetes driver does not support section 'os'",
        },
    ]
    assert not [r for r in api.requests if r["method"] == "DELETE"]


def test_reservations_are_checked_against_the_kubelet_not_applied(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    api.lists["/api/v1/nodes"] = [
        node_json("cp-0", "control-plane", "4", "8Gi", "3500m", "7Gi"),
        node_json("w-0", None, "8", "16Gi", "7500m", "15Gi"),
    ]
    ok = driver.apply_sync(
        {"spec": {"sections": {"reservations": {"cpuMillis": 1000, "memoryBytes": 2**30}}}}
    )
    assert ok[0].state == "Applied" and "not set by fleetplane" in (ok[0].reason or "")
    [short] = driver.apply_sync({"spec": {"sections": {"reservations": {"cpuMillis": 1001}}}})[:1]
    assert short.state == "Failed" and "cannot change" in (short.reason or "")
    assert not [r for r in api.requests if r["method"] not in ("GET", "DELETE")]


def test_observe_reads_nodes_and_pod_requests(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    api.lists["/api/v1/nodes"] = [
        node_json("cp-0", "control-plane", "4", "8Gi", "3500m", "7Gi"),
        node_json("w-0", None, "8", "16Gi", "7500m", "15Gi", ready="False"),
    ]
    api.lists["/api/v1/pods"] = [
        {
            "metadata": {"name": "p", "namespace": NS},
            "spec": {
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "1200m", "memory": "1Gi"}}}]
            },
            "status": {"phase": "Running"},
        }
    ]
    obs = asyncio.run(driver.observe())
    status = obs.to_status()
    assert [(n["name"], n["role"], n["cpuMillis"], n["ready"]) for n in status["nodes"]] == [
        ("cp-0", "controller", 4000, True),
        ("w-0", "worker", 8000, False),
    ]
    assert status["allocatable"] == {"cpuMillis": 11000, "memoryBytes": 22 * 2**30}
    assert status["usage"] == {
        "cpuMillis": 1200,
        "memoryBytes": 2**30,
        "diskBytes": 0,
        "cpuPercent": 10.0,
        "memoryPercent": round(100 / 24, 2),
    }
    assert status["osVersion"] == "Ubuntu 24.04 LTS" and status["policyHits"] == {} and obs.now == 7.0
    assert [(r["method"], r["path"]) for r in api.requests] == [
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/pods"),
    ]


def test_the_fanout_form_applies_each_object_into_its_site_namespace(
    kube: tuple[RecordingKubeApiForTests, KubernetesDriver],
) -> None:
    api, driver = kube
    web = {**DEPLOY, "metadata": {**DEPLOY["metadata"], "namespace": "acme-shop"}}
    section = {"namespaces": ["acme-shop"], "objects": [web]}
    items = driver.apply_sync({"spec": {"sections": {"workloads": section}}})
    assert [i.to_status() for i in items] == [
        {"section": "workloads", "name": "acme-shop/Deployment/web", "state": "Applied"}
    ]
    writes = [(r["method"], r["path"]) for r in api.requests if r["method"] != "GET"]
    policy = "/apis/networking.k8s.io/v1/namespaces/acme-shop/networkpolicies/fleetplane-namespace-isolation"
    assert writes == [
        ("PATCH", "/api/v1/namespaces/acme-shop"),
        ("PATCH", policy),
        ("PATCH", "/apis/apps/v1/namespaces/acme-shop/deployments/web"),
    ]
    assert api.requests[0]["body"]["metadata"]["labels"] == {"fleetplane.io/managed": "true"}
    # The namespace's isolated network: its pods admit ingress from the same namespace only.
    isolation = api.requests[1]
    assert isolation["content_type"] == "application/apply-patch+yaml"
    assert isolation["body"]["kind"] == "NetworkPolicy"
    assert isolation["body"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {}}]}],
    }
    # The section goes: the namespace's managed objects are deleted (the namespace and its
    # isolation stay).
    api.requests.clear()
    api.lists["/apis/apps/v1/namespaces/acme-shop/deployments"] = [{"metadata": {"name": "web"}}]
    api.lists["/apis/networking.k8s.io/v1/namespaces/acme-shop/networkpolicies"] = [
        {"metadata": {"name": "fleetplane-namespace-isolation"}}
    ]
    assert driver.apply_sync({"spec": {"sections": {}}}) == []
    writes = [(r["method"], r["path"]) for r in api.requests if r["method"] != "GET"]
    assert writes == [("DELETE", "/apis/apps/v1/namespaces/acme-shop/deployments/web")]
