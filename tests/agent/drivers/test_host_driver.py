"""The host driver: the ``networkPolicies`` section rendered into nftables, checked by the
real ``nft -c -f`` (never ``nft -f`` on this machine's firewall), the counter names and
the ``nft -j`` parser; loading and real traffic only inside ``unshare --net``.

``nft`` is a required test dependency (scripts/system-deps.sh installs it): if it is
missing, or ``nft -c`` is refused here, the tests fail with what it printed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.drivers.base import Driver, ItemStatus
from fleetplane.agent.drivers.host import HostDriver, removal_ruleset, render_ruleset
from fleetplane.agent.drivers.nft_policies import (
    NAME_MAX,
    EnforcedPolicy,
    counter_name,
    parse_entry,
    parse_policy_hits,
    parse_section,
)
from fleetplane.agent.drivers.simmodel.policy_sections import network_policies

DNS = {
    "github.com": ["140.82.112.3", "140.82.112.4"],
    "*.github.com": ["140.82.112.6", "2606:50c0::6"],
    "registry.fleetplane.io": ["104.18.0.10"],
}


def rule(name: str, action: str = "allow", **fields: Any) -> dict[str, Any]:
    return {"name": name, "action": action, **fields}


GITHUB: dict[str, Any] = {
    "policy": "default/github",
    "generation": 2,
    "egress": {
        "defaultAction": "deny",
        "rules": [
            rule(
                "allow-github",
                domains=["github.com", "*.github.com"],
                cidrs=[],
                protocol="TCP",
                ports=[443],
                portRanges=[{"start": 8000, "end": 8100}, {"start": 8050, "end": 8200}],
            ),
            rule("block-s3", "deny", cidrs=["52.216.0.0/15", "2001:db8::/32"]),
            rule("dns", protocol="UDP", ports=[53]),
            rule("ntp-any", ports=[123]),
            rule("ping", protocol="ICMP"),
        ],
    },
    "ingress": {
        "defaultAction": "allow",
        "rules": [rule("ssh-lan", cidrs=["192.168.0.0/16"], protocol="TCP", ports=[22])],
    },
}
BASELINE: dict[str, Any] = {
    "policy": "ops/baseline",
    "generation": 1,
    "egress": {"rules": [rule("no-telemetry", "deny", domains=["telemetry.vendor.example"])]},
}
SECTION: dict[str, Any] = {"policies": [GITHUB, BASELINE]}


def resolve(domain: str) -> list[str]:
    return DNS.get(domain, [])


def policies(section: dict[str, Any] = SECTION) -> list[EnforcedPolicy]:
    out = [e for e in parse_section(section) if isinstance(e, EnforcedPolicy)]
    assert len(out) == len(section["policies"])
    return out


def nft() -> str:
    path = shutil.which("nft")
    assert path, "nft is missing: run scripts/system-deps.sh (apt-get install nftables)"
    return path


def nft_check(text: str, tmp_path: Path) -> None:
    f = tmp_path / "ruleset.nft"
    f.write_text(text)
    done = subprocess.run([nft(), "-c", "-f", str(f)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"nft -c refused the ruleset ({done.returncode}):\n{done.stderr}\n{text}"


def chain(text: str, name: str) -> list[str]:
    body = text[text.index(f"\tchain {name} {{\n") :]
    return [line.strip() for line in body[: body.index("\n\t}")].splitlines()[1:]]


# --- rendering ---------------------------------------------------------------------


def test_policies_chain_in_order_with_return_and_drop() -> None:
    ruleset = render_ruleset(policies(), resolve)
    text = ruleset.text
    assert text.startswith("table inet fleetplane\ndelete table inet fleetplane\ntable inet fleetplane {\n")
    assert text.count("table inet fleetplane {") == 1
    assert chain(text, "output") == [
        "type filter hook output priority filter; policy accept;",
        "ct state established,related accept",
        'oifname "lo" accept',
        'jump p0_egress comment "default/github"',
        'jump p1_egress comment "ops/baseline"',
    ]
    assert chain(text, "input")[-1] == 'jump p0_ingress comment "default/github"'
    assert "jump p1_ingress" not in text  # ops/baseline governs egress only
    c = {key: name for name, key in ruleset.counters.items()}
    assert chain(text, "p0_egress") == [
        "meta l4proto tcp th dport { 443, 8000-8200 } ip daddr @p0_egress_r0_d4 "
        f'counter name "{c["default/github/allow-github"]}" return',
        "meta l4proto tcp th dport { 443, 8000-8200 } ip6 daddr @p0_egress_r0_d6 "
        f'counter name "{c["default/github/allow-github"]}" return',
        f'ip daddr @p0_egress_r1_n4 counter name "{c["default/github/block-s3"]}" drop',
        f'ip6 daddr @p0_egress_r1_n6 counter name "{c["default/github/block-s3"]}" drop',
        f'meta l4proto udp th dport {{ 53 }} counter name "{c["default/github/dns"]}" return',
        "meta l4proto { tcp, udp, sctp } th dport { 123 } "
        f'counter name "{c["default/github/ntp-any"]}" return',
        f'meta l4proto {{ icmp, ipv6-icmp }} counter name "{c["default/github/ping"]}" return',
        f'counter name "{c["default/github/default-egress"]}" drop',
    ]
    assert chain(text, "p0_ingress") == [
        "meta l4proto tcp th dport { 22 } ip saddr @p0_ingress_r0_n4 "
        f'counter name "{c["default/github/ssh-lan"]}" return',
        f'counter name "{c["default/github/default-ingress"]}" return',
    ]
    assert chain(text, "p1_egress") == [
        f'ip daddr @p1_egress_r0_d4 counter name "{c["ops/baseline/no-telemetry"]}" drop',
        f'ip6 daddr @p1_egress_r0_d6 counter name "{c["ops/baseline/no-telemetry"]}" drop',
        f'counter name "{c["ops/baseline/default-egress"]}" return',  # no defaultAction: allow
    ]
    assert (
        "set p0_egress_r0_d4 { type ipv4_addr; flags interval; auto-merge; "
        "elements = { 140.82.112.3, 140.82.112.4, 140.82.112.6 }; }" in text
    )
    assert (
        "set p0_egress_r0_d6 { type ipv6_addr; flags interval; auto-merge; elements = { 2606:50c0::6 }; }"
        in text
    )
    assert (
        "set p1_egress_r0_d4 { type ipv4_addr; flags interval; auto-merge; }" in text
    )  # resolved to nothing
    assert f'counter {c["default/github/allow-github"]} {{ comment "default/github/allow-github"; }}' in text


def test_hit_keys_are_the_sims() -> None:
    """The same section gives the host's counters exactly the sim's hit keys."""
    sim, items = network_policies({"networkPolicies": SECTION})
    assert [i.state for i in items] == ["Applied", "Applied"]
    sim_keys = {key for p in sim for key in p.hit_keys()}
    assert set(render_ruleset(policies(), resolve).counters.values()) == sim_keys
    assert "default/github/default-egress" in sim_keys and "ops/baseline/default-egress" in sim_keys


LONG = "n" * 63 + "/" + "p" * 60  # 124 characters: its keys are longer than a comment may be


@pytest.mark.parametrize(
    "section",
    [
        SECTION,
        {"policies": [GITHUB]},
        {"policies": [{**GITHUB, "egress": {**GITHUB["egress"], "defaultAction": "allow"}}]},
        {"policies": [{**GITHUB, "ingress": {"defaultAction": "deny", "rules": []}}, BASELINE]},
        {"policies": [{"policy": "a/only-ingress", "ingress": {"defaultAction": "deny"}}]},
        {"policies": [{"policy": "a/governs-nothing"}]},
        {"policies": []},
        {"policies": [{"policy": LONG, "egress": {"rules": [rule("r" * 63, "deny", protocol="ICMP")]}}]},
    ],
    ids=["two", "one", "allow", "empty-ingress", "ingress-only", "nothing", "no-policies", "long-names"],
)
def test_real_nft_accepts_every_rendering(section: dict[str, Any], tmp_path: Path) -> None:
    nft_check(render_ruleset(policies(section), resolve).text, tmp_path)


def test_real_nft_accepts_carried_counts_and_removal(tmp_path: Path) -> None:
    name = counter_name("default/github/allow-github")
    text = render_ruleset(policies(), resolve, {name: (17, 1020)}).text
    assert f'counter {name} {{ packets 17 bytes 1020; comment "default/github/allow-github"; }}' in text
    nft_check(text, tmp_path)
    nft_check(removal_ruleset(), tmp_path)


def test_real_nft_rejects_a_broken_ruleset() -> None:
    why = HostDriver(nft=nft()).check("table inet fleetplane { chain c { bogus } }\n")
    assert why is not None and "syntax error" in why


# --- counter names -----------------------------------------------------------------


def test_counter_names_round_trip() -> None:
    keys = [
        "default/github/allow-github",
        "default/github/default-egress",
        "default/github/default-ingress",
        "default/git-hub/allow-github",  # differs only before the tail
        "a/b/c",
        f"{LONG}/{'r' * 63}",
        f"{LONG}/default-ingress",
        *(f"ns/policy-{i}/rule-{j}" for i in range(40) for j in range(25)),
    ]
    names = [counter_name(k) for k in keys]
    assert names == [counter_name(k) for k in keys]  # deterministic
    assert len(set(names)) == len(keys)  # one name per key
    assert all(re.fullmatch(r"c[0-9a-f]{10}_[a-z0-9_]*[a-z0-9]", n) and len(n) <= NAME_MAX for n in names)
    assert counter_name("default/github/allow-github").endswith("_allow_github")
    entry = {"policy": LONG, "egress": {"rules": [rule("r" * 63)]}, "ingress": {"defaultAction": "deny"}}
    ruleset = render_ruleset([parse_entry(entry)], resolve)
    assert sorted(ruleset.counters.values()) == sorted(parse_entry(entry).hit_keys())
    assert all(counter_name(key) == name for name, key in ruleset.counters.items())
    assert f'comment "{LONG}/default-ingress"' not in ruleset.text  # over 128: no comment


# What the real `nft -j list counters` printed for a rendered ruleset (nftables 1.0.6,
# in a private network namespace): counts carried in, and a policy whose keys are too
# long for a comment.
NFT_JSON = """{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
"json_schema_version": 1}},
{"counter": {"family": "inet", "name": "cb7a7936a8f_allow_github", "table": "fleetplane", "handle": 5,
 "comment": "default/github/allow-github", "packets": 17, "bytes": 1020}},
{"counter": {"family": "inet", "name": "cd45b499a70_default_egress", "table": "fleetplane", "handle": 6,
 "comment": "default/github/default-egress", "packets": 4, "bytes": 240}},
{"counter": {"family": "inet", "name": "cbc79940e15_rrrrrrrrrrrrrrrrrrr", "table": "fleetplane",
 "handle": 7, "packets": 0, "bytes": 0}},
{"counter": {"family": "inet", "name": "c5db28df0bf_default_ingress", "table": "fleetplane", "handle": 8,
 "packets": 2, "bytes": 0}},
{"counter": {"family": "inet", "name": "other", "table": "somebody-else", "handle": 3,
 "packets": 9, "bytes": 9}},
{"counter": {"family": "ip", "name": "cb7a7936a8f_allow_github", "table": "fleetplane", "handle": 3,
 "packets": 9, "bytes": 9}}]}"""


def test_hits_from_nft_json_map_back_to_the_keys() -> None:
    section = {
        "policies": [
            {
                "policy": "default/github",
                "egress": {"defaultAction": "deny", "rules": [rule("allow-github")]},
            },
            {"policy": LONG, "ingress": {"rules": [rule("r" * 63, "deny", protocol="ICMP")]}},
        ]
    }
    ruleset = render_ruleset(policies(section), resolve)
    assert parse_policy_hits(NFT_JSON, ruleset.counters) == {
        "default/github/allow-github": 17,
        "default/github/default-egress": 4,
        f"{LONG}/{'r' * 63}": 0,
        f"{LONG}/default-ingress": 2,
    }
    # Nothing loaded by this process yet: the keys that fit a comment.
    assert parse_policy_hits(NFT_JSON) == {
        "default/github/allow-github": 17,
        "default/github/default-egress": 4,
    }
    assert parse_policy_hits(NFT_JSON, {}) == {}
    assert parse_policy_hits('{"nftables": [{"metainfo": {"version": "1.0.6"}}]}') == {}


# --- one item per policy; a bad entry fails alone ----------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("not an object", "an entry must name its policy"),
        ({"egress": {"rules": []}}, "an entry must name its policy"),
        ({"policy": "no-namespace"}, "policy must be <namespace>/<name>"),
        ({"policy": "Bad/x"}, "the policy's namespace 'Bad'"),
        ({"policy": "a/b", "egress": []}, "egress must be an object with a rules list"),
        (
            {"policy": "a/b", "egress": {"defaultAction": "maybe"}},
            "egress.defaultAction must be allow or deny",
        ),
        ({"policy": "a/b", "egress": {"rules": [rule("x", "maybe")]}}, "egress.rules[0].action"),
        ({"policy": "a/b", "ingress": {"rules": [rule("x y")]}}, "ingress.rules[0].name 'x y'"),
        ({"policy": "a/b", "egress": {"rules": [rule("default-egress")]}}, "reserved"),
        ({"policy": "a/b", "egress": {"rules": [rule("x", protocol="GRE")]}}, "egress.rules[0].protocol"),
        ({"policy": "a/b", "egress": {"rules": [rule("x", ports=[0])]}}, "egress.rules[0].ports[0]"),
        (
            {"policy": "a/b", "egress": {"rules": [rule("x", portRanges=[{"start": 90, "end": 80}])]}},
            "egress.rules[0].portRanges[0]: start (90) must not be above end (80)",
        ),
        (
            {"policy": "a/b", "egress": {"rules": [rule("x", protocol="ICMP", ports=[1])]}},
            "ICMP has no ports",
        ),
        ({"policy": "a/b", "egress": {"rules": [rule("x", cidrs=["10.0.0.0/33"])]}}, "egress.rules[0].cidrs"),
        ({"policy": "a/b", "egress": {"rules": [rule("x", domains=["a b"])]}}, "not a domain"),
        (
            {"policy": "a/b", "egress": {"rules": [rule("x")]}, "ingress": {"rules": [rule("x")]}},
            "rule name 'x' is used twice",
        ),
        ({"policy": "default/github"}, "policy default/github is listed twice"),
    ],
)
def test_a_bad_entry_fails_alone(bad: Any, reason: str) -> None:
    loaded: list[str] = []

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if "-f" in argv and "-c" not in argv:
            loaded.append(Path(argv[-1]).read_text())
        return subprocess.CompletedProcess(list(argv), 0, '{"nftables": []}', "")

    section = {"policies": [GITHUB, bad, BASELINE]}
    items = [
        i.to_status()
        for i in HostDriver(resolver=resolve, run=run).apply_sync(
            {"spec": {"sections": {"networkPolicies": section}}}
        )
    ]
    assert len(items) == 3
    assert items[0] == {"section": "networkPolicies", "name": "default/github", "state": "Applied"}
    assert items[2] == {"section": "networkPolicies", "name": "ops/baseline", "state": "Applied"}
    assert items[1]["state"] == "Failed" and reason in items[1]["reason"], items[1]
    [text] = loaded
    assert "jump p0_egress" in text and "jump p1_egress" in text and "jump p2_" not in text


def test_a_section_of_the_wrong_shape_is_one_failed_item() -> None:
    for section in ([GITHUB], {"policies": {"a": 1}}, None):
        [item] = parse_section(section)
        assert isinstance(item, ItemStatus)
        assert item.to_status() == {
            "section": "networkPolicies",
            "name": "networkPolicies",
            "state": "Failed",
            "reason": "networkPolicies must be an object with a policies list",
        }


def test_a_policy_nft_refuses_on_its_own_fails_alone() -> None:
    """``nft`` refuses whatever contains ops/baseline: that policy fails with what nft
    printed, the other one is still loaded."""
    loaded: list[str] = []

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        text = Path(argv[-1]).read_text() if "-f" in argv else ""
        if "-c" in argv and '"ops/baseline"' in text:
            return subprocess.CompletedProcess(list(argv), 1, "", "Error: No such file or directory")
        if "-f" in argv and "-c" not in argv:
            loaded.append(text)
        return subprocess.CompletedProcess(list(argv), 0, '{"nftables": []}', "")

    items = HostDriver(resolver=resolve, run=run).apply_sync(
        {"spec": {"sections": {"networkPolicies": SECTION}}}
    )
    assert [(i.name, i.state, i.reason) for i in items] == [
        ("default/github", "Applied", None),
        ("ops/baseline", "Failed", "nft -c -f failed (1): Error: No such file or directory"),
    ]
    [text] = loaded
    assert "default/github" in text and "ops/baseline" not in text


def test_a_refused_check_fails_every_item_with_what_nft_printed() -> None:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            list(argv), 1, "", "Error: Could not process rule: Operation not permitted"
        )

    items = HostDriver(resolver=resolve, run=run).apply_sync(
        {"spec": {"sections": {"networkPolicies": SECTION}}}
    )
    why = "nft -c -f failed (1): Error: Could not process rule: Operation not permitted"
    assert [(i.name, i.state, i.reason) for i in items] == [
        ("default/github", "Failed", why),
        ("ops/baseline", "Failed", why),
    ]


# --- the driver --------------------------------------------------------------------


def test_apply_checks_with_real_nft_and_never_loads_here() -> None:
    """``nft -c`` runs for real; ``nft -f`` is recorded, not run; ``nft -j`` answers
    with counts, so a reload keeps those of the unchanged policy."""
    loaded: list[str] = []
    counts = {
        "nftables": [
            {
                "counter": {
                    "family": "inet",
                    "table": "fleetplane",
                    "name": counter_name(k),
                    "packets": n,
                    "bytes": 60 * n,
                }
            }
            for k, n in [("default/github/allow-github", 7), ("ops/baseline/no-telemetry", 3)]
        ]
    }

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if "-c" in argv:
            return subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if "-j" in argv:
            return subprocess.CompletedProcess(list(argv), 0, json.dumps(counts), "")
        loaded.append(Path(argv[-1]).read_text())
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    driver = HostDriver(resolver=resolve, nft=nft(), run=run)
    assert isinstance(driver, Driver)
    manifest = {"spec": {"sections": {"networkPolicies": SECTION, "reservations": {"cpuMillis": 1}}}}
    items = asyncio.run(driver.apply(manifest))
    assert [i.to_status() for i in items] == [
        {"section": "networkPolicies", "name": "default/github", "state": "Applied"},
        {"section": "networkPolicies", "name": "ops/baseline", "state": "Applied"},
        {
            "section": "reservations",
            "name": "reservations",
            "state": "Failed",
            "reason": "the host driver does not support section 'reservations'",
        },
    ]
    assert len(loaded) == 1 and "packets" not in loaded[0]  # nothing to carry yet
    assert driver.policy_hits() == {"default/github/allow-github": 7, "ops/baseline/no-telemetry": 3}
    asyncio.run(driver.apply(manifest))  # the same ruleset again: not reloaded (counters kept)
    assert len(loaded) == 1
    regenerated = {
        "policies": [{**GITHUB, "generation": 3}, {**BASELINE, "egress": {"defaultAction": "deny"}}]
    }
    asyncio.run(driver.apply({"spec": {"sections": {"networkPolicies": regenerated}}}))
    assert len(loaded) == 2
    assert f"counter {counter_name('default/github/allow-github')} {{ packets 7 bytes 420;" in loaded[1]
    assert "packets 3" not in loaded[1]  # ops/baseline changed: its counters restart at 0
    assert asyncio.run(driver.apply({"spec": {"sections": {}}})) == []
    assert loaded[-1] == removal_ruleset()
    assert driver.policy_hits() == {}


def test_observe_reads_this_host() -> None:
    obs = asyncio.run(HostDriver(nft=nft(), now=lambda: 42.0).observe())
    [node] = obs.nodes
    assert node.cpu_millis >= 1000 and node.memory_bytes > 0 and node.disk_bytes > 0
    assert obs.allocatable.cpu_millis == node.cpu_millis
    assert 0 <= obs.usage.memory_percent <= 100 and 0 <= obs.usage.cpu_percent <= 100
    assert obs.now == 42.0
    assert isinstance(obs.policy_hits, dict)
    assert obs.to_status()["nodeCount"] == 1


# Runs inside `unshare --net`: the real driver (nft -c, nft -f, nft -j), then UDP
# datagrams out of a veth pair, then the hits the driver reads back.
IN_NETNS = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from fleetplane.agent.drivers.host import HostDriver
    section = json.loads(sys.argv[1])
    # No IPv6 on the veths: its autoconfiguration (router solicitations, MLD reports) sends
    # packets of its own at a moment of the kernel's choosing, counted on default-egress.
    for knob in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as f:
            f.write("1")
    for cmd in ("ip link add v0 type veth peer name v1", "ip addr add 10.9.0.1/24 dev v0",
                "ip link set v0 up", "ip link set v1 up"):
        subprocess.run(cmd.split(), check=True)
    driver = HostDriver(resolver=lambda d: {"blocked.example": ["10.9.0.3"]}.get(d, []), nft=sys.argv[2])
    items = [i.to_status() for i in driver.apply_sync({"spec": {"sections": {"networkPolicies": section}}})]
    sent = {}
    for peer in ("10.9.0.2", "10.9.0.3", "10.9.0.4"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", (peer, 5353))
                sent[peer] = True
            except PermissionError:
                sent[peer] = False
    print(json.dumps({"items": items, "sent": sent, "hits": driver.policy_hits()}))
    """
)


