"""Balancer config loading: onionstack's YAML and OnionBalance's config.yaml, precise errors."""
from __future__ import annotations

import os
import textwrap

import pytest

from onion.config import ConfigError, load_config, load_keys
from onion.keys import IdentityKey


@pytest.fixture(scope="module")
def ids():
    return [IdentityKey.generate() for _ in range(4)]


def write_key(path, key: IdentityKey, *, pem=False, mode=0o600):
    data = key.to_pem() if pem else key.to_tor_secret_key()
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def write(tmp_path, text, name="balancer.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def onionstack_yaml(tmp_path, ids, extra="", instances=None):
    key = write_key(tmp_path / "news.key", ids[0])
    inst = instances if instances is not None else [ids[1].hostname, ids[2].address]
    lines = "\n".join(f"            - address: {a}" for a in inst)
    return write(tmp_path, f"""\
        publish: false
        control: {{socket: /run/tor-balancer/control}}
        socks_port: 9150
        state_dir: state
        probe: {{port: 8080, interval: 10, timeout: 20, failures: 2}}
        frontends:
          - name: news
            key_file: {key}
            instances:
{lines}
        {extra}""")


def test_onionstack_format(tmp_path, ids):
    cfg = load_config(onionstack_yaml(tmp_path, ids))
    assert cfg.source_format == "onionstack" and cfg.publish is False
    assert cfg.control.socket == "/run/tor-balancer/control" and cfg.control.port is None
    assert cfg.socks_port == 9150
    assert cfg.state_dir == str(tmp_path / "state")  # relative to the config file
    assert (cfg.probe.port, cfg.probe.interval, cfg.probe.timeout, cfg.probe.failures) == (8080, 10, 20, 2)
    fe = cfg.frontends[0]
    assert fe.name == "news"
    assert [i.address for i in fe.instances] == [ids[1].address, ids[2].address]
    assert load_keys(cfg)["news"].address == ids[0].address


def test_command_line_overrides_control_and_state_dir(tmp_path, ids):
    cfg = load_config(onionstack_yaml(tmp_path, ids), control_port=9999, state_dir="/tmp/x")
    assert cfg.control.port == 9999 and cfg.control.socket is None and cfg.state_dir == "/tmp/x"


def test_onionbalance_format_with_pem_and_tor_keys(tmp_path, ids):
    pem_key = ids[0]
    tor_key = IdentityKey.from_expanded(ids[3].to_tor_secret_key()[32:])
    write_key(tmp_path / f"{pem_key.address}.key", pem_key, pem=True)
    (tmp_path / "keys").mkdir()
    write_key(tmp_path / "keys" / "irc.key", tor_key)
    path = write(tmp_path, f"""\
        services:
        - instances:
          - address: {ids[1].hostname}
            name: web1
          - address: {ids[2].hostname}
            name: web2
          key: {pem_key.address}.key
        - instances:
          - address: {ids[2].hostname}
          key: keys/irc.key
        """, name="config.yaml")
    cfg = load_config(path)
    assert cfg.source_format == "onionbalance" and cfg.publish is True
    assert cfg.control.port == 9051  # OnionBalance's default too
    assert [fe.name for fe in cfg.frontends] == [pem_key.address, "irc"]
    assert cfg.frontends[0].instances[0].name == "web1"
    keys = load_keys(cfg)
    assert keys[pem_key.address].address == pem_key.address
    assert keys["irc"].address == ids[3].address


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path, ids, mode):
    path = onionstack_yaml(tmp_path, ids)
    os.chmod(tmp_path / "news.key", mode)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "news.key" in msg and f"{mode:04o}" in msg and "chmod 600" in msg


def test_missing_key_file(tmp_path, ids):
    path = onionstack_yaml(tmp_path, ids)
    os.unlink(tmp_path / "news.key")
    with pytest.raises(ConfigError, match="news.key does not exist.*keygen"):
        load_config(path)


def test_corrupt_key_file(tmp_path, ids):
    path = onionstack_yaml(tmp_path, ids)
    (tmp_path / "news.key").write_bytes(b"== ed25519v1-secret: type0 ==\0\0\0" + b"x" * 10)
    with pytest.raises(ConfigError, match="frontend 'news'.*news.key"):
        load_config(path)


def test_frontend_listed_as_its_own_instance(tmp_path, ids):
    path = onionstack_yaml(tmp_path, ids, instances=[ids[1].address, ids[0].address])
    with pytest.raises(ConfigError, match=r"instances\[1\]\.address.*frontend"):
        load_config(path)


