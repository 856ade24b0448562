"""Intent kinds: declared desired state for virtual sites, compiled into site manifests.

Every intent is namespaced and names its targets in ``spec.virtualSites``: ``"name"`` (a
virtual site of the intent's own namespace), ``"ns/name"`` (only the own namespace or
``shared``, which every namespace sees). ``docs/site-manifest.md`` is the contract.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from fleetplane.core.errors import Cause
from fleetplane.core.names import validate_dns1123_label, validate_dns1123_subdomain
from fleetplane.core.objects import Obj
from fleetplane.core.quantity import QuantityError, cpu_millis, memory_bytes
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema
from fleetplane.kinds.rollout import RolloutStrategy

SHARED_NAMESPACE = "shared"


def parse_ref(ref: str, namespace: str) -> tuple[str, str]:
    """``(namespace, name)`` of a virtual-site reference made from ``namespace``."""
    ns, sep, name = ref.partition("/")
    return (ns, name) if sep else (namespace, ref)


def ref_problems(ref: str) -> list[str]:
    ns, sep, name = ref.partition("/")
    if not sep:
        ns, name = "", ref
    problems = [f"namespace {ns!r}: {m}" for m in (validate_dns1123_label(ns) if sep else [])]
    problems += [f"name {name!r}: {m}" for m in validate_dns1123_subdomain(name)]
    return problems


class IntentSpec(Schema):
    virtualSites: list[str] = Field(min_length=1, max_length=256)
    # How a new revision goes out (docs/rollouts.md); absent: at once to every site.
    strategy: RolloutStrategy | None = None

    @field_validator("virtualSites")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        for ref in value:
            problems = ref_problems(ref)
            if problems:
                raise ValueError(
                    f'virtual site {ref!r} must be "name", "namespace/name" or "shared/name": '
                    + "; ".join(problems)
                )
        return value


def check_visible_targets(obj: Obj) -> list[Cause]:
    """An intent may target its own namespace's virtual sites and ``shared`` ones only."""
    own = (obj.get("metadata") or {}).get("namespace") or ""
    causes = []
    for i, ref in enumerate((obj.get("spec") or {}).get("virtualSites") or []):
        ns, _ = parse_ref(ref, own)
        if ns not in (own, SHARED_NAMESPACE):
            causes.append(
                Cause(
                    f"spec.virtualSites[{i}]",
                    f'{ref!r}: an intent in namespace "{own}" may target only its own namespace\'s '
                    f'virtual sites and "{SHARED_NAMESPACE}/…" ones',
                )
            )
    return causes


class ResourceReservationSpec(IntentSpec):
    cpu: str = Field(default="0", max_length=64)
    memory: str = Field(default="0", max_length=64)
    description: str | None = Field(default=None, max_length=4096)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        try:
            cpu_millis(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        try:
            memory_bytes(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return value


RESOURCE_RESERVATION = KindInfo(
    kind="ResourceReservation",
    plural="resourcereservations",
    short_names=("rr", "reservation", "reservations"),
    spec_model=ResourceReservationSpec,
    scope=Scope.NAMESPACE,
    validators=(check_visible_targets,),
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("VIRTUAL SITES", "spec.virtualSites"),
        Column("CPU", "spec.cpu"),
        Column("MEMORY", "spec.memory"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

# The intent kinds the compile controller follows (each has a SectionContributor).
INTENT_KINDS: tuple[KindInfo, ...] = (RESOURCE_RESERVATION,)
