"""Backups an attacker with the deploy role cannot delete (docs/stack.md "Backups an
attacker cannot delete"): Vault Lock, the vault's deny policy, a copy in a second region
with its own key, lock and policy, and a customer-managed key with an explicit policy on
every EBS volume (EBS recovery points keep their volume's key).

The real program under mocks; the policy documents are also linted with parliament's IAM
catalogue (an action or condition key misspelt in a Deny silently denies nothing)."""
from __future__ import annotations

import json

import pytest

import mockrun
from infra.backup import DEPLOY_ROLE_DENIED_ACTIONS, deploy_role_guard_policy, vault_access_policy
from infra.config import ConfigError
from tests.stackmocks import minimal_config, prod_config, provider_region, run

LOCK = "aws:backup/vaultLockConfiguration:VaultLockConfiguration"
POLICY = "aws:backup/vaultPolicy:VaultPolicy"
VAULT = "aws:backup/vault:Vault"
KEY = "aws:kms/key:Key"
VOLUME = "aws:ebs/volume:Volume"
INSTANCE = "aws:ec2/instance:Instance"
# The actions AWS Config's managed rule backup-recovery-point-manual-deletion-disabled
# requires in one Deny statement with a wildcard principal and resource.
CONFIG_RULE_ACTIONS = {"backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle",
                       "backup:PutBackupVaultAccessPolicy"}


def statements(doc) -> dict:
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert doc["Version"] == "2012-10-17"
    return {s["Sid"]: s for s in doc["Statement"]}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- vault lock
def test_vault_lock_governance_by_default_bounded_by_the_rules():
    result = run(minimal_config())
    (vault,) = result.of_type(VAULT)
    (lock,) = result.of_type(LOCK)
    assert lock.input("backupVaultName") == vault.state["name"]
    (plan,) = result.of_type("aws:backup/plan:Plan")
    days = [int(r["lifecycle"]["deleteAfter"]) for r in plan.input("rules")]
    assert (int(lock.input("minRetentionDays")), int(lock.input("maxRetentionDays"))) == (min(days), max(days)) == (1, 731)
    assert lock.input("changeableForDays") is None  # governance: never becomes immutable
    # No copy unless backup.copyToRegion names a region.
    assert all(not r.get("copyActions") for r in plan.input("rules"))
    assert len(result.of_type(VAULT)) == 1 and not result.of_type("pulumi:providers:aws")


def test_vault_lock_bounds_follow_the_keep_counts():
    result = run(minimal_config(backup={"threeHourlyKeep": 16, "monthlyKeep": 3}))
    (lock,) = result.of_type(LOCK)
    # three-hourly: 16 x 3 h = 2 days; daily 6; weekly 28; monthly: 3 months = 92 days at most
    assert (int(lock.input("minRetentionDays")), int(lock.input("maxRetentionDays"))) == (2, 92)


def test_compliance_mode_needs_the_exact_confirmation():
    result = run(minimal_config(backup={"lockMode": "compliance", "lockChangeableForDays": 7,
                                        "lockConfirm": "irreversible after 7 days"}))
    (lock,) = result.of_type(LOCK)
    assert int(lock.input("changeableForDays")) == 7
    for confirm in ("", "irreversible after 3 days", "yes", "IRREVERSIBLE AFTER 7 DAYS"):
        with pytest.raises(ConfigError) as info:
            mockrun.run_program(minimal_config(backup={"lockMode": "compliance", "lockChangeableForDays": 7,
                                                       "lockConfirm": confirm}))
        message = str(info.value)
        assert message.startswith("onionstack:backup.lockConfirm = ")
        assert "not even the account's root user" in message and "'irreversible after 7 days'" in message
        assert info.value.registered_resources == []


@pytest.mark.parametrize("backup,message", [
    ({"lockMode": "Compliance"}, 'onionstack:backup.lockMode = "Compliance": must be "governance"'),
    ({"lockChangeableForDays": 2}, "onionstack:backup.lockChangeableForDays = 2: must be an integer from 3 to 36500"),
    ({"lockConfirm": "irreversible after 3 days"}, 'onionstack:backup.lockConfirm = "irreversible after 3 days": only confirms lockMode "compliance"'),
    ({"copyToRegion": "Frankfurt"}, 'onionstack:backup.copyToRegion = "Frankfurt": must be an AWS region name'),
])
def test_bad_guard_config_stops_the_program(backup, message):
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(backup=backup))
    assert str(info.value).startswith(message)
    assert info.value.registered_resources == []


