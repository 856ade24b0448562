"""The ``os`` manifest section: an OsUpgrade on a virtual site reaches its members; when several
target one site the highest version wins and the others are listed as superseded."""

from __future__ import annotations

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.os_sections import OsContributor
from fleetplane.controllers.sections import SECTIONS
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.kinds import OS_UPGRADE


def upgrade(name: str, version: str, targets: list[str], namespace: str = "ops") -> Obj:
    return OS_UPGRADE.normalize(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"virtualSites": targets, "version": version},
        }
    )


def test_an_os_upgrade_reaches_exactly_the_members_of_its_virtual_site() -> None:
    st = ManifestState(SECTIONS)
    for name, env in (("s1", "prod"), ("s2", "prod"), ("s3", "dev")):
        st.set_site("t", name, {"env": env})
    st.set_virtual_site(("t", "ops", "prod"), parse_selector("env=prod"), 1)
    affected = st.set_intent("OsUpgrade", "t", upgrade("to-1-5", "fleetos-1.5.0", ["prod"]))
    assert affected == {("t", "s1"), ("t", "s2")}
    assert st.compile("t", "s1") == {
        "os": {"version": "fleetos-1.5.0", "sources": ["ops/to-1-5"], "revisions": {"ops/to-1-5": 1}}
    }
    assert st.compile("t", "s3") == {}
    # A site relabelled into the virtual site gets the target too.
    assert st.set_site("t", "s3", {"env": "prod"}) == {("t", "s3")}
    assert st.compile("t", "s3") == {
        "os": {"version": "fleetos-1.5.0", "sources": ["ops/to-1-5"], "revisions": {"ops/to-1-5": 1}}
    }


def test_the_highest_version_wins_and_the_lower_ones_are_listed_as_superseded() -> None:
    intents = [
        upgrade("a-old", "fleetos-1.9.3", ["prod"]),
        upgrade("b-new", "fleetos-1.10.0", ["prod"]),
        upgrade("c-same", "fleetos-1.10.0", ["edge"]),
        upgrade("d-rc", "fleetos-1.10.0-rc.1", ["edge"]),
    ]
    section = OsContributor().contribute(intents, {"metadata": {"name": "s1"}})
    assert section == {
        "version": "fleetos-1.10.0",
        "sources": ["ops/b-new", "ops/c-same"],
        "superseded": [
            {"source": "ops/a-old", "version": "fleetos-1.9.3"},
            {"source": "ops/d-rc", "version": "fleetos-1.10.0-rc.1"},
        ],
        # The intent revision each intent was compiled from (all at their first here).
        "revisions": {"ops/a-old": 1, "ops/b-new": 1, "ops/c-same": 1, "ops/d-rc": 1},
    }
    assert OsContributor().contribute([], {"metadata": {"name": "s1"}}) is None
