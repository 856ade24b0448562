"""Kinds through the registry: defaults, refusals with field paths, scope rules, redaction."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleetplane.core.errors import ApiError, Cause
from fleetplane.core.objects import Obj
from fleetplane.core.registry import API_VERSION
from fleetplane.kinds import REGISTRY


def refused(kind: str, obj: Obj) -> ApiError:
    with pytest.raises(ApiError) as exc:
        REGISTRY.get(kind).normalize(obj)
    assert (exc.value.code, exc.value.reason) == (422, "Invalid")
    return exc.value


def fields(err: ApiError) -> list[str]:
    return [c.field for c in err.causes]


def vs(selector: Any, **meta: Any) -> Obj:
    return {"metadata": {"name": "edge", "namespace": "default", **meta}, "spec": {"selector": selector}}


# -- defaults ---------------------------------------------------------------------------------------


def test_site_defaults() -> None:
    out = REGISTRY.get("Site").normalize({"metadata": {"name": "berlin", "labels": {"env": "prod"}}})
    assert out == {
        "apiVersion": API_VERSION,
        "kind": "Site",
        "metadata": {"name": "berlin", "labels": {"env": "prod"}},
        "spec": {},
        "status": {"phase": "Pending", "nodeCount": 0, "conditions": []},
    }


def test_site_keeps_given_values() -> None:
    out = REGISTRY.get("Site").normalize(
        {
            "kind": "Site",
            "metadata": {"name": "berlin"},
            "spec": {"displayName": "Berlin", "coordinates": {"latitude": 52.52, "longitude": 13.4}},
            "status": {"phase": "Online", "nodeCount": 3},
        }
    )
    assert out["spec"] == {"displayName": "Berlin", "coordinates": {"latitude": 52.52, "longitude": 13.4}}
    assert out["status"]["phase"] == "Online"
    assert out["status"]["nodeCount"] == 3


def test_virtual_site_defaults() -> None:
    out = REGISTRY.get("VirtualSite").normalize({"metadata": {"name": "all", "namespace": "default"}})
    assert out["spec"] == {"selector": ""}
    assert out["status"] == {
        "observedGeneration": 0,
        "selector": "",
        "memberCount": 0,
        "members": [],
        "membersTruncated": False,
    }


def test_access_key_and_tenant_defaults() -> None:
    key = REGISTRY.get("AccessKey").normalize({"metadata": {"name": "ci"}})
    assert key["spec"] == {"role": "viewer", "namespaces": [], "system": False}
    assert key["status"] == {}
    tenant = REGISTRY.get("Tenant").normalize({"metadata": {"name": "acme"}, "spec": {"displayName": "ACME"}})
    assert tenant["spec"] == {"displayName": "ACME"}
    assert tenant["status"] == {"phase": "Active"}


def test_resolve_by_plural_and_short_names() -> None:
    for name, kind in [
        ("sites", "Site"),
        ("vs", "VirtualSite"),
        ("VSITE", "VirtualSite"),
        ("ak", "AccessKey"),
        ("tenant", "Tenant"),
        ("accesskeys", "AccessKey"),
    ]:
        assert REGISTRY.resolve(name).kind == kind
    with pytest.raises(ApiError) as exc:
        REGISTRY.resolve("gadgets")
    assert exc.value.code == 404


# -- refusals with field paths -------------------------------------------------------------------------


def test_unknown_spec_field_is_refused_with_its_path() -> None:
    err = refused("Site", {"metadata": {"name": "s"}, "spec": {"colour": "red"}})
    assert err.causes == [Cause("spec.colour", "unknown field", "FieldValueNotSupported")]
    assert "spec.colour" in err.message
    err = refused(
        "Site",
        {"metadata": {"name": "s"}, "spec": {"coordinates": {"latitude": 1, "longitude": 2, "altitude": 3}}},
    )
    assert fields(err) == ["spec.coordinates.altitude"]
    err = refused("AccessKey", {"metadata": {"name": "k"}, "spec": {"role": "root"}})
    assert fields(err) == ["spec.role"]


@pytest.mark.parametrize(
    ("coords", "field"),
    [
        ({"latitude": 91, "longitude": 0}, "spec.coordinates.latitude"),
        ({"latitude": -90.5, "longitude": 0}, "spec.coordinates.latitude"),
        ({"latitude": 0, "longitude": 180.1}, "spec.coordinates.longitude"),
        ({"latitude": 0}, "spec.coordinates.longitude"),
    ],
)
def test_coordinates_out_of_range_are_refused(coords: dict[str, Any], field: str) -> None:
    err = refused("Site", {"metadata": {"name": "s"}, "spec": {"coordinates": coords}})
    assert fields(err) == [field]


def test_boundary_coordinates_are_accepted() -> None:
    out = REGISTRY.get("Site").normalize(
        {"metadata": {"name": "s"}, "spec": {"coordinates": {"latitude": -90, "longitude": 180}}}
    )
    assert out["spec"]["coordinates"] == {"latitude": -90, "longitude": 180}


def test_status_values_are_checked() -> None:
    err = refused("Site", {"metadata": {"name": "s"}, "status": {"phase": "Exploded", "nodeCount": -1}})
    assert sorted(fields(err)) == ["status.nodeCount", "status.phase"]


@pytest.mark.parametrize("name", ["Berlin", "under_score", "-lead", "trail-", "", "a" * 254, "sp ace"])
def test_bad_names_are_refused(name: str) -> None:
    err = refused("Site", {"metadata": {"name": name}})
    assert "metadata.name" in fields(err)


def test_missing_name_is_required() -> None:
    err = refused("Site", {"metadata": {}})
    assert err.causes[0] == Cause("metadata.name", "name is required", "FieldValueRequired")
    assert fields(refused("Site", {"spec": {}})) == ["metadata"]


@pytest.mark.parametrize(
    "labels",
    [{"-bad": "x"}, {"a/b/c": "x"}, {"k": "-v"}, {"k": "v" * 64}, {"k" * 64: "v"}, {"k": 1}, ["k"]],
)
def test_bad_labels_are_refused(labels: Any) -> None:
    err = refused("Site", {"metadata": {"name": "s", "labels": labels}})
    assert fields(err)
    assert all(f.startswith("metadata.labels") for f in fields(err))


def test_good_labels_are_accepted() -> None:
    labels = {"fleetplane.io/zone": "eu-1", "env": "", "A_b.c-d": "X_y.z-9"}
    out = REGISTRY.get("Site").normalize({"metadata": {"name": "s", "labels": labels}})
    assert out["metadata"]["labels"] == labels


def test_several_problems_are_reported_together() -> None:
    err = refused("Site", {"metadata": {"name": "Bad", "labels": {"k": "-v"}}, "spec": {"colour": 1}})
    assert fields(err) == ["metadata.name", "metadata.labels[k]", "spec.colour"]


@pytest.mark.parametrize(
    ("selector", "where"),
    [
        ("env in (a", "position 9"),
        ("env=prod,", "position 9"),
        ("env > 3", "position 4"),
        ({"matchExpressions": [{"key": "env", "operator": "Foo"}]}, "matchExpressions[0].operator"),
        ({"matchExpressions": [{"key": "env", "operator": "In"}]}, "matchExpressions[0].values"),
        ({"matchLabels": {"bad key": "x"}}, "matchLabels[bad key]"),
        ({"matchLabels": {"env": "-x"}}, "matchLabels[env]"),
    ],
)
def test_bad_virtual_site_selector_is_refused_saying_where(selector: Any, where: str) -> None:
    err = refused("VirtualSite", vs(selector))
    assert fields(err) == ["spec.selector"]
    assert where in err.causes[0].message
    assert where in err.message


def test_virtual_site_selector_unknown_structured_field_is_refused() -> None:
    err = refused("VirtualSite", vs({"matchLabel": {"a": "b"}}))
    assert fields(err) and all(f.startswith("spec.selector") for f in fields(err))


@pytest.mark.parametrize(
    "selector",
    [
        "env in (prod,staging),!legacy,zone",
        {"matchLabels": {"env": "prod"}},
        {
            "matchLabels": {"env": "prod"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["x"]},
                {"key": "gpu", "operator": "Exists"},
            ],
        },
        {},
        "",
    ],
)
def test_good_virtual_site_selectors_are_accepted(selector: Any) -> None:
    out = REGISTRY.get("VirtualSite").normalize(vs(selector))
    assert out["spec"]["selector"] == selector


def test_namespaced_kinds_require_a_namespace() -> None:
    err = refused("VirtualSite", {"metadata": {"name": "v"}, "spec": {"selector": "a=b"}})
    assert Cause("metadata.namespace", "namespace is required", "FieldValueRequired") in err.causes
    err = refused("VirtualSite", {"metadata": {"name": "v", "namespace": "Not_Valid"}})
    assert fields(err) == ["metadata.namespace"]
    # Tenant-wide and system kinds need none.
    for kind in ("Site", "AccessKey", "Tenant"):
        assert REGISTRY.get(kind).normalize({"metadata": {"name": "x"}})["metadata"] == {"name": "x"}


# -- redaction ------------------------------------------------------------------------------------------


def test_redact_hides_access_key_hash_without_touching_the_input() -> None:
    info = REGISTRY.get("AccessKey")
    obj = info.normalize({"metadata": {"name": "ci"}, "spec": {"role": "editor"}})
    obj["status"] = {"keyHash": "sha256:secret", "other": "kept"}
    before = copy.deepcopy(obj)
    shown = info.redact(obj)
    assert "keyHash" not in shown["status"]
    assert shown["status"] == {"other": "kept"}
    assert shown["spec"] == obj["spec"]
    assert obj == before
    # Nothing to hide is fine, and other kinds are returned as they are.
    assert info.redact({"metadata": {"name": "x"}}) == {"metadata": {"name": "x"}}
    site = {"metadata": {"name": "s"}, "status": {"keyHash": "not-a-secret-here"}}
    assert REGISTRY.get("Site").redact(site) == site
