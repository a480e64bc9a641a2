"""The database: private subnet, no public IP; PostgreSQL on encrypted EBS volumes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from infra.storage import AttachedVolumes, VolumeSpec
from nodes.instance import Bootstrap, InstanceArgs, Node


@dataclass(frozen=True)
class DatabaseNodeArgs:
    instance: InstanceArgs  # a private subnet in `availability_zone`, public_ip=False
    availability_zone: str  # the volumes must live in the instance's AZ
    volumes: tuple[VolumeSpec, ...]
    jump_host: pulumi.Input[str]
    protect_data: bool = True
    backup: bool = True
    bootstrap: Optional[Bootstrap] = None
    volume_kms_key_id: Optional[pulumi.Input[str]] = None  # the stack's EBS key (infra/kms.py)


class DatabaseNode(Node):
    volumes: AttachedVolumes

    def __init__(self, name: str, args: DatabaseNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if args.instance.public_ip:
            raise ValueError("the database accepts nothing from the internet and gets no public IP")
        self.args = args
        super().__init__("onionstack:nodes:DatabaseNode", name, args.instance, args.bootstrap, opts)

    def _add_role_resources(self) -> None:
        self.volumes = AttachedVolumes(
            f"{self.node_name}-volumes",
            role="database",
            availability_zone=self.args.availability_zone,
            instance_id=self.instance.id,
            specs=self.args.volumes,
            protect=self.args.protect_data,
            backup=self.args.backup,
            kms_key_id=self.args.volume_kms_key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )

    @property
    def jump_host(self) -> pulumi.Output[str]:
        return pulumi.Output.from_input(self.args.jump_host)

    def child_opts(self, *depends_on: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
        # Bootstrap (mkfs, mount) needs the volumes attached.
        attached = list(self.volumes.attachments.values())
        return super().child_opts(*attached, *depends_on, **kwargs)
