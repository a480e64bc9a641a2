"""Secrets stay encrypted: a master key or the SSH private key set without `--secret`
stops the program before any resource is declared, with one line naming the key and the
command that encrypts it in place.

Pulumi hands a program only top-level secretness (a key is "secret" when any part of it
is), so a site's key set plain beside secret siblings is found in the stack settings file
as stored, where each encrypted value is `{secure: ...}`. The mocked program runs with a
stack file written the way the Pulumi CLI writes it.
"""
from __future__ import annotations

import textwrap

import pytest

import mockrun
from infra.config import ConfigError, plain_secret_paths, read_stack_file
from mockrun import demo_master_key
from tests.stackmocks import minimal_config

CIPHER = "v1:bm90LXJlYWxseS1lbmNyeXB0ZWQ=:c2VjcmV0"   # the shape of an encrypted value


def two_sites(**overrides):
    return minimal_config(
        sites=[{"name": "news", "domain": "example.com"}, {"name": "shop", "domain": "example.org"}],
        masterKeys={"news": demo_master_key("news"), "shop": demo_master_key("shop")},
        **overrides,
    )


def refusal(config, *, secret_keys, stack="prod") -> tuple[str, list]:
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(config, stack=stack, secret_keys=secret_keys)
    return str(info.value), info.value.registered_resources


def fix(path: str) -> str:
    return f"`pulumi config get --path '{path}' | pulumi config set --secret --path '{path}'`"


def test_plain_ssh_private_key_stops_the_program():
    msg, declared = refusal(minimal_config(), secret_keys=["onionstack:masterKeys"])
    assert msg == (
        "onionstack:sshPrivateKey is stored in plain text in the stack config (Pulumi.prod.yaml); "
        f"secrets must be encrypted: {fix('sshPrivateKey')} (a key whose plain text was ever "
        "committed or shared has leaked: replace it)"
    )
    assert declared == [] and "\n" not in msg
    assert "PRIVATE KEY" not in msg and "ED25519-V3:" not in msg


def test_plain_master_keys_name_every_site():
    msg, declared = refusal(two_sites(), secret_keys=["onionstack:sshPrivateKey"])
    assert msg.startswith("onionstack:masterKeys.news, onionstack:masterKeys.shop are stored in plain text")
    assert f"{fix('masterKeys.news')}; {fix('masterKeys.shop')}" in msg
    assert declared == [] and "ED25519-V3:" not in msg


def test_one_plain_site_key_beside_secret_siblings(tmp_path, monkeypatch):
    """Pulumi marks `masterKeys` secret as soon as one site's key is: only the stack file
    shows that `shop` was set without --secret."""
    (tmp_path / "Pulumi.mixed.yaml").write_text(textwrap.dedent(f"""\
        config:
          aws:region: eu-central-1
          onionstack:masterKeys:
            news:
              secure: {CIPHER}
            shop: {demo_master_key("shop")}
          onionstack:sshPrivateKey:
            secure: {CIPHER}
        """))
    monkeypatch.chdir(tmp_path)
    msg, declared = refusal(two_sites(), stack="mixed",
                            secret_keys=["onionstack:masterKeys", "onionstack:sshPrivateKey"])
    assert msg.startswith("onionstack:masterKeys.shop is stored in plain text in the stack config "
                          "(Pulumi.mixed.yaml); secrets must be encrypted: " + fix("masterKeys.shop"))
    assert "masterKeys.news" not in msg and declared == []
    assert "ED25519-V3:" not in msg


def test_every_key_encrypted_runs(tmp_path, monkeypatch):
    (tmp_path / "Pulumi.sealed.yaml").write_text(textwrap.dedent(f"""\
        config:
          onionstack:masterKeys:
            news:
              secure: {CIPHER}
            shop:
              secure: {CIPHER}
          onionstack:sshPrivateKey:
            secure: {CIPHER}
        """))
    monkeypatch.chdir(tmp_path)
    result = mockrun.run_program(two_sites(), stack="sealed")
    assert result.counts()["aws:ec2/instance:Instance"] >= 3


def test_paths_from_the_stored_file():
    secret = {"masterKeys", "sshPrivateKey"}.__contains__
    raw = {"masterKeys": {"news": "k", "shop": "k", "blog": "k"}, "sshPrivateKey": "k"}
    # the whole object set as one secret value, a missing file, per-site values
    assert plain_secret_paths(raw, secret, {"onionstack:masterKeys": {"secure": CIPHER}}) == []
    assert plain_secret_paths(raw, secret, None) == []
    stored = {"onionstack:masterKeys": {"news": {"secure": CIPHER}, "shop": "k", "blog": "k"},
              "onionstack:sshPrivateKey": {"secure": CIPHER}}
    assert plain_secret_paths(raw, secret, stored) == ["masterKeys.blog", "masterKeys.shop"]
    # top-level plain: every site named, whatever the file says
    assert plain_secret_paths(raw, {"sshPrivateKey"}.__contains__, None) == [
        "masterKeys.blog", "masterKeys.news", "masterKeys.shop"]
    # keys that are not secrets are not looked at
    assert plain_secret_paths({"workers": 3}, lambda k: False, None) == []


def test_stack_file_found_through_stack_config_dir(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: onionstack\nstackConfigDir: stacks\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text("config:\n  onionstack:workers: 3\n")
    assert read_stack_file("prod", str(tmp_path)) == ("Pulumi.prod.yaml", {"onionstack:workers": 3})
    assert read_stack_file("other", str(tmp_path)) == ("Pulumi.other.yaml", None)
