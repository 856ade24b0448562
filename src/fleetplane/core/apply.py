"""What ``fleetplane apply`` stores: kubectl apply's three-way merge, over the parts of an
object a file manages (``metadata.labels``, ``metadata.annotations``, ``spec``).

A plain replace lost what others had set: a site onboarded with its token's labels lost them
to the first ``apply`` of a fleet file that did not repeat them, and so silently left every
virtual site that selected them. Instead, as ``kubectl apply`` does, the file's configuration is
kept on the object (``LAST_APPLIED``) and each apply merges three ways:

- what the file says wins;
- a field the last apply set and the file no longer has is removed (the file's author took it
  out), as is a field the file sets to null;
- a field someone else set (onboarding, ``fleetplane label``, the API) and the file never named
  is kept.

Maps merge key by key, at any depth; lists and scalars are replaced whole. Both the CLI's
``apply`` and the server's plan (``fleetplane diff``) use this, so a diff shows what the apply
does.
"""

from __future__ import annotations

import json
from typing import Any

from fleetplane.core.objects import Obj

__all__ = ["LAST_APPLIED", "applied", "merge3"]

LAST_APPLIED = "fleetplane.io/last-applied-configuration"
_MANAGED_METADATA = ("labels", "annotations")


def merge3(last: Any, new: Any, live: Any) -> Any:
    """``new`` over ``live``, less what ``last`` (the previous ``new``) had and ``new`` dropped."""
    if not isinstance(new, dict):
        return new
    before = last if isinstance(last, dict) else {}
    base = live if isinstance(live, dict) else {}
    out = {k: v for k, v in base.items() if k not in new and k not in before}
    for key, value in new.items():
        if value is not None:  # null in the file: remove it
            out[key] = merge3(before.get(key), value, base.get(key))
    return out


def configuration(doc: Obj) -> dict[str, Any]:
    """The part of a file's object that ``apply`` manages, as it is kept in ``LAST_APPLIED``."""
    meta = doc.get("metadata") or {}
    out: dict[str, Any] = {}
    managed = {f: meta[f] for f in _MANAGED_METADATA if isinstance(meta.get(f), dict)}
    if "annotations" in managed:
        managed["annotations"] = {k: v for k, v in managed["annotations"].items() if k != LAST_APPLIED}
    if managed:
        out["metadata"] = managed
    if "spec" in doc:
        out["spec"] = doc["spec"]
    return out


def _last(current: Obj) -> dict[str, Any]:
    """The configuration the last apply kept on ``current`` (none: ``{}``)."""
    text = ((current.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        last = json.loads(text) if isinstance(text, str) else {}
    except ValueError:  # damaged by hand: merge as if never applied, keeping what is there
        return {}
    return last if isinstance(last, dict) else {}


def applied(current: Obj | None, doc: Obj) -> Obj:
    """The object ``apply`` of ``doc`` stores when ``current`` is what is stored (``None``: new),
    before the server's defaults; it carries the file's configuration in ``LAST_APPLIED``."""
    config = configuration(doc)
    stamp = json.dumps(config, sort_keys=True, separators=(",", ":"))
    meta = doc.get("metadata") or {}
    if current is None:
        annotations = {**(meta.get("annotations") or {}), LAST_APPLIED: stamp}
        return {**doc, "metadata": {**meta, "annotations": annotations}}
    last = _last(current)
    last_meta = last.get("metadata") or {}
    live_meta = current.get("metadata") or {}
    out_meta = dict(live_meta)
    for field in _MANAGED_METADATA:
        wanted = (config.get("metadata") or {}).get(field) or {}
        merged = merge3(last_meta.get(field), wanted, live_meta.get(field))
        if isinstance(merged, dict) and (merged or field in live_meta):
            out_meta[field] = merged
    out_meta["annotations"] = {**(out_meta.get("annotations") or {}), LAST_APPLIED: stamp}
    out = {**current, "metadata": out_meta}
    if "spec" in config or "spec" in last:
        out["spec"] = merge3(last.get("spec"), config.get("spec") or {}, current.get("spec"))
    return out
