"""The ``networkPolicies`` section (docs/site-manifest.md, "Policy sections") for the
``host`` driver: each entry read, strictly, into the sim's model (``simmodel.traffic``:
one ``NetworkPolicy`` per governed direction, default counter ``default-<direction>``),
rendered into one nftables ruleset, and the named counters read back as hit keys.

Counter names: hit keys (``<ns>/<policy>/<rule>``, up to ~380 characters) do not fit
nftables object names, so each key maps to ``counter_name(key)``, a deterministic
identifier of at most ``NAME_MAX`` characters (a digest of the key and a readable tail);
``Ruleset.counters`` maps those names back to the keys. The key is also the counter's
comment when it fits the comment limit, so ``nft list ruleset`` stays readable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetplane.agent.drivers.base import ItemStatus
from fleetplane.agent.drivers.simmodel.traffic import Direction, NetworkPolicy, Rule
from fleetplane.core.names import validate_dns1123_label, validate_dns1123_subdomain

__all__ = ["NAME_MAX", "SECTION", "TABLE", "EnforcedPolicy", "Resolver", "Ruleset", "RulesetError"]
__all__ += [
    "counter_name",
    "parse_counters",
    "parse_entry",
    "parse_policy_hits",
    "parse_section",
    "policy_name",
]
__all__ += ["removal_ruleset", "render_ruleset"]

TABLE = "fleetplane"
SECTION = "networkPolicies"
DIRECTIONS: tuple[Direction, ...] = ("egress", "ingress")
PROTOCOLS = ("TCP", "UDP", "ICMP", "ANY")
RESERVED = frozenset({"default", "default-egress", "default-ingress"})
NAME_MAX = 31  # object names: 32 bytes with the NUL on older kernels (256 since 4.14)
COMMENT_MAX = 128  # nftables' limit on a comment
_DOMAIN = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_-]{1,63})*$")

Resolver = Callable[[str], Sequence[str]]


class RulesetError(ValueError):
    """An entry (or the section) cannot be rendered: bad shape or values."""


@dataclasses.dataclass(frozen=True)
class EnforcedPolicy:
    """One entry: ``name`` is ``<namespace>/<name>``, ``parts`` one policy per governed
    direction (egress first). Equal entries keep their counters across reloads; the
    generation is left out on purpose (a retargeted policy keeps counting)."""

    name: str
    parts: tuple[NetworkPolicy, ...]

    def hit_keys(self) -> list[str]:
        return [key for part in self.parts for key in part.hit_keys()]


# --- reading the section -----------------------------------------------------------


def _label(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RulesetError(f"{what} must be a string, not {value!r}")
    if problems := validate_dns1123_label(value):
        raise RulesetError(f"{what} {value!r}: {'; '.join(problems)}")
    return value


def policy_name(value: Any) -> str:
    """``<namespace>/<name>``: a DNS label, a slash, a DNS subdomain."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise RulesetError(f"policy must be <namespace>/<name>, not {value!r}")
    namespace, name = value.split("/")
    _label(namespace, "the policy's namespace")
    if problems := validate_dns1123_subdomain(name):
        raise RulesetError(f"the policy's name {name!r}: {'; '.join(problems)}")
    return value


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = raw.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RulesetError(f"{where}.{key} must be a list of strings")
    return tuple(values)


