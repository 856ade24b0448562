"""Kubernetes protobuf request bodies, for the kinds kubectl sends that way.

kubectl's typed ``create`` commands (``kubectl create secret generic``, ``create configmap``)
post ``application/vnd.kubernetes.protobuf``: the ``k8s\\0`` magic, a ``runtime.Unknown``
envelope, and the object in the field numbers of ``k8s.io/api/core/v1/generated.proto``.
This decodes the fields those commands set (Secret, ConfigMap, Service, Deployment, Job and
the pod template inside); fields outside :data:`MESSAGES` are skipped. Any other protobuf
body is ``415 Unsupported Media Type`` (every client, kubectl included, sends JSON for the
rest: ``apply``, ``patch``, ``replace``, ``edit``, ``scale``).
"""

from __future__ import annotations

import base64
from typing import Any

from fleetplane.core.errors import ApiError, bad_request

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(data):
            raise bad_request("protobuf: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise bad_request("protobuf: truncated field")
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise bad_request(f"protobuf: unsupported wire type {wire}")
    return out


def _map_entry(data: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, item in fields(data):
        if number == 1 and isinstance(item, bytes):
            key = item.decode()
        elif number == 2 and isinstance(item, bytes):
            value = item
    return key, value


# The messages kubectl's typed create commands send, by field number (generated.proto):
# number -> (JSON name, type). Types: str, int, bool, bytes, a message name, "map" (string
# values), "bmap" (bytes values, base64 in JSON), "qmap" (Quantity values), "ios"
# (IntOrString), "quantity"; "[]x" is repeated x. Pointer fields (``*int32``) keep zeros.
Schema = dict[int, tuple[str, str]]
MESSAGES: dict[str, Schema] = {
    "ObjectMeta": {
        1: ("name", "str"),
        2: ("generateName", "str"),
        3: ("namespace", "str"),
        11: ("labels", "map"),
        12: ("annotations", "map"),
        14: ("finalizers", "[]str"),
    },
    "LabelSelector": {1: ("matchLabels", "map"), 2: ("matchExpressions", "[]LabelSelectorRequirement")},
    "LabelSelectorRequirement": {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "[]str")},
    "Secret": {
        1: ("metadata", "ObjectMeta"),
        2: ("data", "bmap"),
        3: ("type", "str"),
        4: ("stringData", "map"),
        5: ("immutable", "bool"),
    },
    "ConfigMap": {
        1: ("metadata", "ObjectMeta"),
        2: ("data", "map"),
        3: ("binaryData", "bmap"),
        4: ("immutable", "bool"),
    },
    "Deployment": {1: ("metadata", "ObjectMeta"), 2: ("spec", "DeploymentSpec")},
    "DeploymentSpec": {
        1: ("replicas", "int"),
        2: ("selector", "LabelSelector"),
        3: ("template", "PodTemplateSpec"),
        4: ("strategy", "DeploymentStrategy"),
        5: ("minReadySeconds", "int"),
        6: ("revisionHistoryLimit", "int"),
        7: ("paused", "bool"),
        9: ("progressDeadlineSeconds", "int"),
    },
    "DeploymentStrategy": {1: ("type", "str"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "ios"), 2: ("maxSurge", "ios")},
    "Job": {1: ("metadata", "ObjectMeta"), 2: ("spec", "JobSpec")},
    "JobSpec": {
        1: ("parallelism", "int"),
        2: ("completions", "int"),
        3: ("activeDeadlineSeconds", "int"),
        4: ("selector", "LabelSelector"),
        5: ("manualSelector", "bool"),
        6: ("template", "PodTemplateSpec"),
        7: ("backoffLimit", "int"),
        8: ("ttlSecondsAfterFinished", "int"),
        9: ("completionMode", "str"),
        10: ("suspend", "bool"),
    },
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec")},
    "ServiceSpec": {
        1: ("ports", "[]ServicePort"),
        2: ("selector", "map"),
        3: ("clusterIP", "str"),
        4: ("type", "str"),
        5: ("externalIPs", "[]str"),
        7: ("sessionAffinity", "str"),
        10: ("externalName", "str"),
    },
    "ServicePort": {
        1: ("name", "str"),
        2: ("protocol", "str"),
        3: ("port", "int"),
        4: ("targetPort", "ios"),
        5: ("nodePort", "int"),
    },
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "PodSpec": {
        2: ("containers", "[]Container"),
        3: ("restartPolicy", "str"),
        7: ("nodeSelector", "map"),
        8: ("serviceAccountName", "str"),
        20: ("initContainers", "[]Container"),
    },
    "Container": {
        1: ("name", "str"),
        2: ("image", "str"),
        3: ("command", "[]str"),
        4: ("args", "[]str"),
        5: ("workingDir", "str"),
        6: ("ports", "[]ContainerPort"),
        7: ("env", "[]EnvVar"),
        8: ("resources", "ResourceRequirements"),
        14: ("imagePullPolicy", "str"),
    },
    "ContainerPort": {
        1: ("name", "str"),
        2: ("hostPort", "int"),
        3: ("containerPort", "int"),
        4: ("protocol", "str"),
        5: ("hostIP", "str"),
    },
    "EnvVar": {1: ("name", "str"), 2: ("value", "str")},
    "ResourceRequirements": {1: ("limits", "qmap"), 2: ("requests", "qmap")},
}
POINTERS = {"replicas", "parallelism", "completions", "backoffLimit", "suspend", "manualSelector"}
KEEP_EMPTY = {"resources", "strategy"}


def _int_or_string(data: bytes) -> int | str:
    kind, number, text = 0, 0, ""
    for n, item in fields(data):
        if n == 1:
            kind = int(item)
        elif n == 2:
            number = int(item)
        elif n == 3:
            text = item.decode()
    return text if kind == 1 else number


def _scalar(kind: str, item: Any) -> Any:
    if kind == "str":
        return item.decode()
    if kind == "int":
        return item - (1 << 64) if item >= 1 << 63 else item
    if kind == "bool":
        return bool(item)
    if kind == "ios":
        return _int_or_string(item)
    if kind == "quantity":
        return next((v.decode() for n, v in fields(item) if n == 1), "")
    return message(kind, item)


def message(name: str, data: bytes) -> dict[str, Any]:
    """Decode ``data`` as the message ``name`` into its JSON form (unknown fields skipped)."""
    schema = MESSAGES[name]
    out: dict[str, Any] = {}
    for number, item in fields(data):
        if number not in schema:
            continue
        key, kind = schema[number]
        if kind in ("map", "bmap", "qmap"):
            entry_key, value = _map_entry(item)
            shown: Any = value.decode()
            if kind == "bmap":
                shown = base64.b64encode(value).decode()
            elif kind == "qmap":
                shown = _scalar("quantity", value)
            out.setdefault(key, {})[entry_key] = shown
        elif kind.startswith("[]"):
            out.setdefault(key, []).append(_scalar(kind[2:], item))
        else:
            value = _scalar(kind, item)
            if (
                value in ("", 0, False, {})
                and key not in POINTERS
                and not (value == {} and key in KEEP_EMPTY)
            ):
                continue
            out[key] = value
    return out


DECODERS = {
    ("v1", "Secret"): "Secret",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
    ("batch/v1", "Job"): "Job",
}


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise bad_request("protobuf: the body lacks the k8s envelope")
    api_version = kind = ""
    raw = b""
    for number, item in fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(item, bytes):
            for n, v in fields(item):
                if n == 1:
                    api_version = v.decode()
                elif n == 2:
                    kind = v.decode()
        elif number == 2 and isinstance(item, bytes):
            raw = item
    decoder = DECODERS.get((api_version, kind))
    if decoder is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - vK8s accepts {MEDIA_TYPE} only for the "
            "kinds kubectl's create commands send (Secret, ConfigMap, Service, Deployment, Job); "
            "send application/json",
        )
    return {"apiVersion": api_version, "kind": kind, **message(decoder, raw)}
