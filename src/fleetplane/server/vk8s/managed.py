"""Field ownership (``metadata.managedFields``) and server-side apply, simplified.

Each manager owns a set of field paths in the ``FieldsV1`` notation (``f:spec``,
``k:{"name":"web"}`` for an element of a list merged by key, ``v:"x"`` for an element of a
set). An *update* (create, PUT, PATCH, scale) gives its manager the fields it changed and
takes them from the others. An *apply* (``application/apply-patch+yaml``) makes its manager
own exactly the fields of the applied configuration: fields another manager owns with a
different value are conflicts (409) unless ``force=true`` takes them over, and fields the
manager applied before but no longer does are removed unless someone else owns them.
Lists merge by the same keys as a strategic merge patch (``strategic.patch_meta``).
"""

from __future__ import annotations

import json
from typing import Any

from fleetplane.core.errors import ApiError, Cause
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.server.vk8s.strategic import patch_meta, strategic_merge

Path = tuple[str, ...]
MISSING = object()
TRACKED_METADATA = ("labels", "annotations")


def _walk(value: Any, fpath: Path, npath: tuple[str, ...], out: set[Path]) -> None:
    if isinstance(value, dict):
        if not value:
            out.add(fpath)
        for k, v in value.items():
            _walk(v, (*fpath, f"f:{k}"), (*npath, k), out)
        return
    if isinstance(value, list):
        key, strategy = patch_meta(npath)
        if key is not None and all(isinstance(i, dict) and key in i for i in value):
            for item in value:
                ident = (*fpath, "k:" + json.dumps({key: item[key]}, separators=(",", ":")))
                out.add(ident)
                _walk(item, ident, npath, out)
            return
        if "merge" in strategy and all(not isinstance(i, dict | list) for i in value):
            out.update((*fpath, "v:" + json.dumps(i)) for i in value)
            return
    out.add(fpath)


def field_set(obj: Obj) -> set[Path]:
    """The leaf field paths of ``obj`` a manager can own (not status, not server metadata)."""
    out: set[Path] = set()
    for top, value in obj.items():
        if top in ("apiVersion", "kind", "status"):
            continue
        if top == "metadata":
            meta = value if isinstance(value, dict) else {}
            for part in TRACKED_METADATA:
                if isinstance(meta.get(part), dict):
                    _walk(meta[part], ("f:metadata", f"f:{part}"), ("metadata", part), out)
            continue
        _walk(value, (f"f:{top}",), (top,), out)
    return out


def value_at(obj: Any, path: Path) -> Any:
    node = obj
    for part in path:
        kind, _, rest = part.partition(":")
        if kind == "f" and isinstance(node, dict) and rest in node:
            node = node[rest]
        elif kind == "k" and isinstance(node, list):
            want = json.loads(rest)
            node = next(
                (i for i in node if isinstance(i, dict) and all(i.get(k) == v for k, v in want.items())),
                MISSING,
            )
            if node is MISSING:
                return MISSING
        elif kind == "v" and isinstance(node, list):
            value = json.loads(rest)
            return value if value in node else MISSING
        else:
            return MISSING
    return node


def remove_at(obj: Any, path: Path) -> None:
    *head, last = path
    parent = value_at(obj, tuple(head))
    kind, _, rest = last.partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k" and isinstance(parent, list):
        want = json.loads(rest)
        parent[:] = [
            i for i in parent if not (isinstance(i, dict) and all(i.get(k) == v for k, v in want.items()))
        ]
    elif kind == "v" and isinstance(parent, list):
        value = json.loads(rest)
        parent[:] = [i for i in parent if i != value]


def display(path: Path) -> str:
    """Upstream's notation for a conflicting field: ``.spec.template.spec.containers[name="web"].image``."""
    out = ""
    for part in path:
        kind, _, rest = part.partition(":")
        if kind == "f":
            out += f".{rest}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(rest).items()) + "]"
        else:
            out += f"[={rest}]"
    return out


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(part, {})

    def mark(node: dict[str, Any], path: Path) -> None:
        for key, child in node.items():
            if key == ".":
                continue
            if child and (*path, key) in paths:
                child["."] = {}
            mark(child, (*path, key))

    mark(root, ())
    return root


