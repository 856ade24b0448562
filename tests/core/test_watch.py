"""The watch hub over a real store (both backends): resume, initial listing, filters, compaction,
and, on PostgreSQL, wake-ups from another replica's commits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Event, EventType, Store, open_store
from fleetplane.core.store.postgres import PostgresStore
from fleetplane.core.watch import ANY_TENANT, Mailbox, Subscription, WatchFilter, WatchHub

WAIT = 5.0


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def site(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {"kind": "Site", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def widget(namespace: str, name: str, **spec: Any) -> Obj:
    return {"kind": "Widget", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def run(scenario: Callable[[WatchHub], Awaitable[None]], store: Store, poll_interval: float = 0.5) -> None:
    async def main() -> None:
        hub = WatchHub(store, poll_interval=poll_interval)
        await hub.start()
        try:
            await asyncio.wait_for(scenario(hub), 20)
        finally:
            await hub.stop()

    asyncio.run(main())


async def take(stream: AsyncIterator[Event], n: int, timeout: float = WAIT) -> list[Event]:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(anext(stream), timeout))
    return out


async def nothing_more(stream: AsyncIterator[Event], wait: float = 0.3) -> None:
    task = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({task}, timeout=wait)
    if done:
        raise AssertionError(f"unexpected event {task.result()}")
    task.cancel()


async def write(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def caught_up(hub: WatchHub, store: Store) -> None:
    target = await asyncio.to_thread(store.revision)
    deadline = time.monotonic() + WAIT
    while hub.revision < target:
        assert time.monotonic() < deadline, "hub did not catch up"
        await asyncio.sleep(0.01)


def summary(events: list[Event]) -> list[tuple[EventType, str, str]]:
    return [(e.type, e.tenant, e.name) for e in events]


def test_watch_from_revision_replays_missed_then_follows_live(store: Store) -> None:
    for i in range(3):
        store.create("acme", site(f"before-{i}"))
    since = store.revision() - 1  # the client saw up to before-1

    async def scenario(hub: WatchHub) -> None:
        for i in range(3):
            await write(store.create, "acme", site(f"between-{i}"))
        await caught_up(hub, store)
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=since)
        first = await take(stream, 4)  # replayed from the log
        for i in range(3):
            await write(store.update, "acme", site(f"between-{i}", n=i))
        await write(store.delete, "acme", "Site", "", "before-0")
        rest = await take(stream, 4)
        await nothing_more(stream)
        events = first + rest
        revs = [e.revision for e in events]
        assert revs == list(range(since + 1, since + 1 + len(events)))  # in order, no gaps, no repeats
        assert [(e.type, e.name) for e in events] == [
            (EventType.ADDED, "before-2"),
            (EventType.ADDED, "between-0"),
            (EventType.ADDED, "between-1"),
            (EventType.ADDED, "between-2"),
            (EventType.MODIFIED, "between-0"),
            (EventType.MODIFIED, "between-1"),
            (EventType.MODIFIED, "between-2"),
            (EventType.DELETED, "before-0"),
        ]
        assert events[4].object["spec"] == {"n": 0}

    run(scenario, store)


def test_replay_races_live_writes_without_gaps_or_duplicates(store: Store) -> None:
    async def scenario(hub: WatchHub) -> None:
        for i in range(30):
            await write(store.create, "acme", site(f"s{i:02d}"))

        async def writer() -> None:
            for i in range(30, 60):
                await write(store.create, "acme", site(f"s{i:02d}"))

        task = asyncio.create_task(writer())
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=0)
        events = await take(stream, 60)
        await task
        await nothing_more(stream)
        assert [e.name for e in events] == [f"s{i:02d}" for i in range(60)]
        assert [e.revision for e in events] == list(range(1, 61))

    run(scenario, store)


def test_watch_without_revision_lists_current_objects_as_added_first(store: Store) -> None:
    store.create("acme", site("b", zone="1"))
    store.create("acme", site("a"))
    store.create("acme", site("gone"))
    store.delete("acme", "Site", "", "gone")
    store.create("other", site("elsewhere"))

    async def scenario(hub: WatchHub) -> None:
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=None)
        initial = await take(stream, 2)
        assert [(e.type, e.name) for e in initial] == [(EventType.ADDED, "a"), (EventType.ADDED, "b")]
        assert initial[1].object["spec"] == {"zone": "1"}
        assert initial[1].revision == int(initial[1].object["metadata"]["resourceVersion"])
        updated = await write(store.update, "acme", site("a", zone="2"))
        await write(store.create, "other", site("ignored"))
        await write(store.create, "acme", site("c"))
        live = await take(stream, 2)
        assert [(e.type, e.name) for e in live] == [(EventType.MODIFIED, "a"), (EventType.ADDED, "c")]
        assert live[0].object == updated
        await nothing_more(stream)

    run(scenario, store)


def test_initial_listing_needs_one_kind_and_one_tenant(store: Store) -> None:
    async def scenario(hub: WatchHub) -> None:
        for flt in (WatchFilter(ANY_TENANT, ("Site",)), WatchFilter("acme", ("Site", "Widget"))):
            with pytest.raises(ValueError, match="one kind and one tenant"):
                await anext(hub.watch(flt, since=None))

    run(scenario, store)


def test_selector_watch_turns_matching_changes_into_added_and_deleted(store: Store) -> None:
    store.create("acme", site("s", {"env": "dev"}))
    store.create("acme", site("p", {"env": "prod"}))

    async def scenario(hub: WatchHub) -> None:
        since = await write(store.revision)
        stream = hub.watch(WatchFilter("acme", ("Site",), selector=parse_selector("env=prod")), since=since)
        await write(store.update, "acme", site("s", {"env": "prod"}))  # starts matching
        await write(store.update, "acme", site("s", {"env": "prod"}, x=1))  # still matching
        await write(store.update, "acme", site("s", {"env": "dev"}))  # stops matching
        await write(store.update, "acme", site("s", {"env": "dev"}, x=2))  # never matched: nothing
        await write(store.delete, "acme", "Site", "", "s")  # deleted while not matching: nothing
        await write(store.delete, "acme", "Site", "", "p")  # deleted while matching
        await write(store.create, "acme", site("n", {"env": "prod"}))
        events = await take(stream, 5)
        assert [(e.type, e.name) for e in events] == [
            (EventType.ADDED, "s"),
            (EventType.MODIFIED, "s"),
            (EventType.DELETED, "s"),
            (EventType.DELETED, "p"),
            (EventType.ADDED, "n"),
        ]
        assert events[2].object["metadata"]["labels"] == {"env": "dev"}
        await nothing_more(stream)
        # The same translation applies when the events are replayed from the log.
        replay = hub.watch(WatchFilter("acme", ("Site",), selector=parse_selector("env=prod")), since=since)
        assert [(e.type, e.name, e.revision) for e in await take(replay, 5)] == [
            (e.type, e.name, e.revision) for e in events
        ]
        # And an initial listing sees only what matches now.
        listing = hub.watch(WatchFilter("acme", ("Site",), selector=parse_selector("env=prod")), since=None)
        assert [(e.type, e.name) for e in await take(listing, 1)] == [(EventType.ADDED, "n")]
        await nothing_more(listing)

    run(scenario, store)


def test_namespace_filter(store: Store) -> None:
    async def scenario(hub: WatchHub) -> None:
        stream = hub.watch(WatchFilter("acme", ("Widget",), namespace="a"), since=0)
        await write(store.create, "acme", widget("b", "w1"))
        await write(store.create, "acme", widget("a", "w2"))
        await write(store.create, "acme", widget("ab", "w3"))
        await write(store.create, "acme", widget("a", "w4"))
        events = await take(stream, 2)
        assert [(e.namespace, e.name) for e in events] == [("a", "w2"), ("a", "w4")]
        await nothing_more(stream)

    run(scenario, store)


def test_tenant_filter_and_any_tenant(store: Store) -> None:
    async def scenario(hub: WatchHub) -> None:
        one = hub.watch(WatchFilter("t1", ("Site",)), since=0)
        every = hub.watch(WatchFilter(ANY_TENANT, ("Site", "Widget")), since=0)
        await write(store.create, "t1", site("a"))
        await write(store.create, "t2", site("a"))
        await write(store.create, "t2", widget("ns", "w"))
        await write(store.create, "t1", widget("ns", "w"))
        await write(store.create, "t3", {**site("x"), "kind": "Other"})
        await write(store.delete, "t2", "Site", "", "a")
        assert summary(await take(one, 1)) == [(EventType.ADDED, "t1", "a")]
        assert summary(await take(every, 5)) == [
            (EventType.ADDED, "t1", "a"),
            (EventType.ADDED, "t2", "a"),
            (EventType.ADDED, "t2", "w"),
            (EventType.ADDED, "t1", "w"),
            (EventType.DELETED, "t2", "a"),
        ]
        await nothing_more(one, 0.1)
        await nothing_more(every, 0.1)

    run(scenario, store)


def test_watch_from_compacted_revision_is_expired(store: Store) -> None:
    for i in range(6):
        store.create("acme", site(f"s{i}"))

    async def scenario(hub: WatchHub) -> None:
        await write(store.create, "acme", site("late"))
        await caught_up(hub, store)
        await write(store.compact, 2)  # events 1..5 are gone
        with pytest.raises(ApiError) as exc:
            await anext(hub.watch(WatchFilter("acme", ("Site",)), since=1))
        assert (exc.value.code, exc.value.reason) == (410, "Expired")
        # From the compacted revision on, the watch still works.
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=5)
        assert [e.name for e in await take(stream, 2)] == ["s5", "late"]

    run(scenario, store)


def test_write_through_another_postgres_replica_wakes_the_hub(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    second = PostgresStore(pg_url)
    dsn = first.dsn

    def listening() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query ILIKE 'LISTEN%' AND datname = current_database()"
            ).fetchone()
        return bool(row and row[0])

    async def scenario(hub: WatchHub) -> None:
        deadline = time.monotonic() + WAIT
        while not await asyncio.to_thread(listening):
            assert time.monotonic() < deadline, "the hub's store never LISTENed"
            await asyncio.sleep(0.05)
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=await write(first.revision))
        latencies = []
        for i in range(3):
            started = time.monotonic()
            created = await write(second.create, "acme", site(f"remote-{i}"))
            [ev] = await take(stream, 1, timeout=5)
            latencies.append(time.monotonic() - started)
            assert (ev.type, ev.name, ev.object) == (EventType.ADDED, f"remote-{i}", created)
        # poll_interval=30: only NOTIFY can have woken the hub this quickly.
        assert max(latencies) < 0.5, latencies

    try:
        run(scenario, first, poll_interval=30)
    finally:
        second.close()
        first.close()


def test_writes_still_work_after_the_hub_and_its_loop_are_gone(store: Store) -> None:
    """The store keeps the hub's commit listener: a stopped hub must not make later writes fail."""

    async def scenario(hub: WatchHub) -> None:
        stream = hub.watch(WatchFilter("acme", ("Site",)), since=0)
        await write(store.create, "acme", site("during"))
        assert [e.name for e in await take(stream, 1)] == ["during"]

    run(scenario, store)
    created = store.create("acme", site("after"))
    store.update("acme", site("after", x=1))
    assert store.get("acme", "Site", "", "after")["metadata"]["uid"] == created["metadata"]["uid"]

    # Nor when the loop closed without the hub being stopped.
    async def abandoned() -> None:
        await WatchHub(store).start()

    asyncio.run(abandoned())
    store.delete("acme", "Site", "", "after")
    assert store.get_or_none("acme", "Site", "", "after") is None


