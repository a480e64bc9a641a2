"""A program of its own (its VPC, subnets, gateways) that adds an onion site to that VPC.

The site comes from the installed `onionstack` package (`pip install <checkout>/stack`):
`OnionSiteArgs.of(...)` takes the settings the stack config would hold, and
`ExistingNetwork` puts the machines in this program's subnets instead of a VPC of the site's
own.
"""
import pulumi
import pulumi_aws as aws

from onionstack import ExistingNetwork, OnionSite, OnionSiteArgs

config = pulumi.Config()

# ---- the program's own network: 2 zones, a public and a private subnet in each
vpc = aws.ec2.Vpc("platform", cidr_block="10.80.0.0/16", enable_dns_support=True, enable_dns_hostnames=True)
gateway = aws.ec2.InternetGateway("platform", vpc_id=vpc.id)
public_routes = aws.ec2.RouteTable("public", vpc_id=vpc.id,
                                   routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}])
zones = sorted(aws.get_availability_zones(state="available").names)[:2]
public, private = [], []
for i, zone in enumerate(zones):
    pub = aws.ec2.Subnet(f"public-{i}", vpc_id=vpc.id, cidr_block=f"10.80.{i}.0/24", availability_zone=zone)
    aws.ec2.RouteTableAssociation(f"public-{i}", subnet_id=pub.id, route_table_id=public_routes.id)
    public.append(pub)
nat_ip = aws.ec2.Eip("nat", domain="vpc")
nat = aws.ec2.NatGateway("nat", allocation_id=nat_ip.id, subnet_id=public[0].id,
                         opts=pulumi.ResourceOptions(depends_on=[gateway]))
private_routes = aws.ec2.RouteTable("private", vpc_id=vpc.id,
                                    routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}])
for i, zone in enumerate(zones):
    priv = aws.ec2.Subnet(f"private-{i}", vpc_id=vpc.id, cidr_block=f"10.80.{100 + i}.0/24", availability_zone=zone)
    aws.ec2.RouteTableAssociation(f"private-{i}", subnet_id=priv.id, route_table_id=private_routes.id)
    private.append(priv)

# ---- the onion site in that network
site = OnionSite("news-onion", OnionSiteArgs.of(
    sites=[{"name": "news", "domain": config.require("domain")}],
    master_keys={"news": config.require("newsMasterKey")},  # a secret: the site keeps it one
    admin_cidrs=config.require_object("adminCidrs"),
    workers=2,
    network=ExistingNetwork(vpc.id, [s.id for s in public], [s.id for s in private]),
))

pulumi.export("onionUrl", site.exports["sites"]["news"]["onionUrl"])
pulumi.export("sshBalancer", site.exports["sshBalancer"])
pulumi.export("adminSshPrivateKey", site.exports["adminSshPrivateKey"])
