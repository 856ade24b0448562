"""Alert notifications: the Alertmanager webhook payload (version "4") and its delivery.

One notification per Alert (rule) and receiver whenever the set of firing instances the
receiver knows differs from the current one: it carries every firing instance and, when the
receiver wants them (``sendResolved``), those that resolved since it was last told. The
group is the rule: ``groupLabels`` = ``{alertname}``. Delivery is an HTTP POST with a JSON
body; anything but a 2xx (or no answer in ``timeoutSeconds``) is a failure, retried with
exponential backoff (``RetryPolicy``) up to ``max_attempts`` and then given up (recorded in
the Alert's ``status.receivers``). Webhooks go to third parties, not to the fleetplane
server, so they do not go through ``fleetplane.client``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import httpx

from fleetplane.controllers.alert_eval import Rule

__all__ = ["NotifyError", "RetryPolicy", "fingerprint", "instance_labels", "payload", "post"]

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
_TEMPLATE = re.compile(r"\{\{\s*\$(value|labels\.([A-Za-z0-9_]+))\s*\}\}")


class NotifyError(Exception):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before attempt n+1 after n failures: ``base * 2**(n-1)``, at most ``cap``; after
    ``max_attempts`` failures the notification is given up."""

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int = 8

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


def fingerprint(labels: dict[str, str]) -> str:
    """16 hex digits from the sorted label set (stable across restarts and replicas)."""
    raw = "\xff".join(f"{k}\xfe{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def instance_labels(rule: Rule, subject: str) -> dict[str, str]:
    labels = {
        **rule.spec.labels,
        "alertname": rule.name,
        "severity": rule.spec.severity,
        "namespace": rule.namespace,
        "tenant": rule.tenant,
        "expr": rule.spec.expr,
    }
    labels[rule.subject] = subject
    return labels


def _render(template: str, labels: dict[str, str], value: float | None) -> str:
    def fill(match: re.Match[str]) -> str:
        if match.group(1) == "value":
            return "" if value is None else f"{value:g}"
        return labels.get(match.group(2) or "", "")

    return _TEMPLATE.sub(fill, template)


def annotations_of(rule: Rule, labels: dict[str, str], value: float | None) -> dict[str, str]:
    spec = rule.spec
    subject = f"{rule.subject} {labels.get(rule.subject, '')}"
    shown = "" if value is None else f" (value {value:g})"
    out = {"summary": f"{spec.expr} {spec.op} {spec.threshold:g} on {subject}{shown}"}
    out |= {k: _render(v, labels, value) for k, v in spec.annotations.items()}
    return out


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first, *rest = dicts
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in rest)}


def payload(
    rule: Rule,
    status: dict[str, Any],
    receiver: str,
    told: dict[str, str],
    *,
    external_url: str,
    send_resolved: bool = True,
) -> dict[str, Any]:
    """The webhook body for ``receiver``, which knows ``told`` (instance -> startsAt) firing."""
    firing = {n: i for n, i in (status.get("instances") or {}).items() if i.get("state") == "firing"}
    resolved = status.get("resolved") or {}
    generator = f"{external_url}/apis/fleetplane.io/v1/namespaces/{rule.namespace}/alertrules/{rule.name}"
    alerts = []
    for name in sorted(firing):
        inst = firing[name]
        labels = instance_labels(rule, name)
        alerts.append(
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations_of(rule, labels, inst.get("value")),
                "startsAt": inst.get("firingAt") or inst.get("activeAt"),
                "endsAt": ZERO_TIME,
                "generatorURL": generator,
                "fingerprint": fingerprint(labels),
            }
        )
    if send_resolved:
        for name in sorted(set(told) - set(firing)):
            labels = instance_labels(rule, name)
            done = resolved.get(name) or {}
            alerts.append(
                {
                    "status": "resolved",
                    "labels": labels,
                    "annotations": annotations_of(rule, labels, None),
                    "startsAt": done.get("startsAt") or told[name],
                    "endsAt": done.get("endsAt") or status.get("endsAt") or ZERO_TIME,
                    "generatorURL": generator,
                    "fingerprint": fingerprint(labels),
                }
            )
    group = {"alertname": rule.name}
    return {
        "version": "4",
        "groupKey": f'{{}}/{{namespace="{rule.namespace}"}}:{{alertname="{rule.name}"}}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    timeout: float,
    *,
    headers: dict[str, str] | None = None,
) -> None:
    """POST the payload; ``NotifyError`` unless the receiver answers 2xx in time."""
    try:
        response = await client.post(url, json=body, timeout=timeout, headers=headers or {})
    except httpx.HTTPError as exc:
        raise NotifyError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    except (UnicodeError, ValueError, TypeError) as exc:
        # A receiver the HTTP client cannot express (a header value outside latin-1, stored
        # before validation refused it): a failed delivery with its reason, never a crash of
        # the tick that would drop the other receivers' notifications.
        raise NotifyError(f"cannot send to this receiver: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise NotifyError(f"the receiver answered {response.status_code}")