# ---------------------------------------------------------------- vault access policy
def _assert_deny_policy(policy_text):
    (deny,) = statements(policy_text).values()
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and deny["Resource"] == "*"
    assert "Condition" not in deny  # applies to every principal, the account's root included
    assert set(as_list(deny["Action"])) >= CONFIG_RULE_ACTIONS


def test_vault_policy_denies_deleting_and_expiring_recovery_points_to_everyone():
    result = run(minimal_config())
    (vault,) = result.of_type(VAULT)
    (policy,) = result.of_type(POLICY)
    assert policy.input("backupVaultName") == vault.state["name"]
    _assert_deny_policy(policy.input("policy"))


def test_deploy_role_guard_keeps_the_break_glass_actions_from_the_deploy_role():
    (guard,) = statements(deploy_role_guard_policy()).values()
    assert guard["Effect"] == "Deny" and guard["Resource"] == "*" and "Condition" not in guard
    assert set(guard["Action"]) == set(DEPLOY_ROLE_DENIED_ACTIONS) == {
        "backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle",
        "backup:DeleteBackupVaultAccessPolicy", "backup:DeleteBackupVaultLockConfiguration",
    }
    # What `pulumi up` calls for the guards must stay possible for the deploy role.
    assert not {"backup:PutBackupVaultLockConfiguration", "backup:CreateBackupVault",
                "kms:CreateKey", "kms:PutKeyPolicy"} & set(guard["Action"])


