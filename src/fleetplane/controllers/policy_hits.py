"""Fleet policy hits: each NetworkPolicy's and ServicePolicy's status sums its per-rule hit
counters over every site that enforces it, with the top sites per rule.

Sites report ``status.policyHits`` as ``{"<namespace>/<policy>/<rule>": count}`` (monotonic
per policy generation on the site). ``PolicyHits`` is the pure in-memory view: every site's
counters grouped by policy, and the policies' specs; a site report marks only the policies
whose counters moved. ``PolicyHitsController`` feeds it from one hub watch and writes a
policy's status at most once per ``interval`` (a report per site per heartbeat would
otherwise mean one write per site per second), and only when it differs. Level-triggered:
on start or a lost watch it rebuilds from a snapshot and rewrites what differs.

A site counts as enforcing a policy when it reports that kind's default counter
(``default-egress``/``default-ingress``, or ``default``), so a NetworkPolicy and a
ServicePolicy of the same name are told apart. Counters for rules the current spec does not
have (a site that has not applied the new generation yet) are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import NETWORK_POLICY, SERVICE_POLICY, SITE
from fleetplane.kinds.policy import DEFAULT_KEYS, DIRECTIONS, governed_directions

log = logging.getLogger(__name__)
TOP_SITES = 5
POLICY_KINDS = (NETWORK_POLICY.kind, SERVICE_POLICY.kind)
SiteKey = tuple[str, str]  # tenant, site
Prefix = tuple[str, str]  # tenant, "namespace/policy"
PolicyKey = tuple[str, str, str, str]  # kind, tenant, namespace, name
Counters = dict[str, int]  # rule -> count


def rule_names(kind: str, spec: Mapping[str, Any]) -> list[str]:
    """The hit keys (rule part) of a policy: its rules in order, then its default counters."""
    if kind == NETWORK_POLICY.kind:
        rules = [r["name"] for d in DIRECTIONS for r in spec.get(d) or []]
        return rules + [f"default-{d}" for d in governed_directions(dict(spec))]
    return [r["name"] for r in spec.get("rules") or []] + ["default"]


def split_hits(hits: Any) -> dict[str, Counters]:
    """``{"ns/policy": {rule: count}}`` from a site's ``policyHits``; other keys are ignored."""
    out: dict[str, Counters] = {}
    if not isinstance(hits, Mapping):
        return out
    for key, count in hits.items():
        prefix, _, rule = str(key).rpartition("/")
        if "/" not in prefix or not rule or isinstance(count, bool) or not isinstance(count, int):
            continue
        out.setdefault(prefix, {})[rule] = max(0, count)
    return out


class PolicyHits:
    def __init__(self) -> None:
        self.policies: dict[PolicyKey, Obj] = {}
        self.site_hits: dict[SiteKey, dict[str, Counters]] = {}
        self.by_prefix: dict[Prefix, dict[str, Counters]] = {}  # site name -> its counters

    @staticmethod
    def prefix_of(key: PolicyKey) -> Prefix:
        return key[1], f"{key[2]}/{key[3]}"

    def _policies_of(self, prefixes: set[Prefix]) -> set[PolicyKey]:
        out = set()
        for tenant, prefix in prefixes:
            namespace, _, name = prefix.partition("/")
            out |= {key for kind in POLICY_KINDS if (key := (kind, tenant, namespace, name)) in self.policies}
        return out

    def set_site(self, tenant: str, name: str, hits: Any) -> set[PolicyKey]:
        """Fold one site's report in; the policies whose sums may have moved."""
        new = split_hits(hits)
        old = self.site_hits.get((tenant, name), {})
        if new == old:
            return set()
        changed = {(tenant, p) for p in set(new) | set(old) if new.get(p) != old.get(p)}
        for tenant_prefix in changed:
            sites = self.by_prefix.setdefault(tenant_prefix, {})
            if tenant_prefix[1] in new:
                sites[name] = new[tenant_prefix[1]]
            else:
                sites.pop(name, None)
                if not sites:
                    del self.by_prefix[tenant_prefix]
        self.site_hits[(tenant, name)] = new
        return self._policies_of(changed)

    def remove_site(self, tenant: str, name: str) -> set[PolicyKey]:
        return self.set_site(tenant, name, {}) if (tenant, name) in self.site_hits else set()

    def set_policy(self, key: PolicyKey, obj: Obj) -> bool:
        """Whether the policy's spec or generation moved (its own status writes do not)."""
        old = self.policies.get(key)
        self.policies[key] = obj
        return old is None or (old.get("spec"), _generation(old)) != (obj.get("spec"), _generation(obj))

    def remove_policy(self, key: PolicyKey) -> None:
        self.policies.pop(key, None)

    def status_of(self, key: PolicyKey) -> dict[str, Any] | None:
        """The policy's status without ``observedAt``; ``None`` for an unknown policy."""
        obj = self.policies.get(key)
        if obj is None:
            return None
        kind = key[0]
        rules = rule_names(kind, obj.get("spec") or {})
        marks = DEFAULT_KEYS[kind]
        sites = {
            site: counters
            for site, counters in self.by_prefix.get(self.prefix_of(key), {}).items()
            if any(m in counters for m in marks)
        }
        hits = {rule: sum(c.get(rule, 0) for c in sites.values()) for rule in rules}
        top = {}
        for rule in rules:
            ranked = sorted(((-c.get(rule, 0), s) for s, c in sites.items() if c.get(rule, 0) > 0))
            if ranked:
                top[rule] = [{"site": s, "hits": -n} for n, s in ranked[:TOP_SITES]]
        return {
            "observedGeneration": _generation(obj),
            "hits": hits,
            "totalHits": sum(hits.values()),
            "topSites": top,
            "sites": len(sites),
            "ruleCount": sum(1 for rule in rules if rule not in marks),
        }


