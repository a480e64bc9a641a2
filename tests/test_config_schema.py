"""Pulumi.yaml's declared config (what the CLI applies) must equal infra/config.py's
(what the program applies under mocks, where the SDK sees no Pulumi.yaml defaults)."""
from __future__ import annotations

from pathlib import Path

import yaml

from infra.config import REQUIRED, SCHEMA, SECRET_KEYS, parse_config
from tests.stackmocks import prod_config

ROOT = Path(__file__).resolve().parent.parent


def project() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_project_header():
    p = project()
    assert p["name"] == "onionstack"
    assert p["runtime"]["name"] == "python" and p["runtime"]["options"]["virtualenv"] == ".venv"
    assert p["description"].strip()


def test_every_key_declared_with_same_type_and_default():
    declared = project()["config"]
    assert set(declared) == set(SCHEMA), "Pulumi.yaml and infra/config.py declare different keys"
    for key, (kind, default) in SCHEMA.items():
        decl = declared[key]
        assert decl.get("description", "").strip(), f"{key} has no description"
        assert decl.get("type") == kind, f"{key}: Pulumi.yaml type {decl.get('type')!r} != {kind!r}"
        if default is REQUIRED:
            assert "default" not in decl, f"{key} is required in config.py but has a Pulumi.yaml default"
        else:
            assert decl.get("default") == default, f"{key}: Pulumi.yaml default {decl.get('default')!r} != {default!r}"
        if key in SECRET_KEYS:
            assert "secret" in decl["description"].lower(), f"{key}: description must say it is secret"
        # No key carries `secret: true`: the CLI demands a whole-value secure value of such a
        # key, which per-site --path secrets (masterKeys, tlsKeys) are not, and it would refuse
        # the plain "" default that keeps sshPrivateKey optional. The program refuses a secret
        # stored in plain text itself (infra/config.py plain_secret_paths).
        assert "secret" not in decl, f"{key}: secret flag"
        if kind == "array":
            assert decl["items"]["type"] == "string"


def test_pulumi_yaml_defaults_parse_to_the_dataclass_defaults():
    # Feeding Pulumi.yaml's defaults explicitly must give what omitting them gives.
    base = {k: v for k, v in prod_config().items()}
    bare = {k.split(":", 1)[1]: v for k, v in base.items() if k.startswith("onionstack:")}
    required_only = {k: v for k, v in bare.items() if SCHEMA[k][1] is REQUIRED}
    with_defaults = {**required_only, **{k: d["default"] for k, d in project()["config"].items() if "default" in d}}
    assert parse_config(with_defaults) == parse_config(required_only)


def test_prod_stack_file_is_valid_and_non_secret():
    text = (ROOT / "Pulumi.prod.yaml").read_text()
    assert "PRIVATE KEY" not in text and "ED25519-V3:" not in text.replace("'ED25519-V3:...'", "")
    cfg = parse_config({k.split(":", 1)[1]: v for k, v in prod_config().items() if k.startswith("onionstack:")})
    assert [s.name for s in cfg.sites] == ["news", "shop"]
    assert cfg.workers == 3 and cfg.availability_zones == 3 and cfg.nat_gateways == "perAz"
    assert "0.0.0.0/0" not in cfg.admin_cidrs
    assert yaml.safe_load(text)["config"]["aws:region"]


def test_program_with_cli_applied_defaults_equals_program_without():
    """The CLI passes Pulumi.yaml defaults to the program (JSON text for objects, numbers and
    booleans); the mocks pass nothing. Both must declare the same stack."""
    from tests.stackmocks import minimal_config, run

    declared = project()["config"]
    # The CLI fills in the defaults of the keys the stack does not set.
    with_defaults = minimal_config(**{k: d["default"] for k, d in declared.items()
                                      if "default" in d and k not in minimal_config()})
    a, b = run(minimal_config()), run(with_defaults)
    assert a.counts() == b.counts() and a.outputs == b.outputs
    assert sorted((r.type, r.name) for r in a.resources) == sorted((r.type, r.name) for r in b.resources)
