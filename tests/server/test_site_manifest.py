"""Manifest distribution and liveness against a real server: a site long-polls its own
compiled manifest over mTLS and is woken as soon as a change affects it; SiteManifests are
read-only to operators; a silent site goes Offline and comes back Online when it reports."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.onboarding import API, SITE_API, Agent, anonymous, onboard, operator
from tests.support.server import ServerProcess

GI = 2**30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("manifest") / "data", extra_args=["--offline-after", "2"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def op(server: ServerProcess) -> Iterator[httpx.Client]:
    with operator(server) as http:
        yield http


@pytest.fixture(scope="module")
def agents(
    server: ServerProcess, op: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Agent]:
    where = tmp_path_factory.mktemp("agents")
    found = {
        "prod": onboard(server, op, where, "mf-prod", labels={"env": "prod"}),
        "dev": onboard(server, op, where, "mf-dev", labels={"env": "dev"}),
    }
    r = op.post(
        f"{API}/namespaces/shop/virtualsites",
        json={"metadata": {"name": "prod"}, "spec": {"selector": "env=prod"}},
    )
    assert r.status_code == 201, r.text
    return found


def current(agent: Agent, timeout: float = 15) -> dict[str, Any]:
    """The site's manifest once the controller has compiled one."""
    deadline = time.monotonic() + timeout
    with agent.mtls() as site:
        while True:
            r = site.get(f"{SITE_API}/manifest")
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
            assert r.status_code == 204, r.text
            assert time.monotonic() < deadline, "no manifest was compiled"
            time.sleep(0.1)


def reservation(name: str, cpu: str, memory: str = "1Gi") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"virtualSites": ["prod"], "cpu": cpu, "memory": memory}}


def test_long_poll_answers_at_once_when_newer_and_wakes_on_a_change(
    agents: dict[str, Agent], op: httpx.Client
) -> None:
    first = current(agents["prod"])
    assert first["kind"] == "SiteManifest" and first["metadata"]["name"] == "mf-prod"
    generation = first["metadata"]["generation"]
    with agents["prod"].mtls() as site:
        # Newer than what the site has: at once.
        started = time.monotonic()
        r = site.get(f"{SITE_API}/manifest", params={"after": generation - 1, "waitSeconds": 30})
        assert r.status_code == 200 and r.json()["metadata"]["generation"] == generation
        assert time.monotonic() - started < 1
        # Nothing newer: 204 after waitSeconds.
        started = time.monotonic()
        r = site.get(f"{SITE_API}/manifest", params={"after": generation, "waitSeconds": 1})
        assert r.status_code == 204, r.text
        assert 0.9 < time.monotonic() - started < 3
        # Blocks, and answers as soon as a reservation on its virtual site lands.
        answer: dict[str, Any] = {}

        def poll() -> None:
            got = site.get(f"{SITE_API}/manifest", params={"after": generation, "waitSeconds": 30})
            answer["at"], answer["response"] = time.monotonic(), got

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()
        changed = time.monotonic()
        r = op.post(f"{API}/namespaces/shop/resourcereservations", json=reservation("platform", "500m"))
        assert r.status_code == 201, r.text
        waiter.join(10)
        got = answer["response"]
        assert got.status_code == 200, got.text
        latency = answer["at"] - changed
        assert latency < 1.0, latency
        manifest = got.json()
        assert manifest["metadata"]["generation"] == generation + 1
        assert manifest["spec"]["sections"]["reservations"] == {
            "cpuMillis": 500,
            "memoryBytes": GI,
            "sources": ["shop/platform"],
            "revisions": {"shop/platform": 1},
        }
        assert manifest["spec"]["hash"].startswith("sha256:")


