"""Artifact: one file of the artifact repository (OS image, binary package, container package).

The metadata is the object; the bytes live in a content-addressed blob store
(``core/blobstore.py``) under their SHA-256, so the same bytes uploaded twice are kept once.
Clients never write an Artifact through the generic API: the upload route
(``server/artifacts.py``) creates it from the streamed bytes and the server alone writes
``status`` (the digest and size it computed itself). Deleting goes through the artifact route
too, which also drops the blob once no Artifact of any tenant references it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema

ARTIFACT_TYPES = ("os-image", "package", "container-package")
ARCHITECTURES = ("amd64", "arm64", "arm", "riscv64", "ppc64le", "s390x", "any")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~:-]{0,127}$")


class ArtifactSpec(Schema):
    type: Literal["os-image", "package", "container-package"]
    version: str = Field(max_length=128)
    architecture: str = Field(default="any", max_length=16)
    # A detached signature (e.g. base64 of a GPG or cosign signature), kept as given.
    signature: str | None = Field(default=None, max_length=16384)
    description: str | None = Field(default=None, max_length=4096)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(
                f"{value!r} is not a version: letters, digits and . + _ ~ : - (e.g. 1.4.2, 2.0-rc.1)"
            )
        return value

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"{value!r} is not one of {', '.join(ARCHITECTURES)}")
        return value


class ArtifactStatus(Schema):
    phase: Literal["Uploading", "Ready", "Failed"] = "Uploading"
    sha256: str | None = Field(default=None, pattern=SHA256.pattern)
    size: int | None = Field(default=None, ge=0)
    uploadedAt: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=4096)


ARTIFACT = KindInfo(
    kind="Artifact",
    plural="artifacts",
    short_names=("art",),
    spec_model=ArtifactSpec,
    status_model=ArtifactStatus,
    scope=Scope.NAMESPACE,
    # Created only by the upload route; deleted through it (it owns the blob's lifetime).
    api_write_verbs=frozenset({"delete"}),
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("TYPE", "spec.type"),
        Column("VERSION", "spec.version"),
        Column("ARCH", "spec.architecture"),
        Column("SIZE", "status.size"),
        Column("PHASE", "status.phase"),
        Column("SHA256", "status.sha256", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
