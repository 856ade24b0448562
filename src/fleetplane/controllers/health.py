"""The health score of a site (0-100) and its colour: a pure function of a Site and ``now``.

Four parts, each 0-100, weighted equally (docs/health.md has the formula and examples):

- **connectivity**: heartbeat freshness against the offline threshold, then latency and loss
  to the control plane when the site reports them (``status.link``);
- **reliability**: failed manifest items, crash-looping workloads, nodes not ready, and an OS
  upgrade that fell back;
- **security**: the site's certificate (revoked/decommissioned, expired, < 7 days or < 1 day
  left) and the share of its policy hits that were denials;
- **performance**: CPU and memory pressure, usage against allocatable.

``score = round(mean(parts))``, capped at 39 (red) when connectivity or security is 0: a site
the control plane cannot reach, or can no longer trust, is never better than red. Colours:
green ``> 75``, orange ``40..75`` (both ends included), red ``< 40``.

Every part moves in steps, never continuously, so the score of a site changes only when
something an operator should see changes; ``Health.valid_until`` says when the time alone
(a heartbeat going stale, a certificate nearing expiry) will move it next.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetplane.controllers.liveness import seen_at
from fleetplane.core.objects import Obj, parse_timestamp

Colour = Literal["green", "orange", "red"]
COLOURS: tuple[Colour, ...] = ("green", "orange", "red")
PARTS = ("connectivity", "reliability", "security", "performance")
GREEN_ABOVE = 75  # green: score > 75
RED_BELOW = 40  # red: score < 40; orange: 40..75
RED_CAP = 39  # the score when connectivity or security is 0
DAY = 86_400.0
CERT_WARN_S = 7 * DAY
CERT_CRITICAL_S = DAY
WORST = 10
BUCKETS = tuple(range(10, 101, 10))  # histogram upper bounds: 0-9, 10-19, ..., 90-100


def colour_of(score: float) -> Colour:
    if score > GREEN_ABOVE:
        return "green"
    if score >= RED_BELOW:
        return "orange"
    return "red"


@dataclass(frozen=True, slots=True)
class Health:
    score: int
    colour: Colour
    parts: dict[str, int]
    reasons: tuple[str, ...] = ()
    # When the passing of time alone will next change this result (epoch s); None: never.
    valid_until: float | None = field(default=None, compare=False)

    def to_status(self) -> dict[str, Any]:
        """The ``status.health`` of the Site, less ``observedAt``."""
        return {
            "score": self.score,
            "colour": self.colour,
            "parts": dict(self.parts),
            "reasons": list(self.reasons),
        }


_ts = parse_timestamp


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _Part:
    """One part: starts at 100, loses points with a reason for each, floors at 0."""

    def __init__(self) -> None:
        self.value = 100
        self.reasons: list[str] = []

    def cut(self, points: int, reason: str) -> None:
        self.value = max(0, self.value - points)
        self.reasons.append(reason)

    def zero(self, reason: str) -> None:
        self.value = 0
        self.reasons.append(reason)


def connectivity(
    status: Mapping[str, Any], now: float, offline_after: float, not_before: float | None = None
) -> tuple[_Part, list[float]]:
    """Fresh heartbeat: 100; older than half the offline threshold: 50; offline or never seen: 0.
    Then latency (> 250 ms: -20, > 1 s: -40) and loss (> 0.5 %: -10, >= 2 %: -30, >= 10 %: -60)."""
    part = _Part()
    changes: list[float] = []
    phase = status.get("phase") or "Pending"
    seen = seen_at(status.get("lastSeen"), now)
    if seen is not None and not_before is not None:
        seen = max(seen, not_before)  # no blame for the control plane's own downtime
    if phase == "Decommissioned":
        part.zero("decommissioned")
        return part, changes
    if seen is None:
        part.zero("never reported")
        return part, changes
    age = now - seen
    if phase == "Offline" or age >= offline_after:
        part.zero(f"offline: no heartbeat for {offline_after:g}s or more")
        return part, changes
    if age >= offline_after / 2:
        part.cut(50, f"heartbeat late: none for {offline_after / 2:g}s or more")
    else:
        changes.append(seen + offline_after / 2)
    changes.append(seen + offline_after)
    link = status.get("link") or {}
    latency = _number(link.get("latencyMs"))
    if latency is not None and latency > 1000:
        part.cut(40, "latency to the control plane over 1 s")
    elif latency is not None and latency > 250:
        part.cut(20, "latency to the control plane over 250 ms")
    loss = _number(link.get("lossPercent"))
    if loss is not None and loss >= 10:
        part.cut(60, "packet loss 10 % or more")
    elif loss is not None and loss >= 2:
        part.cut(30, "packet loss 2 % or more")
    elif loss is not None and loss > 0.5:
        part.cut(10, "packet loss over 0.5 %")
    return part, changes


CRASH_MARKERS = ("CrashLoopBackOff", "OOMKilled")


def _crashing(item: Mapping[str, Any]) -> bool:
    return any(m in str(item.get("reason") or "") for m in CRASH_MARKERS)


def reliability(status: Mapping[str, Any]) -> _Part:
    """Each failed manifest item -20 (at most -60), each crash-looping workload -30 (at most
    -60), each node not ready -15 (at most -45), an OS upgrade that fell back -30."""
    part = _Part()
    items = (status.get("manifest") or {}).get("items") or []
    crashing = [i for i in items if _crashing(i)]
    failed = [i for i in items if i.get("state") == "Failed" and i not in crashing]
    if failed:
        names = ", ".join(f"{i.get('section')}/{i.get('name')}" for i in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        part.cut(min(60, 20 * len(failed)), f"{len(failed)} failed manifest item(s): {names}{more}")
    if crashing:
        part.cut(min(60, 30 * len(crashing)), f"{len(crashing)} workload(s) crash-looping")
    not_ready = [n for n in status.get("nodes") or [] if n.get("ready") is False]
    if not_ready:
        part.cut(min(45, 15 * len(not_ready)), f"{len(not_ready)} node(s) not ready")
    last = (status.get("os") or {}).get("lastResult") or {}
    if last.get("outcome") == "FellBack":
        part.cut(30, f"OS upgrade to {last.get('version')} fell back")
    return part


def denial_share(hits: object, deny_keys: frozenset[str]) -> float | None:
    """Share of the site's policy hits that were denied; None without hits."""
    if not isinstance(hits, Mapping) or not deny_keys:
        return None
    total = denied = 0
    for key, count in hits.items():
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            continue
        total += count
        if key in deny_keys:
            denied += count
    return denied / total if total else None


