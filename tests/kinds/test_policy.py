"""NetworkPolicy and ServicePolicy: what an operator writes is accepted and normalised, and
every mistake is refused with 422 naming the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from fleetplane.cli.output import cell, columns_for
from fleetplane.core.errors import ApiError
from fleetplane.core.objects import Obj
from fleetplane.kinds import NETWORK_POLICY, REGISTRY, SERVICE_POLICY


def netpol(**spec: Any) -> Obj:
    return {
        "metadata": {"name": "github", "namespace": "default"},
        "spec": {"virtualSites": ["test"], **spec},
    }


def svcpol(*rules: dict[str, Any], **spec: Any) -> Obj:
    return {
        "metadata": {"name": "guard", "namespace": "shop"},
        "spec": {"virtualSites": ["shared/all"], "rules": list(rules), **spec},
    }


def causes(kind: str, obj: Obj) -> dict[str, str]:
    with pytest.raises(ApiError) as exc:
        REGISTRY.get(kind).normalize(obj)
    assert (exc.value.code, exc.value.reason) == (422, "Invalid")
    return {c.field: c.message for c in exc.value.causes}


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "action": "allow", **fields}


def test_reference_example_is_accepted_and_normalised() -> None:
    out = NETWORK_POLICY.normalize(
        netpol(
            egress=[
                rule(
                    name="allow-github", domains=["GitHub.com", "*.github.com."], protocol="tcp", ports=[443]
                )
            ],
            defaultAction={"egress": "deny"},
        )
    )
    assert REGISTRY.resolve("networkpolicies") is REGISTRY.resolve("netpol") is NETWORK_POLICY
    (egress,) = out["spec"]["egress"]
    assert egress["domains"] == ["github.com", "*.github.com"]
    assert egress["protocol"] == "TCP"
    assert out["spec"]["defaultAction"] == {"egress": "deny"}  # ingress stays ungoverned
    assert out["spec"]["ingress"] == []


def test_service_policy_is_accepted() -> None:
    out = SERVICE_POLICY.normalize(
        svcpol(
            rule(
                name="charges",
                source={"namespaces": ["shop"], "selector": "app in (checkout)"},
                destination={"selector": {"matchLabels": {"app": "payments"}}},
                methods=["post"],
                pathPrefixes=["/v1/charge"],
            ),
            defaultAction="deny",
        )
    )
    assert out["spec"]["rules"][0]["methods"] == ["POST"]
    assert out["spec"]["defaultAction"] == "deny"
    assert REGISTRY.resolve("servicepolicies") is SERVICE_POLICY


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"egress": [rule(cidrs=["10.0.0.1/8"])]}, "spec.egress[0].cidrs[0]", "did you mean 10.0.0.0/8"),
        ({"egress": [rule(cidrs=["10.0.0.0/8", "300.1.1.0/24"])]}, "spec.egress[0].cidrs[1]", "not an IPv4"),
        ({"ingress": [rule(domains=["git hub.com"])]}, "spec.ingress[0].domains[0]", "not a domain name"),
        ({"egress": [rule(domains=["a.*.github.com"])]}, "spec.egress[0].domains[0]", "leading"),
        ({"egress": [rule(domains=["*.com"])]}, "spec.egress[0].domains[0]", "wildcard"),
        ({"egress": [rule(ports=[443, 70000])]}, "spec.egress[0].ports[1]", "65535"),
        ({"egress": [rule(ports=[0])]}, "spec.egress[0].ports[0]", "greater than or equal to 1"),
        (
            {"egress": [rule(portRanges=[{"start": 9000, "end": 8000}])]},
            "spec.egress[0].portRanges[0]",
            "above",
        ),
        ({"egress": [rule(protocol="ICMP", ports=[1])]}, "spec.egress[0]", "ICMP has no ports"),
        ({"egress": [rule(protocol="SCTP")]}, "spec.egress[0].protocol", "TCP"),
        ({"egress": [rule(action="permit")]}, "spec.egress[0].action", "allow"),
        ({"egress": [rule(name="default-egress")]}, "spec.egress[0].name", "reserved"),
        ({"egress": [rule(name="Allow_GitHub")]}, "spec.egress[0].name", "RFC 1123"),
        ({"egress": [rule(domain=["github.com"])]}, "spec.egress[0].domain", "unknown field"),
        ({"defaultAction": {"egress": "drop"}}, "spec.defaultAction.egress", "allow"),
        ({}, "spec", "needs egress or ingress rules or a defaultAction"),
    ],
)
def test_network_policy_refusals_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    got = causes("NetworkPolicy", netpol(**spec))
    assert field in got, got
    assert words in got[field]


def test_duplicate_rule_names_across_directions_are_refused() -> None:
    got = causes("NetworkPolicy", netpol(egress=[rule(name="a")], ingress=[rule(name="b"), rule(name="a")]))
    assert got == {"spec.ingress[1].name": 'duplicate rule name "a" (also spec.egress[0].name)'}


def test_a_policy_may_not_target_another_namespace() -> None:
    obj = netpol(defaultAction={"egress": "deny"})
    obj["spec"]["virtualSites"] = ["test", "prod/all"]
    assert "spec.virtualSites[1]" in causes("NetworkPolicy", obj)


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"source": {"selector": "app in ("}}, "spec.rules[0].source.selector", "position"),
        ({"destination": {"namespaces": ["Shop"]}}, "spec.rules[0].destination.namespaces[0]", "RFC 1123"),
        ({"methods": ["FETCH"]}, "spec.rules[0].methods[0]", "GET"),
        ({"pathPrefixes": ["api"]}, "spec.rules[0].pathPrefixes[0]", 'starts with "/"'),
        ({"name": "default"}, "spec.rules[0].name", "reserved"),
    ],
)
def test_service_policy_refusals_name_the_field(bad: dict[str, Any], field: str, words: str) -> None:
    got = causes("ServicePolicy", svcpol(rule(**bad)))
    assert field in got, got
    assert words in got[field]


def test_service_policy_duplicate_rule_names() -> None:
    got = causes("ServicePolicy", svcpol(rule(name="x"), rule(name="y"), rule(name="x")))
    assert list(got) == ["spec.rules[2].name"]


def test_get_columns_show_targets_rules_sites_and_hits() -> None:
    obj = NETWORK_POLICY.normalize(netpol(egress=[rule()], defaultAction={"egress": "deny"}))
    obj["status"] = {"ruleCount": 1, "sites": 3, "totalHits": 42, "hits": {"r": 40, "default-egress": 2}}
    cols = columns_for(NETWORK_POLICY, wide=False, all_namespaces=False)
    assert [c.header for c in cols] == ["NAME", "VIRTUAL SITES", "RULES", "SITES", "HITS", "AGE"]
    assert [cell(c, obj) for c in cols[:-1]] == ["github", "test", "1", "3", "42"]
