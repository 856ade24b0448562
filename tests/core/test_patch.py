"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.patch import json_patch, merge_patch

# RFC 7386, Appendix A: (original, patch, result).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_patch_rfc7386_appendix(original: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(original)
    assert merge_patch(original, patch) == result
    assert original == before  # the target is never mutated


def test_merge_patch_rfc7386_section3_example() -> None:
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }
    assert target["author"] == {"givenName": "John", "familyName": "Doe"}


def test_merge_patch_result_does_not_alias_the_patch() -> None:
    patch = {"spec": {"list": [{"a": 1}]}}
    out = merge_patch({}, patch)
    out["spec"]["list"][0]["a"] = 2
    assert patch == {"spec": {"list": [{"a": 1}]}}


DOC: dict[str, Any] = {"foo": "bar", "baz": [1, 2, 3], "obj": {"a/b": 1, "m~n": 2, "nested": {"x": [10, 20]}}}


@pytest.mark.parametrize(
    ("ops", "result"),
    [
        # add: new member, replace member, array insert, append with "-", whole document
        ([{"op": "add", "path": "/new", "value": {"k": "v"}}], {**DOC, "new": {"k": "v"}}),
        ([{"op": "add", "path": "/foo", "value": 1}], {**DOC, "foo": 1}),
        ([{"op": "add", "path": "/baz/1", "value": 9}], {**DOC, "baz": [1, 9, 2, 3]}),
        ([{"op": "add", "path": "/baz/0", "value": 0}], {**DOC, "baz": [0, 1, 2, 3]}),
        ([{"op": "add", "path": "/baz/3", "value": 4}], {**DOC, "baz": [1, 2, 3, 4]}),
        ([{"op": "add", "path": "/baz/-", "value": 4}], {**DOC, "baz": [1, 2, 3, 4]}),
        ([{"op": "add", "path": "", "value": [1]}], [1]),
        ([{"op": "add", "path": "/obj/a~1b", "value": 5}], {**DOC, "obj": {**DOC["obj"], "a/b": 5}}),
        # remove
        ([{"op": "remove", "path": "/foo"}], {k: v for k, v in DOC.items() if k != "foo"}),
        ([{"op": "remove", "path": "/baz/0"}], {**DOC, "baz": [2, 3]}),
        ([{"op": "remove", "path": "/obj/m~0n"}], {**DOC, "obj": {"a/b": 1, "nested": {"x": [10, 20]}}}),
        # replace
        ([{"op": "replace", "path": "/foo", "value": None}], {**DOC, "foo": None}),
        ([{"op": "replace", "path": "/baz/2", "value": "three"}], {**DOC, "baz": [1, 2, "three"]}),
        ([{"op": "replace", "path": "", "value": {"all": "new"}}], {"all": "new"}),
        # move
        (
            [{"op": "move", "from": "/foo", "path": "/obj/foo"}],
            {"baz": [1, 2, 3], "obj": {**DOC["obj"], "foo": "bar"}},
        ),
        ([{"op": "move", "from": "/baz/0", "path": "/baz/-"}], {**DOC, "baz": [2, 3, 1]}),
        ([{"op": "move", "from": "/baz/2", "path": "/baz/0"}], {**DOC, "baz": [3, 1, 2]}),
        # copy
        ([{"op": "copy", "from": "/obj/nested", "path": "/copied"}], {**DOC, "copied": {"x": [10, 20]}}),
        ([{"op": "copy", "from": "/baz/1", "path": "/baz/0"}], {**DOC, "baz": [2, 1, 2, 3]}),
        # test (passing) then a change
        (
            [
                {"op": "test", "path": "/obj/nested/x/1", "value": 20},
                {"op": "replace", "path": "/foo", "value": "z"},
            ],
            {**DOC, "foo": "z"},
        ),
        ([{"op": "test", "path": "", "value": DOC}], DOC),
        # RFC 6902 A.16: adding an array value as a whole
        ([{"op": "add", "path": "/foo", "value": ["a", "b"]}], {**DOC, "foo": ["a", "b"]}),
        ([], DOC),
    ],
)
def test_json_patch_operations(ops: list[dict[str, Any]], result: Any) -> None:
    before = copy.deepcopy(DOC)
    assert json_patch(DOC, ops) == result
    assert before == DOC  # the input is never mutated


def test_json_patch_copy_is_deep() -> None:
    out = json_patch(
        {"a": {"x": [1]}},
        [{"op": "copy", "from": "/a", "path": "/b"}, {"op": "add", "path": "/b/x/-", "value": 2}],
    )
    assert out == {"a": {"x": [1]}, "b": {"x": [1, 2]}}


def test_json_patch_is_all_or_nothing() -> None:
    doc = {"a": 1}
    with pytest.raises(ApiError):
        json_patch(
            doc, [{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 1}]
        )
    assert doc == {"a": 1}


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ({"op": "add"}, "must be a list"),
        ([{"op": "add", "value": 1}], "needs 'op' and 'path'"),
        (["add"], "needs 'op' and 'path'"),
        ([{"op": "frobnicate", "path": "/foo"}], 'unknown op "frobnicate"'),
        ([{"op": "add", "path": "foo", "value": 1}], 'must start with "/"'),
        ([{"op": "add", "path": "/missing/child", "value": 1}], '"/missing/child" does not exist'),
        ([{"op": "add", "path": "/baz/4", "value": 1}], "out of range"),
        ([{"op": "add", "path": "/baz/x", "value": 1}], "out of range"),
        ([{"op": "add", "path": "/foo/x", "value": 1}], "not inside an object or array"),
        ([{"op": "remove", "path": "/nope"}], '"/nope" does not exist'),
        ([{"op": "remove", "path": "/baz/3"}], '"/baz/3" does not exist'),
        ([{"op": "remove", "path": "/baz/-"}], '"/baz/-" does not exist'),
        ([{"op": "remove", "path": ""}], "failed on the whole document"),
        ([{"op": "replace", "path": "/nope", "value": 1}], '"/nope" does not exist'),
        ([{"op": "replace", "path": "/baz/7", "value": 1}], '"/baz/7" does not exist'),
        ([{"op": "test", "path": "/foo", "value": "baz"}], 'test failed at "/foo"'),
        ([{"op": "test", "path": "/nope", "value": None}], '"/nope" does not exist'),
        ([{"op": "test", "path": "", "value": {}}], "failed on the whole document"),
        ([{"op": "move", "path": "/x"}], "'from' must name a member"),
        ([{"op": "move", "from": "/nope", "path": "/x"}], "does not exist"),
        ([{"op": "copy", "from": "/baz/9", "path": "/x"}], "does not exist"),
    ],
)
def test_json_patch_failures_are_bad_requests(ops: Any, message: str) -> None:
    with pytest.raises(ApiError) as exc:
        json_patch(DOC, ops)
    assert (exc.value.code, exc.value.reason) == (400, "BadRequest")
    assert message in exc.value.message


@pytest.mark.parametrize(
    ("value", "other"),
    [(1, True), (0, False), (True, 1), ("1", 1), ([1], [True]), ({"a": 1}, {"a": True})],
)
def test_json_patch_test_compares_json_types(value: Any, other: Any) -> None:
    """RFC 6902 4.6: a number never equals a boolean (Python says 1 == True)."""
    with pytest.raises(ApiError) as exc:
        json_patch({"v": value}, [{"op": "test", "path": "/v", "value": other}])
    assert exc.value.code == 400


def test_json_patch_test_numbers_compare_by_value() -> None:
    assert json_patch({"v": 1}, [{"op": "test", "path": "/v", "value": 1.0}]) == {"v": 1}