# -- name-indexed subscriptions: one object's watchers, however many there are ---------------------


def test_named_watch_sees_only_its_object_and_lists_it_first(store: Store) -> None:
    store.create("acme", site("mine", v="0"))
    store.create("acme", site("other"))

    async def scenario(hub: WatchHub) -> None:
        named = hub.watch(WatchFilter("acme", ("Site",), name="mine"), since=None)
        [first] = await take(named, 1)
        assert (first.type, first.name, first.object["spec"]) == (EventType.ADDED, "mine", {"v": "0"})
        await write(store.update, "acme", site("other", v="1"))
        await write(store.create, "t2", site("mine"))  # same name, another tenant
        await write(store.update, "acme", site("mine", v="2"))
        await write(store.delete, "acme", "Site", "", "mine")
        assert summary(await take(named, 2)) == [
            (EventType.MODIFIED, "acme", "mine"),
            (EventType.DELETED, "acme", "mine"),
        ]
        await nothing_more(named)
        # Resuming a named watch from a revision replays only that object's events.
        replay = hub.watch(WatchFilter("acme", ("Site",), name="other"), since=0)
        assert summary(await take(replay, 2)) == [
            (EventType.ADDED, "acme", "other"),
            (EventType.MODIFIED, "acme", "other"),
        ]
        await nothing_more(replay, 0.1)
        # Listing a named object that does not exist yields nothing until it appears.
        absent = hub.watch(WatchFilter("acme", ("Site",), name="later"), since=None)
        pending = asyncio.ensure_future(take(absent, 1))
        await asyncio.sleep(0.1)
        assert not pending.done()
        await write(store.create, "acme", site("later"))
        assert summary(await pending) == [(EventType.ADDED, "acme", "later")]

    run(scenario, store)


