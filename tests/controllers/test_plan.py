"""The plan of a change: sites joining, leaving and changing, with each manifest section
before and after, from the compile controller's own state and contributors."""

from __future__ import annotations

from typing import Any

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.plan import Change, plan_changes
from fleetplane.core.objects import Obj
from fleetplane.kinds import REGISTRY

T = "acme"


def site(name: str, **labels: str) -> Obj:
    return REGISTRY.get("Site").normalize({"metadata": {"name": name, "labels": labels}, "spec": {}})


def vs(name: str, selector: str, ns: str = "shop") -> Obj:
    return REGISTRY.get("VirtualSite").normalize(
        {"metadata": {"name": name, "namespace": ns}, "spec": {"selector": selector}}
    )


def reservation(name: str, targets: list[str], cpu: str, ns: str = "shop", **extra: Any) -> Obj:
    return REGISTRY.get("ResourceReservation").normalize(
        {"metadata": {"name": name, "namespace": ns}, "spec": {"virtualSites": targets, "cpu": cpu, **extra}}
    )


def stored(obj: Obj, generation: int = 1) -> Obj:
    return {**obj, "metadata": {**obj["metadata"], "generation": generation, "resourceVersion": "7"}}


def updated(current: Obj, new: Obj) -> Change:
    """``new``'s spec and labels over the stored ``current``, as ``apply`` would write it."""
    meta = {**current["metadata"], "labels": new["metadata"].get("labels", {})}
    return Change(obj={**current, "metadata": meta, "spec": new.get("spec", {})}, current=current)


FLEET = [
    stored(site("tokyo-1", region="jp", env="prod")),
    stored(site("osaka-1", region="jp", env="test")),
    stored(site("paris-1", region="eu", env="prod")),
    stored(vs("jp", "region=jp")),
    stored(vs("prod", "env=prod")),
    stored(vs("test", "env=test")),
]


def by_site(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["site"]: row for row in plan["sites"]}


def test_retargeting_an_intent_shows_who_joins_who_leaves_and_each_sites_section() -> None:
    current = stored(reservation("base", ["jp"], "500m"), generation=3)
    change = updated(current, reservation("base", ["prod"], "500m"))
    plan = plan_changes(T, [*FLEET, current], [change])

    rows = by_site(plan)
    # tokyo-1 is in jp and prod: it neither joins nor leaves, and keeps its 500m (its section
    # may still change: it records the intent's revision, which moves to 4).
    tokyo = rows.pop("tokyo-1", None)
    if tokyo is not None:
        assert tokyo["change"] == "changed" and tokyo["joins"] == tokyo["leaves"] == []
        both = tokyo["sections"]["reservations"]
        assert both["before"]["cpuMillis"] == both["after"]["cpuMillis"] == 500
    assert set(rows) == {"osaka-1", "paris-1"}
    assert rows["paris-1"]["change"] == "joining"
    assert rows["paris-1"]["joins"] == ["ResourceReservation shop/base"]
    section = rows["paris-1"]["sections"]["reservations"]
    assert section["before"] is None and section["after"]["cpuMillis"] == 500
    assert section["after"]["sources"] == ["shop/base"]
    assert rows["osaka-1"]["change"] == "leaving"
    assert rows["osaka-1"]["leaves"] == ["ResourceReservation shop/base"]
    assert rows["osaka-1"]["sections"]["reservations"]["after"] is None
    changed = 0 if tokyo is None else 1
    assert plan["summary"] == {
        "fleet": 3,
        "touched": 2 + changed,
        "joining": 1,
        "leaving": 1,
        "changed": changed,
    }
    (entry,) = plan["objects"]
    assert entry["action"] == "update" and entry["generation"] == {"before": 3, "after": 4}
    assert entry["sites"] == {"targeted": 2, "joining": 1, "leaving": 1, "changed": changed}


def test_a_spec_change_shows_the_section_before_and_after_on_every_targeted_site() -> None:
    current = stored(reservation("base", ["jp"], "500m"))
    other = stored(reservation("extra", ["prod"], "250m"))
    plan = plan_changes(T, [*FLEET, current, other], [updated(current, reservation("base", ["jp"], "2"))])
    rows = by_site(plan)
    assert set(rows) == {"tokyo-1", "osaka-1"}
    tokyo = rows["tokyo-1"]
    assert tokyo["change"] == "changed" and tokyo["joins"] == tokyo["leaves"] == []
    # The section sums every reservation on the site, exactly as the compile does.
    before, after = tokyo["sections"]["reservations"]["before"], tokyo["sections"]["reservations"]["after"]
    assert (before["cpuMillis"], after["cpuMillis"]) == (750, 2250)
    assert after["sources"] == ["shop/base", "shop/extra"]
    assert rows["osaka-1"]["sections"]["reservations"]["after"]["cpuMillis"] == 2000
    assert plan["summary"]["changed"] == 2


