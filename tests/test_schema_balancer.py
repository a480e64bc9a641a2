"""The balancer config's JSON Schema (onion/schema/balancer.schema.json) against the
balancer's own loader (onion.config.load_config): every example config in the repository
passes both, and every config the loader refuses for a structural reason (unknown key,
wrong type, missing key, out of range) the schema refuses too.

Known, deliberate gaps (a schema cannot express them): onion address checksums, duplicate
names/addresses, key files and their modes (the loader's semantic checks); and a whole
number written as a float (`socks_port: 9050.0`), which JSON Schema counts as an integer
while the loader wants an int."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from onion.config import ConfigError, load_config
from onion.keys import IdentityKey
from onion.servicecli import schema_path

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "onion" / "schema" / "balancer.schema.json"
PLACEHOLDER = "<56 chars>.onion"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator, data) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


def new_address() -> str:
    return IdentityKey.generate().hostname


def key_file(directory: Path, name: str) -> Path:
    """A frontend key as tor's hs_ed25519_secret_key, mode 0600 (what the loader wants)."""
    hs = IdentityKey.generate().write_hs_dir(directory / f"hs-{name}")
    return hs / "hs_ed25519_secret_key"


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def localize(data: dict, tmp: Path) -> dict:
    """The same config with its key files and state dir made real under tmp (the loader reads
    the keys); nothing the schema looks at changes kind."""
    data = copy.deepcopy(data)
    for i, fe in enumerate(data.get("frontends") or []):
        if isinstance(fe, dict) and isinstance(fe.get("key_file"), str) and fe["key_file"]:
            fe["key_file"] = str(key_file(tmp, f"fe{i}"))
    for i, svc in enumerate(data.get("services") or []):
        if isinstance(svc, dict) and isinstance(svc.get("key"), str) and svc["key"]:
            svc["key"] = str(key_file(tmp, f"svc{i}"))
    if isinstance(data.get("state_dir"), str) and data["state_dir"]:
        data["state_dir"] = str(tmp / "state")
    return data


def assert_both_accept(validator, data: dict, tmp: Path, where: str) -> None:
    assert schema_errors(validator, data) == [], where
    cfg = load_config(str(write(tmp / "config.yaml", localize(data, tmp))))
    assert cfg.frontends, where


# ---------------------------------------------------------------- the examples in the repo

def doc_configs() -> list[tuple[str, str]]:
    """Every ```yaml block in README.md and docs/ that is a balancer config (frontends: or
    services: at the top), with the `<56 chars>.onion` placeholders filled in."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for m in re.finditer(r"```yaml\n(.*?)```", doc.read_text(), re.S):
            text = m.group(1)
            while PLACEHOLDER in text:
                text = text.replace(PLACEHOLDER, new_address(), 1)
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and ({"frontends", "services"} & set(data)):
                found.append((f"{doc.relative_to(REPO)}:{text.splitlines()[0]}", text))
    return found


def test_docs_examples_pass_the_schema_and_the_loader(validator, tmp_path):
    examples = doc_configs()
    kinds = {"frontends" if "frontends" in yaml.safe_load(t) else "services" for _, t in examples}
    assert kinds == {"frontends", "services"}, [w for w, _ in examples]  # both formats are documented
    for i, (where, text) in enumerate(examples):
        d = tmp_path / str(i)
        d.mkdir()
        assert_both_accept(validator, yaml.safe_load(text), d, where)


def test_docs_tell_editors_where_the_schema_is():
    doc = (REPO / "docs" / "balancer.md").read_text()
    assert "# yaml-language-server: $schema=./balancer.schema.json\n" in doc
    assert "onion schema > balancer.schema.json" in doc


def test_lab_configs_pass_the_schema_and_the_loader(validator, tmp_path):
    from lab.balancer import write_onion_config, write_onionbalance_config

    key = key_file(tmp_path, "lab")
    instances = [new_address().removesuffix(".onion") for _ in range(3)]
    onion = write_onion_config(tmp_path / "lab" / "balancer.yaml", control_port=9051, socks_port=9050,
                               state_dir=tmp_path / "state", key_file=key, instances=instances)
    ob = write_onionbalance_config(tmp_path / "ob" / "config.yaml", key_file=key, instances=instances)
    for path in (onion, ob):
        assert schema_errors(validator, yaml.safe_load(path.read_text())) == [], path
        assert [i.address for i in load_config(str(path)).frontends[0].instances] == instances


@pytest.mark.parametrize("publish", [True, False])
def test_rendered_aws_config_passes_the_schema_and_the_loader(validator, tmp_path, publish):
    """nodes/templates/balancer.yaml.j2 as the AWS balancer gets it."""
    from nodes.render import BalancerSpec, Layout, SiteSpec, render_balancer

    keys = {n: IdentityKey.generate() for n in ("news", "shop")}
    sites = (SiteSpec("news", "example.com", keys["news"].address),
             SiteSpec("shop", "shop.example.org", keys["shop"].address))
    instances = {"news": (new_address(), new_address()), "shop": (new_address(),)}
    spec = BalancerSpec(sites=sites, instances=instances, publish=publish, layout=Layout(root=str(tmp_path)))
    rendered = render_balancer(spec)["etc/onionstack/balancer.yaml"].content
    assert schema_errors(validator, yaml.safe_load(rendered)) == []
    config = tmp_path / "balancer.yaml"
    config.write_text(rendered)
    for site in sites:
        path = Path(spec.key_file(site))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(keys[site.name].to_tor_secret_key())
        path.chmod(0o600)
    assert load_config(str(config)).publish is publish


def test_onionbalance_config_yaml_passes_the_schema_and_the_loader(validator, tmp_path):
    """OnionBalance v3's own config.yaml layout (its docs' example), with the top-level keys
    it reads for logging and its status socket."""
    text = f"""\
