"""The alarms and the alarm topic created through boto3 against moto, from the same
definitions the Pulumi component declares (infra.alarms.alarm_specs / recover_spec /
topic_policy, infra.kms.alarm_topic_key_policy), and found again by the metric a shipper
would put (infra.metrics): the contract between the two sides holds.

moto 5 stores alarms (PutMetricAlarm, DescribeAlarms, DescribeAlarmsForMetric), metric
data, SNS topics with attributes and e-mail subscriptions, KMS keys and IAM role
policies; it does not evaluate alarms against data or deliver e-mail."""
from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from infra import metrics
from infra.alarms import (FrontendRef, alarm_specs, ec2_trust_policy, put_metrics_policy, recover_spec,
                          topic_policy)
from infra.kms import AwsAccount, alarm_topic_key_policy

REGION = "eu-central-1"
ACCOUNT = AwsAccount("aws", "123456789012", REGION)  # moto's default account
ONION = "a" * 56 + ".onion"


@pytest.fixture
def aws():
    with mock_aws():
        yield {name: boto3.client(name, region_name=REGION) for name in ("cloudwatch", "sns", "kms", "iam", "ec2")}


def make_topic(aws, emails=("ops@example.com",)) -> str:
    key = aws["kms"].create_key(Policy=json.dumps(alarm_topic_key_policy(ACCOUNT)),
                                Description="alarm topic")["KeyMetadata"]["Arn"]
    arn = aws["sns"].create_topic(Name="onionstack-test-alarms", Attributes={"KmsMasterKeyId": key})["TopicArn"]
    aws["sns"].set_topic_attributes(TopicArn=arn, AttributeName="Policy",
                                    AttributeValue=json.dumps(topic_policy(arn, ACCOUNT)))
    for address in emails:
        aws["sns"].subscribe(TopicArn=arn, Protocol="email", Endpoint=address)
    return arn


def test_topic_is_encrypted_with_its_key_and_policy(aws):
    arn = make_topic(aws, emails=("ops@example.com", "oncall@example.org"))
    attrs = aws["sns"].get_topic_attributes(TopicArn=arn)["Attributes"]
    key = attrs["KmsMasterKeyId"]
    assert aws["kms"].describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    key_policy = json.loads(aws["kms"].get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    assert any(s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"} for s in key_policy["Statement"])
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Resource"] == arn
    subs = aws["sns"].list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    assert sorted((s["Protocol"], s["Endpoint"]) for s in subs) == [("email", "oncall@example.org"),
                                                                     ("email", "ops@example.com")]


def test_alarms_are_stored_as_declared_and_found_by_the_metrics_a_shipper_puts(aws):
    topic = make_topic(aws)
    instance = aws["ec2"].run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    specs = alarm_specs("test", [FrontendRef("news", ONION)], 6, ["worker-1", "worker-2"], 2)
    specs.append(recover_spec("test", ACCOUNT, instance))
    for spec in specs:
        aws["cloudwatch"].put_metric_alarm(**spec.boto3_kwargs(topic))
    stored = {a["AlarmName"]: a for a in aws["cloudwatch"].describe_alarms()["MetricAlarms"]}
    assert set(stored) == {s.name for s in specs} and len(stored) == 5 + 2 + 1
    for spec in specs:
        a = stored[spec.name]
        assert a["TreatMissingData"] == "breaching"
        assert a["AlarmActions"][-1] == topic and a["OKActions"] == [topic]
        assert (a["Namespace"], a["MetricName"], a["Threshold"], a["ComparisonOperator"]) == (
            spec.namespace, spec.metric, spec.threshold, spec.comparison)
        assert a["Dimensions"] == [{"Name": k, "Value": v} for k, v in spec.dimensions]
    assert stored["onionstack-test-balancer-recover"]["AlarmActions"][0] == f"arn:aws:automate:{REGION}:ec2:recover"

    # A shipper puts each metric with the module's namespace and dimensions; each is
    # watched by an alarm on exactly that metric.
    values = {metrics.FRONTEND: metrics.frontend_dimension(ONION.upper().removesuffix(".ONION")),
              metrics.WORKER: "worker-1"}
    for metric in metrics.METRICS:
        dims = [{"Name": d, "Value": values[d]} for d in metric.dimensions]
        aws["cloudwatch"].put_metric_data(Namespace=metrics.namespace("test"), MetricData=[
            {"MetricName": metric.name, "Dimensions": dims, "Value": 0, "Unit": metric.unit}])
        found = aws["cloudwatch"].describe_alarms_for_metric(
            MetricName=metric.name, Namespace=metrics.namespace("test"), Dimensions=dims)["MetricAlarms"]
        # (moto matches namespace and name only; the dimensions are compared here.)
        assert any(a["Dimensions"] == dims for a in found), metric.name
    listed = {m["MetricName"] for m in aws["cloudwatch"].list_metrics(Namespace="Onionstack/test")["Metrics"]}
    assert listed == {m.name for m in metrics.METRICS}


def test_balancer_role_policy_is_accepted_by_iam(aws):
    aws["iam"].create_role(RoleName="balancer-metrics", AssumeRolePolicyDocument=json.dumps(ec2_trust_policy()))
    aws["iam"].put_role_policy(RoleName="balancer-metrics", PolicyName="put-metrics",
                               PolicyDocument=json.dumps(put_metrics_policy("test")))
    doc = aws["iam"].get_role_policy(RoleName="balancer-metrics", PolicyName="put-metrics")["PolicyDocument"]
    assert doc["Statement"][0]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Onionstack/test"}}
