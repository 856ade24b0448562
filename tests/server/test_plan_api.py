"""``POST /apis/fleetplane.io/v1/plan`` and ``fleetplane diff -f``, against a real server process:
what a change would do site by site, refusals that name the field, and nothing written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetplane.client import Client
from fleetplane.core.errors import ApiError
from tests.cli.test_cli import ok, one_line_error, run, write_yaml
from tests.support.server import ServerProcess

V = "fleetplane.io/v1"


def doc(kind: str, name: str, ns: str | None = None, spec: Any = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = labels
    out: dict[str, Any] = {"apiVersion": V, "kind": kind, "metadata": meta}
    if spec is not None:
        out["spec"] = spec
    return out


def reservation(name: str, targets: list[str], cpu: str) -> dict[str, Any]:
    return doc("ResourceReservation", name, "shop", {"virtualSites": targets, "cpu": cpu})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No controllers: nothing but the requests writes, so a moved revision would be the plan's.
    proc = ServerProcess(tmp_path_factory.mktemp("plan") / "data", extra_args=["--no-controllers"]).start()
    try:
        with proc.client() as c:
            for name, labels in (
                ("tokyo-1", {"region": "jp", "env": "prod"}),
                ("osaka-1", {"region": "jp", "env": "test"}),
                ("paris-1", {"region": "eu", "env": "prod"}),
            ):
                c.create("sites", doc("Site", name, spec={}, **labels))
            c.create("virtualsites", doc("VirtualSite", "jp", "shop", {"selector": "region=jp"}), "shop")
            c.create("virtualsites", doc("VirtualSite", "prod", "shop", {"selector": "env=prod"}), "shop")
            c.create("resourcereservations", reservation("base", ["jp"], "500m"), "shop")
        yield proc
    finally:
        proc.stop()


def revision(srv: ServerProcess) -> int:
    return int(httpx.get(f"{srv.url}/readyz", verify=srv.tls).json()["revision"])


def refusal(client: Client, items: list[dict[str, Any]]) -> ApiError:
    with pytest.raises(ApiError) as exc:
        client.plan(items, "shop")
    return exc.value


def test_a_retarget_plans_joining_and_leaving_sites_and_writes_nothing(srv: ServerProcess) -> None:
    with srv.client() as c:
        before = revision(srv)
        plan = c.plan([reservation("base", ["prod"], "500m")], "shop")
        assert revision(srv) == before  # a dry run: not one write
        assert c.get("resourcereservations", "base", "shop")["spec"]["virtualSites"] == ["jp"]
    assert plan["kind"] == "Plan" and int(plan["metadata"]["resourceVersion"]) == before
    rows = {r["site"]: r for r in plan["sites"]}
    assert rows["paris-1"]["change"] == "joining"
    assert rows["paris-1"]["sections"]["reservations"]["after"]["cpuMillis"] == 500
    assert rows["paris-1"]["sections"]["reservations"]["before"] is None
    assert rows["osaka-1"]["change"] == "leaving"
    assert rows["osaka-1"]["sections"]["reservations"]["after"] is None
    assert (plan["summary"]["joining"], plan["summary"]["leaving"], plan["summary"]["fleet"]) == (1, 1, 3)
    (entry,) = plan["objects"]
    assert entry["kind"] == "ResourceReservation" and entry["action"] == "update"
    assert entry["generation"] == {"before": 1, "after": 2}


def test_objects_of_one_request_plan_together(srv: ServerProcess) -> None:
    """A new virtual site and the intent that targets it; a catalogue entry and the upgrade
    that needs it: each refers to the other as if the first were written."""
    items = [
        doc("VirtualSite", "eu", "shop", {"selector": "region=eu"}),
        reservation("eu-extra", ["eu"], "1"),
        doc("OsVersion", "fleetos-9.0.0", spec={}),
        doc("OsUpgrade", "to-9", "shop", {"virtualSites": ["eu"], "version": "fleetos-9.0.0"}),
    ]
    with srv.client() as c:
        before = revision(srv)
        plan = c.plan(items, "shop")
        assert revision(srv) == before
    assert [o["action"] for o in plan["objects"]] == ["create"] * 4
    (paris,) = plan["sites"]
    assert paris["site"] == "paris-1" and paris["change"] == "joining"
    assert set(paris["joins"]) == {"ResourceReservation shop/eu-extra", "OsUpgrade shop/to-9"}
    assert paris["sections"]["os"]["after"]["version"] == "fleetos-9.0.0"
    assert paris["sections"]["reservations"]["after"]["cpuMillis"] == 1000


def test_bad_input_is_refused_naming_the_document_and_field(srv: ServerProcess) -> None:
    with srv.client() as c:
        before = revision(srv)
        err = refusal(c, [reservation("ok", ["jp"], "1"), reservation("bad", ["jp"], "lots")])
        assert err.code == 422 and err.reason == "Invalid"
        assert [cause.field for cause in err.causes] == ["items[1].spec.cpu"]
        assert 'items[1] (ResourceReservation "bad")' in err.message
        err = refusal(c, [doc("Gadget", "x", "shop", {})])
        assert err.code == 400 and err.causes[0].field == "items[0].kind" and "Gadget" in err.message
        err = refusal(
            c, [doc("OsUpgrade", "to-x", "shop", {"virtualSites": ["jp"], "version": "fleetos-7.7"})]
        )
        assert err.code == 422 and err.causes[0].field == "items[0].spec.version"
        err = refusal(c, [doc("ResourceReservation", "wrong", "other", {"virtualSites": ["prod/x"]})])
        assert err.code == 422 and err.causes[0].field == "items[0].spec.virtualSites[0]"
        with pytest.raises(ApiError) as exc:
            c.request("POST", "/apis/fleetplane.io/v1/plan", body=["not", "an", "object"])
        assert exc.value.code == 400
        assert revision(srv) == before


def test_a_viewer_may_not_plan_a_write(srv: ServerProcess) -> None:
    with srv.client() as c:
        key = c.create("accesskeys", doc("AccessKey", "plan-viewer", spec={"role": "viewer"}))
        secret = key["status"]["accessKey"]
    with srv.client(secret) as viewer:
        err = refusal(viewer, [reservation("base", ["prod"], "1")])
    assert err.code == 403


# -- the CLI ------------------------------------------------------------------------------------


def test_diff_prints_counts_then_a_diff_per_site(srv: ServerProcess, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "change.yaml", [reservation("base", ["prod"], "750m")])
    before = revision(srv)
    text = ok(run(srv, "diff", "-f", str(path)))
    assert revision(srv) == before
    lines = text.splitlines()
    assert lines[0].startswith("resourcereservation shop/base: update (generation 1 -> 2); targets 2 sites:")
    assert "1 joining, 1 leaving" in lines[1] and "of 3 sites change" in lines[1]
    paris = lines.index("+ site paris-1 (joining: joins ResourceReservation shop/base)")
    assert lines[paris + 1] == "    reservations: (added)"
    assert "      +cpuMillis: 750" in lines[paris + 2 : paris + 8]
    osaka = lines.index("- site osaka-1 (leaving: leaves ResourceReservation shop/base)")
    assert "      -cpuMillis: 500" in lines[osaka + 2 : osaka + 8]
    tokyo = lines.index("~ site tokyo-1 (changed)")
    assert "      -cpuMillis: 500" in lines[tokyo + 2 : tokyo + 8]
    assert "      +cpuMillis: 750" in lines[tokyo + 2 : tokyo + 8]
    assert lines[-1].startswith("Nothing was written (planned at revision")

    short = ok(run(srv, "diff", "-f", str(path), "--limit", "1"))
    assert short.count(" site ") == 1 and "… and 2 more sites (--limit 0 shows all of them)" in short
    plan = json.loads(ok(run(srv, "diff", "-f", str(path), "-o", "json")))
    assert plan["summary"]["touched"] == 3 and len(plan["sites"]) == 3


def test_diff_of_a_bad_file_is_one_line_naming_the_field(srv: ServerProcess, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", [reservation("a", ["jp"], "1"), reservation("b", ["jp"], "-1")])
    line = one_line_error(run(srv, "diff", "-f", str(path)))
    assert "Invalid" in line and "items[1].spec.cpu" in line


def test_an_intent_with_a_strategy_previews_its_rollout_waves(srv: ServerProcess) -> None:
    intent = reservation("base", ["jp", "prod"], "1")
    intent["spec"]["strategy"] = {"type": "rolling", "batchSize": 2}
    with srv.client() as c:
        plan = c.plan([intent], "shop")
        bad = {**intent, "spec": {**intent["spec"], "strategy": {"type": "rolling", "batchSize": "150%"}}}
        err = refusal(c, [bad])
    rollout = plan["objects"][0]["rollout"]
    assert rollout["name"] == "resourcereservation-base-2" and rollout["strategy"] == "rolling"
    assert [w["sites"] for w in rollout["waves"]] == [2, 1]  # tokyo-1, osaka-1, paris-1 by name
    assert err.code == 422 and err.causes[0].field == "items[0].spec.strategy.batchSize"
