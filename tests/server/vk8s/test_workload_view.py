"""The workload view endpoint (``GET .../namespaces/{ns}/workloadstatus``) and ``fleetplane
workloads``: one row per vK8s workload with its fleet counts, behind the native authorization.
(With a sim fleet, failing sites and pod states: ``tests/integration/test_vk8s_fanout_e2e.py``.)"""

from __future__ import annotations

import json

import httpx

from tests.server.vk8s.conftest import NAMESPACE, VK8sEnv, uniq
from tests.server.vk8s.test_errors import printed_key, status
from tests.server.vk8s.test_kubectl import app_manifest

VIEW = f"/apis/fleetplane.io/v1/namespaces/{NAMESPACE}/workloadstatus"


def test_every_workload_is_listed_with_its_counts_and_access_is_checked(env: VK8sEnv) -> None:
    name = uniq("view")
    env.ok("apply", "-f", "-", stdin=app_manifest(name))
    server = env.server
    with httpx.Client(base_url=server.url, verify=server.tls, timeout=30) as http:
        admin = {"Authorization": f"Bearer {server.admin_key}"}
        body = http.get(VIEW, headers=admin).json()
        assert body["kind"] == "WorkloadStatusList" and body["metadata"]["namespace"] == NAMESPACE
        row = next(w for w in body["items"] if w["name"] == name)
        # No site in this fleet: placed nowhere, nothing deployed, nothing failing.
        assert row["kind"] == "Deployment" and row["sites"] == 0 and row["failing"] == []
        assert row["siteStates"] == {"deployed": 0, "inProgress": 0, "failed": 0}
        assert "perSite" not in row
        assert "perSite" in http.get(VIEW, headers=admin, params={"sites": "true"}).json()["items"][0]
        elsewhere = server.cli(
            "accesskeys", "create", uniq("other"), "--role", "viewer", "--namespaces", "other"
        )
        assert elsewhere.returncode == 0, elsewhere.stderr
        status(
            http.get(VIEW, headers={"Authorization": f"Bearer {printed_key(elsewhere.stdout)}"}),
            403,
            "Forbidden",
        )
        status(http.get(VIEW), 401, "Unauthorized")
    shown = server.cli("workloads", NAMESPACE, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert name in {w["name"] for w in json.loads(shown.stdout)}
    table = server.cli("workloads", NAMESPACE)
    assert f"deployment/{name}" in table.stdout and "IN-PROGRESS" in table.stdout
