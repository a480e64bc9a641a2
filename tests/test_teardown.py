"""Teardown: with protectData, `pulumi destroy` can remove everything except what holds
data (the database volumes, the backup vault with its recovery points, its lock and deny
policy, the vault's and the volumes' KMS keys, and the copy vault in a second region with
its own key, lock and policy); with protectData false, everything goes. docs/stack.md
"Teardown"."""
from __future__ import annotations

import pytest

from tests.stackmocks import minimal_config, prod_config, run
from tests.test_bootstrap_graph import three_site_config

DATA = {
    ("aws:ebs/volume:Volume", "database-volumes-data"),
    ("aws:ebs/volume:Volume", "database-volumes-journal"),
    ("aws:ebs/volume:Volume", "database-volumes-log"),
    ("aws:backup/vault:Vault", "backup-vault"),
    ("aws:kms/key:Key", "backup-key"),
    ("aws:backup/vaultLockConfiguration:VaultLockConfiguration", "backup-vault-lock"),
    ("aws:backup/vaultPolicy:VaultPolicy", "backup-vault-policy"),
    ("aws:kms/key:Key", "ebs-key"),
}
COPY = {
    ("aws:kms/key:Key", "backup-copy-key"),
    ("aws:backup/vault:Vault", "backup-copy-vault"),
    ("aws:backup/vaultLockConfiguration:VaultLockConfiguration", "backup-copy-vault-lock"),
    ("aws:backup/vaultPolicy:VaultPolicy", "backup-copy-vault-policy"),
}
CONFIGS = {"prod": prod_config, "three-sites": three_site_config, "minimal": minimal_config}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_protect_data_keeps_exactly_the_data(name):
    result = run(CONFIGS[name]())
    protected = {(r.type, r.name) for r in result.resources if r.protect}
    retained = {(r.type, r.name) for r in result.resources if r.retain_on_delete}
    assert protected == DATA and retained == DATA
    kept = result.outputs["keptOnDestroy"]
    assert sorted(kept["databaseVolumes"]) == sorted(r.id for r in result.of_type("aws:ebs/volume:Volume"))
    assert kept["backupVault"] == result.named("backup-vault").state["name"]
    assert kept["backupKmsKey"] == result.named("backup-key").state["arn"]
    assert kept["ebsKmsKey"] == result.named("ebs-key").state["arn"]
    assert "backupCopy" not in kept


def test_copy_region_keeps_its_vault_key_lock_and_policy():
    result = run(prod_config(backup={"copyToRegion": "eu-west-1"}))
    protected = {(r.type, r.name) for r in result.resources if r.protect}
    retained = {(r.type, r.name) for r in result.resources if r.retain_on_delete}
    assert protected == DATA | COPY and retained == DATA | COPY
    assert result.outputs["keptOnDestroy"]["backupCopy"] == {
        "region": "eu-west-1",
        "vault": result.named("backup-copy-vault").state["name"],
        "kmsKey": result.named("backup-copy-key").state["arn"],
    }
    kept = {r.urn for r in result.resources if r.protect}
    for r in result.resources:
        if r.protect:
            assert set(r.dependencies) <= kept, r.name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_without_protect_data_nothing_is_kept(name):
    cfg = CONFIGS[name]()
    key = "onionstack:protectData" if "onionstack:sites" in cfg else "protectData"
    cfg[key] = False
    result = run(cfg)
    assert {r.name for r in result.resources if r.protect or r.retain_on_delete} == set()
    assert result.outputs["keptOnDestroy"] == {}


def test_kept_resources_depend_only_on_kept_resources():
    """`pulumi destroy --exclude-protected` deletes everything else first; a kept resource
    depending on a deleted one would block it (the vault needs its key: both kept)."""
    result = run(prod_config())
    kept = {r.urn for r in result.resources if r.protect}
    for r in result.resources:
        if r.protect:
            assert set(r.dependencies) <= kept, r.name


def test_no_step_blocks_a_destroy():
    """The only delete commands are the drains, and a drain whose worker is still in the
    balancer config (a whole-stack destroy) goes on at once (tests/test_bootstrap_scripts.py);
    every other step has no delete to run against a machine that is going away."""
    result = run(prod_config())
    deletes = {r.name for r in result.of_type("command:remote:Command") if r.input("delete")}
    assert deletes == {f"worker-{i}-drain" for i in (1, 2, 3)}
    assert not any(r.protect for r in result.of_type("command:remote:Command"))
    # The generated database password is not kept: a restored volume gets the next
    # password from the next stack's database step (ALTER ROLE).
    assert not result.named("database-password").protect
