"""The vault lock through boto3 against moto's AWS Backup, with the program's own
parameters (infra.backup.lock_request is what the Pulumi component declares).

moto 5 implements PutBackupVaultLockConfiguration and reports the lock in
ListBackupVaults, including that a compliance lock becomes immutable after its grace
period. It does not implement PutBackupVaultAccessPolicy, recovery points or copy jobs:
the deny policy is checked by structure and with parliament (tests/test_backup_guard.py).
"""
from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from infra.backup import lock_request
from infra.config import VaultLock, parse_config
from tests.stackmocks import minimal_config

REGION = "eu-central-1"


@pytest.fixture
def backup():
    with mock_aws():
        client = boto3.client("backup", region_name=REGION)
        client.create_backup_vault(BackupVaultName="onionstack-test")
        yield client


def vault(client) -> dict:
    (v,) = [v for v in client.list_backup_vaults()["BackupVaultList"] if v["BackupVaultName"] == "onionstack-test"]
    return v


@pytest.mark.parametrize("keeps", [{}, {"threeHourlyKeep": 1, "monthlyKeep": 1}, {"dailyKeep": 1000, "monthlyKeep": 1000}])
def test_governance_lock_bounds_are_accepted(backup, keeps):
    cfg = parse_config(minimal_config(backup=keeps)).backup
    request = lock_request("onionstack-test", cfg.lock, cfg.min_retention_days, cfg.max_retention_days)
    assert "ChangeableForDays" not in request
    backup.put_backup_vault_lock_configuration(**request)
    v = vault(backup)
    assert v["Locked"] is True
    assert (v["MinRetentionDays"], v["MaxRetentionDays"]) == (cfg.min_retention_days, cfg.max_retention_days)
    assert "LockDate" not in v  # governance: never immutable
    # Governance can be lifted (by a principal allowed to: the break-glass procedure).
    backup.delete_backup_vault_lock_configuration(BackupVaultName="onionstack-test")
    assert vault(backup)["Locked"] is False


def test_compliance_lock_becomes_immutable_after_its_grace_period(backup, monkeypatch):
    request = lock_request("onionstack-test", VaultLock("compliance", 3), 1, 731)
    assert request["ChangeableForDays"] == 3
    backup.put_backup_vault_lock_configuration(**request)
    v = vault(backup)
    assert v["Locked"] is True and v["LockDate"]
    # Three days later the lock can no longer be changed or removed.
    import moto.backup.models as models

    later = models.unix_time() + 3 * 86400 + 60
    monkeypatch.setattr(models, "unix_time", lambda: later)
    with pytest.raises(backup.exceptions.InvalidRequestException):
        backup.delete_backup_vault_lock_configuration(BackupVaultName="onionstack-test")
    with pytest.raises(backup.exceptions.InvalidRequestException):
        backup.put_backup_vault_lock_configuration(**lock_request("onionstack-test", VaultLock(), 1, 731))
