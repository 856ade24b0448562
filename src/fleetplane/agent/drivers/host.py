"""The ``host`` driver: a site that is one Linux host whose firewall fleetplane owns
through nftables.

Section ``networkPolicy`` (the rule shape of the sim's traffic model,
``simmodel.traffic``)::

    name: edge
    defaultAction: deny            # allow | deny, the policy of both chains
    rules:                         # ordered; the first match decides
      - {name: registry, direction: egress, action: allow,
         domains: [registry.fleetplane.io, "*.fleetplane.io"], cidrs: [10.0.0.0/8],
         protocol: tcp, ports: [443]}

is rendered into one complete ruleset, ``table inet fleetplane``, replaced atomically
(``table …; delete table …; table … {…}`` in one ``nft -f`` transaction):

* chains ``ingress`` (hook input) and ``egress`` (hook output), ``policy`` from
  ``defaultAction``; each starts with ``ct state established,related accept`` and a
  loopback accept, so the policy rules (and their counters) see the first packets of
  new connections, the nearest thing to the sim's "one hit per flow";
* one named counter per rule (``comment "<policy>/<rule>"``) plus ``<policy>/default``
  counted just before the chain policy applies; ``observe()`` reads them back by
  parsing ``nft -j list ruleset`` (``parse_policy_hits``; counts are packets);
* CIDRs go into interval sets per rule and family; domains into per-rule address sets
  filled from an injected ``resolver`` at render time. Names resolve to addresses only
  at that moment: a real host needs DNS-driven set updates (e.g. a resolver that adds
  answers to the ``*_d4``/``*_d6`` sets) to follow changing addresses, and a wildcard
  (``*.example.com``) cannot be enumerated at all — its sets stay empty unless the
  resolver answers for the pattern. Neither is implemented here.

Forwarded traffic (containers, VMs behind the host) is not filtered: only input/output.

What is verified, and what is not: the tests render rulesets and check them with the
real ``nft -c -f`` (the kernel's own validation of the batch, without committing it),
parse ``nft -j`` output produced by the real ``nft`` and read this machine's /proc.
The tests never run ``nft -f`` against the machine's firewall; applying is only
exercised inside a throwaway network namespace where one is available.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetplane.agent.drivers.base import Allocatable, ItemStatus, NodeInfo, Observation, Usage
from fleetplane.agent.drivers.simmodel.traffic import NetworkPolicy, Rule

__all__ = ["HostDriver", "Resolver", "RulesetError", "parse_policy", "parse_policy_hits", "render_ruleset"]
__all__ += ["removal_ruleset", "system_resolver"]

TABLE = "fleetplane"
SECTION = "networkPolicy"
PROTOCOLS = ("any", "tcp", "udp", "sctp", "icmp", "icmpv6")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DOMAIN = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")

Resolver = Callable[[str], Sequence[str]]
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class RulesetError(ValueError):
    """The section cannot be rendered (bad shape or values)."""


def system_resolver(domain: str) -> list[str]:
    """The addresses ``getaddrinfo`` gives now for an exact name; none for a wildcard."""
    if domain.startswith("*."):
        return []
    try:
        infos = socket.getaddrinfo(domain, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)


# --- the section -------------------------------------------------------------------


def parse_policy(section: Any) -> NetworkPolicy:
    """The section as the sim's ``NetworkPolicy``, with the host's extra checks (names
    usable in nftables, known protocols, port ranges, valid domains)."""
    if not isinstance(section, Mapping):
        raise RulesetError("the networkPolicy section must be an object")
    name, default = section.get("name"), section.get("defaultAction", "deny")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RulesetError(f"networkPolicy.name must match {_NAME.pattern}, not {name!r}")
    if default not in ("allow", "deny"):
        raise RulesetError(f"networkPolicy.defaultAction must be allow or deny, not {default!r}")
    raw_rules = section.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RulesetError("networkPolicy.rules must be a list")
    rules = [_parse_rule(i, r) for i, r in enumerate(raw_rules)]
    try:
        return NetworkPolicy(name, tuple(rules), default)
    except ValueError as exc:
        raise RulesetError(str(exc)) from exc


def _strings(rule: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = rule.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RulesetError(f"{where}.{key} must be a list of strings")
    return tuple(values)


def _parse_rule(index: int, rule: Any) -> Rule:
    where = f"networkPolicy.rules[{index}]"
    if not isinstance(rule, Mapping):
        raise RulesetError(f"{where} must be an object")
    name, protocol = rule.get("name"), rule.get("protocol", "any")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RulesetError(f"{where}.name must match {_NAME.pattern}, not {name!r}")
    if protocol not in PROTOCOLS:
        raise RulesetError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    domains, cidrs = _strings(rule, "domains", where), _strings(rule, "cidrs", where)
    for domain in domains:
        if not _DOMAIN.match(domain):
            raise RulesetError(f"{where}: {domain!r} is not a domain or *.domain")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise RulesetError(f"{where}: {exc}") from exc
    ports = rule.get("ports") or []
    if not isinstance(ports, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports
    ):
        raise RulesetError(f"{where}.ports must be a list of integers 1-65535")
    if ports and protocol in ("icmp", "icmpv6"):
        raise RulesetError(f"{where}: {protocol} has no ports")
    try:
        return Rule(
            name,
            rule.get("direction"),  # type: ignore[arg-type]  # checked by Rule
            rule.get("action"),  # type: ignore[arg-type]
            domains=domains,
            cidrs=cidrs,
            protocol=str(protocol),
            ports=tuple(ports),
        )
    except ValueError as exc:
        raise RulesetError(f"{where}: {exc}") from exc


# --- rendering ---------------------------------------------------------------------


def _ident(index: int, name: str) -> str:
    return f"r{index}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _proto_match(rule: Rule) -> str:
    ports = ", ".join(str(p) for p in sorted(set(rule.ports)))
    if rule.protocol == "any":
        return f"meta l4proto {{ tcp, udp, sctp }} th dport {{ {ports} }} " if ports else ""
    if rule.protocol == "icmp":
        return "meta l4proto icmp "
    if rule.protocol == "icmpv6":
        return "meta l4proto ipv6-icmp "
    return f"meta l4proto {rule.protocol} " + (f"th dport {{ {ports} }} " if ports else "")


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


def render_ruleset(policy: NetworkPolicy, resolver: Resolver) -> str:
    """The complete nftables ruleset (an ``nft -f`` file) for ``policy``."""
    verdict = {"allow": "accept", "deny": "drop"}
    counters = [f'\tcounter default {{ comment "{policy.name}/default"; }}']
    sets: list[str] = []
    chains: dict[str, list[str]] = {"ingress": [], "egress": []}
    for index, rule in enumerate(policy.rules):
        ident = _ident(index, rule.name)
        counters.append(f'\tcounter {ident} {{ comment "{policy.name}/{rule.name}"; }}')
        side = "daddr" if rule.direction == "egress" else "saddr"
        action = f'counter name "{ident}" {verdict[rule.action]}'
        proto = _proto_match(rule)
        if not rule.domains and not rule.cidrs:
            chains[rule.direction].append(f"\t\t{proto}{action}")
            continue
        refs: list[tuple[str, str]] = []  # (family, set name)
        if rule.domains:
            resolved: list[str] = []
            for domain in rule.domains:
                resolved.extend(resolver(domain))
            d4, d6 = _split(resolved)
            sets += [_set(f"{ident}_d4", "ip", d4), _set(f"{ident}_d6", "ip6", d6)]
            refs += [("ip", f"{ident}_d4"), ("ip6", f"{ident}_d6")]
        n4, n6 = _split(rule.cidrs)
        for family, suffix, elements in (("ip", "n4", n4), ("ip6", "n6", n6)):
            if elements:
                sets.append(_set(f"{ident}_{suffix}", family, elements))
                refs.append((family, f"{ident}_{suffix}"))
        for family, set_name in refs:
            chains[rule.direction].append(f"\t\t{proto}{family} {side} @{set_name} {action}")
    policy_word = verdict[policy.default_action]
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{", *counters, *sets]
    for chain, hook, lo in (("ingress", "input", "iifname"), ("egress", "output", "oifname")):
        lines += [
            f"\tchain {chain} {{",
            f"\t\ttype filter hook {hook} priority filter; policy {policy_word};",
            "\t\tct state established,related accept",
            f'\t\t{lo} "lo" accept',
            *chains[chain],
            '\t\tcounter name "default"',
            "\t}",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def removal_ruleset() -> str:
    """Removes the table (whether or not it exists) in one transaction."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def parse_policy_hits(nft_json: str, table: str = TABLE) -> dict[str, int]:
    """``{"<policy>/<rule>": packets}`` from ``nft -j list ruleset`` output: the named
    counters of ``table inet <table>``, keyed by their comment (or name)."""
    doc = json.loads(nft_json)
    hits: dict[str, int] = {}
    for entry in doc.get("nftables", []):
        counter = entry.get("counter") if isinstance(entry, dict) else None
        if not isinstance(counter, dict):
            continue
        if counter.get("family") != "inet" or counter.get("table") != table:
            continue
        key = counter.get("comment") or counter.get("name")
        hits[str(key)] = int(counter.get("packets", 0))
    return hits


