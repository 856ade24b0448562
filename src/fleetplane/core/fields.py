"""Field selectors (``metadata.name=x,status.phase!=Online``) as Kubernetes lists take them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetplane.core.errors import Cause, bad_request
from fleetplane.core.objects import Obj


def _value_at(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None or isinstance(node, dict | list) else str(node)


def parse_field_selector(
    text: str, allowed: set[str] | None = None, aliases: dict[str, str] | None = None
) -> Callable[[Obj], bool] | None:
    """A predicate for ``text``; ``None`` when it selects everything. Only ``=``, ``==`` and
    ``!=`` exist, as in Kubernetes; ``allowed`` limits the field paths when given; ``aliases``
    maps a path as clients write it to where the kind stores it (``reason`` -> ``spec.reason``)."""
    terms: list[tuple[str, bool, str]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        op = next((o for o in ("!=", "==", "=") if o in raw), None)
        if op is None:
            raise bad_request(
                f'invalid field selector "{raw}": expected field=value, field==value or field!=value',
                [Cause("fieldSelector", "invalid syntax")],
            )
        path, _, value = raw.partition(op)
        path = path.strip()
        if allowed is not None and path not in allowed:
            raise bad_request(
                f"field label not supported: {path}", [Cause("fieldSelector", f"{path} is not supported")]
            )
        terms.append(((aliases or {}).get(path, path), op != "!=", value.strip()))
    if not terms:
        return None

    def matches(obj: Obj) -> bool:
        return all((_value_at(obj, p) == v) == eq for p, eq, v in terms)

    return matches
