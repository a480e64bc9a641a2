"""Alarms on the balancer's metrics, the encrypted alarm topic with its e-mail
subscriptions, the EC2 recovery of the balancer, and the balancer's metrics role.
The real program under mocks (preview=False: the policies and alarm parameters built in
apply callbacks are resolved strings and numbers here, which proves the callbacks ran)."""
from __future__ import annotations

import json

import pytest

import mockrun
from infra import metrics
from infra.config import ConfigError
from tests.stackmocks import minimal_config, prod_config, run

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


def alarms_by_name(result) -> dict:
    return {a.input("name"): a for a in result.of_type(ALARM)}


def test_every_alarm_treats_missing_data_as_breaching_and_notifies_the_topic():
    result = run(prod_config(alarmEmails=["ops@example.com"]))
    topic = result.named("alarms-topic")
    alarms = result.of_type(ALARM)
    # 5 per site (news, shop), 1 per worker (3), the balancer's recovery.
    assert len(alarms) == 5 * 2 + 3 + 1
    for a in alarms:
        assert a.input("treatMissingData") == "breaching", a.name
        assert a.input("actionsEnabled") is True
        assert a.input("alarmActions")[-1] == topic.state["arn"] and a.input("okActions") == [topic.state["arn"]]
        assert int(a.input("datapointsToAlarm")) <= int(a.input("evaluationPeriods"))
        assert a.input("alarmDescription")


def test_alarms_watch_the_metrics_module_names_per_frontend_and_worker():
    result = run(prod_config())
    from infra.config import parse_config

    cfg = parse_config({k.split(":", 1)[1]: v for k, v in prod_config().items() if k.startswith("onionstack:")})
    alarms = alarms_by_name(result)
    ns = "Onionstack/prod"
    for site in cfg.sites:
        frontend = {"frontend": site.onion_address}
        expect = {
            "unreachable": ("onion_service_reachable", "Maximum", 1, "LessThanThreshold"),
            "no-confirmed-upload": ("onion_balancer_seconds_since_confirmed_upload", "Maximum", 7200, "GreaterThanThreshold"),
            "hsdirs-not-serving": ("onion_balancer_hsdirs_serving", "Minimum", 6, "LessThanThreshold"),
            # 3 workers x 2 daemons = 6 instances per site: below 3 is half the fleet gone
            "instances-down": ("onion_balancer_instances_up", "Minimum", 3, "LessThanThreshold"),
            "rejected-descriptors": ("onion_balancer_rejected_descriptors_total", "Sum", 0, "GreaterThanThreshold"),
        }
        for suffix, (metric, stat, threshold, op) in expect.items():
            a = alarms[f"onionstack-prod-{site.name}-{suffix}"]
            assert (a.input("namespace"), a.input("metricName"), a.input("dimensions")) == (ns, metric, frontend)
            assert (a.input("statistic"), a.input("threshold"), a.input("comparisonOperator")) == (stat, threshold, op)
    for w in ("worker-1", "worker-2", "worker-3"):
        a = alarms[f"onionstack-prod-{w}-tor-down"]
        assert (a.input("metricName"), a.input("dimensions")) == ("onion_balancer_worker_instances_up", {"worker": w})
        assert a.input("threshold") == 2 * 2  # 2 tor daemons x 2 sites on each worker
    watched = {a.input("metricName") for a in result.of_type(ALARM) if a.input("namespace") == ns}
    assert watched == {m.name for m in metrics.METRICS}


