"""Shared fixtures: a throwaway PostgreSQL cluster per session, fresh databases, servers."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fleetplane.testing.postgres import ThrowawayPostgres, postgres_available
from tests.support.server import ServerProcess

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayPostgres]:
    if not postgres_available():
        pytest.fail(
            "PostgreSQL binaries are required (apt-get install postgresql); `make test` installs them"
        )
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster: ThrowawayPostgres) -> str:
    """A fresh, empty database in the session's cluster (SQLAlchemy URL)."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(pg_cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER fleetplane')
    return pg_cluster.sqlalchemy_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for each backend; tests using it run once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server on SQLite with its own data dir."""
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.stop()
