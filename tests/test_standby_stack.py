"""`balancer.standby: true`: a second balancer in another zone, with the same master keys and
instances, whose core config says `standby: true` (it uploads only after a takeover); the
primary is unchanged."""
from __future__ import annotations

import pytest
import yaml

from infra.config import ConfigError, parse_config
from nodes.payload import unpack
from nodes.roles import BALANCER_CONFIG, BALANCER_STATE_DIR
from tests.stackmocks import prod_config, run


def _core(result, name):
    files = unpack(result.named(name).input("stdin"))
    return yaml.safe_load(files[BALANCER_CONFIG.lstrip("/")].content), files


def test_standby_balancer_in_another_zone_with_the_same_keys():
    plain = run(prod_config())
    both = run(prod_config(balancer={"standby": True}))
    assert not [r for r in plain.resources if "standby" in r.name]
    primary, primary_files = _core(both, "balancer-core")
    standby, standby_files = _core(both, "balancer-standby-core")
    assert "standby" not in primary and standby["standby"] is True
    assert primary == _core(plain, "balancer-core")[0]          # the primary is unchanged
    assert {k: v for k, v in standby.items() if k != "standby"} == primary
    keys = lambda files: {k: v for k, v in files.items()  # noqa: E731
                          if k.startswith((BALANCER_STATE_DIR + "/keys").lstrip("/"))}
    assert keys(standby_files) == keys(primary_files) and len(keys(primary_files)) == 2
    subnet = lambda r: r.input("subnetId")  # noqa: E731
    a, b = both.named("balancer-instance"), both.named("balancer-standby-instance")
    assert subnet(a) != subnet(b)                                 # another zone's public subnet
    assert b.input("iamInstanceProfile") == a.input("iamInstanceProfile")  # may put its metrics too
    assert "standbyBalancerPublicIp" in both.outputs and "sshStandbyBalancer" in both.outputs
    # every instance carries its worker's name: the per-worker alarms' dimension
    workers = {i.get("worker") for fe in primary["frontends"] for i in fe["instances"]}
    assert workers == {"worker-1", "worker-2", "worker-3"}


def test_standby_needs_two_zones():
    cfg = prod_config(balancer={"standby": True}, availabilityZones=1)
    raw = {k.removeprefix("onionstack:"): v for k, v in cfg.items() if k.startswith("onionstack:")}
    with pytest.raises(ConfigError, match=r"balancer\.standby.*availabilityZones >= 2"):
        parse_config(raw)
