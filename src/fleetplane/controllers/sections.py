"""Manifest sections: how each intent kind contributes to a site's compiled manifest.

A ``SectionContributor`` turns every intent of its kind that targets a site into that
site's section (``docs/site-manifest.md``). Adding an intent kind means registering its
kind (``kinds/intents.py``) and one contributor here; the compile controller
(``controllers/manifests.py``) stays generic.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import orjson

from fleetplane.controllers.infra_sections import InfraContributor
from fleetplane.controllers.os_sections import OsContributor
from fleetplane.controllers.policy_sections import NetworkPolicyContributor, ServicePolicyContributor
from fleetplane.controllers.workload_sections import WorkloadContributor
from fleetplane.core.objects import Obj
from fleetplane.core.quantity import QuantityError, cpu_millis, memory_bytes
from fleetplane.kinds.intents import SHARED_NAMESPACE, parse_ref

VsKey = tuple[str, str, str]  # tenant, namespace, name
IntentKey = tuple[str, str, str]  # tenant, namespace, name


class SectionContributor(Protocol):
    kind: str  # the intent kind, e.g. "ResourceReservation"
    section: str  # the manifest section, e.g. "reservations"

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        """The section for one site from every intent of this kind that targets it
        (sorted by namespace/name); None when nothing applies."""
        ...


def source_of(intent: Obj) -> str:
    m = intent["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


def generation_of(intent: Obj) -> int:
    """The revision of the intent that is compiled (an older one while a rollout has not
    reached the site): the compile hands contributors each revision as an object whose
    ``metadata.generation`` is that revision."""
    return int((intent.get("metadata") or {}).get("generation") or 1)


def section_revisions(section: dict[str, Any]) -> dict[str, int]:
    """``{namespace/name: revision}`` of every intent a compiled section carries: the
    ``revisions`` map (reservations, os) or the ``policies`` entries (policy sections)."""
    revisions = section.get("revisions")
    if isinstance(revisions, dict):
        return {str(k): int(v) for k, v in revisions.items() if isinstance(v, int)}
    out: dict[str, int] = {}
    for entry in section.get("policies") or []:
        if isinstance(entry, dict) and isinstance(entry.get("generation"), int):
            out[str(entry.get("policy"))] = int(entry["generation"])
    return out


def per_intent_items(contributor: SectionContributor) -> bool:
    """Whether a site reports one item per intent of this section (named ``namespace/name``,
    the policy sections: ``items_per_intent = True``) rather than one for the whole section
    (``reservations``, ``os``)."""
    return bool(getattr(contributor, "items_per_intent", False))


class ReservationContributor:
    """``reservations``: the sum of every ResourceReservation that targets the site."""

    kind = "ResourceReservation"
    section = "reservations"

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        if not intents:
            return None
        cpu = memory = 0
        for intent in intents:
            spec = intent.get("spec") or {}
            try:
                cpu += cpu_millis(spec.get("cpu") or "0")
                memory += memory_bytes(spec.get("memory") or "0")
            except QuantityError:
                continue  # validation refuses these; an old stored one reserves nothing
        return {
            "cpuMillis": cpu,
            "memoryBytes": memory,
            "sources": [source_of(i) for i in intents],
            "revisions": {source_of(i): generation_of(i) for i in intents},
        }


class SectionRegistry:
    """The contributors by intent kind; the compile controller follows exactly these kinds."""

    def __init__(self, contributors: tuple[SectionContributor, ...] = ()) -> None:
        self._by_kind: dict[str, SectionContributor] = {}
        for contributor in contributors:
            self.register(contributor)

    def register(self, contributor: SectionContributor) -> None:
        if contributor.kind in self._by_kind:
            raise ValueError(f"{contributor.kind} already has a section contributor")
        if any(c.section == contributor.section for c in self._by_kind.values()):
            raise ValueError(f'section "{contributor.section}" is already contributed')
        self._by_kind[contributor.kind] = contributor

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_kind))

    def get(self, kind: str) -> SectionContributor:
        return self._by_kind[kind]

    def all(self) -> list[SectionContributor]:
        return [self._by_kind[k] for k in self.kinds]


SECTIONS = SectionRegistry(
    (
        ReservationContributor(),
        NetworkPolicyContributor(),
        ServicePolicyContributor(),
        OsContributor(),
        InfraContributor(),
        # vK8s fan-out: not an intent kind; the compile feeds it through its FanoutIndex.
        WorkloadContributor(),
    )
)


def targets_of(tenant: str, intent: Obj) -> set[VsKey]:
    """The virtual sites an intent targets, resolved from its namespace; a reference to a
    namespace it may not see (neither its own nor ``shared``) targets nothing."""
    own = (intent.get("metadata") or {}).get("namespace") or ""
    out = set()
    for ref in (intent.get("spec") or {}).get("virtualSites") or []:
        if not isinstance(ref, str):
            continue
        ns, name = parse_ref(ref, own)
        if ns in (own, SHARED_NAMESPACE) and name:
            out.add((tenant, ns, name))
    return out


def manifest_hash(sections: dict[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of ``sections``: sorted keys, no whitespace, UTF-8."""
    return "sha256:" + hashlib.sha256(orjson.dumps(sections, option=orjson.OPT_SORT_KEYS)).hexdigest()
