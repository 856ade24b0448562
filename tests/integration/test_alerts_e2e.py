"""Alerts end to end: the real server process, three ``fleetplane simulate`` processes (steady
sites, sites that come under memory pressure, sites that lose connectivity, each a labelled
subset, faults scheduled with ``after`` and cleared by ``duration``) and a real HTTP webhook
receiver. The right alerts fire for exactly the faulty sites, the receiver gets the
Alertmanager-format payloads (firing, then resolved), the alerts resolve when the faults
clear; on the way, the load distribution, a site's metrics history, ``get alerts`` and
``/metrics`` show them."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_fleet_e2e import Pending, Simulator, sites, wait_for
from tests.support.server import ServerProcess
from tests.support.webhook import Receiver

pytestmark = pytest.mark.slow
AFTER, DURATION = 8, 9  # seconds from a sim site's start to its fault, and how long it lasts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("alerts")
    args = ["--offline-after", "2", "--alert-interval", "0.5", "--metrics-flush", "1"]
    args += ["--metrics-retention", "2s:2m,10s:10m"]
    srv = ServerProcess(root / "server", extra_args=args).start()
    try:
        yield srv
    finally:
        srv.stop()


def rule(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "AlertRule", "metadata": {"name": name}, "spec": {"receivers": ["hook"], **spec}}


def alert(server: ServerProcess, name: str) -> dict[str, Any]:
    with server.client() as c:
        status: dict[str, Any] = c.get("alerts", name, "default").get("status") or {}
        return status


def firing_for(server: ServerProcess, name: str, expected: set[str]) -> bool | Pending:
    try:
        st = alert(server, name)
    except Exception as exc:  # not created yet
        return Pending(str(exc))
    fired = {n for n, i in (st.get("instances") or {}).items() if i.get("state") == "firing"}
    return (st.get("state") == "firing" and fired == expected) or Pending(
        f"{st.get('state')} {sorted(fired)}"
    )


def test_alerts_fire_for_the_faulty_sites_notify_and_resolve(server: ServerProcess, tmp_path: Path) -> None:
    receiver = Receiver()
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {"kind": "RegistrationToken", "metadata": {"name": "alerts"}, "spec": {"autoAccept": True}},
        )["status"]["token"]
        hook = {"url": receiver.url, "headers": {"Authorization": "Bearer hook-secret"}}
        c.create("alertreceivers", {"kind": "AlertReceiver", "metadata": {"name": "hook"},
                                    "spec": {"webhook": hook}}, "default")  # fmt: skip
        c.create("virtualsites", {"kind": "VirtualSite", "metadata": {"name": "sim"},
                                  "spec": {"selector": "group"}}, "default")  # fmt: skip
        net_rule = {"expr": "site.connected", "op": "==", "threshold": 0, "for": "1s", "severity": "critical"}
        c.create("alertrules", rule("net-down", net_rule), "default")
        mem_rule = {"expr": "site.memory.percent", "op": ">", "threshold": 90, "for": "2s"}
        c.create("alertrules", rule("mem-high", {**mem_rule, "scope": {"virtualSites": ["sim"]}}), "default")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    sims = [
        Simulator(server, tmp_path / "steady", token_file, "--sites", "3", "--label", "group=steady"),
        Simulator(server, tmp_path / "mem", token_file, "--sites", "2", "--prefix", "mem", "--seed", "5",
                  "--label", "group=mem", "--fault", f"memory_pressure:after={AFTER},duration={DURATION}"),
        Simulator(server, tmp_path / "net", token_file, "--sites", "2", "--prefix", "net", "--seed", "7",
                  "--label", "group=net", "--fault", f"connectivity_loss:after={AFTER},duration={DURATION}"),
    ]  # fmt: skip
    logs = (server.log_tail, *(s.output for s in sims))
    try:
        for sim in sims:
            sim.start()

        def online() -> bool | Pending:
            up = [n for n, s in sites(server).items() if (s.get("status") or {}).get("phase") == "Online"]
            return len(up) == 7 or Pending(f"{len(up)} of 7 online")

        wait_for("7 sites online", online, 30, *logs)
        groups: dict[str, set[str]] = {}
        for name, s in sites(server).items():
            groups.setdefault(s["metadata"]["labels"]["group"], set()).add(name)
        mem, net = groups["mem"], groups["net"]

        # Memory pressure: only the two mem sites, while the load views show them.
        wait_for("mem-high firing for the mem sites", lambda: firing_for(server, "mem-high", mem), 25, *logs)
        with server.client() as c:
            dist = c.request("GET", "/apis/fleetplane.io/v1/distribution", params={"above": "90"})
        above = dist["memory"]["above"][0]
        assert above["threshold"] == 90 and above["sites"] >= 2
        assert above["statement"] == f"{above['percent']:g} % of sites use more than 90 % of memory"
        assert sum(b["sites"] for b in dist["memory"]["histogram"]) == dist["memory"]["reported"]
        assert [v["name"] for v in dist["virtualSites"]] == ["sim"]

        # Connectivity loss: only the two net sites, once they are marked Offline.
        wait_for("net-down firing for the net sites", lambda: firing_for(server, "net-down", net), 25, *logs)

        def told(name: str, status: str) -> dict[str, Any] | Pending:
            for body in receiver.received():
                if body["groupLabels"] == {"alertname": name} and body["status"] == status:
                    return body
            return Pending(f"no {status} notification for {name}")

        body = wait_for("mem-high notification", lambda: told("mem-high", "firing"), 10, *logs)
        assert body["version"] == "4" and body["receiver"] == "hook"
        assert {a["labels"]["site"] for a in body["alerts"] if a["status"] == "firing"} <= mem
        assert set(body) >= {
            "groupKey",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "truncatedAlerts",
        }
        for a in body["alerts"]:
            assert set(a) == {
                "status",
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL",
                "fingerprint",
            }
        net_body = wait_for("net-down notification", lambda: told("net-down", "firing"), 10, *logs)
        assert net_body["commonLabels"]["severity"] == "critical"
        assert all(h.get("authorization") == "Bearer hook-secret" for h in receiver.headers)
        notified = {a["labels"]["site"] for b in receiver.received() for a in b["alerts"]}
        assert notified <= mem | net  # nothing about the steady sites

        # The CLI table and the Prometheus series.
        got = server.cli("get", "alerts")
        assert got.returncode == 0, got.stderr
        header = got.stdout.splitlines()[0].split()
        assert header == ["NAME", "RULE", "SEVERITY", "STATE", "SITES", "SINCE"]
        auth = {"authorization": f"Bearer {server.admin_key}"}
        text = httpx.get(f"{server.url}/metrics", headers=auth, verify=server.tls).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        firing = {s.labels["alertname"]: s.value for s in families["fleetplane_alerts_firing"].samples}
        assert firing["net-down"] == 2

        # History: the mem site's recent points show the pressure. A 2 s point is written once
        # its window has closed, at the site's next flush (1 s): the alert (for: 2s) can fire
        # while the only point written yet is the half-pressured one.
        one = sorted(mem)[0]

        def pressure_in_history() -> dict[str, Any] | Pending:
            with server.client() as c:
                history = c.request(
                    "GET", f"/apis/fleetplane.io/v1/sites/{one}/metrics", params={"resolution": "2s"}
                )
            (series,) = history["series"]
            peak = max(v or 0 for v in series["memory"])
            return series if peak > 90 else Pending(f"memory peak {peak} % so far")

        series = wait_for("the pressure in the 2 s history", pressure_in_history, 10, *logs)
        assert series["resolution"] == "2s" and series["stepSeconds"] == 2

        # Faults clear: both alerts resolve and the receiver is told.
        def resolved() -> bool | Pending:
            states = {n: alert(server, n).get("state") for n in ("mem-high", "net-down")}
            return set(states.values()) == {"resolved"} or Pending(str(states))

        wait_for("both alerts resolved", resolved, 25, *logs)
        for name in ("mem-high", "net-down"):
            done = wait_for(
                f"{name} resolved notification", functools.partial(told, name, "resolved"), 10, *logs
            )
            assert {a["status"] for a in done["alerts"]} == {"resolved"}
            assert all(a["endsAt"] != "0001-01-01T00:00:00Z" for a in done["alerts"])
    finally:
        for sim in sims:
            sim.stop()
        receiver.close()
