"""VPC flow logs: what the VPC refused (or all traffic), to a KMS-encrypted CloudWatch Logs
group with a retention.

Why CloudWatch Logs rather than S3: rejected flows of a VPC with no inbound ports are few,
so the price difference does not matter, while CloudWatch Logs gives the retention as one
setting of the group, encryption with a key of our own, and queries (Logs Insights) and
metric filters that alarms can watch without a bucket, bucket policy, lifecycle rules and
public-access settings to get right.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.kms import AwsAccount, customer_key, logs_key_policy
from infra.tags import tags

AGGREGATION_SECONDS = 60  # the shortest flow-log aggregation interval: rejects show within a minute


def log_group_name(stack: str) -> str:
    return f"/onionstack/{stack}/vpc-flow-logs"


def delivery_trust_policy(account: AwsAccount) -> dict:
    """Only the flow-log service, for flow logs of this account and region, assumes the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account.account_id},
                    "ArnLike": {
                        "aws:SourceArn":
                            f"arn:{account.partition}:ec2:{account.region}:{account.account_id}:vpc-flow-log/*",
                    },
                },
            }
        ],
    }


def delivery_policy(log_group_arn: str) -> dict:
    """Write to this one log group, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                "Resource": [log_group_arn, f"{log_group_arn}:log-stream:*"],
            },
            {
                # DescribeLogGroups takes no resource: the service checks the group exists.
                "Effect": "Allow",
                "Action": "logs:DescribeLogGroups",
                "Resource": "*",
            },
        ],
    }


@dataclass(frozen=True)
class FlowLogsArgs:
    vpc_id: pulumi.Input[str]
    account: AwsAccount
    traffic: str  # REJECT | ALL
    retention_days: int


class FlowLogs(pulumi.ComponentResource):
    log_group: aws.cloudwatch.LogGroup
    flow_log: aws.ec2.FlowLog
    key: aws.kms.Key

    def __init__(self, name: str, args: FlowLogsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:FlowLogs", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        self.key = customer_key(
            f"{name}-key",
            description=f"onionstack {stack} VPC flow logs",
            policy=logs_key_policy(args.account),
            role="network",
            alias=f"alias/onionstack-{stack}-flow-logs",
            protect=False,  # operational logs, not the site's data
            parent=self,
        )
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-group",
            name=log_group_name(stack),
            retention_in_days=args.retention_days,
            kms_key_id=self.key.arn,
            tags=tags("network", "vpc-flow-logs"),
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(delivery_trust_policy(args.account)),
            description="VPC flow logs delivery to CloudWatch Logs for onionstack",
            tags=tags("network", "vpc-flow-logs"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-delivery",
            role=role.id,
            policy=self.log_group.arn.apply(lambda arn: json.dumps(delivery_policy(arn))),
            opts=child,
        )
        self.flow_log = aws.ec2.FlowLog(
            f"{name}-vpc",
            vpc_id=args.vpc_id,
            traffic_type=args.traffic,
            log_destination_type="cloud-watch-logs",
            log_destination=self.log_group.arn,
            iam_role_arn=role.arn,
            max_aggregation_interval=AGGREGATION_SECONDS,
            tags=tags("network", "vpc-flow-logs"),
            opts=child,
        )
        self.register_outputs({"logGroup": self.log_group.name})
