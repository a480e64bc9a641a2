"""Stack outputs, secrets handling, and config errors stopping the real program early."""
from __future__ import annotations

import json

import pytest

import mockrun
from infra.config import ConfigError
from mockrun import demo_master_key
from tests.stackmocks import minimal_config, prod_config, run, ssh_pair


def test_outputs():
    result = run(minimal_config(workers=3))
    out = result.outputs
    instances = {i.name: i for i in result.of_type("aws:ec2/instance:Instance")}
    bal = instances["balancer-instance"]
    assert out["vpcId"] == result.of_type("aws:ec2/vpc:Vpc")[0].id
    # The balancer's address is its Elastic IP (it stays across stop/start), not the instance's own.
    eip = result.named("balancer-eip")
    assert eip.input("instance") == bal.id and eip.input("domain") == "vpc"
    assert out["balancerPublicIp"] == eip.state["publicIp"] != bal.state["publicIp"]
    assert out["balancerPublicIp"].startswith("203.0.113.")
    workers = [instances[f"worker-{i}-instance"].state["privateIp"] for i in (1, 2, 3)]
    assert out["workerPrivateIps"] == workers
    assert out["databasePrivateIp"] == instances["database-instance"].state["privateIp"]
    ip = out["balancerPublicIp"]
    assert out["sshBalancer"] == f"ssh ubuntu@{ip}"
    assert out["sshWorkers"] == [f"ssh -J ubuntu@{ip} ubuntu@{w}" for w in workers]
    assert out["sshDatabase"] == f"ssh -J ubuntu@{ip} ubuntu@{out['databasePrivateIp']}"
    assert out["backupVaultName"] == result.of_type("aws:backup/vault:Vault")[0].state["name"]
    assert out["introPoints"] == {"perWorker": 6, "total": 18}
    from onion.keys import IdentityKey

    expected = IdentityKey.from_config_string(demo_master_key("news")).hostname
    assert out["sites"] == {"news": {"domain": "example.com", "onionAddress": expected, "onionUrl": f"http://{expected}/",
                                     "https": "off", "originAddress": None}}


def test_only_instance_addresses_and_the_admin_key_are_secret_and_no_output_leaks_a_secret():
    result = run(prod_config())
    # instanceAddresses: operator-only (docs/sites.md); the admin key's private half.
    assert result.secret_outputs == {"instanceAddresses", "adminSshPrivateKey"}
    assert result.outputs["adminSshPrivateKey"] == ssh_pair()[1]
    assert result.outputs["adminSshPublicKey"] == ssh_pair()[0]
    dumped = json.dumps({k: v for k, v in result.outputs.items() if k not in result.secret_outputs})
    secrets = [ssh_pair()[1]] + [demo_master_key(n) for n in ("news", "shop")]
    for secret in secrets:
        body = secret.split(":", 1)[-1].strip().splitlines()[1] if "PRIVATE" in secret else secret.split(":", 1)[1]
        assert body not in dumped
        # Nor in any resource input outside a secret marker.
        for r in result.resources:
            plain = json.dumps(mockrun.redact(r.inputs), default=str)
            assert body not in plain, r.name


def test_secret_config_values_reach_pulumi_as_secrets():
    """`Secret.output()` is how a resource gets a secret value; the mock sees it marked."""
    import pulumi
    import pulumi_aws as aws

    from infra.config import load_config

    def program():
        cfg = load_config()
        aws.ssm.Parameter("k", type="SecureString", value=cfg.sites[0].master_key.output())
        pulumi.export("plain", cfg.sites[0].domain)

    result = mockrun.run_program(minimal_config(), program=program)
    (param,) = result.of_type("aws:ssm/parameter:Parameter")
    assert mockrun.is_secret(param.inputs["value"])
    assert param.input("value") == demo_master_key("news")
    assert result.outputs == {"plain": "example.com"} and result.secret_outputs == set()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"workers": 0}, "onionstack:workers = 0: must be an integer from 1 to 30"),
        ({"adminCidrs": ["0.0.0.0/0"]}, 'onionstack:adminCidrs[0] = "0.0.0.0/0": opens SSH'),
        ({"masterKeys": {}}, "onionstack:masterKeys.news is missing"),
        ({"vpcCidr": "10.0.0.0/8"}, 'onionstack:vpcCidr = "10.0.0.0/8"'),
        ({"natGateways": "many"}, 'onionstack:natGateways = "many"'),
        ({"worker": 2}, "onionstack:worker is not a known key (did you mean workers?)"),
        # As the CLI passes them: strings, JSON for non-string keys, or text that is not JSON.
        ({"workers": "three"}, 'onionstack:workers = "three": must be an integer from 1 to 30'),
        ({"protectData": "yes"}, 'onionstack:protectData = "yes": must be true or false'),
        ({"database": "big"}, 'onionstack:database = "big": must be an object with keys enabled'),
        ({"masterKeys": "ED25519-V3:abc"}, "onionstack:masterKeys = [secret]: must be an object"),
    ],
)
def test_bad_config_stops_the_program_before_any_resource(overrides, message):
    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(**overrides))
    assert str(info.value).startswith(message)
    assert info.value.registered_resources == []


