"""The watch hub: one tail of the store's event log per process, fanned out to watchers.

Local commits and (on PostgreSQL) other replicas' NOTIFYs wake the hub; a slow poll
covers anything missed. A watcher first replays the log from its revision, then
follows the live stream, so a watch resumes exactly where the client left off.

Subscriptions are indexed by (tenant, kind), and by (tenant, kind, name) when the filter
names one object: an event is offered only to the watchers that can want it, so one
site's manifest write wakes that site's waiter alone, however many sites wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fleetplane.core.errors import ApiError, expired
from fleetplane.core.objects import Obj, labels_of
from fleetplane.core.selectors import Selector
from fleetplane.core.store.base import Event, EventType, FieldFilter, Store

log = logging.getLogger(__name__)
QUEUE_LIMIT = 10_000


ANY_TENANT = "*"


@dataclass(frozen=True)
class WatchFilter:
    tenant: str  # ANY_TENANT for controllers that serve every tenant
    kinds: tuple[str, ...]
    namespace: str | None = None
    selector: Selector | None = None
    field_filter: FieldFilter | None = None
    # One object only (with ``namespace`` for a namespaced kind): indexed by name in the hub.
    name: str | None = None

    def translate(self, ev: Event) -> Event | None:
        """What this watcher sees of an event, Kubernetes-style: an object that starts
        matching the selector is ADDED, one that stops matching is DELETED."""
        if self.tenant not in (ANY_TENANT, ev.tenant) or ev.kind not in self.kinds:
            return None
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        if self.name is not None and ev.name != self.name:
            return None
        if self.field_filter is not None and not self.field_filter(ev.object):
            return None
        if self.selector is None or self.selector.empty:
            return ev
        now = self.selector.matches(labels_of(ev.object))
        if ev.type is EventType.DELETED:
            return ev if now else None
        before = ev.prev_labels is not None and self.selector.matches(ev.prev_labels)
        if now and before:
            return ev
        if now:
            return Event(ev.revision, EventType.ADDED, ev.tenant, ev.kind, ev.namespace, ev.name, ev.object)
        if before:
            return Event(ev.revision, EventType.DELETED, ev.tenant, ev.kind, ev.namespace, ev.name, ev.object)
        return None


def _added(tenant: str, obj: Obj) -> Event:
    """An object that exists when a watch starts, as the ADDED event the watcher sees first."""
    m = obj["metadata"]
    rev, ns = int(m["resourceVersion"]), m.get("namespace", "")
    return Event(rev, EventType.ADDED, tenant, obj["kind"], ns, m["name"], obj)


class WatchOverflow(ApiError):
    def __init__(self) -> None:
        super().__init__(500, "InternalError", "watch fell too far behind; resume from the last revision")


class Mailbox:
    """The events waiting for one subscriber: ``asyncio.Queue``'s calls for a single consumer,
    without its getter and putter deques and join event, and with no deque at all until the
    first event. 10,000 sites each wait on one at once; an ``asyncio.Queue`` was
    about 3 KB of the server's memory per connected site. ``None`` (the end mark) is always
    taken; events beyond ``maxsize`` raise ``asyncio.QueueFull``."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int = QUEUE_LIMIT) -> None:
        self._items: deque[Event | None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.maxsize = maxsize

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Event | None) -> None:
        if self._items is None:
            self._items = deque()
        elif item is not None and len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Event | None:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Event | None:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a subscription has one consumer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


@dataclass(eq=False)
class Subscription:
    filter: WatchFilter
    after: int
    queue: Mailbox = field(default_factory=Mailbox)
    overflowed: bool = False
    drain: bool = False  # a client's wait (a long-poll, a watch): ended by ``end_waits``

    def offer(self, ev: Event) -> None:
        if ev.revision <= self.after or self.overflowed:
            return
        seen = self.filter.translate(ev)
        if seen is None:
            return
        try:
            self.queue.put_nowait(seen)
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


K = TypeVar("K")


def _discard(index: dict[K, set[Subscription]], key: K, sub: Subscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]  # thousands of short-lived named waits must not leave keys behind


