"""AWS Backup: a KMS-encrypted, locked vault with a deny policy, a plan with the four
retention rules (and, optionally, a copy of every recovery point to a locked vault in a
second region), a selection of every resource carrying this stack's backup tag, and the
IAM role AWS Backup assumes.

What makes the recovery points hard to destroy (docs/stack.md "Backups an attacker cannot
delete"):
  - Vault Lock (governance by default, compliance optional) with the rules' shortest and
    longest retention as bounds: no recovery point leaves the vault before the lock's
    minimum, whatever anyone asks.
  - A vault access policy denying, to every principal, deleting recovery points, changing
    their lifecycle and replacing the policy itself (the shape AWS Config's
    backup-recovery-point-manual-deletion-disabled rule checks).
  - With protectData, the keys, vaults, locks and policies are protected and retained:
    `pulumi destroy` never removes them, and their key policies deny key deletion.

EBS recovery points are EBS snapshots and keep their volume's key (the stack's EBS key,
infra/kms.py); a vault key only covers resource types AWS Backup encrypts itself.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.config import BackupRule, ConfigError, VaultLock
from infra.kms import AwsAccount, backup_vault_key_policy, customer_key
from infra.storage import data_options
from infra.tags import BACKUP_TAG_KEY, backup_tag_value, tags

MANAGED_POLICIES = (
    "AWSBackupServiceRolePolicyForBackup",
    "AWSBackupServiceRolePolicyForRestores",
)

# Denied to every principal by each vault's access policy: what an attacker holding the
# deploy role would do to destroy backups through AWS Backup (deleting a recovery point,
# expiring it early) or to lift the deny by overwriting the policy. Deleting the policy
# (backup:DeleteBackupVaultAccessPolicy) stays possible for the break-glass procedure;
# keep it out of the deploy role (DEPLOY_ROLE_DENIED_ACTIONS).
VAULT_DENIED_ACTIONS = (
    "backup:DeleteRecoveryPoint",
    "backup:UpdateRecoveryPointLifecycle",
    "backup:PutBackupVaultAccessPolicy",
)

# What the deploy role (CI's `pulumi up`) never calls while protectData is on, and an
# attacker holding it would use to lift the guards above before deleting: attach
# deploy_role_guard_policy() to that role (docs/stack.md). Key deletion needs no entry
# here: the data keys' own policies deny it to everyone (infra/kms.py).
DEPLOY_ROLE_DENIED_ACTIONS = (
    "backup:DeleteRecoveryPoint",
    "backup:UpdateRecoveryPointLifecycle",
    "backup:DeleteBackupVaultAccessPolicy",
    "backup:DeleteBackupVaultLockConfiguration",
)


def vault_access_policy() -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyRecoveryPointDeletion",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": list(VAULT_DENIED_ACTIONS),
                "Resource": "*",
            }
        ],
    }


def deploy_role_guard_policy() -> dict:
    """An identity policy for the deploy role: explicit denies no grant can override."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NeverDestroyBackups",
                "Effect": "Deny",
                "Action": list(DEPLOY_ROLE_DENIED_ACTIONS),
                "Resource": "*",
            }
        ],
    }


def lock_args(lock: VaultLock, min_days: int, max_days: int) -> dict:
    """VaultLockConfiguration inputs: governance has no changeable_for_days (it can be
    lifted by a principal allowed to); compliance has one and is immutable after it."""
    args = {"min_retention_days": min_days, "max_retention_days": max_days}
    if lock.mode == "compliance":
        args["changeable_for_days"] = lock.changeable_for_days
    return args


def lock_request(vault_name: str, lock: VaultLock, min_days: int, max_days: int) -> dict:
    """The same lock as AWS Backup's PutBackupVaultLockConfiguration parameters (boto3)."""
    names = {"min_retention_days": "MinRetentionDays", "max_retention_days": "MaxRetentionDays",
             "changeable_for_days": "ChangeableForDays"}
    return {"BackupVaultName": vault_name,
            **{names[k]: v for k, v in lock_args(lock, min_days, max_days).items()}}


@dataclass(frozen=True)
class BackupArgs:
    rules: tuple[BackupRule, ...]
    protect: bool
    account: Optional[AwsAccount] = None  # None: looked up (lookup_account)
    lock: VaultLock = VaultLock()
    copy_to_region: Optional[str] = None


