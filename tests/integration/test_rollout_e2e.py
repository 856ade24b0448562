"""Rollouts end to end: the real server process and ``fleetplane simulate`` processes.

One fleet for the whole module (``--profile fast``: an OS upgrade takes seconds):

- ``main``: 100 sites (``pool=main``) from two simulators: 97 healthy ones (``m-…``) and 3 whose
  OS installs fail (``a-…``, ``--fault install_failure``; named first, so they are in wave 0);
- ``ab``: 3 group-A sites whose upgraded OS fails its health check (``ga-…``, ``grp=a``) and
  5 healthy group-B sites (``gb-…``, ``grp=b``);
- ``late``: 2 sites outside every target until a test relabels them in.

Each test uses its own intent: a rolling OS upgrade stops at its failure budget; a canary
reservation is promoted after its soak while sites join mid-way and after; an A/B OS upgrade
rolls group A back because its health is worse; a NetworkPolicy is paused, resumed, aborted
and undone; the control plane is killed mid-rollout and resumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_fleet_e2e import Pending, Simulator, manifests, sites, wait_for
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
V = "fleetplane.io/v1"
OLD, NEW = "fleetos-1.4.2", "fleetos-1.5.0"
MAIN, BAD, GROUP_A, GROUP_B, LATE = 97, 3, 3, 5, 2


class Fleet:
    def __init__(self, server: ServerProcess, sims: list[Simulator]) -> None:
        self.server, self.sims = server, sims

    def logs(self) -> tuple[Any, ...]:
        # On a timeout: each simulator's log tail, which agents are silent and where they
        # wait (SIGUSR1), and the server's log tail.
        return (*(s.output for s in self.sims), *(s.silent for s in self.sims), self.server.log_tail)


def create(server: ServerProcess, plural: str, obj: dict[str, Any], namespace: str | None = None) -> None:
    with server.client() as c:
        c.create(plural, {"apiVersion": V, **obj}, namespace)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("rollouts")
    server = ServerProcess(root / "server").start()
    sims: list[Simulator] = []
    try:
        with server.client() as c:
            token = c.create(
                "registrationtokens",
                {
                    "apiVersion": V,
                    "kind": "RegistrationToken",
                    "metadata": {"name": "fleet"},
                    "spec": {"autoAccept": True},
                },
            )["status"]["token"]
        for name, date in ((OLD, "2025-06-01"), (NEW, "2026-02-01")):
            create(
                server,
                "osversions",
                {"kind": "OsVersion", "metadata": {"name": name}, "spec": {"releaseDate": date}},
            )
        for ns, name, selector in (
            ("ops", "main", "pool=main"),
            ("ops", "ab", "pool=ab"),
            ("ops", "late", "late=yes"),
            ("default", "main", "pool=main"),
        ):
            create(
                server,
                "virtualsites",
                {"kind": "VirtualSite", "metadata": {"name": name}, "spec": {"selector": selector}},
                ns,
            )
        token_file = root / "token"
        token_file.write_text(token + "\n")
        fast = ("--profile", "fast", "--heartbeat", "3")

        def sim(name: str, count: int, seed: int, *extra: str) -> Simulator:
            return Simulator(
                server,
                root / name,
                token_file,
                "--sites",
                str(count),
                "--seed",
                str(seed),
                "--prefix",
                name,
                *fast,
                *extra,
            )

        sims = [
            sim("m", MAIN, 5, "--label", "pool=main"),
            sim("a", BAD, 6, "--label", "pool=main", "--fault", "install_failure"),
            sim(
                "ga",
                GROUP_A,
                7,
                "--label",
                "pool=ab",
                "--label",
                "grp=a",
                "--fault",
                "install_failure:stage=health_check",
            ),
            sim("gb", GROUP_B, 8, "--label", "pool=ab", "--label", "grp=b"),
            sim("late", LATE, 9, "--label", "pool=late"),
        ]
        for s in sims:
            s.start()
        f = Fleet(server, sims)
        total = MAIN + BAD + GROUP_A + GROUP_B + LATE

        def online() -> bool | Pending:
            found = sites(server)
            ready = [
                n
                for n, s in found.items()
                if (s.get("status") or {}).get("phase") == "Online"
                and ((s["status"].get("os") or {}).get("current") == OLD)
            ]
            return len(ready) == total or Pending(f"{len(ready)}/{total} sites Online on {OLD}")

        wait_for("the fleet to onboard", online, 120, *f.logs())
        yield f
    finally:
        for s in sims:
            s.stop()
        server.stop()


def rollout(server: ServerProcess, name: str, namespace: str = "ops") -> dict[str, Any]:
    """The Rollout (``{}`` until the controller has created it)."""
    with server.client() as c:
        found: list[dict[str, Any]] = c.list_all("rollouts", namespace=namespace)
    return next((r for r in found if r["metadata"]["name"] == name), {})


def phase_is(server: ServerProcess, name: str, *phases: str, namespace: str = "ops") -> Any:
    def check() -> dict[str, Any] | Pending:
        status = rollout(server, name, namespace).get("status") or {}
        if status.get("phase") in phases:
            return status
        return Pending(
            f"{name}: {status.get('phase')} {status.get('counts')} {status.get('message')}"
            + in_progress(server, status)
        )

    return check


def in_progress(server: ServerProcess, status: dict[str, Any]) -> str:
    """For a timeout message: the sites a rollout waits on, as the server holds them (what
    they last reported, which manifest generation they were given)."""
    waiting = sorted(n for n, r in (status.get("sites") or {}).items() if r.get("state") == "InProgress")
    if not waiting:
        return ""
    found, mans = sites(server), manifests(server)
    lines = []
    for site in waiting[:5]:
        st = (found.get(site) or {}).get("status") or {}
        given = (mans.get(site) or {}).get("metadata", {}).get("generation")
        lines.append(
            f"\n  waiting on {site}: rollout {status['sites'][site]}; site {st.get('phase')}, "
            f"last seen {st.get('lastSeen')}, reports {st.get('manifest')}; manifest generation {given}"
        )
    return "".join(lines)


def act(server: ServerProcess, name: str, namespace: str = "ops", **fields: bool) -> None:
    with server.client() as c:
        c.patch("rollouts", name, {"spec": fields}, namespace)


def os_item(site: dict[str, Any]) -> dict[str, Any]:
    items = ((site.get("status") or {}).get("manifest") or {}).get("items") or []
    return next((i for i in items if i["section"] == "os"), {})


def revision_in(manifest: dict[str, Any], section: str, source: str) -> int | None:
    """The revision of intent ``source`` (namespace/name) a site's manifest carries."""
    body = manifest["spec"]["sections"].get(section) or {}
    if "revisions" in body:
        found: int | None = body["revisions"].get(source)
        return found
    return next((p["generation"] for p in body.get("policies") or [] if p["policy"] == source), None)


