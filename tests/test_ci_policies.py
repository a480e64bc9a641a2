"""The CI roles' IAM policies shipped in ci/ (docs/operations.md, "CI/CD").

The preview role runs a pull request's program after a reviewer approves it; it may look
things up (describe, list, get) but read no data: no object, console output, parameter,
secret, user data or log. Its actions are exactly what `pulumi preview` of this program
asks AWS (the program's invokes under mocks, mapped to IAM actions), each checked against
AWS's action catalogue (parliament's copy) for its access level. The deploy role's policy
covers every AWS service the program declares resources in and keeps the backup guard.
Each check also rejects a broken policy.
"""
from __future__ import annotations

import fnmatch
import json
import re
import warnings
from pathlib import Path

import pytest

from tests.stackmocks import minimal_config, prod_config, run

REPO = Path(__file__).resolve().parent.parent
PREVIEW = REPO / "ci" / "preview-role-policy.json"
DEPLOY = REPO / "ci" / "deploy-role-policy.json"

# What each invoke of the program asks AWS for (the AWS provider's data sources).
INVOKE_ACTIONS = {
    "aws:ec2/getAmi:getAmi": {"ec2:DescribeImages"},
    "aws:ec2/getInstanceType:getInstanceType": {"ec2:DescribeInstanceTypes"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": {"ec2:DescribeAvailabilityZones"},
    "aws:index/getRegion:getRegion": {"ec2:DescribeRegions"},
    "aws:index/getCallerIdentity:getCallerIdentity": {"sts:GetCallerIdentity"},
    "aws:index/getPartition:getPartition": set(),                  # computed by the provider
    "aws:iam/getPolicyDocument:getPolicyDocument": set(),          # likewise
}
# Actions that hand out data, not descriptions: object contents, console output and
# screenshots, instance user data (the hosts' SSH keys travel in it), launch templates'
# user data, passwords, parameters, secrets, decryption, logs, snapshot blocks, images,
# function code, table items, queue messages.
DATA_READS = (
    "*:GetObject*", "s3:*", "ec2:GetConsole*", "ec2:GetPasswordData", "ec2:GetLaunchTemplateData",
    "ec2:DescribeInstanceAttribute", "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceUefiData",
    "secretsmanager:*", "ssm:GetParameter*", "ssm:GetDocument", "kms:Decrypt", "kms:GenerateDataKey*",
    "logs:GetLogEvents", "logs:FilterLogEvents", "logs:GetQueryResults", "logs:StartQuery", "logs:GetLogRecord",
    "ebs:*", "backup:GetRecoveryPointRestoreMetadata", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage",
    "lambda:GetFunction", "dynamodb:*", "sqs:ReceiveMessage", "kinesis:GetRecords",
    "rds:DownloadDBLogFilePortion", "codecommit:GetBlob", "codecommit:GetFile", "cloudtrail:LookupEvents",
    "sts:GetSessionToken", "sts:GetFederationToken", "*:Download*",
)
# The AWS provider module of each resource type -> the IAM service prefix it calls.
MODULE_SERVICE = {"backup": "backup", "cloudwatch/logGroup": "logs", "cloudwatch/metricAlarm": "cloudwatch",
                  "ebs": "ec2", "ec2": "ec2", "vpc": "ec2", "iam": "iam", "kms": "kms", "sns": "sns"}


def catalogue() -> dict[str, str]:
    """action (lower case) -> access level, from AWS's service authorization reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # parliament imports pkg_resources
        import parliament
    return {f"{svc['prefix']}:{p['privilege']}".lower(): p["access_level"]
            for svc in parliament.iam_definition for p in svc["privileges"]}


def statements(doc: dict) -> list[dict]:
    st = doc["Statement"]
    return st if isinstance(st, list) else [st]


def actions(statement: dict) -> list[str]:
    a = statement.get("Action", [])
    return [a] if isinstance(a, str) else list(a)


def preview_policy_problems(doc: dict) -> list[str]:
    """Everything that makes a policy more than describe/list/get without data."""
    known = catalogue()
    problems = []
    for st in statements(doc):
        if st.get("Effect") != "Allow" or "NotAction" in st or "NotResource" in st:
            problems.append(f"statement {st.get('Sid')}: only plain Allow statements")
        for action in actions(st):
            service, _, name = action.partition(":")
            if "*" in action or "?" in action:
                problems.append(f"{action}: no wildcards (each action named, each checked)")
                continue
            level = known.get(action.lower())
            if level is None:
                problems.append(f"{action}: not an AWS action")
                continue
            if not re.match(r"^(Describe|List|Get)[A-Z]", name):
                problems.append(f"{action}: not a Describe*/List*/Get* action")
            if level not in ("List", "Read"):
                problems.append(f"{action}: access level {level}, not List or Read")
            if any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in DATA_READS):
                problems.append(f"{action}: reads data")
    return problems


def program_invokes() -> set[str]:
    configs = [prod_config(backup={"copyToRegion": "eu-west-1"}, alarmEmails=["ops@example.com"]),
               minimal_config(database={"enabled": False}, backup={"enabled": False})]
    return {token for cfg in configs for token, _ in run(cfg).invokes}


# ---- the real files --------------------------------------------------------------------

def test_preview_policy_describes_and_lists_only():
    assert preview_policy_problems(json.loads(PREVIEW.read_text())) == []


def test_preview_policy_is_what_the_preview_asks_for():
    invokes = program_invokes()
    unmapped = invokes - set(INVOKE_ACTIONS)
    assert not unmapped, f"map each new invoke to the IAM actions it calls (INVOKE_ACTIONS here): {unmapped}"
    needed = set().union(*(INVOKE_ACTIONS[t] for t in invokes))
    granted = {a for st in statements(json.loads(PREVIEW.read_text())) for a in actions(st)}
    assert granted == needed


def test_deploy_policy_covers_every_service_of_the_program_and_keeps_the_backup_guard():
    from infra.backup import deploy_role_guard_policy

    doc = json.loads(DEPLOY.read_text())
    types = {r.type for cfg in (prod_config(backup={"copyToRegion": "eu-west-1"}, alarmEmails=["ops@example.com"]),)
             for r in run(cfg).resources if r.custom and r.type.startswith("aws:")}
    allowed = [a for st in statements(doc) if st["Effect"] == "Allow" for a in actions(st)]
    for t in types:
        module = t.split(":")[1]
        service = MODULE_SERVICE.get(module.split("/")[0]) or MODULE_SERVICE.get(module)
        assert service, f"map {t}'s module to its IAM service (MODULE_SERVICE here) and grant it in {DEPLOY.name}"
        assert any(a.split(":")[0] == service for a in allowed), (t, service)
    # the SSH window (ci/ssh_window.py) and the lookups
    for needed in ("ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress",
                   "ec2:DescribeSecurityGroupRules", "sts:GetCallerIdentity", "iam:PassRole"):
        assert any(fnmatch.fnmatchcase(needed, a) for a in allowed), needed
    (guard,) = statements(deploy_role_guard_policy())
    assert guard in statements(doc)


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_policies_name_real_actions(path):
    from tests.test_backup_guard import lint

    assert lint(path.read_text()) == []


# ---- the checks catch what they are for ---------------------------------------------------

def test_preview_checks_reject_a_policy_that_reads_data():
    broken = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ec2:Describe*", "s3:GetObject", "ec2:GetConsoleOutput",
                                       "ec2:DescribeInstanceAttribute", "ec2:CreateTags", "ec2:DescribeImagez",
                                       "ssm:GetParameters", "secretsmanager:GetSecretValue", "kms:Decrypt",
                                       "ec2:DescribeImages"], "Resource": "*"},
        {"Effect": "Allow", "NotAction": ["iam:*"], "Resource": "*"},
    ]}
    problems = preview_policy_problems(broken)
    assert problems == [
        "ec2:Describe*: no wildcards (each action named, each checked)",
        "s3:GetObject: reads data",
        "ec2:GetConsoleOutput: reads data",
        "ec2:DescribeInstanceAttribute: reads data",
        "ec2:CreateTags: not a Describe*/List*/Get* action",
        "ec2:CreateTags: access level Tagging, not List or Read",
        "ec2:DescribeImagez: not an AWS action",
        "ssm:GetParameters: reads data",
        "secretsmanager:GetSecretValue: reads data",
        "kms:Decrypt: not a Describe*/List*/Get* action",
        "kms:Decrypt: access level Write, not List or Read",
        "kms:Decrypt: reads data",
        "statement None: only plain Allow statements",
    ]


def test_invoke_check_rejects_a_policy_missing_an_action():
    needed = set().union(*(INVOKE_ACTIONS[t] for t in program_invokes()))
    granted = {a for st in statements(json.loads(PREVIEW.read_text())) for a in actions(st)} - {"ec2:DescribeImages"}
    assert needed - granted == {"ec2:DescribeImages"}
