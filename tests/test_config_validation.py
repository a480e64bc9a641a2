"""One test per class of bad config: each error names the key, the bad value and the fix.

These run `parse_config` directly (no Pulumi runtime). tests/test_stack_outputs.py checks
that the same errors stop the real program before any resource is declared.
"""
from __future__ import annotations

import base64
import copy

import pytest

from infra.config import ConfigError, parse_config, retention_days
from mockrun import demo_master_key, demo_ssh_key_pair
from tests.stackmocks import minimal_config


def error_of(**overrides) -> str:
    cfg = minimal_config(**overrides)
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    return str(info.value)


def test_minimal_config_parses_with_defaults():
    cfg = parse_config(minimal_config())
    assert cfg.workers == 2 and cfg.tor_daemons_per_worker == 2 and cfg.intro_points_per_daemon == 3
    assert cfg.availability_zones == 2 and cfg.vpc_cidr == "10.42.0.0/16"
    assert cfg.instance_types.balancer == "t3.micro"
    assert cfg.database.enabled and (cfg.database.data_gb, cfg.database.journal_gb, cfg.database.log_gb) == (20, 4, 4)
    assert cfg.backup.enabled and [r.keep for r in cfg.backup.rules] == [7, 6, 4, 24]
    assert cfg.protect_data is True and cfg.nat_gateways == "one" and cfg.balancer.publish is True
    site = cfg.sites[0]
    assert site.name == "news" and site.domain == "example.com"
    assert site.onion_address.endswith(".onion") and len(site.onion_address) == 62
    assert site.master_key.reveal() == demo_master_key("news")
    assert "ED25519" not in repr(cfg) and "PRIVATE KEY" not in repr(cfg)


@pytest.mark.parametrize(
    "key,value,accepted",
    [
        ("workers", 0, "onionstack:workers = 0: must be an integer from 1 to 30"),
        ("workers", 31, "onionstack:workers = 31: must be an integer from 1 to 30"),
        ("workers", "three", 'onionstack:workers = "three": must be an integer from 1 to 30'),
        ("workers", True, "onionstack:workers = true: must be an integer from 1 to 30"),
        ("torDaemonsPerWorker", 9, "onionstack:torDaemonsPerWorker = 9: must be an integer from 1 to 8"),
        ("introPointsPerDaemon", 21, "onionstack:introPointsPerDaemon = 21: must be an integer from 1 to 20"),
        ("introPointsPerDaemon", 2.5, "onionstack:introPointsPerDaemon = 2.5: must be an integer from 1 to 20"),
        ("availabilityZones", 7, "onionstack:availabilityZones = 7: must be an integer from 1 to 6"),
        ("protectData", "yes", 'onionstack:protectData = "yes": must be true or false'),
        ("natGateways", "two", 'onionstack:natGateways = "two": must be "one"'),
    ],
)
def test_scalar_errors(key, value, accepted):
    assert error_of(**{key: value}).startswith(accepted)


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("10.42.0.0/8", "/16 to /22"),
        ("10.42.0.0/24", "/16 to /22"),
        ("8.8.0.0/16", "private (RFC 1918)"),
        ("fd00::/48", "IPv4"),
        ("not-a-cidr", "e.g. 10.42.0.0/16"),
    ],
)
def test_vpc_cidr(value, fragment):
    msg = error_of(vpcCidr=value)
    assert msg.startswith(f'onionstack:vpcCidr = "{value}": ') and fragment in msg


def test_vpc_cidr_with_host_bits_suggests_the_network():
    assert error_of(vpcCidr="10.42.1.0/16") == (
        'onionstack:vpcCidr = "10.42.1.0/16": has host bits set; did you mean 10.42.0.0/16?'
    )


def test_admin_cidrs_missing():
    cfg = minimal_config()
    del cfg["adminCidrs"]
    with pytest.raises(ConfigError, match=r"^onionstack:adminCidrs is missing: .*pulumi config set --path 'adminCidrs\[0\]'"):
        parse_config(cfg)


@pytest.mark.parametrize("world", ["0.0.0.0/0", "::/0"])
def test_admin_cidrs_refuse_the_world(world):
    msg = error_of(adminCidrs=["198.51.100.7/32", world])
    assert msg.startswith(f'onionstack:adminCidrs[1] = "{world}": opens SSH to the whole internet')


@pytest.mark.parametrize("value,fragment", [([], "non-empty list"), (" , ", "non-empty list"),
                                            (["198.51.100.7/24"], "host bits"), (["bogus"], "198.51.100.7/32")])
