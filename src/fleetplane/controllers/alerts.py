"""The alert controller: evaluates every ``AlertRule`` at a fixed interval against the fleet
view and keeps one ``Alert`` per rule (docs/alerts.md).

Every replica runs it to follow the rules, receivers and Alerts (``/metrics`` counts firing
alerts from it); the leader also evaluates (``enable``). A tick:

1. per rule, the subjects in breach (``alert_eval.breaches``) and the Alert's next status
   (``alert_eval.advance``); the changed Alerts are written in one transaction;
2. per Alert and receiver whose told firing set differs from the current one, and whose
   backoff allows, a webhook in the Alertmanager format (``alert_notify``), all at once;
   the outcomes (what each receiver now knows, failures) are written in one transaction.

The state is the Alerts' status, read back from the store at start: a restart resumes the
``for`` clocks and sends nothing a receiver was already told (delivery is at least once: a
crash between a POST and its write may repeat that one notification).

At first sync (and when a tenant appears) the default rules (``DEFAULT_RULES``) are created
in the tenant's ``default`` namespace unless they exist; set ``spec.disabled`` to silence one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from fleetplane.controllers.alert_eval import Rule, advance, breaches, rfc3339
from fleetplane.controllers.alert_notify import NotifyError, RetryPolicy, payload, post
from fleetplane.controllers.health_controller import FleetHealth
from fleetplane.controllers.loop import run_controller
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store import EventType, Store
from fleetplane.core.watch import ANY_TENANT, WatchFilter, WatchHub
from fleetplane.kinds import ALERT, ALERT_RECEIVER, ALERT_RULE, TENANT

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # tenant, namespace, name
KINDS = (ALERT_RULE.kind, ALERT_RECEIVER.kind, ALERT.kind, TENANT.kind)
DEFAULT_NAMESPACE = "default"
DEFAULT_RULE_LABEL = "fleetplane.io/default-rule"
MAX_BATCH = 256


def _rule(
    expr: str, op: str, threshold: float, severity: str, after: str = "0s", why: str = ""
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "expr": expr,
        "op": op,
        "threshold": threshold,
        "for": after,
        "severity": severity,
    }
    return spec | ({"annotations": {"description": why}} if why else {})


DEFAULT_RULES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("site-offline", _rule("site.connected", "==", 0, "critical", "1m", "{{ $labels.site }} is offline.")),
    (
        "site-certificate-expiring",
        _rule(
            "site.certificate.daysLeft", "<", 7, "warning", why="{{ $labels.site }}: {{ $value }} days left."
        ),
    ),
    ("rollout-failed", _rule("rollout.failed", "==", 1, "critical", why="{{ $labels.rollout }} failed.")),
    ("site-cpu-high", _rule("site.cpu.percent", ">", 90, "warning", "5m")),
    ("site-memory-high", _rule("site.memory.percent", ">", 90, "warning", "5m")),
)


def _key(tenant: str, obj: Obj) -> Key:
    m = obj["metadata"]
    return tenant, m.get("namespace") or "", m["name"]


def _rv(obj: Obj | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class AlertController:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        view: Callable[[], FleetHealth | None],
        *,
        interval: float = 15.0,
        external_url: str = "",
        retry: RetryPolicy | None = None,
        default_rules: bool = True,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        open_receiver: Callable[[str, Obj], Obj] | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.view = view
        self.interval = interval
        self.external_url = external_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.default_rules = default_rules
        self.clock = clock
        self.transport = transport
        # Opens a receiver's sealed webhook headers (the server binds its envelope).
        self.open_receiver = open_receiver
        self.rules: dict[Key, Rule] = {}
        self.receivers: dict[Key, dict[str, Any]] = {}
        self.alerts: dict[Key, Obj] = {}
        self.tenants: set[str] = set()
        self.evaluating = False
        self.synced = asyncio.Event()
        self.notifications = 0  # delivered (tests, metrics)
        self._next_try: dict[tuple[Key, str], float] = {}
        self._defaults_for: set[str] = set()

    def enable(self) -> None:
        """This replica leads: from now on it evaluates and notifies."""
        self.evaluating = True

    async def run(self) -> None:
        await run_controller("alerts", self._sync_and_follow, self._loop)

    # -- following ----------------------------------------------------------------------------

    def _fold(self, tenant: str, obj: Obj, deleted: bool) -> None:
        kind = obj["kind"]
        if kind == TENANT.kind:
            name = obj["metadata"]["name"]
            self.tenants.discard(name) if deleted else self.tenants.add(name)
            return
        key = _key(tenant, obj)
        if kind == ALERT_RULE.kind:
            if deleted:
                self.rules.pop(key, None)
            else:
                try:
                    self.rules[key] = Rule.of(tenant, obj)
                except ValueError as exc:  # stored before a stricter schema: skip it, say why
                    log.warning("alert rule %s is not valid any more: %s", key, exc)
                    self.rules.pop(key, None)
        elif kind == ALERT_RECEIVER.kind:
            if deleted:
                self.receivers.pop(key, None)
            else:
                self.receivers[key] = self._receiver_spec(tenant, obj)
        elif kind == ALERT.kind:
            # Our own writes come back later: never let an older one replace a newer.
            if _rv(obj) < _rv(self.alerts.get(key)):
                return
            if deleted:
                self.alerts.pop(key, None)
            else:
                self.alerts[key] = obj

    def _receiver_spec(self, tenant: str, obj: Obj) -> dict[str, Any]:
        if self.open_receiver is not None:
            try:
                obj = self.open_receiver(tenant, obj)
            except ApiError as exc:  # a KEK that changed: send without the headers, say why
                log.warning(
                    "alert receiver %s: cannot open its headers: %s", obj["metadata"]["name"], exc.message
                )
                bare = dict(obj.get("spec") or {})
                bare["webhook"] = {**(bare.get("webhook") or {}), "headers": {}}
                return bare
        spec: dict[str, Any] = obj.get("spec") or {}
        return spec

    async def _sync_and_follow(self) -> None:
        revision, objects = await asyncio.to_thread(self.store.scan, KINDS)
        self.rules, self.receivers, self.alerts, self.tenants = {}, {}, {}, set()
        for tenant, obj in objects:
            self._fold(tenant, obj, False)
        await self._ensure_defaults()
        self.synced.set()
        async for ev in self.hub.watch(WatchFilter(ANY_TENANT, KINDS), since=revision):
            self._fold(ev.tenant, ev.object, ev.type is EventType.DELETED)
            if ev.kind == TENANT.kind and ev.type is EventType.ADDED:
                await self._ensure_defaults()

    async def _ensure_defaults(self) -> None:
        if not self.default_rules:
            return
        for tenant in sorted(self.tenants - self._defaults_for):
            try:
                await asyncio.to_thread(self._create_defaults, tenant)
                self._defaults_for.add(tenant)
            except ApiError as exc:
                log.warning("could not create the default alert rules of %s: %s", tenant, exc.message)

    def _create_defaults(self, tenant: str) -> None:
        for name, spec in DEFAULT_RULES:
            if self.store.get_or_none(tenant, ALERT_RULE.kind, DEFAULT_NAMESPACE, name) is not None:
                continue
            meta = {"name": name, "namespace": DEFAULT_NAMESPACE, "labels": {DEFAULT_RULE_LABEL: "true"}}
            rule = ALERT_RULE.normalize({"metadata": meta, "spec": {**spec, "receivers": ["default"]}})
            try:
                self.store.create(tenant, rule)
            except ApiError as exc:
                if exc.code != 409:  # another replica made it first
                    raise

    # -- reading ------------------------------------------------------------------------------

    def firing(self) -> list[tuple[Key, str, int, int]]:
        """Per Alert: key, severity, firing and pending instance counts."""
        out = []
        for key, alert in sorted(self.alerts.items()):
            instances = (alert.get("status") or {}).get("instances") or {}
            firing = sum(1 for i in instances.values() if i.get("state") == "firing")
            severity = str((alert.get("spec") or {}).get("severity") or "")
            out.append((key, severity, firing, len(instances) - firing))
        return out

    # -- evaluating ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        await self.synced.wait()
        while True:
            await asyncio.sleep(self.interval)  # first after one interval: the view fills first
            if self.evaluating:
                try:
                    await self.tick()
                except Exception:
                    log.exception("alert evaluation failed")

    async def tick(self) -> None:
        """Evaluate every rule once, write what changed, send the notifications due."""
        view = self.view()
        if view is None:
            return
        now = self.clock()
        changes: dict[Key, dict[str, Any] | None] = {}
        for key, rule in list(self.rules.items()):
            await asyncio.sleep(0)  # one rule at a time: the event loop is never held long
            if key not in self.rules:
                continue
            prev = (self.alerts.get(key) or {}).get("status")
            new = advance(prev, breaches(rule, view, now), rule.spec.for_seconds, now, rule.subject)
            if new is not None:
                new = self._prune(rule, new)
            if new != prev and not (new is None and key not in self.alerts):
                changes[key] = new
        for key in self.alerts.keys() - self.rules.keys():
            changes[key] = None  # the rule is gone
        await self._write(changes)
        await self._notify(now)

    def _prune(self, rule: Rule, status: dict[str, Any]) -> dict[str, Any]:
        """Forget receivers the rule no longer names, and resolved instances nobody must be told."""
        wanted = set(rule.spec.receivers)
        receivers = {n: s for n, s in (status.get("receivers") or {}).items() if n in wanted}
        told = {i for n, s in receivers.items() if self._receiver(rule, n) for i in s.get("notified") or {}}
        resolved = {n: r for n, r in (status.get("resolved") or {}).items() if n in told}
        return {**status, "receivers": receivers, "resolved": resolved}

    def _receiver(self, rule: Rule, name: str) -> dict[str, Any] | None:
        return self.receivers.get((rule.tenant, rule.namespace, name))

    async def _write(self, changes: dict[Key, dict[str, Any] | None]) -> None:
        items = sorted(changes.items())
        for start in range(0, len(items), MAX_BATCH):
            batch = items[start : start + MAX_BATCH]
            try:
                written = await asyncio.to_thread(self._write_batch, batch)
            except Exception as exc:
                log.warning("could not write alerts: %s", exc)
                continue
            for key, obj in written.items():
                if obj is None:
                    self.alerts.pop(key, None)
                else:
                    self.alerts[key] = obj

    def _write_batch(self, batch: list[tuple[Key, dict[str, Any] | None]]) -> dict[Key, Obj | None]:
        done: dict[Key, Obj | None] = {}
        with self.store.batch() as tx:
            for key, status in batch:
                tenant, ns, name = key
                current = tx.get_or_none(tenant, ALERT.kind, ns, name)
                if status is None:
                    if current is not None:
                        tx.delete(tenant, ALERT.kind, ns, name)
                    done[key] = None
                    continue
                rule = self.rules[key]
                spec = {"rule": name, "expr": rule.spec.expr, "severity": rule.spec.severity}
                if current is None:
                    meta = {"name": name, "namespace": ns, "labels": {"fleetplane.io/alert-rule": name}}
                    obj = ALERT.normalize({"metadata": meta, "spec": spec, "status": status})
                    done[key] = tx.create(tenant, obj)
                elif current.get("spec") != spec:
                    done[key] = tx.update(tenant, {**current, "spec": spec, "status": status})
                else:
                    done[key] = tx.update(tenant, {**current, "status": status}, part="status")
        return done

    # -- notifying ----------------------------------------------------------------------------

    def _due(self, now: float) -> list[tuple[Key, str, dict[str, Any], dict[str, Any] | None]]:
        """(alert, receiver name, receiver spec, payload) for every notification due now; the
        payload is None when the receiver only needs its state updated (no resolved notices)."""
        due: list[tuple[Key, str, dict[str, Any], dict[str, Any] | None]] = []
        for key, alert in self.alerts.items():
            rule = self.rules.get(key)
            if rule is None:
                continue
            status = alert.get("status") or {}
            firing = {n for n, i in (status.get("instances") or {}).items() if i.get("state") == "firing"}
            for name in rule.spec.receivers:
                receiver = self._receiver(rule, name)
                told = ((status.get("receivers") or {}).get(name) or {}).get("notified") or {}
                if receiver is None or set(told) == firing or now < self._next_try.get((key, name), 0.0):
                    continue
                send_resolved = bool(receiver.get("sendResolved", True))
                if not send_resolved and firing <= set(told):
                    due.append((key, name, receiver, None))  # only resolutions it does not want
                    continue
                body = payload(
                    rule, status, name, told, external_url=self.external_url, send_resolved=send_resolved
                )
                due.append((key, name, receiver, body))
        return due

    async def _notify(self, now: float) -> None:
        due = self._due(now)
        if not due:
            return
        async with httpx.AsyncClient(transport=self.transport) as client:
            results = await asyncio.gather(*(self._send(client, rcv, body) for _, _, rcv, body in due))
        changes: dict[Key, dict[str, Any]] = {}
        for (key, name, _, _), error in zip(due, results, strict=True):
            alert, rule = self.alerts.get(key), self.rules.get(key)
            if alert is None or rule is None:
                continue
            status = changes.get(key) or dict(alert.get("status") or {})
            changes[key] = self._record(key, name, status, error, now)
        await self._write({k: self._prune(self.rules[k], s) for k, s in changes.items()})

    async def _send(
        self, client: httpx.AsyncClient, receiver: dict[str, Any], body: dict[str, Any] | None
    ) -> str | None:
        if body is None:
            return None
        hook = receiver.get("webhook") or {}
        try:
            timeout = float(hook.get("timeoutSeconds") or 5.0)
            await post(client, str(hook.get("url")), body, timeout, headers=hook.get("headers") or {})
        except NotifyError as exc:
            return str(exc)
        return None

    def _record(
        self, key: Key, name: str, status: dict[str, Any], error: str | None, now: float
    ) -> dict[str, Any]:
        """What the receiver knows after this attempt (or, failing, when to try again)."""
        receivers = dict(status.get("receivers") or {})
        state = dict(receivers.get(name) or {})
        firing = {
            n: i.get("firingAt") or i["activeAt"]
            for n, i in (status.get("instances") or {}).items()
            if i.get("state") == "firing"
        }
        if error is None:
            self.notifications += 1
            self._next_try.pop((key, name), None)
            state.update(notified=firing, lastSentAt=rfc3339(now), attempts=0)
            state.pop("lastError", None)
        else:
            failures = int(state.get("attempts") or 0) + 1
            log.warning("alert %s: receiver %s failed (attempt %d): %s", key, name, failures, error)
            if failures >= self.retry.max_attempts:  # bounded: give this notification up
                self._next_try.pop((key, name), None)
                state.update(
                    notified=firing, attempts=0, lastError=f"gave up after {failures} attempts: {error}"
                )
            else:
                self._next_try[(key, name)] = now + self.retry.delay(failures)
                state.update(attempts=failures, lastError=error)
        receivers[name] = state
        return {**status, "receivers": receivers}
