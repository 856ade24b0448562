"""Undoing an OS upgrade's first revision puts every site it changed back on the OS it ran.

No ``os`` section means "keep the OS you run" (docs/site-manifest.md), so a rollback to "no
revision" used to leave the upgraded sites on the new version while the Rollout said they
were back. Now the rollout records what each site ran when it was handed the revision
(``sites.*.before``) and the compile asks the site for that again after the undo; a site whose
earlier version is unknown is reported ``RollbackFailed``, not "back".

The controllers run on a real store and hub with an in-process stand-in for the agents' OS
(``OsFleet``); plus the view and the section on their own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.revisions import RESTORED
from fleetplane.controllers.rollout import SiteObservation, Strategy, initial_state, step
from fleetplane.controllers.rollout.state import RolloutState, SiteRecord
from fleetplane.controllers.rollout_view import RolloutView
from fleetplane.controllers.sections import SECTIONS
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Event, EventType, Store, open_store
from fleetplane.kinds import OS_UPGRADE, SITE, SITE_MANIFEST, VIRTUAL_SITE
from tests.support.rollout_fleet import TENANT, Controllers, rollout_status
from tests.support.waiting import eventually

OLD, NEW = "fleetos-1.4.2", "fleetos-2.0.0"
SITES = [f"s{i}" for i in range(6)]
ROLLOUT = "osupgrade-up-1"


@dataclass
class OsFleet:
    """Each site runs one OS version and applies its manifest's ``os`` section a moment later,
    as the sim driver does: the version it names runs (or, on a site in ``bad``, installing
    ``NEW`` fails and it stays where it was); no section: it keeps what it runs."""

    store: Store
    sites: list[str]
    bad: set[str] = field(default_factory=set)
    running: dict[str, str] = field(default_factory=dict)

    def _report(self, name: str) -> None:
        man = self.store.get_or_none(TENANT, SITE_MANIFEST.kind, "", name)
        site = self.store.get(TENANT, SITE.kind, "", name)
        status = dict(site.get("status") or {})
        generation = man["metadata"]["generation"] if man is not None else None
        if status.get("manifest") is not None and status["manifest"]["generation"] == generation:
            return
        items: list[dict[str, Any]] = []
        section = ((man or {}).get("spec") or {}).get("sections", {}).get("os")
        if section is not None:
            version = section["version"]
            item = {"section": "os", "name": version, "state": "Applied"}
            if name in self.bad and version == NEW:
                item = {**item, "state": "Failed", "reason": f"upgrade to {NEW} fell back: install failed"}
            else:
                self.running[name] = version
            items.append(item)
        status["phase"] = "Online"
        status["os"] = {"current": self.running.setdefault(name, OLD)}
        status["osVersion"] = self.running[name]
        if generation is not None:
            state = "Failed" if any(i["state"] == "Failed" for i in items) else "Applied"
            status["manifest"] = {
                "generation": generation,
                "hash": man["spec"]["hash"],  # type: ignore[index]
                "state": state,
                "items": items,
            }
        self.store.update(TENANT, {**site, "status": status}, part="status")

    async def run(self) -> None:
        while True:
            for name in self.sites:
                await asyncio.to_thread(self._report, name)
            await asyncio.sleep(0.05)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    for name in SITES:
        s.create(TENANT, SITE.normalize({"metadata": {"name": name, "labels": {"env": "prod"}}}))
    s.create(
        TENANT,
        VIRTUAL_SITE.normalize(
            {"metadata": {"name": "prod", "namespace": "shop"}, "spec": {"selector": "env=prod"}}
        ),
    )
    yield s
    s.close()


def upgrade(version: str, strategy: dict[str, Any]) -> Obj:
    spec = {"virtualSites": ["prod"], "version": version, "strategy": strategy}
    return OS_UPGRADE.normalize({"metadata": {"name": "up", "namespace": "shop"}, "spec": spec})


until = functools.partial(eventually, timeout=20.0)  # a rollout takes a few steps


def os_section(store: Store, site: str) -> dict[str, Any] | None:
    man = store.get_or_none(TENANT, SITE_MANIFEST.kind, "", site)
    found: dict[str, Any] | None = ((man or {}).get("spec") or {}).get("sections", {}).get("os")
    return found


def test_undo_of_a_first_os_revision_puts_every_changed_site_back_on_its_old_os(store: Store) -> None:
    fleet = OsFleet(store, SITES, bad={"s3"})

    async def scenario() -> None:
        async with Controllers(store):
            task = asyncio.create_task(fleet.run())
            try:
                await until(lambda: len(fleet.running) == len(SITES))  # every site reported OLD
                store.create(TENANT, upgrade(NEW, {"batchSize": 2, "maxFailures": 0}))

                def failed() -> dict[str, Any] | None:
                    st = rollout_status(store, ROLLOUT)
                    done = st.get("phase") == "Failed" and not st["counts"]["inProgress"]
                    return st if done else None

                st = await until(failed)
                assert st["reason"] == "FailureBudgetExceeded"
                assert [fleet.running[n] for n in SITES] == [NEW, NEW, NEW, OLD, OLD, OLD]
                # What each handed-out site ran when it was handed the revision.
                assert {n: r.get("before") for n, r in st["sites"].items() if r.get("handedAt")} == {
                    n: {"version": OLD} for n in ("s0", "s1", "s2", "s3")
                }

                patch = store.get(TENANT, "Rollout", "shop", ROLLOUT)
                store.update(TENANT, {**patch, "spec": {**patch["spec"], "rollback": True}}, part="main")

                def rolled_back() -> dict[str, Any] | None:
                    st = rollout_status(store, ROLLOUT)
                    return st if st.get("phase") == "RolledBack" else None

                st = await until(rolled_back)
                assert st["counts"]["rolledBack"] == 4 and st["counts"]["rollbackFailed"] == 0
                # "Back" means back: every site runs the OS it ran before the rollout.
                assert [fleet.running[n] for n in SITES] == [OLD] * 6
                for name in ("s0", "s1", "s2", "s3"):
                    assert os_section(store, name) == {
                        "version": OLD,
                        "sources": ["shop/up"],
                        "revisions": {"shop/up": 0},
                        "restored": ["shop/up"],
                    }, name
                assert os_section(store, "s4") is None  # never handed out: nothing asked of it
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_undo_of_a_later_os_revision_still_goes_back_to_the_previous_revision(store: Store) -> None:
    fleet = OsFleet(store, SITES)

    async def scenario() -> None:
        async with Controllers(store):
            task = asyncio.create_task(fleet.run())
            try:
                await until(lambda: len(fleet.running) == len(SITES))
                store.create(TENANT, upgrade("fleetos-1.5.0", {"batchSize": "100%"}))
                await until(lambda: rollout_status(store, ROLLOUT).get("phase") == "Completed")
                await until(lambda: all(v == "fleetos-1.5.0" for v in fleet.running.values()))
                current = store.get(TENANT, OS_UPGRADE.kind, "shop", "up")
                store.update(TENANT, {**upgrade(NEW, {"batchSize": 3}), "metadata": current["metadata"]})
                await until(lambda: rollout_status(store, "osupgrade-up-2").get("phase") == "Completed")
                patch = store.get(TENANT, "Rollout", "shop", "osupgrade-up-2")
                store.update(TENANT, {**patch, "spec": {**patch["spec"], "rollback": True}}, part="main")
                await until(lambda: rollout_status(store, "osupgrade-up-2").get("phase") == "RolledBack")
                assert set(fleet.running.values()) == {"fleetos-1.5.0"}
                section = os_section(store, "s0")
                assert section is not None and section["revisions"] == {"shop/up": 1}
                assert "restored" not in section  # revision 1 is what they go back to
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))


# -- the pieces on their own ----------------------------------------------------------------------


def ev(kind: str, obj: Obj) -> Event:
    m = obj["metadata"]
    return Event(1, EventType.MODIFIED, "t", kind, m.get("namespace") or "", m["name"], obj)


def test_a_site_rolled_back_with_nothing_recorded_to_go_back_to_is_not_back() -> None:
    """The view observes what a site runs (for the engine to record at hand-out); a site rolled
    back past revision 1 whose manifest then has no os section still runs the new version, so
    it is observed failed (the engine makes it RollbackFailed), not "back"."""
    view = RolloutView()
    intent = ("t", "OsUpgrade", "shop", "up")
    manifest: Obj = {
        "kind": "SiteManifest",
        "metadata": {"name": "a", "generation": 3},
        "spec": {"sections": {}},
    }
    site: Obj = {
        "kind": "Site",
        "metadata": {"name": "a", "labels": {}},
        "status": {
            "phase": "Online",
            "os": {"current": NEW},
            "manifest": {"generation": 3, "state": "Applied"},
        },
    }
    view.apply(ev("SiteManifest", manifest))
    view.apply(ev("Site", site))
    state = initial_state(1)
    obs = view.observations(intent, state, {"a"})["a"]
    assert obs.baseline == {"version": NEW} and obs.failed == ()  # not rolling back: nothing wrong
    state.sites["a"] = SiteRecord(wave=0, state="RollingBack", handedAt=1.0, rollbackAt=2.0)
    obs = view.observations(intent, state, {"a"})["a"]
    assert obs.revision is None and obs.failed and "nothing to go back to" in obs.failed[0]
    # A policy (or a reservation) rolled back past revision 1 is simply gone: that is "back".
    policy = view.observations(("t", "NetworkPolicy", "shop", "np"), state, {"a"})["a"]
    assert (policy.revision, policy.failed, policy.baseline) == (None, (), None)


def test_the_engine_records_what_a_site_ran_and_the_compile_restores_it() -> None:
    obs = {"a": SiteObservation(labels={}, baseline={"version": OLD}), "b": SiteObservation(labels={})}
    result = step(initial_state(1), Strategy.from_spec({"batchSize": 2}), obs, 10.0)
    assert result.hand_out == ("a", "b")
    assert result.state.sites["a"].before == {"version": OLD} and result.state.sites["b"].before is None
    assert RolloutState.from_dict(result.state.to_dict()) == result.state  # kept in the status

    st = ManifestState(SECTIONS, follow_rollouts=True)
    st.set_site("t", "a", {"env": "prod"})
    st.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    intent = upgrade(NEW, {"batchSize": 2})
    intent["metadata"].update(uid="u1", generation=1)
    st.set_intent("OsUpgrade", "t", intent)
    rollout = result.state
    meta = {"name": ROLLOUT, "namespace": "shop", "annotations": {"fleetplane.io/intent-uid": "u1"}}
    ro: Obj = {
        "kind": "Rollout",
        "metadata": meta,
        "spec": {"intent": {"kind": "OsUpgrade", "name": "up", "generation": 1}},
    }
    st.set_rollout("t", {**ro, "status": rollout.to_dict()})
    assert st.compile("t", "a") == {
        "os": {"version": NEW, "sources": ["shop/up"], "revisions": {"shop/up": 1}}
    }
    rollout.sites["a"] = SiteRecord(
        wave=0, state="RollingBack", handedAt=10.0, rollbackAt=20.0, before={"version": OLD}
    )
    assert st.set_rollout("t", {**ro, "status": rollout.to_dict()}) == {("t", "a")}
    assert st.compile("t", "a") == {
        "os": {
            "version": OLD,
            "sources": ["shop/up"],
            "revisions": {"shop/up": RESTORED},
            "restored": ["shop/up"],
        }
    }


def test_a_site_only_a_rolled_back_revision_reached_gets_its_old_os_back() -> None:
    """Revision 2 added the dev sites; undoing it puts the prod sites on revision 1 and the dev
    site, which revision 1 never targeted, back on what it ran (not left on revision 2's OS)."""
    st = ManifestState(SECTIONS, follow_rollouts=True)
    st.set_site("t", "p1", {"env": "prod"})
    st.set_site("t", "d1", {"env": "dev"})
    st.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    st.set_virtual_site(("t", "shop", "dev"), parse_selector("env=dev"), 1)
    first = OS_UPGRADE.normalize(
        {
            "metadata": {"name": "up", "namespace": "shop"},
            "spec": {"virtualSites": ["prod"], "version": "fleetos-1.5.0"},
        }
    )
    first["metadata"].update(uid="u1", generation=1)
    st.set_intent("OsUpgrade", "t", first)
    second = upgrade(NEW, {"batchSize": 2})
    second["spec"]["virtualSites"] = ["prod", "dev"]
    second["metadata"].update(uid="u1", generation=2)
    st.set_intent("OsUpgrade", "t", second)
    rollout = initial_state(2, 1)
    rollout.phase = "RolledBack"
    for name, ran in (("p1", "fleetos-1.5.0"), ("d1", OLD)):
        rollout.sites[name] = SiteRecord(
            wave=0, state="RolledBack", handedAt=1.0, rollbackAt=2.0, before={"version": ran}
        )
    meta = {"name": "osupgrade-up-2", "namespace": "shop", "annotations": {"fleetplane.io/intent-uid": "u1"}}
    spec = {"intent": {"kind": "OsUpgrade", "name": "up", "generation": 2, "previousGeneration": 1}}
    st.set_rollout("t", {"kind": "Rollout", "metadata": meta, "spec": spec, "status": rollout.to_dict()})
    assert st.compile("t", "p1") == {
        "os": {"version": "fleetos-1.5.0", "sources": ["shop/up"], "revisions": {"shop/up": 1}}
    }
    assert st.compile("t", "d1") == {
        "os": {
            "version": OLD,
            "sources": ["shop/up"],
            "revisions": {"shop/up": RESTORED},
            "restored": ["shop/up"],
        }
    }
