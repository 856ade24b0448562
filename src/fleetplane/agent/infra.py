"""The agent's infrastructure pipeline: the ``infra`` manifest section made real on a site's
hardware, through a :class:`~fleetplane.agent.drivers.baremetal.BareMetal` driver.

An explicit, persisted state machine (``<data-dir>/infra.json``). Its phases run in order,
each step returning the next phase (``PHASES``: upload what the site lacks -> OS install on
nodes -> binary packages -> application cluster -> container packages); before them the
nodes are reconciled with the inventory (locked nodes drained, unlocked ones put back,
nodes no longer listed drained and released). A section without a pipeline (no ``source``:
a ``SiteInventory`` that no ``InfraPipeline`` targets) runs no phase at all: its nodes are
discovered, reconciled (lock, unlock, removal) and reported, and the report carries no
``pipeline``. Per-node work runs in parallel, at most
``workers`` nodes at once. Every step skips what is already done (a node already on the
image, packages already installed), so after an agent restart, a new revision or a retry
the machine resumes where it stands. A failed step stops the run at its phase with the
reason; ``retry`` (``SiteInventory.spec.retry``) bumped above the one last seen resumes
from that phase; a new section (another revision, a changed inventory) starts a new run.

``apply(section)`` is synchronous and cheap: it records the desired section, wakes the
runner task and returns the one ``infra`` item (``InProgress`` while running, ``Applied``
when done, ``Failed`` at a failed phase); ``report()`` is ``Site.status.infra``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleetplane.agent.drivers.baremetal import Artifact, BareMetal, ClusterInfo, DiscoveredNode, StepFailed
from fleetplane.agent.drivers.base import ItemStatus

__all__ = ["PHASES", "SECTION", "InfraExecutor", "section_key"]

log = logging.getLogger("fleetplane.agent.infra")
SECTION = "infra"
PHASES = ("upload", "os", "packages", "cluster", "containers")
DONE = "done"
NODES_ONLY = "nodes"  # the phase of a section without a pipeline: reconcile the nodes only
DOWNLOADS = 3  # artifacts downloaded at once
Fetch = Callable[[str, int, str], Awaitable[Path]]  # sha256, size, name -> verified file
Publish = Callable[[str, str], Awaitable[Any]]  # namespace, kubeconfig -> stored as a sealed Secret


def section_key(section: dict[str, Any]) -> str:
    """What makes a new run: everything but ``retry`` (which resumes the current one)."""
    body = {k: v for k, v in section.items() if k != "retry"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _rfc3339(t: float) -> str:
    # Milliseconds: a phase of a sped-up sim (or a skipped one) lasts less than a second.
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fresh(key: str = "", retry: int = 0) -> dict[str, Any]:
    return {
        "key": key,
        "retry": retry,
        "phase": PHASES[0],
        "state": "Running" if key else "Idle",
        "reason": None,
        "phases": {},
        "nodes": {},  # node -> {state, role, osImage, packages, reason}; survives new runs
        "artifacts": [],
        "cluster": None,  # {endpoint, members}
        "containers": [],
        "alarms": {},  # alarm id -> raisedAt
    }


class InfraExecutor:
    def __init__(
        self,
        metal: BareMetal,
        *,
        state_file: Path | None = None,
        fetch: Fetch | None = None,
        publish: Publish | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.metal = metal
        self.fetch = fetch
        self.publish = publish
        self.now = now
        self.state_file: Path | None = None
        self.st: dict[str, Any] = _fresh()
        self.desired: dict[str, Any] | None = None
        self.hosts: dict[str, DiscoveredNode] = {}
        self.cluster: ClusterInfo | None = None
        # Set when the item (state, reason) changes (for a caller that waits on progress; the
        # agent core re-applies every second while the item is in progress instead).
        self.changed = asyncio.Event()
        self._last_item: ItemStatus | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        if state_file is not None:
            self.load(state_file)

    # -- persistence --------------------------------------------------------------------------

    def load(self, state_file: Path) -> None:
        """Resume from ``state_file`` (a run under way continues from its phase)."""
        self.state_file = state_file
        try:
            data = json.loads(state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", state_file, exc)
            return
        if isinstance(data, dict) and isinstance(data.get("nodes"), dict):
            self.st = {**_fresh(), **data}

    def _save(self) -> None:
        item = self.item()
        if item != self._last_item:
            self._last_item = item
            self.changed.set()
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.st, f, sort_keys=True)
        tmp.replace(self.state_file)

    # -- the driver's side -----------------------------------------------------------------------

    def apply(self, section: Any) -> list[ItemStatus]:
        if not isinstance(section, dict):
            self.desired = None
            return []
        self.desired = section
        self._ensure_runner()
        assert self._wake is not None
        self._wake.set()
        return [self.item()]

    def item(self) -> ItemStatus:
        section = self.desired or {}
        name = str(section.get("source") or "inventory")
        st = self.st
        if (
            st["key"] != section_key(section)
            or (st["state"] == "Failed" and int(section.get("retry") or 0) > st["retry"])
            or (not section.get("source") and st["phase"] != NODES_ONLY)
        ):
            return ItemStatus(SECTION, name, "InProgress", "starting")
        if st["state"] == "Succeeded":
            return ItemStatus(SECTION, name, "Applied")
        if st["state"] == "Failed":
            return ItemStatus(SECTION, name, "Failed", f"phase {st['phase']} failed: {st['reason']}")
        return ItemStatus(SECTION, name, "InProgress", st["reason"] or f"phase {st['phase']}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _ensure_runner(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._runner(), name="infra-pipeline")

    async def _runner(self) -> None:
        assert self._wake is not None
        while True:
            section = self.desired
            if section is not None:
                try:
                    await self._step_machine(section)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a driver bug fails the phase, never the agent
                    log.exception("infra pipeline crashed")
                    self._fail(f"driver error: {exc}")
            if self.desired is section:
                await self._wake.wait()
                self._wake.clear()

    # -- the state machine ----------------------------------------------------------------------

    async def _step_machine(self, section: dict[str, Any]) -> None:
        key, retry = section_key(section), int(section.get("retry") or 0)
        nodes_only = not section.get("source")
        st = self.st
        # (A nodes-only section whose run is at a pipeline phase: state left by an agent that
        # ran the phases for it; it starts over as what it is.)
        if st["key"] != key or (nodes_only and st["phase"] != NODES_ONLY):
            kept = {k: st[k] for k in ("nodes", "artifacts", "cluster", "containers", "alarms")}
            self.st = st = {**_fresh(key, retry), **kept}
            if nodes_only:
                st["phase"] = NODES_ONLY
            self._save()
        elif st["state"] == "Failed" and retry > st["retry"]:
            log.info("infra: retrying from phase %s", st["phase"])
            st |= {"retry": retry, "state": "Running", "reason": None}
            self._save()
        if st["state"] != "Running":
            return
        if not self.hosts:
            self.hosts = {h.name: h for h in await self.metal.discover()}
        if nodes_only:
            try:
                await self._reconcile_nodes(section)
            except StepFailed as exc:
                self._fail(exc.reason)
                return
            st |= {"state": "Succeeded", "reason": None}
            self._save()
            return
        if blocked := section.get("blocked"):
            st["reason"] = f"waiting: {blocked}"  # a new section (the artifact Ready) moves on
            self._save()
            return
        try:
            await self._reconcile_nodes(section)
            while st["phase"] != DONE:
                if self.desired is not section:
                    return  # a newer section: the runner starts over with it
                phase = st["phase"]
                st["phases"][phase] = {"state": "Running", "startedAt": _rfc3339(self.now())}
                st["reason"] = None
                self._save()
                step = getattr(self, f"_phase_{phase}")
                nxt, skipped = await step(section)
                st["phases"][phase] |= {
                    "state": "Skipped" if skipped else "Succeeded",
                    "finishedAt": _rfc3339(self.now()),
                }
                st["phase"] = nxt
                self._save()
        except StepFailed as exc:
            self._fail(exc.reason)
            return
        st["state"] = "Succeeded"
        self._save()

    def _fail(self, reason: str) -> None:
        st = self.st
        st |= {"state": "Failed", "reason": reason}
        if st["phase"] in PHASES:
            st["phases"].setdefault(st["phase"], {})
            st["phases"][st["phase"]] |= {"state": "Failed", "reason": reason}
            st["phases"][st["phase"]]["finishedAt"] = _rfc3339(self.now())
        self._save()

    def _intended(self, section: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {str(n["name"]): n for n in section.get("nodes") or [] if isinstance(n, dict)}

    def _node(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = self.st["nodes"].setdefault(name, {"state": "discovered", "packages": []})
        return node

    def _workable(self, section: dict[str, Any]) -> dict[str, str]:
        """``{node: role}`` of the intended nodes that are racked and not locked."""
        out = {}
        for name, spec in self._intended(section).items():
            if name in self.hosts and not spec.get("locked"):
                out[name] = str(spec.get("role") or "worker")
        return out

    async def _on_nodes(
        self, section: dict[str, Any], nodes: list[str], work: Callable[[str], Awaitable[None]]
    ) -> None:
        """``work`` on every node, at most ``workers`` at once; failures name their nodes."""
        limit = asyncio.Semaphore(max(1, int(section.get("workers") or 4)))
        failed: list[str] = []

        async def one(name: str) -> None:
            async with limit:
                node = self._node(name)
                node |= {"state": "provisioning", "reason": None}
                self._save()
                try:
                    await work(name)
                except StepFailed as exc:
                    node |= {"state": "failed", "reason": exc.reason}
                    failed.append(exc.reason)
                self._save()

        await asyncio.gather(*(one(n) for n in sorted(nodes)))
        if failed:
            raise StepFailed(f"{len(failed)} of {len(nodes)} nodes failed: " + "; ".join(sorted(failed)))

    async def _reconcile_nodes(self, section: dict[str, Any]) -> None:
        intended = self._intended(section)
        # A node is known once a phase touched it; a locked one is, whether or not one has.
        locked = {n for n, spec in intended.items() if spec.get("locked") and n in self.hosts}
        for name in sorted(set(self.st["nodes"]) | locked):
            node, spec = self._node(name), intended.get(name)
            untouched = node.get("state") == "discovered" and not node.get("osImage")
            if spec is None and untouched:
                continue  # never provisioned: nothing to drain or wipe
            if spec is None and node.get("state") != "removed":
                self.st["reason"] = f"draining and releasing {name}"
                self._save()
                await self.metal.release(name)
                node |= {"state": "removed", "osImage": None, "packages": [], "reason": None}
            elif spec is not None and spec.get("locked") and node.get("state") != "locked":
                self.st["reason"] = f"draining {name} to lock it"
                self._save()
                await self.metal.drain(name)
                node |= {"state": "locked", "reason": "locked for maintenance"}
            elif spec is not None and not spec.get("locked") and node.get("state") == "locked":
                await self.metal.uncordon(name)
                node |= {"state": "ready" if node.get("osImage") else "discovered", "reason": None}
            self._save()
        for name in intended:
            if name in self.hosts and self._node(name).get("state") == "removed":
                self._node(name)["state"] = "discovered"  # listed again: provision it afresh

    async def _phase_upload(self, section: dict[str, Any]) -> tuple[str, bool]:
        wanted = [a for a in section.get("artifacts") or [] if isinstance(a, dict)]
        held = set(self.st["artifacts"])
        missing = [a for a in wanted if a["sha256"] not in held]
        if missing and self.fetch is None:
            raise StepFailed("this agent has no artifact store to download into")
        if missing:
            total = sum(int(a["size"]) for a in missing)
            self.st["reason"] = f"downloading {len(missing)} artifacts ({total} bytes)"
            self._save()
        limit = asyncio.Semaphore(DOWNLOADS)

        async def one(art: dict[str, Any]) -> None:
            async with limit:
                try:
                    assert self.fetch is not None
                    await self.fetch(str(art["sha256"]), int(art["size"]), str(art["name"]))
                except Exception as exc:  # ArtifactError, transport errors: the phase fails
                    raise StepFailed(f"download of {art['name']} failed: {exc}") from exc
                self.st["artifacts"] = sorted({*self.st["artifacts"], art["sha256"]})

        results = await asyncio.gather(*(one(a) for a in missing), return_exceptions=True)
        self._save()  # what did arrive is kept: a retry downloads only the rest
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return "os", not missing

    async def _artifact(self, entry: dict[str, Any]) -> Artifact:
        path = Path()
        if self.fetch is not None:  # already verified and cached: returns at once
            path = await self.fetch(str(entry["sha256"]), int(entry["size"]), str(entry["name"]))
        return Artifact(str(entry["name"]), str(entry["type"]), str(entry["version"]), entry["sha256"], path)

    async def _phase_os(self, section: dict[str, Any]) -> tuple[str, bool]:
        entry = section.get("osImage")
        if not isinstance(entry, dict):
            return "packages", True
        image = await self._artifact(entry)
        nodes = self._workable(section)
        todo = [
            n
            for n, role in nodes.items()
            if self._node(n).get("osImage") != image.version or self._node(n).get("role") != role
        ]

        async def install(name: str) -> None:
            await self.metal.install_os(name, nodes[name], image)
            # A fresh OS: nothing installed on it yet.
            self._node(name).update(osImage=image.version, role=nodes[name], packages=[])

        await self._on_nodes(section, todo, install)
        return "packages", not todo

    async def _phase_packages(self, section: dict[str, Any]) -> tuple[str, bool]:
        entries = [e for e in section.get("packages") or [] if isinstance(e, dict)]
        wanted = sorted(e["sha256"] for e in entries)
        packages = [await self._artifact(e) for e in entries]
        todo = [
            n
            for n in self._workable(section)
            if self._node(n).get("osImage") and self._node(n).get("packages") != wanted
        ]

        async def install(name: str) -> None:
            await self.metal.install_packages(name, packages)
            self._node(name)["packages"] = wanted

        await self._on_nodes(section, todo, install)
        for name in self._workable(section):
            node = self._node(name)
            if node.get("osImage") and node.get("state") in ("provisioning", "discovered"):
                node["state"] = "ready" if not section.get("cluster", True) else "provisioning"
        return "cluster", not todo

    async def _phase_cluster(self, section: dict[str, Any]) -> tuple[str, bool]:
        if not section.get("cluster", True):
            return "containers", True
        members = {n: r for n, r in self._workable(section).items() if self._node(n).get("osImage")}
        if "controller" not in members.values():
            raise StepFailed(self._no_controller(section))
        known = self.st["cluster"] or {}
        if known.get("members") == members and (self.cluster is not None or known.get("endpoint")):
            skipped = True
        else:
            self.st["reason"] = f"bringing up the application cluster on {len(members)} nodes"
            self._save()
            self.cluster = await self.metal.bring_up_cluster(members)
            self.st["cluster"] = {"endpoint": self.cluster.endpoint, "members": members}
            skipped = False
        if self.cluster is not None and not self.st["cluster"].get("published") and self.publish is not None:
            # The kubeconfig goes to the control plane as a sealed Secret, never into the status.
            namespace = str(section.get("source") or "").partition("/")[0]
            try:
                await self.publish(namespace, self.cluster.kubeconfig)
            except Exception as exc:
                raise StepFailed(f"could not hand the kubeconfig over: {exc}") from exc
            self.st["cluster"]["published"] = True
            skipped = False
        for name in members:
            self._node(name).update(state="ready", reason=None)
        return "containers", skipped

    def _no_controller(self, section: dict[str, Any]) -> str:
        """Why the application cluster has no controller to start from, precisely."""
        listed = sorted(n for n, s in self._intended(section).items() if s.get("role") == "controller")
        if not listed:
            return "the application cluster needs a controller node: the inventory lists none"
        workable = self._workable(section)
        usable = [n for n in listed if workable.get(n) == "controller"]
        if not usable:
            return f"no controller node is in service (locked or not on site: {', '.join(listed)})"
        why = "" if section.get("osImage") else "; the pipeline names no osImage"
        return f"no controller node has an installed OS ({', '.join(usable)}{why})"

    async def _phase_containers(self, section: dict[str, Any]) -> tuple[str, bool]:
        entries = [e for e in section.get("containerPackages") or [] if isinstance(e, dict)]
        wanted = sorted(e["sha256"] for e in entries)
        if wanted == self.st["containers"]:
            return DONE, True
        known = self.st["cluster"] or {}
        members = len(known.get("members") or {})
        cluster = self.cluster or ClusterInfo(str(known.get("endpoint") or ""), "", members)
        await self.metal.install_container_packages(cluster, [await self._artifact(e) for e in entries])
        self.st["containers"] = wanted
        return DONE, False

    # -- what the site reports ----------------------------------------------------------------------

    def report(self) -> dict[str, Any] | None:
        if self.desired is None and not self.st["nodes"]:
            return None
        st = self.st
        intended = self._intended(self.desired or {})
        nodes = []
        for name in sorted(set(self.hosts) | set(st["nodes"])):
            node = st["nodes"].get(name) or {}
            out: dict[str, Any] = {"name": name, "state": node.get("state") or "discovered"}
            if node.get("role"):
                out["role"] = node["role"]
            if node.get("reason"):
                out["reason"] = node["reason"]
            if name in self.hosts:
                out["hardware"] = self.hosts[name].hardware()
            if node.get("osImage"):
                out["osImage"] = node["osImage"]
            out["packages"] = list(node.get("packages") or [])
            nodes.append(out)
        phases = []
        for phase in PHASES:
            rec = st["phases"].get(phase) or {}
            phases.append({"name": phase, "state": rec.get("state") or "Pending"} | _some(rec))
        report: dict[str, Any] = {
            "nodes": nodes,
            "artifacts": list(st["artifacts"]),
            "alarms": self._alarms(intended),
        }
        if (self.desired or {}).get("source"):  # a site with an inventory only has no pipeline
            report["pipeline"] = {
                "source": (self.desired or {}).get("source"),
                "revision": _revision(self.desired or {}),
                "retry": st["retry"],
                "phase": st["phase"],
                "state": st["state"],
                "reason": st["reason"],
                "phases": phases,
            }
        if st["cluster"]:
            report["cluster"] = {
                "endpoint": st["cluster"].get("endpoint"),
                "ready": bool(st["cluster"].get("endpoint")),
                "nodes": len(st["cluster"].get("members") or {}),
            }
        return report

    def _alarms(self, intended: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Alarms derived from the site's state; ``raisedAt`` kept from their first sighting."""
        found: list[tuple[str, str, str, str]] = []  # id, severity, resource, message
        for name, node in sorted(self.st["nodes"].items()):
            if node.get("state") == "failed":
                found.append((f"node-failed-{name}", "major", name, str(node.get("reason") or "failed")))
            if node.get("state") == "locked":
                found.append((f"node-locked-{name}", "warning", name, "locked for maintenance"))
        if self.hosts:
            for name in sorted(set(intended) - set(self.hosts)):
                found.append((f"node-missing-{name}", "minor", name, "listed in the inventory, not on site"))
        if self.st["state"] == "Failed" and self.st["phase"] == NODES_ONLY:
            # No pipeline: draining, putting back or releasing a node failed.
            found.append(("nodes-failed", "major", NODES_ONLY, str(self.st["reason"])))
        elif self.st["state"] == "Failed":
            found.append(("pipeline-failed", "critical", str(self.st["phase"]), str(self.st["reason"])))
        raised = self.st["alarms"]
        now = _rfc3339(self.now())
        ids = {a[0] for a in found}
        for stale in set(raised) - ids:
            del raised[stale]
        out = []
        for ident, severity, resource, message in found:
            raised.setdefault(ident, now)
            out.append(
                {
                    "id": ident,
                    "severity": severity,
                    "resource": resource,
                    "message": message[:4096],
                    "raisedAt": raised[ident],
                }
            )
        return out


def _some(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("reason", "startedAt", "finishedAt") if rec.get(k)}


def _revision(section: dict[str, Any]) -> int:
    revisions = section.get("revisions") or {}
    return int(revisions.get(section.get("source"), 0)) if isinstance(revisions, dict) else 0