def test_admin_cidrs_shape(value, fragment):
    msg = error_of(adminCidrs=value)
    assert msg.startswith("onionstack:adminCidrs") and fragment in msg


@pytest.mark.parametrize("cidrs,named,count,widest", [
    # the whole internet in two halves: each half passes the /0 check on its own
    (["0.0.0.0/1", "128.0.0.0/1"], "adminCidrs[0] 0.0.0.0/1, adminCidrs[1] 128.0.0.0/1", "2^32", "/16 (2^16)"),
    (["198.51.100.7/32", "10.0.0.0/8"], "adminCidrs[0] 198.51.100.7/32, adminCidrs[1] 10.0.0.0/8",
     "16777217", "/16 (2^16)"),
    # one address more than a /16, overlaps counted once
    (["10.0.0.0/16", "10.0.0.0/24", "10.1.0.0/32"],
     "adminCidrs[0] 10.0.0.0/16, adminCidrs[1] 10.0.0.0/24, adminCidrs[2] 10.1.0.0/32", "65537", "/16 (2^16)"),
    (["198.51.100.7/32", "2001:db8::/48", "2001:db8:1::/48"],
     "adminCidrs[1] 2001:db8::/48, adminCidrs[2] 2001:db8:1::/48", "2^81", "/48 (2^80)"),
    (["::/1", "8000::/1"], "adminCidrs[0] ::/1, adminCidrs[1] 8000::/1", "2^128", "/48 (2^80)"),
])
def test_admin_cidrs_union_wider_than_a_16_or_48(cidrs, named, count, widest):
    msg = error_of(adminCidrs=cidrs)
    v = 6 if ":" in named else 4
    assert msg == (f"onionstack:adminCidrs: {named} together admit {count} IPv{v} addresses, more than "
                   f"a {widest}; SSH to the balancer is for your admin networks: list narrower CIDRs "
                   f"(CI opens its own /32 for the run, docs/operations.md)")


def test_admin_cidrs_up_to_a_16_and_a_48_pass():
    cidrs = ["10.0.0.0/17", "10.0.128.0/17", "10.0.0.5/32", "2001:db8::/49", "2001:db8:0:8000::/49"]
    assert parse_config(minimal_config(adminCidrs=cidrs)).admin_cidrs == tuple(cidrs)


def test_instance_types():
    assert error_of(instanceTypes={"worker": "huge"}) == (
        'onionstack:instanceTypes.worker = "huge": must be an EC2 instance type such as t3.small'
    )
    msg = error_of(instanceTypes={"bastion": "t3.micro"})
    assert msg.startswith('onionstack:instanceTypes.bastion = "t3.micro": unknown key') and "balancer, worker, database" in msg
    assert parse_config(minimal_config(instanceTypes={"worker": "c7i.large"})).instance_types.balancer == "t3.micro"


def test_database_sizes_and_flag():
    assert error_of(database={"dataGb": 0}) == "onionstack:database.dataGb = 0: must be an integer from 1 to 16384"
    assert error_of(database={"logGb": 20000}).startswith("onionstack:database.logGb = 20000:")
    assert error_of(database={"enabled": "no"}) == 'onionstack:database.enabled = "no": must be true or false'
    assert error_of(database=[1]).startswith("onionstack:database = [1]: must be an object with keys enabled")


def test_backup_rules():
    assert error_of(backup={"dailyKeep": 0}) == "onionstack:backup.dailyKeep = 0: must be an integer from 1 to 1000"
    assert error_of(backup={"hourlyKeep": 3}).startswith('onionstack:backup.hourlyKeep = 3: unknown key')
    assert error_of(backup={"enabled": 1}) == "onionstack:backup.enabled = 1: must be true or false"


def test_balancer_publish():
    assert error_of(balancer={"publish": "maybe"}) == 'onionstack:balancer.publish = "maybe": must be true or false'
    assert parse_config(minimal_config(balancer={"publish": False})).balancer.publish is False


def test_unknown_top_level_key():
    msg = error_of(worker=3)
    assert msg.startswith("onionstack:worker is not a known key (did you mean workers?); "
                          "remove it with `pulumi config rm worker`; onionstack accepts sites, masterKeys, workers")
    # A mistyped secret key must not be echoed.
    secret = demo_master_key("news")
    msg = error_of(masterKey={"news": secret})
    assert "did you mean masterKeys?" in msg and secret not in msg


# ---------------------------------------------------------------- sites
def test_sites_missing_and_empty():
    cfg = minimal_config()
    del cfg["sites"]
    with pytest.raises(ConfigError, match=r"^onionstack:sites is missing: .*sites\[0\]\.name"):
        parse_config(cfg)
    assert error_of(sites=[]).startswith("onionstack:sites = []: must be a non-empty list of {name, domain")


