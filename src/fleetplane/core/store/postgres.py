"""PostgreSQL backend: several stateless server replicas share one database.

Commits are announced with NOTIFY inside the transaction (delivered only if it
commits); each replica LISTENs on a dedicated connection and wakes its watchers.
Leadership is a session-level advisory lock held on another dedicated connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from typing import Any

import psycopg
from sqlalchemy import create_engine, text

from fleetplane.core.store.base import CommitListener
from fleetplane.core.store.sql import Db, SqlStore

CHANNEL = "fleetplane_commits"
log = logging.getLogger(__name__)


class PostgresStore(SqlStore):
    backend = "postgres"
    # Lists and event reads see one snapshot.
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    named_params = False  # psycopg takes %(name)s

    def __init__(self, url: str) -> None:
        self.url = url
        self.dsn = url.replace("postgresql+psycopg://", "postgresql://")
        engine = create_engine(
            url
            if url.startswith("postgresql+psycopg")
            else url.replace("postgresql://", "postgresql+psycopg://"),
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
        )
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._leader_conns: dict[str, psycopg.Connection[tuple[object, ...]]] = {}
        self._leading: set[str] = set()
        with engine.begin() as conn:
            # Two replicas starting together must not race on CREATE TABLE.
            conn.execute(text("SELECT pg_advisory_xact_lock(7370001)"))
            from fleetplane.core.store.sql import metadata

            metadata.create_all(conn)
        super().__init__(engine)

    def _autocommit(self, driver_connection: Any) -> None:
        driver_connection.autocommit = True

    def _announce(self, db: Db, revision: int) -> None:
        db.run("SELECT pg_notify(:c, :r)", {"c": CHANNEL, "r": str(revision)})

    def add_commit_listener(self, listener: CommitListener) -> None:
        super().add_commit_listener(listener)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        """Relay other replicas' commits to our listeners (ours arrive twice: harmless)."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._relay(int(note.payload))
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost, retrying: %s", exc)
                self._stop.wait(1.0)

    def _relay(self, revision: int) -> None:
        for listener in list(self._listeners):
            try:
                listener(revision)
            except Exception:
                log.exception("commit listener failed")

    def try_lead(self, name: str) -> bool:
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn = self._leader_conns.get(name)
        try:
            if conn is None or conn.closed:
                self._leading.discard(name)  # the lock died with its session
                conn = psycopg.connect(self.dsn, autocommit=True)
                self._leader_conns[name] = conn
            if name in self._leading:
                conn.execute("SELECT 1")  # still alive, so still holding the lock
                return True
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row and row[0]:
                self._leading.add(name)
                return True
            return False
        except psycopg.Error:
            self._leading.discard(name)
            self._leader_conns.pop(name, None)
            return False

    def close(self) -> None:
        self._stop.set()
        for conn in self._leader_conns.values():
            # Release explicitly: a closed session's locks are freed only once the server
            # notices, so the next leader could otherwise wait for no reason.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock_all()")
            conn.close()
        self._leader_conns.clear()
        if self._listener is not None:
            self._listener.join(timeout=3)
        super().close()
