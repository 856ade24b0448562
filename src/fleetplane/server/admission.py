"""Reference checks that need the store: a kind may declare ``extra["references"]``, a
``(obj, lookup) -> list[Cause]`` that the server runs when a client writes the object's
spec (e.g. an ``OsUpgrade``'s ``spec.version`` must name an ``OsVersion``). ``lookup``
reads the caller's tenant only. Status writes do not re-check, so an intent whose referent
was deleted later keeps working and can still have its status written."""

from __future__ import annotations

from collections.abc import Callable

from fleetplane.core.errors import Cause, invalid
from fleetplane.core.objects import Obj
from fleetplane.core.registry import KindInfo
from fleetplane.server.context import ServerContext

References = Callable[[Obj, Callable[[str, str, str], Obj | None]], list[Cause]]


def check_references(ctx: ServerContext, tenant: str, info: KindInfo, obj: Obj, current: Obj | None) -> None:
    """Raise ``Invalid`` (422, the offending fields named) when ``obj``'s references do not resolve."""
    check: References | None = info.extra.get("references")
    if check is None or (current is not None and current.get("spec") == obj.get("spec")):
        return

    def lookup(kind: str, namespace: str, name: str) -> Obj | None:
        return ctx.store.get_or_none(tenant, kind, namespace, name) if name else None

    causes = check(obj, lookup)
    if causes:
        raise invalid(info.kind, str((obj.get("metadata") or {}).get("name") or ""), causes)
