"""Which revision of an intent a site runs (``IntentRevisions.choose``) and what the compile
makes of it (``ManifestState`` following rollouts): a revision without a strategy goes out to
every site at once; one with a strategy only where its Rollout handed it out; a site the
rollout has not reached keeps what an older revision gave it, or nothing."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.revisions import IntentRevisions, RevisionMissing, changed_sites
from fleetplane.controllers.rollout import RolloutState, initial_state
from fleetplane.controllers.rollout.state import SiteRecord
from fleetplane.controllers.sections import SECTIONS
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import Event, EventType

STRATEGY = {"type": "rolling"}


def intent(generation: int, cpu: str, *, strategy: bool, targets: tuple[str, ...] = ("prod",)) -> Obj:
    spec: dict[str, Any] = {"virtualSites": list(targets), "cpu": cpu}
    if strategy:
        spec["strategy"] = STRATEGY
    meta = {"name": "r", "namespace": "shop", "uid": "u1", "generation": generation, "resourceVersion": "1"}
    return {"kind": "ResourceReservation", "metadata": meta, "spec": spec}


def state(revision: int, phase: str = "Progressing", handed: tuple[str, ...] = ()) -> RolloutState:
    s = initial_state(revision, revision - 1 or None)
    s.phase = phase  # type: ignore[assignment]
    s.sites = {n: SiteRecord(wave=0, state="InProgress", handedAt=1.0) for n in handed}
    return s


def test_the_newest_revision_handed_to_a_site_wins_down_to_one_without_a_strategy() -> None:
    h = IntentRevisions(intent(1, "1", strategy=False))
    h.set_current(intent(1, "1", strategy=False))
    assert h.choose("s1") == 1  # no strategy: every site at once
    h.set_current(intent(2, "2", strategy=True))
    assert h.choose("s1") == 1  # no Rollout yet: nobody has revision 2
    h.rollouts[2] = state(2, handed=("s1",))
    assert (h.choose("s1"), h.choose("s2")) == (2, 1)
    h.set_current(intent(3, "3", strategy=True))
    h.rollouts[3] = state(3, handed=("s2",))
    # s1 keeps what revision 2's rollout gave it; s2 has 3; s3 still 1.
    assert (h.choose("s1"), h.choose("s2"), h.choose("s3")) == (2, 3, 1)
    h.rollouts[3].sites["s2"].rollbackAt = 5.0  # rolled back: what it had before
    assert h.choose("s2") == 1
    h.set_current(intent(4, "4", strategy=False))  # no strategy again: everyone at once
    assert {h.choose(s) for s in ("s1", "s2", "s3")} == {4}
    assert h.reachable() == [4]


def test_a_new_intent_with_a_strategy_reaches_nobody_until_handed_out_and_joiners_after_completion() -> None:
    h = IntentRevisions(intent(1, "1", strategy=True))
    h.set_current(intent(1, "1", strategy=True))
    assert h.choose("s1") is None
    h.rollouts[1] = state(1, handed=("s1",))
    assert (h.choose("s1"), h.choose("joiner")) == (1, None)
    h.rollouts[1].phase = "Completed"
    assert h.choose("joiner") == 1


def test_a_revision_whose_spec_is_unknown_is_waited_for_not_guessed() -> None:
    h = IntentRevisions(intent(3, "3", strategy=True))
    h.set_current(intent(3, "3", strategy=True))
    h.rollouts[2] = state(2, "Completed", handed=("s1",))  # its spec is not known (yet)
    with pytest.raises(RevisionMissing):
        h.choose("s1")
    assert h.add_spec(2, {"virtualSites": ["prod"], "cpu": "2", "strategy": STRATEGY})
    assert not h.add_spec(2, {})  # known already
    assert h.choose("s1") == 2
    assert h.revision_object(2)["metadata"]["generation"] == 2


def test_changed_sites_are_those_whose_hand_out_moved() -> None:
    old, new = state(2, handed=("a",)), state(2, handed=("a", "b"))
    assert changed_sites(old, new) == ({"b"}, False)
    done = state(2, "Completed", handed=("a", "b"))
    assert changed_sites(new, done) == (set(), True)  # joiners now get it too
    assert changed_sites(None, new) == ({"a", "b"}, False)


def test_reading_a_status_again_reuses_the_unchanged_site_records() -> None:
    """A progress write carries every site's record; re-reading it keeps the records that did
    not change (same objects), parses the rest, and gives what a fresh parse gives."""
    first = state(2, handed=("a", "b")).to_dict()
    first["sites"]["c"] = SiteRecord(wave=1).to_dict()
    old = RolloutState.from_dict(first)
    second = {**first, "sites": {**first["sites"], "c": SiteRecord(wave=1, handedAt=5.0).to_dict()}}
    second["sites"].pop("b")
    second["sites"]["d"] = SiteRecord(wave=1, handedAt=6.0).to_dict()
    new = RolloutState.from_dict(second, (first["sites"], old))
    assert new == RolloutState.from_dict(second)
    assert new.sites["a"] is old.sites["a"]  # unchanged: the same record
    assert new.sites["c"] is not old.sites["c"] and new.sites["c"].handedAt == 5.0
    assert changed_sites(old, new) == ({"b", "c", "d"}, False)


def ev(kind: str, obj: Obj, kind_type: EventType = EventType.MODIFIED) -> Event:
    m = obj["metadata"]
    return Event(1, kind_type, "t", kind, m.get("namespace") or "", m["name"], obj)


def rollout_obj(revision: int, st: RolloutState) -> Obj:
    return {
        "kind": "Rollout",
        "metadata": {
            "name": f"resourcereservation-r-{revision}",
            "namespace": "shop",
            "annotations": {"fleetplane.io/intent-uid": "u1"},
        },
        "spec": {"intent": {"kind": "ResourceReservation", "name": "r", "generation": revision}},
        "status": st.to_dict(),
    }


def cpu(st: ManifestState, site: str) -> int | None:
    section = (st.compile("t", site) or {}).get("reservations")
    return None if section is None else int(section["cpuMillis"])


def test_the_compile_follows_rollouts_and_recompiles_only_the_sites_handed_out() -> None:
    st = ManifestState(SECTIONS, follow_rollouts=True)
    for name in ("s1", "s2", "s3"):
        st.set_site("t", name, {"env": "prod"})
    st.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    st.apply(ev("ResourceReservation", intent(1, "1", strategy=False)))
    assert [cpu(st, s) for s in ("s1", "s2", "s3")] == [1000, 1000, 1000]
    st.apply(ev("ResourceReservation", intent(2, "2", strategy=True)))
    assert [cpu(st, s) for s in ("s1", "s2", "s3")] == [1000, 1000, 1000]  # nothing handed out yet
    assert st.apply(ev("Rollout", rollout_obj(2, state(2, "Pending")))) == {
        ("t", s) for s in ("s1", "s2", "s3")
    }
    assert st.apply(ev("Rollout", rollout_obj(2, state(2, handed=("s2",))))) == {("t", "s2")}
    assert [cpu(st, s) for s in ("s1", "s2", "s3")] == [1000, 2000, 1000]
    assert st.compile("t", "s2")["reservations"]["revisions"] == {"shop/r": 2}  # type: ignore[index]
    assert st.compile("t", "s1")["reservations"]["revisions"] == {"shop/r": 1}  # type: ignore[index]
    # Without following rollouts (a plan's end state) every site gets the current revision.
    plain = ManifestState(SECTIONS)
    plain.set_site("t", "s1", {"env": "prod"})
    plain.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    plain.apply(ev("ResourceReservation", intent(2, "2", strategy=True)))
    assert cpu(plain, "s1") == 2000


def test_a_site_only_gets_a_revision_that_targets_it() -> None:
    st = ManifestState(SECTIONS, follow_rollouts=True)
    st.set_site("t", "p1", {"env": "prod"})
    st.set_site("t", "d1", {"env": "dev"})
    st.set_virtual_site(("t", "shop", "prod"), parse_selector("env=prod"), 1)
    st.set_virtual_site(("t", "shop", "dev"), parse_selector("env=dev"), 1)
    st.apply(ev("ResourceReservation", intent(1, "1", strategy=False, targets=("prod",))))
    # Revision 2 adds dev, rolled out: until d1 is handed it, revision 1 (prod only) does not reach it.
    st.apply(ev("ResourceReservation", intent(2, "2", strategy=True, targets=("prod", "dev"))))
    st.apply(ev("Rollout", rollout_obj(2, state(2, handed=("p1",)))))
    assert (cpu(st, "p1"), cpu(st, "d1")) == (2000, None)
    assert st.apply(ev("Rollout", rollout_obj(2, state(2, handed=("p1", "d1"))))) == {("t", "d1")}
    assert cpu(st, "d1") == 2000
