"""Infrastructure software (OS) upgrades: the ``OsVersion`` catalogue and the ``OsUpgrade`` intent.

``OsVersion`` is tenant-wide and named by the version itself (``fleetos-1.5.0``): one entry
per version the tenant's fleet may run, with its channel, release date and description.
It is tenant-scoped rather than system-scoped because tenants curate what their fleet may
run (like the artifact repository) and tenant keys cannot read system objects. The
*latest* version of a channel is derived, never stored: the highest version in it.

``OsUpgrade`` is an intent ("these virtual sites run OS version V"); ``spec.version`` must
name an ``OsVersion`` of the tenant, checked when the spec is written (``check_catalogue``,
run by the server through ``KindInfo.extra["references"]``). ``spec.strategy`` (on every
intent, ``kinds/intents.py``) says how a new version rolls out.

A version string is ``[product-]MAJOR.MINOR[.PATCH[.BUILD]][-PRE]`` in lower case, e.g.
``fleetos-1.4.2``, ``2.0`` or ``fleetos-2.0.0-rc.1``; ``version_key`` orders them
(product, then numbers, then a release above its pre-releases).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import Field, field_validator

from fleetplane.core.errors import Cause
from fleetplane.core.objects import Obj
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema
from fleetplane.kinds.intents import IntentSpec, check_visible_targets

__all__ = ["OS_UPGRADE", "OS_UPGRADE_KINDS", "OS_VERSION", "SiteOsStatus", "check_catalogue", "latest"]
__all__ += ["version_key", "version_problem"]

DEFAULT_CHANNEL = "stable"
MAX_VERSION_LENGTH = 128
_VERSION = re.compile(
    r"^(?:(?P<product>[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*)-)?"
    r"(?P<release>\d{1,9}(?:\.\d{1,9}){1,3})"
    r"(?:-(?P<pre>[a-z0-9]+(?:\.[a-z0-9]+)*))?$"
)
_CHANNEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# (product, release numbers padded to 4, 1 for a release / 0 for a pre-release, pre parts)
VersionKey = tuple[str, tuple[int, ...], int, tuple[tuple[int, int, str], ...]]
# kind, namespace, name -> the object or None; the server binds it to the caller's tenant.
Lookup = Callable[[str, str, str], Obj | None]


def version_problem(value: str) -> str | None:
    """Why ``value`` is not a version string, or ``None``."""
    if len(value) > MAX_VERSION_LENGTH:
        return f"a version has at most {MAX_VERSION_LENGTH} characters"
    if not _VERSION.match(value):
        return (
            f"{value!r} is not a version: use [product-]MAJOR.MINOR[.PATCH[.BUILD]][-PRE] in lower case, "
            'e.g. "fleetos-1.4.2", "2.0" or "fleetos-2.0.0-rc.1"'
        )
    return None


def version_key(value: str) -> VersionKey:
    """A sort key: ``fleetos-1.10.0 > fleetos-1.9.3 > fleetos-1.9.3-rc.2 > fleetos-1.9.3-rc.1``.
    A string that is not a version sorts below every version (by its text)."""
    match = _VERSION.match(value)
    if match is None:
        return ("", (-1,), 0, ((1, 0, value),))
    numbers = tuple(int(n) for n in match["release"].split("."))
    pre = match["pre"]
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (match["product"] or "", numbers + (0,) * (4 - len(numbers)), 0 if pre else 1, parts)


def _version(value: str) -> str:
    if why := version_problem(value):
        raise ValueError(why)
    return value


class OsVersionSpec(Schema):
    channel: str = Field(default=DEFAULT_CHANNEL, max_length=63)
    releaseDate: dt.date | None = None
    description: str | None = Field(default=None, max_length=4096)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not _CHANNEL.match(value):
            raise ValueError(f"{value!r}: a channel is a lower-case DNS label, e.g. stable, beta, lts")
        return value


def check_version_name(obj: Obj) -> list[Cause]:
    """An ``OsVersion`` is named by its version string."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    why = version_problem(name)
    return [Cause("metadata.name", f"an OsVersion is named by its version: {why}")] if why else []


def latest(versions: Iterable[Obj], channel: str = DEFAULT_CHANNEL) -> str | None:
    """The highest version of ``channel`` in the catalogue, or ``None`` when it has none."""
    names = [
        str(v["metadata"]["name"])
        for v in versions
        if (v.get("spec") or {}).get("channel", DEFAULT_CHANNEL) == channel
    ]
    return max(names, key=version_key, default=None)


class OsUpgradeSpec(IntentSpec):
    version: str = Field(max_length=MAX_VERSION_LENGTH)
    description: str | None = Field(default=None, max_length=4096)

    @field_validator("version")
    @classmethod
    def _valid(cls, value: str) -> str:
        return _version(value)


def check_catalogue(obj: Obj, lookup: Lookup) -> list[Cause]:
    """``spec.version`` names an ``OsVersion`` of the tenant (checked when the spec is written;
    an intent stored before its version was deleted keeps targeting it)."""
    version = str((obj.get("spec") or {}).get("version") or "")
    if lookup(OS_VERSION.kind, "", version) is not None:
        return []
    return [
        Cause(
            "spec.version",
            f'OS version "{version}" is not in the catalogue: no OsVersion "{version}" '
            "(fleetplane get osversions lists the available versions)",
            "FieldValueNotFound",
        )
    ]


class OsLastResult(Schema):
    version: str = Field(max_length=MAX_VERSION_LENGTH)
    outcome: Literal["Committed", "FellBack"]
    reason: str | None = Field(default=None, max_length=4096)
    at: str | None = Field(default=None, max_length=64)


class SiteOsStatus(Schema):
    """``Site.status.os`` as the agent reports it: what runs, what the manifest asks for, the
    A/B slots, and the outcome of the last upgrade attempt."""

    current: str | None = Field(default=None, max_length=253)
    target: str | None = Field(default=None, max_length=253)
    state: str = Field(default="Idle", max_length=64)  # Idle | Installing | Rebooting | HealthCheck | …
    slots: dict[str, str | None] = Field(default_factory=dict, max_length=8)
    active: str | None = Field(default=None, max_length=16)  # the committed boot slot
    running: str | None = Field(default=None, max_length=16)  # the slot booted now
    lastResult: OsLastResult | None = None


OS_VERSION = KindInfo(
    kind="OsVersion",
    plural="osversions",
    short_names=("osv",),
    spec_model=OsVersionSpec,
    scope=Scope.TENANT,
    validators=(check_version_name,),
    columns=(
        Column("VERSION", "metadata.name"),
        Column("CHANNEL", "spec.channel"),
        Column("RELEASED", "spec.releaseDate"),
        Column("DESCRIPTION", "spec.description", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

OS_UPGRADE = KindInfo(
    kind="OsUpgrade",
    plural="osupgrades",
    short_names=("osu", "osupgrade"),
    spec_model=OsUpgradeSpec,
    scope=Scope.NAMESPACE,
    validators=(check_visible_targets,),
    columns=(
        Column("NAMESPACE", "metadata.namespace"),
        Column("NAME", "metadata.name"),
        Column("VIRTUAL SITES", "spec.virtualSites"),
        Column("VERSION", "spec.version"),
        Column("DESCRIPTION", "spec.description", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
    extra={"references": check_catalogue},
)

OS_UPGRADE_KINDS: tuple[KindInfo, ...] = (OS_VERSION, OS_UPGRADE)
