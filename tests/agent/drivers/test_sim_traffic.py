"""Network policy evaluation and the seeded traffic generator with hit counters."""

from __future__ import annotations

import pytest

from fleetplane.agent.drivers.simmodel.traffic import (
    DEFAULT_CATALOGUE,
    Endpoint,
    Flow,
    NetworkPolicy,
    Rule,
    TrafficModel,
    domain_matches,
)
from tests.agent.drivers.conftest import make_site, step


def https(domain: str | None, ip: str = "1.2.3.4", port: int = 443, proto: str = "tcp") -> Flow:
    return Flow("egress", ip, proto, port, domain)


def test_wildcard_matches_subdomains_not_the_apex() -> None:
    assert domain_matches("*.example.com", "a.example.com")
    assert domain_matches("*.example.com", "b.a.EXAMPLE.com.")
    assert not domain_matches("*.example.com", "example.com")
    assert not domain_matches("*.example.com", "badexample.com")
    assert domain_matches("example.com", "example.com")
    assert not domain_matches("example.com", "a.example.com")
    apex_too = Rule("r", "egress", "allow", domains=("*.example.com", "example.com"))
    assert apex_too.matches(https("example.com")) and apex_too.matches(https("x.example.com"))


def test_rules_are_evaluated_in_order() -> None:
    policy = NetworkPolicy(
        "p",
        (
            Rule("deny-telemetry", "egress", "deny", domains=("telemetry.example.com",)),
            Rule("allow-example", "egress", "allow", domains=("*.example.com",)),
            Rule("allow-all-https", "egress", "allow", protocol="tcp", ports=(443,)),
        ),
    )
    assert policy.evaluate(https("telemetry.example.com")) == ("p/deny-telemetry", "deny")
    assert policy.evaluate(https("api.example.com")) == ("p/allow-example", "allow")
    assert policy.evaluate(https("other.org")) == ("p/allow-all-https", "allow")
    assert policy.evaluate(https("other.org", port=80)) == ("p/default", "deny")
    assert policy.evaluate(https(None, port=53, proto="udp")) == ("p/default", "deny")


def test_cidr_protocol_port_direction_and_default_action() -> None:
    policy = NetworkPolicy(
        "lan",
        (
            Rule("ssh-from-lan", "ingress", "allow", cidrs=("192.168.0.0/16",), protocol="tcp", ports=(22,)),
            Rule("no-ssh", "ingress", "deny", protocol="tcp", ports=(22,)),
            Rule(
                "dns", "egress", "allow", cidrs=("8.8.8.8/32", "2001:4860::/32"), protocol="udp", ports=(53,)
            ),
        ),
        default_action="allow",
    )
    assert policy.evaluate(Flow("ingress", "192.168.4.2", "tcp", 22)) == ("lan/ssh-from-lan", "allow")
    assert policy.evaluate(Flow("ingress", "198.18.0.9", "tcp", 22)) == ("lan/no-ssh", "deny")
    assert policy.evaluate(Flow("egress", "192.168.4.2", "tcp", 22)) == ("lan/default", "allow")
    assert policy.evaluate(Flow("egress", "8.8.8.8", "udp", 53)) == ("lan/dns", "allow")
    assert policy.evaluate(Flow("egress", "2001:4860::8888", "udp", 53)) == ("lan/dns", "allow")
    assert policy.evaluate(Flow("egress", "8.8.8.8", "tcp", 53)) == ("lan/default", "allow")


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        NetworkPolicy("p", (Rule("a", "egress", "allow"), Rule("a", "egress", "deny")))
    with pytest.raises(ValueError):
        Rule("a", "egress", "allow", cidrs=("not-a-cidr",))


def test_generator_rate_and_determinism() -> None:
    a = TrafficModel("seed", 0.0, rate=2.5)
    b = TrafficModel("seed", 0.0, rate=2.5)
    a.advance(10.0)
    for t in range(1, 11):  # advanced in steps: the same flows
        b.advance(float(t) - 0.5)
        b.advance(float(t))
    assert a.generated == b.generated == 25
    assert [a.flows_in_second(k) for k in range(10)] == [b.flows_in_second(k) for k in range(10)]
    other = TrafficModel("other", 0.0, rate=2.5)
    assert [other.flows_in_second(k) for k in range(10)] != [a.flows_in_second(k) for k in range(10)]


def test_flows_nobody_evaluates_are_counted_as_if_drawn() -> None:
    """Without a policy the model counts a second's flows without drawing them; the count is
    the one drawing them gives, however the model is advanced."""
    lazy = TrafficModel("seed", 0.25, rate=3.7)
    for now in (0.5, 1.3, 1.9, 7.25, 7.26, 40.0, 41.5):
        lazy.advance(now)
    drawn = sum(len(lazy.flows_in_second(k)) for k in range(41))  # seconds ending by 41.25
    assert lazy.generated == drawn == 151


def test_cidr_endpoints_draw_addresses_inside() -> None:
    model = TrafficModel("s", 0.0, rate=20, catalogue=[Endpoint("ingress", "10.1.0.0/16", "tcp", 443)])
    flows = [f for k in range(5) for f in model.flows_in_second(k)]
    assert len(flows) == 100
    assert all(f.peer.startswith("10.1.") for f in flows)
    assert len({f.peer for f in flows}) > 50


def test_site_hit_counters_add_up_to_flows() -> None:
    site = make_site(traffic_per_s=7.0)
    step(site, 5)  # no policy yet: generated, not counted
    assert site.observation().policy_hits == {}
    policy = NetworkPolicy(
        "edge",
        (
            Rule("registry", "egress", "allow", domains=("*.fleetplane.io",)),
            Rule("dns", "egress", "allow", protocol="udp", ports=(53, 123)),
            Rule("lan-https", "ingress", "allow", cidrs=("10.0.0.0/8",), ports=(443,)),
        ),
    )
    site.set_policy(policy)
    step(site, 100)
    hits = site.observation().policy_hits
    assert sum(hits.values()) == site.traffic.evaluated == 700
    assert site.traffic.generated == 735
    assert set(hits) == {"edge/registry", "edge/dns", "edge/lan-https", "edge/default"}
    assert all(v > 0 for v in hits.values())
    assert {key for _, key, _ in site.traffic.recent} <= set(hits)
    # a new policy starts from zero; the same one keeps counting
    site.set_policy(policy)
    assert site.observation().policy_hits == hits
    site.set_policy(NetworkPolicy("edge", (), "allow"))
    assert site.observation().policy_hits == {"edge/default": 0}


def test_default_catalogue_covers_both_directions() -> None:
    assert {e.direction for e in DEFAULT_CATALOGUE} == {"egress", "ingress"}
