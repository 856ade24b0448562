"""The ``networkPolicies`` and ``servicePolicies`` manifest sections.

Every policy that targets a site is listed (sorted by ``namespace/name``, as the compile
controller hands them over) with its generation and its rules in order; the site enforces
each one and counts hits under ``<namespace>/<name>/<rule>``. The contributor resolves which
directions a NetworkPolicy governs, so a driver never has to know that rule. See
docs/site-manifest.md, "Policy sections".
"""

from __future__ import annotations

from typing import Any

from fleetplane.core.objects import Obj
from fleetplane.kinds.policy import DIRECTIONS, NETWORK_POLICY, SERVICE_POLICY, governed_directions


def source_of(intent: Obj) -> str:
    # Not imported from controllers.sections: that module imports this one to register it.
    m = intent["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


def _generation(intent: Obj) -> int:
    return int((intent.get("metadata") or {}).get("generation") or 1)


class NetworkPolicyContributor:
    """``networkPolicies``: ``{policies: [{policy, generation, egress?, ingress?}]}`` where a
    governed direction is ``{defaultAction, rules}`` (ungoverned directions are absent)."""

    kind = NETWORK_POLICY.kind
    section = "networkPolicies"
    items_per_intent = True  # a site reports one item per policy, named namespace/name

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        entries = []
        for intent in intents:
            spec = intent.get("spec") or {}
            defaults = spec.get("defaultAction") or {}
            entry: dict[str, Any] = {"policy": source_of(intent), "generation": _generation(intent)}
            for direction in governed_directions(spec):
                entry[direction] = {
                    # An unset default with rules: the rules are exceptions to "allow".
                    "defaultAction": defaults.get(direction) or "allow",
                    "rules": list(spec.get(direction) or []),
                }
            if any(d in entry for d in DIRECTIONS):
                entries.append(entry)
        return {"policies": entries} if entries else None


class ServicePolicyContributor:
    """``servicePolicies``: ``{policies: [{policy, generation, defaultAction, rules}]}``."""

    kind = SERVICE_POLICY.kind
    section = "servicePolicies"
    items_per_intent = True

    def contribute(self, intents: list[Obj], site: Obj) -> dict[str, Any] | None:
        entries = [
            {
                "policy": source_of(intent),
                "generation": _generation(intent),
                "defaultAction": (intent.get("spec") or {}).get("defaultAction") or "allow",
                "rules": list((intent.get("spec") or {}).get("rules") or []),
            }
            for intent in intents
        ]
        return {"policies": entries} if entries else None