def security(status: Mapping[str, Any], now: float, deny_keys: frozenset[str]) -> tuple[_Part, list[float]]:
    """Revoked (decommissioned) or expired certificate: 0; expiring in < 1 day: 20, < 7 days:
    50; then denials (> 5 % of policy hits: -10, > 20 %: -20, > 50 %: -40)."""
    part = _Part()
    changes: list[float] = []
    if status.get("phase") == "Decommissioned":
        part.zero("certificate revoked (site decommissioned)")
        return part, changes
    not_after = _ts((status.get("identity") or {}).get("notAfter"))
    if not_after is not None:
        left = not_after - now
        if left <= 0:
            part.zero("certificate expired")
            return part, changes
        if left < CERT_CRITICAL_S:
            part.cut(80, "certificate expires in less than 1 day")
        elif left < CERT_WARN_S:
            part.cut(50, f"certificate expires in {math.ceil(left / DAY)} day(s)")
            changes.append(not_after - CERT_CRITICAL_S)
            # the day count in the reason moves once a day
            changes.append(not_after - (math.ceil(left / DAY) - 1) * DAY)
        else:
            changes.append(not_after - CERT_WARN_S)
        changes.append(not_after)
    share = denial_share(status.get("policyHits"), deny_keys)
    if share is not None and share > 0.5:
        part.cut(40, "more than 50 % of policy hits denied")
    elif share is not None and share > 0.2:
        part.cut(20, "more than 20 % of policy hits denied")
    elif share is not None and share > 0.05:
        part.cut(10, "more than 5 % of policy hits denied")
    return part, changes