def applied(server: ServerProcess, names: set[str], section: str, source: str, revision: int | None) -> Any:
    """Every site of ``names`` has ``revision`` of ``source`` in its manifest and reports that
    manifest generation (not InProgress)."""

    def check() -> bool | Pending:
        found, mans = sites(server), manifests(server)
        for name in sorted(names):
            man = mans[name]
            got = revision_in(man, section, source)
            if got != revision:
                return Pending(f"{name}: manifest has revision {got} of {source}, want {revision}")
            rep = (found[name].get("status") or {}).get("manifest") or {}
            if rep.get("generation") != man["metadata"]["generation"] or rep.get("state") == "Applying":
                return Pending(f"{name}: reports {rep.get('generation')} {rep.get('state')}")
        return True

    return check


def main_sites(server: ServerProcess) -> set[str]:
    return set(sites(server, "pool=main"))


# -- 1. rolling OS upgrade, 100 sites, 3 install failures: stops at the budget ------------------------


def test_rolling_os_upgrade_stops_at_its_failure_budget(fleet: Fleet) -> None:
    server = fleet.server
    create(
        server,
        "osupgrades",
        {
            "kind": "OsUpgrade",
            "metadata": {"name": "fleetos"},
            "spec": {
                "virtualSites": ["main"],
                "version": NEW,
                "strategy": {
                    "type": "rolling",
                    "batchSize": "25%",
                    "maxFailures": 2,
                    "applyTimeoutSeconds": 60,
                },
            },
        },
        "ops",
    )
    status = wait_for(
        "the rollout to stop", phase_is(server, "osupgrade-fleetos-1", "Failed"), 60, *fleet.logs()
    )
    bad = {n for n in main_sites(server) if n.startswith("a-")}
    assert len(bad) == BAD and len(main_sites(server)) == MAIN + BAD
    # It stopped at its failure budget and says which sites failed and why.
    assert status["reason"] == "FailureBudgetExceeded"
    assert status["failureBudget"] == 2 and status["counts"]["failed"] == BAD
    assert "3 sites failed, more than maxFailures 2" in status["message"]
    for name in bad:
        assert name in status["message"]
        assert status["sites"][name]["state"] == "Failed"
        assert "injected install failure" in status["sites"][name]["reason"]
    # Wave 0 (the 3 bad sites first by name, then 22 good ones) went out; nothing after it.
    assert [w["role"] for w in status["waves"]] == ["batch"] * 4
    first = set(status["waves"][0]["sites"])
    assert bad <= first and len(first) == 25
    assert status["counts"]["pending"] == 75

    # The good sites in flight when it stopped still finish, and their results are recorded.
    def finished() -> dict[str, Any] | Pending:
        st = rollout(server, "osupgrade-fleetos-1")["status"]
        return st if st["counts"]["inProgress"] == 0 else Pending(f"counts {st['counts']}")

    status = wait_for("wave 0 to finish", finished, 30, *fleet.logs())
    assert status["phase"] == "Failed" and status["counts"]["succeeded"] == 22
    found, mans = sites(server, "pool=main"), manifests(server)
    for name, s in found.items():
        os_section = mans[name]["spec"]["sections"].get("os")
        if name in first:
            assert os_section["version"] == NEW and os_section["revisions"] == {"ops/fleetos": 1}
        else:
            assert os_section is None, name  # never handed out: nothing asked of it
            assert s["status"]["os"]["current"] == OLD

    # The failed sites fell back to their old slot on their own; the good ones of wave 0 run NEW.
    for name in first:
        reported = found[name]["status"]["os"]
        if name in bad:
            assert reported["current"] == OLD and reported["lastResult"]["outcome"] == "FellBack"
            assert os_item(found[name])["state"] == "Failed"
        else:
            assert reported["current"] == NEW and os_item(found[name])["state"] == "Applied"
    # Its history: revision 1 of the intent is stored, read-only.
    with server.client() as c:
        revision = c.get("intentrevisions", "osupgrade-fleetos-1", "ops")
        assert revision["spec"]["intent"] == {
            "kind": "OsUpgrade",
            "name": "fleetos",
            "generation": 1,
            "uid": c.get("osupgrades", "fleetos", "ops")["metadata"]["uid"],
        }
        assert revision["spec"]["spec"]["version"] == NEW
    http = httpx.Client(
        base_url=server.url, verify=server.tls, headers={"Authorization": f"Bearer {server.admin_key}"}
    )
    with http:
        resp = http.post(
            f"/apis/{V}/namespaces/ops/intentrevisions", json={**revision, "metadata": {"name": "x"}}
        )
        assert resp.status_code == 403, resp.text
        # A bad strategy is refused, naming the field.
        resp = http.post(
            f"/apis/{V}/namespaces/ops/osupgrades",
            json={
                "apiVersion": V,
                "kind": "OsUpgrade",
                "metadata": {"name": "bad"},
                "spec": {"virtualSites": ["main"], "version": NEW, "strategy": {"batchSize": "150%"}},
            },
        )
        assert resp.status_code == 422, resp.text
        causes = [c["field"] for c in resp.json()["details"]["causes"]]
        assert causes == ["spec.strategy.batchSize"]

    # Undo of this first revision. There is no older revision, and no os section would mean
    # "keep what you run": each site goes back to the OS it ran when it was handed revision 1.
    act(server, "osupgrade-fleetos-1", rollback=True)
    undone = wait_for("rolled back", phase_is(server, "osupgrade-fleetos-1", "RolledBack"), 60, *fleet.logs())
    assert undone["reason"] == "RollbackRequested"
    assert undone["counts"]["rolledBack"] == len(first) and undone["counts"]["rollbackFailed"] == 0
    assert all(undone["sites"][n]["before"] == {"version": OLD} for n in first)
    found, mans = sites(server, "pool=main"), manifests(server)
    # "Back" means back: every site runs the OS it ran before, committed.
    assert {n: s["status"]["os"]["current"] for n, s in found.items() if n in first} == dict.fromkeys(
        first, OLD
    )
    for name, s in found.items():
        os_section = mans[name]["spec"]["sections"].get("os")
        if name in first:
            assert os_item(s)["state"] == "Applied", name
            assert os_section["version"] == OLD and os_section["restored"] == ["ops/fleetos"], name
        else:
            assert os_section is None and s["status"]["os"]["current"] == OLD, name


