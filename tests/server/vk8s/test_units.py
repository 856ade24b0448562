"""Small pure parts of vK8s: upstream's human durations, the protobuf decoder, discovery."""

from __future__ import annotations

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.server.vk8s import discovery, protobuf
from fleetplane.server.vk8s.tables import human_duration

H = 3600


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [  # apimachinery/pkg/util/duration/duration_test.go
        (1, "1s"),
        (70, "70s"),
        (190, "3m10s"),
        (70 * 60, "70m"),
        (47 * H, "47h"),
        (49 * H, "2d1h"),
        ((8 * 24 + 2) * H, "8d"),
        ((367 * 24 + 2) * H, "367d"),
        ((365 * 2 * 24 + 25) * H, "2y1d"),
        ((365 * 8 * 24 + 2) * H, "8y"),
        (-5, "<invalid>"),
    ],
)
def test_human_duration(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def field(number: int, payload: bytes | int) -> bytes:
    def varint(value: int) -> bytes:
        out = b""
        while True:
            byte, value = value & 0x7F, value >> 7
            out += bytes([byte | (0x80 if value else 0)])
            if not value:
                return out

    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_protobuf_secret_as_kubectl_sends_it() -> None:
    meta = field(1, b"db") + field(11, field(1, b"app") + field(2, b"db"))
    secret = field(1, meta) + field(2, field(1, b"password") + field(2, b"hunter2")) + field(3, b"")
    envelope = field(1, field(1, b"v1") + field(2, b"Secret")) + field(2, secret)
    obj = protobuf.decode(protobuf.MAGIC + envelope)
    assert obj == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "labels": {"app": "db"}},
        "data": {"password": "aHVudGVyMg=="},
    }


def test_protobuf_of_other_kinds_is_415() -> None:
    envelope = field(1, field(1, b"apps/v1") + field(2, b"DaemonSet")) + field(2, b"")
    with pytest.raises(ApiError) as err:
        protobuf.decode(protobuf.MAGIC + envelope)
    assert err.value.code == 415


def test_discovery_lists_scale_as_autoscaling_v1() -> None:
    apps = discovery.resource_list("apps", "v1")
    assert apps is not None
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    core = discovery.resource_list("", "v1")
    assert core is not None
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert pods["verbs"] == ["get", "list", "watch"]
    assert discovery.resource_list("extensions", "v1beta1") is None
