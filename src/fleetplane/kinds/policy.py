"""Policy intents: ``NetworkPolicy`` (L3/L4 egress and ingress by domain, CIDR, protocol and
port) and ``ServicePolicy`` (L7 between workloads by namespace, labels, HTTP method and path).

Both are ordered rule lists (the first matching rule decides, else the default action), apply
to virtual sites like every intent (``kinds/intents.py``), and carry fleet-wide hit counts in
their status, summed from the sites' ``status.policyHits`` by ``controllers/policy_hits.py``.
Hit keys are ``<namespace>/<policy>/<rule>``; flows matching no rule count on the default keys
below. See docs/site-manifest.md, "Policy sections".
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from fleetplane.core.errors import Cause
from fleetplane.core.names import validate_dns1123_label, validate_dns1123_subdomain
from fleetplane.core.objects import Obj
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema, SelectorField
from fleetplane.kinds.intents import IntentSpec, check_visible_targets

__all__ = [
    "DEFAULT_KEYS",
    "DIRECTIONS",
    "NETWORK_POLICY",
    "POLICY_KINDS",
    "SERVICE_POLICY",
    "governed_directions",
]

Action = Literal["allow", "deny"]
Direction = Literal["egress", "ingress"]
DIRECTIONS: tuple[Direction, ...] = ("egress", "ingress")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
# The rule names that count what no rule matched (one per governed direction for a
# NetworkPolicy, whose default action is per direction); refused as rule names.
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "NetworkPolicy": ("default-egress", "default-ingress"),
    "ServicePolicy": ("default",),
}
_RESERVED = frozenset({"default", "default-egress", "default-ingress"})
MAX_RULES = 256


def _rule_name(value: str) -> str:
    if problems := validate_dns1123_label(value):
        raise ValueError("; ".join(problems))
    if value in _RESERVED:
        raise ValueError(f'"{value}" is reserved for the hits of the default action')
    return value


def _domain(value: str) -> str:
    """``github.com`` (exactly that name) or ``*.github.com`` (its subdomains only)."""
    name = value.lower().removesuffix(".")
    bare = name.removeprefix("*.")
    if "*" in bare:
        raise ValueError(f'{value!r}: a wildcard is only allowed as a leading "*." label')
    if problems := validate_dns1123_subdomain(bare):
        raise ValueError(f"{value!r} is not a domain name: " + "; ".join(problems))
    if any(len(label) > 63 for label in bare.split(".")):
        raise ValueError(f"{value!r}: a domain label has at most 63 characters")
    if name.startswith("*.") and "." not in bare:
        raise ValueError(f"{value!r}: a wildcard must stand above a domain, e.g. *.example.com")
    return name


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        hint = ""
        with contextlib.suppress(ValueError):  # host bits set: name the network meant
            hint = f" (did you mean {ipaddress.ip_network(value, strict=False)}?)"
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or CIDR: {exc}{hint}") from None
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _path_prefix(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f'{value!r}: a path prefix starts with "/" and has no spaces, "?" or "#"')
    return value


RuleName = Annotated[str, Field(max_length=63), AfterValidator(_rule_name)]
Domain = Annotated[str, Field(max_length=255), AfterValidator(_domain)]
Cidr = Annotated[str, Field(max_length=64), AfterValidator(_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]
Protocol = Annotated[Literal["TCP", "UDP", "ICMP", "ANY"], BeforeValidator(_upper)]
Method = Annotated[
    Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"],
    BeforeValidator(_upper),
]
PathPrefix = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_path_prefix)]


class PolicyPortRange(Schema):
    start: Port
    end: Port

    @model_validator(mode="after")
    def _ordered(self) -> PolicyPortRange:
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be above end ({self.end})")
        return self


class NetworkPolicyRule(Schema):
    """Matches a flow whose protocol, port and peer match; a matcher left empty matches all."""

    name: RuleName
    action: Action
    domains: list[Domain] = Field(default_factory=list, max_length=256)
    cidrs: list[Cidr] = Field(default_factory=list, max_length=256)
    protocol: Protocol = "ANY"
    ports: list[Port] = Field(default_factory=list, max_length=64)
    portRanges: list[PolicyPortRange] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _ports_need_a_port_protocol(self) -> NetworkPolicyRule:
        if self.protocol == "ICMP" and (self.ports or self.portRanges):
            raise ValueError("ICMP has no ports: drop ports/portRanges or use TCP, UDP or ANY")
        return self


class NetworkDefaultActions(Schema):
    """Per direction; a direction with neither rules nor a default action is not governed."""

    egress: Action | None = None
    ingress: Action | None = None


class NetworkPolicySpec(IntentSpec):
    egress: list[NetworkPolicyRule] = Field(default_factory=list, max_length=MAX_RULES)
    ingress: list[NetworkPolicyRule] = Field(default_factory=list, max_length=MAX_RULES)
    defaultAction: NetworkDefaultActions = Field(default_factory=NetworkDefaultActions)
    description: str | None = Field(default=None, max_length=4096)


def _namespace(value: str) -> str:
    if problems := validate_dns1123_label(value):
        raise ValueError(f"{value!r}: " + "; ".join(problems))
    return value


class PolicyWorkloads(SelectorField):
    """Workloads in any of ``namespaces`` (none listed: any) whose labels match ``selector``."""

    namespaces: list[Annotated[str, AfterValidator(_namespace)]] = Field(default_factory=list, max_length=64)


class ServicePolicyRule(Schema):
    name: RuleName
    action: Action
    source: PolicyWorkloads = Field(default_factory=PolicyWorkloads)
    destination: PolicyWorkloads = Field(default_factory=PolicyWorkloads)
    methods: list[Method] = Field(default_factory=list, max_length=len(HTTP_METHODS))
    pathPrefixes: list[PathPrefix] = Field(default_factory=list, max_length=64)


class ServicePolicySpec(IntentSpec):
    rules: list[ServicePolicyRule] = Field(default_factory=list, max_length=MAX_RULES)
    defaultAction: Action = "allow"
    description: str | None = Field(default=None, max_length=4096)


class PolicySiteHits(Schema):
    site: str
    hits: int = Field(ge=0)


class PolicyStatus(Schema):
    """Written by the hit aggregator: every rule of the observed generation (0 when none
    hit it) plus the default keys, summed over the sites enforcing the policy."""

    observedGeneration: int = 0
    hits: dict[str, int] = Field(default_factory=dict)
    totalHits: int = 0
    topSites: dict[str, list[PolicySiteHits]] = Field(default_factory=dict)  # per rule, at most 5
    sites: int = 0  # sites enforcing the policy (reporting its counters)
    ruleCount: int | None = None  # for `get`: the column paths cannot count a list
    observedAt: str | None = None


def governed_directions(spec: dict[str, object]) -> tuple[Direction, ...]:
    defaults = spec.get("defaultAction")
    defaults = defaults if isinstance(defaults, dict) else {}
    return tuple(d for d in DIRECTIONS if spec.get(d) or defaults.get(d))


def _unique_rule_names(obj: Obj, lists: tuple[str, ...]) -> list[Cause]:
    """Rule names are the hit keys, so they are unique across the whole policy."""
    spec = obj.get("spec") or {}
    seen: dict[str, str] = {}
    causes = []
    for field in lists:
        for i, rule in enumerate(spec.get(field) or []):
            path, name = f"spec.{field}[{i}].name", rule["name"]
            if name in seen:
                message = f'duplicate rule name "{name}" (also {seen[name]})'
                causes.append(Cause(path, message, "FieldValueDuplicate"))
            else:
                seen[name] = path
    return causes


def _check_network_policy(obj: Obj) -> list[Cause]:
    causes = _unique_rule_names(obj, DIRECTIONS)
    if not governed_directions(obj.get("spec") or {}):
        message = "a NetworkPolicy needs egress or ingress rules or a defaultAction"
        causes.append(Cause("spec", message, "FieldValueRequired"))
    return causes


def _check_service_policy(obj: Obj) -> list[Cause]:
    return _unique_rule_names(obj, ("rules",))


_COLUMNS = (
    Column("NAMESPACE", "metadata.namespace"),
    Column("NAME", "metadata.name"),
    Column("VIRTUAL SITES", "spec.virtualSites"),
    Column("SITES", "status.sites"),
    Column("HITS", "status.totalHits"),
    Column("AGE", "metadata.creationTimestamp"),
)

NETWORK_POLICY = KindInfo(
    kind="NetworkPolicy",
    plural="networkpolicies",
    short_names=("netpol", "np"),
    spec_model=NetworkPolicySpec,
    status_model=PolicyStatus,
    scope=Scope.NAMESPACE,
    validators=(check_visible_targets, _check_network_policy),
    columns=(*_COLUMNS[:3], Column("RULES", "status.ruleCount"), *_COLUMNS[3:]),
)

SERVICE_POLICY = KindInfo(
    kind="ServicePolicy",
    plural="servicepolicies",
    short_names=("svcpol", "sp"),
    spec_model=ServicePolicySpec,
    status_model=PolicyStatus,
    scope=Scope.NAMESPACE,
    validators=(check_visible_targets, _check_service_policy),
    columns=(*_COLUMNS[:3], Column("RULES", "status.ruleCount"), *_COLUMNS[3:]),
)

POLICY_KINDS: tuple[KindInfo, ...] = (NETWORK_POLICY, SERVICE_POLICY)
