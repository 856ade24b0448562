"""What vK8s refuses, and how: upstream Status bodies, never a 500."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.vk8s.conftest import NAMESPACE, VK8S, VK8sEnv, apply_native, uniq
from tests.support.server import ServerProcess

DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def status(resp: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert resp.status_code == code, resp.text
    body: dict[str, Any] = resp.json()
    assert body["kind"] == "Status" and body["reason"] == reason and body["code"] == code
    return body


def printed_key(output: str) -> str:
    return output.strip().rsplit(" ", 1)[-1]


def test_invalid_deployment_is_422_with_field_paths(env: VK8sEnv) -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "no-good"},
        "spec": {
            "replicas": -1,
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{}]}},
        },
    }
    with env.http() as http:
        body = status(http.post(DEPLOYMENTS, json=bad), 422, "Invalid")
    fields = {c["field"]: c["reason"] for c in body["details"]["causes"]}
    assert fields == {
        "spec.replicas": "FieldValueInvalid",
        "spec.selector": "FieldValueRequired",
        "spec.template.spec.containers[0].name": "FieldValueRequired",
        "spec.template.spec.containers[0].image": "FieldValueRequired",
    }
    assert body["details"]["kind"] == "Deployment" and body["details"]["group"] == "apps"
    assert body["message"].startswith('Deployment.apps "no-good" is invalid: [')


def test_already_exists_and_stale_update_conflict(env: VK8sEnv) -> None:
    name = uniq("cm")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}}
    with env.http() as http:
        created = http.post(CONFIGMAPS, json=cm).json()
        body = status(http.post(CONFIGMAPS, json=cm), 409, "AlreadyExists")
        assert body["message"] == f'configmaps "{name}" already exists'
        http.put(f"{CONFIGMAPS}/{name}", json={**created, "data": {"a": "2"}}).raise_for_status()
        body = status(http.put(f"{CONFIGMAPS}/{name}", json={**created, "data": {"a": "3"}}), 409, "Conflict")
        assert "the object has been modified" in body["message"]
        status(http.get(f"{CONFIGMAPS}/nope"), 404, "NotFound")


def test_unsupported_resources_are_404_and_verbs_405(env: VK8sEnv) -> None:
    with env.http() as http:
        status(http.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"), 404, "NotFound")
        status(http.get("/apis/networking.k8s.io/v1"), 404, "NotFound")
        status(http.get(f"{DEPLOYMENTS}/x/rollback"), 404, "NotFound")
        status(http.put(DEPLOYMENTS, json={}), 405, "MethodNotAllowed")
        status(http.post(f"{DEPLOYMENTS}/x", json={}), 405, "MethodNotAllowed")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}
        status(http.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod), 405, "MethodNotAllowed")
        status(http.post("/version", json={}), 405, "MethodNotAllowed")
        status(
            http.patch(f"{DEPLOYMENTS}/x", content=b"{}", headers={"Content-Type": "text/plain"}),
            415,
            "UnsupportedMediaType",
        )


def test_authentication_is_required(env: VK8sEnv) -> None:
    with env.http(token="") as http:
        status(http.get(DEPLOYMENTS), 401, "Unauthorized")
        status(http.get("/api"), 401, "Unauthorized")
    with env.http(token="fpk_default_nope_" + "0" * 64) as http:
        status(http.get(DEPLOYMENTS), 401, "Unauthorized")


def test_other_namespace_and_other_tenant(env: VK8sEnv) -> None:
    server = env.server
    other_ns = server.cli(
        "accesskeys", "create", uniq("elsewhere"), "--role", "editor", "--namespaces", "other"
    )
    assert other_ns.returncode == 0, other_ns.stderr
    with env.http(token=printed_key(other_ns.stdout)) as http:
        status(http.get(DEPLOYMENTS), 403, "Forbidden")
    viewer = server.cli("accesskeys", "create", uniq("view"), "--role", "viewer", "--namespaces", NAMESPACE)
    with env.http(token=printed_key(viewer.stdout)) as http:
        http.get(DEPLOYMENTS).raise_for_status()
        status(http.get(f"/api/v1/namespaces/{NAMESPACE}/secrets"), 403, "Forbidden")
        status(http.post(CONFIGMAPS, json={"metadata": {"name": "x"}}), 403, "Forbidden")
    tenant = uniq("acme")
    made = server.cli("tenants", "create", tenant)
    assert made.returncode == 0, made.stderr
    with env.http(token=printed_key(made.stdout)) as http:
        status(http.get(DEPLOYMENTS), 404, "NotFound")  # that tenant has no vK8s shop/vk
    with env.http() as http:  # the vK8s's own key, on another namespace in the path
        status(http.get("/apis/apps/v1/namespaces/other/deployments"), 403, "Forbidden")


def test_one_vk8s_per_namespace(env: VK8sEnv) -> None:
    second = {
        "apiVersion": "fleetplane.io/v1",
        "kind": "VK8s",
        "metadata": {"name": "second", "namespace": NAMESPACE},
        "spec": {"virtualSite": "all"},
    }
    done = env.server.cli("apply", "-f", "-", stdin=json.dumps(second))
    assert done.returncode != 0 and "at most one per namespace" in done.stderr


def watch_lines(http: httpx.Client, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    with http.stream("GET", path, params={"watch": "true", **params}) as resp:
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.iter_lines() if line]


def test_bookmarks_only_when_asked(env: VK8sEnv) -> None:
    with env.http() as http:
        rv = http.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
        plain = watch_lines(http, CONFIGMAPS, {"resourceVersion": rv, "timeoutSeconds": "3"})
        marked = watch_lines(
            http, CONFIGMAPS, {"resourceVersion": rv, "timeoutSeconds": "3", "allowWatchBookmarks": "true"}
        )
    assert all(ev["type"] != "BOOKMARK" for ev in plain)
    bookmarks = [ev for ev in marked if ev["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[0]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) >= int(rv)


@pytest.fixture(scope="module")
def compacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--history", "5", "--compact-interval", "0.2", "--no-controllers"]
    proc = ServerProcess(tmp_path_factory.mktemp("vk8s-compact") / "data", extra_args=args).start()
    yield proc
    proc.stop()


def test_watch_and_continue_from_a_compacted_revision_are_410(compacting: ServerProcess) -> None:
    apply_native(
        compacting,
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
    base = f"{compacting.url}/api/vK8s/namespaces/{NAMESPACE}/{VK8S}"
    headers = {"Authorization": f"Bearer {compacting.admin_key}"}
    with httpx.Client(base_url=base, verify=compacting.tls, headers=headers, timeout=30) as http:
        for i in range(4):
            http.post(CONFIGMAPS, json={"metadata": {"name": f"c{i}"}}).raise_for_status()
        first = http.get(CONFIGMAPS, params={"limit": "2"}).json()
        token = first["metadata"]["continue"]
        for i in range(12):
            http.post(CONFIGMAPS, json={"metadata": {"name": f"d{i}"}}).raise_for_status()
        time.sleep(1)
        events = watch_lines(http, CONFIGMAPS, {"resourceVersion": "1", "timeoutSeconds": "3"})
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
        status(http.get(CONFIGMAPS, params={"limit": "2", "continue": token}), 410, "Expired")


def test_unknown_fields_refused_when_strict_and_dropped_otherwise(env: VK8sEnv) -> None:
    name = uniq("typo")
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labelz": {"a": "b"}},
        "dataa": {},
    }
    with env.http() as http:
        body = status(http.post(CONFIGMAPS, params={"fieldValidation": "Strict"}, json=cm), 400, "BadRequest")
        assert body["message"] == (
            'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
            'unknown field "metadata.labelz", unknown field "dataa"'
        )
        created = http.post(CONFIGMAPS, json=cm).json()
    assert "dataa" not in created and "labelz" not in created["metadata"]