def test_a_site_only_ever_gets_its_own_manifest(
    server: ServerProcess, agents: dict[str, Agent], op: httpx.Client
) -> None:
    mine = current(agents["dev"])
    assert mine["metadata"]["name"] == "mf-dev" and "reservations" not in mine["spec"]["sections"]
    with agents["dev"].mtls() as site:
        # There is no way to name another site.
        r = site.get(f"{SITE_API}/manifest", params={"site": "mf-prod", "name": "mf-prod"})
        assert r.status_code == 200 and r.json()["metadata"]["name"] == "mf-dev"
        # A change to another site's manifest does not wake this one.
        answer: dict[str, Any] = {}

        def poll() -> None:
            params = {"after": mine["metadata"]["generation"], "waitSeconds": 2}
            answer["response"] = site.get(f"{SITE_API}/manifest", params=params)

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.2)
        r = op.post(f"{API}/namespaces/shop/resourcereservations", json=reservation("other", "1"))
        assert r.status_code == 201, r.text
        waiter.join(10)
        assert answer["response"].status_code == 204
        # Bad parameters are refused.
        assert site.get(f"{SITE_API}/manifest", params={"after": "x"}).status_code == 400
        assert site.get(f"{SITE_API}/manifest", params={"waitSeconds": "-1"}).status_code == 400
    # Without a certificate: 401.
    with anonymous(server) as anon:
        assert anon.get(f"{SITE_API}/manifest").status_code == 401


def test_site_manifests_are_read_only_for_operators(agents: dict[str, Agent], op: httpx.Client) -> None:
    current(agents["prod"])
    r = op.get(f"{API}/sitemanifests/mf-prod")
    assert r.status_code == 200, r.text
    body = r.json()
    assert op.get(f"{API}/sitemanifests").json()["items"]
    refused = [
        op.put(f"{API}/sitemanifests/mf-prod", json=body),
        op.post(f"{API}/sitemanifests", json={**body, "metadata": {"name": "forged"}}),
        op.patch(
            f"{API}/sitemanifests/mf-prod",
            json={"spec": {"sections": {}}},
            headers={"content-type": "application/merge-patch+json"},
        ),
        op.delete(f"{API}/sitemanifests/mf-prod"),
    ]
    for r in refused:
        assert r.status_code in (403, 405), r.text
    assert op.get(f"{API}/sitemanifests/mf-prod").json() == body


def phase(op: httpx.Client, name: str) -> str:
    value: str = op.get(f"{API}/sites/{name}").json()["status"].get("phase", "")
    return value


def wait_phase(op: httpx.Client, name: str, want: str, timeout: float) -> float:
    started = time.monotonic()
    while phase(op, name) != want:
        assert time.monotonic() - started < timeout, f"{name} never became {want}: {phase(op, name)}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_silent_site_goes_offline_and_comes_back_online_on_its_next_report(
    agents: dict[str, Agent], op: httpx.Client
) -> None:
    with agents["dev"].mtls() as site:
        r = site.put(f"{SITE_API}/site/status", json={"status": {"phase": "Online", "nodeCount": 1}})
        assert r.status_code == 200, r.text
        assert phase(op, "mf-dev") == "Online"
        silent = time.monotonic()
        wait_phase(op, "mf-dev", "Offline", timeout=8)
        assert time.monotonic() - silent >= 1.0  # --offline-after 2 (lastSeen has whole seconds)
        # The next report brings it back, whatever phase the report carries.
        r = site.put(f"{SITE_API}/site/status", json={"status": {"nodeCount": 1}})
        assert r.status_code == 200, r.text
        assert wait_phase(op, "mf-dev", "Online", timeout=3) < 1.5


def test_a_report_that_asks_for_no_answer_body_gets_204_and_is_stored(
    agents: dict[str, Agent], op: httpx.Client
) -> None:
    """What the agent sends (RFC 7240): the report is stored exactly as without the header,
    only the answer carries no Site; without the header the Site comes back as before."""
    with agents["prod"].mtls() as site:
        r = site.put(
            f"{SITE_API}/site/status",
            json={"status": {"phase": "Online", "nodeCount": 3, "softwareVersion": "minimal-1"}},
            headers={"Prefer": "return=minimal"},
        )
        assert r.status_code == 204, r.text
        assert r.content == b"" and r.headers["preference-applied"] == "return=minimal"
        stored = op.get(f"{API}/sites/mf-prod").json()["status"]
        assert stored["nodeCount"] == 3 and stored["softwareVersion"] == "minimal-1"
        # A refused report is refused the same way: the header never hides an error.
        r = site.put(
            f"{SITE_API}/site/status",
            json={"status": {"nodeCount": "three"}},
            headers={"Prefer": "return=minimal"},
        )
        assert r.status_code == 422 and r.json()["reason"] == "Invalid", r.text
        assert "status.nodeCount" in r.text
        r = site.put(f"{SITE_API}/site/status", json={"status": {"phase": "Online", "nodeCount": 4}})
        assert r.status_code == 200 and r.json()["status"]["nodeCount"] == 4


