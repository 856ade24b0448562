"""The ``infra`` manifest section: a site's intended nodes and the pipeline its nodes run.

Unlike the other sections it needs objects that are not intents: the site's
``SiteInventory`` (nodes, roles, locks, the retry counter) and the ``Artifact`` objects the
pipeline names (their digests and sizes, so the site downloads by hash). The compile keeps
them in an :class:`InfraContext` (one per ``ManifestState``) fed by the compile's watch; a
change to an inventory recompiles its site, a change to an artifact the sites whose last
compile referenced it.

Conflict rule: when several ``InfraPipeline`` intents target one site, the first by
``namespace/name`` wins and the others are listed under ``superseded`` (a site has one
software stack). An artifact that is missing, of the wrong type or not ``Ready`` does not
reach the site; the section says ``blocked`` instead, and the site's pipeline waits with
that reason (docs/infrastructure.md).
"""

from __future__ import annotations

from typing import Any

from fleetplane.core.objects import Obj
from fleetplane.core.store import Event, EventType
from fleetplane.kinds.artifact import ARTIFACT
from fleetplane.kinds.infra import INFRA_PIPELINE, SITE_INVENTORY
from fleetplane.kinds.intents import SHARED_NAMESPACE, parse_ref

__all__ = ["SECTION", "InfraContext", "InfraContributor"]

SECTION = "infra"
SiteKey = tuple[str, str]
ArtKey = tuple[str, str, str]  # tenant, namespace, name
_WANTED_TYPE = {"osImage": "os-image", "packages": "package", "containerPackages": "container-package"}


def _source(intent: Obj) -> str:
    m = intent["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


class InfraContext:
    """Inventories and artifacts, in memory, for one compile state."""

    kinds = (SITE_INVENTORY.kind, ARTIFACT.kind)

    def __init__(self) -> None:
        self.inventories: dict[SiteKey, dict[str, Any]] = {}
        self.artifacts: dict[ArtKey, Obj] = {}
        self.referenced: dict[ArtKey, set[str]] = {}  # artifact -> sites whose section named it

    def apply(self, ev: Event) -> set[SiteKey]:
        if ev.kind == SITE_INVENTORY.kind:
            key = (ev.tenant, ev.name)
            if ev.type is EventType.DELETED:
                return {key} if self.inventories.pop(key, None) is not None else set()
            spec = ev.object.get("spec") or {}
            if self.inventories.get(key) == spec:
                return set()  # a status write by the infra controller
            self.inventories[key] = spec
            return {key}
        if ev.kind == ARTIFACT.kind:
            akey = (ev.tenant, ev.namespace, ev.name)
            before = self.artifacts.get(akey)
            if ev.type is EventType.DELETED:
                self.artifacts.pop(akey, None)
            else:
                self.artifacts[akey] = ev.object
                if before is not None and _resolved(before) == _resolved(ev.object):
                    return set()
            return {(ev.tenant, site) for site in self.referenced.get(akey, ())}
        return set()

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        meta = site.get("metadata") or {}
        tenant, name = str(meta.get("tenant") or ""), str(meta.get("name") or "")
        inventory = self.inventories.get((tenant, name))
        if not intents and inventory is None:
            return None
        section: dict[str, Any] = {
            "nodes": list((inventory or {}).get("nodes") or []),
            "retry": int((inventory or {}).get("retry") or 0),
        }
        if intents:
            section |= self._pipeline(tenant, name, intents[0])
            if len(intents) > 1:
                section["superseded"] = [_source(i) for i in intents[1:]]
            section["revisions"] = {_source(i): int(i["metadata"].get("generation") or 1) for i in intents}
        return section

    def _pipeline(self, tenant: str, site: str, intent: Obj) -> dict[str, Any]:
        spec = intent.get("spec") or {}
        own = str(intent["metadata"].get("namespace") or "")
        out: dict[str, Any] = {
            "source": _source(intent),
            "cluster": bool(spec.get("cluster", True)),
            "workers": int(spec.get("workers") or 4),
        }
        blocked: list[str] = []
        artifacts: list[dict[str, Any]] = []
        for field, wanted in _WANTED_TYPE.items():
            value = spec.get(field)
            refs = [value] if isinstance(value, str) else [r for r in value or [] if isinstance(r, str)]
            resolved = []
            for ref in refs:
                entry, why = self._resolve(tenant, own, site, ref, wanted)
                if why:
                    blocked.append(why)
                elif entry is not None:
                    resolved.append(entry)
                    if entry["sha256"] not in {a["sha256"] for a in artifacts}:
                        artifacts.append(entry)
            out[field] = (resolved[0] if resolved else None) if field == "osImage" else resolved
        out["artifacts"] = artifacts
        if blocked:
            out["blocked"] = "; ".join(blocked)
        return out

    def _resolve(
        self, tenant: str, own: str, site: str, ref: str, wanted: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        ns, name = parse_ref(ref, own)
        if ns not in (own, SHARED_NAMESPACE):
            return None, f"artifact {ref!r} is outside the pipeline's namespace"
        key = (tenant, ns, name)
        self.referenced.setdefault(key, set()).add(site)
        obj = self.artifacts.get(key)
        if obj is None:
            return None, f"artifact {ns}/{name} does not exist"
        kind, version, phase, sha, size = _resolved(obj)
        if kind != wanted:
            return None, f"artifact {ns}/{name} has type {kind}, not {wanted}"
        if phase != "Ready" or not sha:
            return None, f"artifact {ns}/{name} is not Ready ({phase or 'no status'})"
        return {"name": f"{ns}/{name}", "type": kind, "version": version, "sha256": sha, "size": size}, None


def _resolved(obj: Obj) -> tuple[str, str, str, str, int]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return (
        str(spec.get("type") or ""),
        str(spec.get("version") or ""),
        str(status.get("phase") or ""),
        str(status.get("sha256") or ""),
        int(status.get("size") or 0),
    )


class InfraContributor:
    """``infra``: registered in ``controllers/sections.py``; the compile asks it for a fresh
    :class:`InfraContext` (``new_context``) and compiles the section through that."""

    kind = INFRA_PIPELINE.kind
    section = SECTION
    context_kinds = InfraContext.kinds

    def new_context(self) -> InfraContext:
        return InfraContext()

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        # Without a context (e.g. a dry-run plan): the pipeline only, nothing resolved.
        return InfraContext().contribute(intents, site)
