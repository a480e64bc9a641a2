"""The admin SSH key: the config's pair (sshPublicKey + sshPrivateKey), or, with neither, one
the stack makes (pulumi-tls ED25519, a secret in the state) and hands the operator as the
secret stack output adminSshPrivateKey. Under mocks the made key is a real ED25519 key
derived from the resource name (mockrun.mock_host_key)."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

import mockrun
from infra.config import ConfigError
from tests.stackmocks import minimal_config, run, ssh_pair

KEY = "tls:index/privateKey:PrivateKey"
COMMANDS = ("command:remote:Command", "command:remote:CopyToRemote")


def without_ssh_keys(**overrides):
    cfg = minimal_config(**overrides)
    del cfg["sshPublicKey"], cfg["sshPrivateKey"]
    return cfg


@pytest.fixture(scope="module")
def generated():
    return run(without_ssh_keys())


def test_without_ssh_keys_the_stack_makes_an_ed25519_admin_key(generated):
    result = generated
    key = result.named("admin-ssh-key")
    assert key.type == KEY and key.input("algorithm") == "ED25519"
    assert result.by_urn(key.parent).type == "onionstack:site:OnionSite"
    assert {"privateKeyOpenssh", "privateKeyPem"} <= set(key.additional_secret_outputs)
    private, public = key.state["privateKeyOpenssh"], key.state["publicKeyOpenssh"]
    # A working pair: the private half's public key is the public half.
    loaded = serialization.load_ssh_private_key(private.encode(), password=None)
    assert loaded.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode() == public.strip()

    # Every instance trusts it (the one EC2 key pair), every remote step logs in with it.
    (pair,) = result.of_type("aws:ec2/keyPair:KeyPair")
    assert pair.input("publicKey") == public.strip()
    steps = [r for r in result.resources if r.type in COMMANDS]
    assert len(steps) >= 5
    for step in steps:
        assert mockrun.is_secret(step.inputs["connection"]), step.name
        conn = step.input("connection")
        assert conn["privateKey"] == private, step.name
        if "proxy" in conn:
            assert conn["proxy"]["privateKey"] == private, step.name

    # The operator gets it as a secret output, and only there.
    assert "adminSshPrivateKey" in result.secret_outputs
    assert result.outputs["adminSshPrivateKey"] == private
    assert result.outputs["adminSshPublicKey"] == public.strip()
    assert "adminSshPublicKey" not in result.secret_outputs


def test_with_ssh_keys_the_configs_pair_is_used_and_nothing_is_made():
    result = run(minimal_config())
    public, private = ssh_pair()
    assert [r for r in result.of_type(KEY) if r.name == "admin-ssh-key"] == []
    (pair,) = result.of_type("aws:ec2/keyPair:KeyPair")
    assert pair.input("publicKey") == public
    assert result.named("balancer-core").input("connection")["privateKey"] == private
    assert result.outputs["adminSshPrivateKey"] == private and "adminSshPrivateKey" in result.secret_outputs


@pytest.mark.parametrize("given", ["sshPublicKey", "sshPrivateKey"])
def test_one_key_without_the_other_stops_the_program_before_any_resource(given):
    public, private = ssh_pair()
    cfg = {**without_ssh_keys(), given: public if given == "sshPublicKey" else private}
    missing = "sshPrivateKey" if given == "sshPublicKey" else "sshPublicKey"
    with pytest.raises(ConfigError, match=rf"^onionstack:{missing} is missing: {given} is set, and the two go "
                                          r"together") as err:
        mockrun.run_program(cfg)
    assert "PRIVATE KEY" not in str(err.value)
