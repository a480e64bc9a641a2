"""The one way onionstack makes an EC2 instance, and the base of the three node roles.

Every instance: Ubuntu 24.04 LTS (latest Canonical AMI for the type's CPU architecture,
looked up at deploy time), IMDSv2 required, an encrypted gp3 root volume, the admin key
pair, tags. Instances are disposable; state worth keeping lives on separate EBS volumes
(infra/storage.py).

A node (a `Node` component) is a machine and what it needs to exist: its instance, and
per role an Elastic IP (balancer) or data volumes (database). It declares how a step
reaches it (`ssh`, an `SshTarget`) and what a step on it must wait for (`ready`). The
remote steps are components of their own (nodes/steps.py), declared by the site
(nodes/site.py) as children of the node they run on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.tags import tags
from nodes.hostkey import user_data
from nodes.remote import SSH_USER, SshTarget

CANONICAL_OWNER = "099720109477"
# Canonical's image names per CPU architecture (EC2's names: x86_64, arm64).
UBUNTU_NOBLE_NAMES = {
    "x86_64": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
    "arm64": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*",
}
UBUNTU_NOBLE_NAME = UBUNTU_NOBLE_NAMES["x86_64"]


def ubuntu_noble_ami(architecture: str = "x86_64") -> str:
    """The id of the newest Canonical Ubuntu 24.04 LTS AMI for `architecture` (an invoke)."""
    ami = aws.ec2.get_ami(
        most_recent=True,
        owners=[CANONICAL_OWNER],
        filters=[
            {"name": "name", "values": [UBUNTU_NOBLE_NAMES[architecture]]},
            {"name": "virtualization-type", "values": ["hvm"]},
            {"name": "architecture", "values": [architecture]},
            {"name": "root-device-type", "values": ["ebs"]},
        ],
    )
    return ami.id


def architecture_of(instance_type: str) -> str:
    """x86_64 or arm64 (Graviton), as EC2 reports it for `instance_type` (an invoke)."""
    supported = aws.ec2.get_instance_type(instance_type=instance_type).supported_architectures or []
    for arch in UBUNTU_NOBLE_NAMES:
        if arch in supported:
            return arch
    raise ValueError(
        f"instance type {instance_type} supports {', '.join(supported) or 'no known architecture'}; "
        f"onionstack's Ubuntu images are for {' or '.join(UBUNTU_NOBLE_NAMES)}: pick another in "
        f"onionstack:instanceTypes"
    )


class AmiCatalog:
    """The right Ubuntu 24.04 AMI per instance type, so a Graviton type (t4g, m7g, ...)
    gets the arm64 image instead of failing at launch. One invoke per distinct type and
    architecture."""

    def __init__(self) -> None:
        self._arch: dict[str, str] = {}
        self._ami: dict[str, str] = {}

    def __call__(self, instance_type: str) -> str:
        if instance_type not in self._arch:
            self._arch[instance_type] = architecture_of(instance_type)
        arch = self._arch[instance_type]
        if arch not in self._ami:
            self._ami[arch] = ubuntu_noble_ami(arch)
        return self._ami[arch]


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
    root_kms_key_id: Optional[pulumi.Input[str]] = None  # the stack's EBS key (infra/kms.py); None: aws/ebs
    iam_instance_profile: Optional[pulumi.Input[str]] = None  # name; None: no instance role

    def identity(self) -> dict[str, pulumi.Input]:
        """The inputs that replace the instance when they change (EC2 cannot update them in
        place); the AMI is left out: it is in `ignore_changes`."""
        return {"role": self.role, "subnetId": self.subnet_id, "keyName": self.key_name,
                "publicIp": self.public_ip, "rootKmsKeyId": self.root_kms_key_id}


def build_instance(name: str, args: InstanceArgs, parent: pulumi.Resource,
                   user_data: Optional[pulumi.Input[str]] = None) -> aws.ec2.Instance:
    return aws.ec2.Instance(
        f"{name}-instance",
        ami=args.ami_id,
        instance_type=args.instance_type,
        subnet_id=args.subnet_id,
        vpc_security_group_ids=list(args.security_group_ids),
        key_name=args.key_name,
        associate_public_ip_address=args.public_ip,
        iam_instance_profile=args.iam_instance_profile,
        # The host key (nodes/hostkey.py): a new key is a new machine, never an in-place
        # update (cloud-init installs host keys once per instance).
        user_data=user_data,
        user_data_replace_on_change=True,
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",  # IMDSv2 only
            "http_put_response_hop_limit": 1,  # no containers reaching the metadata service
        },
        root_block_device={
            "encrypted": True,
            "kms_key_id": args.root_kms_key_id,
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


class Node(pulumi.ComponentResource):
    """A machine role: one instance plus whatever its role adds (`_add_role_resources`).

    Declared for the steps: `instance`, `private_ip`, `host_key` (the instance's SSH host
    key, nodes/hostkey.py) and `host_public_key`, `ssh` (how a step reaches it, host key
    pinned) and `ready` (what a step on it waits for: the instance, and e.g. the database's
    volume attachments)."""

    instance: aws.ec2.Instance
    private_ip: pulumi.Output[str]
    host_key: tls.PrivateKey
    host_public_key: pulumi.Output[str]
    ssh: SshTarget
    ready: tuple[pulumi.Resource, ...]

    def __init__(self, type_: str, name: str, instance: InstanceArgs, opts: Optional[pulumi.ResourceOptions]):
        super().__init__(type_, name, None, opts)
        self.node_name = name
        # Replaced with the instance: a change of an input that replaces the instance
        # replaces the key, and a new key is new user data, which replaces the instance.
        self.host_key = tls.PrivateKey(
            f"{name}-host-key", algorithm="ED25519",
            opts=pulumi.ResourceOptions(parent=self, replacement_trigger=instance.identity()))
        self.host_public_key = self.host_key.public_key_openssh.apply(lambda k: k.strip())
        # A secret: it holds the private key (AWS keeps user data, readable with
        # ec2:DescribeInstanceAttribute; docs/bootstrap.md "Host keys").
        data = pulumi.Output.secret(pulumi.Output.all(self.host_key.private_key_openssh, self.host_public_key)
                                    .apply(lambda keys: user_data(keys[0], keys[1])))
        self.instance = build_instance(name, instance, parent=self, user_data=data)
        self.private_ip = self.instance.private_ip
        self.ready = (self.instance,)
        self._add_role_resources()
        self.ssh = self._ssh_target()
        self.register_outputs({"instanceId": self.instance.id, "privateIp": self.private_ip,
                               "sshHost": self.ssh.host, "hostPublicKey": self.host_public_key})

    def _add_role_resources(self) -> None:
        """Subclass hook: resources the role needs before any step (e.g. data volumes)."""

    def _ssh_target(self) -> SshTarget:
        return SshTarget(host=self.private_ip, host_key=self.host_public_key)