# OnionBalance config file
log-level: info
status-socket-location: /var/run/onionbalance/control
services:
- instances:
  - address: {new_address()}
    name: node1
  - address: {new_address()}
    name: node2
  key: frontend.key
"""
    assert schema_errors(validator, yaml.safe_load(text)) == []
    hs = IdentityKey.generate()
    hs.write_pem(tmp_path / "frontend.key")
    cfg = load_config(str(write(tmp_path / "config.yaml", text)))
    assert cfg.source_format == "onionbalance" and cfg.frontends[0].name == "frontend"


def test_the_cli_prints_the_shipped_schema(capsys):
    from onion.__main__ import main

    assert Path(str(schema_path())) == SCHEMA_FILE
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(SCHEMA_FILE.read_text())
    assert main(["schema", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(SCHEMA_FILE)


# ---------------------------------------------------------------- refusals agree

def base_onionstack() -> dict:
    return {"publish": True, "control": {"port": 9051}, "socks_port": 9050, "state_dir": "/var/lib/x",
            "probe": {"port": 80, "interval": 20, "timeout": 30, "failures": 3, "enabled": True},
            "frontends": [{"name": "news", "key_file": "news.key", "max_intro_points": 20,
                           "instances": [{"address": new_address(), "name": "w1"}, new_address()]}]}


def base_onionbalance() -> dict:
    return {"log-level": "info", "services": [{"key": "news.key", "instances": [
        {"address": new_address(), "name": "node1"}]}]}


def _set(path: str, value):
    """A mutation that sets (or, with value DELETE, removes) one key path, e.g. 'probe.port'."""
    def apply(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = data
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return data
    apply.__name__ = f"{path}={value!r}"
    return apply


DELETE = object()

# (base, mutation): the loader refuses each for a structural reason; the schema must too.
REFUSED = [
    (base_onionstack, _set("colour", "blue")),                       # unknown keys, every level
    (base_onionstack, _set("control.password", "x")),
    (base_onionstack, _set("probe.retries", 2)),
    (base_onionstack, _set("frontends.0.key", "x")),
    (base_onionstack, _set("frontends.0.instances.0.weight", 2)),
    (base_onionstack, _set("services", [])),                         # both formats at once
    (base_onionbalance, _set("services.0.name", "x")),
    (base_onionbalance, _set("verbose", True)),
    (base_onionstack, _set("publish", "yes")),                       # wrong types
    (base_onionstack, _set("publish", None)),
    (base_onionstack, _set("control", None)),
    (base_onionstack, _set("control", {})),
    (base_onionstack, _set("control", {"port": 9051, "socket": "/run/x"})),
    (base_onionstack, _set("control", {"port": "9051"})),
    (base_onionstack, _set("control", {"socket": "run/x"})),
    (base_onionstack, _set("control", {"socket": 5})),
    (base_onionstack, _set("socks_port", "9050")),
    (base_onionstack, _set("socks_port", True)),
    (base_onionstack, _set("state_dir", 5)),
    (base_onionstack, _set("state_dir", "")),
    (base_onionstack, _set("probe", True)),
    (base_onionstack, _set("probe", "off")),
    (base_onionstack, _set("probe.interval", "10")),
    (base_onionstack, _set("probe.interval", True)),
    (base_onionstack, _set("probe.failures", 2.5)),
    (base_onionstack, _set("probe.enabled", "yes")),
    (base_onionstack, _set("frontends", {})),
    (base_onionstack, _set("frontends", [])),
    (base_onionstack, _set("frontends.0", "news")),
    (base_onionstack, _set("frontends.0.name", 5)),
    (base_onionstack, _set("frontends.0.name", "-news")),
    (base_onionstack, _set("frontends.0.name", "n" * 65)),
    (base_onionstack, _set("frontends.0.key_file", 5)),
    (base_onionstack, _set("frontends.0.key_file", "")),
    (base_onionstack, _set("frontends.0.max_intro_points", "20")),
    (base_onionstack, _set("frontends.0.max_intro_points", True)),
    (base_onionstack, _set("frontends.0.max_intro_points", 2.5)),
    (base_onionstack, _set("frontends.0.instances", [])),
    (base_onionstack, _set("frontends.0.instances", "x.onion")),
    (base_onionstack, _set("frontends.0.instances.1", 5)),
    (base_onionstack, _set("frontends.0.instances.0.address", 5)),
    (base_onionstack, _set("frontends.0.instances.0.address", "short.onion")),
    (base_onionbalance, _set("services", {})),
    (base_onionbalance, _set("services", [])),
    (base_onionbalance, _set("services.0.key", 5)),
    (base_onionbalance, _set("services.0.instances", None)),
    (base_onionstack, _set("frontends.0.name", DELETE)),              # missing keys
    (base_onionstack, _set("frontends.0.key_file", DELETE)),
    (base_onionstack, _set("frontends.0.instances", DELETE)),
    (base_onionstack, _set("frontends.0.instances.0", {"name": "w1"})),
    (base_onionbalance, _set("services.0.key", DELETE)),
    (base_onionbalance, _set("services.0.instances", DELETE)),
    (base_onionstack, _set("control.port", 0)),                       # out of range
    (base_onionstack, _set("control.port", 65536)),
    (base_onionstack, _set("socks_port", -1)),
    (base_onionstack, _set("probe.port", 70000)),
    (base_onionstack, _set("probe.interval", 0)),
    (base_onionstack, _set("probe.interval", -5)),
    (base_onionstack, _set("probe.interval", 3600.5)),
    (base_onionstack, _set("probe.interval", float("inf"))),
    (base_onionstack, _set("probe.timeout", 600.01)),
    (base_onionstack, _set("probe.failures", 0)),
    (base_onionstack, _set("probe.failures", 101)),
    (base_onionstack, _set("frontends.0.max_intro_points", 0)),
    (base_onionstack, _set("frontends.0.max_intro_points", 21)),
]

ACCEPTED = [  # the edges the loader accepts: the schema must not refuse them
    (base_onionstack, _set("probe", None)),
    (base_onionstack, _set("probe", False)),
    (base_onionstack, _set("probe", {})),
    (base_onionstack, _set("probe.interval", 3600)),
    (base_onionstack, _set("probe.interval", 0.5)),
    (base_onionstack, _set("probe.timeout", 600)),
    (base_onionstack, _set("probe.failures", 100)),
    (base_onionstack, _set("probe.enabled", False)),
    (base_onionstack, _set("control", {"socket": "/run/tor/control"})),
    (base_onionstack, _set("control.port", 65535)),
    (base_onionstack, _set("frontends.0.max_intro_points", 1)),
    (base_onionstack, _set("frontends.0.name", "a" * 64)),
    (base_onionstack, _set("frontends.0.instances.0.name", None)),
    (base_onionstack, _set("frontends.0.instances.0.name", 7)),
    (base_onionstack, _set("publish", DELETE)),
    (base_onionstack, _set("control", DELETE)),
    (base_onionstack, _set("socks_port", DELETE)),
    (base_onionstack, _set("state_dir", DELETE)),
    (base_onionstack, _set("probe", DELETE)),
    (base_onionbalance, _set("log-level", DELETE)),
    (base_onionbalance, _set("TOR_CONTROL_SOCKET", "/run/tor/control")),
]


@pytest.mark.parametrize("base, mutate", REFUSED, ids=[m.__name__ for _, m in REFUSED])
def test_what_the_loader_refuses_the_schema_refuses(validator, tmp_path, base, mutate):
    data = mutate(base())
    with pytest.raises(ConfigError):
        load_config(str(write(tmp_path / "config.yaml", localize(data, tmp_path))))
    assert schema_errors(validator, data), "the schema accepted a config the loader refuses"


@pytest.mark.parametrize("base, mutate", ACCEPTED, ids=[m.__name__ for _, m in ACCEPTED])
def test_what_the_loader_accepts_the_schema_accepts(validator, tmp_path, base, mutate):
    assert_both_accept(validator, mutate(base()), tmp_path, mutate.__name__)


@pytest.mark.parametrize("text", ["- frontends: []\n", "just text\n", "{}\n", "publish: true\n"])
def test_not_a_config_at_all_is_refused_by_both(validator, tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(str(write(tmp_path / "config.yaml", text)))
    assert schema_errors(validator, yaml.safe_load(text))


def test_check_jsonschema_cli_validates_a_yaml_config_with_it(tmp_path):
    """The same check an editor makes, by a second implementation's command line
    (check-jsonschema, installed for the workflow tests), on the YAML file itself."""
    good = write(tmp_path / "good.yaml", base_onionstack())
    bad = write(tmp_path / "bad.yaml", _set("probe.failures", 0)(base_onionstack()))
    cli = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMA_FILE)]
    assert subprocess.run(cli + [str(good)], capture_output=True, text=True, timeout=60).returncode == 0
    result = subprocess.run(cli + [str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "failures" in result.stdout + result.stderr