class Backup(pulumi.ComponentResource):
    lock: aws.backup.VaultLockConfiguration
    key: aws.kms.Key
    vault: aws.backup.Vault
    plan: aws.backup.Plan
    role: aws.iam.Role
    selection: aws.backup.Selection

    def __init__(self, name: str, args: BackupArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:Backup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.account is None:
            from infra.kms import lookup_account

            account = lookup_account()
        else:
            account = args.account
        partition = account.partition
        stack = pulumi.get_stack()
        if args.copy_to_region == account.region:
            raise ConfigError(
                f"onionstack:backup.copyToRegion = {args.copy_to_region!r}: is the stack's own "
                f"region; name a second region, or \"\" for no copy"
            )
        min_days = min(r.retention_days for r in args.rules)
        max_days = max(r.retention_days for r in args.rules)

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"onionstack {stack} backup vault encryption",
            policy=json.dumps(backup_vault_key_policy(account, args.protect)),
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags("backup", "backup-key"),
            opts=data_options(args.protect, parent=self),
        )
        aws.kms.Alias(
            f"{name}-key-alias",
            name=f"alias/onionstack-{stack}-backup",
            target_key_id=self.key.key_id,
            opts=child,
        )
        self.vault = aws.backup.Vault(
            f"{name}-vault",
            kms_key_arn=self.key.arn,
            tags=tags("backup", "backup-vault"),
            opts=data_options(args.protect, parent=self),
        )
        self.lock = self._guard(f"{name}-vault", self.vault, args, min_days, max_days)

        # A copy of every recovery point in a second region: its own provider, key, vault,
        # lock and policy there (a region outage, or a mistake in one region, spares it).
        self.copy_vault: Optional[aws.backup.Vault] = None
        self.copy_key: Optional[aws.kms.Key] = None
        if args.copy_to_region:
            region = args.copy_to_region
            provider = aws.Provider(f"{name}-copy-region", region=region, opts=child)
            self.copy_key = customer_key(
                f"{name}-copy-key",
                description=f"onionstack {stack} backup copy vault encryption ({region})",
                policy=backup_vault_key_policy(account, args.protect, region=region),
                role="backup",
                alias=f"alias/onionstack-{stack}-backup-copy",
                protect=args.protect,
                parent=self,
                provider=provider,
            )
            self.copy_vault = aws.backup.Vault(
                f"{name}-copy-vault",
                kms_key_arn=self.copy_key.arn,
                tags=tags("backup", "backup-copy-vault", region=region),
                opts=data_options(args.protect, parent=self, provider=provider),
            )
            self._guard(f"{name}-copy-vault", self.copy_vault, args, min_days, max_days, provider)

        def copy_actions(rule: BackupRule) -> list:
            if self.copy_vault is None:
                return []
            # The copy keeps the rule's retention, within the copy vault's lock bounds.
            return [{"destination_vault_arn": self.copy_vault.arn,
                     "lifecycle": {"delete_after": rule.retention_days}}]

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
                    "copy_actions": copy_actions(rule),
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
        outputs = {"vaultName": self.vault.name}
        if self.copy_vault is not None:
            outputs["copyVaultName"] = self.copy_vault.name
        self.register_outputs(outputs)

    def _guard(self, name: str, vault: aws.backup.Vault, args: BackupArgs, min_days: int, max_days: int,
               provider: Optional[pulumi.ProviderResource] = None) -> aws.backup.VaultLockConfiguration:
        """Vault Lock and the deny policy on `vault`. Both are protected and retained with
        protectData: deleting either would lift the guard while the vault stays."""
        lock = aws.backup.VaultLockConfiguration(
            f"{name}-lock",
            backup_vault_name=vault.name,
            **lock_args(args.lock, min_days, max_days),
            opts=data_options(args.protect, parent=self, provider=provider),
        )
        aws.backup.VaultPolicy(
            f"{name}-policy",
            backup_vault_name=vault.name,
            policy=json.dumps(vault_access_policy()),
            opts=data_options(args.protect, parent=self, provider=provider),
        )
        return lock
