"""Every taggable resource carries project, stack and role (and a Name)."""
from __future__ import annotations

import pytest

from tests.stackmocks import is_taggable, minimal_config, prod_config, run, tags_of

ROLES = {"network", "balancer", "worker", "database", "backup", "ssh", "storage", "monitoring"}


def test_taggable_lookup_reads_the_sdk():
    assert is_taggable("aws:ec2/vpc:Vpc") and is_taggable("aws:ebs/volume:Volume")
    assert is_taggable("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert not is_taggable("aws:ec2/routeTableAssociation:RouteTableAssociation")
    assert not is_taggable("aws:backup/selection:Selection")
    assert not is_taggable("onionstack:nodes:WorkerNode")


@pytest.mark.parametrize("config,stack", [(minimal_config(workers=2), "prod"), (prod_config(), "prod"),
                                          (minimal_config(natGateways="perAz"), "staging")],
                         ids=["minimal", "prod", "staging"])
def test_every_taggable_resource_is_tagged(config, stack):
    result = run(config, stack=stack)
    checked = 0
    for r in result.resources:
        if not r.custom or not is_taggable(r.type):
            continue
        t = tags_of(r)
        assert t.get("project") == "onionstack", r.name
        assert t.get("stack") == stack, r.name
        assert t.get("role") in ROLES, (r.name, t.get("role"))
        assert t.get("Name", "").startswith(f"onionstack-{stack}-"), r.name
        checked += 1
    assert checked >= 30
    for inst in result.of_type("aws:ec2/instance:Instance"):
        root_tags = inst.input("rootBlockDevice")["tags"]
        assert root_tags["project"] == "onionstack" and root_tags["stack"] == stack
        assert root_tags["role"] == inst.input("tags")["role"]
        assert "backup" not in root_tags  # instances are disposable; only data volumes are backed up


def test_roles_follow_the_machine():
    result = run(minimal_config())
    by_type_role = {(r.type, tags_of(r)["role"]) for r in result.resources if r.custom and is_taggable(r.type)}
    assert ("aws:ebs/volume:Volume", "database") in by_type_role
    assert ("aws:ec2/vpc:Vpc", "network") in by_type_role
    assert ("aws:backup/vault:Vault", "backup") in by_type_role
    assert {role for t, role in by_type_role if t == "aws:ec2/securityGroup:SecurityGroup"} == {"balancer", "worker", "database"}
