"""Field selectors: ``=``, ``==``, ``!=`` on dotted paths, as Kubernetes lists take them."""

from __future__ import annotations

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.fields import parse_field_selector
from fleetplane.core.objects import Obj

OBJS: list[Obj] = [
    {
        "metadata": {"name": "berlin", "namespace": "eu"},
        "spec": {"displayName": "Berlin", "nodes": 3, "edge": True, "coordinates": {"latitude": 52.5}},
        "status": {"phase": "Online"},
    },
    {
        "metadata": {"name": "paris", "namespace": "eu"},
        "spec": {"displayName": "Paris", "nodes": 0, "edge": False, "tags": ["a"]},
        "status": {"phase": "Offline"},
    },
    {"metadata": {"name": "austin", "namespace": "us"}, "spec": {"displayName": None}},
]


def select(text: str) -> list[str]:
    pred = parse_field_selector(text)
    assert pred is not None
    return [o["metadata"]["name"] for o in OBJS if pred(o)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=paris", ["paris"]),
        ("metadata.name==paris", ["paris"]),
        ("metadata.name!=paris", ["berlin", "austin"]),
        ("status.phase=Online", ["berlin"]),
        ("status.phase!=Online", ["paris", "austin"]),
        ("metadata.namespace=eu,status.phase!=Online", ["paris"]),
        (" metadata.namespace = eu , metadata.name != berlin ", ["paris"]),
        ("spec.coordinates.latitude=52.5", ["berlin"]),
        ("spec.nodes=0", ["paris"]),
        ("spec.edge=true", ["berlin"]),
        ("spec.edge=false", ["paris"]),
        ("spec.edge!=true", ["paris", "austin"]),
        # A missing field (or null, or a non-scalar) reads as the empty string.
        ("status.phase=", ["austin"]),
        ("status.phase!=", ["berlin", "paris"]),
        ("spec.displayName=", ["austin"]),
        ("spec.nothing.deeper=x", []),
        ("spec.nothing.deeper!=x", ["berlin", "paris", "austin"]),
        ("spec.coordinates=", ["berlin", "paris", "austin"]),
        ("spec.tags=", ["berlin", "paris", "austin"]),
        ("metadata.name.sub=", ["berlin", "paris", "austin"]),
        ("metadata.name=Paris", []),
    ],
)
def test_field_selector_matches(text: str, expected: list[str]) -> None:
    assert select(text) == expected


def test_value_may_contain_an_equals_sign() -> None:
    pred = parse_field_selector("spec.displayName=a=b")
    assert pred is not None
    assert pred({"spec": {"displayName": "a=b"}})
    assert not pred({"spec": {"displayName": "a"}})


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_empty_selector_selects_everything(text: str) -> None:
    assert parse_field_selector(text) is None


@pytest.mark.parametrize("text", ["metadata.name", "status.phase<Online", "a=b,c", "metadata.name~x"])
def test_bad_syntax_is_bad_request(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_field_selector(text)
    assert (exc.value.code, exc.value.reason) == (400, "BadRequest")
    assert "invalid field selector" in exc.value.message
    assert [c.field for c in exc.value.causes] == ["fieldSelector"]


def test_allowed_restricts_field_paths() -> None:
    allowed = {"metadata.name", "metadata.namespace", "status.phase"}
    pred = parse_field_selector("metadata.name=berlin,status.phase==Online", allowed)
    assert pred is not None
    assert [o["metadata"]["name"] for o in OBJS if pred(o)] == ["berlin"]
    for text in ("spec.displayName=Berlin", "metadata.name=berlin,spec.nodes!=3", "metadata=x"):
        with pytest.raises(ApiError) as exc:
            parse_field_selector(text, allowed)
        assert (exc.value.code, exc.value.reason) == (400, "BadRequest")
        assert "field label not supported" in exc.value.message
    assert parse_field_selector("", allowed) is None
    # Without a restriction any path is accepted.
    assert parse_field_selector("spec.displayName=Berlin") is not None
