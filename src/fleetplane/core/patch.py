"""Patch formats: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from fleetplane.core.errors import Cause, bad_request


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _is_index(part: str) -> bool:
    """An RFC 6901 array index: ASCII digits, no leading zero."""
    return part.isascii() and part.isdigit() and (part == "0" or not part.startswith("0"))


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f'json patch path "{path}" must start with "/"', [Cause("path", "invalid pointer")])
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and _is_index(part) and int(part) < len(node):
            node = node[int(part)]
        else:
            raise bad_request(f'json patch: path "{path}" does not exist')
    return node, parts[-1]


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 operations: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"json patch operation {i} needs 'op' and 'path'")
        kind, path = op["op"], str(op["path"])
        if kind in ("move", "copy"):
            src_parts = _pointer(str(op.get("from", "")))
            if not src_parts:
                raise bad_request(f"json patch operation {i}: 'from' must name a member")
            parent, leaf = _parent(doc, src_parts, str(op.get("from")))
            value = _get(parent, leaf, path)
            if kind == "move":
                _remove(parent, leaf, path)
            doc = _add(doc, _pointer(path), copy.deepcopy(value), path)
        elif kind == "add":
            doc = _add(doc, _pointer(path), copy.deepcopy(op.get("value")), path)
        elif kind in ("remove", "replace", "test"):
            parts = _pointer(path)
            if not parts:
                if kind == "replace":
                    doc = copy.deepcopy(op.get("value"))
                    continue
                if kind == "test" and _json_equal(doc, op.get("value")):
                    continue
                raise bad_request(f"json patch operation {i} ({kind}) failed on the whole document")
            parent, leaf = _parent(doc, parts, path)
            current = _get(parent, leaf, path)
            if kind == "test":
                if not _json_equal(current, op.get("value")):
                    raise bad_request(f'json patch test failed at "{path}"')
            elif kind == "remove":
                _remove(parent, leaf, path)
            else:
                _set(parent, leaf, copy.deepcopy(op.get("value")), path)
        else:
            raise bad_request(f'json patch operation {i}: unknown op "{kind}"')
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 4.6 equality: as Python's, except that a boolean never equals a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _get(parent: Any, leaf: str, path: str) -> Any:
    if isinstance(parent, dict) and leaf in parent:
        return parent[leaf]
    if isinstance(parent, list) and _is_index(leaf) and int(leaf) < len(parent):
        return parent[int(leaf)]
    raise bad_request(f'json patch: path "{path}" does not exist')


def _remove(parent: Any, leaf: str, path: str) -> None:
    _get(parent, leaf, path)
    if isinstance(parent, dict):
        del parent[leaf]
    else:
        del parent[int(leaf)]


def _set(parent: Any, leaf: str, value: Any, path: str) -> None:
    _get(parent, leaf, path)
    if isinstance(parent, dict):
        parent[leaf] = value
    else:
        parent[int(leaf)] = value


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent, leaf = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[leaf] = value
    elif isinstance(parent, list):
        if leaf == "-":
            parent.append(value)
        elif _is_index(leaf) and int(leaf) <= len(parent):
            parent.insert(int(leaf), value)
        else:
            raise bad_request(f'json patch: index in "{path}" is out of range')
    else:
        raise bad_request(f'json patch: "{path}" is not inside an object or array')
    return doc
