"""The native resource API over real HTTPS, as a user (kubectl-style client or raw HTTP) sees it."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
SITES = f"{API}/sites"

# Every request a test below sends with bad input, and whether it carries the admin key;
# ``test_no_bad_input_is_a_server_error`` replays them all.
BAD_INPUTS: list[tuple[str, str, dict[str, Any], bool]] = []


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def vs_path(ns: str, name: str = "") -> str:
    return f"{API}/namespaces/{ns}/virtualsites" + (f"/{name}" if name else "")


def site(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "fleetplane.io/v1", "kind": "Site", "metadata": meta, "spec": spec}


def bad(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Send a request with bad input and remember it for the no-500 sweep."""
    BAD_INPUTS.append((method, path, kwargs, True))
    return http.request(method, path, **kwargs)


def assert_status(resp: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert resp.status_code == code, resp.text
    body: dict[str, Any] = resp.json()
    assert body["kind"] == "Status", body
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason, body
    assert body["message"]
    return body


def cause_fields(body: dict[str, Any]) -> list[str]:
    return [c["field"] for c in (body.get("details") or {}).get("causes") or []]


def make_http(server: ServerProcess, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or server.admin_key}"}
    return httpx.Client(base_url=server.url, verify=server.tls, headers=headers, timeout=30)


def create(http: httpx.Client, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    resp = http.post(path, json=obj)
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def merge_patch(http: httpx.Client, path: str, patch: dict[str, Any]) -> dict[str, Any]:
    resp = http.patch(
        path, content=json.dumps(patch), headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def current_rv(http: httpx.Client, path: str = SITES) -> int:
    resp = http.get(path, params={"limit": 1})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["metadata"]["resourceVersion"])


def iter_watch(
    http: httpx.Client, path: str, *, rv: int | None, selector: str = "", limit_s: float = 15.0
) -> Iterator[dict[str, Any]]:
    """The events of a watch as they arrive; the server ends the stream after ``limit_s``."""
    params = {"watch": "true", "timeoutSeconds": str(int(limit_s))}
    if rv is not None:
        params["resourceVersion"] = str(rv)
    if selector:
        params["labelSelector"] = selector
    with http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=limit_s + 10)) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.strip():
                yield json.loads(line)


def read_watch(
    http: httpx.Client,
    path: str,
    *,
    rv: int | None,
    until: Callable[[dict[str, Any]], bool],
    selector: str = "",
    max_events: int | None = None,
    limit_s: float = 15.0,
) -> list[dict[str, Any]]:
    """Events of a watch until ``until(event)`` holds (inclusive) or ``max_events`` arrive;
    fewer when the server ends the stream after ``limit_s``."""
    events: list[dict[str, Any]] = []
    stream = iter_watch(http, path, rv=rv, selector=selector, limit_s=limit_s)
    try:
        for event in stream:
            events.append(event)
            if until(event) or (max_events is not None and len(events) >= max_events):
                break
    finally:
        stream.close()  # type: ignore[attr-defined]
    return events


def named(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev["object"]["metadata"]["name"] == name


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(ev["type"], ev["object"]["metadata"]["name"]) for ev in events]


def revisions(events: list[dict[str, Any]]) -> list[int]:
    return [int(ev["object"]["metadata"]["resourceVersion"]) for ev in events]


