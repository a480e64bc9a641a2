"""Security groups: the only ways in are SSH to the balancer from the admin CIDRs, SSH from
the balancer to the private machines, the workers' tor MetricsPorts (through their nginx)
to the balancer, and PostgreSQL from the workers to the database.

Rules are separate `aws.vpc.SecurityGroup{Ingress,Egress}Rule` resources (one CIDR or
group per rule, each tagged); the groups themselves carry no inline rules, and the AWS
provider removes the default allow-all egress rule of a new group, so what is listed here
is all there is. Egress per role (docs/stack.md explains the choice):
  balancer  TCP to anywhere: tor relays listen on arbitrary ORPorts; SSH to the private
            machines and package mirrors fall under the same rule.
  workers   TCP to anywhere: tor relays (arbitrary ORPorts) and the clearnet origin
            (any host:port a site names); PostgreSQL to the database is included.
  database  TCP 80 and 443 only: Ubuntu and PostgreSQL package mirrors.
DNS (the VPC resolver), NTP (Amazon Time Sync) and instance metadata are not filtered by
security groups, so no UDP rule is needed anywhere.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.tags import tags

if TYPE_CHECKING:
    from infra.config import Secret

SSH, POSTGRES = 22, 5432
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class SecurityArgs:
    vpc_id: pulumi.Input[str]
    admin_cidrs: tuple[str, ...]
    database: bool  # create the database group and its rules
    # the ports where the workers' nginx serves their tors' MetricsPorts to the balancer
    # (nodes/roles.py Machine.tor_metrics_proxy_base); (): no such rule
    worker_metrics_ports: tuple[int, ...] = ()


class SecurityGroups(pulumi.ComponentResource):
    balancer: aws.ec2.SecurityGroup
    deployer: aws.ec2.SecurityGroup  # on the balancer too; its rules come and go with CI runs
    workers: aws.ec2.SecurityGroup
    database: Optional[aws.ec2.SecurityGroup]

    def __init__(self, name: str, args: SecurityArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:SecurityGroups", name, None, opts)
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self)

        self.balancer = self._group("balancer", args.vpc_id, "onion balancer and SSH jump host")
        self.workers = self._group("worker", args.vpc_id, "onion workers (tor + nginx)")
        self.database = (
            self._group("database", args.vpc_id, "PostgreSQL on encrypted EBS") if args.database else None
        )
        # CI's door to the balancer (docs/operations.md, "How a deploy reaches the machines"):
        # a second group on the balancer with no rule Pulumi manages (no inline rules, no rule
        # resources, so an `up` neither adds nor removes one). The deploy job adds TCP 22 from
        # its own /32 for the run and removes it again (ci/ssh_window.py).
        self.deployer = self._group("deployer", args.vpc_id,
                                    "CI deploy SSH window to the balancer (rules added per run)",
                                    role="balancer")

        # --- ingress: exactly the rules of the design, nothing else
        for i, cidr in enumerate(args.admin_cidrs):
            net = ipaddress.ip_network(cidr)
            self._ingress(
                f"balancer-ssh-admin-{i}", self.balancer, "balancer", SSH,
                description=f"SSH from admin network {cidr}",
                **({"cidr_ipv4": cidr} if net.version == 4 else {"cidr_ipv6": cidr}),
            )
        self._ingress("worker-ssh-balancer", self.workers, "worker", SSH,
                      description="SSH from the balancer (jump host)",
                      referenced_security_group_id=self.balancer.id)
        for port in args.worker_metrics_ports:
            self._ingress(f"worker-metrics-{port}-balancer", self.workers, "worker", port,
                          description="a tor MetricsPort (PoW queue depth), through nginx, to the balancer",
                          referenced_security_group_id=self.balancer.id)
        if self.database is not None:
            self._ingress("database-ssh-balancer", self.database, "database", SSH,
                          description="SSH from the balancer (jump host)",
                          referenced_security_group_id=self.balancer.id)
            self._ingress("database-postgres-workers", self.database, "database", POSTGRES,
                          description="PostgreSQL from the workers",
                          referenced_security_group_id=self.workers.id)

        # --- egress per role
        self._egress("balancer-tcp-out", self.balancer, "balancer", (0, 65535),
                     "tor relays (any ORPort), package mirrors, SSH to private machines")
        self._egress("worker-tcp-out", self.workers, "worker", (0, 65535),
                     "tor relays (any ORPort), the clearnet origins, the database")
        if self.database is not None:
            for port in (80, 443):
                self._egress(f"database-{port}-out", self.database, "database", (port, port),
                             "package mirrors")

        self.register_outputs({})

    def _group(self, name: str, vpc_id, description: str, role: Optional[str] = None) -> aws.ec2.SecurityGroup:
        role = role or name
        return aws.ec2.SecurityGroup(
            f"{self._name}-{name}",
            # Pulumi auto-names the group from the logical name plus a suffix; AWS refuses
            # group names starting with "sg-", which is why the component is not called "sg".
            vpc_id=vpc_id,
            description=f"onionstack {description}",
            tags=tags(role, f"{name}-sg"),
            opts=self._child,
        )

    def _ingress(self, name: str, group, role: str, port: int, *, description: str, **source):
        aws.vpc.SecurityGroupIngressRule(
            f"{self._name}-{name}",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            description=description,
            tags=tags(role, name),
            opts=self._child,
            **source,
        )

    def _egress(self, name: str, group, role: str, ports: Sequence[int], description: str):
        aws.vpc.SecurityGroupEgressRule(
            f"{self._name}-{name}",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=ports[0],
            to_port=ports[1],
            cidr_ipv4=ANYWHERE,
            description=description,
            tags=tags(role, name),
            opts=self._child,
        )


def admin_key_pair(name: str, public_key: pulumi.Input[str],
                   opts: Optional[pulumi.ResourceOptions] = None) -> aws.ec2.KeyPair:
    """The one EC2 key pair every instance trusts (the admin key's public half)."""
    return aws.ec2.KeyPair(
        name,
        key_name_prefix=f"onionstack-{pulumi.get_stack()}-",
        public_key=public_key,
        tags=tags("ssh", "admin-key"),
        opts=opts,
    )


@dataclass(frozen=True)
class AdminKey:
    """The admin SSH key pair every instance trusts and every remote step logs in with."""

    public_key: pulumi.Input[str]  # OpenSSH public key line
    private_key: pulumi.Output[str]  # OpenSSH private key, a secret
    generated: Optional[tls.PrivateKey]  # the key the stack made, or None (from the config)


def admin_ssh_key(name: str, public_key: Optional[str], private_key: Optional["Secret"],
                  opts: Optional[pulumi.ResourceOptions] = None) -> AdminKey:
    """The configured pair (sshPublicKey + sshPrivateKey), or, with neither, one the stack
    makes: a pulumi-tls ED25519 key, generated once and kept in the state (its private half
    a secret there), so `pulumi up` needs no key chores; the operator reads it from the
    secret stack output adminSshPrivateKey."""
    if public_key is not None and private_key is not None:
        return AdminKey(public_key, private_key.output(), None)
    key = tls.PrivateKey(name, algorithm="ED25519", opts=opts)
    public = key.public_key_openssh.apply(lambda text: text.strip())  # pulumi-tls ends it with a newline
    return AdminKey(public, pulumi.Output.secret(key.private_key_openssh), key)
