"""API errors shaped as Kubernetes ``Status`` objects.

Every layer raises these; the HTTP layer turns them into a ``Status`` body with
the same code, reason and causes, and the client turns the body back into the
same exception, so a refusal reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cause:
    """One offending field, as in ``Status.details.causes``."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass
class ApiError(Exception):
    code: int
    reason: str
    message: str
    kind: str = ""
    name: str = ""
    group: str = ""
    causes: list[Cause] = field(default_factory=list)
    retry_after: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = [c.to_dict() for c in self.causes]
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            status["details"] = details
        return status

    @classmethod
    def from_status(cls, body: dict[str, Any], http_code: int) -> ApiError:
        details = body.get("details") or {}
        causes = [
            Cause(field=c.get("field", ""), message=c.get("message", ""), reason=c.get("reason", ""))
            for c in details.get("causes") or []
        ]
        return cls(
            code=int(body.get("code") or http_code),
            reason=str(body.get("reason") or "Unknown"),
            message=str(body.get("message") or f"HTTP {http_code}"),
            kind=str(details.get("kind", "")),
            name=str(details.get("name", "")),
            group=str(details.get("group", "")),
            causes=causes,
        )


def not_found(kind: str, name: str, plural: str = "") -> ApiError:
    what = plural or kind.lower()
    return ApiError(404, "NotFound", f'{what} "{name}" not found', kind=plural or kind, name=name)


def already_exists(kind: str, name: str, plural: str = "") -> ApiError:
    what = plural or kind.lower()
    return ApiError(409, "AlreadyExists", f'{what} "{name}" already exists', kind=plural or kind, name=name)


def conflict(kind: str, name: str, detail: str, plural: str = "") -> ApiError:
    what = plural or kind.lower()
    msg = f'Operation cannot be fulfilled on {what} "{name}": {detail}'
    return ApiError(409, "Conflict", msg, kind=plural or kind, name=name)


def invalid(kind: str, name: str, causes: list[Cause]) -> ApiError:
    parts = "; ".join(f"{c.field}: {c.message}" if c.field else c.message for c in causes)
    return ApiError(
        422, "Invalid", f'{kind} "{name}" is invalid: {parts}', kind=kind, name=name, causes=causes
    )


def bad_request(message: str, causes: list[Cause] | None = None) -> ApiError:
    return ApiError(400, "BadRequest", message, causes=causes or [])


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message)
