"""Secret: named key/value data (values base64, as in Kubernetes), sealed at rest.

The values live under ``spec.data``; ``sealed_paths`` makes the server seal them with
envelope encryption before they reach the store and open them only in API responses.
Viewers may not read Secrets at all (``sensitive``), as Kubernetes' "view" role.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import Field, field_validator

from fleetplane.core.envelope import is_sealed
from fleetplane.core.names import validate_label_key
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema


class SecretSpec(Schema):
    type: str = Field(default="Opaque", max_length=253)
    data: dict[str, str] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _base64(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if validate_label_key(key.replace("_", "-").replace(".", "-")) or not key:
                raise ValueError(f"data key {key!r} must be alphanumeric, '-', '_' or '.'")
            if is_sealed(item):
                continue
            try:
                base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"data[{key}] must be base64") from None
        return value


SECRET = KindInfo(
    kind="Secret",
    plural="secrets",
    spec_model=SecretSpec,
    scope=Scope.NAMESPACE,
    sealed_paths=("spec.data",),
    sensitive=True,
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("TYPE", "spec.type"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
