"""The console's in-memory view of every site: one compact row per site and a label index per
tenant, fed by one hub watch. The map and the sites table answer from it (and from the health
controller's view for scores), so a request with 10,000 sites never reads the store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fleetplane.controllers.health_controller import HealthController
from fleetplane.controllers.loop import run_controller
from fleetplane.core.label_index import LabelIndex
from fleetplane.core.objects import Obj, labels_of
from fleetplane.core.selectors import Selector
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import SITE
from fleetplane.server.context import ServerContext

log = logging.getLogger(__name__)
UNKNOWN = "grey"  # the colour of a site that has no health yet (never reported)


@dataclass(slots=True)
class SiteRow:
    name: str
    display: str
    lat: float | None
    lon: float | None
    phase: str
    version: str
    os_version: str
    nodes: int
    last_seen: str
    labels: dict[str, str]


def _coordinates(obj: Obj) -> tuple[float | None, float | None]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    where = spec.get("coordinates") or (status.get("facts") or {}).get("coordinates") or {}
    lat, lon = where.get("latitude"), where.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        # 0.01 degree (about 1 km) is finer than a dot on any screen, and keeps the map small.
        return round(float(lat), 2), round(float(lon), 2)
    return None, None


def row_of(obj: Obj) -> SiteRow:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    lat, lon = _coordinates(obj)
    return SiteRow(
        name=obj["metadata"]["name"],
        display=str(spec.get("displayName") or ""),
        lat=lat,
        lon=lon,
        phase=str(status.get("phase") or "Pending"),
        version=str(status.get("softwareVersion") or ""),
        os_version=str(status.get("osVersion") or ((status.get("os") or {}).get("version") or "")),
        nodes=int(status.get("nodeCount") or 0),
        last_seen=str(status.get("lastSeen") or ""),
        labels=labels_of(obj),
    )


class ConsoleView:
    def __init__(self, store: Store, hub: WatchHub) -> None:
        self.store, self.hub = store, hub
        self.rows: dict[str, dict[str, SiteRow]] = {}  # tenant -> name -> row
        self.index: dict[str, LabelIndex[str]] = {}
        self._sorted: dict[str, list[str]] = {}  # tenant -> names, sorted; dropped on add/remove
        self.version = 0  # moves on every change: the key of cached answers (data.map_data)
        self.synced = asyncio.Event()

    def set(self, tenant: str, obj: Obj) -> None:
        self.version += 1
        row = row_of(obj)
        rows = self.rows.setdefault(tenant, {})
        if row.name not in rows:
            self._sorted.pop(tenant, None)
        rows[row.name] = row
        self.index.setdefault(tenant, LabelIndex()).set(row.name, row.labels)

    def remove(self, tenant: str, name: str) -> None:
        self.version += 1
        if self.rows.get(tenant, {}).pop(name, None) is not None:
            self._sorted.pop(tenant, None)
            self.index[tenant].discard(name)

    def names(self, tenant: str, selector: Selector | None = None) -> list[str]:
        """The tenant's site names in order, those ``selector`` matches when given."""
        names = self._sorted.get(tenant)
        if names is None:
            names = self._sorted[tenant] = sorted(self.rows.get(tenant, {}))
        if selector is None or selector.empty:
            return names
        index = self.index.get(tenant)
        chosen = index.select(selector) if index is not None else set()
        return [n for n in names if n in chosen]

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, (SITE.kind,))
        self.rows, self.index, self._sorted = {}, {}, {}
        self.version += 1
        for tenant, obj in objects:
            self.set(tenant, obj)
        self.synced.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, (SITE.kind,)), since=revision):
            if ev.type is EventType.DELETED:
                self.remove(ev.tenant, ev.name)
            else:
                self.set(ev.tenant, ev.object)

    async def run(self) -> None:
        async def idle() -> None:
            await asyncio.Event().wait()

        await run_controller("console-view", self._sync_and_follow, idle)


def health_of(ctx: ServerContext, tenant: str, name: str) -> tuple[str, int | None, Any]:
    """(colour, score, entry) of one site from the health controller's view."""
    controller = ctx.extras.get("health")
    if isinstance(controller, HealthController):
        entry = controller.view.sites.get((tenant, name))
        if entry is not None and entry.reported:
            return entry.health.colour, entry.health.score, entry
        return UNKNOWN, None, entry
    return UNKNOWN, None, None


def view_of(ctx: ServerContext) -> ConsoleView:
    view = ctx.extras.get("console")
    if not isinstance(view, ConsoleView):
        view = ctx.extras["console"] = ConsoleView(ctx.store, ctx.hub)
    return view


async def run_view(ctx: ServerContext) -> None:
    """Started by the server's lifespan: keep the console view current."""
    await view_of(ctx).run()
