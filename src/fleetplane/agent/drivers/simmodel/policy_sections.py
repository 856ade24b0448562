"""The ``networkPolicies`` and ``servicePolicies`` manifest sections (docs/site-manifest.md,
"Policy sections") read into the traffic models' policies, with one item per policy: a
malformed entry fails only itself and the others are still enforced."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fleetplane.agent.drivers.base import ItemStatus
from fleetplane.agent.drivers.simmodel.services import ServicePolicy, ServiceRule, WorkloadMatch
from fleetplane.agent.drivers.simmodel.traffic import NetworkPolicy, PolicyAction, Rule
from fleetplane.core.selectors import SelectorError, parse_any

__all__ = ["merged_hits", "network_policies", "service_policies"]

T = TypeVar("T")


def _action(value: Any, what: str = "defaultAction") -> PolicyAction:
    if value not in ("allow", "deny"):
        raise ValueError(f"{what} must be allow or deny, not {value!r}")
    return "allow" if value == "allow" else "deny"


def _strings(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = raw.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(values)


def _read(
    section: str, sections: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], list[T]]
) -> tuple[list[T], list[ItemStatus]]:
    """The policies of every readable entry and one item per entry; an absent section
    enforces nothing."""
    if section not in sections:
        return [], []
    raw = sections[section]
    if not isinstance(raw, Mapping) or not isinstance(raw.get("policies"), list):
        why = f"{section} must be an object with a policies list"
        return [], [ItemStatus(section, section, "Failed", why)]
    policies: list[T] = []
    items = []
    for i, entry in enumerate(raw["policies"]):
        name = entry.get("policy") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name:
            items.append(ItemStatus(section, f"policies[{i}]", "Failed", "an entry must name its policy"))
            continue
        try:
            policies += parse(entry)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            items.append(ItemStatus(section, name, "Failed", f"cannot enforce: {exc}"))
            continue
        items.append(ItemStatus(section, name, "Applied"))
    return policies, items


def _network_rule(direction: str, raw: Any) -> Rule:
    if not isinstance(raw, Mapping):
        raise ValueError("a rule must be an object")
    ports = raw.get("ports") or []
    if not isinstance(ports, list) or not all(isinstance(p, int) for p in ports):
        raise ValueError(f"rule {raw.get('name')}: ports must be a list of integers")
    return Rule(
        str(raw.get("name")),
        direction,  # type: ignore[arg-type]  # Rule refuses anything but egress/ingress
        _action(raw.get("action"), "action"),
        domains=_strings(raw, "domains"),
        cidrs=_strings(raw, "cidrs"),
        protocol=str(raw.get("protocol") or "ANY").lower(),
        ports=tuple(ports),
        port_ranges=tuple((int(r["start"]), int(r["end"])) for r in raw.get("portRanges") or []),
    )


def _network_policy(entry: Mapping[str, Any]) -> list[NetworkPolicy]:
    """One model policy per governed direction, each with its own default counter."""
    out = []
    for direction in ("egress", "ingress"):
        part = entry.get(direction)
        if part is None:
            continue
        out.append(
            NetworkPolicy(
                entry["policy"],
                tuple(_network_rule(direction, r) for r in part.get("rules") or []),
                _action(part.get("defaultAction", "allow")),
                directions=(direction,),
                default_rule=f"default-{direction}",
            )
        )
    return out


def network_policies(sections: Mapping[str, Any]) -> tuple[list[NetworkPolicy], list[ItemStatus]]:
    return _read("networkPolicies", sections, _network_policy)


def _match(raw: Any) -> WorkloadMatch:
    raw = raw if isinstance(raw, Mapping) else {}
    try:
        selector = parse_any(raw.get("selector") or "")
    except SelectorError as exc:
        raise ValueError(f"selector: {exc}") from exc
    return WorkloadMatch(_strings(raw, "namespaces"), selector)


def _service_policy(entry: Mapping[str, Any]) -> list[ServicePolicy]:
    rules = tuple(
        ServiceRule(
            str(r.get("name")),
            r.get("action"),
            _match(r.get("source")),
            _match(r.get("destination")),
            tuple(m.upper() for m in _strings(r, "methods")),
            _strings(r, "pathPrefixes"),
        )
        for r in entry.get("rules") or []
    )
    return [ServicePolicy(entry["policy"], rules, _action(entry.get("defaultAction", "allow")))]


def service_policies(sections: Mapping[str, Any]) -> tuple[list[ServicePolicy], list[ItemStatus]]:
    return _read("servicePolicies", sections, _service_policy)


def merged_hits(*counters: Mapping[str, int]) -> dict[str, int]:
    """One site's counters. A NetworkPolicy and a ServicePolicy of one ``namespace/name``
    that share a rule name share its key, so such counts add up."""
    out: dict[str, int] = {}
    for hits in counters:
        for key, count in hits.items():
            out[key] = out.get(key, 0) + count
    return out
