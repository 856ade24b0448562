"""VirtualSite: a label selector over the tenant's sites; membership is computed."""

from __future__ import annotations

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema, SelectorField


class VirtualSiteSpec(SelectorField):
    description: str | None = Field(default=None, max_length=4096)


class VirtualSiteStatus(Schema):
    observedGeneration: int = 0
    selector: str = ""
    memberCount: int = 0
    # The first MAX_LISTED_MEMBERS names (sorted); memberCount is always exact. Like
    # Kubernetes Endpoints, a huge list is truncated so every relabel does not rewrite it.
    members: list[str] = Field(default_factory=list)
    membersTruncated: bool = False


MAX_LISTED_MEMBERS = 1000

VIRTUAL_SITE = KindInfo(
    kind="VirtualSite",
    plural="virtualsites",
    short_names=("vs", "vsite"),
    spec_model=VirtualSiteSpec,
    status_model=VirtualSiteStatus,
    scope=Scope.NAMESPACE,
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("SELECTOR", "status.selector"),
        Column("MEMBERS", "status.memberCount"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
