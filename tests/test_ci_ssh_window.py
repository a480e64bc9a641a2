"""ci/ssh_window.py against moto's EC2: the deploy job's SSH window opens exactly one rule
for one address, closes it, tolerates "already gone", and refuses anything wider."""
from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from ci import ssh_window
from ci.ssh_window import PREFIX, WindowError, close_window, open_window, runner_address

REGION = "eu-central-1"


@pytest.fixture
def aws(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        group = ec2.create_security_group(GroupName="deployer", Description="onionstack deployer",
                                          VpcId=vpc)["GroupId"]
        # like the stack's group: no rules at all (the AWS provider strips the default egress)
        for rule in ingress_and_egress(ec2, group):
            ec2.revoke_security_group_egress(GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
        yield ec2, group


def ingress_and_egress(ec2, group):
    return ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]


def ingress(ec2, group):
    return [r for r in ingress_and_egress(ec2, group) if not r["IsEgress"]]


def test_open_adds_exactly_one_rule_for_the_address_and_close_removes_it(aws):
    ec2, group = aws
    said = []
    rule_id = open_window(ec2, group, "203.0.113.9", "4242-1", log=said.append)
    (rule,) = ingress(ec2, group)
    assert rule["SecurityGroupRuleId"] == rule_id
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
    assert rule["CidrIpv4"] == "203.0.113.9/32"
    assert rule["Description"] == "onionstack-deploy run 4242-1"
    assert said == [f"ssh-window: opened TCP 22 from 203.0.113.9/32 in {group} ({rule_id}, onionstack-deploy run 4242-1)"]
    assert close_window(ec2, group, "4242-1", log=said.append) == 1
    assert ingress_and_egress(ec2, group) == []
    assert said[-1] == f"ssh-window: closed (1 rule(s) removed from {group})"


def test_close_tolerates_already_gone(aws):
    ec2, group = aws
    said = []
    assert close_window(ec2, group, "4242-1", log=said.append) == 0           # never opened
    open_window(ec2, group, "203.0.113.9", "4242-1", log=said.append)
    assert close_window(ec2, group, "4242-1", log=said.append) == 1
    assert close_window(ec2, group, "4242-1", log=said.append) == 0           # closed twice
    assert said[-1] == f"ssh-window: nothing to close in {group} (already gone)"
    # the whole group gone (a stack torn down while the job ran)
    ec2.delete_security_group(GroupId=group)
    assert close_window(ec2, group, "4242-1", log=said.append) == 0


def test_close_removes_only_this_runs_rule(aws):
    ec2, group = aws
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "198.51.100.7/32", "Description": "an operator's own rule"}]}])
    open_window(ec2, group, "203.0.113.9", "4242-1", log=lambda _: None)
    close_window(ec2, group, "4242-1", log=lambda _: None)
    assert [r["Description"] for r in ingress(ec2, group)] == ["an operator's own rule"]


def test_open_sweeps_rules_left_by_earlier_runs(aws):
    """A runner that died before its closing step leaves its rule; the next run removes it
    (deploys run one at a time), and only rules this tool wrote."""
    ec2, group = aws
    open_window(ec2, group, "192.0.2.1", "4241-1", log=lambda _: None)
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "198.51.100.7/32", "Description": "an operator's own rule"}]}])
    said = []
    open_window(ec2, group, "203.0.113.9", "4242-1", log=said.append)
    assert sorted((r["CidrIpv4"], r["Description"]) for r in ingress(ec2, group)) == [
        ("198.51.100.7/32", "an operator's own rule"), ("203.0.113.9/32", PREFIX + "4242-1")]
    assert said[0] == f"ssh-window: removed 1 rule(s) left by earlier runs from {group}"


def test_open_twice_in_one_run_keeps_one_rule(aws):
    ec2, group = aws
    first = open_window(ec2, group, "203.0.113.9", "4242-1", log=lambda _: None)
    assert open_window(ec2, group, "203.0.113.9", "4242-1", log=lambda _: None) == first
    assert len(ingress(ec2, group)) == 1


def test_ipv6_address_gets_a_128(aws):
    ec2, group = aws
    open_window(ec2, group, "2001:db8::7", "4242-1", log=lambda _: None)
    (rule,) = ingress(ec2, group)
    assert rule["CidrIpv6"] == "2001:db8::7/128"


@pytest.mark.parametrize("address,why", [
    ("203.0.113.0/24", "203.0.113.0/24 is 256 addresses: the window opens for one (/32)"),
    ("0.0.0.0/0", "0.0.0.0/0 is 4294967296 addresses"),
    ("2001:db8::/64", "2001:db8::/64 is 18446744073709551616 addresses: the window opens for one (/128)"),
    ("203.0.113.9/24", "is not an IP address"),             # host bits: not a network either
    ("example.com", "is not an IP address"),
])
def test_anything_wider_than_one_address_is_refused(aws, address, why):
    ec2, group = aws
    with pytest.raises(WindowError, match=None) as info:
        open_window(ec2, group, address, "4242-1", log=lambda _: None)
    assert why in str(info.value)
    assert ingress(ec2, group) == []


def test_refuses_what_is_not_a_group_or_a_run_id(aws):
    ec2, _ = aws
    with pytest.raises(WindowError, match="not a security group id"):
        open_window(ec2, "0.0.0.0/0", "203.0.113.9", "4242-1")
    with pytest.raises(WindowError, match="run id"):
        open_window(ec2, "sg-0123456789abcdef0", "203.0.113.9", "42 42; rm")


def test_cli_open_close_with_github_run_ids(aws, monkeypatch, capsys):
    ec2, group = aws
    monkeypatch.setenv("GITHUB_RUN_ID", "777")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "2")
    monkeypatch.setattr(ssh_window, "runner_address", lambda: "203.0.113.9")
    assert ssh_window.main(["open", "--group", group], ec2=ec2) == 0
    (rule,) = ingress(ec2, group)
    assert rule["Description"] == PREFIX + "777-2" and rule["CidrIpv4"] == "203.0.113.9/32"
    assert ssh_window.main(["close", "--group", group], ec2=ec2) == 0
    assert ingress(ec2, group) == []
    assert ssh_window.main(["open", "--group", group, "--address", "203.0.113.0/24"], ec2=ec2) == 2
    assert "ssh-window: refused: 203.0.113.0/24 is 256 addresses" in capsys.readouterr().err
    assert ingress(ec2, group) == []


def test_runner_address_from_checkip():
    asked = []

    def fetch(url):
        asked.append(url)
        return b"203.0.113.9\n"

    assert runner_address(fetch) == "203.0.113.9" and asked == ["https://checkip.amazonaws.com"]
    with pytest.raises(WindowError, match="not an address"):
        runner_address(lambda url: b"<html>captive portal</html>")
