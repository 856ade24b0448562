"""Changing only a sealed value is a change: re-applying an AlertReceiver with another webhook
header, or a Secret with another value, writes it (new resourceVersion, the new value is the
one stored), while re-applying the same values stays a no-op. Over a real server process and
the CLI's apply, with the plaintext never returned for write-only paths."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fleetplane.cli.main import _apply_one, resolve
from fleetplane.client import Client
from fleetplane.core.envelope import Envelope, is_sealed, kek_from_settings
from fleetplane.core.store import open_store
from tests.server.test_metrics import API, client, ok, uniq
from tests.support.server import ServerProcess


@dataclass
class World:
    server: ServerProcess
    tenant: str
    api: Client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ServerProcess(tmp_path_factory.mktemp("sealed") / "data").start()
    tenant = uniq("acme")
    with client(server, server.admin_key) as system:
        key = ok(system.post(f"{API}/tenants", json={"metadata": {"name": tenant}}), 201)["status"][
            "adminAccessKey"
        ]
    api = server.client(key)
    try:
        yield World(server, tenant, api)
    finally:
        api.close()
        server.stop()


def stored(world: World, kind: str, name: str) -> dict[str, Any]:
    store = open_store(f"sqlite:///{world.server.data_dir / 'fleetplane.db'}")
    try:
        return store.get(world.tenant, kind, "default", name)
    finally:
        store.close()


def opened(world: World, kind: str, name: str, value: str) -> str:
    """What the server's envelope opens a stored sealed value of this object to."""
    env = Envelope(kek_from_settings(f"file:{world.server.data_dir / 'kek.key'}"))
    return env.open_text(value, context=f"{world.tenant}/{kind}/default/{name}".encode()).decode()


def apply(world: World, doc: dict[str, Any]) -> str:
    return _apply_one(world.api, resolve(world.api, doc["kind"]), "default", doc)


def receiver(token: str) -> dict[str, Any]:
    hook = {"url": "https://hooks.example/x", "headers": {"Authorization": f"Bearer {token}"}}
    return {"kind": "AlertReceiver", "metadata": {"name": "pager"}, "spec": {"webhook": hook}}


def test_changing_only_a_receiver_header_is_applied(world: World) -> None:
    assert apply(world, receiver("one")) == "created"
    first = stored(world, "AlertReceiver", "pager")
    assert apply(world, receiver("one")) == "unchanged"
    assert (
        stored(world, "AlertReceiver", "pager")["metadata"]["resourceVersion"]
        == first["metadata"]["resourceVersion"]
    )

    assert apply(world, receiver("two")) == "configured"
    second = stored(world, "AlertReceiver", "pager")
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    raw = second["spec"]["webhook"]["headers"]["Authorization"]
    assert is_sealed(raw) and "two" not in raw
    assert opened(world, "AlertReceiver", "pager", raw) == "Bearer two"
    shown = world.api.get("alertreceivers", "pager", "default")
    assert "headers" not in shown["spec"]["webhook"]  # still write-only

    # A replace that leaves the write-only headers out keeps them.
    shown["spec"]["sendResolved"] = False
    world.api.replace("alertreceivers", shown, "default")
    kept = stored(world, "AlertReceiver", "pager")["spec"]["webhook"]["headers"]["Authorization"]
    assert opened(world, "AlertReceiver", "pager", kept) == "Bearer two"


def secret(value: str) -> dict[str, Any]:
    data = {"password": base64.b64encode(value.encode()).decode()}
    return {"kind": "Secret", "metadata": {"name": "db"}, "spec": {"data": data}}


def test_changing_only_a_secret_value_is_applied(world: World) -> None:
    assert apply(world, secret("one")) == "created"
    first = world.api.get("secrets", "db", "default")["metadata"]["resourceVersion"]
    assert apply(world, secret("one")) == "unchanged"
    assert apply(world, secret("two")) == "configured"
    shown = world.api.get("secrets", "db", "default")
    assert int(shown["metadata"]["resourceVersion"]) > int(first)
    assert base64.b64decode(shown["spec"]["data"]["password"]) == b"two"
    raw = stored(world, "Secret", "db")["spec"]["data"]["password"]
    assert is_sealed(raw)
    assert base64.b64decode(opened(world, "Secret", "db", raw)) == b"two"
