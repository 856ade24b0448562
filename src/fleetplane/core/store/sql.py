"""The SQL implementation of the store, shared by the SQLite and PostgreSQL backends.

Writers are serialized by the single ``meta.revision`` row: each write transaction
first bumps it (taking its row lock, or SQLite's write lock), so revisions commit in
order and a watcher reading ``events`` by revision never skips a late commit.
"""

from __future__ import annotations

import builtins
import functools
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
)

from fleetplane.core.errors import already_exists, conflict, expired, not_found
from fleetplane.core.objects import SERVER_METADATA, Obj, labels_of, new_uid, now_rfc3339
from fleetplane.core.selectors import Selector
from fleetplane.core.store.base import (
    CommitListener,
    Event,
    EventType,
    FieldFilter,
    ListResult,
    Store,
    StoreBatch,
    UpdatePart,
    decode_continue,
    encode_continue,
)

metadata = MetaData()
objects_table = Table(
    "objects",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("kind", String(63), primary_key=True),
    Column("namespace", String(63), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("rv", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)
events_table = Table(
    "events",
    metadata,
    Column("rev", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False),
    Column("tenant", String(253), nullable=False),
    Column("kind", String(63), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("data", Text, nullable=False),
    Column("prev_labels", Text),
)
meta_table = Table(
    "meta",
    metadata,
    Column("key", String(63), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
Index("objects_rv", objects_table.c.rv)

LIST_BATCH = 500

# The statements of every write, in the named style; :class:`Db` adapts them per driver.
_LOAD = "SELECT data FROM objects WHERE tenant = :t AND kind = :k AND namespace = :ns AND name = :n"
_INSERT = "INSERT INTO objects (tenant, kind, namespace, name, rv, data) VALUES (:t, :k, :ns, :n, :rv, :d)"
_UPDATE = (
    "UPDATE objects SET rv = :rv, data = :d WHERE tenant = :t AND kind = :k AND namespace = :ns AND name = :n"
)
_DELETE = "DELETE FROM objects WHERE tenant = :t AND kind = :k AND namespace = :ns AND name = :n"
_EVENT = (
    "INSERT INTO events (rev, type, tenant, kind, namespace, name, data, prev_labels) "
    "VALUES (:rv, :ty, :t, :k, :ns, :n, :d, :pl)"
)
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"
_SET_REVISION = "UPDATE meta SET value = :v WHERE key = 'revision'"
_REVISION = "SELECT value FROM meta WHERE key = 'revision'"
_COMPACTED = "SELECT value FROM meta WHERE key = 'compacted'"
_EVENTS = (
    "SELECT rev, type, tenant, kind, namespace, name, data, prev_labels FROM events "
    "WHERE rev > :r ORDER BY rev LIMIT :lim"
)


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``:name`` parameters as ``%(name)s``, for drivers without the named style (psycopg)."""
    return re.sub(r"(?<!:):([A-Za-z_]\w*)", r"%(\1)s", sql)


class Db:
    """One pooled driver connection inside an explicit transaction. The store's statements
    run on the driver's cursor directly: SQLAlchemy's execution layer (compiled-cache
    lookup, result metadata per call) cost about three times the statements themselves."""

    __slots__ = ("_cur", "_named")

    def __init__(self, cursor: Any, named: bool) -> None:
        self._cur, self._named = cursor, named

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._cur.execute(sql if self._named else _pyformat(sql), params or {})

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.run(sql, params)
        return self._cur.fetchone()

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> builtins.list[Any]:
        self.run(sql, params)
        return list(self._cur.fetchall())

    def value(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        row = self.one(sql, params)
        assert row is not None
        return int(row[0])


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _row_event(row: Any) -> Event:
    rev, etype, tenant, kind, namespace, name, data, prev_labels = row
    return Event(
        revision=int(rev),
        type=EventType(etype),
        tenant=tenant,
        kind=kind,
        namespace=namespace,
        name=name,
        data=data,
        prev_labels=orjson.loads(prev_labels) if prev_labels else None,
    )


class SqlStore(Store):
    """Dialect-neutral store; subclasses say how transactions begin and commits are announced."""

    begin_read = "BEGIN"
    begin_write = "BEGIN"
    named_params = True  # the driver takes ``:name`` parameters (sqlite3); else ``%(name)s``

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._listeners: list[CommitListener] = []
        self._local_write_lock = threading.Lock()
        metadata.create_all(engine)
        with self._tx(write=True) as db:
            for key in ("revision", "compacted"):
                db.run(
                    "INSERT INTO meta (key, value) VALUES (:k, 0) ON CONFLICT (key) DO NOTHING", {"k": key}
                )

    # -- transactions -------------------------------------------------------------

    def _autocommit(self, driver_connection: Any) -> None:
        """Put a driver connection in autocommit mode: transactions are begun explicitly."""
        driver_connection.isolation_level = None  # sqlite3's way; PostgresStore overrides

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Db]:
        """An explicit transaction on an autocommit connection from the pool, so that we
        choose exactly how it begins (``BEGIN IMMEDIATE`` on SQLite, snapshot reads on PG)."""
        pooled = self.engine.raw_connection()
        try:
            if not pooled.info.get("fp_autocommit"):
                self._autocommit(pooled.driver_connection)
                pooled.info["fp_autocommit"] = True
            cursor = pooled.cursor()
            cursor.execute(self.begin_write if write else self.begin_read)
            try:
                yield Db(cursor, self.named_params)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            cursor.close()
        finally:
            pooled.close()  # back to the pool

    @contextmanager
    def _write(self) -> Iterator[_WriteTx]:
        """A write transaction; listeners hear of its last revision after commit.

        Its first revision is taken up front: bumping ``meta.revision`` takes the write lock
        before anything is read, so writers are serialized and revisions commit in order.
        Further writes in the same transaction (a :meth:`batch`) take further revisions. A
        transaction that ends up writing nothing (a no-op update) is rolled back, so the
        revision it took is given back."""
        with self._local_write_lock:
            try:
                with self._tx(write=True) as db:
                    tx = _WriteTx(db)
                    yield tx
                    if not tx.used:
                        raise _Untouched
                    tx.finish()
                    self._announce(db, tx.used[-1])
            except _Untouched:
                return
        for listener in list(self._listeners):
            listener(tx.used[-1])

    @contextmanager
    def batch(self) -> Iterator[StoreBatch]:
        with self._write() as tx:
            yield _SqlBatch(self, tx)

    def _announce(self, db: Db, revision: int) -> None:
        """Hook for backends that tell other replicas about a commit (inside the transaction)."""

    # -- helpers ------------------------------------------------------------------

    def _load(self, db: Db, tenant: str, kind: str, namespace: str, name: str) -> Obj | None:
        row = db.one(_LOAD, {"t": tenant, "k": kind, "ns": namespace, "n": name})
        return orjson.loads(row[0]) if row else None

    def _record(self, db: Db, rev: int, etype: EventType, tenant: str, obj: Obj, prev: Obj | None) -> None:
        m = obj["metadata"]
        ns, name, kind = m.get("namespace") or "", m["name"], obj["kind"]
        data = dumps(obj)
        params = {"t": tenant, "k": kind, "ns": ns, "n": name, "rv": rev, "d": data}
        if etype is EventType.ADDED:
            db.run(_INSERT, params)
        elif etype is EventType.MODIFIED:
            db.run(_UPDATE, params)
        else:
            db.run(_DELETE, params)
        params["ty"] = etype.value
        params["pl"] = dumps(labels_of(prev)) if prev is not None else None
        db.run(_EVENT, params)

    # -- the contract ---------------------------------------------------------------

    def create(self, tenant: str, obj: Obj) -> Obj:
        with self._write() as tx:
            return self._create_in(tx, tenant, obj)

    def _create_in(self, tx: _WriteTx, tenant: str, obj: Obj) -> Obj:
        m = obj["metadata"]
        ns, name, kind = m.get("namespace") or "", m["name"], obj["kind"]
        if self._load(tx.db, tenant, kind, ns, name) is not None:
            raise already_exists(kind, name)
        rev = tx.next_rev()
        meta = {k: v for k, v in m.items() if k not in ("deletionTimestamp",)}
        meta.update(uid=new_uid(), generation=1, creationTimestamp=now_rfc3339(), resourceVersion=str(rev))
        if not ns:
            meta.pop("namespace", None)
        new = {**obj, "metadata": meta}
        self._record(tx.db, rev, EventType.ADDED, tenant, new, None)
        return new

    def get(self, tenant: str, kind: str, namespace: str, name: str) -> Obj:
        with self._tx(write=False) as db:
            obj = self._load(db, tenant, kind, namespace, name)
        if obj is None:
            raise not_found(kind, name)
        return obj

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
        after: tuple[str, str] | None = None
        list_rev: int | None = None
        if continue_token:
            list_rev, ans, an = decode_continue(continue_token)
            after = (ans, an)
        sql = "SELECT namespace, name, data FROM objects WHERE tenant = :t AND kind = :k"
        params: dict[str, Any] = {"t": tenant, "k": kind}
        if namespace is not None:
            sql += " AND namespace = :ns"
            params["ns"] = namespace
        items: list[Obj] = []
        filtering = (selector is not None and not selector.empty) or field_filter is not None
        with self._tx(write=False) as db:
            current = db.value(_REVISION)
            if list_rev is not None and list_rev < db.value(_COMPACTED):
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result."
                )
            while True:
                page_sql = sql
                if after is not None:
                    page_sql += " AND (namespace > :ans OR (namespace = :ans AND name > :an))"
                    params.update(ans=after[0], an=after[1])
                batch = LIST_BATCH if (filtering or not limit) else limit + 1 - len(items)
                rows = db.all(page_sql + " ORDER BY namespace, name LIMIT :lim", {**params, "lim": batch})
                for row_ns, row_name, data in rows:
                    if limit and len(items) == limit:
                        token = encode_continue(list_rev or current, *after) if after else None
                        return ListResult(items, list_rev or current, token)
                    after = (row_ns, row_name)
                    obj = orjson.loads(data)
                    if selector is not None and not selector.matches(labels_of(obj)):
                        continue
                    if field_filter is not None and not field_filter(obj):
                        continue
                    items.append(obj)
                if len(rows) < batch:
                    return ListResult(items, list_rev or current, None)

    def scan(self, kinds: tuple[str, ...]) -> tuple[int, builtins.list[tuple[str, Obj]]]:
        out: list[tuple[str, Obj]] = []
        with self._tx(write=False) as db:
            current = db.value(_REVISION)
            for kind in kinds:
                rows = db.all(
                    "SELECT tenant, data FROM objects WHERE kind = :k ORDER BY tenant, namespace, name",
                    {"k": kind},
                )
                out.extend((tenant, orjson.loads(data)) for tenant, data in rows)
        return current, out

    def update(self, tenant: str, obj: Obj, *, part: UpdatePart = "all") -> Obj:
        with self._write() as tx:
            return self._update_in(tx, tenant, obj, part)

    def _update_in(
        self, tx: _WriteTx, tenant: str, obj: Obj, part: UpdatePart, stored: Obj | None = None
    ) -> Obj:
        m = obj["metadata"]
        ns, name, kind = m.get("namespace") or "", m["name"], obj["kind"]
        # ``stored``: read by this transaction already (it holds the write lock: still current).
        old = stored if stored is not None else self._load(tx.db, tenant, kind, ns, name)
        if old is None:
            raise not_found(kind, name)
        om = old["metadata"]
        want = m.get("resourceVersion")
        if want and str(want) != om["resourceVersion"]:
            raise conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if part == "status":
            new = {**old, "status": obj.get("status", {})}
            meta = dict(om)
        else:
            new = {**obj}
            if part == "main" and "status" in old:
                new["status"] = old["status"]
            elif part == "main":
                new.pop("status", None)
            # Server-owned fields come from the stored object only: a client cannot forge them
            # (a deletionTimestamp in a replace would otherwise delete the object).
            meta = {k: v for k, v in m.items() if k not in SERVER_METADATA}
            for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if k in om:
                    meta[k] = om[k]
            if not ns:
                meta.pop("namespace", None)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(om.get("generation", 1)) + 1
        meta["resourceVersion"] = om["resourceVersion"]
        new["metadata"] = meta
        if _same(new, old):
            # A no-op write changes nothing and keeps the revision, as Kubernetes does.
            return old
        rev = tx.next_rev()
        meta["resourceVersion"] = str(rev)
        done = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
        self._record(tx.db, rev, EventType.DELETED if done else EventType.MODIFIED, tenant, new, old)
        return new

    def delete(
        self, tenant: str, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Obj:
        with self._write() as tx:
            return self._delete_in(tx, tenant, kind, namespace, name, resource_version)

    def _delete_in(
        self, tx: _WriteTx, tenant: str, kind: str, namespace: str, name: str, resource_version: str | None
    ) -> Obj:
        old = self._load(tx.db, tenant, kind, namespace, name)
        if old is None:
            raise not_found(kind, name)
        if resource_version and resource_version != old["metadata"]["resourceVersion"]:
            raise conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        meta = dict(old["metadata"])
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            rev = tx.next_rev()
            meta.update(deletionTimestamp=now_rfc3339(), resourceVersion=str(rev))
            new = {**old, "metadata": meta}
            self._record(tx.db, rev, EventType.MODIFIED, tenant, new, old)
        else:
            rev = tx.next_rev()
            new = {**old, "metadata": {**meta, "resourceVersion": str(rev)}}
            self._record(tx.db, rev, EventType.DELETED, tenant, new, old)
        return new

    def revision(self) -> int:
        with self._tx(write=False) as db:
            return db.value(_REVISION)

    def compacted_revision(self) -> int:
        with self._tx(write=False) as db:
            return db.value(_COMPACTED)

    def events_since(self, revision: int, limit: int = 1000) -> builtins.list[Event]:
        with self._tx(write=False) as db:
            compacted = db.value(_COMPACTED)
            if revision < compacted:
                raise expired(f"too old resource version: {revision} ({compacted})")
            rows = db.all(_EVENTS, {"r": revision, "lim": limit})
        return [_row_event(r) for r in rows]

    def compact(self, keep: int) -> int:
        with self._local_write_lock, self._tx(write=True) as db:
            current = db.value(_REVISION)
            target = max(db.value(_COMPACTED), current - keep)
            db.run("DELETE FROM events WHERE rev <= :c", {"c": target})
            db.run("UPDATE meta SET value = :c WHERE key = 'compacted'", {"c": target})
        return target

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self.engine.dispose()


def _same(a: Obj, b: Obj) -> bool:
    """Equal as JSON, where ``1`` and ``true`` differ (Python's ``==`` says they do not). Almost
    every write changes something, and Python's ``!=`` says so without serialising both objects
    (two sorted dumps of each Site report were 2 % of a 10,000-site fan-out). Objects Python
    calls unequal are unequal as JSON, NaN aside (a needless write, never a lost one)."""
    if a != b:
        return False
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


class _Untouched(Exception):
    """Raised inside a write transaction that wrote nothing, to roll it back."""


class _WriteTx:
    """One open write transaction and the revisions its writes took."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.used: list[int] = []
        # Bumping the revision now takes the write lock before anything is read. Later
        # writes of the same transaction count on from it in memory (the lock is held, so
        # nobody else can take one), and :meth:`finish` stores the last: one statement per
        # transaction instead of one per write, which is what makes a batch cheap.
        self._base = db.value(_BUMP)
        self._next = self._base

    def next_rev(self) -> int:
        """The revision of the next write in this transaction."""
        rev = self._next
        self._next += 1
        self.used.append(rev)
        return rev

    def finish(self) -> None:
        """Store the last revision taken (before commit)."""
        if self.used and self.used[-1] != self._base:
            self.db.run(_SET_REVISION, {"v": self.used[-1]})


class _SqlBatch(StoreBatch):
    """The writes of :meth:`SqlStore.batch`, all in its one transaction (reads see them)."""

    def __init__(self, store: SqlStore, tx: _WriteTx) -> None:
        self._store, self._tx = store, tx

    def create(self, tenant: str, obj: Obj) -> Obj:
        return self._store._create_in(self._tx, tenant, obj)

    def get_or_none(self, tenant: str, kind: str, namespace: str, name: str) -> Obj | None:
        return self._store._load(self._tx.db, tenant, kind, namespace, name)

    def update(self, tenant: str, obj: Obj, *, part: UpdatePart = "all", stored: Obj | None = None) -> Obj:
        return self._store._update_in(self._tx, tenant, obj, part, stored)

    def delete(
        self, tenant: str, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Obj:
        return self._store._delete_in(self._tx, tenant, kind, namespace, name, resource_version)
