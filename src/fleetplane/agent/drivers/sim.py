"""The ``sim`` driver: an in-memory model of a site, deterministic from a seed, for
demos, tests and benchmarks with thousands of sites on one machine.

``SimSite(seed, name, labels, clock, profile)`` draws the site (1-100 nodes, most
sites small; capacity by role) and holds its models (``simmodel``): reservations,
workloads and their scheduler, OS A/B slots, network policy and traffic, usage and
faults. Everything moves on one event time line read from ``clock``, so the same
seed, the same calls and the same clock steps give the same observations.
``SimDriver(site)`` is the ``Driver`` the agent core runs.

Manifest sections applied today: ``reservations``, ``networkPolicies`` and
``servicePolicies`` (flows and HTTP requests counted per rule, ``simmodel.traffic`` and
``simmodel.services``); ``os`` upgrades the A/B slots (``simmodel.os_section``); ``workloads``
(vK8s fan-out) runs its Deployments/StatefulSets/Jobs on the workloads model
(``simmodel.workload_section``) and reports their pods in ``Site.status.pods``. Without that
section the workloads model may still be driven directly (``site.workloads``).

What a real site keeps on its disks outlives the agent process: ``SimSite.persist_to(data_dir)``
(called by ``SimDriver.bind_site`` with the agent's data dir) keeps the rack's hosts in
``rack.json``, the OS A/B slots in ``os.json`` and the nodes' pulled images in ``images.json``,
and takes them back, so a restarted simulator's sites run the OS they had committed. The rest
is rebuilt from the persisted manifest, or starts over (see ``persist_to``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetplane.agent.drivers.base import Allocatable, Clock, ItemStatus, Observation, RealClock
from fleetplane.agent.drivers.simmodel.baremetal import SimBareMetal
from fleetplane.agent.drivers.simmodel.engine import EventQueue, derived_random
from fleetplane.agent.drivers.simmodel.faults import FAULTS, ActiveFault, Faults
from fleetplane.agent.drivers.simmodel.nodes import Node, Reservation, generate_nodes, reserve
from fleetplane.agent.drivers.simmodel.os_section import OsSection
from fleetplane.agent.drivers.simmodel.os_slots import OsSlots
from fleetplane.agent.drivers.simmodel.policy_sections import merged_hits, network_policies, service_policies
from fleetplane.agent.drivers.simmodel.profile import PROFILES, SiteProfile, resolve_profile
from fleetplane.agent.drivers.simmodel.services import ServicePolicy, ServiceTrafficModel
from fleetplane.agent.drivers.simmodel.traffic import NetworkPolicy, TrafficModel
from fleetplane.agent.drivers.simmodel.usage import site_usage
from fleetplane.agent.drivers.simmodel.workload_section import WorkloadSection
from fleetplane.agent.drivers.simmodel.workloads import (
    Workload,
    WorkloadModel,
    default_image_size,
    image_is_bad,
)
from fleetplane.agent.infra import InfraExecutor
from fleetplane.core.selectors import Selector, parse_selector

if TYPE_CHECKING:
    from fleetplane.agent.onboard import SavedIdentity

__all__ = ["FAULTS", "PROFILES", "SUPPORTED_SECTIONS", "SimDriver", "SimSite", "SiteProfile"]
__all__ += ["clear_where", "inject_where", "select_sites"]

SUPPORTED_SECTIONS = ("reservations", "networkPolicies", "servicePolicies", "os", "workloads", "infra")


class SimSite:
    def __init__(
        self,
        seed: int | str,
        name: str,
        labels: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        profile: SiteProfile | str = "default",
    ) -> None:
        self.seed, self.name = seed, name
        self.labels = dict(labels or {})
        self.clock: Clock = clock or RealClock()
        self.profile = resolve_profile(profile)
        self.start = self.clock.now()
        self.nodes: list[Node] = generate_nodes(derived_random(seed, name, "nodes"), self.profile)
        self.queue = EventQueue(self.start)
        self.faults = Faults()
        self.reservation = Reservation()
        p = self.profile
        self.workloads = WorkloadModel(
            self.nodes,
            self.queue,
            image_size=lambda image: p.image_sizes.get(image) or default_image_size(image),
            is_bad=lambda image: image_is_bad(image, p.bad_images),
            pull_rate=lambda: p.pull_bytes_per_s / self._slow(),
        )
        self.workload_section = WorkloadSection(name, self.workloads, lambda i: image_is_bad(i, p.bad_images))
        self.os = OsSlots(
            p.os_version,
            self.queue,
            install_s=p.install_s,
            reboot_s=p.reboot_s,
            health_check_s=p.health_check_s,
            bad_versions=p.bad_os_versions,
            failure=lambda stage, version: self.faults.install_failure(stage, self.queue.now),
            set_ready=self._set_ready,
            scale=self._slow,
        )
        self.os_section = OsSection(self.os)  # the manifest's os section on the slots
        self.traffic = TrafficModel((seed, name), self.start, rate=p.traffic_per_s)
        self.services = ServiceTrafficModel((seed, name), self.start, rate=p.traffic_per_s)
        # The rack and its provisioning pipeline (the ``infra`` section; agent/infra.py).
        self.metal = SimBareMetal(seed, name, self.clock, self.faults, slow=self._slow)
        self.infra = InfraExecutor(self.metal, now=self.clock.now)
        self.data_dir: Path | None = None

    def persist_to(self, data_dir: Path) -> None:
        """Keep in ``data_dir`` what a real site keeps on its disks across an agent restart, and
        take it back now: the rack (``rack.json``), the OS slots (``os.json``: the site runs the
        OS it committed, and resumes an upgrade under way) and the nodes' pulled images
        (``images.json``). Not kept, though a real site keeps them: running pods (re-created
        from the persisted manifest, with new creation times and restarts from 0) and policy
        hit counters (from 0). Injected faults are the simulator's settings, not the site's. A
        fresh site (no files) runs exactly as without this (same seed, same observations)."""
        if self.data_dir is not None:
            return
        self.data_dir = data_dir
        now = self.advance()
        self.metal.persist_to(data_dir / "rack.json")
        self.os_section.persist_to(data_dir / "os.json", now)
        self.workloads.persist_images_to(data_dir / "images.json")

    def __repr__(self) -> str:
        return f"SimSite({self.name!r}, nodes={len(self.nodes)}, labels={self.labels})"

    # --- time -------------------------------------------------------------------

    def advance(self) -> float:
        """Bring every model up to the clock's time; returns that (true) time."""
        now = self.clock.now()
        self.queue.run_until(now)
        self.traffic.advance(now)
        self.services.advance(now)
        return now

    def now(self) -> float:
        """The site's own clock: true time plus any injected skew."""
        now = self.advance()
        return now + self.faults.skew(now)

    def _slow(self) -> float:
        return self.faults.slow_factor(self.queue.now)

    def _set_ready(self, ready: bool, now: float) -> None:
        for node in self.nodes:
            node.ready = ready
        if ready:
            self.workloads.schedule(now)

    # --- faults -------------------------------------------------------------------

    def inject(self, fault: str, *, duration: float | None = None, **params: Any) -> ActiveFault:
        return self.faults.inject(fault, self.advance(), duration=duration, **params)

    def clear(self, fault: str | None = None) -> None:
        self.advance()
        self.faults.clear(fault)

    def active_faults(self) -> list[str]:
        return self.faults.names(self.advance())

    def connected(self) -> bool:
        """Whether the agent can reach the control plane: not while connectivity is
        lost, nor while the site reboots for an OS install."""
        now = self.advance()
        return self.faults.connected(now) and not self.os.rebooting

    def latency(self, base_s: float) -> float:
        return base_s * self.faults.slow_factor(self.advance())

    def next_change_in(self) -> float | None:
        """Seconds until the next scheduled change of the models (a pull done, a pod started,
        an install step); ``None`` when nothing is scheduled."""
        now = self.advance()
        due = self.queue.next_time()
        return None if due is None else max(0.0, due - now)

    # --- models --------------------------------------------------------------------

    def reserve(self, cpu_millis: int, memory_bytes: int) -> str | None:
        """Reserve capacity (spread over nodes by capacity); on a shortfall, keep the
        reservation in force and return why."""
        now = self.advance()
        want = Reservation(cpu_millis, memory_bytes)
        if why := reserve(self.nodes, want):
            return why
        self.reservation = want
        self.workloads.schedule(now)
        return None

    def set_workloads(self, workloads: Sequence[Workload]) -> None:
        self.workloads.set_workloads(workloads, self.advance())

    def install_os(self, version: str) -> bool:
        return self.os.install(version, self.advance())

    def commit_os(self) -> bool:
        return self.os.commit(self.advance())

    def set_policy(self, policy: NetworkPolicy | None) -> None:
        self.traffic.set_policy(policy, self.advance())

    def set_network_policies(self, policies: Sequence[NetworkPolicy]) -> None:
        self.traffic.set_policies(policies, self.advance())

    def set_service_policies(self, policies: Sequence[ServicePolicy]) -> None:
        self.services.set_policies(policies, self.advance())

    def allocatable(self) -> Allocatable:
        return Allocatable(
            sum(n.allocatable_cpu for n in self.nodes), sum(n.allocatable_memory for n in self.nodes)
        )

    def observation(self) -> Observation:
        now = self.advance()
        return Observation(
            nodes=tuple(n.info() for n in self.nodes),
            usage=site_usage(
                self.nodes,
                self.workloads,
                (self.seed, self.name),
                now - self.start,
                self.profile.noise,
                self.faults.pressure(now),
            ),
            allocatable=self.allocatable(),
            os_version=self.os.version,
            os=self.os_section.info(),
            policy_hits=merged_hits(
                self.traffic.hits, self.services.hits, self.workload_section.network_hits(now)
            ),
            now=now + self.faults.skew(now),
            pods=self.workload_section.pods(),
            infra=self.infra.report(),
        )