# -- 2. canary promoted after its soak; sites joining during and after ---------------------------------


def relabel(server: ServerProcess, name: str, **labels: str) -> None:
    with server.client() as c:
        c.patch("sites", name, {"metadata": {"labels": labels}})


def test_canary_is_promoted_after_its_soak_and_joiners_get_the_right_revision(fleet: Fleet) -> None:
    server = fleet.server
    members = main_sites(server)
    late = sorted(sites(server, "pool=late"))
    canaries = sorted(n for n in members if n.startswith("m-"))[:2]
    create(
        server,
        "resourcereservations",
        {
            "kind": "ResourceReservation",
            "metadata": {"name": "canary"},
            "spec": {
                "virtualSites": ["main", "late"],
                "cpu": "10m",
                "memory": "16Mi",
                "strategy": {
                    "type": "canary",
                    "batchSize": "50%",
                    "canary": {"sites": canaries, "soakSeconds": 3},
                },
            },
        },
        "ops",
    )
    name = "resourcereservation-canary-1"
    soaking = wait_for("the canary to soak", phase_is(server, name, "Soaking"), 30, *fleet.logs())
    assert soaking["waves"][0]["role"] == "canary" and soaking["waves"][0]["sites"] == canaries
    assert soaking["counts"]["succeeded"] == 2 and soaking["counts"]["pending"] == len(members) - 2
    # While it soaks only the canaries run the reservation; a site joining now waits its turn.
    mans = manifests(server)
    assert {n for n in members if "reservations" in mans[n]["spec"]["sections"]} == set(canaries)
    relabel(server, late[0], late="yes")
    done = wait_for("the rollout to complete", phase_is(server, name, "Completed"), 40, *fleet.logs())
    waves = done["waves"]
    assert [w["role"] for w in waves[:3]] == ["canary", "batch", "batch"]
    assert waves[1]["startedAt"] - waves[0]["finishedAt"] >= 3  # promoted only after the soak
    assert done["promoted"] is True and done["counts"]["succeeded"] == len(members) + 1
    assert any(late[0] in w["sites"] for w in waves[1:]) and done["sites"][late[0]]["state"] == "Succeeded"
    # A site joining a completed rollout gets the revision at once.
    relabel(server, late[1], late="yes")
    wait_for(
        "the second joiner", applied(server, {late[1]}, "reservations", "ops/canary", 1), 20, *fleet.logs()
    )
    wait_for(
        "everyone applied",
        applied(server, members | set(late), "reservations", "ops/canary", 1),
        20,
        *fleet.logs(),
    )

    def recorded() -> dict[str, Any] | Pending:
        st = rollout(server, name)["status"]
        got = (st["sites"].get(late[1]) or {}).get("state")
        return st if got == "Succeeded" else Pending(f"{late[1]}: {got}")

    final = wait_for("the joiner's result", recorded, 10, *fleet.logs())
    assert final["phase"] == "Completed" and waves[-1]["role"] != "late"
    assert final["waves"][-1]["role"] == "late" and final["waves"][-1]["sites"] == [late[1]]


