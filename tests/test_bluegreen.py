"""Blue/green (runbook "Wholesale Update"): `balancer.publish` is the only switch between
the stack that publishes and a standby fleet with the same master keys. Flipping it
changes exactly the `publish` line of the balancer core's config, re-runs the balancer
core step (its triggers change), and touches nothing else."""
from __future__ import annotations

import yaml

from nodes.payload import unpack
from nodes.roles import BALANCER_CONFIG, BALANCER_STATE_DIR
from tests.stackmocks import prod_config, run

COMMAND = "command:remote:Command"


def _core(result):
    files = unpack(result.named("balancer-core").input("stdin"))
    return files[BALANCER_CONFIG.lstrip("/")].content, files


def test_publish_switch_changes_exactly_the_publish_line():
    blue = run(prod_config())
    green = run(prod_config(balancer={"publish": False}))
    blue_text, blue_files = _core(blue)
    green_text, green_files = _core(green)
    diff = [(a, b) for a, b in zip(blue_text.splitlines(), green_text.splitlines()) if a != b]
    assert diff == [("publish: true", "publish: false")]
    assert len(blue_text.splitlines()) == len(green_text.splitlines())
    # Parsed: equal except `publish`.
    b, g = yaml.safe_load(blue_text), yaml.safe_load(green_text)
    assert b.pop("publish") is True and g.pop("publish") is False and b == g
    # Same master keys on both sides: the standby can take over the same onion addresses.
    keys = lambda files: {k: v for k, v in files.items() if k.startswith((BALANCER_STATE_DIR + "/keys").lstrip("/"))}  # noqa: E731
    assert keys(blue_files) == keys(green_files) and len(keys(blue_files)) == 2
    assert blue.outputs["sites"] == green.outputs["sites"]
    assert blue.outputs["balancerPublishes"] is True and green.outputs["balancerPublishes"] is False


def test_publish_switch_reruns_only_the_balancer_core():
    blue = run(prod_config())
    green = run(prod_config(balancer={"publish": False}))
    changed = []
    for step in blue.of_type(COMMAND):
        other = green.named(step.name)
        if step.input("triggers") != other.input("triggers"):
            changed.append(step.name)
    # The core step is replaced (triggers change: pulumi-command replaces on triggers) and
    # so re-runs its create; workers, database and the drains are untouched.
    assert changed == ["balancer-core"]
    for step in blue.of_type(COMMAND):
        if step.name != "balancer-core":
            assert step.input("stdin") == green.named(step.name).input("stdin"), step.name


def test_switching_back_restores_the_original_triggers():
    """blue -> standby -> blue again: the config returns to the same bytes, so the step's
    triggers are the original ones (a second `up` after switching back is a no-op)."""
    a = run(prod_config())
    b = run(prod_config(balancer={"publish": True}))
    assert a.named("balancer-core").input("triggers") == b.named("balancer-core").input("triggers")
    assert _core(a)[0] == _core(b)[0]