def _generation(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


def _policy_key(tenant: str, obj: Obj) -> PolicyKey:
    m = obj["metadata"]
    return obj["kind"], tenant, m.get("namespace") or "", m["name"]


def _comparable(status: Any) -> Any:
    return {k: v for k, v in status.items() if k != "observedAt"} if isinstance(status, dict) else status


class PolicyHitsController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        *,
        interval: float = 1.0,
        clock: Callable[[], str] = now_rfc3339,
    ) -> None:
        self.store = store
        self.hub = hub
        self.interval = interval
        self.clock = clock
        self.state = PolicyHits()
        self.written: dict[PolicyKey, Any] = {}  # the stored status, less observedAt
        self.synced = asyncio.Event()
        self._dirty: set[PolicyKey] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await run_controller("policy-hits", self._sync_and_follow, self._flush_loop)

    def _fold(self, tenant: str, obj: Obj, deleted: bool) -> None:
        if obj["kind"] == SITE.kind:
            name = obj["metadata"]["name"]
            if deleted:
                self._dirty |= self.state.remove_site(tenant, name)
            else:
                self._dirty |= self.state.set_site(tenant, name, (obj.get("status") or {}).get("policyHits"))
            return
        key = _policy_key(tenant, obj)
        if deleted:
            self.state.remove_policy(key)
            self.written.pop(key, None)
            self._dirty.discard(key)
            return
        self.written[key] = _comparable(obj.get("status") or {})
        if self.state.set_policy(key, obj) or self.written[key] != self.state.status_of(key):
            self._dirty.add(key)

    async def _sync_and_follow(self) -> None:
        kinds = (SITE.kind, *POLICY_KINDS)
        revision, objects = await asyncio.to_thread(self.store.scan, kinds)
        self.state, self.written, self._dirty = PolicyHits(), {}, set()
        order = {kind: i for i, kind in enumerate(kinds)}
        for tenant, obj in sorted(objects, key=lambda item: order[item[1]["kind"]]):
            self._fold(tenant, obj, deleted=False)
        self._wake.set()
        self.synced.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, kinds), since=revision):
            self._fold(ev.tenant, ev.object, ev.type is EventType.DELETED)
            if self._dirty:
                self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(self.interval)  # coalesce: at most one write per policy per interval

    async def flush(self) -> int:
        """Write every dirty policy's status that differs from the stored one; how many."""
        dirty, self._dirty = self._dirty, set()
        written = 0
        for key in sorted(dirty):
            status = self.state.status_of(key)
            if status is None or status == self.written.get(key):
                continue
            kind, tenant, namespace, name = key
            obj = {
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace},
                "status": {**status, "observedAt": self.clock()},
            }
            try:
                await asyncio.to_thread(self.store.update, tenant, obj, part="status")
            except ApiError as exc:
                if exc.code != 404:
                    log.warning("could not write the hits of %s %s/%s: %s", kind, namespace, name, exc)
                    self._dirty.add(key)
                    self._wake.set()
                continue
            self.written[key] = status
            written += 1
        return written