# -- 3. A/B: group A's health is worse, so A is rolled back and B never changes ---------------------


def test_ab_upgrade_rolls_group_a_back_when_its_health_is_worse(fleet: Fleet) -> None:
    server = fleet.server
    group_a, group_b = set(sites(server, "grp=a")), set(sites(server, "grp=b"))
    create(
        server,
        "osupgrades",
        {
            "kind": "OsUpgrade",
            "metadata": {"name": "ab-os"},
            "spec": {"virtualSites": ["ab"], "version": OLD},  # revision 1: at once, what they run
        },
        "ops",
    )
    wait_for(
        "revision 1 everywhere", applied(server, group_a | group_b, "os", "ops/ab-os", 1), 20, *fleet.logs()
    )
    with server.client() as c:
        intent = c.get("osupgrades", "ab-os", "ops")
        intent["spec"]["version"] = NEW
        intent["spec"]["strategy"] = {
            "type": "ab",
            "maxFailures": "50%",
            "applyTimeoutSeconds": 30,
            "ab": {"groupA": "grp=a", "windowSeconds": 2, "threshold": 5},
        }
        c.replace("osupgrades", intent, "ops")
    name = "osupgrade-ab-os-2"
    status = wait_for("group A rolled back", phase_is(server, name, "RolledBack"), 45, *fleet.logs())
    assert status["reason"] == "GroupAWorse", status
    comparison = status["comparison"]
    assert comparison["groupASites"] == GROUP_A and comparison["groupBSites"] == GROUP_B
    assert comparison["groupA"] < comparison["groupB"] - 5
    assert "group A mean health" in status["message"]
    assert set(status["waves"][0]["sites"]) == group_a and status["waves"][0]["role"] == "groupA"
    for site in group_a:
        assert status["sites"][site]["state"] == "RolledBack"
    for site in group_b:
        assert status["sites"][site]["state"] == "Pending"  # never handed out
    # Group A is back on revision 1 (and runs OLD, having fallen back); B never left it.
    wait_for(
        "everyone on revision 1", applied(server, group_a | group_b, "os", "ops/ab-os", 1), 20, *fleet.logs()
    )
    for name_, s in sites(server, "pool=ab").items():
        assert s["status"]["os"]["current"] == OLD, name_
        assert os_item(s)["state"] == "Applied"


