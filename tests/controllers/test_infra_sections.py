"""The ``infra`` section: a site's inventory and its pipeline with artifacts resolved by hash,
recompiled when the inventory or a referenced artifact changes."""

from __future__ import annotations

import itertools
from typing import Any

from fleetplane.controllers.manifests import ManifestState
from fleetplane.core.store import Event, EventType

T = "acme"
_rev = itertools.count(1)
SHA = {"img": "a" * 64, "pkg": "b" * 64, "apps": "c" * 64}


def ev(
    kind: str, name: str, obj: dict[str, Any], ns: str = "", kind_type: EventType = EventType.ADDED
) -> Event:
    meta = {"name": name, "namespace": ns, "generation": 1, "uid": f"u-{name}", **obj.pop("metadata", {})}
    return Event(next(_rev), kind_type, T, kind, ns, name, {"kind": kind, "metadata": meta, **obj})


def artifact(name: str, kind: str, phase: str = "Ready") -> Event:
    status = {"phase": phase, "sha256": SHA[name], "size": 100} if phase == "Ready" else {"phase": phase}
    return ev("Artifact", name, {"spec": {"type": kind, "version": "1.0"}, "status": status}, "ops")


def pipeline(name: str = "base", **spec: Any) -> Event:
    body = {"virtualSites": ["edge"], "osImage": "img", "packages": ["pkg"], "containerPackages": ["apps"]}
    return ev("InfraPipeline", name, {"spec": body | spec}, "ops")


def inventory(site: str, *nodes: str, **spec: Any) -> Event:
    listed = [{"name": n, "role": "worker", "locked": False} for n in nodes]
    return ev("SiteInventory", site, {"spec": {"site": site, "nodes": listed, "retry": 0} | spec})


def state_with_site() -> ManifestState:
    state = ManifestState()
    state.apply(ev("Site", "s1", {"metadata": {"labels": {"tier": "edge"}}}))
    state.apply(ev("Site", "s2", {"metadata": {"labels": {"tier": "core"}}}))
    state.apply(ev("VirtualSite", "edge", {"spec": {"selector": "tier=edge"}}, "ops"))
    return state


def test_pipeline_resolves_artifacts_and_carries_the_inventory() -> None:
    state = state_with_site()
    for e in (artifact("img", "os-image"), artifact("pkg", "package"), artifact("apps", "container-package")):
        state.apply(e)
    assert state.apply(inventory("s1", "node-01", "node-02", retry=2)) == {(T, "s1")}
    assert state.apply(pipeline()) == {(T, "s1")}
    section = (state.compile(T, "s1") or {})["infra"]
    assert section["source"] == "ops/base" and section["revisions"] == {"ops/base": 1}
    assert section["osImage"] == {
        "name": "ops/img",
        "type": "os-image",
        "version": "1.0",
        "sha256": SHA["img"],
        "size": 100,
    }
    assert [a["sha256"] for a in section["artifacts"]] == [SHA["img"], SHA["pkg"], SHA["apps"]]
    assert [n["name"] for n in section["nodes"]] == ["node-01", "node-02"] and section["retry"] == 2
    assert "blocked" not in section
    assert "infra" not in (state.compile(T, "s2") or {})  # not targeted, no inventory


def test_an_artifact_not_ready_blocks_and_its_upload_recompiles_the_site() -> None:
    state = state_with_site()
    state.apply(artifact("img", "os-image", phase="Uploading"))
    state.apply(pipeline(packages=[], containerPackages=[]))
    section = (state.compile(T, "s1") or {})["infra"]
    assert section["blocked"] == "artifact ops/img is not Ready (Uploading)"
    assert section["osImage"] is None and section["artifacts"] == []
    assert state.apply(artifact("img", "os-image")) == {(T, "s1")}  # the site that named it
    assert "blocked" not in (state.compile(T, "s1") or {})["infra"]


def test_wrong_type_and_missing_artifacts_are_named() -> None:
    state = state_with_site()
    state.apply(artifact("img", "package"))
    state.apply(pipeline(packages=["nope"], containerPackages=[]))
    blocked = (state.compile(T, "s1") or {})["infra"]["blocked"]
    assert "artifact ops/img has type package, not os-image" in blocked
    assert "artifact ops/nope does not exist" in blocked


def test_inventory_alone_and_superseded_pipelines() -> None:
    state = state_with_site()
    state.apply(inventory("s2", "node-01"))
    assert (state.compile(T, "s2") or {})["infra"] == {
        "nodes": [{"name": "node-01", "role": "worker", "locked": False}],
        "retry": 0,
    }
    state.apply(artifact("img", "os-image"))
    state.apply(pipeline("a", packages=[], containerPackages=[]))
    state.apply(pipeline("b", packages=[], containerPackages=[]))
    section = (state.compile(T, "s1") or {})["infra"]
    assert section["source"] == "ops/a" and section["superseded"] == ["ops/b"]
    # A status write to the inventory (the controller's) recompiles nothing.
    assert state.apply(inventory("s2", "node-01")) == set()
    assert state.apply(ev("SiteInventory", "s2", {}, kind_type=EventType.DELETED)) == {(T, "s2")}
    assert "infra" not in (state.compile(T, "s2") or {})