def test_one_write_is_offered_to_exactly_one_of_many_named_waiters(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    offered: list[str | None] = []
    original = Subscription.offer

    def counting(self: Subscription, ev: Event) -> None:
        offered.append(self.filter.name)
        original(self, ev)

    monkeypatch.setattr(Subscription, "offer", counting)

    async def scenario(hub: WatchHub) -> None:
        waiters = [
            hub.subscribe(WatchFilter("acme", ("Site",), name=f"site-{i}"), after=hub.revision)
            for i in range(2000)
        ]
        every = hub.subscribe(WatchFilter(ANY_TENANT, ("Site",), name="site-7"), after=hub.revision)
        assert hub.watcher_count == 2001
        await write(store.create, "acme", site("site-7"))
        await write(store.create, "acme", site("nobody-waits"))
        await caught_up(hub, store)
        # The tenant's waiter and the any-tenant one; not the 1999 others, not for the second write.
        assert sorted(offered, key=str) == ["site-7", "site-7"]
        assert [w.queue.qsize() for w in waiters].count(1) == 1 and waiters[7].queue.qsize() == 1
        assert every.queue.get_nowait() is not None
        for sub in [*waiters, every]:
            hub.unsubscribe(sub)
        assert hub.watcher_count == 0
        assert not hub._named and not any(hub._subs.values())  # no empty keys left behind

    run(scenario, store)


def test_named_and_unnamed_watchers_both_see_a_write(store: Store) -> None:
    async def scenario(hub: WatchHub) -> None:
        kind_wide = hub.watch(WatchFilter("acme", ("Site",)), since=None)
        named = hub.watch(WatchFilter("acme", ("Site",), name="x"), since=None)
        pending = asyncio.ensure_future(take(named, 1))
        await asyncio.sleep(0.05)
        await write(store.create, "acme", site("x"))
        await write(store.create, "acme", site("y"))
        assert [e.name for e in await take(kind_wide, 2)] == ["x", "y"]
        assert [e.name for e in await pending] == ["x"]
        await nothing_more(named, 0.1)

    run(scenario, store)


def _event(revision: int) -> Event:
    return Event(revision, EventType.MODIFIED, "t", "Site", "", f"s{revision}", site(f"s{revision}"))


def test_a_mailbox_hands_events_over_in_order_to_its_one_consumer() -> None:
    async def main() -> None:
        box = Mailbox(maxsize=3)
        assert box.empty() and box.qsize() == 0
        with pytest.raises(asyncio.QueueEmpty):
            box.get_nowait()
        waiting = asyncio.create_task(box.get())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing yet: it waits
        box.put_nowait(_event(1))
        assert (await asyncio.wait_for(waiting, 1)).revision == 1  # type: ignore[union-attr]
        for rev in (2, 3, 4):
            box.put_nowait(_event(rev))
        with pytest.raises(asyncio.QueueFull):
            box.put_nowait(_event(5))  # past maxsize
        box.put_nowait(None)  # the end mark always fits
        assert box.qsize() == 4
        assert [(await box.get()) for _ in range(4)] == [_event(2), _event(3), _event(4), None]
        # A cancelled wait leaves the mailbox usable; a second consumer at once is a bug.
        first = asyncio.create_task(box.get())
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="one consumer"):
            await box.get()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        box.put_nowait(_event(6))
        assert (await asyncio.wait_for(box.get(), 1)) == _event(6)

    asyncio.run(main())
