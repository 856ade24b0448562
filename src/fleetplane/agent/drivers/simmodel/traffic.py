"""Network policy and the traffic it sees: ordered egress/ingress rules that allow or
deny by domain (exact, or ``*.suffix`` for subdomains only), CIDR, protocol and port,
with a default action; a seeded generator produces a fixed number of flows per
simulated second from a weighted catalogue, and every flow counts one hit in each
policy that governs its direction, on the first rule it matches or on the policy's
default counter (``<policy>/default`` unless the policy names another)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

from fleetplane.agent.drivers.simmodel.engine import derived_random

__all__ = ["DEFAULT_CATALOGUE", "Endpoint", "Flow", "NetworkPolicy", "PolicyAction", "Rule"]
__all__ += ["TrafficModel", "domain_matches"]

Direction = Literal["egress", "ingress"]
PolicyAction = Literal["allow", "deny"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=8192)
def _address(text: str) -> IpAddress:
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> IpNetwork:
    return ipaddress.ip_network(text, strict=False)


def domain_matches(pattern: str, domain: str) -> bool:
    """``example.com`` matches only itself; ``*.example.com`` matches any subdomain
    (``a.example.com``, ``b.a.example.com``) but not ``example.com`` itself."""
    pattern, domain = pattern.lower().rstrip("."), domain.lower().rstrip(".")
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and len(domain) > len(pattern) - 1
    return pattern == domain


@dataclasses.dataclass(frozen=True)
class Flow:
    """One connection: ``peer`` is the destination (egress) or source (ingress);
    ``domain`` is the name it was resolved from, when known."""

    direction: Direction
    peer: str
    protocol: str
    port: int
    domain: str | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """Matches flows of its direction whose protocol (``any``), port (in ``ports`` or
    an inclusive ``port_ranges`` range; none listed: any) and peer (a listed domain or
    CIDR; none listed: any) match."""

    name: str
    direction: Direction
    action: PolicyAction
    domains: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    protocol: str = "any"
    ports: tuple[int, ...] = ()
    port_ranges: tuple[tuple[int, int], ...] = ()
    _nets: tuple[IpNetwork, ...] = dataclasses.field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.direction not in ("egress", "ingress") or self.action not in ("allow", "deny"):
            raise ValueError(f"rule {self.name}: bad direction {self.direction!r} or action {self.action!r}")
        nets = tuple(_network(c) for c in self.cidrs)
        object.__setattr__(self, "_nets", nets)

    def matches(self, flow: Flow) -> bool:
        if flow.direction != self.direction:
            return False
        if self.protocol not in ("any", flow.protocol):
            return False
        if (self.ports or self.port_ranges) and not (
            flow.port in self.ports or any(lo <= flow.port <= hi for lo, hi in self.port_ranges)
        ):
            return False
        if not self.domains and not self._nets:
            return True
        if flow.domain and any(domain_matches(d, flow.domain) for d in self.domains):
            return True
        ip = _address(flow.peer)
        return any(ip in net for net in self._nets)


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    """Governs the flows of ``directions`` only; a flow no rule matches counts on
    ``<name>/<default_rule>`` and meets ``default_action``."""

    name: str
    rules: tuple[Rule, ...] = ()
    default_action: PolicyAction = "deny"
    directions: tuple[Direction, ...] = ("egress", "ingress")
    default_rule: str = "default"

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names) or {"default", self.default_rule} & set(names):
            raise ValueError(f"policy {self.name}: rule names must be unique and not {self.default_rule!r}")

    def governs(self, flow: Flow) -> bool:
        return flow.direction in self.directions

    def hit_keys(self) -> list[str]:
        """Every hit counter key of this policy."""
        return [f"{self.name}/{r.name}" for r in self.rules] + [f"{self.name}/{self.default_rule}"]

    def evaluate(self, flow: Flow) -> tuple[str, PolicyAction]:
        """The hit counter key (``<policy>/<rule>``) and action of the first matching rule."""
        for rule in self.rules:
            if rule.matches(flow):
                return f"{self.name}/{rule.name}", rule.action
        return f"{self.name}/{self.default_rule}", self.default_action


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A traffic catalogue entry; ``peer`` may be a CIDR, drawn from per flow."""

    direction: Direction
    peer: str
    protocol: str
    port: int
    domain: str | None = None
    weight: int = 1


