"""The real program under mocks: resource counts, subnets, routes, NAT, instance placement."""
from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from tests.stackmocks import ANYWHERE, minimal_config, prod_config, run

INSTANCE = "aws:ec2/instance:Instance"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
RTA = "aws:ec2/routeTableAssociation:RouteTableAssociation"
NAT = "aws:ec2/natGateway:NatGateway"


def expected_counts(workers: int, zones: int, *, nat_per_az=False, admin=1, database=True, backup=True,
                    flow_logs=True, sites=1, emails=0) -> Counter:
    nats = zones if nat_per_az else 1
    c = Counter({
        "aws:ec2/vpc:Vpc": 1,
        "aws:ec2/internetGateway:InternetGateway": 1,
        SUBNET: 2 * zones,
        ROUTE_TABLE: 1 + zones,
        RTA: 2 * zones,
        NAT: nats,
        "aws:ec2/eip:Eip": nats + 1,  # the NAT gateways' and the balancer's (nodes/balancer.py)
        "aws:ec2/keyPair:KeyPair": 1,
        # balancer, workers, database; the deployer group (CI's SSH window)
        "aws:ec2/securityGroup:SecurityGroup": (3 if database else 2) + 1,
        # + the balancer -> workers' MetricsPort rules, one per tor daemon (2 by default)
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": admin + (3 if database else 1) + 2,
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": 4 if database else 2,
        INSTANCE: 1 + workers + (1 if database else 0),
        # Each instance's SSH host key (nodes/hostkey.py).
        "tls:index/privateKey:PrivateKey": 1 + workers + (1 if database else 0),
        # Remote steps (nodes/steps.py): per worker tor-nginx + drain; balancer base +
        # core; the onion package copy; the database's postgres step and its password.
        "command:remote:Command": 2 * workers + 2 + (1 if database else 0),
        "command:remote:CopyToRemote": 1,
        # The stack's EBS key (every volume, data and root) and its alias.
        "aws:kms/key:Key": 1, "aws:kms/alias:Alias": 1,
        # The VPC's default security group, adopted to strip its rules.
        "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": 1,
        # Alarms: 5 per site, 1 per worker, the balancer's recovery; the topic, its policy,
        # key and alias, one subscription per e-mail; the balancer's metrics role.
        "aws:cloudwatch/metricAlarm:MetricAlarm": 5 * sites + workers + 1,
        "aws:sns/topic:Topic": 1, "aws:sns/topicPolicy:TopicPolicy": 1,
        "aws:sns/topicSubscription:TopicSubscription": emails,
        "aws:iam/instanceProfile:InstanceProfile": 1,
    })
    c.update({"aws:kms/key:Key": 1, "aws:kms/alias:Alias": 1, "aws:iam/role:Role": 1,
              "aws:iam/rolePolicy:RolePolicy": 1})
    c = +c  # drop zero counts
    if flow_logs:
        c.update({"aws:ec2/flowLog:FlowLog": 1, "aws:cloudwatch/logGroup:LogGroup": 1, "aws:iam/role:Role": 1,
                  "aws:iam/rolePolicy:RolePolicy": 1, "aws:kms/key:Key": 1, "aws:kms/alias:Alias": 1})
    if database:
        c.update({"aws:ebs/volume:Volume": 3, "aws:ec2/volumeAttachment:VolumeAttachment": 3,
                  "random:index/randomPassword:RandomPassword": 1,
                  # the database's private CA and certificate (nodes/pki.py)
                  "tls:index/privateKey:PrivateKey": 2, "tls:index/selfSignedCert:SelfSignedCert": 1,
                  "tls:index/certRequest:CertRequest": 1, "tls:index/locallySignedCert:LocallySignedCert": 1})
    if backup:
        c.update({
            "aws:kms/key:Key": 1, "aws:kms/alias:Alias": 1, "aws:backup/vault:Vault": 1,
            "aws:backup/vaultLockConfiguration:VaultLockConfiguration": 1,
            "aws:backup/vaultPolicy:VaultPolicy": 1,
            "aws:backup/plan:Plan": 1, "aws:backup/selection:Selection": 1, "aws:iam/role:Role": 1,
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment": 2,
        })
    return c


@pytest.mark.parametrize("workers,zones", [(1, 1), (2, 2), (5, 3), (30, 6)])
def test_counts_scale_with_workers_and_zones(workers, zones):
    result = run(minimal_config(workers=workers, availabilityZones=zones))
    assert result.counts() == expected_counts(workers, zones)


def test_counts_with_nat_per_az_and_optional_parts():
    result = run(minimal_config(workers=4, availabilityZones=3, natGateways="perAz",
                                adminCidrs=["198.51.100.7/32", "203.0.113.0/28"],
                                database={"enabled": False}, backup={"enabled": False}))
    assert result.counts() == expected_counts(4, 3, nat_per_az=True, admin=2, database=False, backup=False)