def from_fields_v1(node: Any, path: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(node, dict):
        return out
    if path and (not node or "." in node):
        out.add(path)
    for key, child in node.items():
        if key != ".":
            out |= from_fields_v1(child, (*path, key))
    return out


Managers = dict[tuple[str, str], set[Path]]  # (manager, operation) -> fields


def read_managers(obj: Obj | None) -> Managers:
    out: Managers = {}
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if isinstance(entry, dict) and entry.get("manager") is not None:
            key = (str(entry["manager"]), str(entry.get("operation") or "Update"))
            out[key] = out.get(key, set()) | from_fields_v1(entry.get("fieldsV1") or {})
    return out


def write_managers(obj: Obj, managers: Managers, api_version: str, base: Obj | None) -> None:
    """Store ``managers`` in ``obj``; an entry keeps its time unless its fields changed (a no-op
    write must not change the object, or it would take a new revision)."""
    previous = {
        (e.get("manager"), e.get("operation")): e
        for e in ((base or {}).get("metadata") or {}).get("managedFields") or []
        if isinstance(e, dict)
    }
    entries = []
    for key, fields in managers.items():
        if not fields:
            continue
        manager, operation = key
        shown = to_fields_v1(fields)
        before = previous.get(key) or {}
        same = before.get("fieldsV1") == shown and before.get("time")
        entries.append(
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "time": before["time"] if same else now_rfc3339(),
                "fieldsType": "FieldsV1",
                "fieldsV1": shown,
            }
        )
    obj.setdefault("metadata", {})["managedFields"] = entries


def record_update(old: Obj | None, new: Obj, manager: str, api_version: str) -> None:
    """Give ``manager`` the fields this write changed (``new`` is changed in place)."""
    requested = (new.get("metadata") or {}).get("managedFields")
    base = (
        old
        if requested is None or requested == ((old or {}).get("metadata") or {}).get("managedFields")
        else new
    )
    managers = read_managers(base)
    new_fields = field_set(new)
    old_fields = field_set(old) if old is not None else set()
    changed = {p for p in new_fields if p not in old_fields or value_at(old, p) != value_at(new, p)}
    removed = old_fields - new_fields
    for key in managers:
        managers[key] -= changed | removed
    me = (manager, "Update")
    managers[me] = managers.get(me, set()) | changed
    write_managers(new, managers, api_version, base)


def apply(current: Obj | None, applied: Obj, manager: str, force: bool, api_version: str) -> Obj:
    """Server-side apply of ``applied`` by ``manager`` over ``current`` (``None``: create)."""
    fields = field_set(applied)
    managers = read_managers(current)
    me = (manager, "Apply")
    base: Obj = current if current is not None else {}
    conflicts: list[tuple[Path, str]] = []
    for key, owned in managers.items():
        if key == me:
            continue
        for path in sorted(fields & owned):
            ours, theirs = value_at(applied, path), value_at(base, path)
            if isinstance(ours, dict) or isinstance(theirs, dict) or ours == theirs:
                continue
            conflicts.append((path, key[0]))
            if force:
                owned.discard(path)
    if conflicts and not force:
        raise conflict_error(conflicts, api_version)
    patch = {k: v for k, v in applied.items() if k not in ("status",)}
    merged: Obj = strategic_merge(base, patch)
    merged["metadata"] = {**(base.get("metadata") or {}), **_tracked_meta(merged, base, applied)}
    others = set().union(*(f for k, f in managers.items() if k != me)) if managers else set()
    dropped = managers.get(me, set()) - fields
    for path in sorted(dropped, key=len, reverse=True):
        if path not in others and not any(o[: len(path)] == path for o in others):
            remove_at(merged, path)
    managers[me] = fields
    write_managers(merged, managers, api_version, current)
    return merged


def _tracked_meta(merged: Obj, base: Obj, applied: Obj) -> dict[str, Any]:
    """Labels and annotations merge; the rest of the applied metadata names the object."""
    meta = dict(merged.get("metadata") or {})
    am = applied.get("metadata") or {}
    out = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    for k in ("name", "namespace", "generateName"):
        if k in am:
            out[k] = am[k]
    if "resourceVersion" in am:
        out["resourceVersion"] = am["resourceVersion"]
    elif (base.get("metadata") or {}).get("resourceVersion"):
        out["resourceVersion"] = base["metadata"]["resourceVersion"]
    return out


def conflict_error(conflicts: list[tuple[Path, str]], api_version: str) -> ApiError:
    n = len(conflicts)
    lines = [f'conflict with "{m}" using {api_version}: {display(p)}' for p, m in conflicts]
    message = f"Apply failed with {n} conflict{'s' if n > 1 else ''}: " + (
        lines[0] if n == 1 else "\n" + "\n".join(lines)
    )
    causes = [
        Cause(display(p), f'conflict with "{m}" using {api_version}', "FieldManagerConflict")
        for p, m in conflicts
    ]
    return ApiError(409, "Conflict", message, causes=causes)
