"""The object store: one interface, SQLite and PostgreSQL backends."""

from fleetplane.core.store.base import Event, EventType, ListResult, Store, StoreBatch
from fleetplane.core.store.factory import open_store

__all__ = ["Event", "EventType", "ListResult", "Store", "StoreBatch", "open_store"]
