"""SiteMetrics: one site's current load and its bounded, downsampled history.

Tenant-wide like Site, named like the site, written only by the metrics history controller
(``controllers/metrics_history.py``; read-only over the API). ``status.series`` holds one
entry per resolution (``1m``, ``10m``, ``1h`` by default), columnar (``Series``), oldest first, at most
``retention / step`` steps. See docs/alerts.md ("Metrics history").
"""

from __future__ import annotations

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema

__all__ = ["SITE_METRICS"]


class CurrentLoad(Schema):
    at: str | None = None
    cpuPercent: float | None = None
    memoryPercent: float | None = None
    diskPercent: float | None = None


class Series(Schema):
    """Columnar: value ``i`` of ``cpu``/``memory``/``disk`` is the mean over the step that
    starts at ``start + i * stepSeconds`` (epoch seconds); ``null`` where unknown."""

    resolution: str = Field(max_length=16)
    stepSeconds: int = Field(ge=1)
    start: int | None = None
    cpu: list[float | None] = Field(default_factory=list, max_length=100_000)
    memory: list[float | None] = Field(default_factory=list, max_length=100_000)
    disk: list[float | None] = Field(default_factory=list, max_length=100_000)


class SiteMetricsStatus(Schema):
    current: CurrentLoad = Field(default_factory=CurrentLoad)
    series: list[Series] = Field(default_factory=list, max_length=8)


SITE_METRICS = KindInfo(
    kind="SiteMetrics",
    plural="sitemetrics",
    short_names=("smetrics",),
    spec_model=None,
    status_model=SiteMetricsStatus,
    scope=Scope.TENANT,
    api_write_verbs=frozenset(),  # system-managed
    columns=(
        Column("NAME", "metadata.name"),
        Column("CPU %", "status.current.cpuPercent"),
        Column("MEMORY %", "status.current.memoryPercent"),
        Column("DISK %", "status.current.diskPercent"),
        Column("AT", "status.current.at"),
    ),
)
