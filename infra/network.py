"""The VPC: a public and a private subnet per AZ, an internet gateway, NAT gateway(s), and
the VPC's default security group stripped of every rule (nothing uses it; an instance
launched into it by mistake must not get the default allow-all-within-the-group rules)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra.config import ConfigError
from infra.tags import tags


@dataclass(frozen=True)
class SubnetPlan:
    availability_zone: str
    public_cidr: str
    private_cidr: str


def plan_subnets(vpc_cidr: str, zones: Sequence[str]) -> list[SubnetPlan]:
    """Carve one public and one private subnet per zone out of `vpc_cidr`.

    The VPC is cut into 16 equal blocks (a /16 gives /20s, a /22 gives /26s with 59
    usable addresses: room for 30 workers in one AZ); public subnets take blocks 0..5,
    private subnets blocks 8..13, so adding an AZ later never moves an existing subnet.
    """
    net = ipaddress.ip_network(vpc_cidr)
    blocks = list(net.subnets(prefixlen_diff=4))
    if len(zones) > 6:
        raise ValueError(f"at most 6 availability zones fit the subnet plan, got {len(zones)}")
    return [
        SubnetPlan(zone, str(blocks[i]), str(blocks[8 + i]))
        for i, zone in enumerate(zones)
    ]


@dataclass(frozen=True)
class NetworkArgs:
    vpc_cidr: str
    zones: tuple[str, ...]  # availability zone names, in order
    nat_per_az: bool


class Network(pulumi.ComponentResource):
    """VPC with DNS hostnames, public subnets routed to an IGW, private ones to NAT."""

    vpc: aws.ec2.Vpc
    internet_gateway: aws.ec2.InternetGateway  # what an Elastic IP in the VPC waits for
    public_subnets: list[aws.ec2.Subnet]
    private_subnets: list[aws.ec2.Subnet]
    nat_gateways: list[aws.ec2.NatGateway]

    def __init__(self, name: str, args: NetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.zones = list(args.zones)
        plan = plan_subnets(args.vpc_cidr, args.zones)

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=tags("network", "vpc"),
            opts=child,
        )
        # Adopting the default group removes all its rules; declaring none keeps it empty
        # (a rule added by hand is removed again on the next `up`).
        self.default_security_group = aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg",
            vpc_id=self.vpc.id,
            tags=tags("network", "default-sg-unused"),
            opts=child,
        )
        igw = self.internet_gateway = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags=tags("network", "igw"), opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags=tags("network", "public"),
            opts=child,
        )

        self.public_subnets, self.private_subnets, self.nat_gateways = [], [], []
        for i, p in enumerate(plan):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=self.vpc.id,
                cidr_block=p.public_cidr,
                availability_zone=p.availability_zone,
                # Only the balancer needs a public IP and it asks for one explicitly.
                map_public_ip_on_launch=False,
                tags=tags("network", f"public-{p.availability_zone}", tier="public"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}-rta", subnet_id=public.id, route_table_id=public_rt.id, opts=child
            )
            self.public_subnets.append(public)

            if args.nat_per_az or i == 0:
                eip = aws.ec2.Eip(
                    f"{name}-nat-{i}-eip", domain="vpc", tags=tags("network", f"nat-{i}"), opts=child
                )
                self.nat_gateways.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.id,
                        subnet_id=public.id,
                        tags=tags("network", f"nat-{p.availability_zone}"),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                    )
                )
            nat = self.nat_gateways[-1]
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-{i}-rt",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                tags=tags("network", f"private-{p.availability_zone}"),
                opts=child,
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                cidr_block=p.private_cidr,
                availability_zone=p.availability_zone,
                map_public_ip_on_launch=False,
                tags=tags("network", f"private-{p.availability_zone}", tier="private"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}-rta", subnet_id=private.id, route_table_id=private_rt.id, opts=child
            )
            self.private_subnets.append(private)

        self.register_outputs({"vpcId": self.vpc.id})


def available_zones(count: int) -> tuple[str, ...]:
    """The first `count` available AZ names of the provider's region (an invoke)."""
    # Local Zones and Wavelength zones are opt-in and lack most instance types: skip them.
    zones = aws.get_availability_zones(
        state="available",
        filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
    )
    names = sorted(zones.names or [])
    if len(names) < count:
        raise ConfigError(
            f"onionstack:availabilityZones = {count}: this region has only {len(names)} "
            f"available zones ({', '.join(names) or 'none'}); lower it to {len(names)} or less"
        )
    return tuple(names[:count])
