"""IntentRevision: one stored revision (generation) of an intent's spec, for rollouts and undo.

Written only by the history controller (``controllers/history.py``; read-only over the native
API), in the intent's namespace, named ``<kind lowercased>-<name>-<generation>`` (the same
scheme as ``Rollout``). ``spec.spec`` is the intent's spec as it was at that generation, so
the compile can give a site an OLDER revision than the intent's current one while a rollout
has not reached it, or after a rollback. Per intent the controller keeps the newest
``MAX_REVISIONS`` revisions plus every revision a stored ``Rollout`` of that intent names
(its revision and previous revision); deleting the intent deletes its history.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema
from fleetplane.kinds.rollout import rollout_name

__all__ = ["INTENT_REVISION", "MAX_REVISIONS", "revision_name"]

# Revisions kept per intent, besides those a stored Rollout still names.
MAX_REVISIONS = 10


class RevisionOf(Schema):
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{0,62}$")
    name: str = Field(min_length=1, max_length=253)
    generation: int = Field(ge=1)
    uid: str | None = Field(default=None, max_length=64)  # of the intent object


class IntentRevisionSpec(Schema):
    intent: RevisionOf
    spec: dict[str, Any] = Field(default_factory=dict)  # the intent's spec at that generation


def revision_name(kind: str, name: str, generation: int) -> str:
    """``<kind lowercased>-<name>-<generation>`` (a too-long name is cut and hashed)."""
    return rollout_name(kind, name, generation)


INTENT_REVISION = KindInfo(
    kind="IntentRevision",
    plural="intentrevisions",
    short_names=("irev", "intentrevision"),
    spec_model=IntentRevisionSpec,
    scope=Scope.NAMESPACE,
    api_write_verbs=frozenset(),  # system-managed: the history controller writes them
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("KIND", "spec.intent.kind"),
        Column("INTENT", "spec.intent.name"),
        Column("GENERATION", "spec.intent.generation"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)
