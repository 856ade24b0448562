"""Service (HTTP) policy and the requests it sees: ordered rules that allow or deny a
request between workloads by source and destination namespace and label selector, HTTP
method and path prefix, with a default action. A seeded generator produces a fixed number
of requests per simulated second from a weighted catalogue of calls between a small shop's
workloads; every request counts one hit in each policy, on the first rule it matches or on
``<policy>/default``."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

from fleetplane.agent.drivers.simmodel.engine import derived_random
from fleetplane.agent.drivers.simmodel.traffic import PolicyAction
from fleetplane.core.selectors import Selector, parse_selector

__all__ = ["DEFAULT_CALLS", "Call", "Request", "ServicePolicy", "ServiceRule", "ServiceTrafficModel"]
__all__ += [
    "NET_POLICY",
    "WORKLOADS",
    "NamespaceNetwork",
    "NetPod",
    "NetService",
    "Workload",
    "WorkloadMatch",
]


@dataclasses.dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclasses.dataclass(frozen=True)
class Request:
    source: Workload
    destination: Workload
    method: str
    path: str


@dataclasses.dataclass(frozen=True)
class WorkloadMatch:
    """Workloads in any of ``namespaces`` (none: any) whose labels match ``selector``."""

    namespaces: tuple[str, ...] = ()
    selector: Selector = dataclasses.field(default_factory=lambda: parse_selector(""))

    def matches(self, workload: Workload) -> bool:
        if self.namespaces and workload.namespace not in self.namespaces:
            return False
        return self.selector.matches(workload.label_map)


@dataclasses.dataclass(frozen=True)
class ServiceRule:
    name: str
    action: PolicyAction
    source: WorkloadMatch = WorkloadMatch()
    destination: WorkloadMatch = WorkloadMatch()
    methods: tuple[str, ...] = ()  # upper case; none: any
    path_prefixes: tuple[str, ...] = ()  # none: any

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise ValueError(f"rule {self.name}: bad action {self.action!r}")

    def matches(self, request: Request) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        if self.path_prefixes and not any(request.path.startswith(p) for p in self.path_prefixes):
            return False
        return self.source.matches(request.source) and self.destination.matches(request.destination)


@dataclasses.dataclass(frozen=True)
class ServicePolicy:
    name: str
    rules: tuple[ServiceRule, ...] = ()
    default_action: PolicyAction = "allow"

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names) or "default" in names:
            raise ValueError(f"policy {self.name}: rule names must be unique and not 'default'")

    def evaluate(self, request: Request) -> tuple[str, PolicyAction]:
        for rule in self.rules:
            if rule.matches(request):
                return f"{self.name}/{rule.name}", rule.action
        return f"{self.name}/default", self.default_action

    def hit_keys(self) -> list[str]:
        return [f"{self.name}/{r.name}" for r in self.rules] + [f"{self.name}/default"]


def _workload(namespace: str, name: str, labels: Mapping[str, str]) -> Workload:
    return Workload(namespace, name, tuple(sorted(labels.items())))


WORKLOADS: Mapping[str, Workload] = {
    "frontend": _workload("shop", "frontend", {"app": "frontend", "tier": "web"}),
    "catalog": _workload("shop", "catalog", {"app": "catalog", "tier": "api"}),
    "checkout": _workload("shop", "checkout", {"app": "checkout", "tier": "api"}),
    "payments": _workload("shop", "payments", {"app": "payments", "tier": "api", "pci": "true"}),
    "prometheus": _workload("ops", "prometheus", {"app": "prometheus"}),
    "debug": _workload("default", "debug-shell", {"app": "debug"}),
}


@dataclasses.dataclass(frozen=True)
class Call:
    """A catalogue entry: who calls whom, how, and how often (relative weight)."""

    source: str
    destination: str
    method: str
    path: str
    weight: int = 1


DEFAULT_CALLS: tuple[Call, ...] = (
    Call("frontend", "catalog", "GET", "/api/products", 30),
    Call("frontend", "checkout", "GET", "/api/cart", 10),
    Call("frontend", "checkout", "POST", "/api/checkout", 10),
    Call("checkout", "payments", "POST", "/v1/charge", 8),
    Call("prometheus", "catalog", "GET", "/metrics", 5),
    Call("prometheus", "payments", "GET", "/metrics", 5),
    Call("frontend", "payments", "GET", "/v1/admin/refunds", 2),
    Call("debug", "payments", "DELETE", "/v1/charges/42", 1),
)


class ServiceTrafficModel:
    """Second ``k`` after ``start`` carries ``floor((k+1)r) - floor(kr)`` requests, drawn by a
    generator seeded from ``(seed, k)``, as ``TrafficModel`` does for flows."""

    def __init__(
        self,
        seed: object,
        start: float,
        *,
        rate: float = 5.0,
        calls: Sequence[Call] = DEFAULT_CALLS,
        workloads: Mapping[str, Workload] = WORKLOADS,
        keep: int = 50,
    ) -> None:
        self.seed, self.start, self.rate = seed, start, rate
        self.calls = tuple(calls)
        self.workloads = dict(workloads)
        self._cum = list(itertools.accumulate(c.weight for c in self.calls))
        self.policies: tuple[ServicePolicy, ...] = ()
        self.hits: dict[str, int] = {}
        self.generated = 0  # requests seen while some policy was in force
        self.recent: collections.deque[tuple[Request, str, PolicyAction]] = collections.deque(maxlen=keep)
        self._second = 0

    def set_policies(self, policies: Sequence[ServicePolicy], now: float) -> None:
        """Requests up to ``now`` meet the old policies; a new or changed policy starts at
        zero, an unchanged one keeps counting."""
        self.advance(now)
        policies = tuple(policies)
        if policies == self.policies:
            return
        kept = set(self.policies)
        self.hits = {
            key: self.hits.get(key, 0) if policy in kept else 0
            for policy in policies
            for key in policy.hit_keys()
        }
        self.policies = policies

    def requests_in_second(self, k: int) -> list[Request]:
        count = math.floor((k + 1) * self.rate) - math.floor(k * self.rate)
        if count <= 0 or not self.calls:
            return []
        rng = derived_random(self.seed, "requests", k)
        chosen = rng.choices(self.calls, cum_weights=self._cum, k=count)
        return [
            Request(self.workloads[c.source], self.workloads[c.destination], c.method, c.path) for c in chosen
        ]

    def advance(self, now: float) -> None:
        if not self.policies:
            # Nothing would count them: skip the draws (scale runs hold thousands of sites).
            self._second = max(self._second, math.floor(now - self.start))
            return
        while self.start + self._second + 1 <= now:
            for request in self.requests_in_second(self._second):
                self.observe(request)
            self._second += 1

    def observe(self, request: Request) -> None:
        self.generated += 1
        for policy in self.policies:
            key, action = policy.evaluate(request)
            self.hits[key] = self.hits.get(key, 0) + 1
            self.recent.append((request, key, action))


# -- vK8s namespace networks -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetPod:
    """A running pod of a vK8s workload: its site-local namespace, vK8s namespace, labels."""

    namespace: str
    vk8s_namespace: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class NetService:
    """A vK8s Service on the site: a selector over its namespace's pods (none: selects none)."""

    namespace: str
    vk8s_namespace: str
    name: str
    selector: tuple[tuple[str, str], ...] = ()

    def selects(self, pod: NetPod) -> bool:
        return (
            bool(self.selector) and pod.namespace == self.namespace and set(self.selector) <= set(pod.labels)
        )


