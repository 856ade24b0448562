"""The host driver: rendering the sim's policy shape into nftables, checked by the real
``nft -c -f`` (never ``nft -f`` on this machine's firewall), and the ``nft -j`` parser.

``nft`` is a required test dependency (scripts/system-deps.sh installs it): if it is
missing, or ``nft -c`` is refused here, the tests fail with what it printed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.drivers.base import Driver
from fleetplane.agent.drivers.host import (
    HostDriver,
    RulesetError,
    parse_policy,
    parse_policy_hits,
    removal_ruleset,
    render_ruleset,
)

DNS = {
    "registry.fleetplane.io": ["104.18.0.10", "2606:4700::6812:a"],
    "*.fleetplane.io": ["104.18.0.11", "104.18.0.10"],
    "github.com": ["140.82.112.3"],
}

POLICY: dict[str, Any] = {
    "name": "edge",
    "defaultAction": "deny",
    "rules": [
        {
            "name": "registry",
            "direction": "egress",
            "action": "allow",
            "domains": ["registry.fleetplane.io", "*.fleetplane.io"],
            "protocol": "tcp",
            "ports": [443],
        },
        {"name": "dns", "direction": "egress", "action": "allow", "protocol": "udp", "ports": [53]},
        {"name": "ntp-any", "direction": "egress", "action": "allow", "ports": [123]},
        {
            "name": "block.s3",
            "direction": "egress",
            "action": "deny",
            "cidrs": ["52.216.0.0/15", "2001:db8::/32"],
        },
        {
            "name": "gh",
            "direction": "egress",
            "action": "allow",
            "domains": ["github.com", "unknown.example"],
        },
        {
            "name": "ssh-lan",
            "direction": "ingress",
            "action": "allow",
            "cidrs": ["192.168.0.0/16"],
            "protocol": "tcp",
            "ports": [22],
        },
        {"name": "ping", "direction": "ingress", "action": "allow", "protocol": "icmp"},
        {"name": "ping6", "direction": "ingress", "action": "allow", "protocol": "icmpv6"},
    ],
}


def resolve(domain: str) -> list[str]:
    return DNS.get(domain, [])


def nft() -> str:
    path = shutil.which("nft")
    assert path, "nft is missing: run scripts/system-deps.sh (apt-get install nftables)"
    return path


def nft_check(text: str, tmp_path: Any) -> None:
    f = tmp_path / "ruleset.nft"
    f.write_text(text)
    done = subprocess.run([nft(), "-c", "-f", str(f)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"nft -c refused the ruleset ({done.returncode}):\n{done.stderr}\n{text}"


def test_render_is_complete_and_ordered() -> None:
    text = render_ruleset(parse_policy(POLICY), resolve)
    assert text.startswith("table inet fleetplane\ndelete table inet fleetplane\ntable inet fleetplane {\n")
    assert 'counter r0_registry { comment "edge/registry"; }' in text
    assert 'counter default { comment "edge/default"; }' in text
    assert (
        "set r0_registry_d4 { type ipv4_addr; flags interval; auto-merge; elements = { 104.18.0.10/31 }; }"
        in text
    )
    assert "elements = { 2606:4700::6812:a }" in text
    assert (
        "set r3_block_s3_n4 { type ipv4_addr; flags interval; auto-merge; elements = { 52.216.0.0/15 }; }"
        in text
    )
    egress = text[text.index("chain egress") :]
    order = [
        'meta l4proto tcp th dport { 443 } ip daddr @r0_registry_d4 counter name "r0_registry" accept',
        'meta l4proto tcp th dport { 443 } ip6 daddr @r0_registry_d6 counter name "r0_registry" accept',
        'meta l4proto udp th dport { 53 } counter name "r1_dns" accept',
        'meta l4proto { tcp, udp, sctp } th dport { 123 } counter name "r2_ntp_any" accept',
        'ip daddr @r3_block_s3_n4 counter name "r3_block_s3" drop',
        'ip6 daddr @r3_block_s3_n6 counter name "r3_block_s3" drop',
        'ip daddr @r4_gh_d4 counter name "r4_gh" accept',
        'counter name "default"',
    ]
    positions = [egress.index(line) for line in order]
    assert positions == sorted(positions)
    assert "policy drop;" in egress
    assert "hook output" in egress
    ingress = text[text.index("chain ingress") : text.index("chain egress")]
    assert "hook input" in ingress
    assert (
        'meta l4proto tcp th dport { 22 } ip saddr @r5_ssh_lan_n4 counter name "r5_ssh_lan" accept' in ingress
    )
    assert "meta l4proto ipv6-icmp counter" in ingress
    assert "ct state established,related accept" in ingress


@pytest.mark.parametrize("default", ["deny", "allow"])
def test_real_nft_accepts_the_rendered_ruleset(default: str, tmp_path: Any) -> None:
    text = render_ruleset(parse_policy({**POLICY, "defaultAction": default}), resolve)
    assert f"policy {'drop' if default == 'deny' else 'accept'};" in text
    nft_check(text, tmp_path)


def test_real_nft_accepts_empty_policy_and_removal(tmp_path: Any) -> None:
    nft_check(render_ruleset(parse_policy({"name": "empty"}), resolve), tmp_path)
    nft_check(removal_ruleset(), tmp_path)


def test_real_nft_rejects_a_broken_ruleset(tmp_path: Any) -> None:
    driver = HostDriver(nft=nft())
    why = driver.check("table inet fleetplane { chain c { bogus } }\n")
    assert why is not None and "syntax error" in why


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": 'bad"name'}, "networkPolicy.name"),
        ({"defaultAction": "maybe"}, "defaultAction"),
        ({"rules": [{"name": "x", "direction": "egress", "action": "allow", "protocol": "gre"}]}, "protocol"),
        ({"rules": [{"name": "x", "direction": "up", "action": "allow"}]}, "bad direction"),
        ({"rules": [{"name": "x", "direction": "egress", "action": "allow", "ports": [0]}]}, "ports"),
        (
            {"rules": [{"name": "x", "direction": "egress", "action": "allow", "cidrs": ["10.0.0.0/33"]}]},
            "10.0.0.0/33",
        ),
        (
            {"rules": [{"name": "x", "direction": "egress", "action": "allow", "domains": ["a b"]}]},
            "not a domain",
        ),
        (
            {
                "rules": [
                    {"name": "x", "direction": "egress", "action": "allow", "protocol": "icmp", "ports": [1]}
                ]
            },
            "no ports",
        ),
        ({"rules": [{"name": "default", "direction": "egress", "action": "allow"}]}, "unique"),
    ],
)
def test_bad_sections_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesetError, match=message):
        parse_policy({**POLICY, **change})


# What `nft -j list ruleset` printed for a ruleset of this shape (nftables 1.0.6).
NFT_JSON = """{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "fleetplane", "handle": 2}},
{"counter": {"family": "inet", "name": "r0_ssh", "table": "fleetplane", "handle": 2,
  "comment": "p/ssh", "packets": 17, "bytes": 1020}},
{"counter": {"family": "inet", "name": "default", "table": "fleetplane", "handle": 3,
  "comment": "p/default", "packets": 4, "bytes": 240}},
{"counter": {"family": "inet", "name": "other", "table": "somebody-else", "handle": 3,
  "packets": 9, "bytes": 9}},
{"set": {"family": "inet", "name": "r0_ssh_n6", "table": "fleetplane", "type": "ipv6_addr", "handle": 5}}]}"""


def test_parse_policy_hits() -> None:
    assert parse_policy_hits(NFT_JSON) == {"p/ssh": 17, "p/default": 4}
    assert parse_policy_hits('{"nftables": [{"metainfo": {"version": "1.0.6"}}]}') == {}


def test_apply_checks_with_real_nft_and_never_loads_here(tmp_path: Any) -> None:
    """``nft -c`` runs for real; ``nft -f`` is recorded, not run."""
    loaded: list[str] = []

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if "-c" in argv or "-j" in argv:
            return subprocess.run(list(argv), capture_output=True, text=True, check=False)
        loaded.append(Path(argv[-1]).read_text())
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    driver = HostDriver(resolver=resolve, nft=nft(), run=run)
    assert isinstance(driver, Driver)
    manifest = {"spec": {"sections": {"networkPolicy": POLICY, "reservations": {"cpuMillis": 1}}}}
    items = asyncio.run(driver.apply(manifest))
    assert [i.to_status() for i in items] == [
        {"section": "networkPolicy", "name": "edge", "state": "Applied"},
        {
            "section": "reservations",
            "name": "reservations",
            "state": "Failed",
            "reason": "the host driver does not support section 'reservations'",
        },
    ]
    assert len(loaded) == 1 and "chain egress" in loaded[0]
    asyncio.run(driver.apply(manifest))  # the same ruleset again: not reloaded (counters kept)
    assert len(loaded) == 1
    assert asyncio.run(driver.apply({"spec": {"sections": {}}})) == []
    assert loaded[-1] == removal_ruleset()
    bad = {"spec": {"sections": {"networkPolicy": {**POLICY, "defaultAction": "maybe"}}}}
    [item] = asyncio.run(driver.apply(bad))
    assert item.state == "Failed" and "defaultAction" in (item.reason or "")
    assert len(loaded) == 2


def test_a_refused_check_fails_the_item_with_what_nft_printed() -> None:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            list(argv), 1, "", "Error: Could not process rule: Operation not permitted"
        )

    [item] = HostDriver(resolver=resolve, run=run).apply_sync(
        {"spec": {"sections": {"networkPolicy": POLICY}}}
    )
    assert item.state == "Failed"
    assert item.reason == "nft -c -f failed (1): Error: Could not process rule: Operation not permitted"


def test_observe_reads_this_host() -> None:
    obs = asyncio.run(HostDriver(nft=nft(), now=lambda: 42.0).observe())
    [node] = obs.nodes
    assert node.cpu_millis >= 1000 and node.memory_bytes > 0 and node.disk_bytes > 0
    assert obs.allocatable.cpu_millis == node.cpu_millis
    assert 0 <= obs.usage.memory_percent <= 100 and 0 <= obs.usage.cpu_percent <= 100
    assert obs.now == 42.0
    assert isinstance(obs.policy_hits, dict)
    assert obs.to_status()["nodeCount"] == 1


def test_apply_and_read_back_in_a_throwaway_network_namespace(tmp_path: Any) -> None:
    """Loads the ruleset with the real ``nft -f`` inside ``unshare --net`` (a private
    network namespace: the machine's firewall is untouched) and parses the real
    ``nft -j list ruleset`` output from it."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is missing"
    f = tmp_path / "ruleset.nft"
    f.write_text(render_ruleset(parse_policy(POLICY), resolve))
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", f'{nft()} -f "$1" && {nft()} -j list ruleset', "sh", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"could not load in a private network namespace: {done.stderr}"
    hits = parse_policy_hits(done.stdout)
    assert set(hits) == {f"edge/{r['name']}" for r in POLICY["rules"]} | {"edge/default"}
    assert all(v >= 0 for v in hits.values())
