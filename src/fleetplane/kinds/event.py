"""Event: something that happened to an object (a Site), Kubernetes core/v1 style (docs/events.md).

Tenant-wide and read-only through the API: only the site events controller
(``controllers/site_events.py``) writes them. Upstream keeps the fields at the top level;
here they live in ``spec`` like every kind's, and the list API takes the upstream field
selectors (``involvedObject.name``, ``involvedObject.kind``, ``reason``, ``type``) through
``extra["field_aliases"]``. A repeated event (same object, reason and message) is the same
object with a larger ``count`` and a later ``lastTimestamp``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema

__all__ = ["EVENT", "EVENT_FIELD_ALIASES", "EventType"]

EventType = Literal["Normal", "Warning"]


class ObjectReference(Schema):
    kind: str = Field(max_length=63)
    name: str = Field(max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    uid: str | None = Field(default=None, max_length=64)


class EventSource(Schema):
    component: str = Field(max_length=253)


class EventSpec(Schema):
    involvedObject: ObjectReference
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=128)  # CamelCase
    message: str = Field(max_length=4096)
    type: EventType = "Normal"
    count: int = Field(default=1, ge=1)
    firstTimestamp: str = Field(max_length=40)
    lastTimestamp: str = Field(max_length=40)
    source: EventSource = Field(default_factory=lambda: EventSource(component="fleetplane"))


# Upstream field selector paths -> where they are stored.
EVENT_FIELD_ALIASES = {
    "involvedObject.name": "spec.involvedObject.name",
    "involvedObject.kind": "spec.involvedObject.kind",
    "involvedObject.namespace": "spec.involvedObject.namespace",
    "reason": "spec.reason",
    "type": "spec.type",
    "source": "spec.source.component",
}

EVENT = KindInfo(
    kind="Event",
    plural="events",
    short_names=("ev", "event"),
    spec_model=EventSpec,
    scope=Scope.TENANT,
    api_write_verbs=frozenset(),  # written by the server only (controllers/site_events.py)
    columns=(
        Column("LAST SEEN", "spec.lastTimestamp"),
        Column("TYPE", "spec.type"),
        Column("REASON", "spec.reason"),
        Column("OBJECT", "spec.involvedObject.name"),
        Column("COUNT", "spec.count", wide_only=True),
        Column("MESSAGE", "spec.message"),
    ),
    extra={"field_aliases": EVENT_FIELD_ALIASES},
)
