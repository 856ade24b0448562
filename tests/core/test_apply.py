"""``fleetplane apply``'s three-way merge (core/apply.py): the file wins, what the file dropped
since its last apply goes, what others set is kept."""

from __future__ import annotations

import json
from typing import Any

from fleetplane.core.apply import LAST_APPLIED, applied, merge3


def site(
    labels: dict[str, str], spec: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "tokyo-1", "labels": labels, "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"kind": "Site", "metadata": meta, "spec": spec, "status": {"phase": "Online"}}


def test_merge3_keeps_others_fields_and_drops_what_the_file_dropped() -> None:
    last = {"a": 1, "b": {"x": 1, "y": 2}, "gone": 1}
    new = {"a": 2, "b": {"x": 1}, "list": [1], "nulled": None}
    live = {"a": 1, "b": {"x": 1, "y": 2, "z": 3}, "gone": 1, "theirs": 5, "nulled": 9, "list": [1, 2, 3]}
    assert merge3(last, new, live) == {"a": 2, "b": {"x": 1, "z": 3}, "theirs": 5, "list": [1]}
    assert merge3(None, {"a": {"b": None, "c": 1}}, None) == {"a": {"c": 1}}


def test_an_onboarded_site_keeps_its_labels_and_description_through_a_first_apply() -> None:
    onboarded = site({"env": "prod"}, {"description": "registered from host vm"})
    doc: dict[str, Any] = {
        "kind": "Site",
        "metadata": {"name": "tokyo-1", "labels": {"region": "jp-north", "function": "weld"}},
    }
    first = applied(onboarded, doc)
    assert first["metadata"]["labels"] == {"env": "prod", "region": "jp-north", "function": "weld"}
    assert first["spec"] == {"description": "registered from host vm"}
    assert first["status"] == {"phase": "Online"} and first["metadata"]["resourceVersion"] == "7"
    assert json.loads(first["metadata"]["annotations"][LAST_APPLIED]) == {
        "metadata": {"labels": {"region": "jp-north", "function": "weld"}}
    }
    # The file drops "function": it goes; "env" (never the file's) stays.
    doc["metadata"]["labels"] = {"region": "jp-north"}
    second = applied(first, doc)
    assert second["metadata"]["labels"] == {"env": "prod", "region": "jp-north"}
    # Applying the same file again changes nothing.
    assert applied(second, doc) == second


def test_the_files_spec_replaces_what_it_set_before_and_keeps_the_rest() -> None:
    doc = {"kind": "Site", "metadata": {"name": "tokyo-1"}, "spec": {"displayName": "Tokyo", "tier": "gold"}}
    created = applied(None, doc)
    assert created["spec"] == doc["spec"] and LAST_APPLIED in created["metadata"]["annotations"]
    live = {**created, "spec": {**created["spec"], "coordinates": {"latitude": 35.6, "longitude": 139.7}}}
    doc["spec"] = {"displayName": "Tokyo 1"}
    assert applied(live, doc)["spec"] == {
        "displayName": "Tokyo 1",
        "coordinates": {"latitude": 35.6, "longitude": 139.7},
    }


def test_a_damaged_record_of_the_last_apply_merges_as_if_never_applied() -> None:
    live = site({"env": "prod", "old": "x"}, {}, annotations={LAST_APPLIED: "{not json", "owner": "ops"})
    out = applied(live, {"kind": "Site", "metadata": {"name": "tokyo-1", "labels": {"new": "y"}}})
    assert out["metadata"]["labels"] == {"env": "prod", "old": "x", "new": "y"}
    assert out["metadata"]["annotations"]["owner"] == "ops"
    assert json.loads(out["metadata"]["annotations"][LAST_APPLIED]) == {"metadata": {"labels": {"new": "y"}}}