# --- the host ----------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _os_version() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return None


@dataclasses.dataclass
class _Applied:
    text: str | None = None


class HostDriver:
    """The ``Driver`` for one Linux host. ``run`` executes ``nft`` (injectable so tests
    can let ``nft -c`` through and keep ``nft -f`` off the machine's firewall)."""

    name = "host"

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        nft: str = "nft",
        run: Runner = _run,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.resolver, self.nft, self.run, self._now = resolver, nft, run, now
        self._applied = _Applied()

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        return await asyncio.to_thread(self.apply_sync, manifest)

    def apply_sync(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        spec = manifest.get("spec") or {}
        sections: Mapping[str, Any] = spec.get("sections") or {}
        items: list[ItemStatus] = []
        if SECTION in sections:
            items.append(self._apply_policy(sections[SECTION]))
        elif self._applied.text != removal_ruleset():
            why = self._load(removal_ruleset())
            if why:
                items.append(ItemStatus(SECTION, SECTION, "Failed", why))
        for section in sorted(set(sections) - {SECTION}):
            why = f"the host driver does not support section {section!r}"
            items.append(ItemStatus(section, section, "Failed", why))
        return items

    def _apply_policy(self, section: Any) -> ItemStatus:
        name = section.get("name") if isinstance(section, Mapping) else None
        item = name if isinstance(name, str) and name else SECTION
        try:
            text = render_ruleset(parse_policy(section), self.resolver)
        except (RulesetError, ValueError) as exc:
            return ItemStatus(SECTION, item, "Failed", str(exc))
        if text == self._applied.text:  # reloading would reset the counters
            return ItemStatus(SECTION, item, "Applied")
        why = self._load(text)
        return ItemStatus(SECTION, item, "Failed", why) if why else ItemStatus(SECTION, item, "Applied")

    def check(self, text: str) -> str | None:
        """``nft -c -f``: why the ruleset is refused, or None."""
        return self._nft(text, check=True)

    def _load(self, text: str) -> str | None:
        why = self._nft(text, check=True) or self._nft(text, check=False)
        if why is None:
            self._applied.text = text
        return why

    def _nft(self, text: str, *, check: bool) -> str | None:
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write(text)
            path = f.name
        try:
            argv = [self.nft, *(["-c"] if check else []), "-f", path]
            try:
                done = self.run(argv)
            except (OSError, subprocess.SubprocessError) as exc:
                return f"{' '.join(argv[:-1])}: {exc}"
            if done.returncode != 0:
                return f"nft {'-c ' if check else ''}-f failed ({done.returncode}): {done.stderr.strip()}"
            return None
        finally:
            os.unlink(path)

    def policy_hits(self) -> dict[str, int]:
        done = self.run([self.nft, "-j", "list", "ruleset"])
        if done.returncode != 0:
            return {}
        return parse_policy_hits(done.stdout)

    async def observe(self) -> Observation:
        return await asyncio.to_thread(self.observe_sync)

    def observe_sync(self) -> Observation:
        """One node (this host): CPUs and memory from the kernel, the root file
        system's size; usage: memory in use (MemTotal - MemAvailable), disk used on /,
        and CPU as the 1-minute load average in millis (capped at capacity) — an
        approximation, not a sampled utilisation."""
        cpus = os.cpu_count() or 1
        mem = _meminfo()
        total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
        disk = os.statvfs("/")
        disk_total, disk_free = disk.f_blocks * disk.f_frsize, disk.f_bavail * disk.f_frsize
        cpu_used = min(cpus * 1000, round(os.getloadavg()[0] * 1000))
        mem_used = max(0, total - available)
        node = NodeInfo(socket.gethostname(), "worker", cpus * 1000, total, disk_total, True)
        return Observation(
            nodes=(node,),
            usage=Usage(
                cpu_used,
                mem_used,
                disk_total - disk_free,
                round(100.0 * cpu_used / (cpus * 1000), 2),
                round(100.0 * mem_used / total, 2) if total else 0.0,
            ),
            allocatable=Allocatable(cpus * 1000, total),
            os_version=_os_version(),
            policy_hits=self.policy_hits(),
            now=self._now(),
        )