@pytest.mark.parametrize("name", ["News", "1news", "", "a" * 32, "news_site"])
def test_site_name(name):
    msg = error_of(sites=[{"name": name, "domain": "example.com"}], masterKeys={})
    assert msg.startswith(f'onionstack:sites[0].name = "{name}": must match ^[a-z][a-z0-9-]{{0,30}}$')


def test_site_names_unique():
    sites = [{"name": "news", "domain": "example.com"}, {"name": "news", "domain": "example.org"}]
    assert error_of(sites=sites) == (
        'onionstack:sites[1].name = "news": is used by an earlier site; site names must be unique'
    )


@pytest.mark.parametrize("domain", ["localhost", "exa mple.com", "-bad.example.com", "http://example.com"])
def test_site_domain(domain):
    assert error_of(sites=[{"name": "news", "domain": domain}]) == (
        f'onionstack:sites[0].domain = "{domain}": must be a DNS name such as example.com'
    )


@pytest.mark.parametrize("origin", ["origin.example.com", "origin.example.com:0", "origin.example.com:99999", "exa mple:443"])
def test_site_origin_address(origin):
    msg = error_of(sites=[{"name": "news", "domain": "example.com", "originAddress": origin}])
    assert msg.startswith(f'onionstack:sites[0].originAddress = "{origin}": must be host:port')


def test_site_origin_address_accepts_ip_and_name():
    for origin in ("192.0.2.10:8443", "origin.example.com:443", "[2001:db8::1]:443"):
        cfg = parse_config(minimal_config(sites=[{"name": "news", "domain": "example.com", "originAddress": origin}]))
        assert cfg.sites[0].origin_address == origin


def test_site_block_lists_and_unknown_site_key():
    site = {"name": "news", "domain": "example.com"}
    assert error_of(sites=[{**site, "blockPaths": ["^/(admin"]}]).startswith(
        'onionstack:sites[0].blockPaths[0] = "^/(admin": must be a valid regular expression')
    assert error_of(sites=[{**site, "blockHosts": ["not a host"]}]).startswith(
        'onionstack:sites[0].blockHosts[0] = "not a host": must be a DNS name')
    assert error_of(sites=[{**site, "blockHosts": "ads.example.com"}]).startswith(
        'onionstack:sites[0].blockHosts = "ads.example.com": must be a list of DNS names')
    assert error_of(sites=[{**site, "origin": "x:1"}]).startswith(
        'onionstack:sites[0].origin = "x:1": unknown key; sites[0] accepts name, domain, originAddress')


# ---------------------------------------------------------------- secrets
def test_master_key_missing_tells_the_exact_fix():
    msg = error_of(masterKeys={})
    assert msg.startswith("onionstack:masterKeys.news is missing: site 'news' has no master key")
    assert "`python -m onion keygen --out keys/news`" in msg
    assert "`python -m onion import keys/news | pulumi config set --secret --path 'masterKeys.news'`" in msg


@pytest.mark.parametrize(
    "bad,reason",
    [
        (base64.b64encode(b"k" * 64).decode(), "does not start with 'ED25519-V3:'"),
        ("ED25519-V3:@@@@?!xyzzy*&@@@", "is not valid base64 after the prefix"),
        ("ED25519-V3:" + base64.b64encode(b"k" * 32).decode(), "decodes to 32 bytes, not 64"),
    ],
)
def test_master_key_invalid_never_echoes_the_key(bad, reason):
    msg = error_of(masterKeys={"news": bad})
    assert msg.startswith("onionstack:masterKeys.news = [secret]: must be ED25519-V3:<base64 of tor's 64-byte")
    assert reason in msg and "pulumi config set --secret" in msg
    body = bad.split(":", 1)[-1]
    for i in range(0, len(body) - 6):
        assert body[i:i + 6] not in msg.replace("ED25519-V3", "")


def test_master_key_for_unknown_site():
    keys = {"news": demo_master_key("news"), "old": demo_master_key("old")}
    msg = error_of(masterKeys=keys)
    assert msg.startswith("onionstack:masterKeys.old = [secret]: names no site in onionstack:sites")
    assert demo_master_key("old") not in msg