def _port(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RulesetError(f"{what} must be an integer 1-65535, not {value!r}")
    return value


def _rule(direction: Direction, where: str, raw: Any) -> Rule:
    if not isinstance(raw, Mapping):
        raise RulesetError(f"{where} must be an object")
    name = _label(raw.get("name"), f"{where}.name")
    if name in RESERVED:
        raise RulesetError(f"{where}.name {name!r} is reserved for the default counters")
    action = raw.get("action")
    if action not in ("allow", "deny"):
        raise RulesetError(f"{where}.action must be allow or deny, not {action!r}")
    protocol = raw.get("protocol") or "ANY"
    if not isinstance(protocol, str) or protocol.upper() not in PROTOCOLS:
        raise RulesetError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    domains = tuple(d.lower().removesuffix(".") for d in _strings(raw, "domains", where))
    for domain in domains:
        if not _DOMAIN.match(domain):
            raise RulesetError(f"{where}.domains: {domain!r} is not a domain or *.domain")
    cidrs = _strings(raw, "cidrs", where)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise RulesetError(f"{where}.cidrs: {exc}") from exc
    ports = raw.get("ports") or []
    if not isinstance(ports, list):
        raise RulesetError(f"{where}.ports must be a list of integers 1-65535")
    ranges = raw.get("portRanges") or []
    if not isinstance(ranges, list) or not all(isinstance(r, Mapping) for r in ranges):
        raise RulesetError(f"{where}.portRanges must be a list of {{start, end}}")
    port_ranges = []
    for k, r in enumerate(ranges):
        at = f"{where}.portRanges[{k}]"
        lo, hi = _port(r.get("start"), f"{at}.start"), _port(r.get("end"), f"{at}.end")
        if lo > hi:
            raise RulesetError(f"{at}: start ({lo}) must not be above end ({hi})")
        port_ranges.append((lo, hi))
    if protocol.upper() == "ICMP" and (ports or port_ranges):
        raise RulesetError(f"{where}: ICMP has no ports")
    return Rule(
        name,
        direction,
        "allow" if action == "allow" else "deny",
        domains=domains,
        cidrs=cidrs,
        protocol=protocol.lower(),
        ports=tuple(_port(p, f"{where}.ports[{k}]") for k, p in enumerate(ports)),
        port_ranges=tuple(port_ranges),
    )


def parse_entry(entry: Any) -> EnforcedPolicy:
    """One entry of ``networkPolicies.policies``, or ``RulesetError`` naming the field."""
    if not isinstance(entry, Mapping):
        raise RulesetError("an entry must be an object")
    name = policy_name(entry.get("policy"))
    parts, seen = [], set()
    for direction in DIRECTIONS:
        part = entry.get(direction)
        if part is None:
            continue  # not governed: no chain, no counter
        if not isinstance(part, Mapping) or not isinstance(part.get("rules") or [], list):
            raise RulesetError(f"{direction} must be an object with a rules list")
        default = part.get("defaultAction", "allow")
        if default not in ("allow", "deny"):
            raise RulesetError(f"{direction}.defaultAction must be allow or deny, not {default!r}")
        rules = tuple(
            _rule(direction, f"{direction}.rules[{i}]", r) for i, r in enumerate(part.get("rules") or [])
        )
        for rule in rules:
            if rule.name in seen:
                raise RulesetError(f"rule name {rule.name!r} is used twice (names are unique in a policy)")
            seen.add(rule.name)
        parts.append(
            NetworkPolicy(
                name,
                rules,
                "allow" if default == "allow" else "deny",
                directions=(direction,),
                default_rule=f"default-{direction}",
            )
        )
    return EnforcedPolicy(name, tuple(parts))


def parse_section(section: Any) -> list[EnforcedPolicy | ItemStatus]:
    """Every entry in order: its policy, or a ``Failed`` item saying why it cannot be
    enforced (it fails alone). A section of the wrong shape is one ``Failed`` item."""
    if not isinstance(section, Mapping) or not isinstance(section.get("policies"), list):
        return [ItemStatus(SECTION, SECTION, "Failed", f"{SECTION} must be an object with a policies list")]
    out: list[EnforcedPolicy | ItemStatus] = []
    seen: set[str] = set()
    for i, entry in enumerate(section["policies"]):
        name = entry.get("policy") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name:
            out.append(ItemStatus(SECTION, f"policies[{i}]", "Failed", "an entry must name its policy"))
            continue
        if name in seen:
            out.append(ItemStatus(SECTION, name, "Failed", f"cannot enforce: policy {name} is listed twice"))
            continue
        seen.add(name)
        try:
            out.append(parse_entry(entry))
        except (ValueError, TypeError) as exc:  # RulesetError, or the model refusing
            out.append(ItemStatus(SECTION, name, "Failed", f"cannot enforce: {exc}"))
    return out


# --- rendering ---------------------------------------------------------------------


def counter_name(key: str) -> str:
    """The nftables name of hit key ``key``: ``c`` + 10 hex digits of its SHA-256 + ``_``
    + the key's last part (the rule), lower-cased to ``[a-z0-9_]``; at most ``NAME_MAX``
    characters and a valid bare identifier."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    tail = re.sub(r"[^a-z0-9]+", "_", key.rsplit("/", 1)[-1].lower()).strip("_")
    return f"c{digest}_{tail}"[:NAME_MAX].rstrip("_")


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """An ``nft -f`` file and its counters (nftables name -> hit key)."""

    text: str
    counters: Mapping[str, str]


def _intervals(rule: Rule) -> list[str]:
    """Ports and port ranges as disjoint, sorted nftables elements (``22``, ``80-90``)."""
    spans = sorted([(p, p) for p in rule.ports] + list(rule.port_ranges))
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged]


def _proto_match(rule: Rule) -> str:
    elements = ", ".join(_intervals(rule))
    ports = f"th dport {{ {elements} }} " if elements else ""
    if rule.protocol == "icmp":
        return "meta l4proto { icmp, ipv6-icmp } "
    if rule.protocol == "any":
        return f"meta l4proto {{ tcp, udp, sctp }} {ports}" if ports else ""
    return f"meta l4proto {rule.protocol} {ports}"


def _set(name: str, family: str, elements: Sequence[str]) -> str:
    kind = "ipv4_addr" if family == "ip" else "ipv6_addr"
    body = f"type {kind}; flags interval; auto-merge;"
    if elements:
        body += f" elements = {{ {', '.join(elements)} }};"
    return f"\tset {name} {{ {body} }}"


def _split(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """Addresses or networks, normalised and de-duplicated, by family (v4, v6)."""
    v4: set[ipaddress.IPv4Network] = set()
    v6: set[ipaddress.IPv6Network] = set()
    for text in addresses:
        net = ipaddress.ip_network(text, strict=False)
        if isinstance(net, ipaddress.IPv4Network):
            v4.add(net)
        else:
            v6.add(net)
    v4s = [
        n.with_prefixlen if n.prefixlen < 32 else str(n.network_address)
        for n in ipaddress.collapse_addresses(v4)
    ]
    v6s = [
        n.with_prefixlen if n.prefixlen < 128 else str(n.network_address)
        for n in ipaddress.collapse_addresses(v6)
    ]
    return v4s, v6s


class _Builder:
    def __init__(self, resolver: Resolver, carry: Mapping[str, tuple[int, int]]) -> None:
        self.resolver, self.carry = resolver, carry
        self.counters: dict[str, str] = {}
        self.objects: list[str] = []
        self.sets: list[str] = []
        self.chains: list[str] = []

    def counter(self, key: str) -> str:
        name = counter_name(key)
        if self.counters.setdefault(name, key) != key:  # a 40-bit digest collision
            raise RulesetError(f"hit keys {self.counters[name]!r} and {key!r} map to one counter name {name}")
        body = ""
        if name in self.carry:
            packets, octets = self.carry[name]
            body += f" packets {int(packets)} bytes {int(octets)};"
        if len(key) <= COMMENT_MAX:
            body += f' comment "{key}";'
        self.objects.append(f"\tcounter {name} {{{body} }}")
        return name

    def chain(self, chain: str, policy: NetworkPolicy) -> None:
        """Rules in order: an allow counts and returns (the next policy decides too), a
        deny counts and drops; what no rule matched meets the default counter and action."""
        verdict = {"allow": "return", "deny": "drop"}
        lines = [f"\tchain {chain} {{"]
        for index, rule in enumerate(policy.rules):
            action = f'counter name "{self.counter(f"{policy.name}/{rule.name}")}" {verdict[rule.action]}'
            side = "daddr" if rule.direction == "egress" else "saddr"
            proto = _proto_match(rule)
            if not rule.domains and not rule.cidrs:
                lines.append(f"\t\t{proto}{action}")
                continue
            prefix, refs = f"{chain}_r{index}", []
            if rule.domains:
                d4, d6 = _split([a for domain in rule.domains for a in self.resolver(domain)])
                self.sets += [_set(f"{prefix}_d4", "ip", d4), _set(f"{prefix}_d6", "ip6", d6)]
                refs += [("ip", f"{prefix}_d4"), ("ip6", f"{prefix}_d6")]
            n4, n6 = _split(rule.cidrs)
            for family, suffix, elements in (("ip", "n4", n4), ("ip6", "n6", n6)):
                if elements:
                    self.sets.append(_set(f"{prefix}_{suffix}", family, elements))
                    refs.append((family, f"{prefix}_{suffix}"))
            lines += [f"\t\t{proto}{family} {side} @{set_name} {action}" for family, set_name in refs]
        default = self.counter(f"{policy.name}/{policy.default_rule}")
        lines += [f'\t\tcounter name "{default}" {verdict[policy.default_action]}', "\t}"]
        self.chains += lines


def render_ruleset(
    policies: Sequence[EnforcedPolicy],
    resolver: Resolver,
    carry: Mapping[str, tuple[int, int]] | None = None,
) -> Ruleset:
    """The complete ruleset for ``policies`` (in order), replacing ``table inet
    fleetplane`` in one transaction. ``carry`` gives counters (by name) their starting
    ``(packets, bytes)``, so a reload keeps the counts of unchanged policies."""
    build = _Builder(resolver, carry or {})
    jumps: dict[str, list[str]] = {"egress": [], "ingress": []}
    for index, policy in enumerate(policies):
        for part in policy.parts:
            direction = part.directions[0]
            chain = f"p{index}_{direction}"
            build.chain(chain, part)
            comment = f' comment "{policy.name}"' if len(policy.name) <= COMMENT_MAX else ""
            jumps[direction].append(f"\t\tjump {chain}{comment}")
    base: list[str] = []
    for chain, direction, lo in (("output", "egress", "oifname"), ("input", "ingress", "iifname")):
        base += [
            f"\tchain {chain} {{",
            f"\t\ttype filter hook {chain} priority filter; policy accept;",
            "\t\tct state established,related accept",
            f'\t\t{lo} "lo" accept',
            *jumps[direction],
            "\t}",
        ]
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    lines += [*build.objects, *build.sets, *base, *build.chains, "}"]
    return Ruleset("\n".join(lines) + "\n", dict(build.counters))


def removal_ruleset() -> str:
    """Removes the table (whether or not it exists) in one transaction."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


# --- reading the counters back -----------------------------------------------------


def _table_counters(nft_json: str, table: str) -> list[dict[str, Any]]:
    doc = json.loads(nft_json)
    out = []
    for entry in doc.get("nftables", []):
        counter = entry.get("counter") if isinstance(entry, dict) else None
        if isinstance(counter, dict) and counter.get("family") == "inet" and counter.get("table") == table:
            out.append(counter)
    return out


def parse_counters(nft_json: str, table: str = TABLE) -> dict[str, tuple[int, int]]:
    """``{counter name: (packets, bytes)}`` of ``table inet <table>`` from ``nft -j``."""
    return {
        str(c.get("name")): (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        for c in _table_counters(nft_json, table)
    }


def parse_policy_hits(
    nft_json: str, names: Mapping[str, str] | None = None, table: str = TABLE
) -> dict[str, int]:
    """``{hit key: packets}`` from ``nft -j list ruleset`` output. With ``names`` (the
    applied ``Ruleset.counters``), exactly the counters it maps, under their keys;
    without (nothing applied by this process yet), every counter whose comment is a key."""
    hits: dict[str, int] = {}
    for counter in _table_counters(nft_json, table):
        name, comment = str(counter.get("name")), counter.get("comment")
        if names is not None:
            key = names.get(name)
        else:
            key = comment if isinstance(comment, str) and comment.count("/") == 2 else None
        if key is not None:
            hits[key] = int(counter.get("packets", 0))
    return hits
