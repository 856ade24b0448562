"""Tests for the throwaway PostgreSQL helper used by integration tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from fleetplane.testing.postgres import PostgresStartError, ThrowawayPostgres


def _require_binaries() -> None:
    # Fail (never skip): the integration suite is meaningless without a real server.
    assert ThrowawayPostgres.available(), (
        "PostgreSQL 15 binaries (initdb, postgres) not found in /usr/lib/postgresql/15/bin or PATH"
    )


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    _require_binaries()
    with ThrowawayPostgres() as server:
        yield server


def test_urls_point_at_loopback_fleetplane_database(pg: ThrowawayPostgres) -> None:
    assert pg.dsn == f"postgresql://fleetplane@127.0.0.1:{pg.port}/fleetplane"
    assert pg.sqlalchemy_url == f"postgresql+psycopg://fleetplane@127.0.0.1:{pg.port}/fleetplane"
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), pg_get_userbyid(datdba), "
            "current_setting('fsync'), current_setting('max_connections')::int "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row == ("fleetplane", "fleetplane", "fleetplane", "on", 200)


def test_committed_row_survives_kill9_and_restart(pg: ThrowawayPostgres) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO kv VALUES ('committed', 'yes')")
    uncommitted = psycopg.connect(pg.dsn)
    uncommitted.execute("INSERT INTO kv VALUES ('in-flight', 'no')")
    old_pid = pg.pid

    pg.kill9()
    assert pg.pid is None
    uncommitted.close()
    pg.restart()

    assert pg.pid is not None and pg.pid != old_pid
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute("SELECT k, v FROM kv ORDER BY k").fetchall()
    assert rows == [("committed", "yes")]
    assert "database system was interrupted" in pg.log_path.read_text()


def test_stop_removes_directory_and_server() -> None:
    _require_binaries()
    pg = ThrowawayPostgres().start()
    base_dir, pid = pg.base_dir, pg.pid
    assert pid is not None and (pg.data_dir / "PG_VERSION").read_text().strip() == "15"

    pg.stop()

    assert not base_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    pg.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = pg.dsn


def test_failed_start_reports_log_tail_and_cleans_up() -> None:
    _require_binaries()
    pg = ThrowawayPostgres(extra_settings={"shared_buffers": "not-a-size"})
    with pytest.raises(PostgresStartError, match="shared_buffers"):
        pg.start()
    with pytest.raises(RuntimeError):
        _ = pg.base_dir