# -- 4. pause, resume, abort, undo (a NetworkPolicy) ---------------------------------------------------


def policy(rules: list[str]) -> dict[str, Any]:
    return {
        "virtualSites": ["main"],
        "egress": [{"name": r, "action": "allow", "domains": [f"{r}.example.com"]} for r in rules],
        "defaultAction": {"egress": "allow"},
    }


def test_pause_resume_abort_and_undo(fleet: Fleet) -> None:
    server = fleet.server
    members = main_sites(server)
    create(
        server,
        "networkpolicies",
        {"kind": "NetworkPolicy", "metadata": {"name": "ops-np"}, "spec": policy(["a"])},
        "default",
    )
    wait_for(
        "revision 1", applied(server, members, "networkPolicies", "default/ops-np", 1), 20, *fleet.logs()
    )
    with server.client() as c:
        c.patch(
            "networkpolicies",
            "ops-np",
            {"spec": {**policy(["a", "b"]), "strategy": {"batchSize": 1}}},
            "default",
        )
    name = "networkpolicy-ops-np-2"

    def progressed(at_least: int) -> Any:
        def check() -> dict[str, Any] | Pending:
            st = rollout(server, name, "default").get("status") or {}
            done = (st.get("counts") or {}).get("succeeded", 0)
            return st if done >= at_least else Pending(f"{done} succeeded")

        return check

    wait_for("some waves", progressed(5), 30, *fleet.logs())
    act(server, name, "default", paused=True)

    def quiet() -> dict[str, Any] | Pending:
        st = rollout(server, name, "default")["status"]
        return (
            st if st["phase"] == "Paused" and st["counts"]["inProgress"] == 0 else Pending(str(st["counts"]))
        )

    paused = wait_for("paused with nothing in flight", quiet, 20, *fleet.logs())
    time.sleep(1.5)
    still = rollout(server, name, "default")["status"]
    assert still["phase"] == "Paused" and still["counts"] == paused["counts"]  # nothing new went out
    handed = {n for n, r in still["sites"].items() if r.get("handedAt")}
    mans = manifests(server)
    assert {n for n in members if revision_in(mans[n], "networkPolicies", "default/ops-np") == 2} == handed

    act(server, name, "default", paused=False)
    wait_for("it resumed", progressed(paused["counts"]["succeeded"] + 5), 30, *fleet.logs())
    act(server, name, "default", abort=True)
    aborted = wait_for("aborted", phase_is(server, name, "Aborted", namespace="default"), 20, *fleet.logs())
    assert aborted["reason"] == "Aborted" and aborted["counts"]["pending"] > 0
    time.sleep(1.0)
    after = rollout(server, name, "default")["status"]
    handed = {n for n, r in after["sites"].items() if r.get("handedAt")}
    assert handed == {n for n, r in aborted["sites"].items() if r.get("handedAt")}  # nothing more
    wait_for("sites keep what they have", applied(server, handed, "networkPolicies", "default/ops-np", 2), 20)
    wait_for(
        "the rest keep revision 1",
        applied(server, members - handed, "networkPolicies", "default/ops-np", 1),
        20,
    )

    # Undo: the previous revision goes out, by the same strategy, to the sites that got the new one.
    act(server, name, "default", rollback=True)
    undone = wait_for(
        "rolled back", phase_is(server, name, "RolledBack", namespace="default"), 40, *fleet.logs()
    )
    assert undone["reason"] == "RollbackRequested"
    assert undone["counts"]["rolledBack"] == len(handed)
    wait_for("everyone on revision 1", applied(server, members, "networkPolicies", "default/ops-np", 1), 20)
    hits = sites(server)[sorted(handed)[0]]["status"]["policyHits"]
    assert "default/ops-np/a" in hits and "default/ops-np/b" not in hits  # enforcing revision 1 again