NET_POLICY = "vk8s-network"  # the pseudo policy the verdicts are counted under


class NamespaceNetwork:
    """Each vK8s site-local namespace is an isolated network (the reference's "namespace
    network"): a pod reaches pods of its own namespace; another namespace's pods only through
    a Service defined there that selects them (Services are site-local and open to every
    namespace of the tenant on the site). A seeded generator draws ``rate`` connections per
    simulated second between the running pods and Services and counts each verdict as a hit
    of ``<vk8s namespace of the destination>/vk8s-network/<verdict>``: ``same-namespace``,
    ``via-service`` (admitted), ``isolated`` (refused: another namespace's pod, directly),
    ``no-endpoints`` (refused: a Service that selects no running pod)."""

    def __init__(self, seed: object, start: float, *, rate: float = 1.0) -> None:
        self.seed, self.start, self.rate = seed, start, rate
        self.pods: tuple[NetPod, ...] = ()
        self.services: tuple[NetService, ...] = ()
        self.hits: dict[str, int] = {}
        self._second = 0

    def set_state(self, pods: Sequence[NetPod], services: Sequence[NetService], now: float) -> None:
        self.advance(now)
        self.pods, self.services = tuple(pods), tuple(services)

    def verdict(self, source: NetPod, destination: NetPod | NetService) -> tuple[str, bool]:
        """What the site's network does with one connection, and whether it is admitted."""
        if isinstance(destination, NetService):
            if any(destination.selects(p) for p in self.pods):
                return "via-service", True
            return "no-endpoints", False
        if destination.namespace == source.namespace:
            return "same-namespace", True
        return "isolated", False

    def advance(self, now: float) -> None:
        if not self.pods:  # nothing to connect: skip the draws (scale runs hold thousands of sites)
            self._second = max(self._second, math.floor(now - self.start))
            return
        targets: list[NetPod | NetService] = [*self.pods, *self.services]
        while self.start + self._second + 1 <= now:
            k = self._second
            count = math.floor((k + 1) * self.rate) - math.floor(k * self.rate)
            rng = derived_random(self.seed, "vk8s-network", k)
            for _ in range(count):
                source, destination = rng.choice(self.pods), rng.choice(targets)
                verdict, _ = self.verdict(source, destination)
                key = f"{destination.vk8s_namespace}/{NET_POLICY}/{verdict}"
                self.hits[key] = self.hits.get(key, 0) + 1
            self._second += 1

    def hits_at(self, now: float) -> dict[str, int]:
        self.advance(now)
        return dict(self.hits)