def test_balancer_recovers_on_a_failed_system_status_check():
    result = run(prod_config())
    balancer = result.named("balancer-instance")
    a = alarms_by_name(result)["onionstack-prod-balancer-recover"]
    assert (a.input("namespace"), a.input("metricName")) == ("AWS/EC2", "StatusCheckFailed_System")
    assert a.input("dimensions") == {"InstanceId": balancer.id}
    assert a.input("alarmActions")[0] == "arn:aws:automate:eu-central-1:ec2:recover"
    assert (a.input("threshold"), a.input("comparisonOperator")) == (1, "GreaterThanOrEqualToThreshold")


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use():
    result = run(prod_config(alarmEmails=["ops@example.com", "oncall@example.org"]))
    topic, key = result.named("alarms-topic"), result.named("alarms-key")
    assert topic.input("kmsMasterKeyId") == key.state["arn"]
    (cw,) = [s for s in json.loads(key.input("policy"))["Statement"] if s.get("Sid") == "CloudWatchAlarmsOfThisAccount"]
    assert cw["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert set(cw["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert cw["Condition"] == {"StringEquals": {"aws:SourceAccount": "000000000000"}}
    (policy,) = result.of_type("aws:sns/topicPolicy:TopicPolicy")
    assert policy.input("arn") == topic.state["arn"]
    allow, tls = json.loads(policy.input("policy"))["Statement"]
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and allow["Action"] == "sns:Publish"
    assert allow["Resource"] == topic.state["arn"] and allow["Condition"]["StringEquals"]["aws:SourceAccount"] == "000000000000"
    assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    subs = result.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert sorted((s.input("protocol"), s.input("endpoint"), s.input("topic")) for s in subs) == [
        ("email", "oncall@example.org", topic.state["arn"]), ("email", "ops@example.com", topic.state["arn"])]
    assert result.outputs["alarmTopicArn"] == topic.state["arn"]


def test_a_standby_fleet_gets_no_upload_alarms():
    # balancer.publish false (blue/green): it never uploads, so those alarms would never clear.
    result = run(minimal_config(balancer={"publish": False}))
    names = set(alarms_by_name(result))
    assert names == {"onionstack-prod-news-unreachable", "onionstack-prod-news-instances-down",
                     "onionstack-prod-news-rejected-descriptors", "onionstack-prod-worker-1-tor-down",
                     "onionstack-prod-worker-2-tor-down", "onionstack-prod-balancer-recover"}


def test_no_emails_no_subscriptions():
    result = run(minimal_config())
    assert not result.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert len(result.of_type(ALARM)) == 5 + 2 + 1


def test_only_the_balancer_may_put_metrics_and_only_into_its_namespace():
    result = run(prod_config(), stack="staging")
    profile, role = result.named("balancer-metrics-profile"), result.named("balancer-metrics-role")
    assert profile.input("role") == role.state["name"]
    for inst in result.of_type("aws:ec2/instance:Instance"):
        expected = profile.state["name"] if inst.name == "balancer-instance" else None
        assert inst.input("iamInstanceProfile") == expected, inst.name
    (trust,) = json.loads(role.input("assumeRolePolicy"))["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    inline = result.named("balancer-metrics-put-metrics")
    assert inline.input("role") == role.id
    (stmt,) = json.loads(inline.input("policy"))["Statement"]
    assert stmt["Action"] == "cloudwatch:PutMetricData"
    assert stmt["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Onionstack/staging"}}
    assert {a.input("namespace") for a in result.of_type(ALARM)} == {"Onionstack/staging", "AWS/EC2"}


@pytest.mark.parametrize("emails,message", [
    ("ops@example.com", 'onionstack:alarmEmails = "ops@example.com": must be a list of e-mail addresses'),
    (["ops@example.com", "Ops <ops@example.com>"], 'onionstack:alarmEmails[1] = "Ops <ops@example.com>": must be an e-mail address'),
    (["ops@example.com", "OPS@example.com"], 'onionstack:alarmEmails[1] = "OPS@example.com": is listed twice'),
    (["ops@localhost"], 'onionstack:alarmEmails[0] = "ops@localhost": must be an e-mail address'),
])
def test_bad_alarm_emails_stop_the_program(emails, message):
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(alarmEmails=emails))
    assert str(info.value).startswith(message)
    assert info.value.registered_resources == []


def test_operations_doc_lists_every_metric_and_alarm():
    from pathlib import Path

    from infra.alarms import FrontendRef, alarm_specs

    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = text.split("## Alarms on AWS", 1)[1].split("\n## ", 1)[0]
    for metric in metrics.METRICS:
        assert f"| `{metric.name}` | `{'`, `'.join(metric.dimensions)}` | {metric.unit} |" in section, metric.name
    for spec in alarm_specs("prod", [FrontendRef("news", "x.onion")], 2, ["worker-1"], 2):
        suffix = spec.name.removeprefix("onionstack-prod-").replace("news-", "<site>-").replace("worker-1-", "<worker>-")
        assert f"| `{suffix}` |" in section, suffix
    assert "| `balancer-recover` |" in section