def test_real_traffic_in_a_throwaway_network_namespace() -> None:
    """The real ``nft -f`` inside ``unshare --net`` (a private network namespace: the
    machine's firewall is untouched): a flow passes only if every policy allows it, and
    each policy counts it once, under the hit keys."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is missing"
    section = {
        "policies": [
            {
                "policy": "a/first",
                "egress": {
                    "defaultAction": "deny",
                    "rules": [
                        rule(
                            "lan",
                            cidrs=["10.9.0.0/24"],
                            protocol="UDP",
                            portRanges=[{"start": 5000, "end": 6000}],
                        )
                    ],
                },
            },
            {
                "policy": "b/second",
                "egress": {"rules": [rule("blocked", "deny", domains=["blocked.example"])]},
            },
            {
                "policy": "c/third",
                "egress": {"rules": [rule("not-four", "deny", cidrs=["10.9.0.4"], protocol="TCP")]},
            },
        ]
    }
    done = subprocess.run(
        [unshare, "--net", sys.executable, "-c", IN_NETNS, json.dumps(section), nft()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"could not run in a private network namespace: {done.stderr}"
    out = json.loads(done.stdout)
    assert [i["state"] for i in out["items"]] == ["Applied"] * 3
    assert out["sent"] == {"10.9.0.2": True, "10.9.0.3": False, "10.9.0.4": True}
    assert out["hits"] == {
        "a/first/lan": 3,
        "a/first/default-egress": 0,
        "b/second/blocked": 1,
        "b/second/default-egress": 2,  # .3 was dropped by b: c never saw it
        "c/third/not-four": 0,  # UDP, not TCP
        "c/third/default-egress": 2,
    }