def test_the_after_side_is_what_the_compile_controller_would_write() -> None:
    current = stored(reservation("base", ["jp"], "500m"))
    change = updated(current, reservation("base", ["prod", "test"], "1"))
    plan = plan_changes(T, [*FLEET, current], [change])
    folded = ManifestState.from_snapshot([(T, o) for o in [*FLEET, {**change.obj}]])
    for row in plan["sites"]:
        compiled = folded.compile(T, row["site"]) or {}
        for name, section in row["sections"].items():
            after = dict(section["after"] or {})
            want = dict(compiled.get(name) or {})
            after.pop("revisions", None)  # the plan compiles the next generation
            want.pop("revisions", None)
            assert after == want


def test_a_selector_change_and_a_relabelled_site_move_sites_in_and_out() -> None:
    current = stored(reservation("base", ["jp"], "500m"))
    jp = next(o for o in FLEET if o["metadata"]["name"] == "jp")
    paris = next(o for o in FLEET if o["metadata"]["name"] == "paris-1")
    relabel = Change(
        obj={**paris, "metadata": {**paris["metadata"], "labels": {"region": "jp", "env": "prod"}}},
        current=paris,
    )
    narrower = updated(jp, vs("jp", "region=jp,env=prod"))
    plan = plan_changes(T, [*FLEET, current], [narrower, relabel])
    rows = by_site(plan)
    assert rows["paris-1"]["change"] == "joining" and rows["osaka-1"]["change"] == "leaving"
    assert "tokyo-1" not in rows
    assert [o["action"] for o in plan["objects"]] == ["update", "update"]


def test_a_new_site_and_a_new_intent() -> None:
    new_site = Change(obj=site("lyon-1", region="eu", env="prod"), current=None)
    new_intent = Change(obj=reservation("eu-extra", ["prod"], "100m"), current=None)
    plan = plan_changes(T, FLEET, [new_site, new_intent])
    rows = by_site(plan)
    assert rows["lyon-1"]["newSite"] is True and rows["lyon-1"]["change"] == "joining"
    assert set(rows) == {"lyon-1", "tokyo-1", "paris-1"}
    assert plan["objects"][1]["action"] == "create"
    assert plan["objects"][1]["generation"] == {"before": None, "after": 1}
    assert plan["summary"]["fleet"] == 4


def test_an_unchanged_object_touches_nothing() -> None:
    current = stored(reservation("base", ["jp"], "500m"))
    plan = plan_changes(T, [*FLEET, current], [updated(current, reservation("base", ["jp"], "500m"))])
    assert plan["sites"] == [] and plan["summary"]["touched"] == 0
    assert plan["objects"][0]["action"] == "unchanged"


def test_limit_caps_the_sites_listed_never_the_counts() -> None:
    many = [stored(site(f"s-{i:03d}", env="prod")) for i in range(50)]
    plan = plan_changes(
        T, [*many, stored(vs("prod", "env=prod"))], [Change(reservation("r", ["prod"], "1"), None)], limit=5
    )
    assert [r["site"] for r in plan["sites"]] == [f"s-{i:03d}" for i in range(5)]
    assert plan["summary"]["touched"] == plan["summary"]["joining"] == 50
    assert plan["truncated"] is True


def test_an_intent_with_a_strategy_shows_the_waves_its_rollout_would_have() -> None:
    many = [stored(site(f"s-{i:03d}", env="prod")) for i in range(25)]
    intent = reservation("r", ["prod"], "1")
    intent["spec"]["strategy"] = {"type": "rolling", "batchSize": 10}
    plan = plan_changes(T, [*many, stored(vs("prod", "env=prod"))], [Change(intent, None)])
    rollout = plan["objects"][0]["rollout"]
    assert rollout["name"] == "resourcereservation-r-1" and rollout["strategy"] == "rolling"
    assert [w["sites"] for w in rollout["waves"]] == [10, 10, 5]
