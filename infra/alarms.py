"""CloudWatch alarms on the balancer's metrics (infra/metrics.py) to a KMS-encrypted SNS
topic with e-mail subscriptions, the EC2 recovery action on the balancer's system status
check, and the balancer's instance role that may put metrics in the stack's namespace only.

Every alarm treats missing data as breaching: a balancer (or metrics shipper) that stops
reporting is an alarm, not an all-clear. The alarm definitions are plain data
(`alarm_specs`), turned into Pulumi resources here and into boto3 `put_metric_alarm`
calls by `AlarmSpec.boto3_kwargs` (tests/test_alarms_moto.py), so both say the same.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra import metrics
from infra.kms import AwsAccount, alarm_topic_key_policy, customer_key
from infra.tags import tags

# Thresholds (docs/operations.md "Alarms" says why each).
UNREACHABLE_MINUTES = 3  # probes failing in 2 of 3 minutes
UPLOAD_STALE_SECONDS = 2 * 3600  # tor republishes every 60-120 min; HSDirs drop descriptors after 3 h
HSDIRS_SERVING_MIN = 6  # of the 8 responsible HSDirs (2 replicas x 4 spread) per time period
RECOVER_MINUTES = 2


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm, as put_metric_alarm takes it (CloudWatch's own parameter names)."""

    name: str
    description: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    extra_actions: tuple[str, ...] = field(default=())  # before the topic, e.g. EC2 recover

    def boto3_kwargs(self, topic_arn: str) -> dict:
        return {
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "Namespace": self.namespace,
            "MetricName": self.metric,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
            "Statistic": self.statistic,
            "Period": self.period,
            "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.datapoints_to_alarm,
            "Threshold": self.threshold,
            "ComparisonOperator": self.comparison,
            "TreatMissingData": "breaching",
            "ActionsEnabled": True,
            "AlarmActions": [*self.extra_actions, topic_arn],
            "OKActions": [topic_arn],
        }


@dataclass(frozen=True)
class FrontendRef:
    site: str  # the site's name in onionstack:sites
    onion_address: str


def min_instances_up(total: int) -> int:
    """The alarm fires below half of the frontend's instances (rounded up, at least 1):
    one worker down is the worker alarm's business; half the fleet gone is the site's."""
    return max(1, math.ceil(total / 2))