def test_ssh_public_key():
    assert error_of(sshPublicKey="ssh-rsa nonsense").startswith(
        "onionstack:sshPublicKey = \"ssh-rsa nonsense\": must be an OpenSSH public key line")
    cfg = minimal_config()
    del cfg["sshPublicKey"]
    with pytest.raises(ConfigError, match=r"^onionstack:sshPublicKey is missing: sshPrivateKey is set, and the two "
                                          r"go together: set its public half with `pulumi config set sshPublicKey .*"
                                          r"or remove sshPrivateKey"):
        parse_config(cfg)


@pytest.mark.parametrize("unset", [None, ""])   # "" is what the CLI passes for an unset key
def test_ssh_keys_both_or_neither(unset):
    """Neither key: the stack makes its own admin key (no ssh values in the config)."""
    cfg = minimal_config()
    for key in ("sshPublicKey", "sshPrivateKey"):
        if unset is None:
            del cfg[key]
        else:
            cfg[key] = unset
    parsed = parse_config(cfg)
    assert parsed.ssh_public_key is None and parsed.ssh_private_key is None
    public, private = minimal_config()["sshPublicKey"], minimal_config()["sshPrivateKey"]
    with pytest.raises(ConfigError, match=r"^onionstack:sshPrivateKey is missing: sshPublicKey is set, and the two "
                                          r"go together.*or remove sshPublicKey"):
        parse_config({**cfg, "sshPublicKey": public})
    with pytest.raises(ConfigError, match=r"^onionstack:sshPublicKey is missing: sshPrivateKey is set") as err:
        parse_config({**cfg, "sshPrivateKey": private})
    assert "PRIVATE KEY" not in str(err.value)


def test_ssh_private_key_missing_mismatched_garbage():
    cfg = minimal_config()
    del cfg["sshPrivateKey"]
    with pytest.raises(ConfigError, match=r"^onionstack:sshPrivateKey is missing: .*pulumi config set --secret sshPrivateKey"):
        parse_config(cfg)
    other_private = demo_ssh_key_pair()[1]
    msg = error_of(sshPrivateKey=other_private)
    assert msg == ("onionstack:sshPrivateKey = [secret]: does not belong to onionstack:sshPublicKey; "
                   "set both from the same key pair")
    msg = error_of(sshPrivateKey="-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n")
    assert msg.startswith("onionstack:sshPrivateKey = [secret]: must be an OpenSSH private key") and "garbage" not in msg


# A throwaway passphrase-protected key (ssh-keygen -t ed25519 -N pass); cryptography cannot
# create one without the bcrypt module, but it can tell that one is encrypted.
ENCRYPTED_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABAM2J+3NW
NQvHRfYx8Xct/1AAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIP91FIVGwu1ZY1N7
VpOZNL7WWhfk/idKdLWfbp6qYJ+OAAAAkHP7X20mk1dKMyfYJv1Y4QXuKWlGWGyY/0rYWR
HP1OZVX3dVtoH/o595UDCA48Ks9YaI82T4p6hQ7h8rM53fFNFJzGDPXUXC3BtS5uxVvhHY
/9v3Hl+s75l2tMBi01cR6nv/ONL5vHTFeB8v7nXCW1cw4jJKMaGAbr6J6BzRkekEpdIIE9
vHEp2zbqcYAHtxlQ==
-----END OPENSSH PRIVATE KEY-----
"""
ENCRYPTED_KEY_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP91FIVGwu1ZY1N7VpOZNL7WWhfk/idKdLWfbp6qYJ+O test"


def test_ssh_private_key_with_passphrase_is_refused():
    msg = error_of(sshPublicKey=ENCRYPTED_KEY_PUB, sshPrivateKey=ENCRYPTED_KEY)
    assert msg.startswith("onionstack:sshPrivateKey = [secret]: is passphrase-protected")
    assert "ssh-keygen -t ed25519 -N ''" in msg


def test_parse_does_not_mutate_input():
    cfg = minimal_config(database={"dataGb": 30})
    before = copy.deepcopy(cfg)
    parsed = parse_config(cfg)
    assert cfg == before and parsed.database.data_gb == 30 and parsed.database.log_gb == 4


# ---------------------------------------------------------------- retention translation
def test_retention_translation():
    rules = {r.name: r for r in parse_config(minimal_config()).backup.rules}
    # keep N -> the N most recent points always exist: ceil(N x period) days
    assert rules["three-hourly"].retention_days == 1  # 7 x 3 h = 21 h -> 1 day (AWS minimum)
    assert rules["daily"].retention_days == 6
    assert rules["weekly"].retention_days == 28
    assert rules["monthly"].retention_days == 731  # the longest 24 consecutive calendar months
    assert retention_days(9, 3 / 24) == 2  # 27 h
    assert retention_days(1, None) == 31 and retention_days(12, None) == 366