def poll(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("api") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with make_http(server) as client:
        yield client


# -- CRUD -----------------------------------------------------------------------------------------


def test_site_crud(http: httpx.Client) -> None:
    name = uniq("crud")
    created = create(http, SITES, site(name, {"env": "prod"}, displayName="Plant 1"))
    assert created["kind"] == "Site" and created["apiVersion"] == "fleetplane.io/v1"
    meta = created["metadata"]
    assert meta["name"] == name and meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert "namespace" not in meta
    assert created["status"]["phase"] == "Pending"

    got = http.get(f"{SITES}/{name}").json()
    assert got == created
    assert name in [i["metadata"]["name"] for i in http.get(SITES).json()["items"]]

    got["spec"]["displayName"] = "Plant 1 (renamed)"
    replaced = http.put(f"{SITES}/{name}", json=got)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["spec"]["displayName"] == "Plant 1 (renamed)"
    assert int(replaced.json()["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced.json()["metadata"]["uid"] == meta["uid"]
    assert http.get(f"{SITES}/{name}").json()["spec"]["displayName"] == "Plant 1 (renamed)"

    deleted = http.delete(f"{SITES}/{name}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["metadata"]["name"] == name
    assert_status(http.get(f"{SITES}/{name}"), 404, "NotFound")
    assert name not in [i["metadata"]["name"] for i in http.get(SITES).json()["items"]]
    assert_status(http.delete(f"{SITES}/{name}"), 404, "NotFound")


def test_virtual_site_crud(http: httpx.Client) -> None:
    ns, other_ns, name = uniq("ns"), uniq("ns"), uniq("vs")
    body = {"kind": "VirtualSite", "metadata": {"name": name}, "spec": {"selector": "env=prod"}}
    created = create(http, vs_path(ns), body)
    assert created["metadata"]["namespace"] == ns
    assert created["spec"]["selector"] == "env=prod"

    assert http.get(vs_path(ns, name)).json()["metadata"]["uid"] == created["metadata"]["uid"]
    assert [i["metadata"]["name"] for i in http.get(vs_path(ns)).json()["items"]] == [name]
    # The same name in another namespace is another object; the namespaced list does not mix them.
    create(http, vs_path(other_ns), {**body, "spec": {"selector": "env=dev"}})
    assert [i["spec"]["selector"] for i in http.get(vs_path(ns)).json()["items"]] == ["env=prod"]
    everywhere = http.get(f"{API}/virtualsites").json()["items"]
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere} >= {
        (ns, name),
        (other_ns, name),
    }

    # The membership controller writes the status once; a replace must start from that version.
    current = poll(lambda: (o := http.get(vs_path(ns, name)).json())["status"]["observedGeneration"] and o)
    current["spec"] = {"selector": {"matchLabels": {"env": "staging"}}, "description": "staging sites"}
    replaced = http.put(vs_path(ns, name), json=current)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["spec"]["description"] == "staging sites"

    assert http.delete(vs_path(ns, name)).status_code == 200
    assert_status(http.get(vs_path(ns, name)), 404, "NotFound")
    assert http.get(vs_path(other_ns, name)).status_code == 200


def test_replace_with_stale_resource_version_is_a_conflict(http: httpx.Client) -> None:
    name = uniq("stale")
    created = create(http, SITES, site(name, displayName="v1"))
    fresh = http.put(f"{SITES}/{name}", json={**created, "spec": {"displayName": "v2"}})
    assert fresh.status_code == 200, fresh.text
    stale = http.put(f"{SITES}/{name}", json={**created, "spec": {"displayName": "v3"}})
    body = assert_status(stale, 409, "Conflict")
    assert body["details"]["name"] == name
    assert http.get(f"{SITES}/{name}").json()["spec"]["displayName"] == "v2"
    # A delete with a stale precondition is refused too; with the current one it works.
    rv = fresh.json()["metadata"]["resourceVersion"]
    stale_del = http.request("DELETE", f"{SITES}/{name}", json={"preconditions": {"resourceVersion": "1"}})
    assert_status(stale_del, 409, "Conflict")
    ok = http.request("DELETE", f"{SITES}/{name}", json={"preconditions": {"resourceVersion": rv}})
    assert ok.status_code == 200, ok.text


def test_create_twice_is_already_exists(http: httpx.Client) -> None:
    name = uniq("twice")
    create(http, SITES, site(name, displayName="first"))
    body = assert_status(http.post(SITES, json=site(name, displayName="second")), 409, "AlreadyExists")
    assert body["details"]["name"] == name
    assert http.get(f"{SITES}/{name}").json()["spec"]["displayName"] == "first"


def test_get_missing_is_not_found_with_name(http: httpx.Client) -> None:
    name = uniq("missing")
    body = assert_status(http.get(f"{SITES}/{name}"), 404, "NotFound")
    assert body["details"]["name"] == name
    body = assert_status(http.get(vs_path("default", name)), 404, "NotFound")
    assert body["details"]["name"] == name
    assert_status(bad(http, "GET", f"{API}/nosuchkinds"), 404, "NotFound")
    assert_status(bad(http, "GET", f"{API}/namespaces/default/sites"), 404, "NotFound")


# -- validation -----------------------------------------------------------------------------------

INVALID_SITES = {
    "bad name": ({"metadata": {"name": "Bad_Name"}}, "metadata.name"),
    "bad label key": ({"metadata": {"name": "ok", "labels": {"bad key!": "v"}}}, "metadata.labels"),
    "bad label value": ({"metadata": {"name": "ok", "labels": {"k": "bad value!"}}}, "metadata.labels[k]"),
    "latitude 200": (
        {"metadata": {"name": "ok"}, "spec": {"coordinates": {"latitude": 200, "longitude": 0}}},
        "spec.coordinates.latitude",
    ),
    "unknown spec field": ({"metadata": {"name": "ok"}, "spec": {"dispalyName": "typo"}}, "spec.dispalyName"),
}


@pytest.mark.parametrize("case", list(INVALID_SITES))
def test_invalid_site_is_422_with_field(http: httpx.Client, case: str) -> None:
    obj, field = INVALID_SITES[case]
    name = uniq("inv")
    obj = json.loads(json.dumps(obj).replace('"ok"', f'"{name}"'))
    body = assert_status(bad(http, "POST", SITES, json=obj), 422, "Invalid")
    assert field in cause_fields(body), body
    assert_status(http.get(f"{SITES}/{name}"), 404, "NotFound")


@pytest.mark.parametrize(
    "selector",
    [
        "env in (a",
        "!env=x",
        {"matchExpressions": [{"key": "env", "operator": "Bogus"}]},
        {"matchLabels": {"k": "a b"}},
    ],
)
def test_invalid_virtual_site_selector_is_422(http: httpx.Client, selector: Any) -> None:
    name = uniq("badsel")
    obj = {"metadata": {"name": name}, "spec": {"selector": selector}}
    body = assert_status(bad(http, "POST", vs_path("default"), json=obj), 422, "Invalid")
    assert any(f.startswith("spec.selector") for f in cause_fields(body)), body


def test_invalid_replace_is_422_and_changes_nothing(http: httpx.Client) -> None:
    name = uniq("invput")
    created = create(http, SITES, site(name, displayName="kept"))
    obj = {**created, "spec": {"coordinates": {"latitude": 200, "longitude": 0}}}
    body = assert_status(bad(http, "PUT", f"{SITES}/{name}", json=obj), 422, "Invalid")
    assert "spec.coordinates.latitude" in cause_fields(body)
    patch = {"metadata": {"labels": {"bad key!": "x"}}}
    resp = bad(
        http,
        "PATCH",
        f"{SITES}/{name}",
        content=json.dumps(patch),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert any(f.startswith("metadata.labels") for f in cause_fields(assert_status(resp, 422, "Invalid")))
    assert http.get(f"{SITES}/{name}").json() == created


def test_identity_mismatches_are_400(http: httpx.Client) -> None:
    name = uniq("ident")
    created = create(http, SITES, site(name))
    wrong_kind = {"kind": "VirtualSite", "metadata": {"name": uniq("x")}}
    assert "kind" in cause_fields(assert_status(bad(http, "POST", SITES, json=wrong_kind), 400, "BadRequest"))
    wrong_version = {"apiVersion": "fleetplane.io/v2", "metadata": {"name": uniq("x")}}
    assert_status(bad(http, "POST", SITES, json=wrong_version), 400, "BadRequest")
    wrong_ns = {"metadata": {"name": uniq("x"), "namespace": "elsewhere"}, "spec": {}}
    body = assert_status(bad(http, "POST", vs_path("default"), json=wrong_ns), 400, "BadRequest")
    assert "metadata.namespace" in cause_fields(body)
    wrong_name = {**created, "metadata": {**created["metadata"], "name": uniq("other")}}
    body = assert_status(bad(http, "PUT", f"{SITES}/{name}", json=wrong_name), 400, "BadRequest")
    assert "metadata.name" in cause_fields(body)
    assert_status(bad(http, "PUT", f"{SITES}/{name}", json={**created, "kind": "Tenant"}), 400, "BadRequest")
    assert http.get(f"{SITES}/{name}").json() == created


def test_malformed_bodies_are_400(http: httpx.Client) -> None:
    json_headers = {"Content-Type": "application/json"}
    for raw in (b"{bad", b'{"metadata": ', b"\xff\xfe", b"[1, 2]", b"null", b'"a string"', b""):
        assert_status(bad(http, "POST", SITES, content=raw, headers=json_headers), 400, "BadRequest")
    yaml_headers = {"Content-Type": "application/yaml"}
    for raw in (b"metadata: [unclosed", b"- a\n- b\n", b"!!python/object:os.system {}\n"):
        assert_status(bad(http, "POST", SITES, content=raw, headers=yaml_headers), 400, "BadRequest")
    name = uniq("malformed")
    create(http, SITES, site(name))
    path = f"{SITES}/{name}"
    assert_status(bad(http, "PUT", path, content=b"{bad", headers=json_headers), 400, "BadRequest")
    merge = {"Content-Type": "application/merge-patch+json"}
    jpatch = {"Content-Type": "application/json-patch+json"}
    assert_status(bad(http, "PATCH", path, content=b"{bad", headers=merge), 400, "BadRequest")
    assert_status(bad(http, "PATCH", path, content=b"[1]", headers=merge), 400, "BadRequest")
    assert_status(bad(http, "PATCH", path, content=b'{"op": "add"}', headers=jpatch), 400, "BadRequest")
    assert_status(
        bad(http, "PATCH", path, content=b'[{"op": "bogus", "path": "/x"}]', headers=jpatch),
        400,
        "BadRequest",
    )
    assert_status(
        bad(
            http,
            "PATCH",
            path,
            content=b'[{"op": "remove", "path": "/metadata/labels/nope"}]',
            headers=jpatch,
        ),
        400,
        "BadRequest",
    )
    assert_status(
        bad(http, "PATCH", path, content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        "UnsupportedMediaType",
    )
    assert_status(bad(http, "DELETE", path, content=b"{bad"), 400, "BadRequest")
    # A YAML body is fine when it is an object.
    yaml_site = f"metadata:\n  name: {uniq('yaml')}\nspec:\n  displayName: from yaml\n".encode()
    assert http.post(SITES, content=yaml_site, headers=yaml_headers).status_code == 201


# -- request body limit ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("limit") / "data", extra_args=["--max-body", "2048"]).start()
    yield proc
    proc.stop()


def padded_site(size: int) -> bytes:
    obj = site(uniq("big"), description="")
    base = len(json.dumps(obj))
    obj["spec"]["description"] = "x" * max(0, size - base)
    return json.dumps(obj).encode()


def test_body_over_limit_is_413_with_content_length(small_server: ServerProcess) -> None:
    with make_http(small_server) as http:
        ok = http.post(SITES, content=padded_site(1500), headers={"Content-Type": "application/json"})
        assert ok.status_code == 201, ok.text
        raw = padded_site(3000)
        assert len(raw) > 2048
        assert_status(
            bad(http, "POST", SITES, content=raw, headers={"Content-Type": "application/json"}),
            413,
            "RequestEntityTooLarge",
        )
        name = json.loads(raw)["metadata"]["name"]
        assert_status(http.get(f"{SITES}/{name}"), 404, "NotFound")


def test_a_sites_call_over_the_limit_is_413_too(small_server: ServerProcess) -> None:
    """The sites' calls are answered in front of the application (``SiteFastPath``), under the
    same limit: a registration over it is refused before anything is read or stored."""
    body = json.dumps({"csr": "x" * 3000, "token": "t"}).encode()
    with make_http(small_server) as http:
        resp = http.post(
            "/site-api/v1/registrations", content=body, headers={"Content-Type": "application/json"}
        )
        assert_status(resp, 413, "RequestEntityTooLarge")
        chunked = http.post(
            "/site-api/v1/registrations",
            content=iter([body[:1000], body[1000:2000], body[2000:]]),
            headers={"Content-Type": "application/json"},
        )
        assert_status(chunked, 413, "RequestEntityTooLarge")
        regs = http.get(f"{API}/registrations")
        assert regs.status_code == 200 and regs.json()["items"] == [], regs.text


def test_body_over_limit_is_413_when_chunked(small_server: ServerProcess) -> None:
    raw = padded_site(3000)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 256):
            yield raw[i : i + 256]

    with make_http(small_server) as http:
        resp = http.post(SITES, content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in {k.lower() for k in resp.request.headers}
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert_status(resp, 413, "RequestEntityTooLarge")
        name = json.loads(raw)["metadata"]["name"]
        assert_status(http.get(f"{SITES}/{name}"), 404, "NotFound")
        # A small chunked body still goes through.
        small = padded_site(500)
        resp = http.post(
            SITES, content=iter([small[:100], small[100:]]), headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 201, resp.text


# -- listing: selectors and paging ------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(http: httpx.Client) -> tuple[str, dict[str, dict[str, str]]]:
    """Sites of one test group: env prod/dev/none, tier set on some."""
    group = uniq("g")
    sites = {
        f"{group}-a": {"group": group, "env": "prod", "tier": "edge"},
        f"{group}-b": {"group": group, "env": "dev", "tier": "core"},
        f"{group}-c": {"group": group, "env": "staging"},
        f"{group}-d": {"group": group},
    }
    for name, labels in sites.items():
        create(http, SITES, site(name, labels))
    return group, sites


def names_for(http: httpx.Client, selector: str) -> set[str]:
    resp = http.get(SITES, params={"labelSelector": selector})
    assert resp.status_code == 200, resp.text
    return {i["metadata"]["name"] for i in resp.json()["items"]}


def test_label_selector_lists(http: httpx.Client, labelled: tuple[str, dict[str, dict[str, str]]]) -> None:
    group, sites = labelled
    a, b, c, d = sorted(sites)
    g = f"group={group}"
    assert names_for(http, g) == {a, b, c, d}
    assert names_for(http, f"{g},env=prod") == {a}
    assert names_for(http, f"{g},env==prod") == {a}
    # != and notin match objects without the key, as in Kubernetes.
    assert names_for(http, f"{g},env!=prod") == {b, c, d}
    assert names_for(http, f"{g},env notin (prod,dev)") == {c, d}
    assert names_for(http, f"{g},env in (prod,dev)") == {a, b}
    assert names_for(http, f"{g},tier") == {a, b}
    assert names_for(http, f"{g},!tier") == {c, d}
    assert names_for(http, f"{g},env in (prod,staging),!tier") == {c}
    assert names_for(http, f"{g},env=nope") == set()


@pytest.mark.parametrize(
    "selector", ["env in (a", "!env=x", "bad key!=x", "env=(", "env=a b", "x,,y", "env>1"]
)
def test_bad_label_selector_is_400(http: httpx.Client, selector: str) -> None:
    body = assert_status(bad(http, "GET", SITES, params={"labelSelector": selector}), 400, "BadRequest")
    assert "labelSelector" in cause_fields(body)
    body = assert_status(
        bad(http, "GET", SITES, params={"labelSelector": selector, "watch": "true"}), 400, "BadRequest"
    )
    assert "labelSelector" in cause_fields(body)


def test_field_selector_metadata_name(
    http: httpx.Client, labelled: tuple[str, dict[str, dict[str, str]]]
) -> None:
    group, sites = labelled
    a, b, *_ = sorted(sites)
    resp = http.get(SITES, params={"fieldSelector": f"metadata.name={a}"})
    assert [i["metadata"]["name"] for i in resp.json()["items"]] == [a]
    resp = http.get(SITES, params={"fieldSelector": f"metadata.name!={a}", "labelSelector": f"group={group}"})
    assert {i["metadata"]["name"] for i in resp.json()["items"]} == set(sites) - {a}
    resp = http.get(SITES, params={"fieldSelector": f"metadata.name=={b},status.phase=Pending"})
    assert [i["metadata"]["name"] for i in resp.json()["items"]] == [b]
    body = assert_status(
        bad(http, "GET", SITES, params={"fieldSelector": "metadata.name"}), 400, "BadRequest"
    )
    assert "fieldSelector" in cause_fields(body)


def page_through(http: httpx.Client, params: dict[str, Any], limit: int) -> tuple[list[str], int]:
    seen: list[str] = []
    token, pages = "", 0
    while True:
        resp = http.get(SITES, params={**params, "limit": limit, **({"continue": token} if token else {})})
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert len(data["items"]) <= limit
        seen += [i["metadata"]["name"] for i in data["items"]]
        pages += 1
        token = data["metadata"].get("continue", "")
        if not token:
            return seen, pages
        assert pages < 1000


def test_paging_visits_every_item_exactly_once(http: httpx.Client) -> None:
    group = uniq("page")
    names = {f"{group}-{i:02d}" for i in range(23)}
    for name in sorted(names, reverse=True):
        create(http, SITES, site(name, {"page": group, "odd": str(int(name[-2:]) % 2)}))
    seen, pages = page_through(http, {"labelSelector": f"page={group}"}, 5)
    assert sorted(seen) == sorted(names) and len(seen) == len(names)
    assert pages == 5
    # With a selector that skips half of the rows, pages are still full and nothing repeats.
    seen, _ = page_through(http, {"labelSelector": f"page={group},odd=1"}, 4)
    assert sorted(seen) == sorted(n for n in names if int(n[-2:]) % 2)
    # Without a selector: every site in the tenant once, in name order.
    everything, _ = page_through(http, {}, 7)
    assert len(everything) == len(set(everything))
    assert names <= set(everything)
    assert everything == sorted(everything)
    listed = [i["metadata"]["name"] for i in http.get(SITES).json()["items"]]
    assert listed == everything
    # Writes between pages do not make a page repeat or skip what was there.
    first = http.get(SITES, params={"labelSelector": f"page={group}", "limit": 10}).json()
    create(http, SITES, site(f"{group}-00a", {"page": group}))
    rest, _ = page_through(
        http, {"labelSelector": f"page={group}", "continue": first["metadata"]["continue"]}, 100
    )
    got = [i["metadata"]["name"] for i in first["items"]] + rest
    assert len(got) == len(set(got)) and names <= set(got)
    assert_status(bad(http, "GET", SITES, params={"limit": "abc"}), 400, "BadRequest")
    assert_status(bad(http, "GET", SITES, params={"limit": "-1"}), 400, "BadRequest")
    assert_status(bad(http, "GET", SITES, params={"limit": 2, "continue": "garbage!!"}), 400, "BadRequest")


# -- patch, status, generation ---------------------------------------------------------------------


def test_merge_patch_and_json_patch_on_labels(http: httpx.Client) -> None:
    name = uniq("patch")
    path = f"{SITES}/{name}"
    create(http, SITES, site(name, {"keep": "1", "drop": "1"}, displayName="p"))
    out = merge_patch(http, path, {"metadata": {"labels": {"add": "yes", "drop": None, "keep": "2"}}})
    assert out["metadata"]["labels"] == {"keep": "2", "add": "yes"}
    assert out["spec"] == {"displayName": "p"}

    ops = [
        {"op": "add", "path": "/metadata/labels/region~1zone", "value": "eu"},
        {"op": "replace", "path": "/metadata/labels/keep", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/add"},
        {"op": "test", "path": "/spec/displayName", "value": "p"},
    ]
    resp = http.patch(path, content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"]["labels"] == {"keep": "3", "region/zone": "eu"}
    assert http.get(path).json()["metadata"]["labels"] == {"keep": "3", "region/zone": "eu"}
    # A failing test operation changes nothing.
    failing = [
        {"op": "remove", "path": "/metadata/labels/keep"},
        {"op": "test", "path": "/spec/displayName", "value": "other"},
    ]
    resp = bad(
        http,
        "PATCH",
        path,
        content=json.dumps(failing),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert resp.status_code in (400, 409, 422), resp.text
    assert http.get(path).json()["metadata"]["labels"]["keep"] == "3"
    # A patch with a stale resourceVersion precondition is a conflict.
    resp = bad(
        http,
        "PATCH",
        path,
        content=json.dumps({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert_status(resp, 409, "Conflict")
    assert_status(
        bad(
            http,
            "PATCH",
            f"{SITES}/{uniq('nope')}",
            content=b"{}",
            headers={"Content-Type": "application/merge-patch+json"},
        ),
        404,
        "NotFound",
    )


def test_status_subresource(http: httpx.Client) -> None:
    name = uniq("status")
    path = f"{SITES}/{name}"
    created = create(http, SITES, {**site(name, displayName="main"), "status": {"phase": "Online"}})
    assert created["status"]["phase"] == "Pending"  # status is not the creator's to set

    body = {
        **created,
        "spec": {"displayName": "changed via status"},
        "status": {"phase": "Online", "nodeCount": 3},
    }
    resp = http.put(f"{path}/status", json=body)
    assert resp.status_code == 200, resp.text
    after = http.get(path).json()
    assert after["status"]["phase"] == "Online" and after["status"]["nodeCount"] == 3
    assert after["spec"] == {"displayName": "main"}
    assert after["metadata"]["generation"] == 1

    body = {**after, "spec": {"displayName": "changed"}, "status": {"phase": "Offline", "nodeCount": 0}}
    resp = http.put(path, json=body)
    assert resp.status_code == 200, resp.text
    after = http.get(path).json()
    assert after["spec"] == {"displayName": "changed"}
    assert after["status"]["phase"] == "Online" and after["status"]["nodeCount"] == 3

    out = merge_patch(
        http, f"{path}/status", {"status": {"phase": "Offline"}, "spec": {"displayName": "nope"}}
    )
    assert out["status"]["phase"] == "Offline" and out["spec"] == {"displayName": "changed"}
    assert http.get(f"{path}/status").json()["status"]["phase"] == "Offline"

    body = assert_status(
        bad(http, "PUT", f"{path}/status", json={**after, "status": {"phase": "Exploded"}}), 422, "Invalid"
    )
    assert any(f.startswith("status.phase") for f in cause_fields(body))


def test_generation_bumps_on_spec_change_only(http: httpx.Client) -> None:
    name = uniq("gen")
    path = f"{SITES}/{name}"
    created = create(http, SITES, site(name, {"a": "1"}, displayName="g"))
    assert created["metadata"]["generation"] == 1
    out = merge_patch(http, path, {"metadata": {"labels": {"a": "2"}, "annotations": {"note": "x"}}})
    assert out["metadata"]["generation"] == 1
    out = merge_patch(http, f"{path}/status", {"status": {"phase": "Online"}})
    assert out["metadata"]["generation"] == 1
    out = merge_patch(http, path, {"spec": {"displayName": "g2"}})
    assert out["metadata"]["generation"] == 2
    rv = out["metadata"]["resourceVersion"]
    # Writing the same spec again is no change at all: neither generation nor resourceVersion moves.
    same = http.put(path, json=out).json()
    assert same["metadata"]["generation"] == 2 and same["metadata"]["resourceVersion"] == rv
    out = http.put(path, json={**same, "spec": {"displayName": "g3", "address": "Main St"}}).json()
    assert out["metadata"]["generation"] == 3
    assert http.get(path).json()["metadata"]["generation"] == 3


# -- watch -----------------------------------------------------------------------------------------


def test_watch_from_resource_version_replays_exactly_the_later_events(http: httpx.Client) -> None:
    grp = uniq("w")
    sel = f"watch={grp}"
    create(http, SITES, site(f"{grp}-before", {"watch": grp}))
    rv0 = current_rv(http)
    create(http, SITES, site(f"{grp}-a", {"watch": grp}))
    create(http, SITES, site(f"{grp}-b", {"watch": grp}))
    merge_patch(http, f"{SITES}/{grp}-a", {"spec": {"displayName": "A"}})
    http.delete(f"{SITES}/{grp}-b")
    merge_patch(http, f"{SITES}/{grp}-before", {"spec": {"displayName": "before"}})
    create(http, SITES, site(f"{grp}-end", {"watch": grp}))

    events = read_watch(http, SITES, rv=rv0, selector=sel, until=named(f"{grp}-end"))
    assert summary(events) == [
        ("ADDED", f"{grp}-a"),
        ("ADDED", f"{grp}-b"),
        ("MODIFIED", f"{grp}-a"),
        ("DELETED", f"{grp}-b"),
        ("MODIFIED", f"{grp}-before"),
        ("ADDED", f"{grp}-end"),
    ]
    revs = revisions(events)
    assert revs == sorted(revs) and len(set(revs)) == len(revs) and revs[0] > rv0
    assert events[2]["object"]["spec"]["displayName"] == "A"

    # Without a resourceVersion: the current objects as ADDED, then the live stream.
    listed = read_watch(http, SITES, rv=None, selector=sel, until=named(f"{grp}-end"))
    assert sorted(summary(listed)) == sorted(
        [("ADDED", f"{grp}-before"), ("ADDED", f"{grp}-a"), ("ADDED", f"{grp}-end")]
    )


def test_live_watch_sees_writes_as_they_happen(http: httpx.Client) -> None:
    grp = uniq("live")
    rv0 = current_rv(http)
    got: queue.Queue[dict[str, Any]] = queue.Queue()

    def follow() -> None:
        for ev in iter_watch(http, SITES, rv=rv0, selector=f"live={grp}"):
            got.put(ev)
            if named(f"{grp}-end")(ev):
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.3)  # let the watch reach the live stream; correctness does not depend on it
    for i in range(5):
        create(http, SITES, site(f"{grp}-{i}", {"live": grp}))
        ev = got.get(timeout=5)
        assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", f"{grp}-{i}")
    create(http, SITES, site(f"{grp}-end", {"live": grp}))
    reader.join(10)
    assert not reader.is_alive()
    assert got.get_nowait()["object"]["metadata"]["name"] == f"{grp}-end"


def test_watch_resumes_after_disconnect_without_loss(http: httpx.Client) -> None:
    grp = uniq("resume")
    sel = f"resume={grp}"
    rv0 = current_rv(http)
    for i in range(3):
        create(http, SITES, site(f"{grp}-{i}", {"resume": grp}))
    first = read_watch(http, SITES, rv=rv0, selector=sel, until=lambda ev: False, max_events=2)
    assert summary(first) == [("ADDED", f"{grp}-0"), ("ADDED", f"{grp}-1")]
    last = revisions(first)[-1]
    # Disconnected: the world moves on.
    create(http, SITES, site(f"{grp}-3", {"resume": grp}))
    merge_patch(http, f"{SITES}/{grp}-0", {"spec": {"displayName": "zero"}})
    http.delete(f"{SITES}/{grp}-1")
    create(http, SITES, site(f"{grp}-end", {"resume": grp}))
    rest = read_watch(http, SITES, rv=last, selector=sel, until=named(f"{grp}-end"))
    assert summary(first + rest) == [
        ("ADDED", f"{grp}-0"),
        ("ADDED", f"{grp}-1"),
        ("ADDED", f"{grp}-2"),
        ("ADDED", f"{grp}-3"),
        ("MODIFIED", f"{grp}-0"),
        ("DELETED", f"{grp}-1"),
        ("ADDED", f"{grp}-end"),
    ]
    revs = revisions(first + rest)
    assert revs == sorted(set(revs))


def test_selector_watch_sees_relabelled_site_as_deleted_then_added(http: httpx.Client) -> None:
    grp = uniq("relabel")
    name = f"{grp}-s"
    create(http, SITES, site(name, {"team": grp, "env": "prod"}))
    rv0 = current_rv(http)
    merge_patch(http, f"{SITES}/{name}", {"metadata": {"labels": {"env": "dev"}}})  # leaves env=prod
    merge_patch(http, f"{SITES}/{name}", {"metadata": {"labels": {"note": "x"}}})  # still out
    merge_patch(http, f"{SITES}/{name}", {"metadata": {"labels": {"env": "prod"}}})  # back in
    merge_patch(http, f"{SITES}/{name}", {"spec": {"displayName": "in"}})  # changes while in
    create(http, SITES, site(f"{grp}-end", {"team": grp, "env": "prod"}))
    events = read_watch(http, SITES, rv=rv0, selector=f"team={grp},env=prod", until=named(f"{grp}-end"))
    assert summary(events) == [
        ("DELETED", name),
        ("ADDED", name),
        ("MODIFIED", name),
        ("ADDED", f"{grp}-end"),
    ]
    assert events[0]["object"]["metadata"]["labels"]["env"] == "dev"
    assert events[1]["object"]["metadata"]["labels"]["env"] == "prod"


@pytest.fixture(scope="module")
def compacting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No controllers: their writes (e.g. a SiteManifest per new site) would interleave with the
    # revisions this test counts on.
    args = ["--history", "5", "--compact-interval", "0.2", "--no-controllers"]
    proc = ServerProcess(tmp_path_factory.mktemp("compact") / "data", extra_args=args).start()
    yield proc
    proc.stop()


def test_watch_from_compacted_revision_is_410_expired(compacting_server: ServerProcess) -> None:
    with make_http(compacting_server) as http:
        rv0 = current_rv(http)
        for i in range(10):
            create(http, SITES, site(f"early-{i}"))
        page = http.get(SITES, params={"limit": 2}).json()
        token = page["metadata"]["continue"]
        for i in range(40):
            create(http, SITES, site(f"late-{i:02d}"))
        watch = {"watch": "true", "resourceVersion": str(rv0 + 1), "timeoutSeconds": "1"}

        def continue_expired() -> httpx.Response | None:
            resp = http.get(SITES, params={"limit": 2, "continue": token})
            return resp if resp.status_code == 410 else None

        # Compaction runs every 0.2 s keeping 5 revisions: soon both the list's revision and rv0 are gone.
        assert_status(poll(continue_expired, timeout=10), 410, "Expired")
        body = assert_status(http.get(SITES, params=watch), 410, "Expired")
        assert str(rv0 + 1) in body["message"]
        # Recent history is still there: a watch from a few revisions back replays them.
        latest = current_rv(http)
        events = read_watch(http, SITES, rv=latest - 2, until=named("late-39"))
        assert summary(events) == [("ADDED", "late-38"), ("ADDED", "late-39")]
        assert len(http.get(SITES).json()["items"]) == 50


def test_virtual_site_membership_changes_are_modified_events(http: httpx.Client) -> None:
    grp, ns = uniq("member"), uniq("ns")
    vs = uniq("vs")
    name = f"{grp}-s"
    create(http, SITES, site(name, {"member": grp, "tier": "cold"}))
    create(http, vs_path(ns), {"metadata": {"name": vs}, "spec": {"selector": f"member={grp},tier=hot"}})

    def status() -> dict[str, Any]:
        out: dict[str, Any] = http.get(vs_path(ns, vs)).json()["status"]
        return out

    poll(lambda: status().get("observedGeneration") == 1)
    assert status()["members"] == [] and status()["memberCount"] == 0
    rv0 = current_rv(http, vs_path(ns))
    merge_patch(http, f"{SITES}/{name}", {"metadata": {"labels": {"tier": "hot"}}})
    poll(lambda: status()["members"] == [name])
    merge_patch(http, f"{SITES}/{name}", {"metadata": {"labels": {"tier": "cold"}}})
    poll(lambda: status()["members"] == [])

    events = read_watch(http, vs_path(ns), rv=rv0, until=lambda ev: False, max_events=2)
    assert [ev["type"] for ev in events] == ["MODIFIED", "MODIFIED"]
    assert events[0]["object"]["status"]["members"] == [name]
    assert events[0]["object"]["status"]["memberCount"] == 1
    assert events[1]["object"]["status"]["members"] == []
    assert all(ev["object"]["metadata"]["name"] == vs for ev in events)


# -- discovery, OpenAPI, auth ----------------------------------------------------------------------


def test_discovery(http: httpx.Client) -> None:
    groups = http.get("/apis").json()
    assert groups["kind"] == "APIGroupList"
    group = next(g for g in groups["groups"] if g["name"] == "fleetplane.io")
    assert group["preferredVersion"]["groupVersion"] == "fleetplane.io/v1"
    resources = http.get(API).json()
    assert resources["kind"] == "APIResourceList" and resources["groupVersion"] == "fleetplane.io/v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["sites"]["kind"] == "Site" and by_name["sites"]["namespaced"] is False
    assert by_name["virtualsites"]["kind"] == "VirtualSite" and by_name["virtualsites"]["namespaced"] is True
    assert "vs" in by_name["virtualsites"]["shortNames"]
    assert by_name["accesskeys"]["namespaced"] is False and by_name["tenants"]["kind"] == "Tenant"
    assert {"sites/status", "virtualsites/status"} <= set(by_name)
    assert {"create", "delete", "get", "list", "patch", "update", "watch"} <= set(by_name["sites"]["verbs"])


def test_openapi_describes_site_and_virtual_site(http: httpx.Client) -> None:
    resp = http.get("/openapi.json")
    assert resp.status_code == 200
    doc = json.loads(resp.content)
    schemas = doc["components"]["schemas"]
    for kind in ("Site", "VirtualSite"):
        props = schemas[kind]["properties"]
        assert props["kind"]["enum"] == [kind]
        for part in ("spec", "status"):
            ref = props[part]["$ref"]
            assert ref.startswith("#/components/schemas/")
            assert ref.rsplit("/", 1)[1] in schemas
    assert "latitude" in schemas["Coordinates"]["properties"]
    assert "selector" in schemas["VirtualSiteSpec"]["properties"]
    # Every $ref in the document resolves.
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    assert all(r.rsplit("/", 1)[1] in schemas for r in refs), refs


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer nonsense",
        "Bearer fpk_default_system-admin_00",
        "Bearer fpk_nosuchtenant_admin_abc",
        "Bearer fpk_a_b_c_d",
        "bearer x",
    ],
)
def test_missing_or_wrong_bearer_is_401(server: ServerProcess, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", SITES, {}),
        ("GET", f"{SITES}/x", {}),
        ("POST", SITES, {"json": site(uniq("anon"))}),
        ("GET", vs_path("default"), {"params": {"watch": "true"}}),
        ("DELETE", f"{SITES}/x", {}),
        ("GET", API, {}),
    ]
    with httpx.Client(base_url=server.url, verify=server.tls, timeout=30) as anon:
        for method, path, kwargs in calls:
            BAD_INPUTS.append((method, path, {**kwargs, "headers": headers}, False))
            resp = anon.request(method, path, headers=headers, **kwargs)
            assert_status(resp, 401, "Unauthorized")


def test_admin_key_with_wrong_secret_is_401(server: ServerProcess) -> None:
    token = server.admin_key
    wrong = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    with httpx.Client(base_url=server.url, verify=server.tls, timeout=30) as anon:
        assert_status(anon.get(SITES, headers={"Authorization": f"Bearer {wrong}"}), 401, "Unauthorized")
        assert anon.get(SITES, headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- the sweep: nothing above is a server error ------------------------------------------------------


def test_no_bad_input_is_a_server_error(http: httpx.Client, server: ServerProcess) -> None:
    extra: list[tuple[str, str, dict[str, Any]]] = [  # (method, path, request arguments), with the admin key
        ("PUT", SITES, {"json": {}}),
        ("POST", f"{SITES}/x", {"json": {}}),
        ("GET", SITES, {"params": {"watch": "true", "resourceVersion": "abc"}}),
        ("GET", SITES, {"params": {"watch": "true", "resourceVersion": "-1"}}),
        ("GET", SITES, {"params": {"watch": "true", "timeoutSeconds": "abc"}}),
        ("GET", SITES, {"params": {"fieldSelector": "a=b=c,=,!="}}),
        ("GET", SITES, {"params": {"labelSelector": "\x00"}}),
        ("GET", SITES, {"params": {"labelSelector": "a" * 10_000}}),
        (
            "POST",
            SITES,
            {"content": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", SITES, {"json": {"metadata": {"name": "x" * 300}}}),
        ("POST", SITES, {"json": {"metadata": {"name": ["list"]}}}),
        ("POST", SITES, {"json": {"metadata": "string"}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x"), "labels": ["a"]}}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x"), "labels": {"a": 1}}}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x"), "annotations": {"a": None}}}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x"), "finalizers": "f"}}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x")}, "spec": "string"}}),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x")}, "spec": {"coordinates": [1, 2]}}}),
        (
            "POST",
            SITES,
            {
                "json": {
                    "metadata": {"name": uniq("x")},
                    "spec": {"coordinates": {"latitude": "NaN", "longitude": 1}},
                }
            },
        ),
        ("POST", SITES, {"json": {"metadata": {"name": uniq("x"), "resourceVersion": {"a": 1}}}}),
        ("POST", vs_path("default"), {"json": {"metadata": {"name": uniq("x")}, "spec": {"selector": 5}}}),
        ("POST", vs_path("default"), {"json": {"metadata": {"name": uniq("x")}, "spec": {"selector": [1]}}}),
        ("POST", vs_path("Bad_NS"), {"json": {"metadata": {"name": uniq("x")}}}),
        (
            "POST",
            vs_path("default"),
            {"json": {"metadata": {"name": uniq("x")}, "spec": {"selector": {"matchExpressions": "x"}}}},
        ),
        ("POST", f"{API}/tenants", {"json": {"metadata": {"name": "default"}}}),
        ("POST", f"{API}/accesskeys", {"json": {"metadata": {"name": uniq("k")}, "spec": {"role": "root"}}}),
        ("POST", f"{API}/accesskeys", {"json": {"metadata": {"name": "a_b"}, "spec": {"role": "viewer"}}}),
        ("POST", f"{API}/virtualsites", {"json": {"metadata": {"name": uniq("x")}}}),
        ("GET", f"{API}/namespaces/default/tenants", {}),
        ("PUT", f"{SITES}/{uniq('nope')}", {"json": {"metadata": {}}}),
        ("PUT", f"{API}/tenants/default/status", {"json": {"status": {"phase": "Gone"}}}),
        (
            "PATCH",
            f"{SITES}/{uniq('nope')}/status",
            {"content": b"{}", "headers": {"Content-Type": "application/merge-patch+json"}},
        ),
        ("DELETE", f"{SITES}/{uniq('nope')}", {"content": b"[1]"}),
        ("DELETE", f"{SITES}/{uniq('nope')}", {"content": b'{"preconditions": 5}'}),
    ]
    # Patches that turn a real object into nonsense.
    target = uniq("victim")
    create(http, SITES, site(target, {"a": "b"}))
    for patch, ctype in [
        ({"metadata": None}, "merge"),
        ({"metadata": "x"}, "merge"),
        ({"metadata": {"name": "other"}}, "merge"),
        ({"kind": "Tenant"}, "merge"),
        ({"spec": [1]}, "merge"),
        ({"metadata": {"labels": "x"}}, "merge"),
        ({"metadata": {"resourceVersion": ["x"]}}, "merge"),
        ([{"op": "remove", "path": "/metadata"}], "json"),
        ([{"op": "replace", "path": "", "value": 5}], "json"),
        ([{"op": "add", "path": "/metadata/labels/x", "value": {"deep": 1}}], "json"),
        ([{"op": "move", "from": "/spec", "path": "/spec/inner"}], "json"),
        ([{"op": "copy", "path": "/x"}], "json"),
        ([{"op": "add", "path": "metadata", "value": 1}], "json"),
        ([{"op": "add", "path": "/a/b/c", "value": 1}], "json"),
        ([{"op": "remove", "path": "/metadata/labels/a/b"}], "json"),
        ([5], "json"),
        ({"op": "add"}, "json"),
        (None, "json"),
        (None, "merge"),
    ]:
        ctype_header = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[ctype]
        extra.append(
            (
                "PATCH",
                f"{SITES}/{target}",
                {"content": json.dumps(patch).encode(), "headers": {"Content-Type": ctype_header}},
            )
        )
    failures = []
    with httpx.Client(base_url=server.url, verify=server.tls, timeout=30) as anon:
        for method, path, kwargs, authed in [*BAD_INPUTS, *((m, p, k, True) for m, p, k in extra)]:
            try:
                resp = (http if authed else anon).request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failures.append((method, path, kwargs, 0, repr(exc)))
                continue
            if resp.status_code >= 500:
                failures.append((method, path, kwargs, resp.status_code, resp.text[:200]))
            elif resp.status_code >= 400:
                assert resp.json()["kind"] == "Status", (method, path, resp.text)
    assert not failures, "\n".join(map(str, failures))
    assert not Path(server.log_path).read_text(errors="replace").count("internal error"), server.log_tail()
