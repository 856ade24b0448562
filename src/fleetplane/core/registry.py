"""The kind registry: what makes a kind is its schema, scope and a few hooks.

Everything above ``core`` (API, CLI, controllers, console) looks kinds up here
and stays generic; adding a kind means registering one ``KindInfo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from fleetplane.core.errors import ApiError, Cause, invalid
from fleetplane.core.objects import Obj, validate_metadata

GROUP = "fleetplane.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"


class Scope(StrEnum):
    NAMESPACE = "Namespaced"  # lives in a namespace of a tenant
    TENANT = "Tenant"  # one per tenant, no namespace (e.g. Site)
    SYSTEM = "System"  # outside every tenant (e.g. Tenant itself)


@dataclass(frozen=True)
class Column:
    """A table column for ``get``: header and a dotted path into the object."""

    header: str
    path: str
    wide_only: bool = False


Validator = Callable[[Obj], list[Cause]]


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    spec_model: type[BaseModel] | None
    status_model: type[BaseModel] | None = None
    scope: Scope = Scope.NAMESPACE
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    # Paths (dotted) never returned by the API, e.g. a credential's hash.
    hidden_paths: tuple[str, ...] = ()
    # Extra cross-field checks beyond the schema.
    validators: tuple[Validator, ...] = ()
    # Whether clients may write the status through the main resource (no status subresource).
    status_subresource: bool = True
    # Paths (dotted) whose values are sealed at rest (envelope encryption) and opened only in
    # API responses; a path names a string or a map of strings. See ``server/sealing.py``.
    sealed_paths: tuple[str, ...] = ()
    # Write verbs clients may use through the generic API; ``None``: all of them. A
    # server-managed kind says ``frozenset()`` (read-only) or e.g. ``{"delete"}``.
    api_write_verbs: frozenset[str] | None = None
    # Viewers may not read objects of this kind (like Kubernetes' "view" role and Secrets).
    sensitive: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def namespaced(self) -> bool:
        return self.scope is Scope.NAMESPACE

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def names(self) -> set[str]:
        return {self.kind.lower(), self.plural, self.singular, *self.short_names}

    def normalize(self, obj: Obj) -> Obj:
        """Validate and default an object of this kind; raise ``Invalid`` with field causes."""
        name = (
            str((obj.get("metadata") or {}).get("name", "")) if isinstance(obj.get("metadata"), dict) else ""
        )
        causes = validate_metadata(obj.get("metadata"), namespaced=self.namespaced)
        out: Obj = {"apiVersion": API_VERSION, "kind": self.kind, "metadata": obj.get("metadata") or {}}
        for part, model in (("spec", self.spec_model), ("status", self.status_model)):
            value = obj.get(part)
            if model is None:
                if value not in (None, {}):
                    causes.append(Cause(part, f"{self.kind} has no {part}", "FieldValueForbidden"))
                continue
            try:
                parsed = model.model_validate(value if value is not None else {})
            except ValidationError as exc:
                causes += causes_from_pydantic(exc, part)
                continue
            out[part] = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not causes:
            for check in self.validators:
                causes += check(out)
        if causes:
            raise invalid(self.kind, name, causes)
        return out

    def redact(self, obj: Obj) -> Obj:
        if not self.hidden_paths:
            return obj
        out = {**obj}
        for path in self.hidden_paths:
            head, _, leaf = path.rpartition(".")
            parent: Any = out
            copied: dict[str, Any] = out
            for part in head.split(".") if head else []:
                child = parent.get(part) if isinstance(parent, dict) else None
                if not isinstance(child, dict):
                    parent = None
                    break
                child = dict(child)
                copied[part] = child
                parent = copied = child
            if isinstance(parent, dict):
                parent.pop(leaf, None)
        return out


def causes_from_pydantic(exc: ValidationError, prefix: str) -> list[Cause]:
    causes = []
    for err in exc.errors():
        path = prefix
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else f".{loc}"
        reason = {
            "missing": "FieldValueRequired",
            "extra_forbidden": "FieldValueNotSupported",
        }.get(err["type"], "FieldValueInvalid")
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        causes.append(Cause(path, message, reason))
    return causes


class KindRegistry:
    def __init__(self) -> None:
        self._by_kind: dict[str, KindInfo] = {}
        self._by_name: dict[str, KindInfo] = {}

    def register(self, info: KindInfo) -> KindInfo:
        self._by_kind[info.kind] = info
        for n in info.names():
            self._by_name[n.lower()] = info
        return info

    def get(self, kind: str) -> KindInfo:
        info = self._by_kind.get(kind)
        if info is None:
            raise ApiError(404, "NotFound", f'the server does not know the kind "{kind}"')
        return info

    def resolve(self, name: str) -> KindInfo:
        """Resolve a kind, plural, singular or short name, as ``kubectl get`` does."""
        info = self._by_name.get(name.lower()) or self._by_kind.get(name)
        if info is None:
            raise ApiError(404, "NotFound", f'the server doesn\'t have a resource type "{name}"')
        return info

    def by_plural(self, plural: str) -> KindInfo | None:
        info = self._by_name.get(plural.lower())
        return info if info is not None and info.plural == plural.lower() else None

    def all(self) -> list[KindInfo]:
        return sorted(self._by_kind.values(), key=lambda i: i.kind)
