"""Database volumes, protectData, and the AWS Backup vault, plan, selection and role."""
from __future__ import annotations

import json

import pytest

from tests.stackmocks import minimal_config, prod_config, run

VOLUME = "aws:ebs/volume:Volume"
ATTACH = "aws:ec2/volumeAttachment:VolumeAttachment"
DATA_TYPES = {VOLUME, "aws:kms/key:Key", "aws:backup/vault:Vault",
              "aws:backup/vaultLockConfiguration:VaultLockConfiguration", "aws:backup/vaultPolicy:VaultPolicy"}


def db_instance(result):
    (inst,) = [i for i in result.of_type("aws:ec2/instance:Instance") if i.input("tags")["role"] == "database"]
    return inst


def test_database_volumes_encrypted_sized_attached_tagged():
    result = run(minimal_config(database={"dataGb": 50, "journalGb": 8, "logGb": 6}))
    inst = db_instance(result)
    zone = result.by_id(inst.input("subnetId")).input("availabilityZone")
    volumes = {v.input("tags")["purpose"]: v for v in result.of_type(VOLUME)}
    assert {p: int(v.input("size")) for p, v in volumes.items()} == {"data": 50, "journal": 8, "log": 6}
    for v in volumes.values():
        assert v.input("encrypted") is True and v.input("type") == "gp3"
        assert v.input("availabilityZone") == zone  # same AZ as the instance, or it cannot attach
        assert v.input("tags")["backup"] == "onionstack-prod"
        assert v.input("tags")["role"] == "database"
    attachments = result.of_type(ATTACH)
    assert {(a.input("volumeId"), a.input("instanceId")) for a in attachments} == {(v.id, inst.id) for v in volumes.values()}
    assert sorted(a.input("deviceName") for a in attachments) == ["/dev/sdf", "/dev/sdg", "/dev/sdh"]


@pytest.mark.parametrize("protect", [True, False])
def test_protect_data_is_honoured(protect):
    result = run(minimal_config(protectData=protect))
    protected = {r.name for r in result.resources if r.protect}
    retained = {r.name for r in result.resources if r.retain_on_delete}
    data = {r.name for r in result.resources if r.type in DATA_TYPES and r.name not in ("flow-logs-key", "alarms-key")}
    assert len(data) == 8  # 3 volumes, the EBS key, the vault key, the vault, its lock and policy
    if protect:
        assert protected == data and retained == data
    else:
        assert protected == set() and retained == set()


def test_volumes_depend_only_on_their_zone_name_and_key():
    # So `pulumi destroy --exclude-protected` can remove the network around them.
    result = run(minimal_config())
    key = result.named("ebs-key")
    for v in result.of_type(VOLUME):
        assert v.dependencies == (key.urn,), v.name


def test_database_disabled():
    result = run(minimal_config(database={"enabled": False}))
    assert not result.of_type(VOLUME) and not result.of_type(ATTACH)
    assert not result.of_type("onionstack:nodes:DatabaseNode")
    assert "databasePrivateIp" not in result.outputs and "sshDatabase" not in result.outputs


# ---------------------------------------------------------------- backup
def test_backup_plan_rules_and_retention():
    result = run(minimal_config())
    (plan,) = result.of_type("aws:backup/plan:Plan")
    (vault,) = result.of_type("aws:backup/vault:Vault")
    rules = {r["ruleName"]: r for r in plan.input("rules")}
    assert {n: r["schedule"] for n, r in rules.items()} == {
        "three-hourly": "cron(0 0/3 * * ? *)",
        "daily": "cron(30 1 * * ? *)",
        "weekly": "cron(30 4 ? * SUN *)",
        "monthly": "cron(30 7 1 * ? *)",
    }
    assert {n: int(r["lifecycle"]["deleteAfter"]) for n, r in rules.items()} == {
        "three-hourly": 1, "daily": 6, "weekly": 28, "monthly": 731,
    }
    assert {r["targetVaultName"] for r in rules.values()} == {vault.state["name"]}
    assert all(r["scheduleExpressionTimezone"] == "Etc/UTC" for r in rules.values())


def test_backup_keep_counts_come_from_config():
    result = run(minimal_config(backup={"threeHourlyKeep": 9, "weeklyKeep": 8}))
    (plan,) = result.of_type("aws:backup/plan:Plan")
    days = {r["ruleName"]: int(r["lifecycle"]["deleteAfter"]) for r in plan.input("rules")}
    assert days == {"three-hourly": 2, "daily": 6, "weekly": 56, "monthly": 731}


def test_backup_selection_vault_key_and_role():
    result = run(minimal_config())
    (plan,) = result.of_type("aws:backup/plan:Plan")
    (selection,) = result.of_type("aws:backup/selection:Selection")
    (vault,) = result.of_type("aws:backup/vault:Vault")
    key = result.named("backup-key")
    role = result.named("backup-role")
    assert selection.input("planId") == plan.id and selection.input("iamRoleArn") == role.state["arn"]
    assert selection.input("selectionTags") == [{"type": "STRINGEQUALS", "key": "backup", "value": "onionstack-prod"}]
    assert not selection.input("resources")  # by tag only
    # The selection matches exactly the volumes' backup tag.
    assert {v.input("tags")["backup"] for v in result.of_type(VOLUME)} == {"onionstack-prod"}
    assert vault.input("kmsKeyArn") == key.state["arn"] and key.input("enableKeyRotation") is True
    policy = json.loads(role.input("assumeRolePolicy"))
    (stmt,) = policy["Statement"]
    assert stmt["Principal"] == {"Service": "backup.amazonaws.com"} and stmt["Action"] == "sts:AssumeRole"
    attached = {a.input("policyArn") for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.name.startswith("backup-")}
    assert attached == {
        "arn:aws:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup",
        "arn:aws:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForRestores",
    }
    assert all(a.input("role") == role.state["name"]
               for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if a.name.startswith("backup-"))


def test_backup_tag_is_stack_scoped():
    result = run(minimal_config(), stack="staging")
    (selection,) = result.of_type("aws:backup/selection:Selection")
    assert selection.input("selectionTags")[0]["value"] == "onionstack-staging"
    assert {v.input("tags")["backup"] for v in result.of_type(VOLUME)} == {"onionstack-staging"}


def test_backup_disabled():
    result = run(minimal_config(backup={"enabled": False}))
    assert not [r for r in result.resources if r.type.startswith("aws:backup")]
    assert not [r for r in result.resources if r.type.startswith(("aws:iam", "aws:kms")) and "backup" in r.name]
    assert "ebs-key" in {r.name for r in result.of_type("aws:kms/key:Key")}  # volumes stay encrypted
    assert all("backup" not in v.input("tags") for v in result.of_type(VOLUME))
    assert "backupVaultName" not in result.outputs


def test_prod_stack_backup_and_volumes():
    result = run(prod_config())
    assert sorted(int(v.input("size")) for v in result.of_type(VOLUME)) == [8, 8, 50]
    assert all(v.protect for v in result.of_type(VOLUME))