def test_a_site_connection_survives_a_quiet_spell(agents: dict[str, Agent]) -> None:
    """One connection per site: a site that answers late (a busy agent) or waits between two
    calls keeps its connection, instead of paying a TCP + TLS reconnect (uvicorn's default
    closes a connection after 5 s idle). The client here keeps it as the agent's does."""

    def local_port(r: httpx.Response) -> int:
        return int(r.extensions["network_stream"].get_extra_info("socket").getsockname()[1])

    with agents["dev"].mtls(keepalive=120.0) as site:
        first = site.get(f"{SITE_API}/manifest")
        assert first.status_code in (200, 204), first.text
        port = local_port(first)
        time.sleep(6.5)
        second = site.get(f"{SITE_API}/manifest")
        assert second.status_code in (200, 204), second.text
        assert local_port(second) == port


def test_sync_stores_the_report_then_long_polls_in_one_call(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    """``PUT /site-api/v1/sync``: the agent's report and its next long-poll as one call."""
    agent = onboard(server, op, tmp_path, "mf-sync", labels={"env": "sync"})
    mine = current(agent)
    generation = mine["metadata"]["generation"]
    report = {"status": {"phase": "Online", "nodeCount": 5, "softwareVersion": "sync-1"}}
    with agent.mtls() as site:
        # Behind: the report is stored and the current manifest comes back at once.
        r = site.put(f"{SITE_API}/sync", json=report, params={"after": generation - 1, "waitSeconds": 30})
        assert r.status_code == 200 and r.json()["metadata"]["name"] == "mf-sync", r.text
        stored = op.get(f"{API}/sites/mf-sync").json()["status"]
        assert stored["nodeCount"] == 5 and stored["softwareVersion"] == "sync-1"
        # Up to date: stored at once, then 204 after waitSeconds.
        started = time.monotonic()
        report["status"]["nodeCount"] = 6
        r = site.put(f"{SITE_API}/sync", json=report, params={"after": generation, "waitSeconds": 1})
        assert r.status_code == 204, r.text
        assert 0.9 < time.monotonic() - started < 3
        assert op.get(f"{API}/sites/mf-sync").json()["status"]["nodeCount"] == 6
        # Waiting, and woken by a change to this site's manifest.
        answer: dict[str, Any] = {}

        def sync() -> None:
            params = {"after": generation, "waitSeconds": 30}
            answer["response"] = site.put(f"{SITE_API}/sync", json=report, params=params)
            answer["at"] = time.monotonic()

        waiter = threading.Thread(target=sync)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()
        changed = time.monotonic()
        r = op.post(
            f"{API}/namespaces/sync/virtualsites",
            json={"metadata": {"name": "sync"}, "spec": {"selector": "env=sync"}},
        )
        assert r.status_code == 201, r.text
        spec = {"virtualSites": ["sync"], "cpu": "250m", "memory": "1Gi"}
        r = op.post(
            f"{API}/namespaces/sync/resourcereservations", json={"metadata": {"name": "sync"}, "spec": spec}
        )
        assert r.status_code == 201, r.text
        waiter.join(10)
        got = answer["response"]
        assert got.status_code == 200, got.text
        assert got.json()["metadata"]["generation"] > generation
        assert got.json()["spec"]["sections"]["reservations"]["cpuMillis"] == 250
        assert answer["at"] - changed < 1.5


def test_a_refused_sync_stores_nothing_and_polls_nothing(
    server: ServerProcess, agents: dict[str, Agent], op: httpx.Client
) -> None:
    before = op.get(f"{API}/sites/mf-prod").json()["status"]
    with agents["prod"].mtls() as site:
        for body, params, code, words in (
            ({"status": {"nodeCount": "three"}}, {"after": 1, "waitSeconds": 5}, 422, "status.nodeCount"),
            ({"status": []}, {"after": 1, "waitSeconds": 5}, 400, "status must be an object"),
            ({"status": {"phase": "Decommissioned"}}, {}, 403, "cannot decommission itself"),
            ({"status": {"nodeCount": 1}}, {"after": "x"}, 400, "after must be an integer"),
            ({"status": {"nodeCount": 1}}, {"waitSeconds": "-1"}, 400, "waitSeconds must not be negative"),
        ):
            started = time.monotonic()
            r = site.put(f"{SITE_API}/sync", json=body, params=params)
            assert r.status_code == code and r.json()["kind"] == "Status", r.text
            assert words in r.text
            assert time.monotonic() - started < 2  # refused at once, never after a wait
    assert op.get(f"{API}/sites/mf-prod").json()["status"].get("nodeCount") == before.get("nodeCount")
    with anonymous(server) as anon:
        r = anon.put(f"{SITE_API}/sync", json={"status": {}})
        assert r.status_code == 401 and "mutual TLS" in r.text


NODES = [{"name": "n1", "role": "controller", "cpuMillis": 4000, "memoryBytes": GI, "diskBytes": 8 * GI}]


def test_a_delta_report_keeps_what_it_leaves_out_while_the_site_is_unchanged(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    """A delta report: ``keep`` names the fields left out as unchanged and ``base`` the
    Site's resourceVersion the last report left (``Fleetplane-Site-Version``)."""
    agent = onboard(server, op, tmp_path, "mf-delta")
    full = {"nodeCount": 1, "nodes": NODES, "softwareVersion": "d-1", "osVersion": "os-1"}
    with agent.mtls() as site:
        r = site.put(f"{SITE_API}/sync", json={"status": full}, params={"after": 10**6})
        assert r.status_code == 204, r.text
        version = r.headers["fleetplane-site-version"]
        assert op.get(f"{API}/sites/mf-delta").json()["metadata"]["resourceVersion"] == version

        delta = {"status": {"softwareVersion": "d-2"}, "keep": ["nodeCount", "nodes", "osVersion"]}
        r = site.put(f"{SITE_API}/sync", json={**delta, "base": version}, params={"after": 10**6})
        assert r.status_code == 204, r.text
        stored = op.get(f"{API}/sites/mf-delta").json()
        assert stored["status"]["softwareVersion"] == "d-2"  # the one field reported
        assert stored["status"]["nodes"][0]["name"] == "n1" and stored["status"]["nodeCount"] == 1
        assert stored["status"]["osVersion"] == "os-1"
        assert r.headers["fleetplane-site-version"] == stored["metadata"]["resourceVersion"] != version

        # A field neither reported nor kept is gone, as in a full report.
        base = r.headers["fleetplane-site-version"]
        r = site.put(
            f"{SITE_API}/sync",
            json={"status": {"softwareVersion": "d-3"}, "keep": ["nodes"], "base": base},
            params={"after": 10**6},
        )
        assert r.status_code == 204, r.text
        status = op.get(f"{API}/sites/mf-delta").json()["status"]
        assert "osVersion" not in status and status["nodes"][0]["name"] == "n1"


def test_a_delta_on_a_site_written_since_is_refused_and_changes_nothing(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    agent = onboard(server, op, tmp_path, "mf-delta-stale")
    with agent.mtls() as site:
        r = site.put(f"{SITE_API}/sync", json={"status": {"nodes": NODES, "osVersion": "os-1"}})
        assert r.status_code in (200, 204), r.text
        version = r.headers["fleetplane-site-version"]
        # Someone else writes the Site (here: a relabel), so what it holds may have changed.
        r = op.patch(
            f"{API}/sites/mf-delta-stale",
            json={"metadata": {"labels": {"moved": "yes"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text
        before = op.get(f"{API}/sites/mf-delta-stale").json()
        delta = {"status": {"osVersion": "os-2"}, "keep": ["nodes"], "base": version}
        r = site.put(f"{SITE_API}/sync", json=delta, params={"after": 1, "waitSeconds": 5})
        assert r.status_code == 409 and r.json()["reason"] == "Conflict", r.text
        assert "report them in full" in r.json()["message"]
        # Nothing of the refused report was stored (the liveness controller may have written
        # the phase meanwhile: that is not the report's doing).
        after = op.get(f"{API}/sites/mf-delta-stale").json()["status"]
        assert after["osVersion"] == "os-1" and after["nodes"] == before["status"]["nodes"]
        assert after["lastSeen"] == before["status"]["lastSeen"]


def test_a_malformed_delta_is_refused_naming_the_field(
    server: ServerProcess, op: httpx.Client, tmp_path: Path
) -> None:
    agent = onboard(server, op, tmp_path, "mf-delta-bad")  # never reports: nothing else writes it
    before = op.get(f"{API}/sites/mf-delta-bad").json()
    base = before["metadata"]["resourceVersion"]
    with agent.mtls() as site:
        for body, field, words in (
            ({"keep": "nodes", "base": base}, "keep", "must be a list"),
            ({"keep": ["health"], "base": base}, "keep[0]", "must name a status field the site reports"),
            ({"keep": ["nodes", "lastSeen"], "base": base}, "keep[1]", "'lastSeen'"),
            ({"keep": ["colour"], "base": base}, "keep[0]", "'colour'"),
            ({"keep": ["nodeCount"], "base": base}, "keep[0]", "keep it or report it, not both"),
            ({"keep": ["nodes"]}, "base", "required with keep"),
            ({"keep": ["nodes"], "base": 7}, "base", "required with keep"),
        ):
            r = site.put(f"{SITE_API}/sync", json={"status": {"nodeCount": 2}, **body}, params={"after": 1})
            assert r.status_code == 422 and r.json()["kind"] == "Status", r.text
            causes = r.json()["details"]["causes"]
            assert causes[0]["field"] == field and words in causes[0]["message"], causes
    after = op.get(f"{API}/sites/mf-delta-bad").json()
    assert after["metadata"]["resourceVersion"] == base


def test_a_stopping_server_answers_the_waiting_long_polls(tmp_path: Path) -> None:
    """SIGTERM while sites wait and an operator watches: each long-poll is answered at once
    (204), the watch stream ends, and the server logs no traceback for the calls it ended."""
    srv = ServerProcess(tmp_path / "data").start()
    try:
        with operator(srv) as op:
            agents = [onboard(srv, op, tmp_path, f"mf-stop-{i}") for i in range(3)]
            answers: list[tuple[int, float]] = []
            watch_ended: list[float] = []

            def watch() -> None:
                with op.stream("GET", f"{API}/sites", params={"watch": "true"}, timeout=30) as r:
                    assert r.status_code == 200
                    for _ in r.iter_lines():
                        pass
                watch_ended.append(time.monotonic())  # ended by the server, not by an error

            def wait(agent: Agent) -> None:
                with agent.mtls() as site:
                    r = site.put(
                        f"{SITE_API}/sync",
                        json={"status": {"nodeCount": 1}},
                        params={"after": 10**6, "waitSeconds": 60},
                        timeout=30,
                    )
                    answers.append((r.status_code, time.monotonic()))

            waiters = [threading.Thread(target=wait, args=(a,)) for a in agents]
            waiters.append(threading.Thread(target=watch))
            for w in waiters:
                w.start()
            time.sleep(1.0)
            assert not answers  # all waiting
            stopped = time.monotonic()
            srv.stop()
            for w in waiters:
                w.join(10)
        assert [code for code, _ in answers] == [204, 204, 204]
        assert all(at - stopped < 3 for _, at in answers), answers
        assert len(watch_ended) == 1 and watch_ended[0] - stopped < 3
        log = srv.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "Exception in ASGI application" not in log, srv.log_tail()
        assert "4 long-polls and watches ended" in log
    finally:
        srv.stop()
