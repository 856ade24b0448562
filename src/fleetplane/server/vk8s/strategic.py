"""Strategic merge patch (``application/strategic-merge-patch+json``), as apimachinery does it.

Lists whose schema declares a patch merge key merge element by element on that key (the
upstream keys: containers by ``name``, container ports by ``containerPort``, env by
``name``, volumes by ``name``, volumeMounts by ``mountPath``, Service ports by ``port``...);
other lists are replaced. Directives: ``$patch: replace | delete | merge`` on maps and list
elements, ``$retainKeys``, ``$setElementOrder/<list>`` and ``$deleteFromPrimitiveList/<list>``.
The same table is published in the OpenAPI documents (``x-kubernetes-patch-merge-key``) so
that kubectl computes its patches with the keys this server applies them with.
"""

from __future__ import annotations

import copy
from typing import Any

from fleetplane.core.errors import bad_request

PATCH = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder/"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

# field name -> (merge key, strategy); "ports" depends on where it is (see patch_meta).
MERGE_KEYS: dict[str, tuple[str, str]] = {
    "containers": ("name", "merge"),
    "initContainers": ("name", "merge"),
    "ephemeralContainers": ("name", "merge"),
    "env": ("name", "merge"),
    "volumeMounts": ("mountPath", "merge"),
    "volumeDevices": ("devicePath", "merge"),
    "volumes": ("name", "merge,retainKeys"),
    "imagePullSecrets": ("name", "merge"),
    "hostAliases": ("ip", "merge"),
    "topologySpreadConstraints": ("topologyKey", "merge"),
    "resourceClaims": ("name", "merge"),
    "conditions": ("type", "merge"),
    "ownerReferences": ("uid", "merge"),
}
PRIMITIVE_MERGE = frozenset({"finalizers"})
RETAIN_KEYS_MAPS = frozenset({"strategy", "updateStrategy"})


def patch_meta(path: tuple[str, ...]) -> tuple[str | None, str]:
    """(merge key, strategy) of the field at ``path`` (field names only, no indices)."""
    if not path:
        return None, ""
    name = path[-1]
    if name == "ports":
        parent = path[-2] if len(path) > 1 else ""
        return ("containerPort", "merge") if parent in CONTAINER_LISTS else ("port", "merge")
    if name in MERGE_KEYS:
        return MERGE_KEYS[name]
    if name in PRIMITIVE_MERGE:
        return None, "merge"
    if name in RETAIN_KEYS_MAPS:
        return None, "retainKeys"
    return None, ""


def strategic_merge(original: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """``original`` with ``patch`` applied; neither is modified."""
    if not isinstance(patch, dict):
        raise bad_request("a strategic merge patch must be a JSON object")
    base = original if isinstance(original, dict) else {}
    return _merge_map(base, patch, path)


def _merge_map(original: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    directive = patch.get(PATCH)
    if directive == "replace":
        replaced: dict[str, Any] = _strip({k: v for k, v in patch.items() if k != PATCH})
        return replaced
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise bad_request(f"strategic merge patch: unknown $patch directive {directive!r}")
    out = copy.deepcopy(original)
    retain = patch.get(RETAIN_KEYS)
    if retain is not None:
        if not isinstance(retain, list):
            raise bad_request("strategic merge patch: $retainKeys must be a list")
        for key in list(out):
            if key not in retain:
                del out[key]
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith(SET_ORDER):
            if not isinstance(value, list):
                raise bad_request(f"strategic merge patch: {key} must be a list")
            orders[key.removeprefix(SET_ORDER)] = value
        elif key.startswith(DELETE_PRIMITIVE):
            field = key.removeprefix(DELETE_PRIMITIVE)
            if isinstance(out.get(field), list) and isinstance(value, list):
                out[field] = [v for v in out[field] if v not in value]
    for key, value in patch.items():
        if key in (PATCH, RETAIN_KEYS) or key.startswith((SET_ORDER, DELETE_PRIMITIVE)):
            continue
        sub = (*path, key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            out[key] = _merge_map(current if isinstance(current, dict) else {}, value, sub)
        elif isinstance(value, list):
            current = out.get(key)
            out[key] = _merge_list(current if isinstance(current, list) else [], value, sub)
        else:
            out[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(out.get(field), list):
            original_list = original.get(field) if isinstance(original.get(field), list) else []
            out[field] = _apply_order(out[field], order, original_list or [], (*path, field))
    return out


def _strip(value: Any) -> Any:
    """A value with the directives removed (what a replace stores)."""
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in (PATCH, RETAIN_KEYS) and not k.startswith((SET_ORDER, DELETE_PRIMITIVE))
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return copy.deepcopy(value)


def _merge_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key, strategy = patch_meta(path)
    if "merge" not in strategy:
        return [_strip(p) for p in patch]
    if any(isinstance(p, dict) and p.get(PATCH) == "replace" and len(p) == 1 for p in patch):
        return [_strip(p) for p in patch if not (isinstance(p, dict) and p.get(PATCH) == "replace")]
    if key is None:  # a merged list of primitives: a set union, original order first
        out = list(original)
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    out = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict):
            raise bad_request(f"strategic merge patch: elements of {'.'.join(path)} must be objects")
        if key not in item:
            raise bad_request(f"strategic merge patch: an element of {'.'.join(path)} lacks {key!r}")
        found = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get(PATCH) == "delete":
            out = [o for o in out if not (isinstance(o, dict) and o.get(key) == item[key])]
        elif found is None:
            out.append(_merge_map({}, item, path))
        else:
            out[found] = _merge_map(out[found], item, path)
    return out


def _ident(item: Any, key: str | None) -> Any:
    if key is not None and isinstance(item, dict):
        return repr(item.get(key))
    return repr(item)


def _apply_order(
    merged: list[Any], order: list[Any], server_order: list[Any], path: tuple[str, ...]
) -> list[Any]:
    """Upstream ``normalizeElementOrder``: the elements named in ``$setElementOrder`` in that
    order, merged with the server-only elements by their position in the live list."""
    key, _ = patch_meta(path)
    wanted = [_ident(o, key) for o in order]
    server = [_ident(o, key) for o in server_order]
    in_patch = sorted(
        (m for m in merged if _ident(m, key) in wanted), key=lambda m: wanted.index(_ident(m, key))
    )
    server_only = [m for m in merged if _ident(m, key) not in wanted]
    server_only.sort(key=lambda m: server.index(_ident(m, key)) if _ident(m, key) in server else len(server))
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(in_patch):
        if i >= len(server_only):
            out.append(in_patch[j])
            j += 1
        elif j >= len(in_patch):
            out.append(server_only[i])
            i += 1
        else:
            li, ri = _ident(server_only[i], key), _ident(in_patch[j], key)
            if li in server and ri in server and server.index(li) < server.index(ri):
                out.append(server_only[i])
                i += 1
            else:
                out.append(in_patch[j])
                j += 1
    return out
