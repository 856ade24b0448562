"""LabelIndex: set-algebra selection must equal per-object Selector.matches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetplane.core.label_index import LabelIndex
from fleetplane.core.selectors import Requirement, Selector, parse_selector

FLEET: dict[str, dict[str, str]] = {
    "s1": {"region": "eu", "env": "prod", "gpu": "true"},
    "s2": {"region": "eu", "env": "staging"},
    "s3": {"region": "us", "env": "prod", "legacy": ""},
    "s4": {"region": "us"},
    "s5": {},
}


@pytest.fixture
def index() -> LabelIndex[str]:
    idx: LabelIndex[str] = LabelIndex()
    for key, labels in FLEET.items():
        idx.set(key, labels)
    return idx


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"s1", "s2", "s3", "s4", "s5"}),
        ("region=eu", {"s1", "s2"}),
        ("region==us", {"s3", "s4"}),
        ("region!=eu", {"s3", "s4", "s5"}),  # != keeps objects without the key
        ("env notin (prod)", {"s2", "s4", "s5"}),
        ("env in (prod,staging)", {"s1", "s2", "s3"}),
        ("env in (prod,staging),region=us", {"s3"}),
        ("gpu", {"s1"}),
        ("!gpu", {"s2", "s3", "s4", "s5"}),
        ("legacy=", {"s3"}),
        ("legacy in ()", {"s3"}),
        ("legacy notin ()", {"s1", "s2", "s4", "s5"}),
        ("!legacy,!gpu,region", {"s2", "s4"}),
        ("region!=eu,env!=prod", {"s4", "s5"}),
        ("nope", set()),
        ("nope=x", set()),
        ("nope!=x", {"s1", "s2", "s3", "s4", "s5"}),
        ("region in (mars)", set()),
        ("region=eu,region=us", set()),
        ("region,!region", set()),
        ("region=eu,env=prod,gpu=true", {"s1"}),
    ],
)
def test_select(index: LabelIndex[str], text: str, expected: set[str]) -> None:
    sel = parse_selector(text)
    assert index.select(sel) == expected
    assert expected == {k for k in index if sel.matches(index.labels_of(k))}


def test_container_protocol(index: LabelIndex[str]) -> None:
    assert len(index) == 5
    assert "s1" in index
    assert "zz" not in index
    assert set(index) == set(FLEET)
    assert dict(index.labels_of("s3")) == {"region": "us", "env": "prod", "legacy": ""}
    with pytest.raises(KeyError):
        index.labels_of("zz")
    with pytest.raises(TypeError):
        index.labels_of("s1")["region"] = "mars"  # type: ignore[index]


def test_set_replaces_labels_and_updates_postings(index: LabelIndex[str]) -> None:
    index.set("s1", {"region": "us", "tier": "1"})
    assert len(index) == 5
    assert index.select(parse_selector("region=eu")) == {"s2"}
    assert index.select(parse_selector("region=us")) == {"s1", "s3", "s4"}
    assert index.select(parse_selector("gpu")) == set()
    assert index.select(parse_selector("env")) == {"s2", "s3"}
    assert index.select(parse_selector("tier=1")) == {"s1"}
    index.set("s1", {"region": "us", "tier": "1"})  # idempotent
    assert index.select(parse_selector("tier=1,region=us")) == {"s1"}


def test_set_copies_its_input(index: LabelIndex[str]) -> None:
    labels = {"region": "eu"}
    index.set("s6", labels)
    labels["region"] = "us"
    assert index.select(parse_selector("region=eu")) == {"s1", "s2", "s6"}
    assert index.labels_of("s6") == {"region": "eu"}


def test_remove_and_discard(index: LabelIndex[str]) -> None:
    index.remove("s1")
    assert "s1" not in index
    assert len(index) == 4
    assert index.select(parse_selector("gpu")) == set()
    assert index.select(parse_selector("region!=us")) == {"s2", "s5"}
    assert index.select(Selector()) == {"s2", "s3", "s4", "s5"}
    with pytest.raises(KeyError):
        index.remove("s1")
    index.discard("s1")  # no error
    index.discard("s2")
    assert index.select(parse_selector("region=eu")) == set()
    for key in list(index):
        index.remove(key)
    assert len(index) == 0
    assert index.select(parse_selector("!x")) == set()
    assert index.select(Selector()) == set()


def test_result_is_a_fresh_set(index: LabelIndex[str]) -> None:
    for text in ("", "gpu", "region=eu", "!gpu", "region in (eu,us)"):
        result = index.select(parse_selector(text))
        result.add("intruder")
        result.clear()
    assert index.select(parse_selector("region=eu")) == {"s1", "s2"}
    assert index.select(parse_selector("gpu")) == {"s1"}
    assert len(index.select(Selector())) == 5


def test_non_string_keys() -> None:
    idx: LabelIndex[tuple[str, int]] = LabelIndex()
    idx.set(("site", 1), {"a": "b"})
    idx.set(("site", 2), {})
    assert idx.select(parse_selector("a!=b")) == {("site", 2)}


# --- property: index selection == brute force over random histories -------------

KEYS = ["a", "b", "c", "example.com/d"]
VALUES = ["", "x", "y", "z"]
OBJECTS = [f"o{i}" for i in range(12)]

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
label_sets = st.dictionaries(keys, values, max_size=len(KEYS))
requirements = st.one_of(
    st.builds(Requirement, keys, st.sampled_from(["=", "!="]), st.tuples(values)),
    st.builds(
        Requirement,
        keys,
        st.sampled_from(["in", "notin"]),
        st.lists(values, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Requirement, keys, st.sampled_from(["exists", "!"])),
)
selectors = st.lists(requirements, max_size=4).map(lambda rs: Selector(tuple(rs)))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(OBJECTS), label_sets),
        st.tuples(st.just("discard"), st.sampled_from(OBJECTS), st.just({})),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(operations, st.lists(selectors, min_size=1, max_size=6))
def test_select_equals_per_object_matching(
    ops: list[tuple[str, str, dict[str, str]]], sels: list[Selector]
) -> None:
    idx: LabelIndex[str] = LabelIndex()
    model: dict[str, dict[str, str]] = {}
    for op, key, labels in ops:
        if op == "set":
            idx.set(key, labels)
            model[key] = dict(labels)
        else:
            idx.discard(key)
            model.pop(key, None)
    assert len(idx) == len(model)
    assert set(idx) == set(model)
    for key, labels in model.items():
        assert dict(idx.labels_of(key)) == labels
    for sel in sels:
        assert idx.select(sel) == {k for k, labels in model.items() if sel.matches(labels)}
