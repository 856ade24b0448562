"""The ``networkPolicies`` and ``servicePolicies`` sections: every policy that targets a site
is listed, sorted, with its generation and rules in order; only targeted sites get them, and
retargeting a policy (the reference example's move from ``test`` to ``prod``) recompiles
exactly the sites that join."""

from __future__ import annotations

from typing import Any

from fleetplane.controllers.manifests import ManifestState
from fleetplane.controllers.policy_sections import NetworkPolicyContributor, ServicePolicyContributor
from fleetplane.controllers.sections import SECTIONS
from fleetplane.core.objects import Obj
from fleetplane.core.selectors import parse_selector
from fleetplane.kinds import NETWORK_POLICY, SERVICE_POLICY

GITHUB_RULE = {"name": "allow-github", "action": "allow", "domains": ["github.com"]}


def present(value: dict[str, Any] | None) -> dict[str, Any]:
    """A contribution or a compiled manifest that must be there."""
    assert value is not None
    return value


def netpol(
    name: str, targets: list[str], generation: int = 1, namespace: str = "default", **spec: Any
) -> Obj:
    obj = NETWORK_POLICY.normalize(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"virtualSites": targets, **spec}}
    )
    obj["metadata"]["generation"] = generation
    return obj


def svcpol(name: str, targets: list[str], **spec: Any) -> Obj:
    obj = SERVICE_POLICY.normalize(
        {"metadata": {"name": name, "namespace": "default"}, "spec": {"virtualSites": targets, **spec}}
    )
    obj["metadata"]["generation"] = 1
    return obj


def github(targets: list[str], generation: int = 1) -> Obj:
    return netpol("github", targets, generation, egress=[GITHUB_RULE], defaultAction={"egress": "deny"})


def test_network_entry_carries_policy_generation_and_governed_directions_only() -> None:
    section = NetworkPolicyContributor().contribute([github(["test"], generation=3)], {})
    assert section == {
        "policies": [
            {
                "policy": "default/github",
                "generation": 3,
                "egress": {
                    "defaultAction": "deny",
                    "rules": [
                        {
                            **GITHUB_RULE,
                            "cidrs": [],
                            "protocol": "ANY",
                            "ports": [],
                            "portRanges": [],
                        }
                    ],
                },
            }
        ]
    }
    # Rules without a default action are exceptions to "allow"; rule order is kept.
    rules = [{"name": n, "action": "deny", "ports": [22]} for n in ("z-first", "a-second")]
    lan = NetworkPolicyContributor().contribute([netpol("lan", ["x"], ingress=rules)], {})
    (entry,) = present(lan)["policies"]
    assert set(entry) == {"policy", "generation", "ingress"}
    assert entry["ingress"]["defaultAction"] == "allow"
    assert [r["name"] for r in entry["ingress"]["rules"]] == ["z-first", "a-second"]
    assert NetworkPolicyContributor().contribute([], {}) is None


def test_service_entry() -> None:
    rule = {"name": "no-admin", "action": "deny", "pathPrefixes": ["/admin"]}
    section = ServicePolicyContributor().contribute([svcpol("guard", ["x"], rules=[rule])], {})
    assert section is not None
    (entry,) = section["policies"]
    assert (entry["policy"], entry["generation"], entry["defaultAction"]) == ("default/guard", 1, "allow")
    assert entry["rules"][0]["pathPrefixes"] == ["/admin"]
    assert ServicePolicyContributor().contribute([], {}) is None


def test_reference_example_test_first_then_prod() -> None:
    st = ManifestState(SECTIONS)
    for name, env in (("t1", "test"), ("t2", "test"), ("p1", "prod"), ("d1", "dev")):
        st.set_site("acme", name, {"environment": env})
    st.set_virtual_site(("acme", "default", "test"), parse_selector("environment=test"), 1)
    st.set_virtual_site(("acme", "default", "prod"), parse_selector("environment=prod"), 1)
    assert st.set_intent("NetworkPolicy", "acme", github(["test"])) == {("acme", "t1"), ("acme", "t2")}
    assert present(st.compile("acme", "t1"))["networkPolicies"]["policies"][0]["policy"] == "default/github"
    assert "networkPolicies" not in present(st.compile("acme", "p1"))

    # The same policy applied to prod too: prod sites join, test sites see the new generation.
    affected = st.set_intent("NetworkPolicy", "acme", github(["test", "prod"], generation=2))
    assert affected == {("acme", "t1"), ("acme", "t2"), ("acme", "p1")}
    for name in ("t1", "p1"):
        (entry,) = present(st.compile("acme", name))["networkPolicies"]["policies"]
        assert (entry["policy"], entry["generation"]) == ("default/github", 2)
    assert st.compile("acme", "d1") == {}


def test_several_policies_on_one_site_are_all_listed_sorted() -> None:
    st = ManifestState(SECTIONS)
    st.set_site("acme", "s", {"environment": "test"})
    st.set_virtual_site(("acme", "default", "test"), parse_selector("environment=test"), 1)
    st.set_virtual_site(("acme", "shared", "all"), parse_selector(""), 1)
    st.set_virtual_site(("acme", "ops", "test"), parse_selector(""), 1)
    st.set_intent("NetworkPolicy", "acme", github(["test"]))
    st.set_intent("NetworkPolicy", "acme", netpol("base", ["shared/all"], defaultAction={"ingress": "deny"}))
    st.set_intent(
        "NetworkPolicy", "acme", netpol("audit", ["test"], namespace="ops", defaultAction={"egress": "allow"})
    )
    st.set_intent("ServicePolicy", "acme", svcpol("guard", ["test"], defaultAction="deny"))
    sections = present(st.compile("acme", "s"))
    assert [e["policy"] for e in sections["networkPolicies"]["policies"]] == [
        "default/base",
        "default/github",
        "ops/audit",
    ]
    assert [e["policy"] for e in sections["servicePolicies"]["policies"]] == ["default/guard"]
    assert st.remove_intent("ServicePolicy", ("acme", "default", "guard")) == {("acme", "s")}
    assert "servicePolicies" not in present(st.compile("acme", "s"))
