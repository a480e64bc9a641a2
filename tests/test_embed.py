"""The site as a component of someone else's program: `examples/embed` (a program with its own
VPC, subnets, gateways and routes) declares `OnionSite` from the `onionstack` package with
`OnionSiteArgs.of(...)` and `ExistingNetwork(...)`, under Pulumi's mocks. The site builds in
that VPC and makes none of its own; subnets of another VPC, or a standby balancer without a
second public subnet, stop the program naming the fix. Last, the same program runs in a
fresh interpreter against the package as `pip install stack/` installs it (not the checkout).
"""
from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest

import mockrun
from nodes.payload import unpack
from tests.stackmocks import demo_master_key, reveal

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embed"
ADMIN = ["198.51.100.7/32"]


def example_config(**extra) -> dict:
    return {"platform:domain": "news.example.org", "platform:adminCidrs": ADMIN,
            "platform:newsMasterKey": demo_master_key("news"), "aws:region": "us-east-1", **extra}


def run_example(config: dict, program=None) -> mockrun.ProgramResult:
    def example():
        runpy.run_path(str(EXAMPLE / "__main__.py"), run_name="__main__")

    return mockrun.run_program(config, program=program or example, project="platform",
                               secret_keys=["platform:newsMasterKey"])


@pytest.fixture(scope="module")
def embedded() -> mockrun.ProgramResult:
    return run_example(example_config())


def test_the_site_builds_in_the_programs_own_vpc(embedded):
    r = embedded
    (vpc,) = r.of_type("aws:ec2/vpc:Vpc")
    assert vpc.name == "platform"  # the example's VPC is the only one
    # Nothing of the network is the site's: one gateway, one NAT, the example's 4 subnets, and
    # the VPC's default group (which the site strips when it owns the VPC) left alone.
    assert [g.name for g in r.of_type("aws:ec2/internetGateway:InternetGateway")] == ["platform"]
    assert [n.name for n in r.of_type("aws:ec2/natGateway:NatGateway")] == ["nat"]
    assert sorted(s.name for s in r.of_type("aws:ec2/subnet:Subnet")) == ["private-0", "private-1", "public-0",
                                                                         "public-1"]
    assert not r.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    site = r.named("news-onion")
    assert site.type == "onionstack:site:OnionSite"
    assert not [x for x in r.resources if x.type == "onionstack:infra:Network"]

    subnet = {s.name: s.id for s in r.of_type("aws:ec2/subnet:Subnet")}
    where = {i.name: reveal(i.input("subnetId")) for i in r.of_type("aws:ec2/instance:Instance")}
    assert where == {"balancer-instance": subnet["public-0"], "worker-1-instance": subnet["private-0"],
                     "worker-2-instance": subnet["private-1"], "database-instance": subnet["private-0"]}
    for group in r.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert group.input("vpcId") == vpc.id, group.name
    zone_of = {s.name: s.input("availabilityZone") for s in r.of_type("aws:ec2/subnet:Subnet")}
    assert {v.input("availabilityZone") for v in r.of_type("aws:ebs/volume:Volume")} == {zone_of["private-0"]}
    (flow,) = r.of_type("aws:ec2/flowLog:FlowLog")
    assert flow.input("vpcId") == vpc.id


def test_the_database_admits_the_programs_private_subnets(embedded):
    files = unpack(reveal(embedded.named("database-postgres").input("stdin")))
    hba = files["etc/postgresql/16/main/pg_hba.conf"].content
    remote = sorted(line.split()[3] for line in hba.splitlines() if line.startswith("hostssl"))
    assert remote == ["10.80.100.0/24", "10.80.101.0/24"]


def test_the_outputs_and_the_secret(embedded):
    from infra.config import onion_address_of

    address = onion_address_of(demo_master_key("news"))
    assert embedded.outputs["onionUrl"] == f"http://{address}/"
    assert "adminSshPrivateKey" in embedded.secret_outputs and "onionUrl" not in embedded.secret_outputs
    # The master key given as an argument reaches the balancer only as a secret input.
    core = embedded.named("balancer-core")
    assert mockrun.is_secret(core.inputs["stdin"])


MISMATCH = r"""
import mockrun, pulumi_aws as aws
from onionstack import ExistingNetwork, OnionSite, OnionSiteArgs
from tests.stackmocks import demo_master_key

def program():
    mine = aws.ec2.Vpc("mine", cidr_block="10.1.0.0/16")
    other = aws.ec2.Vpc("other", cidr_block="10.2.0.0/16")
    pub = aws.ec2.Subnet("pub", vpc_id=mine.id, cidr_block="10.1.0.0/24", availability_zone="us-east-1a")
    stray = aws.ec2.Subnet("stray", vpc_id=other.id, cidr_block="10.2.0.0/24", availability_zone="us-east-1a")
    OnionSite("site", OnionSiteArgs.of(sites=[{"name": "news", "domain": "news.example.org"}],
                                       master_keys={"news": demo_master_key("news")}, admin_cidrs=["198.51.100.7/32"],
                                       network=ExistingNetwork(mine.id, [pub.id], [stray.id])))

mockrun.run_program({}, program=program, project="platform", secret_keys=[])
"""


