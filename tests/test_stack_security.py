"""Security groups: exactly the design's ingress rules, nothing open to the world."""
from __future__ import annotations

import pytest

from tests.stackmocks import ANYWHERE, minimal_config, prod_config, run

SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"


def group_roles(result) -> dict[str, str]:
    return {g.id: g.input("tags")["role"] for g in result.of_type(SG)}


def rules(result, type_) -> set[tuple]:
    roles = group_roles(result)
    out = set()
    for r in result.of_type(type_):
        if r.input("referencedSecurityGroupId"):
            peer = "sg:" + roles[r.input("referencedSecurityGroupId")]
        else:
            peer = r.input("cidrIpv4") or r.input("cidrIpv6")
        out.add((roles[r.input("securityGroupId")], r.input("ipProtocol"),
                 int(r.input("fromPort")), int(r.input("toPort")), peer))
    return out


def test_ingress_is_exactly_the_design():
    result = run(minimal_config(adminCidrs=["198.51.100.7/32", "2001:db8::/64"]))
    assert rules(result, INGRESS) == {
        ("balancer", "tcp", 22, 22, "198.51.100.7/32"),
        ("balancer", "tcp", 22, 22, "2001:db8::/64"),
        ("worker", "tcp", 22, 22, "sg:balancer"),
        # each worker tor's MetricsPort, served by nginx: the balancer reads the PoW queues
        ("worker", "tcp", 9201, 9201, "sg:balancer"),
        ("worker", "tcp", 9202, 9202, "sg:balancer"),
        ("database", "tcp", 22, 22, "sg:balancer"),
        ("database", "tcp", 5432, 5432, "sg:worker"),
    }
    (v6,) = [r for r in result.of_type(INGRESS) if r.input("cidrIpv6")]
    assert v6.input("cidrIpv4") is None


def test_egress_per_role():
    result = run(minimal_config())
    assert rules(result, EGRESS) == {
        ("balancer", "tcp", 0, 65535, ANYWHERE),
        ("worker", "tcp", 0, 65535, ANYWHERE),
        ("database", "tcp", 80, 80, ANYWHERE),
        ("database", "tcp", 443, 443, ANYWHERE),
    }


@pytest.mark.parametrize("config", [minimal_config(), prod_config(), minimal_config(database={"enabled": False})],
                         ids=["minimal", "prod", "no-database"])
def test_nothing_else_is_open(config):
    result = run(config)
    for group in result.of_type(SG):
        # No inline rules: every rule is a separate, visible resource.
        assert not group.input("ingress") and not group.input("egress"), group.name
    for rule in result.of_type(INGRESS):
        assert rule.input("cidrIpv4") != ANYWHERE and rule.input("cidrIpv6") != "::/0"
        assert int(rule.input("fromPort")) == int(rule.input("toPort")), "ingress opens single ports only"
        assert rule.input("ipProtocol") == "tcp"
    opened = {(g, p) for g, _, p, _, _ in rules(result, INGRESS)}
    metrics = {("worker", 9201 + i) for i in range(8)}
    assert opened <= {("balancer", 22), ("worker", 22), ("database", 22), ("database", 5432)} | metrics
    # Only the balancer has a rule with a CIDR source; the private machines only admit groups.
    cidr_sources = {g for g, *_, peer in rules(result, INGRESS) if not peer.startswith("sg:")}
    assert cidr_sources == {"balancer"}


def test_no_database_means_no_database_group_or_rules():
    result = run(minimal_config(database={"enabled": False}))
    assert set(group_roles(result).values()) == {"balancer", "worker"}
    assert not any(role == "database" for role, *_ in rules(result, INGRESS) | rules(result, EGRESS))


def test_each_instance_uses_its_role_group():
    result = run(minimal_config(workers=3))
    roles = group_roles(result)
    (deployer,) = [g.id for g in result.of_type(SG) if g.name == "access-deployer"]
    for inst in result.of_type("aws:ec2/instance:Instance"):
        groups = inst.input("vpcSecurityGroupIds")
        role = inst.input("tags")["role"]
        # the balancer also carries the deployer group, CI's per-run SSH window
        assert groups[1:] == ([deployer] if role == "balancer" else []), inst.name
        assert roles[groups[0]] == role, inst.name
        assert not inst.input("securityGroups")


def test_deployer_group_has_no_managed_rules_and_is_an_output():
    """CI adds and removes its own /32 rule per run (ci/ssh_window.py): Pulumi manages no
    rule in the group, so an `up` in the middle of a run neither removes nor adds one."""
    result = run(minimal_config())
    (deployer,) = [g for g in result.of_type(SG) if g.name == "access-deployer"]
    assert not deployer.input("ingress") and not deployer.input("egress")
    for rule in result.of_type(INGRESS) + result.of_type(EGRESS):
        assert rule.input("securityGroupId") != deployer.id
    assert deployer.input("tags")["role"] == "balancer"
    assert deployer.input("tags")["Name"].endswith("-deployer-sg")
    assert result.outputs["deployerSecurityGroupId"] == deployer.id
    assert "deployerSecurityGroupId" not in result.secret_outputs


def test_group_names_are_valid_for_aws():
    result = run(minimal_config())
    for group in result.of_type(SG):
        # Pulumi auto-names a group "<logical name>-<suffix>"; EC2 rejects names like sg-*.
        assert not group.name.lower().startswith("sg-") and not group.input("name")
        assert group.input("description").startswith("onionstack ")
