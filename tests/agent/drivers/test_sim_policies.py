"""The sim driver enforcing the ``networkPolicies`` and ``servicePolicies`` sections: hits per
rule under ``<namespace>/<policy>/<rule>``, monotonic while a policy's rules stay the same,
HTTP requests that exercise ServicePolicy rules, and bad entries failing only themselves."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetplane.agent.drivers.sim import SimDriver
from fleetplane.agent.drivers.simmodel.services import (
    WORKLOADS,
    Request,
    ServicePolicy,
    ServiceRule,
    ServiceTrafficModel,
    WorkloadMatch,
)
from fleetplane.core.selectors import parse_selector
from tests.agent.drivers.conftest import make_site, step

GITHUB_RULE = {
    "name": "allow-github",
    "action": "allow",
    "domains": ["github.com"],
    "cidrs": [],
    "protocol": "TCP",
    "ports": [443],
    "portRanges": [],
}
GITHUB = {
    "policy": "default/github",
    "generation": 1,
    "egress": {"defaultAction": "deny", "rules": [GITHUB_RULE]},
}
SHOP = {
    "policy": "shop/payments-guard",
    "generation": 1,
    "defaultAction": "allow",
    "rules": [
        {
            "name": "checkout-charges",
            "action": "allow",
            "source": {"namespaces": ["shop"], "selector": "app=checkout"},
            "destination": {"selector": "app=payments"},
            "methods": ["POST"],
            "pathPrefixes": ["/v1/charge"],
        },
        {"name": "scrape", "action": "allow", "methods": ["GET"], "pathPrefixes": ["/metrics"]},
        {"name": "no-other-payments", "action": "deny", "destination": {"selector": "pci=true"}},
    ],
}


def manifest(**sections: Any) -> dict[str, Any]:
    return {"spec": {"sections": sections}}


def apply(driver: SimDriver, **sections: Any) -> list[tuple[str, str, str]]:
    items = asyncio.run(driver.apply(manifest(**sections)))
    return [(i.section, i.name, i.state) for i in items]


def hits(driver: SimDriver) -> dict[str, int]:
    return asyncio.run(driver.observe()).policy_hits


def test_reference_example_counts_github_and_the_default_deny() -> None:
    driver = SimDriver(make_site(traffic_per_s=20.0))
    assert apply(driver, networkPolicies={"policies": [GITHUB]}) == [
        ("networkPolicies", "default/github", "Applied")
    ]
    step(driver.site, 300)
    got = hits(driver)
    # Only egress is governed: no ingress counter, every egress flow counted exactly once.
    assert set(got) == {"default/github/allow-github", "default/github/default-egress"}
    assert got["default/github/allow-github"] > 0
    assert got["default/github/default-egress"] > got["default/github/allow-github"]
    egress = sum(
        1 for k in range(300) for f in driver.site.traffic.flows_in_second(k) if f.direction == "egress"
    )
    assert sum(got.values()) <= egress
    assert {flow.domain for flow, key, _ in driver.site.traffic.recent if key.endswith("/allow-github")} <= {
        "github.com"
    }


def test_wildcard_counts_subdomains_only_and_ingress_has_its_own_default() -> None:
    policy = {
        "policy": "default/gh",
        "generation": 1,
        "egress": {
            "defaultAction": "deny",
            "rules": [{"name": "subdomains", "action": "allow", "domains": ["*.github.com"]}],
        },
        "ingress": {
            "defaultAction": "allow",
            "rules": [
                {
                    "name": "no-ssh",
                    "action": "deny",
                    "protocol": "TCP",
                    "portRanges": [{"start": 20, "end": 23}],
                }
            ],
        },
    }
    driver = SimDriver(make_site(traffic_per_s=20.0))
    apply(driver, networkPolicies={"policies": [policy]})
    step(driver.site, 300)
    got = hits(driver)
    assert set(got) == {"default/gh/subdomains", "default/gh/no-ssh", "default/gh/default-egress"} | {
        "default/gh/default-ingress"
    }
    assert all(v > 0 for v in got.values())
    matched = {f.domain for f, key, _ in driver.site.traffic.recent if key == "default/gh/subdomains"}
    assert matched and all(d and d.endswith(".github.com") for d in matched)
    denied = [f for f, key, _ in driver.site.traffic.recent if key == "default/gh/no-ssh"]
    assert all(f.direction == "ingress" and f.port == 22 for f in denied)


def test_counters_are_monotonic_until_the_rules_change_and_go_with_the_section() -> None:
    driver = SimDriver(make_site(traffic_per_s=20.0))
    apply(driver, networkPolicies={"policies": [GITHUB]})
    step(driver.site, 100)
    first = hits(driver)
    apply(driver, networkPolicies={"policies": [GITHUB]})  # the same manifest again
    apply(driver, networkPolicies={"policies": [{**GITHUB, "generation": 2}]})  # retargeted only
    step(driver.site, 100)
    second = hits(driver)
    assert all(second[k] >= first[k] for k in first) and sum(second.values()) > sum(first.values())
    changed = {**GITHUB, "generation": 3, "egress": {"defaultAction": "allow", "rules": [GITHUB_RULE]}}
    apply(driver, networkPolicies={"policies": [changed]})
    assert hits(driver) == {"default/github/allow-github": 0, "default/github/default-egress": 0}
    apply(driver)
    assert hits(driver) == {}


def test_several_policies_each_count_every_flow() -> None:
    other = {
        "policy": "shared/dns",
        "generation": 4,
        "egress": {"defaultAction": "allow", "rules": [{"name": "dns", "action": "allow", "ports": [53]}]},
    }
    driver = SimDriver(make_site(traffic_per_s=10.0))
    items = apply(driver, networkPolicies={"policies": [GITHUB, other]})
    assert [name for _, name, _ in items] == ["default/github", "shared/dns"]
    step(driver.site, 100)
    got = hits(driver)
    github = got["default/github/allow-github"] + got["default/github/default-egress"]
    dns = got["shared/dns/dns"] + got["shared/dns/default-egress"]
    assert github == dns > 0  # both see every egress flow


def test_service_policy_rules_see_http_requests() -> None:
    driver = SimDriver(make_site(traffic_per_s=20.0))
    assert apply(driver, servicePolicies={"policies": [SHOP]}) == [
        ("servicePolicies", "shop/payments-guard", "Applied")
    ]
    step(driver.site, 200)
    got = hits(driver)
    assert set(got) == {
        f"shop/payments-guard/{r}" for r in ("checkout-charges", "scrape", "no-other-payments")
    } | {"shop/payments-guard/default"}
    assert all(v > 0 for v in got.values())
    assert sum(got.values()) == driver.site.services.generated == 4000
    for request, key, action in driver.site.services.recent:
        if key.endswith("/no-other-payments"):
            assert request.destination.name == "payments" and request.source.name in ("frontend", "debug")
            assert action == "deny"


def test_service_rule_matching() -> None:
    rule = ServiceRule(
        "r",
        "deny",
        source=WorkloadMatch(("shop",), parse_selector("app in (frontend,checkout)")),
        destination=WorkloadMatch((), parse_selector("pci=true")),
        methods=("DELETE", "POST"),
        path_prefixes=("/v1/",),
    )
    policy = ServicePolicy("ns/p", (rule,), "allow")
    w = WORKLOADS
    assert policy.evaluate(Request(w["checkout"], w["payments"], "POST", "/v1/charge")) == ("ns/p/r", "deny")
    assert policy.evaluate(Request(w["checkout"], w["payments"], "GET", "/v1/charge"))[0] == "ns/p/default"
    assert policy.evaluate(Request(w["checkout"], w["payments"], "POST", "/v2/x"))[0] == "ns/p/default"
    assert policy.evaluate(Request(w["debug"], w["payments"], "DELETE", "/v1/x"))[0] == "ns/p/default"
    assert policy.evaluate(Request(w["frontend"], w["catalog"], "POST", "/v1/x"))[0] == "ns/p/default"


def test_a_bad_entry_fails_alone() -> None:
    bad = {"policy": "default/bad", "generation": 1, "egress": {"defaultAction": "maybe", "rules": []}}
    driver = SimDriver(make_site())
    items = apply(driver, networkPolicies={"policies": [bad, GITHUB]}, servicePolicies={"nope": 1})
    assert ("networkPolicies", "default/github", "Applied") in items
    failed = {(s, n) for s, n, state in items if state == "Failed"}
    assert failed == {("networkPolicies", "default/bad"), ("servicePolicies", "servicePolicies")}
    step(driver.site, 10)
    assert set(hits(driver)) == {"default/github/allow-github", "default/github/default-egress"}


def test_service_hits_do_not_depend_on_how_often_the_site_is_looked_at() -> None:
    policy = ServicePolicy("ns/p", (ServiceRule("metrics", "allow", path_prefixes=("/metrics",)),))
    once = ServiceTrafficModel("seed", 0.0, rate=3.5)
    often = ServiceTrafficModel("seed", 0.0, rate=3.5)
    once.set_policies([policy], 0.0)
    often.set_policies([policy], 0.0)
    once.advance(60.0)
    for t in range(1, 121):
        often.advance(t / 2)
    assert once.hits == often.hits and sum(once.hits.values()) == 210