def test_prod_stack_counts():
    result = run(prod_config())
    assert result.counts() == expected_counts(3, 3, nat_per_az=True, sites=2)


def test_vpc_and_subnet_plan():
    result = run(minimal_config(availabilityZones=3, vpcCidr="10.7.0.0/20"))
    (vpc,) = result.of_type("aws:ec2/vpc:Vpc")
    assert vpc.input("cidrBlock") == "10.7.0.0/20"
    assert vpc.input("enableDnsHostnames") is True and vpc.input("enableDnsSupport") is True
    subnets = result.of_type(SUBNET)
    nets = [ipaddress.ip_network(s.input("cidrBlock")) for s in subnets]
    assert all(n.subnet_of(ipaddress.ip_network("10.7.0.0/20")) and n.prefixlen == 24 for n in nets)
    assert len(set(nets)) == len(nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    tiers = Counter((s.input("tags")["tier"], s.input("availabilityZone")) for s in subnets)
    zones = result.outputs["availabilityZones"]
    assert zones == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert tiers == Counter({(t, z): 1 for t in ("public", "private") for z in zones})
    assert all(s.input("mapPublicIpOnLaunch") is False for s in subnets)


def _route_of_subnet(result, subnet) -> dict:
    (assoc,) = [a for a in result.of_type(RTA) if a.input("subnetId") == subnet.id]
    table = result.by_id(assoc.input("routeTableId"))
    (route,) = table.input("routes")
    assert route["cidrBlock"] == ANYWHERE
    return route


@pytest.mark.parametrize("nat_mode", ["one", "perAz"])
def test_private_subnets_route_to_a_nat_public_ones_to_the_igw(nat_mode):
    result = run(minimal_config(availabilityZones=3, natGateways=nat_mode))
    (igw,) = result.of_type("aws:ec2/internetGateway:InternetGateway")
    nats = {n.id: n for n in result.of_type(NAT)}
    assert len(nats) == (3 if nat_mode == "perAz" else 1)
    for subnet in result.of_type(SUBNET):
        route = _route_of_subnet(result, subnet)
        if subnet.input("tags")["tier"] == "public":
            assert route.get("gatewayId") == igw.id and "natGatewayId" not in route
        else:
            assert "gatewayId" not in route and route["natGatewayId"] in nats
            nat = nats[route["natGatewayId"]]
            nat_subnet = result.by_id(nat.input("subnetId"))
            assert nat_subnet.input("tags")["tier"] == "public"  # a NAT must sit in a public subnet
            if nat_mode == "perAz":
                assert nat_subnet.input("availabilityZone") == subnet.input("availabilityZone")
    for nat in nats.values():
        assert result.by_id(nat.input("allocationId")).type == "aws:ec2/eip:Eip"


def test_instances_placement_and_public_ips():
    result = run(minimal_config(workers=4, availabilityZones=3))
    by_role = {}
    for inst in result.of_type(INSTANCE):
        by_role.setdefault(inst.input("tags")["role"], []).append(inst)
    (balancer,) = by_role["balancer"]
    assert balancer.input("associatePublicIpAddress") is True
    assert result.by_id(balancer.input("subnetId")).input("tags")["tier"] == "public"
    for inst in by_role["worker"] + by_role["database"]:
        assert inst.input("associatePublicIpAddress") is False
        assert result.by_id(inst.input("subnetId")).input("tags")["tier"] == "private"
        assert inst.state["publicIp"] == ""
        route = _route_of_subnet(result, result.by_id(inst.input("subnetId")))
        assert "natGatewayId" in route
    # Round-robin over the AZs: 4 workers on 3 zones -> a, b, c, a
    workers = sorted(by_role["worker"], key=lambda r: r.name)
    zones = [result.by_id(w.input("subnetId")).input("availabilityZone") for w in workers]
    assert zones == ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1a"]


def test_availability_zones_come_from_the_invoke_skipping_local_zones():
    result = run(minimal_config(availabilityZones=2))
    (call,) = [args for token, args in result.invokes if token == "aws:index/getAvailabilityZones:getAvailabilityZones"]
    assert call["state"] == "available"
    assert {"name": "opt-in-status", "values": ["opt-in-not-required"]} in call["filters"]


def test_too_many_zones_for_the_region_is_a_clear_error():
    import mockrun

    class FewZones(mockrun.StackMocks):
        def __init__(self, region):
            super().__init__(region, zone_count=2)

    original = mockrun.StackMocks
    mockrun.StackMocks = FewZones
    try:
        from infra.config import ConfigError

        with pytest.raises(ConfigError, match=r"onionstack:availabilityZones = 3: this region has only 2 available zones") as info:
            mockrun.run_program(minimal_config(availabilityZones=3))
        assert info.value.registered_resources == []  # found before anything was declared
    finally:
        mockrun.StackMocks = original
