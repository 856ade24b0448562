"""What the rollout controller observes of a site for one intent (``RolloutView``): the intent
revision of the manifest the site reports applying, whether this intent's items are done or
failed (another intent's failure does not count), and the derived health."""

from __future__ import annotations

from typing import Any

from fleetplane.controllers.rollout import initial_state
from fleetplane.controllers.rollout_view import UNKNOWN, RolloutView
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Event, EventType

INTENT = ("t", "NetworkPolicy", "shop", "np")


def ev(kind: str, obj: Obj) -> Event:
    m = obj["metadata"]
    return Event(1, EventType.MODIFIED, "t", kind, m.get("namespace") or "", m["name"], obj)


def manifest(site: str, generation: int, np_revision: int | None) -> Obj:
    sections: dict[str, Any] = {
        "reservations": {"cpuMillis": 1, "memoryBytes": 0, "sources": ["shop/r"], "revisions": {"shop/r": 4}}
    }
    if np_revision is not None:
        sections["networkPolicies"] = {"policies": [{"policy": "shop/np", "generation": np_revision}]}
    return {
        "kind": "SiteManifest",
        "metadata": {"name": site, "generation": generation},
        "spec": {"sections": sections},
    }


def site(name: str, generation: int, items: list[dict[str, Any]], phase: str = "Online") -> Obj:
    state = "Failed" if any(i["state"] == "Failed" for i in items) else "Applied"
    report = {"generation": generation, "state": state, "items": items}
    return {
        "kind": "Site",
        "metadata": {"name": name, "labels": {"env": "prod"}},
        "status": {"phase": phase, "manifest": report},
    }


def test_observations_map_manifest_generations_to_intent_revisions() -> None:
    view = RolloutView()
    view.membership.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    np_ok = {"section": "networkPolicies", "name": "shop/np", "state": "Applied"}
    other_failed = {"section": "reservations", "name": "reservations", "state": "Failed", "reason": "no room"}
    view.apply(ev("SiteManifest", manifest("a", 7, 2)))
    view.apply(ev("SiteManifest", manifest("b", 3, 1)))
    view.apply(ev("SiteManifest", manifest("c", 5, None)))
    view.apply(ev("Site", site("a", 7, [np_ok, other_failed])))
    view.apply(ev("Site", site("b", 3, [{**np_ok, "state": "Failed", "reason": "bad rule"}])))
    view.apply(ev("Site", site("c", 4, [])))  # reports a manifest this view never saw
    obs = view.observations(INTENT, initial_state(2, 1), {"a", "b", "c"})
    # a applied revision 2; another section's failure does not hold this intent back.
    assert (obs["a"].revision, obs["a"].applied, obs["a"].failed) == (2, True, ())
    assert obs["a"].health == 50.0  # one of its two items failed
    # b runs revision 1 (the previous one) and its policy item failed.
    assert obs["b"].revision == 1 and obs["b"].failed == ("networkPolicies/shop/np: bad rule",)
    assert obs["c"].revision == UNKNOWN  # waits until the manifest it reports is known
    view.apply(ev("SiteManifest", manifest("c", 4, None)))
    assert view.observations(INTENT, initial_state(2, 1), {"c"})["c"].revision == 1  # no entry: "back"
