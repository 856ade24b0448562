"""SiteManifest: the compiled desired state of one site (name = site name).

Written only by the compile controller (``controllers/manifests.py``), read-only over the
native API; a site reads its own over mTLS (``GET /site-api/v1/manifest``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema


class SiteManifestSpec(Schema):
    site: str = Field(min_length=1, max_length=253)
    # "sha256:<hex>" of the canonical JSON of ``sections`` (sorted keys, no whitespace).
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    sections: dict[str, dict[str, Any]] = Field(default_factory=dict)


SITE_MANIFEST = KindInfo(
    kind="SiteManifest",
    plural="sitemanifests",
    short_names=("sm", "manifest", "manifests"),
    spec_model=SiteManifestSpec,
    scope=Scope.TENANT,
    api_write_verbs=frozenset(),
    columns=(
        Column("NAME", "metadata.name"),
        Column("GENERATION", "metadata.generation"),
        Column("HASH", "spec.hash", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
