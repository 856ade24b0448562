"""The store contract, run against every backend (SQLite file and a real PostgreSQL database).

Objects are plain dicts here: the store is generic and must not care about kinds.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.fields import parse_field_selector
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import EventType, Store, open_store
from fleetplane.core.store.postgres import PostgresStore
from fleetplane.core.store.sqlite import SqliteStore

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def site(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    obj: Obj = {"apiVersion": "fleetplane.io/v1", "kind": "Site", "metadata": {"name": name}, "spec": spec}
    if labels is not None:
        obj["metadata"]["labels"] = labels
    return obj


def widget(namespace: str, name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    obj = site(name, labels, **spec)
    obj["kind"] = "Widget"
    obj["metadata"]["namespace"] = namespace
    return obj


def with_meta(obj: Obj, **changes: Any) -> Obj:
    """A copy of ``obj`` with metadata fields replaced (None removes one)."""
    meta = {**obj["metadata"], **changes}
    return {**obj, "metadata": {k: v for k, v in meta.items() if v is not None}}


def names(items: list[Obj]) -> list[str]:
    return [o["metadata"]["name"] for o in items]


def api_error(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int, str]:
    return exc.value.code, exc.value.reason


# -- create / get -------------------------------------------------------------------------------


def test_create_fills_server_metadata_and_get_returns_it(store: Store) -> None:
    created = store.create("acme", site("berlin", {"env": "prod"}, displayName="Berlin"))
    m = created["metadata"]
    uuid.UUID(m["uid"])
    assert m["generation"] == 1
    assert RFC3339.match(m["creationTimestamp"])
    assert m["resourceVersion"] == str(store.revision())
    assert created["spec"] == {"displayName": "Berlin"}
    assert store.get("acme", "Site", "", "berlin") == created
    other = store.create("acme", site("paris"))
    assert other["metadata"]["uid"] != m["uid"]
    assert int(other["metadata"]["resourceVersion"]) == int(m["resourceVersion"]) + 1


def test_create_ignores_client_supplied_server_fields(store: Store) -> None:
    obj = with_meta(
        site("s"), uid="forged", generation=7, resourceVersion="999", deletionTimestamp="2020-01-01T00:00:00Z"
    )
    created = store.create("acme", obj)
    m = created["metadata"]
    assert m["uid"] != "forged"
    assert m["generation"] == 1
    assert m["resourceVersion"] == str(store.revision())
    assert "deletionTimestamp" not in m


def test_create_existing_is_already_exists_and_changes_nothing(store: Store) -> None:
    first = store.create("acme", site("berlin", displayName="one"))
    rev = store.revision()
    with pytest.raises(ApiError) as exc:
        store.create("acme", site("berlin", displayName="two"))
    assert api_error(exc) == (409, "AlreadyExists")
    assert "berlin" in exc.value.message
    assert store.get("acme", "Site", "", "berlin") == first
    assert [e.revision for e in store.events_since(0)] == [rev]


def test_missing_object_is_not_found_for_get_update_delete(store: Store) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get("acme", "Site", "", "nope"),
        lambda: store.update("acme", site("nope")),
        lambda: store.delete("acme", "Site", "", "nope"),
    ]
    for call in calls:
        with pytest.raises(ApiError) as exc:
            call()
        assert api_error(exc) == (404, "NotFound")
        assert "nope" in exc.value.message
    assert store.get_or_none("acme", "Site", "", "nope") is None
    assert store.revision() == 0


# -- update ---------------------------------------------------------------------------------------


def test_stale_resource_version_is_conflict_and_leaves_object_unchanged(store: Store) -> None:
    v1 = store.create("acme", site("s", displayName="v1"))
    v2 = store.update("acme", {**v1, "spec": {"displayName": "v2"}})
    assert int(v2["metadata"]["resourceVersion"]) > int(v1["metadata"]["resourceVersion"])
    rev = store.revision()
    with pytest.raises(ApiError) as exc:
        store.update("acme", {**v1, "spec": {"displayName": "stale"}})
    assert api_error(exc) == (409, "Conflict")
    assert store.get("acme", "Site", "", "s") == v2
    assert store.revision() == rev
    with pytest.raises(ApiError) as exc:
        store.delete("acme", "Site", "", "s", resource_version=v1["metadata"]["resourceVersion"])
    assert api_error(exc) == (409, "Conflict")
    assert store.get("acme", "Site", "", "s") == v2


def test_update_without_resource_version_is_unconditional(store: Store) -> None:
    v1 = store.create("acme", site("s", displayName="v1"))
    store.update("acme", {**v1, "spec": {"displayName": "v2"}})
    v3 = store.update("acme", with_meta({**v1, "spec": {"displayName": "v3"}}, resourceVersion=None))
    assert v3["spec"] == {"displayName": "v3"}
    assert store.get("acme", "Site", "", "s")["spec"] == {"displayName": "v3"}


def test_generation_changes_only_with_spec(store: Store) -> None:
    obj = store.create("acme", site("s", {"a": "1"}, displayName="x"))
    obj = store.update("acme", with_meta(obj, labels={"a": "2"}))
    assert obj["metadata"]["generation"] == 1
    obj = store.update("acme", {**obj, "status": {"phase": "Online"}}, part="status")
    assert obj["metadata"]["generation"] == 1
    obj = store.update("acme", {**obj, "spec": {"displayName": "y"}})
    assert obj["metadata"]["generation"] == 2
    obj = store.update("acme", {**obj, "spec": {"displayName": "z"}}, part="main")
    assert obj["metadata"]["generation"] == 3
    # A client cannot set generation, uid or creationTimestamp itself.
    forged = with_meta(obj, generation=42, uid="forged", creationTimestamp="2000-01-01T00:00:00Z")
    obj2 = store.update("acme", {**forged, "spec": {"displayName": "w"}})
    assert obj2["metadata"]["generation"] == 4
    assert obj2["metadata"]["uid"] == obj["metadata"]["uid"]
    assert obj2["metadata"]["creationTimestamp"] == obj["metadata"]["creationTimestamp"]


def test_update_cannot_set_deletion_timestamp(store: Store) -> None:
    """deletionTimestamp is the server's: a replace carrying one must not delete (or mark) the object."""
    obj = store.create("acme", site("s", displayName="x"))
    updated = store.update(
        "acme", with_meta({**obj, "spec": {"displayName": "y"}}, deletionTimestamp="2020-01-01T00:00:00Z")
    )
    assert "deletionTimestamp" not in updated["metadata"]
    stored = store.get("acme", "Site", "", "s")
    assert stored["spec"] == {"displayName": "y"}
    assert "deletionTimestamp" not in stored["metadata"]
    assert [e.type for e in store.events_since(0)] == [EventType.ADDED, EventType.MODIFIED]


