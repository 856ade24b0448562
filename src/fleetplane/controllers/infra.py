"""The infra controller: ``Node`` and ``Alarm`` objects, ``SiteInventory`` and
``InfraPipeline`` status, from what sites report in ``Site.status.infra``.

Level-triggered (``controllers/loop.py``): it rebuilds its view from a snapshot (sites'
infra reports, inventories, pipelines, nodes, alarms), then follows the watch; a change
marks its site (or pipeline) dirty and the flush loop recomputes what should be stored
and writes only the difference, so a restart at any point converges.

- **Nodes**: one per node that is intended (the inventory) or reported (the site), named
  ``<site>.<node>``; spec from the inventory, status from the site's report. An intended
  node the site does not see is ``failed`` ("not found on site"); a node neither intended
  nor reported any more is deleted.
- **Inventory status**: intended/discovered/ready counts, ``missing``, ``unexpected``,
  ``roleMismatch``, the pipeline phase and conditions.
- **Alarms**: a site's active alarm ids are ``Active`` Alarm objects; an id the site no
  longer reports is ``Cleared`` (kept as history, at most ``keep_cleared`` per site, the
  oldest deleted first). A site raising an id again opens a new Alarm.
- **Pipelines**: ``status.sites`` (phase, state, reason per site running it) and counts.
  A site with an inventory and no pipeline reports no ``pipeline``: it has no ``phase`` and
  no ``Succeeded``/``Blocked`` condition, and no pipeline counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import orjson

from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import ALARM, INFRA_PIPELINE, NODE, SITE, SITE_INVENTORY
from fleetplane.kinds.infra import alarm_object_name, node_object_name

log = logging.getLogger(__name__)
SiteKey = tuple[str, str]
PipeKey = tuple[str, str, str]
SITE_LABEL = "fleetplane.io/site"
KINDS = (SITE.kind, SITE_INVENTORY.kind, INFRA_PIPELINE.kind, NODE.kind, ALARM.kind)


def _cond(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    out = {"type": kind, "status": "True" if ok else "False", "reason": reason}
    return out | ({"message": message[:4096]} if message else {})


def inventory_status(inventory: Obj, report: dict[str, Any] | None) -> dict[str, Any]:
    """The difference between the intended and the discovered nodes, and the pipeline."""
    intended = {n["name"]: n for n in (inventory.get("spec") or {}).get("nodes") or []}
    reported = {n["name"]: n for n in (report or {}).get("nodes") or []}
    live = {n: r for n, r in reported.items() if r.get("state") != "removed"}
    status: dict[str, Any] = {
        "intended": len(intended),
        "discovered": len(reported),
        "ready": sum(1 for n in intended if (live.get(n) or {}).get("state") == "ready"),
        "missing": sorted(set(intended) - set(reported)) if report is not None else [],
        "unexpected": sorted(n for n in live if n not in intended),
        "roleMismatch": [
            {"name": n, "intended": intended[n].get("role", "worker"), "discovered": r["role"]}
            for n, r in sorted(live.items())
            if n in intended and r.get("role") and r["role"] != intended[n].get("role", "worker")
        ],
    }
    pipeline = (report or {}).get("pipeline") or {}
    conditions = [_cond("Reported", report is not None, "SiteReported" if report else "NoReport")]
    if pipeline:
        state = pipeline.get("state")
        status["phase"] = "Done" if state == "Succeeded" else f"{pipeline.get('phase')}: {state}"
        reason = str(pipeline.get("reason") or "")
        conditions.append(_cond("Succeeded", state == "Succeeded", str(state), reason))
        conditions.append(
            _cond("Blocked", reason.startswith("waiting:"), "Waiting" if reason else "", reason)
        )
    conditions.append(
        _cond("InventoryMatches", not status["missing"], "Missing" if status["missing"] else "Ok")
    )
    status["conditions"] = conditions
    return status


def node_objects(site: str, inventory: Obj | None, report: dict[str, Any] | None) -> dict[str, Obj]:
    """The Node objects a site should have, by name."""
    intended = {n["name"]: n for n in ((inventory or {}).get("spec") or {}).get("nodes") or []}
    reported = {n["name"]: n for n in (report or {}).get("nodes") or []}
    out: dict[str, Obj] = {}
    for name in sorted(set(intended) | set(reported)):
        want, got = intended.get(name), reported.get(name)
        if got is not None and got.get("state") == "discovered" and want is None:
            continue  # a spare host: listed as unexpected in the inventory status, no Node
        spec: dict[str, Any] = {"site": site, "node": name, "locked": bool((want or {}).get("locked"))}
        if want is not None:
            spec["role"] = want.get("role", "worker")
            if want.get("bmc"):
                spec["bmc"] = want["bmc"]
        status: dict[str, Any] = {"inInventory": want is not None, "discovered": got is not None}
        if got is not None:
            status |= {"state": got["state"], "packages": got.get("packages") or []}
            for src, dst in (("role", "discoveredRole"), ("hardware", "hardware"), ("osImage", "osImage")):
                if got.get(src):
                    status[dst] = got[src]
            if got.get("reason"):
                status["reason"] = got["reason"]
        elif report is None:
            status |= {"state": "provisioning", "reason": "waiting for the site to report its nodes"}
        else:
            status |= {"state": "failed", "reason": "listed in the inventory, not found on site"}
        meta: dict[str, Any] = {"name": node_object_name(site, name)}
        if len(site) <= 63:
            meta["labels"] = {SITE_LABEL: site}
        out[meta["name"]] = NODE.normalize({"metadata": meta, "spec": spec, "status": status})
    return out


class InfraController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        keep_cleared: int = 50,
        flush_delay: float = 0.05,
        pipeline_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.hub = hub
        self.keep_cleared = keep_cleared
        self.flush_delay = flush_delay
        # A digest of every site's infra report, to tell a change; the sync reads the report
        # from the store. Held whole, a site's node inventory was a few KB of the server's
        # memory per connected site.
        self.reports: dict[SiteKey, bytes] = {}
        self.pipeline_of: dict[SiteKey, dict[str, Any]] = {}  # the report's pipeline, if any
        self.inventories: dict[SiteKey, Obj] = {}
        self.pipelines: dict[PipeKey, Obj] = {}
        self.nodes: dict[SiteKey, dict[str, Obj]] = {}  # stored Nodes by site, then name
        self.alarms: dict[SiteKey, dict[str, Obj]] = {}  # stored Alarms by site, then name
        self.synced = asyncio.Event()
        self._dirty_sites: set[SiteKey] = set()
        self._dirty_pipes: set[PipeKey] = set()
        self._wake = asyncio.Event()
        self.pipeline_interval = pipeline_interval
        self._pipe_written: dict[PipeKey, float] = {}

    async def run(self) -> None:
        await run_controller("infra", self._sync_and_follow, self._flush_loop)

    # -- the view ---------------------------------------------------------------------------------

    def _fold(self, tenant: str, obj: Obj, deleted: bool) -> None:
        kind, m = obj["kind"], obj["metadata"]
        name = m["name"]
        if kind == SITE.kind:
            key = (tenant, name)
            old = self.pipeline_of.pop(key, None) or {}
            pipeline: dict[str, Any] = {}
            if deleted:
                self.reports.pop(key, None)
            else:
                report = (obj.get("status") or {}).get("infra")
                digest = hashlib.blake2b(orjson.dumps(report), digest_size=16).digest()
                pipeline = (report or {}).get("pipeline") or {}
                if pipeline:
                    self.pipeline_of[key] = pipeline
                if self.reports.get(key) == digest:
                    return
                self.reports[key] = digest
            for src in {old.get("source"), pipeline.get("source")}:
                if isinstance(src, str) and "/" in src:
                    ns, _, pname = src.partition("/")
                    self._dirty_pipes.add((tenant, ns, pname))
            self._dirty_sites.add(key)
        elif kind == SITE_INVENTORY.kind:
            key = (tenant, name)
            if deleted:
                self.inventories.pop(key, None)
            else:
                self.inventories[key] = obj
            self._dirty_sites.add(key)
        elif kind == INFRA_PIPELINE.kind:
            pkey = (tenant, str(m.get("namespace") or ""), name)
            if deleted:
                self.pipelines.pop(pkey, None)
            else:
                self.pipelines[pkey] = obj
            self._dirty_pipes.add(pkey)
        elif kind in (NODE.kind, ALARM.kind):
            site = str((obj.get("spec") or {}).get("site") or "")
            held = (self.nodes if kind == NODE.kind else self.alarms).setdefault((tenant, site), {})
            if deleted:
                held.pop(name, None)
            else:
                held[name] = obj
        self._wake.set()

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, KINDS)
        self.reports, self.pipeline_of = {}, {}
        self.inventories, self.pipelines, self.nodes, self.alarms = {}, {}, {}, {}
        for tenant, obj in objects:
            self._fold(tenant, obj, False)
        self._dirty_sites |= set(self.nodes) | set(self.alarms)
        self.synced.set()
        async for ev in self.hub.watch(WatchFilter(tenant=ANY_TENANT, kinds=KINDS), since=revision):
            self._fold(ev.tenant, ev.object, ev.type is EventType.DELETED)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_delay)  # coalesce a burst of reports
            self._wake.clear()
            sites, self._dirty_sites = self._dirty_sites, set()
            pipes, self._dirty_pipes = self._dirty_pipes, set()
            for key in sorted(sites):
                try:
                    await asyncio.to_thread(self._sync_site, key)
                except ApiError as exc:  # a conflict with a concurrent write: look again
                    log.info("infra: site %s/%s: %s; retrying", *key, exc.message)
                    self._dirty_sites.add(key)
            now = time.monotonic()
            for pkey in sorted(pipes):
                # One object summarises every site: rewritten at most every pipeline_interval
                # while its sites report, not once per report.
                if now - self._pipe_written.get(pkey, 0.0) < self.pipeline_interval:
                    self._dirty_pipes.add(pkey)
                    continue
                self._pipe_written[pkey] = now
                try:
                    await asyncio.to_thread(self._sync_pipeline, pkey)
                except ApiError as exc:
                    log.info("infra: pipeline %s: %s; retrying", pkey, exc.message)
                    self._dirty_pipes.add(pkey)
            if (self._dirty_sites or self._dirty_pipes) and not self._wake.is_set():
                await asyncio.sleep(0.5)
                self._wake.set()

    # -- writes ---------------------------------------------------------------------------------

    def _sync_site(self, key: SiteKey) -> None:
        tenant, site = key
        stored = self.store.get_or_none(tenant, SITE.kind, "", site) if key in self.reports else None
        exists = stored is not None
        report: dict[str, Any] | None = ((stored or {}).get("status") or {}).get("infra")
        inventory = self.inventories.get(key)
        want = node_objects(site, inventory, report) if exists else {}
        have = dict(self.nodes.get(key) or {})
        for name, obj in want.items():
            current = have.pop(name, None)
            if current is None:
                self.store.create(tenant, obj)
            elif current.get("spec") != obj["spec"] or current.get("status") != obj["status"]:
                body = {
                    **obj,
                    "metadata": {**current["metadata"], "labels": obj["metadata"].get("labels", {})},
                }
                self.store.update(tenant, body)
        for name in have:
            self.store.delete(tenant, NODE.kind, "", name)
        if inventory is not None:
            status = inventory_status(inventory, report)
            status = SITE_INVENTORY.normalize({**inventory, "status": status})["status"]
            if inventory.get("status") != status:
                self.store.update(tenant, {**inventory, "status": status}, part="status")
        self._sync_alarms(tenant, site, (report or {}).get("alarms") or [] if exists else [])

    def _sync_alarms(self, tenant: str, site: str, raised: list[dict[str, Any]]) -> None:
        held = dict(self.alarms.get((tenant, site)) or {})
        active = {
            o["spec"]["id"]: o for o in held.values() if (o.get("status") or {}).get("state") == "Active"
        }
        now = now_rfc3339()
        wanted = {a["id"]: a for a in raised}
        for ident, alarm in wanted.items():
            spec = {
                "site": site,
                "id": ident,
                "severity": alarm["severity"],
                "resource": alarm.get("resource") or "",
                "message": alarm["message"],
            }
            current = active.get(ident)
            if current is None:
                n = 1 + sum(1 for o in held.values() if o["spec"]["id"] == ident)
                name = alarm_object_name(site, f"{ident}.{n}")
                while name in held:
                    n += 1
                    name = alarm_object_name(site, f"{ident}.{n}")
                meta: dict[str, Any] = {"name": name}
                if len(site) <= 63:
                    meta["labels"] = {SITE_LABEL: site}
                status = {"state": "Active", "raisedAt": alarm.get("raisedAt") or now}
                self.store.create(tenant, ALARM.normalize({"metadata": meta, "spec": spec, "status": status}))
            elif current["spec"] != spec:
                self.store.update(tenant, {**current, "spec": spec})
        cleared = [
            (str((o.get("status") or {}).get("clearedAt") or ""), n)
            for n, o in held.items()
            if (o.get("status") or {}).get("state") == "Cleared"
        ]
        for ident, current in active.items():
            if ident not in wanted:
                status = {**(current.get("status") or {}), "state": "Cleared", "clearedAt": now}
                self.store.update(tenant, {**current, "status": status}, part="status")
                cleared.append((now, current["metadata"]["name"]))
        # History is bounded: the oldest cleared alarms go first.
        for _, name in sorted(cleared)[: max(0, len(cleared) - self.keep_cleared)]:
            self.store.delete(tenant, ALARM.kind, "", name)

    def _sync_pipeline(self, pkey: PipeKey) -> None:
        tenant, ns, name = pkey
        obj = self.pipelines.get(pkey)
        if obj is None:
            return
        source = f"{ns}/{name}"
        sites: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        for (t, site), pipeline in sorted(self.pipeline_of.items()):
            if t != tenant or pipeline.get("source") != source:
                continue
            state = str(pipeline.get("state") or "Idle")
            entry = {"phase": pipeline.get("phase"), "state": state}
            if pipeline.get("reason"):
                entry["reason"] = str(pipeline["reason"])[:4096]
            sites[site] = entry
            counts[state] = counts.get(state, 0) + 1
        failed = counts.get("Failed", 0)
        conditions = [
            _cond("AllSucceeded", bool(sites) and counts.get("Succeeded", 0) == len(sites), "Progress"),
            _cond("Failed", failed > 0, "SitesFailed" if failed else "NoFailures", f"{failed} sites failed"),
        ]
        status = {"sites": sites, "counts": counts, "conditions": conditions}
        if obj.get("status") != status:
            self.store.update(tenant, {**obj, "status": status}, part="status")
