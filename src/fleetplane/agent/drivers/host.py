"""The ``host`` driver: a site that is one Linux host whose firewall fleetplane owns
through nftables.

Section ``networkPolicies`` (docs/site-manifest.md, "Policy sections"; the sim's model,
``simmodel.traffic`` and ``simmodel.policy_sections``, is the reference behaviour)::

    policies:                        # every policy targeting the site, in order
      - policy: default/github       # <namespace>/<name>: the hit key prefix
        generation: 2
        egress:                      # ingress: the same; a direction left out is not governed
          defaultAction: deny        # allow (default) | deny
          rules:                     # ordered; the first match decides within the policy
            - {name: allow-github, action: allow, domains: [github.com, "*.github.com"],
               cidrs: [140.82.112.0/20], protocol: TCP, ports: [443],
               portRanges: [{start: 8000, end: 8100}]}

is rendered (``nft_policies``) into one complete ruleset, ``table inet fleetplane``,
replaced atomically (``table …; delete table …; table … {…}`` in one ``nft -f``):

* base chains ``output`` (hook output) and ``input`` (hook input), ``policy accept``;
  each starts with ``ct state established,related accept`` and a loopback accept, so
  the policy rules (and their counters) see the first packets of new connections, the
  nearest thing to the sim's "one hit per flow"; then one ``jump`` per policy governing
  that direction, in policy order;
* one chain per policy and direction (``p<index>_egress``/``p<index>_ingress``): a
  matching allow rule counts and ``return``s (so the next policy decides too), a
  matching deny rule counts and drops, and the end of the chain counts on the default
  counter and returns (``allow``) or drops (``deny``): a flow passes only if every
  policy governing it allows it;
* one named counter per hit key (``<ns>/<policy>/<rule>``, ``<ns>/<policy>/default-egress``
  / ``default-ingress``), named ``counter_name(key)`` (keys do not fit nftables names)
  with the key as comment when it fits; ``observe()`` parses ``nft -j list ruleset``
  and reports hits (packets) under the keys, through the map of the loaded ruleset.
  A reload keeps the counts of policies whose rules did not change (they are read just
  before and loaded as the counters' starting values); a changed policy starts at 0;
* protocol ``TCP``/``UDP`` with ports and port ranges as an nftables interval set,
  ``ANY`` with ports as tcp/udp/sctp, ``ICMP`` (v4 and v6) without ports;
* CIDRs go into interval sets per rule and family; domains into per-rule address sets
  filled from an injected ``resolver`` at render time. Names resolve to addresses only
  at that moment: a real host needs DNS-driven set updates (e.g. a resolver that adds
  answers to the ``*_d4``/``*_d6`` sets) to follow changing addresses, and a wildcard
  (``*.example.com``, its subdomains only) cannot be enumerated at all — its sets stay
  empty unless the resolver answers for the pattern. Neither is implemented here.

One item per policy (``{section: networkPolicies, name: <ns>/<name>, state}``); an entry
that cannot be read, or that ``nft -c`` refuses on its own, fails alone and the others
are enforced. No section: the table is removed. Forwarded traffic (containers, VMs
behind the host) is not filtered: only input/output.

What is verified, and what is not: the tests render rulesets and check them with the
real ``nft -c -f`` (the kernel's own validation of the batch, without committing it),
parse ``nft -j`` output produced by the real ``nft`` and read this machine's /proc.
The tests never run ``nft -f`` against the machine's firewall; applying is only
exercised inside a throwaway network namespace where one is available.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetplane.agent.drivers.base import Allocatable, ItemStatus, NodeInfo, Observation, Usage
from fleetplane.agent.drivers.nft_policies import (
    SECTION,
    EnforcedPolicy,
    Resolver,
    RulesetError,
    parse_counters,
    parse_policy_hits,
    parse_section,
    removal_ruleset,
    render_ruleset,
)

__all__ = ["HostDriver", "Resolver", "RulesetError", "parse_policy_hits", "removal_ruleset", "render_ruleset"]
__all__ += ["system_resolver"]

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


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
    """What this process loaded last: the ruleset (as rendered without carried counts),
    its counters (name -> hit key; None until something is loaded) and its policies."""

    text: str | None = None
    counters: dict[str, str] | None = None
    policies: dict[str, EnforcedPolicy] = dataclasses.field(default_factory=dict)


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
            items += self._apply_policies(sections[SECTION])
        elif self._applied.text != removal_ruleset():
            why = self._load(removal_ruleset())
            if why:
                items.append(ItemStatus(SECTION, SECTION, "Failed", why))
            else:
                self._applied = _Applied(removal_ruleset(), {}, {})
        for section in sorted(set(sections) - {SECTION}):
            why = f"the host driver does not support section {section!r}"
            items.append(ItemStatus(section, section, "Failed", why))
        return items

    def _apply_policies(self, section: Any) -> list[ItemStatus]:
        """Every readable entry enforced together; when ``nft`` refuses the ruleset, each
        policy is checked alone and the ones refused on their own fail alone."""
        entries = parse_section(section)
        policies = [e for e in entries if isinstance(e, EnforcedPolicy)]
        answers: dict[str, list[str]] = {}  # one resolution per name per apply

        def resolve(domain: str) -> list[str]:
            return answers.setdefault(domain, list(self.resolver(domain)))

        failed: dict[str, str] = {}
        why = self._enforce(policies, resolve)
        if why is not None and policies:
            for policy in policies:
                try:
                    alone = self.check(render_ruleset([policy], resolve).text)
                except (RulesetError, ValueError) as exc:
                    alone = str(exc)
                if alone:
                    failed[policy.name] = alone
            rest = [p for p in policies if p.name not in failed]
            if len(rest) < len(policies):
                why = self._enforce(rest, resolve)
            failed.update({p.name: why for p in rest if why})
        items: list[ItemStatus] = []
        for entry in entries:
            if isinstance(entry, ItemStatus):
                items.append(entry)
            elif entry.name in failed:
                items.append(ItemStatus(SECTION, entry.name, "Failed", failed[entry.name]))
            else:
                items.append(ItemStatus(SECTION, entry.name, "Applied"))
        return items

    def _enforce(self, policies: Sequence[EnforcedPolicy], resolve: Resolver) -> str | None:
        """Loads the ruleset of ``policies`` unless it is loaded already (reloading would
        reset the counters); the counters of unchanged policies keep their counts."""
        try:
            ruleset = render_ruleset(policies, resolve)
        except (RulesetError, ValueError) as exc:
            return str(exc)
        if ruleset.text == self._applied.text:
            return None
        unchanged = {p.name for p in policies if self._applied.policies.get(p.name) == p}
        keep = {n for n, key in (self._applied.counters or {}).items() if key.rsplit("/", 1)[0] in unchanged}
        text = ruleset.text
        if keep:
            carry = {name: counts for name, counts in self._counts().items() if name in keep}
            text = render_ruleset(policies, resolve, carry).text
        why = self._load(text)
        if why is None:
            self._applied = _Applied(ruleset.text, dict(ruleset.counters), {p.name: p for p in policies})
        return why

    def _list(self) -> str | None:
        """``nft -j list ruleset``, or None when it cannot be read."""
        try:
            done = self.run([self.nft, "-j", "list", "ruleset"])
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    def _counts(self) -> dict[str, tuple[int, int]]:
        listed = self._list()
        try:
            return parse_counters(listed) if listed else {}
        except (ValueError, TypeError, AttributeError):
            return {}

    def check(self, text: str) -> str | None:
        """``nft -c -f``: why the ruleset is refused, or None."""
        return self._nft(text, check=True)

    def _load(self, text: str) -> str | None:
        return self._nft(text, check=True) or self._nft(text, check=False)

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
        """Packets per hit key of the loaded ruleset (``{}`` when nft cannot be read)."""
        listed = self._list()
        try:
            return parse_policy_hits(listed, self._applied.counters) if listed else {}
        except (ValueError, TypeError, AttributeError):
            return {}

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