def test_part_main_keeps_status_and_part_status_changes_only_status(store: Store) -> None:
    obj = store.create("acme", {**site("s", {"a": "1"}, displayName="x"), "status": {"phase": "Online"}})
    main = store.update(
        "acme",
        {**with_meta(obj, labels={"a": "2"}), "spec": {"displayName": "y"}, "status": {"phase": "Gone"}},
        part="main",
    )
    assert main["status"] == {"phase": "Online"}
    assert main["spec"] == {"displayName": "y"}
    assert main["metadata"]["labels"] == {"a": "2"}
    stat = store.update(
        "acme",
        {**with_meta(main, labels={"a": "3"}), "spec": {"displayName": "z"}, "status": {"phase": "Offline"}},
        part="status",
    )
    assert stat["status"] == {"phase": "Offline"}
    assert stat["spec"] == {"displayName": "y"}
    assert stat["metadata"]["labels"] == {"a": "2"}
    assert stat["metadata"]["generation"] == main["metadata"]["generation"]
    assert store.get("acme", "Site", "", "s") == stat
    # part="all" replaces everything, status included.
    full = store.update("acme", {**stat, "status": {"phase": "Pending"}, "spec": {}})
    assert full["status"] == {"phase": "Pending"}
    assert full["spec"] == {}


