"""One refusal (and the matching permission) for every rule in ``fleetplane.server.auth``'s docstring,
with keys minted through the API as an operator would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

API = "/apis/fleetplane.io/v1"
SITES = f"{API}/sites"
KEYS = f"{API}/accesskeys"
TENANTS = f"{API}/tenants"
MERGE = {"Content-Type": "application/merge-patch+json"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def vs_path(ns: str, name: str = "") -> str:
    return f"{API}/namespaces/{ns}/virtualsites" + (f"/{name}" if name else "")


def status_of(resp: httpx.Response, code: int, reason: str) -> None:
    assert resp.status_code == code, resp.text
    body = resp.json()
    assert body["kind"] == "Status" and body["reason"] == reason and body["code"] == code, body


def forbidden(resp: httpx.Response) -> None:
    status_of(resp, 403, "Forbidden")


def ok(resp: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert resp.status_code == code, resp.text
    out: dict[str, Any] = resp.json()
    return out


@dataclass
class World:
    server: ServerProcess
    system: httpx.Client  # the data dir's admin key: system, tenant "default"
    keys: dict[str, str]  # key name -> bearer token, all in tenant "acme" unless said otherwise
    tenant: str
    other_tenant: str

    def as_(self, who: str) -> httpx.Client:
        return client(self.server, self.keys[who])


def client(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, verify=server.tls, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def new_key(http: httpx.Client, name: str, **spec: Any) -> str:
    body = ok(http.post(KEYS, json={"metadata": {"name": name}, "spec": spec}), 201)
    token: str = body["status"]["accessKey"]
    assert "keyHash" not in body["status"]
    return token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ServerProcess(tmp_path_factory.mktemp("authz") / "data").start()
    system = client(server, server.admin_key)
    tenant, other = uniq("acme"), uniq("globex")
    keys: dict[str, str] = {}
    keys["admin"] = ok(system.post(TENANTS, json={"metadata": {"name": tenant}}), 201)["status"][
        "adminAccessKey"
    ]
    keys["other-admin"] = ok(system.post(TENANTS, json={"metadata": {"name": other}}), 201)["status"][
        "adminAccessKey"
    ]
    with client(server, keys["admin"]) as admin:
        keys["editor"] = new_key(admin, "editor", role="editor")
        keys["viewer"] = new_key(admin, "viewer", role="viewer")
        keys["ns-admin"] = new_key(admin, "ns-admin", role="admin", namespaces=["team-a"])
        keys["ns-editor"] = new_key(admin, "ns-editor", role="editor", namespaces=["team-a"])
        # Something to read in every place the restricted keys may or may not go.
        ok(admin.post(SITES, json={"metadata": {"name": "plant-1", "labels": {"env": "prod"}}}), 201)
        for ns in ("team-a", "team-b", "shared"):
            ok(
                admin.post(
                    vs_path(ns), json={"metadata": {"name": "prod"}, "spec": {"selector": "env=prod"}}
                ),
                201,
            )
    yield World(server, system, keys, tenant, other)
    system.close()
    server.stop()


# -- a key sees only its own tenant ------------------------------------------------------------------


def test_other_tenant_gets_not_found_not_forbidden(world: World) -> None:
    with world.as_("admin") as mine, world.as_("other-admin") as theirs:
        assert ok(mine.get(f"{SITES}/plant-1"))["metadata"]["name"] == "plant-1"
        status_of(theirs.get(f"{SITES}/plant-1"), 404, "NotFound")
        status_of(theirs.get(vs_path("team-a", "prod")), 404, "NotFound")
        status_of(theirs.put(f"{SITES}/plant-1", json={"metadata": {"name": "plant-1"}}), 404, "NotFound")
        status_of(theirs.patch(f"{SITES}/plant-1", content=b"{}", headers=MERGE), 404, "NotFound")
        status_of(theirs.delete(f"{SITES}/plant-1"), 404, "NotFound")
        status_of(theirs.get(f"{KEYS}/editor"), 404, "NotFound")
        assert ok(theirs.get(SITES))["items"] == []
        assert ok(theirs.get(f"{API}/virtualsites"))["items"] == []
        assert [k["metadata"]["name"] for k in ok(theirs.get(KEYS))["items"]] == ["admin"]
        # The same name in the other tenant is another object, and does not touch ours.
        ok(theirs.post(SITES, json={"metadata": {"name": "plant-1", "labels": {"owner": "them"}}}), 201)
        assert "owner" not in (ok(mine.get(f"{SITES}/plant-1"))["metadata"].get("labels") or {})
        assert ok(mine.get(f"{SITES}/plant-1")) != ok(theirs.get(f"{SITES}/plant-1"))


def test_other_tenant_watch_sees_nothing(world: World) -> None:
    with world.as_("admin") as mine, world.as_("other-admin") as theirs:
        rv = ok(theirs.get(SITES))["metadata"]["resourceVersion"]
        name = uniq("secret")
        ok(mine.post(SITES, json={"metadata": {"name": name}}), 201)
        ok(mine.patch(f"{SITES}/{name}", content=b'{"metadata": {"labels": {"x": "y"}}}', headers=MERGE))
        ok(mine.delete(f"{SITES}/{name}"))
        end = uniq("theirs-end")
        ok(theirs.post(SITES, json={"metadata": {"name": end}}), 201)
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "10"}
        seen = []
        with theirs.stream("GET", SITES, params=params) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.strip():
                    seen.append(json.loads(line))
                    if seen[-1]["object"]["metadata"]["name"] == end:
                        break
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [("ADDED", end)]
        # A full watch (initial listing) of the other tenant lists none of ours either.
        with theirs.stream("GET", SITES, params={"watch": "true", "timeoutSeconds": "10"}) as resp:
            for line in resp.iter_lines():
                if line.strip():
                    event = json.loads(line)
                    assert (
                        event["object"]["metadata"].get("labels", {}).get("owner") == "them"
                        or event["object"]["metadata"]["name"] == end
                    ), event
                    if event["object"]["metadata"]["name"] == end:
                        break


# -- Tenant objects belong to system keys ----------------------------------------------------------------


def test_tenants_need_a_system_key(world: World) -> None:
    name = uniq("tenant")
    with world.as_("admin") as admin:
        forbidden(admin.get(TENANTS))
        forbidden(admin.get(f"{TENANTS}/{world.tenant}"))
        forbidden(admin.post(TENANTS, json={"metadata": {"name": name}}))
        forbidden(admin.delete(f"{TENANTS}/{world.other_tenant}"))
        forbidden(
            admin.patch(f"{TENANTS}/{world.tenant}", content=b'{"spec": {"displayName": "x"}}', headers=MERGE)
        )
    status_of(world.system.get(f"{TENANTS}/{name}"), 404, "NotFound")
    names = {t["metadata"]["name"] for t in ok(world.system.get(TENANTS))["items"]}
    assert {"default", world.tenant, world.other_tenant} <= names
    created = ok(world.system.post(TENANTS, json={"metadata": {"name": name}}), 201)
    with client(world.server, created["status"]["adminAccessKey"]) as fresh:
        assert ok(fresh.get(SITES))["items"] == []
    assert "adminAccessKey" not in (ok(world.system.get(f"{TENANTS}/{name}")).get("status") or {})


# -- AccessKeys: unrestricted admins only; system keys only from system keys --------------------------------


@pytest.mark.parametrize("who", ["editor", "viewer", "ns-admin", "ns-editor"])
def test_access_keys_need_an_unrestricted_admin(world: World, who: str) -> None:
    with world.as_(who) as http:
        forbidden(http.get(KEYS))
        forbidden(http.get(f"{KEYS}/viewer"))
        forbidden(http.post(KEYS, json={"metadata": {"name": uniq("k")}, "spec": {"role": "admin"}}))
        forbidden(http.patch(f"{KEYS}/viewer", content=b'{"spec": {"role": "admin"}}', headers=MERGE))
        forbidden(http.delete(f"{KEYS}/viewer"))
        forbidden(http.get(KEYS, params={"watch": "true"}))
    with world.as_("admin") as admin:
        assert ok(admin.get(f"{KEYS}/viewer"))["spec"]["role"] == "viewer"
        name = uniq("k")
        token = new_key(admin, name, role="viewer")
        with client(world.server, token) as fresh:
            ok(fresh.get(SITES))
        ok(admin.delete(f"{KEYS}/{name}"))


def test_only_a_system_key_mints_system_keys(world: World) -> None:
    with world.as_("admin") as admin:
        forbidden(
            admin.post(
                KEYS, json={"metadata": {"name": uniq("sys")}, "spec": {"role": "admin", "system": True}}
            )
        )
        forbidden(admin.patch(f"{KEYS}/editor", content=b'{"spec": {"system": true}}', headers=MERGE))
        current = ok(admin.get(f"{KEYS}/editor"))
        forbidden(admin.put(f"{KEYS}/editor", json={**current, "spec": {**current["spec"], "system": True}}))
        assert ok(admin.get(f"{KEYS}/editor"))["spec"]["system"] is False
    # A non-system admin of the system's own tenant cannot either, nor take over the system key.
    plain = new_key(world.system, uniq("plain-admin"), role="admin")
    with client(world.server, plain) as http:
        forbidden(
            http.post(
                KEYS, json={"metadata": {"name": uniq("sys")}, "spec": {"role": "admin", "system": True}}
            )
        )
        forbidden(http.get(TENANTS))
        forbidden(http.put(f"{KEYS}/system-admin/status", json={"status": {"keyHash": "0" * 64}}))
        forbidden(
            http.patch(f"{KEYS}/system-admin", content=b'{"spec": {"description": "mine"}}', headers=MERGE)
        )
        current = ok(world.system.get(f"{KEYS}/system-admin"))
        demoted = {**current, "spec": {**current["spec"], "system": False, "role": "viewer"}}
        forbidden(http.put(f"{KEYS}/system-admin", json=demoted))
        forbidden(http.delete(f"{KEYS}/system-admin"))
    ok(world.system.get(TENANTS))  # the system key is untouched
    token = new_key(world.system, uniq("sys"), role="admin", system=True)
    with client(world.server, token) as http:
        assert any(t["metadata"]["name"] == world.tenant for t in ok(http.get(TENANTS))["items"])


# -- viewers only read -------------------------------------------------------------------------------------


def test_viewer_reads_but_cannot_write(world: World) -> None:
    with world.as_("viewer") as http:
        assert ok(http.get(f"{SITES}/plant-1"))["metadata"]["name"] == "plant-1"
        assert ok(http.get(SITES))["items"]
        ok(http.get(f"{API}/virtualsites"))
        ok(http.get(vs_path("team-b", "prod")))
        with http.stream("GET", SITES, params={"watch": "true", "timeoutSeconds": "1"}) as resp:
            assert resp.status_code == 200
        forbidden(http.post(SITES, json={"metadata": {"name": uniq("v")}}))
        forbidden(http.put(f"{SITES}/plant-1", json={"metadata": {"name": "plant-1"}}))
        forbidden(
            http.patch(f"{SITES}/plant-1", content=b'{"metadata": {"labels": {"x": "y"}}}', headers=MERGE)
        )
        forbidden(http.put(f"{SITES}/plant-1/status", json={"status": {"phase": "Online"}}))
        forbidden(http.delete(f"{SITES}/plant-1"))
        forbidden(http.post(vs_path("team-a"), json={"metadata": {"name": uniq("v")}}))
        forbidden(http.delete(vs_path("team-a", "prod")))
    with world.as_("admin") as admin:
        assert "x" not in (ok(admin.get(f"{SITES}/plant-1"))["metadata"].get("labels") or {})


def test_editor_writes(world: World) -> None:
    name = uniq("ed")
    with world.as_("editor") as http:
        ok(http.post(SITES, json={"metadata": {"name": name}}), 201)
        ok(http.patch(f"{SITES}/{name}", content=b'{"metadata": {"labels": {"x": "y"}}}', headers=MERGE))
        ok(http.post(vs_path("team-b"), json={"metadata": {"name": name}}), 201)
        ok(http.delete(vs_path("team-b", name)))
        ok(http.delete(f"{SITES}/{name}"))


# -- namespace-restricted keys -----------------------------------------------------------------------------


def test_restricted_editor_writes_its_namespace_only(world: World) -> None:
    name = uniq("r")
    with world.as_("ns-editor") as http:
        ok(
            http.post(vs_path("team-a"), json={"metadata": {"name": name}, "spec": {"selector": "env=prod"}}),
            201,
        )
        ok(http.patch(vs_path("team-a", name), content=b'{"spec": {"description": "mine"}}', headers=MERGE))
        assert ok(http.get(vs_path("team-a")))["items"]
        ok(http.delete(vs_path("team-a", name)))

        forbidden(http.post(vs_path("team-b"), json={"metadata": {"name": name}}))
        forbidden(http.get(vs_path("team-b", "prod")))
        forbidden(http.get(vs_path("team-b")))
        forbidden(
            http.patch(vs_path("team-b", "prod"), content=b'{"spec": {"description": "x"}}', headers=MERGE)
        )
        forbidden(http.delete(vs_path("team-b", "prod")))


def test_restricted_editor_reads_shared_but_cannot_write_it(world: World) -> None:
    with world.as_("ns-editor") as http:
        assert ok(http.get(vs_path("shared", "prod")))["spec"]["selector"] == "env=prod"
        assert ok(http.get(vs_path("shared")))["items"]
        forbidden(http.post(vs_path("shared"), json={"metadata": {"name": uniq("s")}}))
        forbidden(
            http.patch(vs_path("shared", "prod"), content=b'{"spec": {"description": "x"}}', headers=MERGE)
        )
        forbidden(http.delete(vs_path("shared", "prod")))
    with world.as_("editor") as http:
        ok(http.patch(vs_path("shared", "prod"), content=b'{"spec": {"description": "ok"}}', headers=MERGE))


def test_restricted_editor_reads_sites_but_cannot_write_or_label_them(world: World) -> None:
    with world.as_("ns-editor") as http:
        assert ok(http.get(f"{SITES}/plant-1"))["metadata"]["name"] == "plant-1"
        assert ok(http.get(SITES))["items"]
        forbidden(http.post(SITES, json={"metadata": {"name": uniq("s")}}))
        forbidden(
            http.patch(f"{SITES}/plant-1", content=b'{"metadata": {"labels": {"x": "y"}}}', headers=MERGE)
        )
        forbidden(http.put(f"{SITES}/plant-1", json={"metadata": {"name": "plant-1", "labels": {"x": "y"}}}))
        forbidden(http.delete(f"{SITES}/plant-1"))
    with world.as_("admin") as admin:
        assert "x" not in (ok(admin.get(f"{SITES}/plant-1"))["metadata"].get("labels") or {})


def test_restricted_keys_cannot_list_across_namespaces(world: World) -> None:
    for who in ("ns-editor", "ns-admin"):
        with world.as_(who) as http:
            forbidden(http.get(f"{API}/virtualsites"))
            forbidden(http.get(f"{API}/virtualsites", params={"watch": "true"}))
            ok(http.get(vs_path("team-a")))
    with world.as_("viewer") as http:
        assert {i["metadata"]["namespace"] for i in ok(http.get(f"{API}/virtualsites"))["items"]} >= {
            "team-a",
            "team-b",
            "shared",
        }


# -- revocation ----------------------------------------------------------------------------------------------


def test_deleted_key_stops_working_at_once(world: World) -> None:
    name = uniq("temp")
    with world.as_("admin") as admin:
        token = new_key(admin, name, role="editor")
        with client(world.server, token) as http:
            ok(http.get(SITES))
            ok(admin.delete(f"{KEYS}/{name}"))
            status_of(http.get(SITES), 401, "Unauthorized")
            status_of(http.post(SITES, json={"metadata": {"name": uniq("late")}}), 401, "Unauthorized")
        # Re-creating a key with the same name does not revive the old secret.
        new_key(admin, name, role="editor")
        with client(world.server, token) as http:
            status_of(http.get(SITES), 401, "Unauthorized")


# -- deleting a tenant stops its keys; no key deletes its own tenant ----------------------------------


def test_deleted_tenant_keys_stop_at_once_and_do_not_come_back(world: World) -> None:
    name = uniq("gone")
    first = ok(world.system.post(TENANTS, json={"metadata": {"name": name}}), 201)["status"]["adminAccessKey"]
    with client(world.server, first) as http:
        ok(http.get(SITES))
        forbidden(http.delete(f"{TENANTS}/{name}"))
    # The system key cannot delete its own tenant either.
    forbidden(world.system.delete(f"{TENANTS}/default"))
    ok(world.system.delete(f"{TENANTS}/{name}"))
    with client(world.server, first) as http:
        status_of(http.get(SITES), 401, "Unauthorized")
    # Re-created under the same name, the tenant gets a new admin key; the old one stays dead.
    second = ok(world.system.post(TENANTS, json={"metadata": {"name": name}}), 201)["status"][
        "adminAccessKey"
    ]
    assert second != first
    with client(world.server, first) as old, client(world.server, second) as new:
        status_of(old.get(SITES), 401, "Unauthorized")
        ok(new.get(SITES))
