"""An in-process stand-in for a fleet of agents, for the rollout controller tests: every site
applies its manifest a moment after it changes and reports it (``Site.status.manifest``), as
the agent core does; a site in ``bad`` fails the reservation item at the revisions in
``bad_revisions``. Plus the controllers (compile, history, rollouts) on one hub."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from fleetplane.controllers.history import HistoryController
from fleetplane.controllers.manifests import ManifestController
from fleetplane.controllers.rollouts import RolloutController
from fleetplane.core.objects import Obj
from fleetplane.core.store import Store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import SITE, SITE_MANIFEST

TENANT = "acme"


@dataclass
class FakeFleet:
    store: Store
    sites: list[str]
    bad: set[str] = field(default_factory=set)
    bad_revisions: set[int] = field(default_factory=lambda: {2})
    delay: float = 0.05
    applied: dict[str, list[int]] = field(default_factory=dict)  # site -> revisions applied, in order

    def _report(self, name: str) -> None:
        man = self.store.get_or_none(TENANT, SITE_MANIFEST.kind, "", name)
        site = self.store.get_or_none(TENANT, SITE.kind, "", name)
        if man is None or site is None:
            return
        status = dict(site.get("status") or {})
        if (status.get("manifest") or {}).get("generation") == man["metadata"]["generation"]:
            return
        section = man["spec"]["sections"].get("reservations")
        items: list[dict[str, Any]] = []
        if section is not None:
            revision = next(iter(section["revisions"].values()))
            self.applied.setdefault(name, []).append(revision)
            failed = name in self.bad and revision in self.bad_revisions
            item: dict[str, Any] = {"section": "reservations", "name": "reservations", "state": "Applied"}
            if failed:
                item = {**item, "state": "Failed", "reason": "not enough memory"}
            items.append(item)
        state = "Failed" if any(i["state"] == "Failed" for i in items) else "Applied"
        status["phase"] = "Online"
        status["manifest"] = {
            "generation": man["metadata"]["generation"],
            "hash": man["spec"]["hash"],
            "state": state,
            "items": items,
        }
        self.store.update(TENANT, {**site, "status": status}, part="status")

    async def run(self) -> None:
        while True:
            for name in list(self.sites):
                await asyncio.to_thread(self._report, name)
            await asyncio.sleep(self.delay)


class Controllers:
    """Compile, history and rollout controllers (and optionally the fake fleet) on one hub."""

    def __init__(
        self,
        store: Store,
        fleet: FakeFleet | None = None,
        clock: Any = None,
        keep: int | None = None,
        pause: float = 0.05,
    ) -> None:
        self.store, self.fleet, self.clock, self.keep = store, fleet, clock, keep
        self.pause = pause  # the rollout controller's pause between rounds (min_pause = interval)

    async def __aenter__(self) -> Controllers:
        self.hub = WatchHub(self.store, poll_interval=0.2)
        await self.hub.start()
        self.manifests = ManifestController(self.store, self.hub, flush_delay=0.01)
        self.history = HistoryController(self.store, self.hub)
        kw: dict[str, Any] = {"clock": self.clock} if self.clock is not None else {}
        if self.keep is not None:
            kw["keep"] = self.keep
        self.rollouts = RolloutController(
            self.store, self.hub, interval=self.pause, min_pause=self.pause, **kw
        )
        runs = [self.manifests.run(), self.history.run(), self.rollouts.run()]
        if self.fleet is not None:
            runs.append(self.fleet.run())
        self.tasks = [asyncio.create_task(r) for r in runs]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hub.stop()


def rollout_status(store: Store, name: str, namespace: str = "shop") -> dict[str, Any]:
    ro: Obj | None = store.get_or_none(TENANT, "Rollout", namespace, name)
    return (ro or {}).get("status") or {}


def revision_of(store: Store, site: str) -> int | None:
    man = store.get_or_none(TENANT, SITE_MANIFEST.kind, "", site)
    section = ((man or {}).get("spec") or {}).get("sections", {}).get("reservations")
    return None if section is None else int(next(iter(section["revisions"].values())))
