"""Tenants and the access keys that authenticate API callers.

A key's secret is shown once, at creation; only its SHA-256 is stored (the secret
is 256 random bits, so a plain hash cannot be brute-forced).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema

Role = Literal["admin", "editor", "viewer"]


class TenantSpec(Schema):
    displayName: str | None = Field(default=None, max_length=253)


class TenantStatus(Schema):
    phase: Literal["Active"] = "Active"


class AccessKeySpec(Schema):
    role: Role = "viewer"
    # Empty: every namespace. Otherwise only these (plus read access to "shared").
    namespaces: list[str] = Field(default_factory=list)
    description: str | None = Field(default=None, max_length=1024)
    # The first key of the system; may manage tenants.
    system: bool = False


class AccessKeyStatus(Schema):
    keyHash: str | None = None


TENANT = KindInfo(
    kind="Tenant",
    plural="tenants",
    spec_model=TenantSpec,
    status_model=TenantStatus,
    scope=Scope.SYSTEM,
    columns=(Column("NAME", "metadata.name"), Column("AGE", "metadata.creationTimestamp")),
)

ACCESS_KEY = KindInfo(
    kind="AccessKey",
    plural="accesskeys",
    short_names=("ak",),
    spec_model=AccessKeySpec,
    status_model=AccessKeyStatus,
    scope=Scope.TENANT,
    hidden_paths=("status.keyHash",),
    columns=(
        Column("NAME", "metadata.name"),
        Column("ROLE", "spec.role"),
        Column("NAMESPACES", "spec.namespaces"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
