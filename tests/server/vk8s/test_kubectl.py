"""Stock kubectl (v1.32) against vK8s, with a kubeconfig from ``fleetplane kubeconfig``."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import yaml

from tests.server.vk8s.conftest import NAMESPACE, VK8sEnv, uniq


def deployment(
    name: str, replicas: int = 2, image: str = "nginx:1.27", ports: tuple[int, ...] = (80, 443)
) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "ports": [{"containerPort": p} for p in ports],
                                "env": [{"name": "MODE", "value": "prod"}],
                            }
                        ]
                    },
                },
            },
        }
    )


def app_manifest(name: str, **kwargs: Any) -> str:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]},
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-cfg"},
        "data": {"color": "blue"},
    }
    return deployment(name, **kwargs) + "---\n" + yaml.safe_dump_all([service, config])


def get_json(env: VK8sEnv, *args: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(env.ok("get", *args, "-o", "json"))
    return obj


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return found


def test_apply_create_change_and_remove_a_port(env: VK8sEnv) -> None:
    name = uniq("web")
    out = env.ok("apply", "-f", "-", stdin=app_manifest(name))
    assert f"deployment.apps/{name} created" in out
    assert f"service/{name} created" in out
    assert f"configmap/{name}-cfg created" in out
    # Change the image, drop port 443: client-side apply sends a strategic merge patch.
    out = env.ok("apply", "-f", "-", stdin=app_manifest(name, image="nginx:1.28", ports=(80,)))
    assert f"deployment.apps/{name} configured" in out
    assert f"service/{name} unchanged" in out
    obj = get_json(env, "deploy", name)
    (web,) = containers(obj)
    assert web["image"] == "nginx:1.28"
    assert [p["containerPort"] for p in web["ports"]] == [80]
    assert obj["metadata"]["generation"] == 2


def test_get_table_columns_and_yaml(env: VK8sEnv) -> None:
    name = uniq("tbl")
    env.ok("apply", "-f", "-", stdin=app_manifest(name, replicas=3))
    lines = env.ok("get", "deploy", name).splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[1].split()[:4] == [name, "0/3", "0", "0"]
    wide = env.ok("get", "deploy", name, "-o", "wide").splitlines()
    assert wide[0].split()[5:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide[1].split()[5:] == ["web", "nginx:1.27", f"app={name}"]
    svc = env.ok("get", "svc", name).splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[1] == "ClusterIP" and svc[1].split()[4] == "80/TCP"
    assert env.ok("get", "cm", f"{name}-cfg").splitlines()[0].split() == ["NAME", "DATA", "AGE"]
    obj = yaml.safe_load(env.ok("get", "deploy", name, "-o", "yaml"))
    assert obj["apiVersion"] == "apps/v1" and obj["kind"] == "Deployment"
    assert obj["metadata"]["namespace"] == NAMESPACE and obj["spec"]["replicas"] == 3
    assert int(obj["metadata"]["resourceVersion"]) > 0
    # Label selectors and field selectors.
    assert env.ok("get", "deploy", "-l", f"app={name}", "-o", "name").split() == [f"deployment.apps/{name}"]
    assert env.ok("get", "deploy", "--field-selector", f"metadata.name={name}", "-o", "name").split() == [
        f"deployment.apps/{name}"
    ]
    assert "No resources found" in env.kubectl("get", "deploy", "-l", "app=nothing-such").stderr


def test_scale_and_the_three_patch_types(env: VK8sEnv) -> None:
    name = uniq("pt")
    env.ok("apply", "-f", "-", stdin=deployment(name))
    assert f"deployment.apps/{name} scaled" in env.ok("scale", "deploy", name, "--replicas=5")
    assert get_json(env, "deploy", name)["spec"]["replicas"] == 5
    # Strategic: a new container merges in by name, the existing one stays.
    sidecar = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox:1.36"}]}}}}
    env.ok("patch", "deploy", name, "-p", json.dumps(sidecar))
    assert [c["name"] for c in containers(get_json(env, "deploy", name))] == ["web", "sidecar"]
    # Strategic with a directive: delete the sidecar by its merge key.
    delete = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}
    env.ok("patch", "deploy", name, "--type=strategic", "-p", json.dumps(delete))
    assert [c["name"] for c in containers(get_json(env, "deploy", name))] == ["web"]
    # Merge patch: labels merge; a list would be replaced.
    env.ok("patch", "deploy", name, "--type=merge", "-p", '{"metadata":{"labels":{"tier":"front"}}}')
    assert get_json(env, "deploy", name)["metadata"]["labels"] == {"app": name, "tier": "front"}
    # JSON patch.
    env.ok(
        "patch", "deploy", name, "--type=json", "-p", '[{"op":"replace","path":"/spec/replicas","value":1}]'
    )
    assert get_json(env, "deploy", name)["spec"]["replicas"] == 1
    bad = env.kubectl(
        "patch", "deploy", name, "--type=json", "-p", '[{"op":"test","path":"/spec/replicas","value":9}]'
    )
    assert bad.returncode != 0


def test_server_side_apply_with_a_conflict_and_force(env: VK8sEnv) -> None:
    name = uniq("ssa")
    first = yaml.safe_load(deployment(name, replicas=2))
    first["metadata"]["labels"]["team"] = "a"
    applied = env.ok(
        "apply", "--server-side", "--field-manager=alice", "-f", "-", stdin=yaml.safe_dump(first)
    )
    assert "serverside-applied" in applied
    second = deployment(name, replicas=4)
    refused = env.kubectl("apply", "--server-side", "--field-manager=bob", "-f", "-", stdin=second)
    assert refused.returncode != 0
    assert 'conflict with "alice"' in refused.stderr and ".spec.replicas" in refused.stderr
    assert get_json(env, "deploy", name)["spec"]["replicas"] == 2
    env.ok("apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-", stdin=second)
    obj = json.loads(env.ok("get", "deploy", name, "-o", "json", "--show-managed-fields"))
    assert obj["spec"]["replicas"] == 4
    owners = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    assert "f:replicas" in owners["bob"]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in owners["alice"]["fieldsV1"]["f:spec"]
    # alice re-applies without the label and the env: she alone owned the label, so it goes;
    # bob co-owns the env (same value), so it stays.
    trimmed = yaml.safe_load(deployment(name))
    del trimmed["spec"]["replicas"]
    del trimmed["spec"]["template"]["spec"]["containers"][0]["env"]
    env.ok("apply", "--server-side", "--field-manager=alice", "-f", "-", stdin=yaml.safe_dump(trimmed))
    obj = get_json(env, "deploy", name)
    assert obj["spec"]["replicas"] == 4
    assert obj["metadata"]["labels"] == {"app": name}
    assert containers(obj)[0]["env"] == [{"name": "MODE", "value": "prod"}]


def test_server_side_apply_after_client_side_apply_migrates_managed_fields(env: VK8sEnv) -> None:
    name = uniq("mig")
    manifest = app_manifest(name)
    env.ok("apply", "-f", "-", stdin=manifest)
    # The workload status controller writes its fleet roll-up into the status.
    deadline = time.monotonic() + 20
    while "'fleet':" not in str(get_json(env, "deploy", name).get("status")):
        assert time.monotonic() < deadline, "the workload status controller wrote no status.fleet"
        time.sleep(0.2)
    done = env.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr
    assert "rejected managed fields migration" not in done.stderr, done.stderr
    assert "unknown field" not in done.stderr, done.stderr
    obj = json.loads(env.ok("get", "deploy", name, "-o", "json", "--show-managed-fields"))
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert ("kubectl-client-side-apply", "Update") not in managers, managers
    assert "fleet" in obj["status"]
    # Migrated once: the next server-side apply has nothing to migrate and warns of nothing.
    again = env.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
    assert again.returncode == 0 and "Warning" not in again.stderr, again.stderr


def test_delete(env: VK8sEnv) -> None:
    name = uniq("del")
    env.ok("apply", "-f", "-", stdin=app_manifest(name))
    out = env.ok("delete", "deploy", name)
    assert f'deployment.apps "{name}" deleted' in out
    gone = env.kubectl("get", "deploy", name)
    assert gone.returncode != 0
    assert f'Error from server (NotFound): deployments.apps "{name}" not found' in gone.stderr
    env.ok("delete", "-f", "-", stdin=app_manifest(name).split("---\n", 1)[1])


def test_get_watch_prints_changes(env: VK8sEnv) -> None:
    name = uniq("w")
    env.ok("apply", "-f", "-", stdin=deployment(name, replicas=1))
    watcher = subprocess.Popen(
        [
            "kubectl",
            "--kubeconfig",
            str(env.kubeconfig),
            "--cache-dir",
            str(env.cache),
            "get",
            "deploy",
            name,
            "--watch",
            "--output-watch-events",
            "--request-timeout=8s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        env.ok("scale", "deploy", name, "--replicas=3")
        env.ok("delete", "deploy", name)
        out, _ = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    rows = [line.split() for line in out.splitlines() if name in line]
    # Status writes (the workload status controller's) show as MODIFIED too, as upstream's.
    assert rows[0][0] == "ADDED" and rows[-1][0] == "DELETED", out
    assert any(r[0] == "MODIFIED" and r[2] == "0/3" for r in rows), out


def test_secrets_never_reach_the_store_in_plaintext(env: VK8sEnv) -> None:
    name = uniq("sec")
    secret_value = "hunter2-" + uniq("pw")
    env.ok("create", "secret", "generic", name, f"--from-literal=password={secret_value}")
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-b"},
        "stringData": {"token": secret_value + "-applied"},
    }
    env.ok("apply", "-f", "-", stdin=yaml.safe_dump(applied))
    got = get_json(env, "secret", name)
    import base64

    assert base64.b64decode(got["data"]["password"]).decode() == secret_value
    assert env.ok("get", "secret", name).splitlines()[1].split()[1:3] == ["Opaque", "1"]
    # Re-applying the same Secret server-side changes nothing: no new revision.
    env.ok("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(applied))
    rv = get_json(env, "secret", f"{name}-b")["metadata"]["resourceVersion"]
    env.ok("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(applied))
    assert get_json(env, "secret", f"{name}-b")["metadata"]["resourceVersion"] == rv
    raw = b"".join(p.read_bytes() for p in env.server.data_dir.glob("fleetplane.db*"))
    for needle in (secret_value, secret_value + "-applied"):
        assert needle.encode() not in raw
        assert base64.b64encode(needle.encode()).rstrip(b"=")[:12] not in raw


def test_explain_and_unknown_resources(env: VK8sEnv) -> None:
    out = env.ok("explain", "deployment.spec.replicas")
    assert "KIND:       Deployment" in out and "replicas <integer>" in out
    done = env.kubectl("get", "daemonsets")
    assert done.returncode != 0 and 'the server doesn\'t have a resource type "daemonsets"' in done.stderr
    invalid = env.kubectl("apply", "-f", "-", stdin=deployment("Bad_Name").replace("nginx:1.27", "''"))
    assert invalid.returncode != 0
    assert 'The Deployment "Bad_Name" is invalid' in invalid.stderr
    assert "metadata.name: Invalid value" in invalid.stderr
    assert "spec.template.spec.containers[0].image: Required value" in invalid.stderr
    typo = env.kubectl("apply", "-f", "-", stdin=deployment(uniq("typo")).replace("replicas:", "replicaz:"))
    assert typo.returncode != 0
    assert 'strict decoding error: unknown field "spec.replicaz"' in typo.stderr


def test_create_commands_whose_bodies_are_protobuf(env: VK8sEnv) -> None:
    name = uniq("mk")
    env.ok("create", "deployment", name, "--image=nginx:1.27", "--port=80", "--replicas=2")
    env.ok("create", "service", "clusterip", name, "--tcp=80:8080")
    env.ok("create", "job", name, "--image=busybox:1.36", "--", "echo", "hi")
    env.ok("create", "configmap", name, "--from-literal=color=blue")
    deploy = get_json(env, "deploy", name)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    (web,) = containers(deploy)
    assert web["image"] == "nginx:1.27" and web["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    svc = get_json(env, "svc", name)
    assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    job = get_json(env, "job", name)
    assert containers(job)[0]["command"] == ["echo", "hi"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert env.ok("get", "job", name).splitlines()[0].split() == [
        "NAME",
        "STATUS",
        "COMPLETIONS",
        "DURATION",
        "AGE",
    ]
    assert get_json(env, "cm", name)["data"] == {"color": "blue"}
    described = env.ok("describe", "deploy", name)
    assert "Replicas:" in described and "nginx:1.27" in described


def test_tables_of_the_other_kinds_and_read_only_pods(env: VK8sEnv) -> None:
    name = uniq("st")
    sts = yaml.safe_load(deployment(name, replicas=2))
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = name
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.1"},
        "involvedObject": {"kind": "StatefulSet", "name": name, "namespace": NAMESPACE},
        "reason": "Testing",
        "type": "Normal",
        "message": "hello from the tests",
    }
    env.ok("apply", "-f", "-", stdin=yaml.safe_dump_all([sts, pvc, event]))
    assert env.ok("get", "sts", name).splitlines()[0].split() == ["NAME", "READY", "AGE"]
    assert env.ok("get", "sts", name).splitlines()[1].split()[1] == "0/2"
    header = env.ok("get", "pvc", name).splitlines()[0]
    assert header.split()[:4] == ["NAME", "STATUS", "VOLUME", "CAPACITY"] and "ACCESS MODES" in header
    events = env.ok("get", "events", "--field-selector", f"involvedObject.name={name}")
    assert events.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert f"statefulset/{name}" in events and "hello from the tests" in events
    pods = env.kubectl("get", "pods", "-o", "wide", "--field-selector", "spec.nodeName=site-1-node-1")
    assert pods.returncode == 0 and "No resources found" in pods.stderr
    refused = env.kubectl("delete", "pod", "anything")
    assert refused.returncode != 0
