"""Alert evaluation, as pure functions: a rule's value per subject from the fleet view, and
the next state of its ``Alert`` from the previous one (docs/alerts.md).

The state machine of one Alert (``AlertStatus``), advanced by :func:`advance` at every tick:

- a subject (site, or rollout for ``rollout.*``) in breach and new: an instance ``pending``
  since now (``firing`` at once when the rule's ``for`` is 0);
- pending for at least ``for``: ``firing`` (``firingAt``);
- no longer in breach: a firing instance moves to ``resolved`` (kept until every receiver was
  told), a pending one is dropped;
- the Alert is ``firing`` while any instance fires, else ``pending`` while any is pending,
  else ``resolved`` when it fired in this or an earlier episode; one that never fired and has
  nothing pending is gone (``None``).

Everything that matters is in the status, so the controller restarting resumes the ``for``
clocks where they were, and neither fires nor resolves anything twice.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetplane.controllers.health_controller import FleetHealth, SiteEntry
from fleetplane.core.objects import parse_timestamp
from fleetplane.core.selectors import Selector, SelectorError, parse_any
from fleetplane.kinds.alerts import MAX_LISTED, ROLLOUT_EXPRESSIONS, AlertRuleSpec

__all__ = ["Rule", "advance", "breaches", "compare", "rfc3339", "site_value", "ts"]

DAY = 86_400.0
FAILED_ROLLOUT_PHASES = frozenset({"Failed", "RolledBack"})
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def rfc3339(epoch: float) -> str:
    """Milliseconds, UTC, ``Z``: what Alertmanager payloads carry."""
    when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


ts = parse_timestamp


def compare(op: str, value: float, threshold: float) -> bool:
    return _OPS[op](value, threshold)


@dataclass(frozen=True)
class Rule:
    tenant: str
    namespace: str
    name: str
    spec: AlertRuleSpec
    selector: Selector | None  # the scope's label selector, None when it has none

    @classmethod
    def of(cls, tenant: str, obj: dict[str, Any]) -> Rule:
        spec = AlertRuleSpec.model_validate(obj.get("spec") or {})
        raw = spec.scope.selector
        selector = None
        if raw:
            try:
                selector = parse_any(raw if isinstance(raw, str) else raw.model_dump(exclude_none=True))
            except SelectorError:  # validation refuses it; an old stored one selects nothing
                selector = parse_any("fleetplane.io/invalid,!fleetplane.io/invalid")
        m = obj["metadata"]
        return cls(tenant, m.get("namespace") or "", m["name"], spec, selector)

    @property
    def subject(self) -> str:
        return "rollout" if self.spec.expr in ROLLOUT_EXPRESSIONS else "site"


def site_value(expr: str, entry: SiteEntry, now: float) -> float | None:
    """The value of a site expression for one site; None when unknown (never in breach)."""
    if not entry.reported or entry.phase == "Decommissioned":
        return None
    if expr == "site.health.score":
        return float(entry.health.score)
    if expr == "site.cpu.percent":
        return entry.cpu
    if expr == "site.memory.percent":
        return entry.memory
    if expr == "site.disk.percent":
        return entry.disk
    if expr == "site.connected":
        return 0.0 if entry.phase == "Offline" else 1.0
    if expr == "site.certificate.daysLeft":
        not_after = ts((entry.status.get("identity") or {}).get("notAfter"))
        return None if not_after is None else (not_after - now) / DAY
    return None


def _scope_names(rule: Rule, view: FleetHealth) -> Iterable[str] | None:
    """The site names in scope; None: every site of the tenant."""
    names: set[str] | None = None
    for ref in rule.spec.scope.virtualSites:
        ns, _, name = ref.rpartition("/")
        members = view.members((rule.tenant, ns or rule.namespace, name)) or set()
        names = members if names is None else names | members
    if rule.selector is not None:
        index = view.index.get(rule.tenant)
        chosen = index.select(rule.selector) if index is not None else set()
        names = chosen if names is None else names & chosen
    return names


def breaches(rule: Rule, view: FleetHealth, now: float) -> dict[str, float]:
    """Subject -> value, for every subject in scope whose value breaches the rule."""
    spec = rule.spec
    if spec.disabled:
        return {}
    out: dict[str, float] = {}
    if rule.subject == "rollout":
        for (tenant, ns, name), status in view.rollouts.items():
            if tenant != rule.tenant or ns != rule.namespace:
                continue
            failed = 1.0 if status.get("phase") in FAILED_ROLLOUT_PHASES else 0.0
            if compare(spec.op, failed, spec.threshold):
                out[f"{ns}/{name}"] = failed
        return out
    scoped = _scope_names(rule, view)
    for entry in _entries(view, rule.tenant, scoped):
        value = site_value(spec.expr, entry, now)
        if value is not None and not math.isnan(value) and compare(spec.op, value, spec.threshold):
            out[entry.name] = round(value, 3)
    return out


def _entries(view: FleetHealth, tenant: str, names: Iterable[str] | None) -> Iterator[SiteEntry]:
    return view.entries(tenant, None if names is None else set(names))


def advance(
    prev: dict[str, Any] | None, breach: dict[str, float], for_seconds: float, now: float, subject: str
) -> dict[str, Any] | None:
    """The Alert's next status from the previous one and the subjects now in breach."""
    old = prev or {}
    stamp = rfc3339(now)
    instances: dict[str, Any] = {}
    resolved: dict[str, Any] = dict(old.get("resolved") or {})
    for name, inst in (old.get("instances") or {}).items():
        if name in breach:
            continue
        if inst.get("state") == "firing":
            resolved[name] = {"startsAt": inst.get("firingAt") or inst["activeAt"], "endsAt": stamp}
    for name, value in breach.items():
        inst = dict((old.get("instances") or {}).get(name) or {})
        if not inst:
            inst = {"state": "pending", "activeAt": stamp, "value": value}
        if inst["state"] == "pending" and now - (ts(inst["activeAt"]) or now) >= for_seconds:
            inst.update(state="firing", firingAt=stamp, value=value)
        instances[name] = inst
        resolved.pop(name, None)  # in breach again: its resolution is moot
    firing = any(i["state"] == "firing" for i in instances.values())
    was = old.get("state")
    if firing:
        state = "firing"
    elif instances:
        state = "pending"
    elif old.get("startsAt"):
        state = "resolved"
    else:
        return None  # only ever pending (firing sets startsAt): nothing to keep
    out: dict[str, Any] = {
        "state": state,
        "since": old.get("since") if state == was else stamp,
        "startsAt": old.get("startsAt"),
        "endsAt": old.get("endsAt"),
        "subject": subject,
        "instances": instances,
        "resolved": resolved,
        "receivers": old.get("receivers") or {},
    }
    if firing and was != "firing":
        out["startsAt"], out["endsAt"] = stamp, None
    elif not firing and was == "firing":
        out["endsAt"] = stamp
    names = sorted(instances)
    out["affectedCount"] = len(names)
    out["affected"] = names[:MAX_LISTED]
    return {k: v for k, v in out.items() if v is not None}