def test_preview_mode_declares_the_same_resources():
    full = run(minimal_config(workers=2))
    preview = mockrun.run_program(minimal_config(workers=2), preview=True)
    assert preview.counts() == full.counts()


def test_fresh_state_per_run():
    a = mockrun.run_program(minimal_config(workers=1))
    b = mockrun.run_program(minimal_config(workers=2))
    assert a.counts()["aws:ec2/instance:Instance"] == 3 and b.counts()["aws:ec2/instance:Instance"] == 4
    assert len(b.of_type("pulumi:pulumi:Stack")) == 1


def test_demo_command_prints_the_prod_tree(capsys):
    assert mockrun.main(["--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "injected throwaway masterKeys" in text and "sshPublicKey" not in text
    # The stack file has no SSH key: the program makes the admin key (a secret output).
    assert "tls:index/privateKey:PrivateKey  admin-ssh-key" in text
    assert "├─ onionstack:nodes:WorkerNode  worker-2" in text or "└─ onionstack:nodes:WorkerNode  worker-2" in text
    assert "worker-3" not in text
    assert "     4  aws:ec2/instance:Instance" in text
    assert "PRIVATE KEY" not in text and "ED25519-V3:" not in text
    assert "[protected, retained on delete]" in text
    # The balancer's Elastic IP, and a pinned host key on every step's connection and proxy.
    assert "aws:ec2/eip:Eip  balancer-eip" in text
    steps = text.split("Remote steps", 1)[1].split("\nOutputs:", 1)[0].splitlines()[1:]
    assert len(steps) == 2 * 2 + 3 + 1 and "NOT PINNED" not in text
    for line in steps:
        assert line.count("[ssh-ed25519 SHA256:") == (2 if "via" in line else 1), line


def test_demo_command_reports_bad_config(capsys):
    assert mockrun.main(["--workers", "31"]) == 2
    assert "invalid config: onionstack:workers = 31: must be an integer from 1 to 30" in capsys.readouterr().err


def test_secret_keys_stored_in_plain_text_stop_the_program():
    """More cases (one site's key plain beside secret ones): tests/test_config_secrets.py."""
    from infra.config import ConfigError

    with pytest.raises(ConfigError) as info:
        mockrun.run_program(minimal_config(), secret_keys=[])
    msg = str(info.value)
    assert msg.startswith("onionstack:masterKeys.news, onionstack:sshPrivateKey are stored in plain text")
    assert "pulumi config set --secret --path 'sshPrivateKey'" in msg
    assert info.value.registered_resources == []
    assert "PRIVATE KEY" not in msg and "ED25519-V3:" not in msg
    mockrun.run_program(minimal_config())  # both marked secret


def test_mock_runs_are_deterministic():
    """Ids and addresses come from names, not registration order: same config, same result."""
    a = mockrun.run_program(prod_config())
    b = mockrun.run_program(prod_config())
    assert a.outputs == b.outputs
    assert mockrun.render_tree(a) == mockrun.render_tree(b)
    ips = a.outputs["workerPrivateIps"] + [a.outputs["databasePrivateIp"], a.outputs["balancerPrivateIp"]]
    assert len(set(ips)) == len(ips)