@pytest.mark.parametrize("mutate, expect", [
    (lambda a: a[:5] + ("a" if a[5] != "a" else "b") + a[6:], "checksum"),
    (lambda a: a[:20], "characters"),
    (lambda a: a[:10] + "1" + a[11:], "base32"),
])
def test_bad_instance_address_names_field_and_value(tmp_path, ids, mutate, expect):
    bad = mutate(ids[1].address)
    path = onionstack_yaml(tmp_path, ids, instances=[ids[2].address, bad])
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith("frontends[0].instances[1].address:") and expect in msg and bad in msg


def test_duplicate_instance(tmp_path, ids):
    path = onionstack_yaml(tmp_path, ids, instances=[ids[1].address, ids[1].hostname])
    with pytest.raises(ConfigError, match=r"instances\[1\]\.address.*duplicates .*instances\[0\]"):
        load_config(path)


@pytest.mark.parametrize("text, expect", [
    ("frontends: []\n", r"^frontends: must be a non-empty list"),
    ("frontends:\n  - name: x\n", r"^frontends\[0\]: missing key `key_file`"),
    ("frontends:\n  - {name: 'bad name', key_file: k, instances: [x]}\n", r"frontends\[0\]\.name: is not a valid name"),
    ("control: {port: 70000}\nfrontends: [{name: a, key_file: k, instances: []}]\n",
     r"^control\.port: must be a TCP port.*70000"),
    ("control: {port: 1, socket: /x}\nfrontends: []\n", r"^control: needs exactly one of"),
    ("publish: 'yes'\nfrontends: []\n", r"^publish: must be true or false"),
    ("frontends: [{name: a, key_file: k, instances: []}]\nsocks: 1\n", r"^config: unknown key\(s\) socks"),
    ("frontends: [{name: a, key_file: k, instances: []}]\n", r"instances: must be a non-empty list"),
    ("probe: {failures: 0}\nfrontends: [{name: a, key_file: k, instances: [x]}]\n",
     r"^probe\.failures: must be a positive integer"),
    ("frontends: [{name: a, key_file: k, max_intro_points: 21, instances: [x]}]\n",
     r"max_intro_points: must be at most 20"),
    ("services:\n  - instances: [{address: x}]\n", r"^services\[0\]: missing key `key`"),
    ("services:\n  - key: a.key\n", r"^services\[0\]: missing key `instances`"),
    ("nothing: here\n", r"neither `frontends:`"),
    ("frontends: [\n", r"not valid YAML at line"),
    ("- a\n- b\n", r"must be a YAML mapping"),
])
def test_precise_errors(tmp_path, text, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_same_key_for_two_frontends(tmp_path, ids):
    key = write_key(tmp_path / "k1", ids[0])
    path = write(tmp_path, f"""\
        frontends:
          - {{name: one, key_file: {key}, instances: [{ids[1].address}]}}
          - {{name: two, key_file: {key}, instances: [{ids[2].address}]}}
        """)
    with pytest.raises(ConfigError, match="frontend 'two'.*same key as frontend 'one'"):
        load_config(path)


NUMBERS_FE = "frontends: [{name: a, key_file: k, instances: [x]}]\n"


@pytest.mark.parametrize("text, field", [
    ("probe: {interval: .nan}\n" + NUMBERS_FE, "probe.interval"),   # probed every tick
    ("probe: {timeout: .nan}\n" + NUMBERS_FE, "probe.timeout"),     # turned probing off
    ("probe: {interval: .inf}\n" + NUMBERS_FE, "probe.interval"),
    ("probe: {timeout: -.inf}\n" + NUMBERS_FE, "probe.timeout"),
    ("probe: {failures: .nan}\n" + NUMBERS_FE, "probe.failures"),
    ("probe: {interval: 0}\n" + NUMBERS_FE, "probe.interval"),
    ("probe: {port: .nan}\n" + NUMBERS_FE, "probe.port"),
    ("socks_port: .nan\n" + NUMBERS_FE, "socks_port"),
    ("control: {port: .inf}\n" + NUMBERS_FE, "control.port"),
    ("frontends: [{name: a, key_file: k, max_intro_points: .nan, instances: [x]}]\n", "max_intro_points"),
    ("frontends: [{name: a, key_file: k, max_intro_points: 1e400, instances: [x]}]\n", "max_intro_points"),
])
def test_every_number_is_finite_and_in_range(tmp_path, text, field):
    """NaN passed every `<`/`>` check: `probe: {interval: .nan}` probed every tick and
    `{timeout: .nan}` silently turned probing off."""
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as exc:
        load_config(write(tmp_path, text), load_keys=False)
    assert "use " in str(exc.value)  # says what to write instead


def test_sane_probe_numbers_still_load():
    from onion.config import _probe

    p = _probe({"interval": 1.5, "timeout": 600, "failures": 100}, "probe")
    assert (p.interval, p.timeout, p.failures) == (1.5, 600.0, 100)
