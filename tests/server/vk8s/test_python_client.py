"""The official kubernetes Python client against vK8s, unchanged, from the same kubeconfig."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.server.vk8s.conftest import NAMESPACE, VK8sEnv, uniq


@pytest.fixture(scope="module")
def api(env: VK8sEnv) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(str(env.kubeconfig)) as api_client:
        yield api_client


def body(name: str, replicas: int = 1) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={"suite": "py"}),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]),
            ),
        ),
    )


def test_apps_v1_crud(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    name = uniq("py")
    created = apps.create_namespaced_deployment(NAMESPACE, body(name))
    assert created.metadata.name == name and int(created.metadata.resource_version) > 0
    assert created.spec.strategy.type == "RollingUpdate"  # defaulted by the server
    read = apps.read_namespaced_deployment(name, NAMESPACE)
    assert read.metadata.uid == created.metadata.uid
    listed = apps.list_namespaced_deployment(NAMESPACE, label_selector="suite=py")
    assert name in [d.metadata.name for d in listed.items]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    patched = apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"replicas": 3}})
    assert patched.spec.replicas == 3 and patched.metadata.generation == 2
    scale = apps.read_namespaced_deployment_scale(name, NAMESPACE)
    assert scale.spec.replicas == 3 and scale.status.selector == f"app={name}"
    apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment(name, NAMESPACE).spec.replicas == 4
    status = apps.patch_namespaced_deployment_status(
        name, NAMESPACE, {"status": {"replicas": 4, "readyReplicas": 2}}
    )
    assert status.status.ready_replicas == 2 and status.spec.replicas == 4
    apps.delete_namespaced_deployment(name, NAMESPACE)
    with pytest.raises(client.ApiException) as err:
        apps.read_namespaced_deployment(name, NAMESPACE)
    assert err.value.status == 404


def test_paging_with_limit_and_continue(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    label = uniq("page")
    for i in range(5):
        core.create_namespaced_config_map(
            NAMESPACE,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"{label}-{i}", labels={"page": label})),
        )
    seen: list[str] = []
    token = None
    while True:
        page = core.list_namespaced_config_map(
            NAMESPACE, label_selector=f"page={label}", limit=2, _continue=token
        )
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"{label}-{i}" for i in range(5)]
    assert core.list_namespaced_pod(NAMESPACE).items == []  # pods arrive with fan-out


def test_watch_from_a_resource_version(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    name = uniq("pyw")
    created = apps.create_namespaced_deployment(NAMESPACE, body(name))
    events: list[tuple[str, str, Any]] = []

    def follow() -> None:
        for ev in watch.Watch().stream(
            apps.list_namespaced_deployment,
            NAMESPACE,
            field_selector=f"metadata.name={name}",
            resource_version=created.metadata.resource_version,
            timeout_seconds=4,
        ):
            events.append((ev["type"], ev["object"].metadata.name, ev["object"].spec.replicas))

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)
    apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"replicas": 2}})
    apps.delete_namespaced_deployment(name, NAMESPACE)
    thread.join(15)
    # The status controller's writes (status only, replicas unchanged) come in between.
    changes = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert [e for e in changes if e[0] != "MODIFIED" or e[2] == 2] == [
        ("MODIFIED", name, 2),
        ("DELETED", name, 2),
    ]
    assert all(e[0] == "MODIFIED" for e in changes[:-1])