DEFAULT_CATALOGUE: tuple[Endpoint, ...] = (
    Endpoint("egress", "104.18.0.10", "tcp", 443, "registry.fleetplane.io", 20),
    Endpoint("egress", "104.18.0.11", "tcp", 443, "api.fleetplane.io", 15),
    Endpoint("egress", "151.101.1.10", "tcp", 443, "updates.fleetos.io", 5),
    Endpoint("egress", "198.51.100.7", "tcp", 443, "telemetry.vendor.example", 10),
    Endpoint("egress", "162.159.200.1", "udp", 123, "pool.ntp.org", 5),
    Endpoint("egress", "8.8.8.8", "udp", 53, None, 15),
    Endpoint("egress", "52.216.0.0/15", "tcp", 443, "fleet-data.s3.amazonaws.com", 10),
    Endpoint("egress", "140.82.112.3", "tcp", 443, "github.com", 5),
    Endpoint("egress", "140.82.112.6", "tcp", 443, "api.github.com", 4),
    Endpoint("egress", "140.82.112.9", "tcp", 443, "codeload.github.com", 2),
    Endpoint("egress", "8.8.4.4", "icmp", 0, None, 2),
    Endpoint("egress", "203.0.113.0/24", "tcp", 8080, None, 3),
    Endpoint("ingress", "10.0.0.0/8", "tcp", 443, None, 10),
    Endpoint("ingress", "192.168.0.0/16", "tcp", 22, None, 2),
    Endpoint("ingress", "198.18.0.0/15", "tcp", 22, None, 2),
)


def _draw_peer(peer: str, pick: Callable[[int], int]) -> str:
    if "/" not in peer:
        return peer
    net = _network(peer)
    return str(net.network_address + pick(net.num_addresses))


class TrafficModel:
    """Second ``k`` after ``start`` carries ``floor((k+1)r) - floor(kr)`` flows, drawn
    by a generator seeded from ``(seed, k)``: the flows do not depend on how often
    the model is advanced."""

    def __init__(
        self,
        seed: object,
        start: float,
        *,
        rate: float = 5.0,
        catalogue: Sequence[Endpoint] = DEFAULT_CATALOGUE,
        keep: int = 50,
    ) -> None:
        self.seed, self.start, self.rate = seed, start, rate
        self.catalogue = tuple(catalogue)
        self._cum = list(itertools.accumulate(e.weight for e in self.catalogue))
        self.policies: tuple[NetworkPolicy, ...] = ()
        self.hits: dict[str, int] = {}
        self.generated = 0  # since start
        self.evaluated = 0  # flows seen by at least one policy, since the policies were last set
        self.recent: collections.deque[tuple[Flow, str, PolicyAction]] = collections.deque(maxlen=keep)
        self._second = 0

    @property
    def policy(self) -> NetworkPolicy | None:
        return self.policies[0] if self.policies else None

    def set_policy(self, policy: NetworkPolicy | None, now: float) -> None:
        self.set_policies(() if policy is None else (policy,), now)

    def set_policies(self, policies: Sequence[NetworkPolicy], now: float) -> None:
        """Flows up to ``now`` meet the old policies; a policy not in force before (or
        changed) starts its counters at zero, one unchanged keeps counting (monotonic)."""
        self.advance(now)
        policies = tuple(policies)
        if policies == self.policies:
            return
        kept = set(self.policies)
        hits: dict[str, int] = {}
        for policy in policies:
            for key in policy.hit_keys():
                hits[key] = self.hits.get(key, 0) if policy in kept else 0
        self.policies, self.hits, self.evaluated = policies, hits, 0

    def flows_in_second(self, k: int) -> list[Flow]:
        count = math.floor((k + 1) * self.rate) - math.floor(k * self.rate)
        if count <= 0 or not self.catalogue:
            return []
        rng = derived_random(self.seed, "traffic", k)
        chosen = rng.choices(self.catalogue, cum_weights=self._cum, k=count)
        return [
            Flow(e.direction, _draw_peer(e.peer, rng.randrange), e.protocol, e.port, e.domain) for e in chosen
        ]

    def advance(self, now: float) -> None:
        if not self.policies:
            # Nothing evaluates the flows: count them without drawing them (a third of a
            # 10,000-site simulator's CPU in a fan-out went to drawing flows nobody saw).
            # Second k carries floor((k+1)r) - floor(kr) flows, so a run of seconds telescopes.
            first = self._second
            while self.start + self._second + 1 <= now:
                self._second += 1
            if self.catalogue:
                self.generated += math.floor(self._second * self.rate) - math.floor(first * self.rate)
            return
        while self.start + self._second + 1 <= now:
            for flow in self.flows_in_second(self._second):
                self.observe(flow)
            self._second += 1

    def observe(self, flow: Flow) -> None:
        self.generated += 1
        seen = False
        for policy in self.policies:
            if not policy.governs(flow):
                continue
            key, action = policy.evaluate(flow)
            self.hits[key] = self.hits.get(key, 0) + 1
            self.recent.append((flow, key, action))
            seen = True
        self.evaluated += int(seen)
