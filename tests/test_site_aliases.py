"""A stack deployed before nodes/ was reshaped (one OnionSite component, steps as
components) keeps every resource: each URN it holds (tests/fixtures/urns/, recorded from
the program at b5f323e with the engine's URN rule) is claimed by exactly one resource of
today's program, of the same type, directly or through an alias. Otherwise `pulumi up`
would replace everything, and fail on the protected data volumes.

The alias resolution is the engine's (pulumi/pulumi pkg/resource/deploy/step_generator.go,
`generateAliases` and `collapseAliasToUrn`): a resource's own URN first, then each alias
collapsed to a URN, then the aliases its parent matched, multiplied out. A parent's alias
counts only if the parent itself was matched through it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.stackmocks import minimal_config, prod_config, run
from tests.test_bootstrap_graph import three_site_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "urns"
CONFIGS = {
    "prod": prod_config,
    "three-sites": three_site_config,
    "minimal-nodb": lambda: minimal_config(workers=1, database={"enabled": False}, backup={"enabled": False}),
}
# Resources the reshaped program adds on purpose (they did not exist before).
NEW_TYPES = {"onionstack:site:OnionSite", "onionstack:nodes:WorkerSetup", "onionstack:nodes:WorkerDrain",
             "onionstack:nodes:BalancerPackage", "onionstack:nodes:BalancerCore", "onionstack:nodes:DatabaseSetup"}
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


def _parts(urn: str) -> tuple[str, str, str, str]:
    """(stack, project, qualified type, name)."""
    body = urn.removeprefix("urn:pulumi:")
    stack, project, qualified, name = body.split("::", 3)
    return stack, project, qualified, name


def _create_urn(name: str, type_: str, parent: str, project: str, stack: str) -> str:
    """resource.CreateURN: the parent's qualified type chain + "$" + type; the root stack
    contributes nothing."""
    qualified = type_
    if parent:
        parent_type = _parts(parent)[2]
        if parent_type != ROOT_STACK_TYPE:
            qualified = f"{parent_type}${type_}"
    return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"


def _collapse(resource, alias: dict) -> str:
    if "urn" in alias:
        return alias["urn"]
    stack, project, _, _ = _parts(resource.urn)
    parent = resource.parent
    if "parentUrn" in alias:
        parent = alias["parentUrn"]
    if alias.get("noParent"):
        parent = ""
    return _create_urn(alias.get("name", resource.name), alias.get("type", resource.type), parent,
                       alias.get("project", project), alias.get("stack", stack))


def _inherited(type_: str, name: str, parent_name: str, parent_alias: str) -> str:
    stack, project, qualified, alias_name = _parts(parent_alias)
    if name.startswith(parent_name):
        name = alias_name + name[len(parent_name):]
    return f"urn:pulumi:{stack}::{project}::{qualified}${type_}::{name}"


def claims(result, old: set[str]) -> dict[str, str]:
    """old URN -> the new resource URN that the engine would match to it."""
    matched_alias: dict[str, str] = {}  # new urn -> the alias (old urn) it matched through
    claimed: dict[str, str] = {}
    for r in result.resources:
        if r.type == ROOT_STACK_TYPE:
            continue
        candidates = [r.urn] + [_collapse(r, a) for a in r.aliases]
        if r.parent in matched_alias:
            parent_name = _parts(r.parent)[3]
            candidates.append(_inherited(r.type, r.name, parent_name, matched_alias[r.parent]))
            candidates += [_inherited(_parts(_collapse(r, a))[2].split("$")[-1], _parts(_collapse(r, a))[3],
                                      parent_name, matched_alias[r.parent]) for a in r.aliases]
        for urn in candidates:
            if urn in old:
                assert urn not in claimed, f"{urn} claimed by {claimed[urn]} and {r.urn}"
                claimed[urn] = r.urn
                if urn != r.urn:
                    matched_alias[r.urn] = urn
                break
    return claimed


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_resource_of_a_stack_deployed_before_keeps_its_state(name):
    old = {line for line in (FIXTURES / f"{name}.txt").read_text().splitlines() if line.startswith("urn:")}
    result = run(CONFIGS[name]())
    claimed = claims(result, old)
    assert sorted(old - set(claimed)) == []
    for old_urn, new_urn in claimed.items():
        assert _parts(old_urn)[2].split("$")[-1] == _parts(new_urn)[2].split("$")[-1], (old_urn, new_urn)
    # The site and step components are new by design (nothing they replace).
    new = {r.urn for r in result.resources if r.type != ROOT_STACK_TYPE} - set(claimed.values())
    assert {_parts(u)[2].split("$")[-1] for u in new} >= NEW_TYPES - {"onionstack:nodes:DatabaseSetup"}


def test_the_alias_check_catches_a_moved_resource():
    """Without the aliases the same check fails: a step's command that changed parent is
    not found, nor is anything under the site component."""
    result = run(prod_config())
    old = {line for line in (FIXTURES / "prod.txt").read_text().splitlines() if line.startswith("urn:")}
    stripped = type(result)(resources=[_without_aliases(r) for r in result.resources], outputs=result.outputs,
                            secret_outputs=result.secret_outputs, invokes=result.invokes, seconds=result.seconds)
    missing = old - set(claims(stripped, old))
    assert "urn:pulumi:prod::onionstack::onionstack:nodes:WorkerNode$command:remote:Command::worker-1-tor-nginx" in missing
    assert "urn:pulumi:prod::onionstack::onionstack:infra:Network::net" in missing


def _without_aliases(r):
    import copy

    clone = copy.copy(r)
    clone.aliases = ()
    return clone