# -- 5. the control plane restarts mid-rollout -------------------------------------------------------


def test_a_restart_mid_rollout_resumes_without_rerunning_or_skipping_sites(fleet: Fleet) -> None:
    server = fleet.server
    members = main_sites(server)
    create(
        server,
        "resourcereservations",
        {
            "kind": "ResourceReservation",
            "metadata": {"name": "restart"},
            "spec": {"virtualSites": ["main"], "cpu": "10m", "strategy": {"batchSize": 2}},
        },
        "ops",
    )
    name = "resourcereservation-restart-1"

    def some_done() -> dict[str, Any] | Pending:
        st = rollout(server, name).get("status") or {}
        return st if (st.get("counts") or {}).get("succeeded", 0) >= 20 else Pending(str(st.get("counts")))

    before = wait_for("ten waves", some_done, 30, *fleet.logs())
    generations = {n: m["metadata"]["generation"] for n, m in manifests(server).items()}
    server.kill9()  # a crash: no clean shutdown
    server.start()
    done = wait_for("completed after the restart", phase_is(server, name, "Completed"), 60, *fleet.logs())
    finished_before = {n for n, r in before["sites"].items() if r["state"] == "Succeeded"}
    assert 20 <= len(finished_before) < len(members)  # it really was mid-rollout
    for site in finished_before:  # not run again: the same hand-out and result, no new manifest
        assert done["sites"][site] == before["sites"][site], site
    wait_for("all applied", applied(server, members, "reservations", "ops/restart", 1), 30, *fleet.logs())
    mans = manifests(server)
    assert {n for n in finished_before if mans[n]["metadata"]["generation"] != generations[n]} == set()
    assert done["counts"]["succeeded"] == len(members)  # nobody skipped
    assert all(r["state"] == "Succeeded" for r in done["sites"].values())
    assert sorted(n for w in done["waves"] for n in w["sites"]) == sorted(members)