def alarm_specs(
    stack: str,
    frontends: Sequence[FrontendRef],
    instances_per_frontend: int,
    workers: Sequence[str],
    instances_per_worker: int,
    publishes: bool = True,
) -> list[AlarmSpec]:
    """The alarms on the balancer's metrics, one set per frontend and one per worker.

    A standby fleet (`balancer.publish: false`, blue/green) never uploads: it gets no
    upload or HSDir alarms, which would fire for as long as it stands by."""
    ns = metrics.namespace(stack)
    prefix = f"onionstack-{stack}"
    specs: list[AlarmSpec] = []
    for f in frontends:
        dim = ((metrics.FRONTEND, metrics.frontend_dimension(f.onion_address)),)
        uploads = [
            AlarmSpec(
                f"{prefix}-{f.site}-no-confirmed-upload",
                f"no HSDir has confirmed an upload of {f.site}'s descriptor for "
                f"{UPLOAD_STALE_SECONDS // 60} minutes",
                ns, metrics.SECONDS_SINCE_CONFIRMED_UPLOAD.name, dim, "Maximum", 300, 1, 1,
                UPLOAD_STALE_SECONDS, "GreaterThanThreshold",
            ),
            AlarmSpec(
                f"{prefix}-{f.site}-hsdirs-not-serving",
                f"fewer than {HSDIRS_SERVING_MIN} responsible HSDirs serve {f.site}'s current "
                f"revision, for 15 minutes",
                ns, metrics.HSDIRS_SERVING.name, dim, "Minimum", 300, 3, 3,
                HSDIRS_SERVING_MIN, "LessThanThreshold",
            ),
        ]
        specs += [
            AlarmSpec(
                f"{prefix}-{f.site}-unreachable",
                f"{f.site} ({f.onion_address}) did not answer the balancer's end-to-end probe "
                f"in 2 of the last {UNREACHABLE_MINUTES} minutes",
                ns, metrics.SERVICE_REACHABLE.name, dim, "Maximum", 60, UNREACHABLE_MINUTES, 2,
                1, "LessThanThreshold",
            ),
            *(uploads if publishes else []),
            AlarmSpec(
                f"{prefix}-{f.site}-instances-down",
                f"fewer than {min_instances_up(instances_per_frontend)} of {f.site}'s "
                f"{instances_per_frontend} instances up, for 3 minutes",
                ns, metrics.INSTANCES_UP.name, dim, "Minimum", 60, 3, 3,
                min_instances_up(instances_per_frontend), "LessThanThreshold",
            ),
            AlarmSpec(
                f"{prefix}-{f.site}-rejected-descriptors",
                f"the balancer rejected instance descriptors for {f.site} (a hostile or "
                f"broken instance; its status names it)",
                ns, metrics.REJECTED_DESCRIPTORS.name, dim, "Sum", 300, 1, 1,
                0, "GreaterThanThreshold",
            ),
        ]
    for worker in workers:
        specs.append(AlarmSpec(
            f"{prefix}-{worker}-tor-down",
            f"{worker}: fewer than {instances_per_worker} of its instances pass the balancer's "
            f"probes (one of its tor daemons is down), for 3 minutes",
            ns, metrics.WORKER_INSTANCES_UP.name, ((metrics.WORKER, worker),), "Minimum", 60, 3, 3,
            instances_per_worker, "LessThanThreshold",
        ))
    return specs


def recover_spec(stack: str, account: AwsAccount, instance_id: str) -> AlarmSpec:
    """EC2 recovery of the balancer when AWS's system status check fails (host hardware,
    power, network): the instance moves to healthy hardware with its IP and volumes."""
    return AlarmSpec(
        f"onionstack-{stack}-balancer-recover",
        "the balancer's system status check failed: EC2 recovers it onto other hardware",
        "AWS/EC2", "StatusCheckFailed_System", (("InstanceId", instance_id),), "Maximum", 60,
        RECOVER_MINUTES, RECOVER_MINUTES, 1, "GreaterThanOrEqualToThreshold",
        extra_actions=(f"arn:{account.partition}:automate:{account.region}:ec2:recover",),
    )


def topic_policy(topic_arn: str, account: AwsAccount) -> dict:
    """CloudWatch alarms of this account may publish; nothing reaches the topic without TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CloudWatchAlarmsOfThisAccount",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": "sns:Publish",
                "Resource": topic_arn,
                "Condition": {"StringEquals": {"aws:SourceAccount": account.account_id}},
            },
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": "sns:Publish",
                "Resource": topic_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def put_metrics_policy(stack: str) -> dict:
    """The balancer may put metric data, into its stack's namespace only."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",  # PutMetricData has no resource; the namespace is the limit
                "Condition": {"StringEquals": {"cloudwatch:namespace": metrics.namespace(stack)}},
            }
        ],
    }


def ec2_trust_policy() -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


