"""`pulumi new <repository>`: Pulumi.yaml's `template:` section prompts for the region, the
admin CIDRs and the sites, and stores each answer as a plain string config value
(pkg/cmd/pulumi/newcmd/config.go: config.NewValue). Those strings must be what the program
accepts, and the project must keep the name the program reads its settings under."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import mockrun
from infra.config import NAMESPACE, SCHEMA, ConfigError, decode_raw, parse_config
from tests.stackmocks import demo_master_key

ROOT = Path(__file__).resolve().parent.parent
# What the project schema allows in `template:` (sdk/go/common/workspace/project.json:
# additionalProperties false).
TEMPLATE_FIELDS = {"description", "quickstart", "important", "config"}


def project() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_the_template_prompts_for_region_admin_cidrs_and_sites():
    template = project()["template"]
    assert set(template) <= TEMPLATE_FIELDS and template["description"].strip()
    prompts = template["config"]
    assert set(prompts) == {"aws:region", f"{NAMESPACE}:adminCidrs", f"{NAMESPACE}:sites"}
    for key, prompt in prompts.items():
        assert set(prompt) <= {"description", "default", "secret"} and prompt["description"].strip(), key
    assert prompts["aws:region"]["default"] == "us-east-1"
    # Every command the quickstart text names is one the docs test would accept too.
    assert "python -m onion keygen --out" in template["quickstart"]


def test_a_prompted_key_is_never_typed_other_than_string():
    """The CLI checks stack values against the project's declared type: a key typed array or
    integer would refuse the plain string `pulumi new` stored (config.go validateStackConfigValue)."""
    declared = project()["config"]
    for key in project()["template"]["config"]:
        ns, _, name = key.partition(":")
        if ns != NAMESPACE:
            continue
        assert name in SCHEMA and SCHEMA[name][0] in (None, "string"), key
        assert declared[name].get("type") in (None, "string"), key


def test_the_answers_as_stored_are_what_the_program_accepts():
    answers = {"adminCidrs": "198.51.100.7/32, 2001:db8:5::/64",
               "sites": '[{"name": "news", "domain": "example.com"}]'}
    raw = {k: decode_raw(k, v) for k, v in answers.items()}
    config = parse_config({**raw, "masterKeys": {"news": demo_master_key("news")}})
    assert config.admin_cidrs == ("198.51.100.7/32", "2001:db8:5::/64")
    assert [(s.name, s.domain) for s in config.sites] == [("news", "example.com")]
    # the list form (pulumi config set --path 'adminCidrs[0]' ...) still works, and a bad entry
    # in the string form is named like one in the list
    assert parse_config({**raw, "adminCidrs": ["198.51.100.7/32"],
                         "masterKeys": {"news": demo_master_key("news")}}).admin_cidrs == ("198.51.100.7/32",)
    with pytest.raises(ConfigError, match=r"adminCidrs\[1\]"):
        parse_config({**raw, "adminCidrs": "198.51.100.7/32, 10.0.0.300/32", "masterKeys": {"news": demo_master_key("news")}})
    with pytest.raises(ConfigError, match="adminCidrs"):
        parse_config({**raw, "adminCidrs": " , ", "masterKeys": {"news": demo_master_key("news")}})


def test_a_stack_made_by_pulumi_new_runs():
    """The program under mocks with the config exactly as the prompts leave it (strings), plus
    the master key the quickstart text sets."""
    result = mockrun.run_program({"aws:region": "us-east-1", "adminCidrs": "198.51.100.7/32",
                                  "sites": json.dumps([{"name": "news", "domain": "example.com"}]),
                                  "masterKeys": {"news": demo_master_key("news")}})
    (rule,) = [r for r in result.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
               if r.input("cidrIpv4") == "198.51.100.7/32"]
    assert rule.input("fromPort") == 22
    assert list(result.outputs["sites"]) == ["news"]


def test_a_renamed_project_is_refused_naming_the_fix():
    from tests.stackmocks import prod_config

    with pytest.raises(ConfigError, match=r"the project is named 'mysite'.*set `name: onionstack` in Pulumi.yaml"):
        mockrun.run_program(prod_config(), project="mysite")


def test_the_policy_pack_reads_the_string_form_too():
    from policy import onionstack_policies as pack

    assert pack.admin_cidrs({"adminCidrs": "198.51.100.7/32, 2001:db8:5::/64"}) == ["198.51.100.7/32",
                                                                                 "2001:db8:5::/64"]
    assert pack.admin_cidrs({"adminCidrs": ["198.51.100.7/32"]}) == ["198.51.100.7/32"]