def _reservation(section: Any) -> tuple[int, int] | str:
    if not isinstance(section, Mapping):
        return "the reservations section must be an object"
    values = []
    for key in ("cpuMillis", "memoryBytes"):
        value = section.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"reservations.{key} must be a non-negative integer, not {value!r}"
        values.append(value)
    return values[0], values[1]


class SimDriver:
    """The ``Driver`` over one ``SimSite``. Calls take the profile's latency (times the
    slow fault) on the site's clock."""

    name = "sim"

    def __init__(self, site: SimSite) -> None:
        self.site = site

    @classmethod
    def for_site(
        cls,
        name: str,
        *,
        seed: int | str | None = None,
        labels: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        profile: SiteProfile | str = "default",
        nodes: int | None = None,
    ) -> SimDriver:
        """A driver over a new ``SimSite``: seeded by ``seed`` (default: the site name),
        with ``nodes`` fixing the node count of the profile."""
        prof = resolve_profile(profile)
        if nodes is not None:
            prof = dataclasses.replace(prof, nodes=nodes)
        return cls(SimSite(name if seed is None else seed, name, labels, clock, prof))

    def connected(self) -> bool:
        return self.site.connected()

    def next_change_in(self) -> float | None:
        """For the agent core: when to look again while items are in progress. Only on the
        real clock: the agent waits in wall-clock time, which a virtual clock does not follow."""
        if not isinstance(self.site.clock, RealClock):
            return None
        infra = self.site.infra
        if infra.desired is not None and infra.item().state == "InProgress":
            return None  # the infrastructure pipeline runs on its own task, not on the time line
        return self.site.next_change_in()

    def inject(self, fault: str, *, duration: float | None = None, **params: Any) -> ActiveFault:
        return self.site.inject(fault, duration=duration, **params)

    def clear(self, fault: str | None = None) -> None:
        self.site.clear(fault)

    async def apply(self, manifest: dict[str, Any]) -> list[ItemStatus]:
        await self.site.clock.sleep(self.site.latency(self.site.profile.apply_latency_s))
        spec = manifest.get("spec") or {}
        sections: Mapping[str, Any] = spec.get("sections") or {}
        items: list[ItemStatus] = []
        if "reservations" in sections:
            items.append(self._apply_reservations(sections["reservations"]))
        else:
            self.site.reserve(0, 0)
        items += self._apply_policies(sections)
        items += self.site.os_section.apply(sections.get("os"), self.site.advance())
        items += self.site.workload_section.apply(sections.get("workloads"), self.site.advance())
        items += self.site.infra.apply(sections.get("infra"))
        for section in sorted(set(sections) - set(SUPPORTED_SECTIONS)):
            items.append(
                ItemStatus(section, section, "Failed", f"the sim driver does not support section {section!r}")
            )
        return items

    def bind_site(self, ident: SavedIdentity) -> None:
        """The agent core hands over the site's identity: the site's disks live in its data dir
        (``SimSite.persist_to``), the infra pipeline keeps its state in ``infra.json`` and
        downloads artifacts by hash into ``artifacts/`` (``agent/infra_site.py``)."""
        from fleetplane.agent.infra_site import SiteLink

        self.site.persist_to(ident.data_dir)
        infra = self.site.infra
        if infra.state_file is None:
            infra.load(ident.data_dir / "infra.json")
        link = SiteLink(ident)
        infra.fetch, infra.publish = link.fetch, link.publish

    def _apply_reservations(self, section: Any) -> ItemStatus:
        parsed = _reservation(section)
        if isinstance(parsed, str):
            return ItemStatus("reservations", "reservations", "Failed", parsed)
        if why := self.site.reserve(*parsed):
            return ItemStatus("reservations", "reservations", "Failed", why)
        return ItemStatus("reservations", "reservations", "Applied")

    def _apply_policies(self, sections: Mapping[str, Any]) -> list[ItemStatus]:
        """Both policy sections; one absent removes its policies (and their counters)."""
        network, items = network_policies(sections)
        service, more = service_policies(sections)
        self.site.set_network_policies(network)
        self.site.set_service_policies(service)
        return items + more

    async def observe(self) -> Observation:
        await self.site.clock.sleep(self.site.latency(self.site.profile.observe_latency_s))
        return self.site.observation()


# --- fleet-wide fault injection -------------------------------------------------


def select_sites(sites: Iterable[SimSite], selector: str | Selector) -> list[SimSite]:
    """The sites whose labels match a label selector (``""`` selects all)."""
    sel = parse_selector(selector) if isinstance(selector, str) else selector
    return [s for s in sites if sel.matches(s.labels)]


def inject_where(
    sites: Iterable[SimSite],
    selector: str | Selector,
    fault: str,
    *,
    duration: float | None = None,
    **params: Any,
) -> list[str]:
    """Inject ``fault`` into every matching site; the names of those sites."""
    chosen = select_sites(sites, selector)
    for site in chosen:
        site.inject(fault, duration=duration, **params)
    return [s.name for s in chosen]


def clear_where(sites: Iterable[SimSite], selector: str | Selector, fault: str | None = None) -> list[str]:
    chosen = select_sites(sites, selector)
    for site in chosen:
        site.clear(fault)
    return [s.name for s in chosen]
