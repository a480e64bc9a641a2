"""EBS volumes that outlive instances: the database's data, journal and log volumes.

Each volume is gp3 encrypted with the stack's customer-managed EBS key (infra/kms.py), tagged for AWS Backup, attached to its instance, and, when
`protectData` is on, protected (a plain `pulumi destroy` refuses) and retained on delete
(even an unprotected delete only forgets it). Volumes depend on nothing but their AZ
name, so `pulumi destroy --exclude-protected` can remove everything around them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import BACKUP_TAG_KEY, backup_tag_value, tags


@dataclass(frozen=True)
class VolumeSpec:
    purpose: str  # data | journal | log
    size_gb: int
    device_name: str  # as EC2 sees it; Nitro instances show it as /dev/nvme<N>n1


def database_volume_specs(data_gb: int, journal_gb: int, log_gb: int) -> tuple[VolumeSpec, ...]:
    """The database's three volumes (the e-mission layout): data, journal (WAL), log."""
    return (
        VolumeSpec("data", data_gb, "/dev/sdf"),
        VolumeSpec("journal", journal_gb, "/dev/sdg"),
        VolumeSpec("log", log_gb, "/dev/sdh"),
    )


def data_options(protect: bool, **kwargs) -> pulumi.ResourceOptions:
    """Options for a resource holding data that must survive `pulumi destroy`."""
    return pulumi.ResourceOptions(protect=protect, retain_on_delete=protect, **kwargs)


class AttachedVolumes(pulumi.ComponentResource):
    """Encrypted gp3 volumes in one AZ, attached to one instance, tagged for backup."""

    volumes: dict[str, aws.ebs.Volume]
    attachments: dict[str, aws.ec2.VolumeAttachment]

    def __init__(
        self,
        name: str,
        *,
        role: str,
        availability_zone: str,
        instance_id: pulumi.Input[str],
        specs: tuple[VolumeSpec, ...],
        protect: bool,
        backup: bool,
        kms_key_id: Optional[pulumi.Input[str]] = None,  # ARN; None: the account's aws/ebs key
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("onionstack:infra:AttachedVolumes", name, None, opts)
        self.volumes, self.attachments = {}, {}
        backup_tags = {BACKUP_TAG_KEY: backup_tag_value()} if backup else {}
        for spec in specs:
            volume = aws.ebs.Volume(
                f"{name}-{spec.purpose}",
                availability_zone=availability_zone,
                size=spec.size_gb,
                type="gp3",
                encrypted=True,
                # Snapshots, and so AWS Backup's recovery points, keep the volume's key.
                kms_key_id=kms_key_id,
                tags=tags(role, f"{role}-{spec.purpose}", purpose=spec.purpose, **backup_tags),
                opts=data_options(protect, parent=self),
            )
            self.volumes[spec.purpose] = volume
            self.attachments[spec.purpose] = aws.ec2.VolumeAttachment(
                f"{name}-{spec.purpose}-attach",
                device_name=spec.device_name,
                volume_id=volume.id,
                instance_id=instance_id,
                # Stop the instance before detaching so the filesystem is not cut mid-write
                # when the instance is replaced.
                stop_instance_before_detaching=True,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({p: v.id for p, v in self.volumes.items()})
