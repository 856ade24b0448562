"""SQLite backend: the embedded default, one file in WAL mode."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.pool import QueuePool

from fleetplane.core.store.sql import SqlStore


class SqliteStore(SqlStore):
    backend = "sqlite"
    # IMMEDIATE takes the write lock up front, so two writers never deadlock on upgrade.
    begin_write = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{self.path}",
            poolclass=QueuePool,
            pool_size=8,
            max_overflow=16,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed write is on disk before the API answers (survives power loss too).
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        self._lead_fds: dict[str, int] = {}  # lock name -> flock'd fd
        super().__init__(engine)
        os.chmod(self.path, 0o600)

    def try_lead(self, name: str) -> bool:
        # Several processes may open one file; an flock says which one runs controllers.
        if name in self._lead_fds:
            return True
        fd = os.open(f"{self.path}.{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lead_fds[name] = fd
        return True

    def close(self) -> None:
        for fd in self._lead_fds.values():
            os.close(fd)
        self._lead_fds.clear()
        super().close()
