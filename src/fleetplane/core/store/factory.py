"""Open a store from a URL: ``sqlite:///path`` (default) or ``postgresql://...``."""

from __future__ import annotations

from fleetplane.core.store.base import Store


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from fleetplane.core.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from fleetplane.core.store.postgres import PostgresStore

        return PostgresStore(url.replace("postgres://", "postgresql://", 1))
    raise ValueError(f"store URL must start with sqlite:/// or postgresql:// (got {url!r})")