def load_percent(status: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """CPU and memory use in % of allocatable (the reported percentages when the site gives
    them, else usage / allocatable); None when unknown."""
    usage = status.get("usage") or {}
    alloc = status.get("allocatable") or {}
    out: list[float | None] = []
    for pct_key, amount_key in (("cpuPercent", "cpuMillis"), ("memoryPercent", "memoryBytes")):
        used, capacity = _number(usage.get(amount_key)), _number(alloc.get(amount_key))
        if used is not None and capacity:
            out.append(min(100.0, 100.0 * used / capacity))
        else:
            reported = _number(usage.get(pct_key))
            out.append(None if reported is None else min(100.0, reported))
    return out[0], out[1]


def disk_percent(status: Mapping[str, Any]) -> float | None:
    """Disk use in % of the nodes' disk capacity; None when unknown. Runs on every Site event
    (the health view, the metrics history): a list sum, 2.5x a generator's speed."""
    used = (status.get("usage") or {}).get("diskBytes")
    capacity = sum([n.get("diskBytes") or 0 for n in status.get("nodes") or []])
    if not isinstance(used, int | float) or capacity <= 0:
        return None
    return min(100.0, 100.0 * used / capacity)


def scored_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ``Site.status`` that ``evaluate`` reads, and no more: ``evaluate`` of it
    gives what ``evaluate`` of the whole status gives. A view that scores a site again as
    time passes keeps this instead of the report, whose node inventory, pods and healthy
    manifest items were about a quarter of the server's Python objects per connected site."""
    out = {key: status[key] for key in _SCORED_AS_IS if key in status}
    items = (status.get("manifest") or {}).get("items") or []
    bad = [i for i in items if i.get("state") == "Failed" or _crashing(i)]
    if bad:
        out["manifest"] = {"items": bad}
    not_ready = len([n for n in status.get("nodes") or [] if n.get("ready") is False])
    if not_ready:
        out["nodes"] = [{"ready": False}] * not_ready
    last = (status.get("os") or {}).get("lastResult")
    if last:
        out["os"] = {"lastResult": last}
    not_after = (status.get("identity") or {}).get("notAfter")
    if not_after is not None:
        out["identity"] = {"notAfter": not_after}
    return out


_SCORED_AS_IS = ("phase", "lastSeen", "link", "policyHits", "usage", "allocatable")


def _pressure(pct: float | None, what: str, part: _Part) -> None:
    if pct is None:
        return
    if pct >= 95:
        part.cut(100, f"{what} pressure: 95 % or more in use")
    elif pct >= 90:
        part.cut(70, f"{what} pressure: 90 % or more in use")
    elif pct >= 75:
        part.cut(30, f"{what} load: 75 % or more in use")


def performance(status: Mapping[str, Any]) -> _Part:
    """Per resource (CPU, memory): >= 75 % in use -30, >= 90 % -70, >= 95 % -100; the
    part is the worse of the two."""
    cpu, memory = load_percent(status)
    cpu_part, memory_part = _Part(), _Part()
    _pressure(cpu, "CPU", cpu_part)
    _pressure(memory, "memory", memory_part)
    worse = min(cpu_part, memory_part, key=lambda p: p.value)
    worse.reasons = cpu_part.reasons + memory_part.reasons
    return worse


def evaluate(
    site: Obj,
    now: float,
    *,
    offline_after: float = 30.0,
    deny_keys: frozenset[str] = frozenset(),
    not_before: float | None = None,
) -> Health:
    """The health of one site at ``now`` (epoch seconds). ``deny_keys``: the policy hit keys
    (``ns/policy/rule``) whose action is deny; ``not_before``: when the control plane started
    watching (a heartbeat is not counted older than that)."""
    status = site.get("status") or {}
    conn, conn_changes = connectivity(status, now, offline_after, not_before)
    sec, sec_changes = security(status, now, deny_keys)
    parts = {
        "connectivity": conn,
        "reliability": reliability(status),
        "security": sec,
        "performance": performance(status),
    }
    mean = sum(p.value for p in parts.values()) / len(parts)
    score = math.floor(mean + 0.5)
    if conn.value == 0 or sec.value == 0:
        score = min(score, RED_CAP)
    reasons = tuple(f"{name}: {r}" for name, p in parts.items() for r in p.reasons)
    future = [t for t in conn_changes + sec_changes if t > now]
    return Health(
        score=score,
        colour=colour_of(score),
        parts={name: p.value for name, p in parts.items()},
        reasons=reasons,
        valid_until=min(future) if future else None,
    )


def deny_keys_of(kind: str, namespace: str, name: str, spec: Mapping[str, Any]) -> set[str]:
    """The hit keys of a NetworkPolicy's or ServicePolicy's deny rules and deny defaults."""
    prefix = f"{namespace}/{name}/"
    keys = set()
    if kind == "NetworkPolicy":
        defaults = spec.get("defaultAction") or {}
        for direction in ("egress", "ingress"):
            rules = spec.get(direction) or []
            keys |= {prefix + r["name"] for r in rules if r.get("action") == "deny"}
            if defaults.get(direction) == "deny":
                keys.add(f"{prefix}default-{direction}")
    else:
        keys |= {prefix + r["name"] for r in spec.get("rules") or [] if r.get("action") == "deny"}
        if spec.get("defaultAction") == "deny":
            keys.add(prefix + "default")
    return keys


@dataclass(frozen=True, slots=True)
class Scored:
    """One site in a summary."""

    name: str
    health: Health


def bucket_of(score: int) -> int:
    """The histogram bucket (its upper bound, 10..100) of a score: 0-9 -> 10, ..., 90-100 -> 100."""
    return min(100, (score // 10 + 1) * 10)


def _rank(s: Scored) -> tuple[int, str]:
    return s.health.score, s.name


def summarize(sites: Iterable[Scored], worst: int = WORST) -> dict[str, Any]:
    """Counts per colour, a histogram of scores in buckets of 10, and the ``worst`` sites
    (lowest score first, then name)."""
    counts = dict.fromkeys(COLOURS, 0)
    histogram = dict.fromkeys(BUCKETS, 0)
    total = 0
    every = []
    for s in sites:
        total += 1
        counts[s.health.colour] += 1
        histogram[bucket_of(s.health.score)] += 1
        every.append(s)
    ranked = [(s.health.score, s.name, s.health) for s in heapq.nsmallest(worst, every, key=_rank)]
    return {
        "sites": total,
        "counts": counts,
        "histogram": [
            {"min": le - 10, "max": le if le == 100 else le - 1, "count": n} for le, n in histogram.items()
        ],
        "worst": [{"site": name, **h.to_status()} for _, name, h in ranked[:worst]],
    }