def test_noop_update_keeps_resource_version_and_emits_nothing(store: Store) -> None:
    heard: list[int] = []
    obj = store.create("acme", {**site("s", {"a": "1"}, displayName="x"), "status": {"phase": "Online"}})
    store.add_commit_listener(heard.append)
    rev = store.revision()
    for part in ("all", "main", "status"):
        same = store.update("acme", obj, part=part)
        assert same == obj
        # Without a resourceVersion as well.
        assert store.update("acme", with_meta(obj, resourceVersion=None), part=part) == obj
    assert store.revision() == rev
    assert [e.revision for e in store.events_since(0)] == [rev]
    assert all(r <= rev for r in heard)
    # The next real change gets the next revision.
    changed = store.update("acme", {**obj, "spec": {"displayName": "y"}})
    assert changed["metadata"]["resourceVersion"] == str(rev + 1)
    # Equal in Python, not in JSON: 1 -> true and 1 -> 1.0 are changes, stored as written.
    counted = store.update("acme", {**changed, "status": {"phase": "Online", "count": 1}}, part="status")
    for value in (True, 1.0):
        written = store.update(
            "acme", {**counted, "status": {"phase": "Online", "count": value}}, part="status"
        )
        assert int(written["metadata"]["resourceVersion"]) > int(counted["metadata"]["resourceVersion"])
        stored = store.get("acme", "Site", "", "s")["status"]["count"]
        assert (type(stored), stored) == (type(value), value)
        counted = written


# -- batch ----------------------------------------------------------------------------------------


def test_batch_commits_all_writes_together_each_with_its_revision(store: Store) -> None:
    heard: list[int] = []
    store.create("acme", site("old"))
    counter = store.create("acme", {**site("counter"), "status": {"uses": 0}})
    store.add_commit_listener(heard.append)
    rev = store.revision()
    with store.batch() as b:
        made = b.create("acme", site("a", displayName="x"))
        seen = b.get_or_none("acme", "Site", "", "counter")
        assert seen == counter  # reads see the store, and the batch's own writes:
        assert b.get_or_none("acme", "Site", "", "a") == made
        bumped = b.update("acme", {**counter, "status": {"uses": 1}}, part="status")
        assert b.update("acme", bumped) == bumped  # a no-op takes no revision
        gone = b.delete("acme", "Site", "", "old")
    assert [made["metadata"]["resourceVersion"], bumped["metadata"]["resourceVersion"]] == [
        str(rev + 1),
        str(rev + 2),
    ]
    assert gone["metadata"]["resourceVersion"] == str(rev + 3)
    assert store.revision() == rev + 3
    assert [(e.revision, e.type, e.name) for e in store.events_since(rev)] == [
        (rev + 1, EventType.ADDED, "a"),
        (rev + 2, EventType.MODIFIED, "counter"),
        (rev + 3, EventType.DELETED, "old"),
    ]
    assert heard and max(heard) == rev + 3
    assert store.get("acme", "Site", "", "counter")["status"] == {"uses": 1}


def test_batch_that_raises_writes_nothing(store: Store) -> None:
    counter = store.create("acme", {**site("counter"), "status": {"uses": 0}})
    rev = store.revision()
    with pytest.raises(ApiError) as exc, store.batch() as b:
        b.update("acme", {**counter, "status": {"uses": 1}}, part="status")
        b.create("acme", site("new"))
        b.create("acme", site("counter"))  # AlreadyExists: the whole batch rolls back
    assert api_error(exc)[0] == 409
    assert store.revision() == rev
    assert store.events_since(rev) == []
    assert store.get_or_none("acme", "Site", "", "new") is None
    assert store.get("acme", "Site", "", "counter") == counter
    with store.batch() as b:  # a batch that writes nothing changes nothing either
        assert b.update("acme", counter) == counter
    assert store.revision() == rev


