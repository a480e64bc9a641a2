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


# ---------------------------------------------------------------- a VPC the site is given
@dataclass(frozen=True)
class ExistingNetwork:
    """A VPC and subnets the site uses instead of making its own (another program's VPC, or
    one made by hand): the site then creates no VPC, subnet, gateway or route, and leaves the
    VPC's default security group as it is.

    public_subnet_ids: at least one, routed to an internet gateway; the balancer goes in the
        first (with a public IP), a standby balancer (balancer.standby) in the second.
    private_subnet_ids: at least one, with outbound internet access (a NAT gateway); the
        workers go round-robin over them, the database in the first. Their CIDRs are the
        database's client networks.
    Every subnet must be in `vpc_id` (checked when the ids are known)."""

    vpc_id: pulumi.Input[str]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    private_subnet_ids: Sequence[pulumi.Input[str]]


@dataclass(frozen=True)
class SubnetRef:
    """What the site reads of a subnet (an aws.ec2.Subnet has the same three)."""

    id: pulumi.Output[str]
    cidr_block: pulumi.Output[str]
    availability_zone: pulumi.Output[str]


@dataclass(frozen=True)
class SiteNetwork:
    """Where the site's machines go: the VPC, its subnets, and the zone of each private subnet
    (`zones[i]` for `private_subnets[i]`; plain names when the site made the VPC)."""

    vpc_id: pulumi.Output[str]
    public_subnets: tuple[SubnetRef, ...]
    private_subnets: tuple[SubnetRef, ...]
    zones: tuple[pulumi.Input[str], ...]
    eip_after: tuple[pulumi.Resource, ...]  # what an Elastic IP waits for: the gateway the site made

    @classmethod
    def made(cls, network: Network) -> "SiteNetwork":
        def ref(s: aws.ec2.Subnet) -> SubnetRef:
            return SubnetRef(s.id, s.cidr_block, s.availability_zone)

        return cls(network.vpc.id, tuple(map(ref, network.public_subnets)), tuple(map(ref, network.private_subnets)),
                   tuple(network.zones), (network.internet_gateway,))

    @classmethod
    def existing(cls, given: ExistingNetwork, opts: Optional[pulumi.InvokeOptions] = None) -> "SiteNetwork":
        """Looks every subnet up (aws.ec2.get_subnet) for its CIDR and zone; a subnet of another
        VPC fails the program, naming it."""
        from infra.config import ConfigError

        for field_name in ("public_subnet_ids", "private_subnet_ids"):
            ids = getattr(given, field_name)
            if isinstance(ids, (str, bytes)) or not list(ids):
                raise ConfigError(f"ExistingNetwork.{field_name} must be a non-empty list of subnet ids")
        vpc_id = pulumi.Output.from_input(given.vpc_id)

        def ref(kind: str, subnet_id: pulumi.Input[str]) -> SubnetRef:
            found = aws.ec2.get_subnet_output(id=subnet_id, opts=opts)

            def same_vpc(args: list) -> str:
                sid, in_vpc, want = args
                if in_vpc != want:
                    raise ConfigError(f"ExistingNetwork: {kind} subnet {sid} is in VPC {in_vpc}, not in vpc_id {want}; "
                                      f"give subnets of that VPC")
                return sid

            checked = pulumi.Output.all(found.id, found.vpc_id, vpc_id).apply(same_vpc)
            return SubnetRef(checked, found.cidr_block, found.availability_zone)

        public = tuple(ref("public", s) for s in given.public_subnet_ids)
        private = tuple(ref("private", s) for s in given.private_subnet_ids)
        return cls(vpc_id, public, private, tuple(s.availability_zone for s in private), ())
