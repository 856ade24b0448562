"""Strategic merge patch and field ownership, on the examples of upstream's documentation
(``community/contributors/devel/sig-api-machinery/strategic-merge-patch.md``) and kubectl's."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.server.vk8s import managed
from fleetplane.server.vk8s.strategic import strategic_merge


def pod_spec(**spec: Any) -> dict[str, Any]:
    return {"spec": {"template": {"spec": spec}}}


def test_containers_merge_by_name() -> None:
    live = pod_spec(containers=[{"name": "nginx", "image": "nginx-1.0"}])
    patch = pod_spec(containers=[{"name": "log-tailer", "image": "log-tailer-1.0"}])
    merged = strategic_merge(live, patch)
    assert merged["spec"]["template"]["spec"]["containers"] == [
        {"name": "nginx", "image": "nginx-1.0"},
        {"name": "log-tailer", "image": "log-tailer-1.0"},
    ]
    changed = strategic_merge(live, pod_spec(containers=[{"name": "nginx", "image": "nginx-1.1"}]))
    assert changed["spec"]["template"]["spec"]["containers"] == [{"name": "nginx", "image": "nginx-1.1"}]


def test_nested_merge_keys_ports_env_volume_mounts_and_service_ports() -> None:
    live = pod_spec(
        containers=[
            {
                "name": "web",
                "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "args": ["--a", "--b"],
            }
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    patch = pod_spec(
        containers=[
            {
                "name": "web",
                "ports": [{"containerPort": 80, "name": "http"}],
                "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "args": ["--c"],  # no merge key: replaced
            }
        ],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    spec = strategic_merge(live, patch)["spec"]["template"]["spec"]
    (web,) = spec["containers"]
    assert web["ports"] == [{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}]
    assert web["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert [m["mountPath"] for m in web["volumeMounts"]] == ["/data", "/cache"]
    assert web["args"] == ["--c"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "cache"]
    service = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}
    merged = strategic_merge(service, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    assert merged["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]


def test_patch_delete_directive_on_a_list_element_and_null_on_a_field() -> None:
    live = pod_spec(containers=[{"name": "a", "image": "a"}, {"name": "b", "image": "b", "tty": True}])
    patch = pod_spec(containers=[{"name": "a", "$patch": "delete"}, {"name": "b", "tty": None}])
    assert strategic_merge(live, patch)["spec"]["template"]["spec"]["containers"] == [
        {"name": "b", "image": "b"}
    ]


def test_patch_replace_directive_on_a_map_and_on_a_list() -> None:
    live = {"spec": {"template": {"spec": {"containers": [{"name": "a"}], "hostNetwork": True}}}}
    patch = {
        "spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "z", "image": "z"}]}}}
    }
    assert strategic_merge(live, patch)["spec"]["template"]["spec"] == {
        "containers": [{"name": "z", "image": "z"}]
    }
    patch = pod_spec(containers=[{"$patch": "replace"}, {"name": "only", "image": "o"}])
    merged = strategic_merge(pod_spec(containers=[{"name": "a"}, {"name": "b"}]), patch)
    assert merged["spec"]["template"]["spec"]["containers"] == [{"name": "only", "image": "o"}]


def test_retain_keys_as_kubectl_sends_it_for_a_strategy_change() -> None:
    live = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert strategic_merge(live, patch) == {"spec": {"strategy": {"type": "Recreate"}}}
    # The documentation's union example.
    union = strategic_merge(
        {"union": {"foo": "a", "other": "b"}},
        {"union": {"$retainKeys": ["another", "bar"], "another": "d", "bar": "c"}},
    )
    assert union == {"union": {"another": "d", "bar": "c"}}


def test_set_element_order_and_delete_from_primitive_list() -> None:
    live = pod_spec(containers=[{"name": "a"}, {"name": "b"}, {"name": "c"}])
    # Reorder only.
    patch = {
        "spec": {
            "template": {
                "spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}
            }
        }
    }
    merged = strategic_merge(live, patch)
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["c", "a", "b"]
    # What kubectl apply sends to drop "b" and add "d" after "c": order list plus the changes.
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}, {"name": "d"}],
                    "containers": [{"name": "b", "$patch": "delete"}, {"name": "d", "image": "d"}],
                }
            }
        }
    }
    merged = strategic_merge(live, patch)
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["a", "c", "d"]
    meta = strategic_merge(
        {"metadata": {"finalizers": ["x", "y"]}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}
    )
    assert meta == {"metadata": {"finalizers": ["y"]}}
    union = strategic_merge({"metadata": {"finalizers": ["x"]}}, {"metadata": {"finalizers": ["y", "x"]}})
    assert union == {"metadata": {"finalizers": ["x", "y"]}}


def test_a_bad_directive_is_a_400() -> None:
    with pytest.raises(ApiError) as err:
        strategic_merge({}, {"spec": {"$patch": "explode"}})
    assert err.value.code == 400
    with pytest.raises(ApiError):
        strategic_merge({}, pod_spec(containers=[{"image": "no-name"}]))


def test_fields_v1_round_trip_and_apply_conflicts() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"app": "x"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "a"}]}}},
    }
    fields = managed.field_set(obj)
    assert ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"web"}', "f:image") in fields
    assert managed.from_fields_v1(managed.to_fields_v1(fields)) == fields
    live = managed.apply(None, obj, "alice", False, "apps/v1")
    bumped = {**obj, "spec": {**obj["spec"], "replicas": 3}}
    with pytest.raises(ApiError) as err:
        managed.apply(live, bumped, "bob", False, "apps/v1")
    assert err.value.code == 409
    assert [c.field for c in err.value.causes] == [".spec.replicas"]
    forced = managed.apply(live, bumped, "bob", True, "apps/v1")
    assert forced["spec"]["replicas"] == 3
    same = managed.apply(live, obj, "carol", False, "apps/v1")  # same values: shared, no conflict
    assert {m["manager"] for m in same["metadata"]["managedFields"]} == {"alice", "carol"}