def test_the_guard_policy_in_the_docs_is_the_one_in_the_code():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "stack.md").read_text()
    marker = "<!-- deploy-role-guard -->"
    block = text.split(marker, 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == deploy_role_guard_policy()


# ---------------------------------------------------------------- copy to a second region
def test_copy_to_a_second_region_with_its_own_key_vault_lock_and_policy():
    result = run(prod_config(backup={"copyToRegion": "eu-west-1"}))
    vault, copy_vault = result.named("backup-vault"), result.named("backup-copy-vault")
    copy_key = result.named("backup-copy-key")
    assert provider_region(result, vault) is None  # the stack's region (eu-central-1)
    for name in ("backup-copy-key", "backup-copy-key-alias", "backup-copy-vault",
                 "backup-copy-vault-lock", "backup-copy-vault-policy"):
        assert provider_region(result, result.named(name)) == "eu-west-1", name
    assert copy_vault.input("kmsKeyArn") == copy_key.state["arn"]
    assert copy_key.input("enableKeyRotation") is True
    assert statements(copy_key.input("policy"))["UseThroughAwsBackupInThisAccount"]["Condition"]["StringEquals"][
        "kms:ViaService"] == "backup.eu-west-1.amazonaws.com"
    copy_lock = result.named("backup-copy-vault-lock")
    assert copy_lock.input("backupVaultName") == copy_vault.state["name"]
    assert (int(copy_lock.input("minRetentionDays")), int(copy_lock.input("maxRetentionDays"))) == (1, 731)
    copy_policy = result.named("backup-copy-vault-policy")
    assert copy_policy.input("backupVaultName") == copy_vault.state["name"]
    _assert_deny_policy(copy_policy.input("policy"))
    (plan,) = result.of_type("aws:backup/plan:Plan")
    for rule in plan.input("rules"):
        (action,) = rule["copyActions"]
        assert action["destinationVaultArn"] == copy_vault.state["arn"]
        assert action["lifecycle"]["deleteAfter"] == rule["lifecycle"]["deleteAfter"]
    # EBS in the copy region may use the volumes' key to read the snapshots it copies.
    via = statements(result.named("ebs-key").input("policy"))["UseThroughEbsInThisAccount"]["Condition"]["StringEquals"]
    assert via["kms:ViaService"] == ["ec2.eu-central-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com"]


def test_copy_to_the_stacks_own_region_is_refused():
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(prod_config(backup={"copyToRegion": "eu-central-1"}))
    assert str(info.value).startswith('onionstack:backup.copyToRegion = "eu-central-1": is the stack\'s own region')
    assert info.value.registered_resources == []


# ---------------------------------------------------------------- the EBS key
@pytest.mark.parametrize("protect", [True, False])
def test_every_volume_data_and_root_is_under_the_stacks_key(protect):
    result = run(prod_config(protectData=protect))
    key = result.named("ebs-key")
    assert key.input("enableKeyRotation") is True and int(key.input("deletionWindowInDays")) == 30
    volumes, instances = result.of_type(VOLUME), result.of_type(INSTANCE)
    assert len(volumes) == 3 and len(instances) == 5
    for v in volumes:
        assert v.input("encrypted") is True and v.input("kmsKeyId") == key.state["arn"], v.name
    for i in instances:
        root = i.input("rootBlockDevice")
        assert root["encrypted"] is True and root["kmsKeyId"] == key.state["arn"], i.name
    policy = statements(key.input("policy"))
    assert policy["EnableIamPolicies"]["Principal"] == {"AWS": "arn:aws:iam::000000000000:root"}
    use = policy["UseThroughEbsInThisAccount"]
    assert use["Effect"] == "Allow" and use["Principal"] == {"AWS": "*"}
    assert use["Condition"]["StringEquals"] == {"kms:CallerAccount": "000000000000",
                                                "kms:ViaService": ["ec2.eu-central-1.amazonaws.com"]}
    assert "kms:CreateGrant" in use["Action"] and "kms:Decrypt" in use["Action"]
    if protect:
        deny = policy["DenyKeyDestruction"]
        assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and "Condition" not in deny
        assert set(deny["Action"]) == {"kms:ScheduleKeyDeletion", "kms:DisableKey"}
    else:
        assert "DenyKeyDestruction" not in policy  # protectData false: `pulumi destroy` deletes it


def test_backup_vault_key_has_an_explicit_policy_too():
    result = run(minimal_config())
    policy = statements(result.named("backup-key").input("policy"))
    assert set(policy) == {"EnableIamPolicies", "UseThroughAwsBackupInThisAccount", "DenyKeyDestruction"}
    assert policy["UseThroughAwsBackupInThisAccount"]["Condition"]["StringEquals"]["kms:ViaService"] == \
        "backup.us-east-1.amazonaws.com"


# ---------------------------------------------------------------- lint every policy document
SERIOUS = {"EXCEPTION", "MALFORMED_JSON", "MALFORMED", "DUPLICATE_SID", "UNKNOWN_PRINCIPAL", "UNKNOWN_ACTION",
           "UNKNOWN_PREFIX", "INVALID_SID", "INVALID_ARN", "NO_VERSION", "INVALID_VERSION", "OLD_VERSION",
           "RESOURCE_MISMATCH", "UNKNOWN_OPERATOR", "UNKNOWN_CONDITION_FOR_ACTION"}


def lint(document) -> list[tuple[str, str]]:
    from parliament import analyze_policy_string

    text = document if isinstance(document, str) else json.dumps(document)
    findings = analyze_policy_string(text, include_community_auditors=False).findings
    # AWS's documented CloudWatch Logs key policy puts kms:Describe* under the encryption
    # context condition; the catalogue lists no such context for the Describe actions.
    return [(f.issue, str(f.detail)) for f in findings if f.issue in SERIOUS
            and not (f.issue == "UNKNOWN_CONDITION_FOR_ACTION" and "for action kms:Describe" in str(f.detail))]


def test_lint_catches_a_misspelt_action():
    bad = vault_access_policy()
    bad["Statement"][0]["Action"][0] = "backup:DeleteRecoveryPoints"
    assert lint(bad) and lint(bad)[0][0] == "UNKNOWN_ACTION"


def test_every_policy_document_names_real_actions_and_condition_keys():
    result = run(prod_config(backup={"copyToRegion": "eu-west-1"}, alarmEmails=["ops@example.com"]))
    documents = {"deploy role guard": deploy_role_guard_policy()}
    for r in result.resources:
        # (Trust policies are not linted: parliament reads every policy as an identity or
        # resource policy and wants a Resource.)
        value = r.input("policy")
        if isinstance(value, str) and value.startswith("{"):
            documents[f"{r.name}.policy"] = value
    assert {"ebs-key.policy", "backup-key.policy", "backup-copy-key.policy", "backup-vault-policy.policy",
            "backup-copy-vault-policy.policy"} <= set(documents)
    for name, doc in documents.items():
        assert lint(doc) == [], name