# -- delete ---------------------------------------------------------------------------------------


def test_delete_returns_last_state_and_emits_deleted(store: Store) -> None:
    obj = store.create("acme", site("s", {"env": "prod"}, displayName="x"))
    gone = store.delete("acme", "Site", "", "s")
    assert gone["spec"] == obj["spec"]
    assert gone["metadata"]["uid"] == obj["metadata"]["uid"]
    assert gone["metadata"]["resourceVersion"] == str(store.revision())
    with pytest.raises(ApiError) as exc:
        store.get("acme", "Site", "", "s")
    assert exc.value.code == 404
    ev = store.events_since(int(obj["metadata"]["resourceVersion"]))
    assert [(e.type, e.name, e.revision) for e in ev] == [(EventType.DELETED, "s", store.revision())]
    assert ev[0].object == gone
    assert ev[0].prev_labels == {"env": "prod"}
    assert store.list("acme", "Site").items == []
    # The name is free again, with a new identity.
    again = store.create("acme", site("s"))
    assert again["metadata"]["uid"] != obj["metadata"]["uid"]


def test_delete_with_finalizers_marks_then_removes_with_last_finalizer(store: Store) -> None:
    obj = store.create("acme", with_meta(site("s"), finalizers=["a.io/x", "b.io/y"]))
    marked = store.delete("acme", "Site", "", "s")
    assert RFC3339.match(marked["metadata"]["deletionTimestamp"])
    assert store.get("acme", "Site", "", "s") == marked
    assert store.events_since(int(obj["metadata"]["resourceVersion"]))[0].type is EventType.MODIFIED
    # Deleting again while marked changes nothing.
    rev = store.revision()
    assert store.delete("acme", "Site", "", "s") == marked
    assert store.revision() == rev
    # Removing one finalizer keeps it; the deletionTimestamp survives the replace.
    one = store.update("acme", with_meta(marked, finalizers=["b.io/y"]))
    assert one["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    assert store.get("acme", "Site", "", "s")["metadata"]["finalizers"] == ["b.io/y"]
    # Removing the last one removes the object.
    last = store.update("acme", with_meta(one, finalizers=[]))
    assert last["metadata"]["finalizers"] == []
    assert store.get_or_none("acme", "Site", "", "s") is None
    events = store.events_since(rev)
    assert [e.type for e in events] == [EventType.MODIFIED, EventType.DELETED]
    assert store.list("acme", "Site").items == []


# -- revisions ------------------------------------------------------------------------------------


def test_revision_strictly_increases_across_kinds_and_tenants(store: Store) -> None:
    rvs = []
    for i in range(4):
        for tenant in ("t1", "t2"):
            rvs.append(int(store.create(tenant, site(f"s{i}"))["metadata"]["resourceVersion"]))
            rvs.append(int(store.create(tenant, widget("ns", f"w{i}"))["metadata"]["resourceVersion"]))
    rvs.append(int(store.update("t1", site("s0", displayName="x"))["metadata"]["resourceVersion"]))
    rvs.append(int(store.delete("t2", "Widget", "ns", "w0")["metadata"]["resourceVersion"]))
    assert rvs == sorted(set(rvs))
    assert rvs[-1] == store.revision()
    assert [e.revision for e in store.events_since(0)] == rvs


# -- list -----------------------------------------------------------------------------------------


def test_list_by_kind_and_namespace_ordered(store: Store) -> None:
    for ns, name in [("b", "x"), ("a", "y"), ("b", "a"), ("a", "b"), ("c", "c")]:
        store.create("acme", widget(ns, name))
    store.create("acme", site("a-site"))
    store.create("other", widget("a", "z"))
    result = store.list("acme", "Widget")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in result.items] == [
        ("a", "b"),
        ("a", "y"),
        ("b", "a"),
        ("b", "x"),
        ("c", "c"),
    ]
    assert result.revision == store.revision()
    assert result.continue_token is None
    assert names(store.list("acme", "Widget", namespace="b").items) == ["a", "x"]
    assert store.list("acme", "Widget", namespace="zzz").items == []
    assert names(store.list("acme", "Site").items) == ["a-site"]
    assert store.list("acme", "Nothing").items == []


