"""The in-memory Pod view's answers (server/vk8s/pod_view.py): pages with the store's continue
semantics, and cached encodings that equal what the generic Table and list paths produce."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.store.base import decode_continue, encode_continue
from fleetplane.server.context import ServerContext
from fleetplane.server.vk8s import tables
from fleetplane.server.vk8s.pod_view import PodView


def pod(name: str, app: str = "web", created: str = "2026-01-02T03:04:05Z") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "vk8s.core.Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": app},
            "creationTimestamp": created,
            "resourceVersion": "7",
        },
        "spec": {"nodeName": f"{name}-node", "containers": [{"name": "c", "image": "i:1"}]},
        "status": {"phase": "Running", "containerStatuses": [{"ready": True, "restartCount": 2}]},
    }


def view(compacted: int = 0) -> PodView:
    store = SimpleNamespace(compacted_revision=lambda: compacted)
    return PodView(cast(ServerContext, SimpleNamespace(store=store)))


def kube(obj: Obj) -> Obj:
    return {**obj, "kind": "Pod"}


class Labels:
    def __init__(self, app: str) -> None:
        self.app = app

    def matches(self, labels: dict[str, Any]) -> bool:
        return labels.get("app") == self.app


def test_pages_follow_the_store_continue_semantics() -> None:
    v = view()
    pods = [pod(f"p{i:02d}", app="a" if i % 2 else "b") for i in range(10)]
    page = v.page(pods, 40, "default", None, None, limit=4)
    assert [p["metadata"]["name"] for p in page.items] == ["p00", "p01", "p02", "p03"]
    assert page.token is not None and decode_continue(page.token) == (40, "default", "p03")
    # The next page is read at the first page's revision, after its last name.
    nxt = v.page(pods, 99, "default", None, None, limit=4, token=page.token)
    assert [p["metadata"]["name"] for p in nxt.items] == ["p04", "p05", "p06", "p07"]
    assert nxt.revision == 40
    last = v.page(pods, 99, "default", None, None, limit=4, token=nxt.token)
    assert [p["metadata"]["name"] for p in last.items] == ["p08", "p09"] and last.token is None
    # Selectors count matching Pods only; everything fits: no token.
    odd = v.page(pods, 40, "default", Labels("a"), None, limit=5)
    assert [p["metadata"]["name"] for p in odd.items] == ["p01", "p03", "p05", "p07", "p09"]
    assert odd.token is None
    assert v.page(pods, 40, "default", None, lambda o: o["metadata"]["name"] == "p03").items == [pods[3]]
    # A token of another namespace: before it, everything; after it, nothing.
    assert len(v.page(pods, 40, "default", None, None, token=encode_continue(40, "a", "zz")).items) == 10
    assert v.page(pods, 40, "default", None, None, token=encode_continue(40, "z", "")).items == []


def test_a_token_older_than_the_compaction_is_expired() -> None:
    with pytest.raises(ApiError) as caught:
        view(compacted=50).page([pod("a")], 60, "default", None, None, 1, encode_continue(40, "default", "a"))
    assert (caught.value.code, caught.value.reason) == (410, "Expired")


@pytest.mark.parametrize("include", ["PartialObjectMetadata", "Object", "None"])
def test_encoded_rows_equal_the_generic_table(include: str) -> None:
    v = view()
    pods = [pod("a"), pod("b", created="")]
    pods[1]["metadata"].pop("creationTimestamp")
    rows = [v.encoded("t", p, include, kube) for p in pods]
    assert all(isinstance(r, tables.EncodedRow) for r in rows)
    got = orjson.loads(
        orjson.dumps(tables.encoded_table("Pod", [r for r in rows if isinstance(r, tables.EncodedRow)], {}))
    )
    want = tables.table("Pod", [kube(p) for p in pods], include, {})
    assert got == want


def test_encodings_are_cached_per_stored_version() -> None:
    v = view()
    calls: list[str] = []

    def counting(obj: Obj) -> Obj:
        calls.append(obj["metadata"]["name"])
        return kube(obj)

    first = pod("a")
    encoded = v.encoded("t", first, "json", counting)
    assert orjson.loads(cast(bytes, encoded)) == kube(first)
    assert v.encoded("t", first, "json", counting) is encoded and calls == ["a"]
    changed = pod("a", app="other")  # a new stored version: encoded again
    assert orjson.loads(cast(bytes, v.encoded("t", changed, "json", counting)))["metadata"]["labels"] == {
        "app": "other"
    }
    assert calls == ["a", "a"]
