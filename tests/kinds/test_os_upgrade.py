"""OsVersion (the catalogue) and OsUpgrade (the intent): what is accepted, what is refused and
which field the refusal names; version order and the latest version of a channel."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.kinds import REGISTRY
from fleetplane.kinds.os_upgrade import check_catalogue, latest, version_key


def refused(kind: str, obj: Obj) -> ApiError:
    with pytest.raises(ApiError) as exc:
        REGISTRY.get(kind).normalize(obj)
    assert (exc.value.code, exc.value.reason) == (422, "Invalid")
    return exc.value


def os_version(name: str, **spec: Any) -> Obj:
    return {"metadata": {"name": name}, "spec": spec}


def upgrade(version: Any, targets: list[str] | None = None, **spec: Any) -> Obj:
    return {
        "metadata": {"name": "to-1-5", "namespace": "ops"},
        "spec": {"virtualSites": targets or ["prod"], "version": version, **spec},
    }


def test_os_version_defaults_to_the_stable_channel() -> None:
    out = REGISTRY.get("OsVersion").normalize(os_version("fleetos-1.5.0", releaseDate="2026-01-15"))
    assert out["spec"] == {"channel": "stable", "releaseDate": "2026-01-15"}
    assert REGISTRY.resolve("osv").kind == REGISTRY.resolve("osversions").kind == "OsVersion"
    assert [c.header for c in REGISTRY.get("OsVersion").columns if not c.wide_only] == [
        "VERSION",
        "CHANNEL",
        "RELEASED",
        "AGE",
    ]


@pytest.mark.parametrize("name", ["fleetos", "latest", "fleetos-1", "fleetos-1.5.x", "fleetos-1.5.0.1.2"])
def test_os_version_must_be_named_by_a_version(name: str) -> None:
    err = refused("OsVersion", os_version(name))
    assert [c.field for c in err.causes] == ["metadata.name"]
    assert "is not a version" in err.causes[0].message


def test_os_version_refuses_a_bad_channel_and_date() -> None:
    err = refused("OsVersion", os_version("fleetos-1.5.0", channel="Stable!", releaseDate="soon"))
    assert sorted(c.field for c in err.causes) == ["spec.channel", "spec.releaseDate"]


def test_os_upgrade_accepts_a_version_and_shows_it_in_its_columns() -> None:
    out = REGISTRY.get("OsUpgrade").normalize(upgrade("fleetos-2.0.0-rc.1", ["prod", "shared/edge"]))
    assert out["spec"] == {"virtualSites": ["prod", "shared/edge"], "version": "fleetos-2.0.0-rc.1"}
    headers = [c.header for c in REGISTRY.get("OsUpgrade").columns if not c.wide_only]
    assert headers == ["NAMESPACE", "NAME", "VIRTUAL SITES", "VERSION", "AGE"]


@pytest.mark.parametrize("version", ["FleetOS 2.0", "2", "v1.5.0", "fleetos_1.5", ""])
def test_os_upgrade_refuses_a_bad_version_string_naming_the_field(version: str) -> None:
    err = refused("OsUpgrade", upgrade(version))
    assert [c.field for c in err.causes] == ["spec.version"]


def test_os_upgrade_needs_a_version_and_visible_targets() -> None:
    err = refused(
        "OsUpgrade", {"metadata": {"name": "u", "namespace": "ops"}, "spec": {"virtualSites": ["x"]}}
    )
    assert [(c.field, c.reason) for c in err.causes] == [("spec.version", "FieldValueRequired")]
    err = refused("OsUpgrade", upgrade("fleetos-1.5.0", ["other/prod"]))
    assert [c.field for c in err.causes] == ["spec.virtualSites[0]"]


def test_catalogue_check_names_the_unknown_version() -> None:
    catalogue = {("OsVersion", "", "fleetos-1.5.0"): os_version("fleetos-1.5.0")}

    def lookup(kind: str, namespace: str, name: str) -> Obj | None:
        return catalogue.get((kind, namespace, name))

    assert check_catalogue(upgrade("fleetos-1.5.0"), lookup) == []
    [cause] = check_catalogue(upgrade("fleetos-9.9.9"), lookup)
    assert cause.field == "spec.version"
    assert 'OS version "fleetos-9.9.9" is not in the catalogue' in cause.message


def test_versions_order_numerically_with_releases_above_their_pre_releases() -> None:
    ordered = [
        "fleetos-1.4.2",
        "fleetos-1.9.3-rc.1",
        "fleetos-1.9.3-rc.2",
        "fleetos-1.9.3-rc.10",
        "fleetos-1.9.3",
        "fleetos-1.10.0",
        "fleetos-2.0",
    ]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("fleetos-2.0") == version_key("fleetos-2.0.0")


def test_latest_is_the_highest_version_of_a_channel() -> None:
    catalogue = [
        os_version("fleetos-1.4.2", channel="stable"),
        os_version("fleetos-1.10.0", channel="stable"),
        os_version("fleetos-1.9.0"),  # stored objects are defaulted; a missing channel is stable
        os_version("fleetos-2.0.0-rc.1", channel="beta"),
    ]
    assert latest(catalogue) == "fleetos-1.10.0"
    assert latest(catalogue, "beta") == "fleetos-2.0.0-rc.1"
    assert latest(catalogue, "lts") is None


def test_site_status_carries_the_reported_os() -> None:
    status = {
        "phase": "Online",
        "os": {
            "current": "fleetos-1.4.2",
            "target": "fleetos-1.5.0",
            "state": "Idle",
            "slots": {"A": "fleetos-1.4.2", "B": None},
            "active": "A",
            "running": "A",
            "lastResult": {"version": "fleetos-1.5.0", "outcome": "FellBack", "reason": "install failed"},
        },
    }
    out = REGISTRY.get("Site").normalize({"metadata": {"name": "tokyo-1"}, "status": status})
    assert out["status"]["os"]["lastResult"]["outcome"] == "FellBack"
    assert out["status"]["os"]["target"] == "fleetos-1.5.0"