def test_list_with_label_selector_and_field_filter(store: Store) -> None:
    store.create("acme", site("s1", {"env": "prod", "zone": "eu"}, displayName="one"))
    store.create("acme", site("s2", {"env": "dev", "zone": "eu"}, displayName="two"))
    store.create("acme", site("s3", {"env": "prod"}, displayName="three"))
    store.create("acme", site("s4"))

    def sel(text: str) -> list[str]:
        return names(store.list("acme", "Site", selector=parse_selector(text)).items)

    assert sel("env=prod") == ["s1", "s3"]
    assert sel("env!=prod") == ["s2", "s4"]
    assert sel("env in (prod,dev),zone") == ["s1", "s2"]
    assert sel("!zone") == ["s3", "s4"]
    assert sel("") == ["s1", "s2", "s3", "s4"]
    assert sel("env=staging") == []

    def fld(text: str) -> list[str]:
        return names(store.list("acme", "Site", field_filter=parse_field_selector(text)).items)

    assert fld("metadata.name=s2") == ["s2"]
    assert fld("spec.displayName!=one") == ["s2", "s3", "s4"]
    assert names(
        store.list(
            "acme",
            "Site",
            selector=parse_selector("env=prod"),
            field_filter=parse_field_selector("spec.displayName==three"),
        ).items
    ) == ["s3"]


def _page_all(store: Store, limit: int, **kw: Any) -> tuple[list[tuple[str, str]], int]:
    seen: list[tuple[str, str]] = []
    token: str | None = None
    pages = 0
    while True:
        result = store.list("acme", "Widget", limit=limit, continue_token=token, **kw)
        assert len(result.items) <= limit
        pages += 1
        seen += [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in result.items]
        token = result.continue_token
        if token is None:
            return seen, pages
        assert pages < 100


