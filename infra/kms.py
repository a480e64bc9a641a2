"""Customer-managed KMS keys with explicit key policies, and the policies themselves.

Every key onionstack makes has a written key policy instead of KMS's default one:
  - `EnableIamPolicies`: the account (its IAM policies) may manage and use the key, as in
    KMS's default policy. Without it nobody could ever change the key again.
  - one statement for the AWS service that uses the key, limited to this account and to
    that service (`kms:ViaService`, or a service principal with `aws:SourceAccount`).
  - with `protectData`, `DenyKeyDestruction`: nobody, whatever their IAM policies say, may
    schedule the key's deletion or disable it. Deleting a key makes everything encrypted
    under it (volumes, recovery points) unreadable for good. Lifting this deny is a key
    policy change (`kms:PutKeyPolicy`, logged in CloudTrail); `protectData: false` +
    `pulumi up` does it, and so does the break-glass procedure in docs/stack.md.

The policy builders are plain functions of (partition, account, region) so tests can
read and lint them without a Pulumi runtime.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra.storage import data_options
from infra.tags import tags

# What an attacker holding a role with kms:* would do to make every backup unreadable.
KEY_DESTRUCTION_ACTIONS = ("kms:ScheduleKeyDeletion", "kms:DisableKey")
# What EBS needs of a volume key (the actions of the aws/ebs key's own policy).
EBS_KEY_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:CreateGrant",
    "kms:DescribeKey",
)
DELETION_WINDOW_DAYS = 30  # the longest KMS allows: a month to notice and cancel


@dataclass(frozen=True)
class AwsAccount:
    """Where the stack runs: looked up once (`lookup_account`) and passed down."""

    partition: str  # aws | aws-cn | aws-us-gov
    account_id: str
    region: str

    @property
    def root(self) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:root"

    def service(self, name: str, region: Optional[str] = None) -> str:
        """A regional service endpoint name as kms:ViaService sees it."""
        suffix = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return f"{name}.{region or self.region}.{suffix}"


def lookup_account() -> AwsAccount:
    """Partition, account id and region of the default provider (three invokes)."""
    region = aws.get_region()
    return AwsAccount(
        partition=aws.get_partition().partition,
        account_id=aws.get_caller_identity().account_id,
        region=getattr(region, "region", None) or region.name,
    )


# ---------------------------------------------------------------- policy documents
def _policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": [s for s in statements if s]}


def enable_iam_statement(account: AwsAccount) -> dict:
    return {
        "Sid": "EnableIamPolicies",
        "Effect": "Allow",
        "Principal": {"AWS": account.root},
        "Action": "kms:*",
        "Resource": "*",
    }


def deny_destruction_statement() -> dict:
    return {
        "Sid": "DenyKeyDestruction",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": list(KEY_DESTRUCTION_ACTIONS),
        "Resource": "*",
    }


def ebs_key_policy(account: AwsAccount, protect: bool, regions: Sequence[str] = ()) -> dict:
    """The volumes' key: usable by any principal of this account, but only through EC2
    (EBS) in the stack's region and the backup copy region, as the aws/ebs key is; so AWS
    Backup's snapshots, their cross-region copies and `python -m infra.restore` work."""
    via = sorted({account.service("ec2"), *(account.service("ec2", r) for r in regions)})
    return _policy(
        enable_iam_statement(account),
        {
            "Sid": "UseThroughEbsInThisAccount",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": list(EBS_KEY_ACTIONS),
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:CallerAccount": account.account_id, "kms:ViaService": via},
            },
        },
        deny_destruction_statement() if protect else None,
    )


def backup_vault_key_policy(account: AwsAccount, protect: bool, region: Optional[str] = None) -> dict:
    """A backup vault's key, used by AWS Backup for the resource types it encrypts itself."""
    return _policy(
        enable_iam_statement(account),
        {
            "Sid": "UseThroughAwsBackupInThisAccount",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": list(EBS_KEY_ACTIONS),
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "kms:CallerAccount": account.account_id,
                    "kms:ViaService": account.service("backup", region),
                },
            },
        },
        deny_destruction_statement() if protect else None,
    )


def logs_key_policy(account: AwsAccount) -> dict:
    """A CloudWatch Logs group's key: the Logs service of this region, for log groups of
    this account only (the encryption context CloudWatch Logs sends)."""
    return _policy(
        enable_iam_statement(account),
        {
            "Sid": "CloudWatchLogsOfThisAccount",
            "Effect": "Allow",
            "Principal": {"Service": account.service("logs")},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*",
            "Condition": {
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn":
                        f"arn:{account.partition}:logs:{account.region}:{account.account_id}:log-group:*",
                },
            },
        },
    )


def alarm_topic_key_policy(account: AwsAccount) -> dict:
    """The alarm topic's key. CloudWatch alarms can only publish to an encrypted topic when
    the key lets the CloudWatch service use it (the AWS-managed aws/sns key does not)."""
    return _policy(
        enable_iam_statement(account),
        {
            "Sid": "CloudWatchAlarmsOfThisAccount",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceAccount": account.account_id}},
        },
    )


# ---------------------------------------------------------------- resources
def customer_key(
    name: str,
    *,
    description: str,
    policy: dict,
    role: str,
    alias: str,
    protect: bool,
    parent: pulumi.Resource,
    provider: Optional[pulumi.ProviderResource] = None,
) -> aws.kms.Key:
    """A rotating customer-managed key with `policy` and an alias, as children of `parent`.

    `protect` (protectData) protects and retains the key: it is what makes the data and
    recovery points encrypted under it readable.
    """
    key = aws.kms.Key(
        name,
        description=description,
        policy=json.dumps(policy),
        enable_key_rotation=True,
        deletion_window_in_days=DELETION_WINDOW_DAYS,
        tags=tags(role, name),
        opts=data_options(protect, parent=parent, provider=provider),
    )
    aws.kms.Alias(
        f"{name}-alias",
        name=alias,
        target_key_id=key.key_id,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
    )
    return key


@dataclass(frozen=True)
class EbsKeyArgs:
    account: AwsAccount
    protect: bool
    copy_regions: tuple[str, ...] = ()  # regions EBS copies snapshots into (backup copies)


class EbsKey(pulumi.ComponentResource):
    """The customer-managed key of every EBS volume in the stack: the database's data
    volumes and every instance's root volume, and so every recovery point AWS Backup takes
    of them (EBS snapshots keep their volume's key; the vault's key does not apply)."""

    key: aws.kms.Key

    def __init__(self, name: str, args: EbsKeyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:EbsKey", name, None, opts)
        stack = pulumi.get_stack()
        self.key = customer_key(
            f"{name}-key",
            description=f"onionstack {stack} EBS volumes (data and root) and their snapshots",
            policy=ebs_key_policy(args.account, args.protect, args.copy_regions),
            role="storage",
            alias=f"alias/onionstack-{stack}-ebs",
            protect=args.protect,
            parent=self,
        )
        self.register_outputs({"keyArn": self.key.arn})
