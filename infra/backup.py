"""AWS Backup: a KMS-encrypted vault, a plan with the four retention rules, a selection of
every resource carrying this stack's backup tag, and the IAM role AWS Backup assumes.

The KMS key and the vault are protected and retained when `protectData` is on: losing the
key makes every recovery point unreadable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.config import BackupRule
from infra.storage import data_options
from infra.tags import BACKUP_TAG_KEY, backup_tag_value, tags

MANAGED_POLICIES = (
    "AWSBackupServiceRolePolicyForBackup",
    "AWSBackupServiceRolePolicyForRestores",
)


@dataclass(frozen=True)
class BackupArgs:
    rules: tuple[BackupRule, ...]
    protect: bool


class Backup(pulumi.ComponentResource):
    key: aws.kms.Key
    vault: aws.backup.Vault
    plan: aws.backup.Plan
    role: aws.iam.Role
    selection: aws.backup.Selection

    def __init__(self, name: str, args: BackupArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:Backup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        partition = aws.get_partition().partition

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"onionstack {pulumi.get_stack()} backup vault encryption",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags("backup", "backup-key"),
            opts=data_options(args.protect, parent=self),
        )
        aws.kms.Alias(
            f"{name}-key-alias",
            name=f"alias/onionstack-{pulumi.get_stack()}-backup",
            target_key_id=self.key.key_id,
            opts=child,
        )
        self.vault = aws.backup.Vault(
            f"{name}-vault",
            kms_key_arn=self.key.arn,
            tags=tags("backup", "backup-vault"),
            opts=data_options(args.protect, parent=self),
        )
        self.plan = aws.backup.Plan(
            f"{name}-plan",
            rules=[
                {
                    "rule_name": rule.name,
                    "target_vault_name": self.vault.name,
                    "schedule": rule.schedule,
                    "schedule_expression_timezone": "Etc/UTC",
                    "start_window": 60,
                    "completion_window": 180,
                    "lifecycle": {"delete_after": rule.retention_days},
                    "recovery_point_tags": tags("backup", f"rp-{rule.name}", keep=str(rule.keep)),
                }
                for rule in args.rules
            ],
            tags=tags("backup", "backup-plan"),
            opts=child,
        )
        self.role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "backup.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            description="AWS Backup service role for onionstack",
            tags=tags("backup", "backup-role"),
            opts=child,
        )
        for policy in MANAGED_POLICIES:
            aws.iam.RolePolicyAttachment(
                f"{name}-{policy}",
                role=self.role.name,
                policy_arn=f"arn:{partition}:iam::aws:policy/service-role/{policy}",
                opts=child,
            )
        self.selection = aws.backup.Selection(
            f"{name}-selection",
            plan_id=self.plan.id,
            iam_role_arn=self.role.arn,
            selection_tags=[
                {"type": "STRINGEQUALS", "key": BACKUP_TAG_KEY, "value": backup_tag_value()}
            ],
            opts=child,
        )
        self.register_outputs({"vaultName": self.vault.name})
