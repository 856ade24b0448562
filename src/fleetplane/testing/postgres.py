"""A throwaway, real PostgreSQL 15 cluster for tests and benchmarks.

``with ThrowawayPostgres() as pg: psycopg.connect(pg.dsn)``. Unix socket in a temp dir plus 127.0.0.1,
``trust`` auth, ``fsync=on`` (crash tests: ``kill9()`` + ``restart()``); as root the binaries run as
user ``postgres``. ``start()`` takes ~1-1.5 s (initdb ~1 s, server ~0.05 s, CREATE DATABASE ~0.2 s).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT, Popen, TimeoutExpired
from typing import IO, Self

import psycopg
from psycopg.conninfo import make_conninfo

__all__ = ["PostgresStartError", "ThrowawayPostgres", "find_binary", "postgres_available"]

VERSIONED_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
DB_NAME = ROLE_NAME = "fleetplane"
SUPERUSER = "postgres"  # cluster superuser (``admin_dsn``) and, when we are root, the OS user to run as
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1", "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
    "shared_buffers": "32MB", "max_connections": "200", "huge_pages": "off", "logging_collector": "off",
}  # fmt: skip


class PostgresStartError(RuntimeError):
    """The throwaway cluster could not be initialised or did not become ready."""


def find_binary(name: str) -> str | None:
    """Path of a PostgreSQL binary: the versioned directory first, then ``PATH``."""
    return shutil.which(name, path=str(VERSIONED_BIN_DIR)) or shutil.which(name)


def _server_account() -> pwd.struct_passwd | None:
    """The account to run the server binaries as when we are root; None when we are not."""
    return pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None


def postgres_available() -> bool:
    """Whether ``initdb`` and ``postgres`` exist (and, when root, the ``postgres`` user)."""
    with contextlib.suppress(KeyError):
        _server_account()
        return find_binary("initdb") is not None and find_binary("postgres") is not None
    return False


def _make_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if (account := _server_account()) is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def _spawn(argv: list[str], out: int | IO[bytes], cwd: Path, new_session: bool = False) -> Popen[bytes]:
    """Run a binary with a PG*-free env, as the ``postgres`` user when we are root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    if (account := _server_account()) is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return Popen(
        argv, stdin=DEVNULL, stdout=out, stderr=STDOUT, cwd=cwd, env=env,
        start_new_session=new_session, user=account.pw_uid if account else None,
        group=account.pw_gid if account else None, extra_groups=[] if account else None,
    )  # fmt: skip


def _run(argv: list[str], cwd: Path, timeout: float) -> None:
    proc = _spawn(argv, PIPE, cwd)
    output = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    if proc.returncode != 0:
        raise PostgresStartError(f"{argv[0]} failed (exit {proc.returncode}):\n{output}")


class ThrowawayPostgres:
    """A disposable cluster: ``start()`` creates it, ``stop()`` shuts it down and deletes it."""

    available = staticmethod(postgres_available)

    def __init__(self, *, start_timeout: float = 30.0, extra_settings: dict[str, str] | None = None) -> None:
        self.start_timeout = start_timeout
        self.extra_settings = dict(extra_settings or {})
        self._base: Path | None = None
        self._port: int | None = None
        self._proc: Popen[bytes] | None = None

    @property
    def base_dir(self) -> Path:
        """Temp dir holding ``data/``, ``postgres.log`` and the unix socket."""
        if self._base is None:
            raise RuntimeError("ThrowawayPostgres is not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ThrowawayPostgres is not started")
        return self._port

    @property
    def pid(self) -> int | None:  # the running postmaster's
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE_NAME}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg://{ROLE_NAME}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def admin_dsn(self) -> str:
        """Superuser connection to the ``fleetplane`` database (role ``fleetplane`` is not one)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DB_NAME}"

    def start(self) -> Self:
        """initdb a fresh cluster, start it, and create role + database ``fleetplane``."""
        if self._base is not None:
            raise RuntimeError("ThrowawayPostgres is already started")
        if not postgres_available():
            raise PostgresStartError(f"PostgreSQL not found ({VERSIONED_BIN_DIR}, PATH) or no postgres user")
        self._base = _make_dir("fleetplane-pg-")
        atexit.register(self.stop)
        try:
            initdb = [str(find_binary("initdb")), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
                      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]  # fmt: skip
            _run(initdb, self._base, self.start_timeout)
            with socket.socket() as sock:  # free port: the kernel picks one for port 0
                sock.bind(("127.0.0.1", 0))
                self._port = int(sock.getsockname()[1])
            self._launch()
            with psycopg.connect(self._admin_conninfo(), autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {ROLE_NAME} LOGIN CREATEDB")
                conn.execute(f"CREATE DATABASE {DB_NAME} OWNER {ROLE_NAME}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT; SIGKILL after ``timeout``) and remove the temp dir. Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout)
            except TimeoutExpired:
                _kill_tree(proc)
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
        self._base = self._port = None

    def kill9(self) -> None:
        """SIGKILL the postmaster and all its backends at once (simulates a machine crash)."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise RuntimeError("server is not running")
        _kill_tree(proc)

    def restart(self) -> None:
        """Start again on the same data dir and port (crash recovery after ``kill9()``)."""
        if (proc := self._proc) is not None:  # still running: fast shutdown first
            proc.send_signal(signal.SIGINT)
            proc.wait(self.start_timeout)
        self._launch()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "<no server log>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _admin_conninfo(self) -> str:  # superuser via the unix socket: works before role/db exist
        return make_conninfo(host=str(self.base_dir), port=self.port, user=SUPERUSER, dbname="postgres")

    def _launch(self) -> None:
        settings = SERVER_SETTINGS | {"port": str(self.port), "unix_socket_directories": str(self.base_dir)}
        argv = [str(find_binary("postgres")), "-D", str(self.data_dir)]
        argv += [f"--{key}={value}" for key, value in (settings | self.extra_settings).items()]
        with self.log_path.open("ab") as log:  # own session: a terminal Ctrl-C leaves it to atexit
            self._proc = _spawn(argv, log, self.base_dir, new_session=True)
        deadline, error = time.monotonic() + self.start_timeout, None
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                with psycopg.connect(self._admin_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                error = exc
            time.sleep(0.02)
        code = self._proc.poll()
        why = f"exited with code {code}" if code is not None else f"not ready after {self.start_timeout:g}s"
        raise PostgresStartError(f"postgres {why} ({error}); server log tail:\n{self.log_tail()}")


def _kill_tree(proc: Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL the postmaster and its children (each is its own session leader, so no killpg).
    SIGSTOP first so it can't fork meanwhile; wait for the children, lest restart find shmem in use."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    children = [int(n) for n in os.listdir("/proc") if n.isdigit() and _stat(int(n))[1] == proc.pid]
    for pid in [proc.pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while any(_stat(pid)[0] not in ("", "Z", "X") for pid in children) and time.monotonic() < deadline:
        time.sleep(0.01)


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid) of a process from /proc; ("", 0) once it is gone."""
    with contextlib.suppress(OSError, ValueError):
        text = Path(f"/proc/{pid}/stat").read_text()
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        return state, int(ppid)
    return "", 0
