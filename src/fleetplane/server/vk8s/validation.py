"""Validation and defaulting of the Kubernetes objects vK8s stores: the essentials upstream
checks (names, selectors, templates, containers, ports, data keys), with upstream's field
paths and messages, and the defaults kubectl expects to read back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from fleetplane.core.envelope import is_sealed
from fleetplane.core.errors import ApiError, Cause
from fleetplane.core.names import validate_dns1123_label
from fleetplane.core.objects import Obj, validate_metadata
from fleetplane.core.selectors import SelectorError, selector_from_structured
from fleetplane.kinds.vk8s import K8sResource

CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def required(field: str) -> Cause:
    return Cause(field, "Required value", "FieldValueRequired")


def bad_value(field: str, value: Any, detail: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return Cause(field, f"Invalid value: {shown}: {detail}", "FieldValueInvalid")


def qualified(r: K8sResource) -> str:
    return f"{r.kind}.{r.group}" if r.group else r.kind


def invalid(r: K8sResource, name: str, causes: list[Cause]) -> ApiError:
    parts = ", ".join(f"{c.field}: {c.message}" for c in causes)
    detail = parts if len(causes) == 1 else f"[{parts}]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified(r)} "{name}" is invalid: {detail}',
        kind=r.kind,
        name=name,
        group=r.group,
        causes=causes,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _port(value: Any, field: str) -> list[Cause]:
    if value is None:
        return [required(field)]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return [bad_value(field, value, "must be between 1 and 65535, inclusive")]
    return []


def _containers(spec: dict[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [required(f"{path}.containers")]
    seen: set[str] = set()
    for i, c in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(c, dict):
            causes.append(bad_value(where, c, "must be an object"))
            continue
        name = c.get("name")
        if not name:
            causes.append(required(f"{where}.name"))
        elif not isinstance(name, str) or validate_dns1123_label(name):
            causes += [bad_value(f"{where}.name", name, m) for m in validate_dns1123_label(str(name))]
        elif name in seen:
            causes.append(Cause(f"{where}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
        else:
            seen.add(name)
        image = c.get("image")
        if not isinstance(image, str) or not image.strip():
            causes.append(required(f"{where}.image"))
        for j, p in enumerate(c.get("ports") or []):
            causes += _port(_dict(p).get("containerPort"), f"{where}.ports[{j}].containerPort")
        for j, e in enumerate(c.get("env") or []):
            if not _dict(e).get("name"):
                causes.append(required(f"{where}.env[{j}].name"))
    return causes


def _template(spec: dict[str, Any], path: str, selector: Any) -> list[Cause]:
    template = spec.get("template")
    if not isinstance(template, dict):
        return [required(f"{path}.template")]
    causes = _containers(_dict(template.get("spec")), f"{path}.template.spec")
    if not isinstance(template.get("spec"), dict):
        causes = [required(f"{path}.template.spec")]
    labels = _dict(_dict(template.get("metadata")).get("labels"))
    if isinstance(selector, dict):
        try:
            matches = selector_from_structured(selector).matches(labels)
        except SelectorError as exc:
            return [*causes, bad_value(f"{path}.selector", selector, str(exc))]
        if not matches:
            causes.append(
                bad_value(
                    f"{path}.template.metadata.labels", labels, "`selector` does not match template `labels`"
                )
            )
    return causes


def _default_pod_spec(spec: dict[str, Any], restart: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        image = str(c.get("image") or "")
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def _replicas(spec: dict[str, Any], path: str) -> list[Cause]:
    spec.setdefault("replicas", 1)
    value = spec["replicas"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return [bad_value(f"{path}.replicas", value, "must be greater than or equal to 0")]
    return []


def _workload(obj: Obj, kind: str) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes = _replicas(spec, "spec") if kind != "Job" else []
    if kind == "Job":
        selector = spec.get("selector")
        template = _dict(spec.get("template"))
        restart = _dict(template.get("spec")).get("restartPolicy")
        if isinstance(template.get("spec"), dict) and restart not in ("Never", "OnFailure"):
            causes.append(
                Cause(
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{restart or "Always"}": supported values: "OnFailure", "Never"',
                    "FieldValueNotSupported",
                )
            )
    else:
        selector = spec.get("selector")
        if not isinstance(selector, dict) or not (
            selector.get("matchLabels") or selector.get("matchExpressions")
        ):
            causes.append(required("spec.selector"))
            selector = None
    causes += _template(spec, "spec", selector)
    if causes:
        return causes
    pod_spec = spec["template"]["spec"]
    if kind == "Deployment":
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict) and not strategy.get("type"):
            strategy["type"] = "RollingUpdate"
        if isinstance(strategy, dict) and strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _default_pod_spec(pod_spec)
    elif kind == "StatefulSet":
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        spec.setdefault("revisionHistoryLimit", 10)
        _default_pod_spec(pod_spec)
    else:
        if not spec.get("manualSelector") and not spec.get("selector"):
            # Upstream labels a Job's pods with its name and selects them by it.
            name = str(_dict(obj.get("metadata")).get("name"))
            labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            labels.setdefault("batch.kubernetes.io/job-name", name)
            labels.setdefault("job-name", name)
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/job-name": name}}
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        _default_pod_spec(pod_spec, restart=str(pod_spec.get("restartPolicy")))
    return []


def _service(obj: Obj) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[Cause] = []
    stype = spec.setdefault("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        causes.append(
            Cause(
                "spec.type",
                f'Unsupported value: "{stype}": supported values: '
                + ", ".join(f'"{t}"' for t in SERVICE_TYPES),
                "FieldValueNotSupported",
            )
        )
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if not ports and stype != "ExternalName" and not headless:
        causes.append(required("spec.ports"))
    names: set[str] = set()
    for i, raw in enumerate(ports):
        p = _dict(raw)
        causes += _port(p.get("port"), f"spec.ports[{i}].port")
        if len(ports) > 1 and not p.get("name"):
            causes.append(required(f"spec.ports[{i}].name"))
        if p.get("name") in names:
            causes.append(
                Cause(f"spec.ports[{i}].name", f'Duplicate value: "{p["name"]}"', "FieldValueDuplicate")
            )
        names.add(str(p.get("name")))
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p.get("port"))
    spec.setdefault("sessionAffinity", "None")
    if stype != "ExternalName" and not spec.get("clusterIP"):
        meta = _dict(obj.get("metadata"))
        digest = hashlib.sha256(f"{meta.get('namespace')}/{meta.get('name')}".encode()).digest()
        spec["clusterIP"] = f"10.96.{digest[0]}.{max(1, digest[1]) % 255}"
    if spec.get("clusterIP"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    return causes


def _data_keys(data: Any, field: str) -> list[Cause]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return [bad_value(field, data, "must be a map of string to string")]
    causes = []
    for key, value in data.items():
        if not CONFIG_KEY.fullmatch(str(key)) or len(str(key)) > 253:
            causes.append(
                bad_value(
                    f"{field}[{key}]",
                    key,
                    "a valid config key must consist of alphanumeric characters, "
                    "'-', '_' or '.' (regex used for validation is '[-._a-zA-Z0-9]+')",
                )
            )
        if not isinstance(value, str):
            causes.append(bad_value(f"{field}[{key}]", value, "must be a string"))
    return causes


def _secret(obj: Obj) -> list[Cause]:
    if not obj.get("type"):
        obj["type"] = "Opaque"
    causes = _data_keys(obj.get("data"), "data") + _data_keys(obj.get("stringData"), "stringData")
    if causes:
        return causes
    data = dict(obj.get("data") or {})
    for key, value in data.items():
        if is_sealed(value):  # the stored form, round-tripped
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            causes.append(bad_value(f"data[{key}]", "<value>", "must be base64-encoded"))
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data or "data" in obj:
        obj["data"] = data
    return causes


def _pvc(obj: Obj) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes = []
    if not spec.get("accessModes"):
        causes.append(required("spec.accessModes"))
    if not _dict(_dict(spec.get("resources")).get("requests")).get("storage"):
        causes.append(required("spec.resources[storage]"))
    spec.setdefault("volumeMode", "Filesystem")
    return causes


def _event(obj: Obj) -> list[Cause]:
    if not isinstance(obj.get("involvedObject"), dict):
        return [required("involvedObject")]
    return []


def _override(obj: Obj) -> list[Cause]:
    """``spec.sites``: site names; ``spec.spec``: the workload spec those sites run instead."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[Cause] = []
    sites = spec.get("sites")
    if not isinstance(sites, list) or not all(isinstance(x, str) and x for x in sites):
        causes.append(bad_value("spec.sites", sites, "must be a list of site names"))
    if not isinstance(spec.get("spec"), dict):
        causes.append(required("spec.spec"))
    return causes


CHECKS = {
    "Deployment": lambda o: _workload(o, "Deployment"),
    "StatefulSet": lambda o: _workload(o, "StatefulSet"),
    "Job": lambda o: _workload(o, "Job"),
    "Service": _service,
    "ConfigMap": lambda o: _data_keys(o.get("data"), "data") + _data_keys(o.get("binaryData"), "binaryData"),
    "Secret": _secret,
    "PersistentVolumeClaim": _pvc,
    "Event": _event,
    "Override": _override,
}


def validate(r: K8sResource, obj: Obj) -> Obj:
    """``obj`` (changed in place) validated and defaulted; ``Invalid`` (422) with field causes."""
    meta = obj.get("metadata")
    name = str(_dict(meta).get("name") or "")
    causes = validate_metadata(meta, namespaced=True)
    causes = [
        required(c.field)
        if c.reason == "FieldValueRequired"
        else bad_value(c.field, _dict(meta).get("name"), c.message)
        if c.field == "metadata.name"
        else c
        for c in causes
    ]
    check = CHECKS.get(r.kind)
    if check is not None and isinstance(meta, dict):
        causes += check(obj)
    if causes:
        raise invalid(r, name, causes)
    return obj