class MetricsPublisher(pulumi.ComponentResource):
    """The balancer's instance role and profile: PutMetricData into `Onionstack/<stack>`."""

    role: aws.iam.Role
    profile: aws.iam.InstanceProfile

    def __init__(self, name: str, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:MetricsPublisher", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        self.role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(ec2_trust_policy()),
            description="onionstack balancer: put its metrics into CloudWatch",
            tags=tags("balancer", "balancer-metrics"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-put-metrics",
            role=self.role.id,
            policy=json.dumps(put_metrics_policy(stack)),
            opts=child,
        )
        self.profile = aws.iam.InstanceProfile(
            f"{name}-profile",
            role=self.role.name,
            tags=tags("balancer", "balancer-metrics"),
            opts=child,
        )
        self.register_outputs({"instanceProfile": self.profile.name})


@dataclass(frozen=True)
class AlarmsArgs:
    account: AwsAccount
    frontends: tuple[FrontendRef, ...]
    instances_per_frontend: int  # workers x tor daemons per worker
    workers: tuple[str, ...]  # node names, worker-1 first
    instances_per_worker: int  # tor daemons per worker x sites
    balancer_instance_id: pulumi.Input[str]
    emails: tuple[str, ...] = ()
    publishes: bool = True  # balancer.publish; false: a standby fleet gets no upload alarms


class Alarms(pulumi.ComponentResource):
    topic: aws.sns.Topic
    alarms: list[aws.cloudwatch.MetricAlarm]

    def __init__(self, name: str, args: AlarmsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:infra:Alarms", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        key = customer_key(
            f"{name}-key",
            description=f"onionstack {stack} alarm topic",
            policy=alarm_topic_key_policy(args.account),
            role="monitoring",
            alias=f"alias/onionstack-{stack}-alarms",
            protect=False,  # notifications in flight only
            parent=self,
        )
        self.topic = aws.sns.Topic(
            f"{name}-topic",
            kms_master_key_id=key.arn,
            tags=tags("monitoring", "alarms"),
            opts=child,
        )
        aws.sns.TopicPolicy(
            f"{name}-topic-policy",
            arn=self.topic.arn,
            policy=self.topic.arn.apply(lambda arn: json.dumps(topic_policy(arn, args.account))),
            opts=child,
        )
        for i, address in enumerate(args.emails):
            aws.sns.TopicSubscription(
                f"{name}-email-{i}",
                topic=self.topic.arn,
                protocol="email",
                endpoint=address,
                opts=child,
            )
        specs = alarm_specs(stack, args.frontends, args.instances_per_frontend, args.workers,
                            args.instances_per_worker, publishes=args.publishes)
        self.alarms = [self._alarm(spec, child) for spec in specs]
        recover = pulumi.Output.from_input(args.balancer_instance_id).apply(
            lambda iid: recover_spec(stack, args.account, iid))
        self.alarms.append(self._alarm(recover, child, name="balancer-recover"))
        self.register_outputs({"topicArn": self.topic.arn})

    def _alarm(self, spec, opts: pulumi.ResourceOptions, name: Optional[str] = None) -> aws.cloudwatch.MetricAlarm:
        """A MetricAlarm from a spec (or an Output of one: the recovery alarm needs the
        instance id), with the same parameters as `AlarmSpec.boto3_kwargs`."""
        spec_out = pulumi.Output.from_input(spec)
        kwargs = pulumi.Output.all(spec_out, self.topic.arn).apply(lambda a: a[0].boto3_kwargs(a[1]))
        resource_name = name or spec.name.removeprefix(f"onionstack-{pulumi.get_stack()}-")
        return aws.cloudwatch.MetricAlarm(
            f"alarm-{resource_name}",
            name=kwargs["AlarmName"],
            alarm_description=kwargs["AlarmDescription"],
            namespace=kwargs["Namespace"],
            metric_name=kwargs["MetricName"],
            dimensions=kwargs["Dimensions"].apply(lambda ds: {d["Name"]: d["Value"] for d in ds}),
            statistic=kwargs["Statistic"],
            period=kwargs["Period"],
            evaluation_periods=kwargs["EvaluationPeriods"],
            datapoints_to_alarm=kwargs["DatapointsToAlarm"],
            threshold=kwargs["Threshold"],
            comparison_operator=kwargs["ComparisonOperator"],
            treat_missing_data=kwargs["TreatMissingData"],
            actions_enabled=kwargs["ActionsEnabled"],
            alarm_actions=kwargs["AlarmActions"],
            ok_actions=kwargs["OKActions"],
            tags=tags("monitoring", f"alarm-{resource_name}"),
            opts=opts,
        )