def test_paging_visits_every_object_exactly_once(store: Store) -> None:
    expected = []
    for i in range(23):
        ns, name = f"ns{i % 3}", f"w{i:02d}"
        store.create("acme", widget(ns, name, {"even": str(i % 2 == 0).lower()}))
        expected.append((ns, name))
    expected.sort()
    for limit in (1, 5, 23, 50):
        seen, pages = _page_all(store, limit)
        assert seen == expected
        assert pages >= -(-23 // limit)
    seen, _ = _page_all(store, 3, selector=parse_selector("even=true"))
    evens = [k for k in expected if int(k[1][1:]) % 2 == 0]
    assert seen == evens
    seen, _ = _page_all(store, 2, namespace="ns1", selector=parse_selector("even=false"))
    assert seen == [k for k in expected if k[0] == "ns1" and int(k[1][1:]) % 2 == 1]
    seen, _ = _page_all(store, 4, field_filter=parse_field_selector("metadata.namespace!=ns0"))
    assert seen == [k for k in expected if k[0] != "ns0"]


def test_paging_first_page_has_token_and_list_revision(store: Store) -> None:
    for i in range(5):
        store.create("acme", widget("ns", f"w{i}"))
    rev = store.revision()
    first = store.list("acme", "Widget", limit=2)
    assert names(first.items) == ["w0", "w1"]
    assert first.continue_token
    store.create("acme", widget("ns", "w9"))
    second = store.list("acme", "Widget", limit=2, continue_token=first.continue_token)
    assert names(second.items) == ["w2", "w3"]
    # The continued list reports the revision of the list it continues.
    assert second.revision == rev


def test_continue_token_from_before_compaction_is_expired(store: Store) -> None:
    for i in range(5):
        store.create("acme", widget("ns", f"w{i}"))
    first = store.list("acme", "Widget", limit=2)
    assert first.continue_token
    for i in range(3):
        store.update("acme", widget("ns", f"w{i}", n=i))
    store.compact(0)
    with pytest.raises(ApiError) as exc:
        store.list("acme", "Widget", limit=2, continue_token=first.continue_token)
    assert api_error(exc) == (410, "Expired")


GARBAGE_TOKENS = [
    "!!!not-a-token!!!",
    "bm90IGpzb24",  # "not json"
    base64.urlsafe_b64encode(orjson.dumps({"x": 1})).decode(),
    base64.urlsafe_b64encode(orjson.dumps([1, 2])).decode(),
    base64.urlsafe_b64encode(orjson.dumps({"r": "abc", "ns": "", "n": ""})).decode(),
    "ünïcode",
]


def test_garbage_continue_token_is_bad_request(store: Store) -> None:
    store.create("acme", widget("ns", "w"))
    for token in GARBAGE_TOKENS:
        with pytest.raises(ApiError) as exc:
            store.list("acme", "Widget", limit=1, continue_token=token)
        assert api_error(exc) == (400, "BadRequest"), token
        assert "continue" in exc.value.message


# -- tenants --------------------------------------------------------------------------------------


def test_tenants_are_isolated(store: Store) -> None:
    a = store.create("a", site("same", {"t": "a"}))
    b = store.create("b", site("same", {"t": "b"}))
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert store.get("a", "Site", "", "same")["metadata"]["labels"] == {"t": "a"}
    assert store.get("b", "Site", "", "same")["metadata"]["labels"] == {"t": "b"}
    assert [o["metadata"]["labels"] for o in store.list("a", "Site").items] == [{"t": "a"}]
    assert [o["metadata"]["labels"] for o in store.list("b", "Site").items] == [{"t": "b"}]
    store.create("a", site("only-a"))
    assert store.get_or_none("b", "Site", "", "only-a") is None
    assert names(store.list("b", "Site").items) == ["same"]
    store.delete("a", "Site", "", "same")
    assert store.get("b", "Site", "", "same") == b
    store.update("b", {**b, "spec": {"displayName": "B"}})
    assert store.get_or_none("a", "Site", "", "same") is None
    assert store.list("c", "Site").items == []


# -- event log ------------------------------------------------------------------------------------


def test_events_since_order_and_content(store: Store) -> None:
    c = store.create("acme", site("s", {"env": "dev"}))
    w = store.create("other", widget("ns", "w"))
    u = store.update("acme", with_meta(c, labels={"env": "prod"}))
    s = store.update("acme", {**u, "status": {"phase": "Online"}}, part="status")
    d = store.delete("acme", "Site", "", "s")
    events = store.events_since(0)
    assert [(e.revision, e.type, e.tenant, e.kind, e.namespace, e.name) for e in events] == [
        (int(c["metadata"]["resourceVersion"]), EventType.ADDED, "acme", "Site", "", "s"),
        (int(w["metadata"]["resourceVersion"]), EventType.ADDED, "other", "Widget", "ns", "w"),
        (int(u["metadata"]["resourceVersion"]), EventType.MODIFIED, "acme", "Site", "", "s"),
        (int(s["metadata"]["resourceVersion"]), EventType.MODIFIED, "acme", "Site", "", "s"),
        (int(d["metadata"]["resourceVersion"]), EventType.DELETED, "acme", "Site", "", "s"),
    ]
    assert [e.object for e in events] == [c, w, u, s, d]
    assert [e.prev_labels for e in events] == [None, None, {"env": "dev"}, {"env": "prod"}, {"env": "prod"}]
    assert [e.revision for e in store.events_since(events[1].revision)] == [e.revision for e in events[2:]]
    assert [e.revision for e in store.events_since(0, limit=2)] == [e.revision for e in events[:2]]
    assert store.events_since(store.revision()) == []


def test_compaction_expires_old_revisions_and_keeps_the_rest(store: Store) -> None:
    for i in range(10):
        store.create("acme", site(f"s{i}"))
    assert store.compacted_revision() == 0
    assert store.compact(3) == 7
    assert store.compacted_revision() == 7
    for old in (0, 3, 6):
        with pytest.raises(ApiError) as exc:
            store.events_since(old)
        assert api_error(exc) == (410, "Expired")
    assert [e.revision for e in store.events_since(7)] == [8, 9, 10]
    assert [e.name for e in store.events_since(8)] == ["s8", "s9"]
    # Compaction never moves backwards, and objects are untouched by it.
    assert store.compact(100) == 7
    assert len(store.list("acme", "Site").items) == 10
    store.create("acme", site("s10"))
    assert [e.revision for e in store.events_since(7)] == [8, 9, 10, 11]
    assert store.compact(0) == 11
    assert store.events_since(11) == []


def test_scan_returns_every_tenant_with_one_revision(store: Store) -> None:
    store.create("t1", site("a"))
    store.create("t2", site("b"))
    store.create("t2", widget("ns", "w"))
    store.create("t1", {**widget("ns", "vs"), "kind": "VirtualSite"})
    store.create("t3", {**widget("ns", "x"), "kind": "Other"})
    rev, objs = store.scan(("Site", "VirtualSite"))
    assert rev == store.revision()
    assert sorted((t, o["kind"], o["metadata"]["name"]) for t, o in objs) == [
        ("t1", "Site", "a"),
        ("t1", "VirtualSite", "vs"),
        ("t2", "Site", "b"),
    ]
    assert store.scan(("Nothing",)) == (rev, [])


def test_commit_listeners_hear_each_revision(store: Store) -> None:
    heard: list[int] = []
    store.add_commit_listener(heard.append)
    revs = [int(store.create("acme", site(f"s{i}"))["metadata"]["resourceVersion"]) for i in range(3)]
    revs.append(int(store.delete("acme", "Site", "", "s0")["metadata"]["resourceVersion"]))
    # Listeners run after the commit, before the write returns (PG may repeat via NOTIFY).
    assert set(revs) <= set(heard)
    assert max(heard) == store.revision()


# -- leadership -----------------------------------------------------------------------------------


def _second_instance(store: Store) -> Store:
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    assert isinstance(store, PostgresStore)
    return PostgresStore(store.url)


def test_try_lead_is_exclusive_and_passes_on_after_close(store: Store) -> None:
    other = _second_instance(store)
    third = _second_instance(store)
    try:
        assert store.try_lead("controllers")
        assert store.try_lead("controllers")  # staying the leader
        assert not other.try_lead("controllers")
        assert not third.try_lead("controllers")
        # Another name is another lock.
        assert other.try_lead("reports")
        assert not store.try_lead("reports")
        store.close()
        assert other.try_lead("controllers")
        assert not third.try_lead("controllers")
        assert other.try_lead("controllers")
        other.close()
        assert third.try_lead("controllers")
        assert third.try_lead("reports")
    finally:
        other.close()
        third.close()


# -- optimistic concurrency -----------------------------------------------------------------------


def test_concurrent_read_modify_write_never_loses_an_increment(store: Store) -> None:
    threads_n, per_thread = 8, 12
    second = _second_instance(store)
    store.create("acme", site("counter", n=0))
    conflicts = [0] * threads_n
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        s = store if i % 2 else second
        try:
            start.wait()
            for _ in range(per_thread):
                while True:
                    cur = s.get("acme", "Site", "", "counter")
                    cur["spec"]["n"] += 1
                    try:
                        s.update("acme", cur)
                        break
                    except ApiError as exc:
                        assert exc.code == 409 and exc.reason == "Conflict"
                        conflicts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    second.close()
    assert not errors
    final = store.get("acme", "Site", "", "counter")
    assert final["spec"]["n"] == threads_n * per_thread
    assert final["metadata"]["generation"] == 1 + threads_n * per_thread
    assert len(store.events_since(0)) == 1 + threads_n * per_thread