class WatchHub:
    def __init__(self, store: Store, *, poll_interval: float = 1.0, batch: int = 2000) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.batch = batch
        self.revision = 0  # everything up to here has been dispatched
        self._subs: dict[tuple[str, str], set[Subscription]] = defaultdict(set)
        self._named: dict[tuple[str, str, str], set[Subscription]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-hub")

    @property
    def watcher_count(self) -> int:
        return len({sub for subs in (*self._subs.values(), *self._named.values()) for sub in subs})

    def _all_subscriptions(self) -> set[Subscription]:
        return {sub for subs in (*self._subs.values(), *self._named.values()) for sub in subs}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.revision = await asyncio.to_thread(self.store.revision)
        self.store.add_commit_listener(self._on_commit)
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        self._loop = None  # the store keeps calling _on_commit; a stopped hub must ignore it
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # Python 3.11's wait_for can turn a cancel that races its timeout into a
            # TimeoutError (swallowed in _run); the flag ends the loop either way.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._reader.shutdown(wait=False, cancel_futures=True)
        for sub in self._all_subscriptions():
            sub.queue.put_nowait(None)

    def end_waits(self) -> int:
        """Hand every client's wait (``drain``: the sites' long-polls, API and console watches)
        its end mark: a long-poll answers at once from the store, a watch stream ends. A server
        that is shutting down drains them so, instead of cancelling them when its grace period
        runs out. How many were ended."""
        ended = 0
        for sub in self._all_subscriptions():
            if sub.drain:
                sub.queue.put_nowait(None)
                ended += 1
        return ended

    def _on_commit(self, revision: int) -> None:
        loop = self._loop
        if loop is not None and revision > self.revision:
            # The loop may be gone (closed without stop()); a writer must never fail for it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await self._catch_up()
            except Exception:
                log.exception("watch hub could not read the event log; retrying")
                await asyncio.sleep(self.poll_interval)

    async def _catch_up(self) -> None:
        while True:
            try:
                # On the hub's own thread: behind thousands of request reads in the shared
                # pool, the tail (which every waiter and controller waits on) stalled for
                # tens of seconds when 10,000 sites long-polled at once.
                events = await asyncio.get_running_loop().run_in_executor(
                    self._reader, self.store.events_since, self.revision, self.batch
                )
            except ApiError as exc:
                if exc.code != 410:
                    raise
                # Compaction outran us: every watcher must re-list; skip ahead.
                log.warning("watch hub fell behind compaction; closing all watches")
                for sub in self._all_subscriptions():
                    sub.overflowed = True
                    sub.queue.put_nowait(None)
                self.revision = await asyncio.to_thread(self.store.revision)
                return
            subs, named = self._subs, self._named
            for ev in events:
                for sub in subs.get((ev.tenant, ev.kind), ()):
                    sub.offer(ev)
                for sub in subs.get((ANY_TENANT, ev.kind), ()):
                    sub.offer(ev)
                if named:
                    for sub in named.get((ev.tenant, ev.kind, ev.name), ()):
                        sub.offer(ev)
                    for sub in named.get((ANY_TENANT, ev.kind, ev.name), ()):
                        sub.offer(ev)
                self.revision = ev.revision
            if len(events) < self.batch:
                return

    def subscribe(self, flt: WatchFilter, after: int, *, drain: bool = False) -> Subscription:
        """Receive, in ``sub.queue``, the events after revision ``after`` that ``flt`` lets
        through (``None`` marks the end: the hub stopped, or the subscription overflowed)."""
        sub = Subscription(flt, after, drain=drain)
        for kind in flt.kinds:
            if flt.name is None:
                self._subs[(flt.tenant, kind)].add(sub)
            else:
                self._named[(flt.tenant, kind, flt.name)].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        flt = sub.filter
        for kind in flt.kinds:
            if flt.name is None:
                _discard(self._subs, (flt.tenant, kind), sub)
            else:
                _discard(self._named, (flt.tenant, kind, flt.name), sub)

    async def watch(
        self, flt: WatchFilter, since: int | None, *, drain: bool = False
    ) -> AsyncIterator[Event]:
        """Events after revision ``since``; with ``since=None`` first the current objects as
        ADDED, then what follows. Raises ``Expired`` (410) when ``since`` is compacted."""
        if since is None and (len(flt.kinds) != 1 or flt.tenant == ANY_TENANT):
            raise ValueError("an initial listing needs exactly one kind and one tenant")
        if since is not None and since < await asyncio.to_thread(self.store.compacted_revision):
            raise expired(f"too old resource version: {since}")
        live_from = self.revision
        sub = self.subscribe(flt, after=live_from, drain=drain)
        try:
            if since is None and flt.name is not None:
                # One named object: read it, not the whole kind.
                since = await asyncio.to_thread(self.store.revision)
                one = await asyncio.to_thread(
                    self.store.get_or_none, flt.tenant, flt.kinds[0], flt.namespace or "", flt.name
                )
                if one is not None and flt.translate(
                    Event(
                        since, EventType.ADDED, flt.tenant, flt.kinds[0], flt.namespace or "", flt.name, one
                    )
                ):
                    yield _added(flt.tenant, one)
                    since = max(since, int(one["metadata"]["resourceVersion"]))
            elif since is None:
                listed = await asyncio.to_thread(
                    self.store.list,
                    flt.tenant,
                    flt.kinds[0],
                    namespace=flt.namespace,
                    selector=flt.selector,
                    field_filter=flt.field_filter,
                )
                for obj in listed.items:
                    yield _added(flt.tenant, obj)
                since = listed.revision
            # Replay the log between the client's revision and the live stream's start.
            cursor = since
            while cursor < live_from:
                events = await asyncio.to_thread(self.store.events_since, cursor, self.batch)
                if not events:
                    break
                for ev in events:
                    if ev.revision > live_from:
                        break
                    seen = flt.translate(ev)
                    if seen is not None:
                        yield seen
                cursor = events[-1].revision
            sub.after = max(since, live_from)
            while True:
                item = await sub.queue.get()
                if item is None:
                    if sub.overflowed:
                        raise WatchOverflow()
                    return
                if item.revision > since:
                    yield item
        finally:
            self.unsubscribe(sub)
