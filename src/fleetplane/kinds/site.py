"""Site: one location with its own compute and one agent. Tenant-wide (no namespace)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Condition, Schema
from fleetplane.kinds.infra import SiteInfraStatus
from fleetplane.kinds.os_upgrade import SiteOsStatus


class Coordinates(Schema):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Hardware(Schema):
    cpuCores: int | None = Field(default=None, ge=0)
    memoryMiB: int | None = Field(default=None, ge=0)
    model: str | None = Field(default=None, max_length=253)
    serial: str | None = Field(default=None, max_length=253)


class Facts(Schema):
    hostname: str | None = Field(default=None, max_length=253)
    hardware: Hardware | None = None
    agentVersion: str | None = Field(default=None, max_length=64)
    osVersion: str | None = Field(default=None, max_length=253)
    coordinates: Coordinates | None = None


class SiteSpec(Schema):
    displayName: str | None = Field(default=None, max_length=253)
    description: str | None = Field(default=None, max_length=4096)
    coordinates: Coordinates | None = None
    address: str | None = Field(default=None, max_length=1024)


SitePhase = Literal["Pending", "Online", "Offline", "Decommissioned"]


class SiteIdentity(Schema):
    """The site's current certificate (server-owned: kept across status writes)."""

    serial: str
    notAfter: str
    registration: str | None = None


ManifestState = Literal["Applied", "Applying", "Failed"]
ItemState = Literal["Applied", "Failed", "InProgress"]
NodeRole = Literal["controller", "worker", "storage"]


class ManifestItem(Schema):
    section: str = Field(max_length=253)
    name: str = Field(max_length=253)
    state: ItemState
    reason: str | None = Field(default=None, max_length=4096)


class ManifestReport(Schema):
    """The manifest the site has applied (or is applying), as it reports it."""

    generation: int = Field(ge=0)
    hash: str | None = Field(default=None, max_length=80)
    state: ManifestState
    items: list[ManifestItem] = Field(default_factory=list, max_length=10_000)


class Node(Schema):
    name: str = Field(max_length=253)
    role: NodeRole = "worker"
    cpuMillis: int = Field(default=0, ge=0)
    memoryBytes: int = Field(default=0, ge=0)
    diskBytes: int = Field(default=0, ge=0)
    ready: bool = True


class Usage(Schema):
    cpuMillis: int = Field(default=0, ge=0)
    memoryBytes: int = Field(default=0, ge=0)
    diskBytes: int = Field(default=0, ge=0)
    cpuPercent: float = Field(default=0, ge=0, le=100)
    memoryPercent: float = Field(default=0, ge=0, le=100)


class Allocatable(Schema):
    cpuMillis: int = Field(default=0, ge=0)
    memoryBytes: int = Field(default=0, ge=0)


class LinkStats(Schema):
    """The site's link to the control plane, when the agent measures it."""

    latencyMs: float | None = Field(default=None, ge=0)
    lossPercent: float | None = Field(default=None, ge=0, le=100)


HealthColour = Literal["green", "orange", "red"]


class HealthParts(Schema):
    connectivity: int = Field(ge=0, le=100)
    reliability: int = Field(ge=0, le=100)
    security: int = Field(ge=0, le=100)
    performance: int = Field(ge=0, le=100)


class SiteHealth(Schema):
    """The health score (docs/health.md); server-owned, written by the health controller."""

    score: int = Field(ge=0, le=100)
    colour: HealthColour
    parts: HealthParts
    reasons: list[str] = Field(default_factory=list, max_length=100)
    observedAt: str | None = None


class PodContainer(Schema):
    name: str = Field(max_length=253)
    image: str = Field(max_length=1024)
    # {"limits": {"cpu": "100m", "memory": "100Mi"}, "requests": {...}} as the site runs it.
    resources: dict[str, dict[str, str]] | None = None


class SitePod(Schema):
    """One pod a site runs for a vK8s workload (the ``workloads`` manifest section): what the
    vK8s API aggregates into its read-only Pods and its workloads' status (docs/vk8s.md)."""

    namespace: str = Field(max_length=253)  # the site-local namespace, <tenant>-<namespace>
    name: str = Field(max_length=253)
    workload: str = Field(max_length=512)  # "<namespace>/<Kind>/<name>" of the vK8s object
    generation: int = Field(default=0, ge=0)  # the vK8s object's generation the pod runs
    phase: str = Field(max_length=64)  # Pending | ContainerCreating | Running | CrashLoopBackOff
    reason: str | None = Field(default=None, max_length=1024)
    ready: bool = False
    restarts: int = Field(default=0, ge=0)
    lastTermination: str | None = Field(default=None, max_length=64)  # Error | OOMKilled
    node: str | None = Field(default=None, max_length=253)
    createdAt: str | None = Field(default=None, max_length=40)  # RFC 3339, the site's clock
    labels: dict[str, str] = Field(default_factory=dict)
    containers: list[PodContainer] = Field(default_factory=list, max_length=100)


class SiteStatus(Schema):
    phase: SitePhase = "Pending"
    identity: SiteIdentity | None = None
    lastSeen: str | None = None
    nodeCount: int = Field(default=0, ge=0)
    # What the agent reports about its host (the same shape it registered with).
    facts: Facts | None = None
    softwareVersion: str | None = None
    osVersion: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    # Reported by the agent (docs/site-manifest.md); absent until it reports them.
    manifest: ManifestReport | None = None
    nodes: list[Node] | None = Field(default=None, max_length=1000)
    usage: Usage | None = None
    allocatable: Allocatable | None = None
    policyHits: dict[str, int] | None = None
    # The OS: running and target version, A/B slots, last upgrade outcome (kinds/os_upgrade.py).
    os: SiteOsStatus | None = None
    # Latency and loss to the control plane, if the agent measures them (docs/health.md).
    link: LinkStats | None = None
    # Pods of vK8s workloads (the ``workloads`` section), as the site runs them.
    pods: list[SitePod] | None = Field(default=None, max_length=10_000)
    # Server-owned (like identity): the health score, kept across site reports.
    health: SiteHealth | None = None
    # Infrastructure: discovered nodes, the pipeline's phases, artifacts held, alarms.
    infra: SiteInfraStatus | None = None


SITE = KindInfo(
    kind="Site",
    plural="sites",
    short_names=("site",),
    spec_model=SiteSpec,
    status_model=SiteStatus,
    scope=Scope.TENANT,
    columns=(
        Column("NAME", "metadata.name"),
        Column("PHASE", "status.phase"),
        Column("NODES", "status.nodeCount"),
        Column("VERSION", "status.softwareVersion"),
        Column("DISPLAY NAME", "spec.displayName", wide_only=True),
        Column("LABELS", "metadata.labels", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
