"""The database: private subnet, no public IP; PostgreSQL on encrypted EBS volumes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from infra.storage import AttachedVolumes, VolumeSpec
from nodes.instance import InstanceArgs, Node
from nodes.remote import SshTarget


@dataclass(frozen=True)
class DatabaseNodeArgs:
    instance: InstanceArgs  # a private subnet in `availability_zone`, public_ip=False
    availability_zone: str  # the volumes must live in the instance's AZ
    volumes: tuple[VolumeSpec, ...]
    jump: SshTarget  # the balancer: steps reach the database through it
    protect_data: bool = True
    backup: bool = True
    volume_kms_key_id: Optional[pulumi.Input[str]] = None  # the stack's EBS key (infra/kms.py)


class DatabaseNode(Node):
    """Declares `volumes` (the attached data volumes) and `volume_devices` (purpose ->
    (volume id, attachment device), what the database step formats and mounts); its steps
    wait for the attachments (`ready`)."""

    volumes: AttachedVolumes
    volume_devices: dict[str, tuple[pulumi.Output[str], str]]

    def __init__(self, name: str, args: DatabaseNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if args.instance.public_ip:
            raise ValueError("the database accepts nothing from the internet and gets no public IP")
        self._args = args
        super().__init__("onionstack:nodes:DatabaseNode", name, args.instance, opts)

    def _add_role_resources(self) -> None:
        self.volumes = AttachedVolumes(
            f"{self.node_name}-volumes",
            role="database",
            availability_zone=self._args.availability_zone,
            instance_id=self.instance.id,
            specs=self._args.volumes,
            protect=self._args.protect_data,
            backup=self._args.backup,
            kms_key_id=self._args.volume_kms_key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.volume_devices = {s.purpose: (self.volumes.volumes[s.purpose].id, s.device_name)
                               for s in self._args.volumes}
        # Steps format and mount the volumes: they need them attached.
        self.ready = (self.instance, *self.volumes.attachments.values())

    def _ssh_target(self) -> SshTarget:
        return SshTarget(host=self.private_ip, host_key=self.host_public_key, proxy=self._args.jump)
