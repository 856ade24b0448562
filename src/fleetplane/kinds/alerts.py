"""Alerting kinds: ``AlertRule`` (what to watch), ``AlertReceiver`` (where to tell) and
``Alert`` (what the alert controller found). See docs/alerts.md.

``AlertRule`` (namespaced): an expression over each site in scope (``site.cpu.percent`` ...)
or each Rollout of the namespace (``rollout.failed``), a comparison with a threshold, a
``for`` duration a subject must stay in breach before it fires, the scope (virtual sites of
the namespace and/or a label selector), severity, labels, annotations and receivers.

``AlertReceiver`` (namespaced): a webhook that gets notifications in the Alertmanager
webhook payload format (version "4").

``Alert`` (namespaced, one per rule, same name): written only by the alert controller; its
status is the rule's persisted state machine (instances pending/firing with their times, the
resolved ones not yet notified, what each receiver was told), so a restart resumes it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import LabelSelector, Schema, check_selector

__all__ = ["ALERT", "ALERT_KINDS", "ALERT_RECEIVER", "ALERT_RULE", "EXPRESSIONS", "ROLLOUT_EXPRESSIONS"]
__all__ += ["SITE_EXPRESSIONS", "parse_duration"]

SITE_EXPRESSIONS = (
    "site.health.score",
    "site.cpu.percent",
    "site.memory.percent",
    "site.disk.percent",
    "site.connected",
    "site.certificate.daysLeft",
)
ROLLOUT_EXPRESSIONS = ("rollout.failed",)
EXPRESSIONS = (*SITE_EXPRESSIONS, *ROLLOUT_EXPRESSIONS)
Expression = Literal[
    "site.health.score",
    "site.cpu.percent",
    "site.memory.percent",
    "site.disk.percent",
    "site.connected",
    "site.certificate.daysLeft",
    "rollout.failed",
]
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["critical", "warning", "info"]
AlertState = Literal["pending", "firing", "resolved"]

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
MAX_FOR_SECONDS = 7 * 86400


def parse_duration(value: str | float | int) -> float:
    """``"90s"``, ``"5m"``, ``"1h30m"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or e.g. '30s', '5m', '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value.strip())
        if not value.strip() or match is None:
            raise ValueError(f"{value!r} is not a duration: use e.g. '30s', '5m', '1h30m'")
        h, m, s = match.groups()
        seconds = int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)
    if not 0 <= seconds <= MAX_FOR_SECONDS:
        raise ValueError(f"a duration must be between 0 and {MAX_FOR_SECONDS} seconds")
    return seconds


class AlertScope(Schema):
    """Which sites a site rule looks at: members of any of ``virtualSites`` (names in the
    rule's namespace, or ``namespace/name``), that also match ``selector`` when given. Empty:
    every site of the tenant."""

    virtualSites: list[str] = Field(default_factory=list, max_length=100)
    selector: str | LabelSelector = ""

    @field_validator("selector", mode="before")
    @classmethod
    def _valid_selector(cls, value: Any) -> Any:
        return check_selector(value)


class AlertRuleSpec(Schema):
    expr: Expression
    op: Comparison = ">"
    threshold: float
    for_: str | float = Field(default="0s", alias="for")
    scope: AlertScope = Field(default_factory=AlertScope)
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    # summary / description; "{{ $value }}", "{{ $labels.site }}" are filled in per instance.
    annotations: dict[str, str] = Field(default_factory=dict)
    receivers: list[str] = Field(default_factory=list, max_length=20)
    disabled: bool = False

    @field_validator("for_")
    @classmethod
    def _valid_for(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)


ALERT_RULE = KindInfo(
    kind="AlertRule",
    plural="alertrules",
    short_names=("ar", "alertrule"),
    spec_model=AlertRuleSpec,
    scope=Scope.NAMESPACE,
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("EXPR", "spec.expr"),
        Column("OP", "spec.op"),
        Column("THRESHOLD", "spec.threshold"),
        Column("FOR", "spec.for"),
        Column("SEVERITY", "spec.severity"),
        Column("DISABLED", "spec.disabled", wide_only=True),
        Column("RECEIVERS", "spec.receivers", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)


class Webhook(Schema):
    url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    timeoutSeconds: float = Field(default=5.0, gt=0, le=60)
    # e.g. {"Authorization": "Bearer ..."}: sealed at rest like a Secret, never returned.
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, value: dict[str, str]) -> dict[str, str]:
        # HTTP/1.1 header values are latin-1 bytes at most; names are tokens (RFC 9110).
        for name, text in value.items():
            if not name or not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(
                    f"header {name!r}: the value has characters HTTP headers cannot carry "
                    "(only latin-1; e.g. write '...' rather than an ellipsis character)"
                ) from None
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r}: the value must not contain line breaks")
        return value


class AlertReceiverSpec(Schema):
    webhook: Webhook
    sendResolved: bool = True


ALERT_RECEIVER = KindInfo(
    kind="AlertReceiver",
    plural="alertreceivers",
    short_names=("arcv", "alertreceiver"),
    spec_model=AlertReceiverSpec,
    scope=Scope.NAMESPACE,
    sealed_paths=("spec.webhook.headers",),
    hidden_paths=("spec.webhook.headers",),  # write-only credentials
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("URL", "spec.webhook.url"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)


class AlertSpec(Schema):
    rule: str = Field(max_length=253)
    expr: str = Field(max_length=64)
    severity: str = Field(max_length=32)


class AlertInstance(Schema):
    """One subject in breach: ``site`` or ``rollout`` (``namespace/name``)."""

    state: Literal["pending", "firing"]
    activeAt: str  # RFC 3339: since when in breach (the ``for`` clock)
    firingAt: str | None = None
    value: float


class ResolvedInstance(Schema):
    startsAt: str
    endsAt: str


class ReceiverState(Schema):
    """What a receiver was told: the instances it knows firing (name -> startsAt)."""

    notified: dict[str, str] = Field(default_factory=dict)
    lastSentAt: str | None = None
    attempts: int = 0  # failed attempts of the notification now due
    lastError: str | None = None


class AlertStatus(Schema):
    state: AlertState = "pending"
    since: str | None = None  # when it entered this state
    startsAt: str | None = None  # the first firing of this episode
    endsAt: str | None = None  # when it resolved
    subject: Literal["site", "rollout"] = "site"
    affectedCount: int = 0
    affected: list[str] = Field(default_factory=list)  # the first MAX_LISTED names (sorted)
    instances: dict[str, AlertInstance] = Field(default_factory=dict)
    resolved: dict[str, ResolvedInstance] = Field(default_factory=dict)  # not yet notified
    receivers: dict[str, ReceiverState] = Field(default_factory=dict)


MAX_LISTED = 20

ALERT = KindInfo(
    kind="Alert",
    plural="alerts",
    short_names=("alert",),
    spec_model=AlertSpec,
    status_model=AlertStatus,
    scope=Scope.NAMESPACE,
    api_write_verbs=frozenset(),  # system-managed: the alert controller writes them
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("RULE", "spec.rule"),
        Column("SEVERITY", "spec.severity"),
        Column("STATE", "status.state"),
        Column("SITES", "status.affected"),
        Column("COUNT", "status.affectedCount", wide_only=True),
        Column("SINCE", "status.since"),
    ),
)

ALERT_KINDS = (ALERT_RULE, ALERT_RECEIVER, ALERT)
