"""Network hygiene: VPC flow logs to a KMS-encrypted CloudWatch Logs group with a retention,
the VPC's default security group stripped of its rules, IMDSv2 on every launch template.
The real program under mocks (preview=False, so the policy built in an apply is checked)."""
from __future__ import annotations

import fnmatch
import json

import pytest

import mockrun
from infra.config import ConfigError
from tests.stackmocks import minimal_config, prod_config, run

FLOW_LOG = "aws:ec2/flowLog:FlowLog"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"


def test_flow_logs_record_rejects_to_an_encrypted_group_with_a_retention():
    result = run(prod_config())
    (vpc,) = result.of_type("aws:ec2/vpc:Vpc")
    (flow,) = result.of_type(FLOW_LOG)
    (group,) = result.of_type(LOG_GROUP)
    key, role = result.named("flow-logs-key"), result.named("flow-logs-role")
    assert flow.input("vpcId") == vpc.id and flow.input("trafficType") == "REJECT"
    assert flow.input("logDestinationType") == "cloud-watch-logs" and flow.input("logDestination") == group.state["arn"]
    assert flow.input("iamRoleArn") == role.state["arn"] and int(flow.input("maxAggregationInterval")) == 60
    assert group.input("name") == "/onionstack/prod/vpc-flow-logs"
    assert int(group.input("retentionInDays")) == 90 and group.input("kmsKeyId") == key.state["arn"]
    # The key lets CloudWatch Logs of this account and region use it for this log group.
    (logs,) = [s for s in json.loads(key.input("policy"))["Statement"] if s["Sid"] == "CloudWatchLogsOfThisAccount"]
    assert logs["Principal"] == {"Service": "logs.eu-central-1.amazonaws.com"}
    pattern = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    assert fnmatch.fnmatchcase("arn:aws:logs:eu-central-1:000000000000:log-group:/onionstack/prod/vpc-flow-logs", pattern)
    assert not fnmatch.fnmatchcase("arn:aws:logs:eu-central-1:111111111111:log-group:x", pattern)


def test_flow_log_delivery_role_writes_only_its_group():
    result = run(prod_config())
    role, group = result.named("flow-logs-role"), result.named("flow-logs-group")
    (trust,) = json.loads(role.input("assumeRolePolicy"))["Statement"]
    assert trust["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": "000000000000"}
    inline = result.named("flow-logs-delivery")
    assert inline.input("role") == role.id
    # Built in an apply from the group's ARN: a string here proves the callback ran.
    policy = json.loads(inline.input("policy"))
    write, describe = policy["Statement"]
    assert write["Resource"] == [group.state["arn"], group.state["arn"] + ":log-stream:*"]
    assert group.state["arn"] == "arn:aws:logs:eu-central-1:000000000000:log-group:/onionstack/prod/vpc-flow-logs"
    assert set(write["Action"]) == {"logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"}
    assert describe["Action"] == "logs:DescribeLogGroups"


def test_flow_logs_config():
    result = run(minimal_config(flowLogs={"traffic": "ALL", "retentionDays": 30}))
    (flow,) = result.of_type(FLOW_LOG)
    (group,) = result.of_type(LOG_GROUP)
    assert flow.input("trafficType") == "ALL" and int(group.input("retentionInDays")) == 30
    off = run(minimal_config(flowLogs={"enabled": False}))
    assert not off.of_type(FLOW_LOG) and not off.of_type(LOG_GROUP)
    assert not [r for r in off.resources if r.name.startswith("flow-logs")]


@pytest.mark.parametrize("flow_logs,message", [
    ({"traffic": "ACCEPT"}, 'onionstack:flowLogs.traffic = "ACCEPT": must be "REJECT"'),
    ({"retentionDays": 10}, "onionstack:flowLogs.retentionDays = 10: must be one of CloudWatch Logs' retention periods"),
    ({"retention": 10}, "onionstack:flowLogs.retention = 10: unknown key"),
])
def test_bad_flow_logs_config_stops_the_program(flow_logs, message):
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(flowLogs=flow_logs))
    assert str(info.value).startswith(message)
    assert info.value.registered_resources == []


def test_default_security_group_is_stripped():
    result = run(prod_config())
    (vpc,) = result.of_type("aws:ec2/vpc:Vpc")
    (default,) = result.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default.input("vpcId") == vpc.id
    # Adopting the default group removes its rules; none are declared, so none remain.
    assert not default.input("ingress") and not default.input("egress")
    # Nothing is placed in it.
    for inst in result.of_type("aws:ec2/instance:Instance"):
        assert default.id not in inst.input("vpcSecurityGroupIds")


def test_launch_templates_require_imdsv2():
    # The stack declares instances directly today; a launch template added later must
    # require IMDSv2 like every instance does.
    result = run(prod_config())
    for lt in result.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        opts = lt.input("metadataOptions") or {}
        assert opts.get("httpTokens") == "required" and opts.get("httpEndpoint") == "enabled", lt.name
    for inst in result.of_type("aws:ec2/instance:Instance"):
        assert inst.input("metadataOptions")["httpTokens"] == "required", inst.name
