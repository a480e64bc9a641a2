"""The one way onionstack makes an EC2 instance, and the base of the three node roles.

Every instance: Ubuntu 24.04 LTS (latest Canonical AMI, looked up at deploy time),
IMDSv2 required, an encrypted gp3 root volume, the admin key pair, tags. Instances are
disposable; state worth keeping lives on separate EBS volumes (infra/storage.py).

Bootstrap seam: a node's args carry an optional `bootstrap` callable. The node calls it
with itself at the end of its constructor, after the instance (and its volumes) exist, so
the remote steps a later module declares (`command.remote.Command(..., opts=
node.child_opts())`) become children of the node and run after the instance is up.
`ssh_host` and `jump_host` say how to reach the machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra.tags import tags

CANONICAL_OWNER = "099720109477"
UBUNTU_NOBLE_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
SSH_USER = "ubuntu"


def ubuntu_noble_ami() -> str:
    """The id of the newest Canonical Ubuntu 24.04 LTS amd64 AMI in the region (an invoke)."""
    ami = aws.ec2.get_ami(
        most_recent=True,
        owners=[CANONICAL_OWNER],
        filters=[
            {"name": "name", "values": [UBUNTU_NOBLE_NAME]},
            {"name": "virtualization-type", "values": ["hvm"]},
            {"name": "architecture", "values": ["x86_64"]},
            {"name": "root-device-type", "values": ["ebs"]},
        ],
    )
    return ami.id


@dataclass(frozen=True)
class InstanceArgs:
    """What differs between instances; everything else is fixed policy."""

    role: str  # balancer | worker | database: the `role` tag
    instance_type: str
    ami_id: str
    subnet_id: pulumi.Input[str]
    security_group_ids: Sequence[pulumi.Input[str]]
    key_name: pulumi.Input[str]
    public_ip: bool = False
    root_volume_gb: int = 16


def build_instance(name: str, args: InstanceArgs, parent: pulumi.Resource) -> aws.ec2.Instance:
    return aws.ec2.Instance(
        f"{name}-instance",
        ami=args.ami_id,
        instance_type=args.instance_type,
        subnet_id=args.subnet_id,
        vpc_security_group_ids=list(args.security_group_ids),
        key_name=args.key_name,
        associate_public_ip_address=args.public_ip,
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",  # IMDSv2 only
            "http_put_response_hop_limit": 1,  # no containers reaching the metadata service
        },
        root_block_device={
            "encrypted": True,
            "volume_type": "gp3",
            "volume_size": args.root_volume_gb,
            "delete_on_termination": True,
            "tags": tags(args.role, f"{name}-root"),
        },
        tags=tags(args.role, name),
        opts=pulumi.ResourceOptions(
            parent=parent,
            # A new Ubuntu AMI every week must not replace every machine on the next `up`;
            # new AMIs are taken when an instance is replaced for another reason (or with
            # `pulumi up --replace <urn>`).
            ignore_changes=["ami"],
        ),
    )


Bootstrap = Callable[["Node"], None]


class Node(pulumi.ComponentResource):
    """A machine role: one instance plus whatever its role and its bootstrap add."""

    instance: aws.ec2.Instance
    private_ip: pulumi.Output[str]
    ssh_user: str = SSH_USER

    def __init__(
        self,
        type_: str,
        name: str,
        instance: InstanceArgs,
        bootstrap: Optional[Bootstrap],
        opts: Optional[pulumi.ResourceOptions],
    ):
        super().__init__(type_, name, None, opts)
        self.node_name = name
        self.instance = build_instance(name, instance, parent=self)
        self.private_ip = self.instance.private_ip
        self._add_role_resources()
        if bootstrap is not None:
            bootstrap(self)
        self.register_outputs({"instanceId": self.instance.id, "privateIp": self.private_ip})

    def _add_role_resources(self) -> None:
        """Subclass hook: resources the role needs before bootstrap (e.g. data volumes)."""

    @property
    def ssh_host(self) -> pulumi.Output[str]:
        """The address an SSH client uses for this machine (via `jump_host` if set)."""
        return self.private_ip

    @property
    def jump_host(self) -> Optional[pulumi.Output[str]]:
        return None

    def child_opts(self, *depends_on: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
        """Options for a bootstrap step: a child of this node, after the instance."""
        return pulumi.ResourceOptions(parent=self, depends_on=[self.instance, *depends_on], **kwargs)
