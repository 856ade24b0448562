"""The store's contract, shared by every backend.

A store keeps objects keyed by (tenant, kind, namespace, name) with a global,
monotonically increasing revision: every committed write gets the next revision,
which becomes the object's ``resourceVersion``, and is appended to an event log
that a watch can resume from until it is compacted away.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import orjson

from fleetplane.core.errors import ApiError, bad_request
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import Selector


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Event:
    revision: int
    type: EventType
    tenant: str
    kind: str
    namespace: str
    name: str
    # The object, or its JSON as read from the event log: parsed on first use of ``object``.
    # Most events a server reads have no watcher (the Events and SiteMetrics it writes in
    # bulk, say), and parsing them all was a few percent of its CPU in a fan-out.
    data: Obj | str | bytes
    # Labels before the change: a selector-filtered watch needs them to turn
    # "stopped matching" into DELETED and "started matching" into ADDED.
    prev_labels: Mapping[str, str] | None = None

    @property
    def object(self) -> Obj:
        data = self.data
        if isinstance(data, dict):
            return data
        parsed: Obj = orjson.loads(data)
        object.__setattr__(self, "data", parsed)  # once; racing parsers store equal objects
        return parsed


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    revision: int
    continue_token: str | None = None


UpdatePart = Literal["all", "main", "status"]
FieldFilter = Callable[[Obj], bool]
CommitListener = Callable[[int], None]


def encode_continue(revision: int, namespace: str, name: str) -> str:
    raw = orjson.dumps({"r": revision, "ns": namespace, "n": name})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        return int(data["r"]), str(data["ns"]), str(data["n"])
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise bad_request("continue: invalid continue token") from exc


class StoreBatch(ABC):
    """Writes that commit together, in one transaction (one durable commit) or not at all;
    see :meth:`Store.batch`. The methods mean what :class:`Store`'s do."""

    @abstractmethod
    def create(self, tenant: str, obj: Obj) -> Obj: ...

    @abstractmethod
    def get_or_none(self, tenant: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The object as this batch sees it (its own writes included), or ``None``."""

    @abstractmethod
    def update(self, tenant: str, obj: Obj, *, part: UpdatePart = "all", stored: Obj | None = None) -> Obj:
        """As :meth:`Store.update`. ``stored``: the object exactly as this batch's
        ``get_or_none`` returned it, unchanged, so the update need not read it again."""

    @abstractmethod
    def delete(
        self, tenant: str, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Obj: ...


class Store(ABC):
    """Backend-independent contract; see ``tests/core/test_store_contract.py``."""

    backend: str = "abstract"

    @abstractmethod
    def create(self, tenant: str, obj: Obj) -> Obj:
        """Insert a new object; ``AlreadyExists`` if the key is taken."""

    @abstractmethod
    def get(self, tenant: str, kind: str, namespace: str, name: str) -> Obj:
        """Return the object or raise ``NotFound``."""

    @abstractmethod
    def list(
        self,
        tenant: str,
        kind: str,
        *,
        namespace: str | None = None,
        selector: Selector | None = None,
        field_filter: FieldFilter | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> ListResult:
        """List objects ordered by (namespace, name), optionally paged."""

    @abstractmethod
    def scan(self, kinds: tuple[str, ...]) -> tuple[int, builtins.list[tuple[str, Obj]]]:
        """Every object of these kinds in every tenant, as (tenant, object), with the
        revision of that one snapshot: what a controller starts from."""

    @abstractmethod
    def update(self, tenant: str, obj: Obj, *, part: UpdatePart = "all") -> Obj:
        """Replace an object. A ``metadata.resourceVersion`` in ``obj`` is a precondition
        (``Conflict`` when stale). ``part='main'`` keeps the stored status, ``'status'``
        changes only the status. ``generation`` increases when ``spec`` changes."""

    @abstractmethod
    def delete(
        self, tenant: str, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Obj:
        """Delete (or, with finalizers, mark for deletion); return the last state."""

    @abstractmethod
    def batch(self) -> AbstractContextManager[StoreBatch]:
        """Several writes as one transaction: ``with store.batch() as b: b.create(...);
        b.update(...)``. The batch holds the write lock from its start, so what it reads is
        what it writes over (no ``Conflict`` from other writers in between); every write
        still takes its own revision and event. All commit together when the block ends, or
        none does if it raises (the exception propagates)."""

    @abstractmethod
    def revision(self) -> int:
        """The latest committed revision."""

    @abstractmethod
    def compacted_revision(self) -> int:
        """Events at or below this revision are gone; watching from below it is ``Expired``."""

    @abstractmethod
    def events_since(self, revision: int, limit: int = 1000) -> builtins.list[Event]:
        """Events with revision > ``revision`` in order; ``Expired`` when compacted away."""

    @abstractmethod
    def compact(self, keep: int) -> int:
        """Drop events older than the newest ``keep``; return the new compacted revision."""

    @abstractmethod
    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(revision)`` after commits, including other replicas' where the
        backend can see them."""

    @abstractmethod
    def try_lead(self, name: str) -> bool:
        """Try to become (or stay) the leader for ``name``; at most one holder at a time."""

    @abstractmethod
    def close(self) -> None: ...

    def get_or_none(self, tenant: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(tenant, kind, namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
