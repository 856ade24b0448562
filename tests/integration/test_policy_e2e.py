"""The reference example end to end, with the real server and ``fleetplane simulate`` processes
(reference/003: "add github.com to the allow-list of a test virtual site, watch the hits, then
apply the same policy to prod").

10 sim sites (seed 5: test, prod and dev ones). Through the CLI an operator creates a ``test``
and a ``prod`` virtual site and a NetworkPolicy on ``test`` that denies egress by default and
allows github.com; every test site enforces it and counts hits (Site ``status.policyHits``),
the policy's status sums them over the fleet, ``fleetplane get networkpolicies`` shows them;
prod and dev sites do not enforce it. Then the same policy goes to prod too: prod sites enforce
it, the test sites' counters keep growing (not reset), the fleet view covers both. A
ServicePolicy's rules get hits from the sim's HTTP traffic. A bad CIDR is refused naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_fleet_e2e import Pending, Simulator, manifests, sites, wait_for
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow
SITES = 10
ALLOW, DENY = "default/github/allow-github", "default/github/default-egress"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("policy") / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


def github_policy(*targets: str) -> dict[str, Any]:
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "github", "namespace": "default"},
        "spec": {
            "virtualSites": list(targets),
            "egress": [
                {
                    "name": "allow-github",
                    "action": "allow",
                    "domains": ["github.com"],
                    "protocol": "TCP",
                    "ports": [443],
                }
            ],
            "defaultAction": {"egress": "deny"},
        },
    }


def virtual_site(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "VirtualSite",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": f"environment={name}"},
    }


SERVICE_POLICY = {
    "apiVersion": "fleetplane.io/v1",
    "kind": "ServicePolicy",
    "metadata": {"name": "payments-guard", "namespace": "default"},
    "spec": {
        "virtualSites": ["test"],
        "rules": [
            {
                "name": "checkout-charges",
                "action": "allow",
                "source": {"namespaces": ["shop"], "selector": "app=checkout"},
                "destination": {"selector": "app=payments"},
                "methods": ["POST"],
                "pathPrefixes": ["/v1/charge"],
            },
            {"name": "no-other-payments", "action": "deny", "destination": {"selector": "pci=true"}},
        ],
    },
}


def apply(server: ServerProcess, path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(docs))
    result = server.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def hits_of(site: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = (site.get("status") or {}).get("policyHits") or {}
    return found


def policy(server: ServerProcess, plural: str = "networkpolicies", name: str = "github") -> dict[str, Any]:
    with server.client() as c:
        found: dict[str, Any] = c.get(plural, name, "default")
    return found


def enforcing(server: ServerProcess, names: set[str], *, counted: bool) -> bool | Pending:
    """Every site in ``names`` applied the manifest with the policy and reports its counters
    (with github.com hits already, when ``counted``)."""
    found, mans = sites(server), manifests(server)
    for name in sorted(names):
        entries = (mans[name]["spec"]["sections"].get("networkPolicies") or {}).get("policies") or []
        if "default/github" not in [e["policy"] for e in entries]:
            return Pending(f"{name}: manifest without the policy")
        rep = (found[name].get("status") or {}).get("manifest") or {}
        if rep.get("generation") != mans[name]["metadata"]["generation"] or rep.get("state") != "Applied":
            return Pending(f"{name}: reports {rep}")
        hits = hits_of(found[name])
        if DENY not in hits or (counted and hits.get(ALLOW, 0) < 1):
            return Pending(f"{name}: hits {hits}")
    return True


def fleet_view(server: ServerProcess, members: set[str], generation: int) -> dict[str, Any] | Pending:
    """The policy's status once it covers exactly ``members`` at ``generation``, each with a hit."""
    status: dict[str, Any] = policy(server).get("status") or {}
    if status.get("sites") != len(members) or status.get("observedGeneration") != generation:
        return Pending(f"status {status}")
    if status["hits"].get("allow-github", 0) < 1:
        return Pending(f"status {status}")
    return status


