"""Infrastructure kinds: the intended node inventory of a site, install/patch pipelines,
the nodes as discovered, and alarms (docs/infrastructure.md).

- ``SiteInventory`` (tenant-wide, named after its site): the nodes the operator intends a
  site to have, with their roles, and which are locked for maintenance. Written by the
  operator; its status (the difference with what the site discovered) by the infra
  controller.
- ``InfraPipeline`` (an intent: ``spec.virtualSites`` + ``spec.strategy``): what the nodes
  of the targeted sites run: an OS image, binary packages, an application cluster and
  container packages, each named by an ``Artifact`` of the namespace. Compiled into the
  ``infra`` section of each site's manifest and rolled out like every intent.
- ``Node`` and ``Alarm``: server-managed (read-only through the API), written by the infra
  controller from what sites report in ``Site.status.infra``; a site can only write its own
  status, so it cannot touch another site's nodes or alarms.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fleetplane.core.errors import Cause
from fleetplane.core.names import validate_dns1123_label
from fleetplane.core.objects import Obj
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Condition, Schema
from fleetplane.kinds.intents import IntentSpec, check_visible_targets

__all__ = ["ALARM", "INFRA_KINDS", "INFRA_PIPELINE", "NODE", "PHASES", "SITE_INVENTORY", "SiteInfraStatus"]
__all__ += ["alarm_object_name", "node_object_name"]

NodeRole = Literal["controller", "worker", "storage"]
NodeState = Literal["discovered", "provisioning", "ready", "locked", "failed", "removed"]
Severity = Literal["critical", "major", "minor", "warning"]
PhaseState = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
# The pipeline's phases, in order (reference 004: upload -> OS -> binaries -> cluster -> containers).
PHASES = ("upload", "os", "packages", "cluster", "containers")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_NODES = 100  # a site has 1-100 nodes (DESIGN.md)


def _label(value: str, what: str) -> str:
    if problems := validate_dns1123_label(value):
        raise ValueError(f"{what} {value!r}: {'; '.join(problems)}")
    return value


class InventoryNode(Schema):
    name: str = Field(max_length=63)
    role: NodeRole = "worker"
    bmc: str | None = Field(default=None, max_length=253)  # BMC address (Redfish/IPMI host)
    mac: str | None = Field(default=None, max_length=17)  # the provisioning NIC
    locked: bool = False  # drained and kept out of service (maintenance)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _label(value, "node name")

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is not None and not _MAC.match(value.lower()):
            raise ValueError(f"{value!r} is not a MAC address like 52:54:00:12:34:56")
        return None if value is None else value.lower()


class SiteInventorySpec(Schema):
    site: str = Field(max_length=253)
    nodes: list[InventoryNode] = Field(default_factory=list, max_length=MAX_NODES)
    # Bump to retry a failed pipeline from its failed phase (``fleetplane infra retry SITE``).
    retry: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _unique(self) -> SiteInventorySpec:
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"node {node.name!r} is listed twice")
            seen.add(node.name)
        return self


class InventoryDiff(Schema):
    name: str = Field(max_length=63)
    intended: str | None = None
    discovered: str | None = None


class SiteInventoryStatus(Schema):
    """The difference between the intended and the discovered inventory, and the pipeline."""

    ready: int = Field(default=0, ge=0)
    intended: int = Field(default=0, ge=0)
    discovered: int = Field(default=0, ge=0)
    missing: list[str] = Field(default_factory=list)  # intended, not discovered
    unexpected: list[str] = Field(default_factory=list)  # discovered, not intended
    roleMismatch: list[InventoryDiff] = Field(default_factory=list)
    phase: str | None = None  # the site's pipeline phase
    conditions: list[Condition] = Field(default_factory=list)


def check_inventory_name(obj: Obj) -> list[Cause]:
    """One inventory per site: it is named after its site."""
    name = (obj.get("metadata") or {}).get("name")
    site = (obj.get("spec") or {}).get("site")
    if name != site:
        return [Cause("spec.site", f"a SiteInventory is named after its site: {site!r} != {name!r}")]
    return []


class InfraPipelineSpec(IntentSpec):
    osImage: str | None = Field(default=None, max_length=253)  # an Artifact of type os-image
    packages: list[str] = Field(default_factory=list, max_length=100)  # type package
    containerPackages: list[str] = Field(default_factory=list, max_length=100)  # container-package
    cluster: bool = True  # bring up the application cluster after the binary packages
    workers: int = Field(default=4, ge=1, le=32)  # nodes worked on at once per site
    description: str | None = Field(default=None, max_length=4096)


class SitePipelineStatus(Schema):
    phase: str | None = None
    state: str | None = None
    reason: str | None = None


class InfraPipelineStatus(Schema):
    sites: dict[str, SitePipelineStatus] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


# -- what a site reports (Site.status.infra) ----------------------------------------------------


class Disk(Schema):
    name: str = Field(max_length=64)
    sizeBytes: int = Field(ge=0)
    kind: str = Field(default="ssd", max_length=16)


class Nic(Schema):
    name: str = Field(max_length=64)
    mac: str = Field(max_length=17)
    speedMbps: int = Field(default=0, ge=0)


class NodeHardware(Schema):
    cpuModel: str | None = Field(default=None, max_length=253)
    cpuCores: int = Field(default=0, ge=0)
    memoryBytes: int = Field(default=0, ge=0)
    disks: list[Disk] = Field(default_factory=list, max_length=64)
    nics: list[Nic] = Field(default_factory=list, max_length=64)
    bmc: str | None = Field(default=None, max_length=253)


class ReportedNode(Schema):
    name: str = Field(max_length=63)
    role: NodeRole | None = None
    state: NodeState
    reason: str | None = Field(default=None, max_length=4096)
    hardware: NodeHardware | None = None
    osImage: str | None = Field(default=None, max_length=253)
    packages: list[str] = Field(default_factory=list, max_length=200)


class PhaseReport(Schema):
    name: str = Field(max_length=32)
    state: PhaseState
    reason: str | None = Field(default=None, max_length=4096)
    startedAt: str | None = Field(default=None, max_length=40)
    finishedAt: str | None = Field(default=None, max_length=40)


class PipelineReport(Schema):
    source: str | None = Field(default=None, max_length=512)  # namespace/name of the pipeline
    revision: int = Field(default=0, ge=0)
    retry: int = Field(default=0, ge=0)
    phase: str | None = Field(default=None, max_length=32)  # the phase running, failed, or Done
    state: Literal["Running", "Succeeded", "Failed", "Idle"] = "Idle"
    reason: str | None = Field(default=None, max_length=4096)
    phases: list[PhaseReport] = Field(default_factory=list, max_length=len(PHASES))


class AlarmReport(Schema):
    id: str = Field(max_length=63)
    severity: Severity
    resource: str = Field(default="", max_length=253)
    message: str = Field(max_length=4096)
    raisedAt: str | None = Field(default=None, max_length=40)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _label(value, "alarm id")


class ClusterReport(Schema):
    endpoint: str | None = Field(default=None, max_length=1024)
    ready: bool = False
    nodes: int = Field(default=0, ge=0)


class SiteInfraStatus(Schema):
    """``Site.status.infra`` as the agent reports it."""

    nodes: list[ReportedNode] = Field(default_factory=list, max_length=MAX_NODES * 2)
    pipeline: PipelineReport | None = None
    artifacts: list[str] = Field(default_factory=list, max_length=1000)  # sha256 held
    alarms: list[AlarmReport] = Field(default_factory=list, max_length=1000)
    cluster: ClusterReport | None = None


# -- server-managed ------------------------------------------------------------------------------


class NodeSpec(Schema):
    site: str = Field(max_length=253)
    node: str = Field(max_length=63)
    role: NodeRole | None = None  # intended (None: not in the inventory)
    bmc: str | None = Field(default=None, max_length=253)
    locked: bool = False


class NodeStatus(Schema):
    state: NodeState = "discovered"
    reason: str | None = None
    discoveredRole: NodeRole | None = None
    hardware: NodeHardware | None = None
    osImage: str | None = None
    packages: list[str] = Field(default_factory=list)
    inInventory: bool = False
    discovered: bool = False


class AlarmSpec(Schema):
    site: str = Field(max_length=253)
    id: str = Field(max_length=63)
    severity: Severity
    resource: str = Field(default="", max_length=253)
    message: str = Field(max_length=4096)


class AlarmStatus(Schema):
    state: Literal["Active", "Cleared"] = "Active"
    raisedAt: str | None = None
    clearedAt: str | None = None


def node_object_name(site: str, node: str) -> str:
    return f"{site}.{node}"


def alarm_object_name(site: str, alarm: str) -> str:
    return f"{site}.{alarm}"


SITE_INVENTORY = KindInfo(
    kind="SiteInventory",
    plural="siteinventories",
    short_names=("inventory", "inventories", "sinv"),
    spec_model=SiteInventorySpec,
    status_model=SiteInventoryStatus,
    scope=Scope.TENANT,
    validators=(check_inventory_name,),
    columns=(
        Column("SITE", "spec.site"),
        Column("INTENDED", "status.intended"),
        Column("DISCOVERED", "status.discovered"),
        Column("READY", "status.ready"),
        Column("MISSING", "status.missing"),
        Column("PHASE", "status.phase"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

INFRA_PIPELINE = KindInfo(
    kind="InfraPipeline",
    plural="infrapipelines",
    short_names=("pipeline", "pipelines", "ipl"),
    spec_model=InfraPipelineSpec,
    status_model=InfraPipelineStatus,
    scope=Scope.NAMESPACE,
    validators=(check_visible_targets,),
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("VIRTUAL SITES", "spec.virtualSites"),
        Column("OS IMAGE", "spec.osImage"),
        Column("SITES", "status.counts"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

NODE = KindInfo(
    kind="Node",
    plural="nodes",
    short_names=("no",),
    spec_model=NodeSpec,
    status_model=NodeStatus,
    scope=Scope.TENANT,
    api_write_verbs=frozenset(),  # the infra controller's, from the sites' reports
    columns=(
        Column("SITE", "spec.site"),
        Column("NODE", "spec.node"),
        Column("ROLE", "spec.role"),
        Column("STATE", "status.state"),
        Column("CPU", "status.hardware.cpuModel", wide_only=True),
        Column("OS", "status.osImage"),
        Column("REASON", "status.reason", wide_only=True),
    ),
)

ALARM = KindInfo(
    kind="Alarm",
    plural="alarms",
    short_names=("alarm",),
    spec_model=AlarmSpec,
    status_model=AlarmStatus,
    scope=Scope.TENANT,
    api_write_verbs=frozenset({"delete"}),  # raised and cleared by sites; history may be pruned
    columns=(
        Column("SITE", "spec.site"),
        Column("ID", "spec.id"),
        Column("SEVERITY", "spec.severity"),
        Column("STATE", "status.state"),
        Column("RESOURCE", "spec.resource"),
        Column("MESSAGE", "spec.message"),
        Column("RAISED", "status.raisedAt", wide_only=True),
        Column("CLEARED", "status.clearedAt", wide_only=True),
    ),
)

INFRA_KINDS: tuple[KindInfo, ...] = (SITE_INVENTORY, INFRA_PIPELINE, NODE, ALARM)
