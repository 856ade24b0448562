"""Secrets at rest, generically: values under a kind's ``sealed_paths`` are sealed with the
server's :class:`~fleetplane.core.envelope.Envelope` before they reach the store and opened
only on their way out of the API (``present``), after ``authorize`` let the caller read.

The sealing context is ``tenant/kind/namespace/name``, so a sealed value copied into another
object does not open there. Values already sealed for this very object are kept as they are
(a patch that does not touch them round-trips the stored form), and so is the stored sealed
form of a plaintext value that opens to the same plaintext (sealing is randomized: re-sending
an unchanged secret is then a no-op, while a changed one is a change).
"""

from __future__ import annotations

import hmac
from typing import Any

from fleetplane.core.envelope import Envelope, EnvelopeError, is_sealed, kek_from_settings
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.core.registry import KindInfo
from fleetplane.server.context import ServerContext


def envelope(ctx: ServerContext) -> Envelope:
    """The server's envelope, built once from ``--kek`` (default ``file:<data-dir>/kek.key``)."""
    env = ctx.extras.get("envelope")
    if not isinstance(env, Envelope):
        env = Envelope(kek_from_settings(ctx.settings.resolved_kek()))
        ctx.extras["envelope"] = env
    return env


def context_of(tenant: str, obj: Obj) -> bytes:
    m = obj.get("metadata") or {}
    return f"{tenant}/{obj.get('kind', '')}/{m.get('namespace') or ''}/{m.get('name', '')}".encode()


def _parent(obj: Obj, path: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    """The (copied) dict holding the leaf of ``path`` inside ``obj``, copying along the way."""
    head, _, leaf = path.rpartition(".")
    parent: dict[str, Any] = obj
    for part in head.split(".") if head else []:
        child = parent.get(part)
        if not isinstance(child, dict):
            if not create:
                return None, leaf
            child = {}
        child = dict(child)
        parent[part] = child
        parent = child
    return parent, leaf


def _map(value: Any, fn: Any) -> Any:
    """``fn(string, key)`` over a string leaf (key ``None``) or a dict's string values."""
    if isinstance(value, str):
        return fn(value, None)
    if isinstance(value, dict):
        return {k: fn(v, k) if isinstance(v, str) else v for k, v in value.items()}
    return value


def _stored_at(obj: Obj | None, path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def seal(ctx: ServerContext, tenant: str, info: KindInfo, obj: Obj, current: Obj | None = None) -> Obj:
    """``obj`` with every value under ``info.sealed_paths`` sealed for this object.

    With ``current`` (the stored object being replaced), a plaintext value equal to what its
    stored counterpart opens to keeps the stored sealed form; any other value is sealed anew.
    """
    if not info.sealed_paths:
        return obj
    env, context = envelope(ctx), context_of(tenant, obj)
    same_object = current is not None and context_of(tenant, current) == context

    def opens(value: str) -> bytes | None:
        try:
            return env.open_text(value, context=context)
        except EnvelopeError:
            return None

    out = {**obj}
    for path in info.sealed_paths:
        stored = _stored_at(current, path) if same_object else None

        def one(value: str, key: str | None, stored: Any = stored) -> str:
            if is_sealed(value) and opens(value) is not None:
                return value  # already sealed for this object
            # Not sealed, or sealed for something else: treat it as plaintext.
            old = stored if key is None else stored.get(key) if isinstance(stored, dict) else None
            if isinstance(old, str) and is_sealed(old):
                plain = opens(old)
                if plain is not None and hmac.compare_digest(plain, value.encode()):
                    return old  # unchanged: keep the stored sealed form
            return env.seal_text(value, context=context)

        parent, leaf = _parent(out, path, create=False)
        if parent is not None and leaf in parent:
            parent[leaf] = _map(parent[leaf], one)
    return out


def unseal(ctx: ServerContext, tenant: str, info: KindInfo, obj: Obj) -> Obj:
    """``obj`` with sealed values opened: only for responses to callers allowed to read it."""
    if not info.sealed_paths:
        return obj
    env, context = envelope(ctx), context_of(tenant, obj)

    def one(value: str, _key: str | None) -> str:
        if not is_sealed(value):
            return value
        try:
            return env.open_text(value, context=context).decode()
        except (EnvelopeError, UnicodeDecodeError) as exc:
            raise ApiError(
                500, "InternalError", f"a sealed value of {info.kind} cannot be opened: {exc}"
            ) from None

    out = {**obj}
    for path in info.sealed_paths:
        parent, leaf = _parent(out, path, create=False)
        if parent is not None and leaf in parent:
            parent[leaf] = _map(parent[leaf], one)
    return out


def present(ctx: ServerContext, tenant: str, info: KindInfo, obj: Obj) -> Obj:
    """What the API returns for a stored object: hidden paths removed, sealed ones opened."""
    return info.redact(unseal(ctx, tenant, info, obj))