def service_hits(server: ServerProcess, rule: str) -> int | Pending:
    status = policy(server, "servicepolicies", "payments-guard").get("status") or {}
    found: int = status.get("hits", {}).get(rule, 0)
    return found or Pending(f"status {status}")


def online(server: ServerProcess) -> bool | Pending:
    count = sum((s.get("status") or {}).get("phase") == "Online" for s in sites(server).values())
    return count == SITES or Pending(f"{count} of {SITES} Online")


def test_github_allow_list_on_test_then_prod(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as c:
        token = c.create(
            "registrationtokens",
            {
                "kind": "RegistrationToken",
                "metadata": {"name": "policy-fleet"},
                "spec": {"autoAccept": True, "labels": {"fleet": "policy"}},
            },
        )["status"]["token"]
    (tmp_path / "token").write_text(token + "\n")
    sim = Simulator(server, tmp_path / "sim", tmp_path / "token", "--sites", str(SITES), "--seed", "5")
    logs = (sim.output, server.log_tail)
    try:
        sim.start()
        wait_for("every site Online", lambda: online(server), 90, *logs)
        env = {n: s["metadata"]["labels"]["environment"] for n, s in sites(server).items()}
        test = {n for n, e in env.items() if e == "test"}
        prod = {n for n, e in env.items() if e == "prod"}
        rest = set(env) - test - prod
        assert test and prod and rest  # seed 5 draws all three environments

        # 1. A bad policy is refused, naming the field.
        bad = github_policy("test")
        bad["spec"]["egress"][0]["cidrs"] = ["140.82.112.3/20"]
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        result = server.cli("apply", "-f", str(tmp_path / "bad.yaml"))
        assert result.returncode == 1
        assert "spec.egress[0].cidrs[0]" in result.stdout + result.stderr

        # 2. github.com allowed on the test sites: they enforce it and count hits.
        out = apply(
            server,
            tmp_path / "policy.yaml",
            virtual_site("test"),
            virtual_site("prod"),
            github_policy("test"),
            SERVICE_POLICY,
        )
        assert "networkpolicy/github created" in out
        wait_for("test sites count github.com hits", lambda: enforcing(server, test, counted=True), 90, *logs)
        for name, site in sites(server).items():
            if name not in test:
                assert not any(k.startswith("default/github/") for k in hits_of(site)), (name, hits_of(site))

        # The fleet view sums the test sites' counters (which only grow, so it is at most their sum now).
        status = wait_for("the fleet view of the test sites", lambda: fleet_view(server, test, 1), 30, *logs)
        now = sites(server)
        assert status["hits"]["allow-github"] <= sum(hits_of(now[n])[ALLOW] for n in test)
        assert status["hits"]["default-egress"] >= status["hits"]["allow-github"]  # deny by default
        assert status["totalHits"] == sum(status["hits"].values())
        assert {t["site"] for t in status["topSites"]["allow-github"]} <= test
        assert status["observedGeneration"] == 1 and status["ruleCount"] == 1

        table = server.cli("get", "networkpolicies")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "VIRTUAL", "SITES", "RULES", "SITES", "HITS", "AGE"]
        assert row.split()[:4] == ["github", "test", "1", str(len(test))]

        svc = wait_for("service policy hits", lambda: service_hits(server, "checkout-charges"), 30, *logs)
        assert svc > 0

        # 3. The same policy applied to prod too: prod sites enforce it, test counters keep growing.
        before = {n: hits_of(now[n])[ALLOW] for n in test}
        assert "networkpolicy/github configured" in apply(
            server, tmp_path / "prod.yaml", github_policy("test", "prod")
        )
        wait_for("prod sites enforce it", lambda: enforcing(server, prod | test, counted=False), 60, *logs)
        after = sites(server)
        assert all(hits_of(after[n])[ALLOW] >= before[n] for n in test)
        for name in rest:
            assert not any(k.startswith("default/github/") for k in hits_of(after[name]))
        both = wait_for(
            "the fleet view of test and prod", lambda: fleet_view(server, test | prod, 2), 30, *logs
        )
        assert both["hits"]["allow-github"] >= status["hits"]["allow-github"]
        assert "Traceback" not in sim.output()
    finally:
        sim.stop()
