"""The Kubernetes-style object envelope shared by every kind.

Objects travel as plain JSON-shaped dicts (``apiVersion``, ``kind``, ``metadata``,
``spec``, ``status``): the store, watch and API stay generic and cheap, and each
kind's Pydantic schema validates ``spec``/``status`` at the edges.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetplane.core.errors import Cause
from fleetplane.core.names import (
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)

Obj = dict[str, Any]

# Metadata fields a client may set; the rest are owned by the server.
CLIENT_METADATA = ("name", "namespace", "labels", "annotations", "finalizers", "resourceVersion")
SERVER_METADATA = ("uid", "generation", "creationTimestamp", "deletionTimestamp")
ANNOTATIONS_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Where an object lives: tenant, kind, namespace ('' when not namespaced), name."""

    tenant: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.tenant}:{self.kind}/{where}{self.name}"


_NOW: tuple[int, str] = (-1, "")  # (epoch second, its text): one strftime per second


def now_rfc3339() -> str:
    global _NOW
    second = int(time.time())
    cached = _NOW  # one read: another thread may replace it, never half of it
    if cached[0] != second:
        cached = _NOW = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return cached[1]


def parse_timestamp(value: object) -> float | None:
    """An RFC 3339 timestamp as epoch seconds (naive means UTC); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def new_uid() -> str:
    return str(uuid.uuid4())


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = {}
        obj["metadata"] = m
    return m


def labels_of(obj: Obj) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def key_of(tenant: str, obj: Obj) -> ObjectKey:
    m = obj.get("metadata") or {}
    return ObjectKey(tenant, str(obj.get("kind", "")), str(m.get("namespace") or ""), str(m.get("name", "")))


def deep_copy(obj: Obj) -> Obj:
    return copy.deepcopy(obj)


def validate_name(name: object, *, field: str = "metadata.name", subdomain: bool = True) -> list[Cause]:
    if not isinstance(name, str) or not name:
        return [Cause(field, "name is required", "FieldValueRequired")]
    errs = validate_dns1123_subdomain(name) if subdomain else validate_dns1123_label(name)
    return [Cause(field, msg) for msg in errs]


def validate_metadata(metadata: object, *, namespaced: bool) -> list[Cause]:
    """Validate the client-settable parts of ``metadata`` by Kubernetes rules."""
    if not isinstance(metadata, dict):
        return [Cause("metadata", "must be an object", "FieldValueRequired")]
    causes = validate_name(metadata.get("name"))
    ns = metadata.get("namespace")
    if namespaced:
        if not ns:
            causes.append(Cause("metadata.namespace", "namespace is required", "FieldValueRequired"))
        else:
            causes += validate_name(ns, field="metadata.namespace", subdomain=False)
    labels = metadata.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            causes.append(Cause("metadata.labels", "must be a map of string to string"))
        else:
            for k, v in labels.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    causes.append(Cause(f"metadata.labels[{k}]", "label keys and values must be strings"))
                    continue
                causes += [Cause("metadata.labels", f"{k!r}: {m}") for m in validate_label_key(k)]
                causes += [Cause(f"metadata.labels[{k}]", f"{v!r}: {m}") for m in validate_label_value(v)]
    annotations = metadata.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            causes.append(Cause("metadata.annotations", "must be a map of string to string"))
        else:
            for k in annotations:
                causes += [Cause("metadata.annotations", f"{k!r}: {m}") for m in validate_label_key(k)]
            size = sum(len(k) + len(v) for k, v in annotations.items())
            if size > ANNOTATIONS_MAX_BYTES:
                causes.append(
                    Cause(
                        "metadata.annotations",
                        f"must have at most {ANNOTATIONS_MAX_BYTES} bytes",
                        "FieldValueTooLong",
                    )
                )
    finalizers = metadata.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) and f for f in finalizers)
    ):
        causes.append(Cause("metadata.finalizers", "must be a list of non-empty strings"))
    return causes