def test_subnets_of_another_vpc_stop_the_program():
    """(In a fresh interpreter: the failed apply would otherwise surface again in a later
    mocked run of this process.)"""
    out = subprocess.run([sys.executable, "-c", MISMATCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert re.search(r"ExistingNetwork: private subnet subnet-\w+ is in VPC vpc-\w+, not in vpc_id vpc-\w+; "
                     r"give subnets of that VPC", out.stderr), out.stderr[-2000:]


def test_a_standby_balancer_needs_a_second_public_subnet():
    from infra.config import ConfigError
    from onionstack import ExistingNetwork, OnionSite, OnionSiteArgs

    def program():
        OnionSite("site", OnionSiteArgs.of(sites=[{"name": "news", "domain": "news.example.org"}],
                                           master_keys={"news": demo_master_key("news")}, admin_cidrs=ADMIN,
                                           balancer={"standby": True},
                                           network=ExistingNetwork("vpc-1", ["subnet-a"], ["subnet-b"])))

    with pytest.raises(ConfigError, match="second public subnet"):
        mockrun.run_program({}, program=program, project="platform", secret_keys=[])
    with pytest.raises(ConfigError, match="public_subnet_ids must be a non-empty list"):
        mockrun.run_program({}, project="platform", secret_keys=[], program=lambda: OnionSite(
            "site", OnionSiteArgs.of(sites=[{"name": "news", "domain": "news.example.org"}],
                                     master_keys={"news": demo_master_key("news")}, admin_cidrs=ADMIN,
                                     network=ExistingNetwork("vpc-1", [], ["subnet-b"]))))


def test_explicit_settings_are_the_stack_configs_keys():
    from infra.config import ConfigError, parse_config
    from onionstack import OnionSiteArgs

    key = demo_master_key("news")
    args = OnionSiteArgs.of(sites=[{"name": "news", "domain": "news.example.org"}], master_keys={"news": key},
                            admin_cidrs=ADMIN, tor_daemons_per_worker=3, nat_gateways="perAz")
    assert args.config == parse_config({"sites": [{"name": "news", "domain": "news.example.org"}],
                                        "masterKeys": {"news": key}, "adminCidrs": ADMIN,
                                        "torDaemonsPerWorker": 3, "natGateways": "perAz"})
    assert args.config.tor_daemons_per_worker == 3 and args.network is None
    with pytest.raises(ConfigError, match="unknown setting tor_daemons; accepted: .*tor_daemons_per_worker"):
        OnionSiteArgs.of(sites=[], master_keys={}, admin_cidrs=ADMIN, tor_daemons=3)
    with pytest.raises(ConfigError, match="adminCidrs"):
        OnionSiteArgs.of(sites=[{"name": "news", "domain": "news.example.org"}], master_keys={"news": key})


# ---------------------------------------------------------------- from the installed package
RUNNER = r"""
import importlib.util, json, runpy, sys
spec = importlib.util.spec_from_file_location("mockrun", sys.argv[1])
mockrun = importlib.util.module_from_spec(spec); sys.modules["mockrun"] = mockrun; spec.loader.exec_module(mockrun)
sys.path[:] = [p for p in sys.path if p != str(mockrun.ROOT)]  # mockrun put the checkout there: take it out
import onionstack, infra, nodes, onion
config = json.loads(sys.argv[3])
result = mockrun.run_program(config, project="platform", secret_keys=["platform:newsMasterKey"],
                             program=lambda: runpy.run_path(sys.argv[2], run_name="__main__"))
print(json.dumps({"modules": {m.__name__: m.__file__ for m in (onionstack, infra, nodes, onion)},
                  "counts": {k: v for k, v in result.counts().items()},
                  "sites": [r.name for r in result.of_type("onionstack:site:OnionSite")],
                  "onionUrl": result.outputs["onionUrl"]}))
"""


def test_the_installed_package_declares_the_site(tmp_path):
    """`pip install stack/` (here into a target directory, no dependencies: the venv has them),
    then the example program, copied out of the checkout, runs against what was installed."""
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(ROOT / "stack")],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert {"onionstack", "infra", "nodes", "onion"} <= set(installed), installed
    assert (target / "nodes" / "templates" / "worker" / "torrc.j2").is_file()
    assert (target / "onion" / "requirements.lock").is_file()  # what the balancer's venv is built from
    program = tmp_path / "platform" / "__main__.py"
    program.parent.mkdir()
    program.write_text((EXAMPLE / "__main__.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "mockrun.py"), str(program),
                          json.dumps(example_config())],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name, path in report["modules"].items():
        assert Path(path).is_relative_to(target), (name, path)
    counts = report["counts"]
    assert counts["aws:ec2/instance:Instance"] == 4 and counts["aws:ec2/vpc:Vpc"] == 1
    assert report["sites"] == ["news-onion"]
    from infra.config import onion_address_of

    assert report["onionUrl"] == f"http://{onion_address_of(demo_master_key('news'))}/"
