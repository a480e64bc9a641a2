"""The policy pack (policy/): each policy on passing and violating resource shapes, built as
pulumi-policy's own tests build them (ResourceValidationArgs / StackValidationArgs handed to
`policy.validate`), and the whole pack over every resource the mocked program declares, sent
through pulumi-policy's analyzer service the way the engine sends them (protobuf structs,
property dependencies, policy config): no violation there, and a changed resource is caught."""
from __future__ import annotations

import copy
import json

import pulumi.runtime
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import (PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions, ResourceValidationArgs,
                           StackValidationArgs)
from pulumi_policy.policy import _PolicyAnalyzerServicer

from policy import onionstack_policies as pack
from tests.stackmocks import minimal_config, prod_config, run

ADMIN = ["198.51.100.7/32", "2001:db8::/64"]
POLICIES = {p.name: p for p in pack.POLICIES}


def opts(protect: bool = False) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def urn(type_: str, name: str, stack: str = "prod") -> str:
    return f"urn:pulumi:{stack}::onionstack::{type_}::{name}"


def check(policy: str, type_: str, props: dict, *, name: str = "r", protect: bool = False,
          config: dict | None = None, stack: str = "prod") -> list[str]:
    """Violations a resource policy reports for one resource ('n/a: …' when not applicable)."""
    found: list[str] = []
    args = ResourceValidationArgs(type_, props, urn(type_, name, stack), name, opts(protect), None,
                                  config if config is not None else {"adminCidrs": ADMIN})
    try:
        POLICIES[policy].validate(args, lambda message, urn=None: found.append(message))
    except Exception as exc:  # noqa: BLE001 - not_applicable raises
        if type(exc).__name__ != "_NotApplicableError":
            raise
        found.append(f"n/a: {exc.reason}")
    return found


def res(type_: str, name: str, props: dict, deps: dict | None = None) -> PolicyResource:
    return PolicyResource(type_, props, urn(type_, name), name, opts(), None, None, [], deps or {})


def check_stack(policy: str, resources: list[PolicyResource]) -> list[str]:
    found: list[str] = []
    POLICIES[policy].validate(StackValidationArgs(resources, {}), lambda message, urn=None: found.append(message))
    return found


TAGS = {"project": "onionstack", "stack": "prod", "role": "worker", "Name": "onionstack-prod-worker-1"}


def sg(role: str) -> PolicyResource:
    return res(pack.SG, f"sg-{role}", {"tags": {**TAGS, "role": role}, "description": "x"})


def ingress(name: str, port: int, target: PolicyResource, *, cidr: str | None = None,
            source: PolicyResource | None = None, protocol: str = "tcp") -> PolicyResource:
    props = {"ipProtocol": protocol, "fromPort": float(port), "toPort": float(port)}
    deps = {"securityGroupId": [target]}
    if cidr:
        props["cidrIpv4" if ":" not in cidr else "cidrIpv6"] = cidr
    if source:
        props["referencedSecurityGroupId"] = "sg-0123"
        deps["referencedSecurityGroupId"] = [source]
    return res(pack.INGRESS_RULE, name, props, deps)


# ---------------------------------------------------------------- each policy, both ways

@pytest.mark.parametrize("type_, props", [
    (pack.INGRESS_RULE, {"ipProtocol": "tcp", "fromPort": 443.0, "toPort": 443.0, "cidrIpv4": "0.0.0.0/0"}),
    (pack.INGRESS_RULE, {"ipProtocol": "-1", "cidrIpv6": "::/0"}),
    (pack.LEGACY_RULE, {"type": "ingress", "protocol": "tcp", "fromPort": 80, "toPort": 80,
                        "cidrBlocks": ["10.0.0.0/8", "0.0.0.0/0"]}),
    (pack.SG, {"ingress": [{"protocol": "tcp", "fromPort": 80, "toPort": 80, "cidrBlocks": ["0.0.0.0/0"]}]}),
    (pack.DEFAULT_SG, {"ingress": [{"protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]}]}),
])
def test_no_world_ingress_violations(type_, props):
    assert any("admits the whole internet" in v for v in check("no-world-ingress", type_, props))


@pytest.mark.parametrize("type_, props", [
    (pack.INGRESS_RULE, {"ipProtocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrIpv4": "198.51.100.7/32"}),
    (pack.LEGACY_RULE, {"type": "egress", "protocol": "-1", "cidrBlocks": ["0.0.0.0/0"]}),   # egress is not ingress
    (pack.SG, {"egress": [{"protocol": "-1", "cidrBlocks": ["0.0.0.0/0"]}], "ingress": []}),
])
def test_no_world_ingress_passes(type_, props):
    assert check("no-world-ingress", type_, props) == []


def test_ssh_only_from_admin_cidrs():
    rule = {"ipProtocol": "tcp", "fromPort": 22.0, "toPort": 22.0}
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv4": "198.51.100.7/32"}) == []
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv6": "2001:db8::5/128"}) == []
    [v] = check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv4": "203.0.113.0/24"})
    assert "admits SSH from 203.0.113.0/24, which is not within adminCidrs" in v
    # a range that merely overlaps an admin CIDR is wider than it: refused
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv4": "198.51.100.0/24"})
    # a port range or "all traffic" that includes 22 is SSH too
    wide = {"ipProtocol": "tcp", "fromPort": 0.0, "toPort": 1024.0, "cidrIpv4": "192.0.2.1/32"}
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, wide)
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {"ipProtocol": "-1", "cidrIpv4": "192.0.2.1/32"})
    # other ports, and group sources, are other policies' business
    assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE,
                 {"ipProtocol": "tcp", "fromPort": 443.0, "toPort": 443.0, "cidrIpv4": "192.0.2.1/32"}) == []
    # no admin CIDRs known at all: refused rather than waved through
    [v] = check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv4": "198.51.100.7/32"}, config={})
    assert "no admin CIDRs are known" in v


def test_ssh_admin_cidrs_come_from_the_stack_config():
    """What the engine hands the pack (PULUMI_CONFIG -> pulumi.Config) is used without any
    policy config."""
    rule = {"ipProtocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrIpv4": "198.51.100.7/32"}
    pulumi.runtime.set_config("onionstack:adminCidrs", json.dumps(["198.51.100.0/28"]))
    try:
        assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, rule, config={}) == []
        assert check("ssh-only-from-admin-cidrs", pack.INGRESS_RULE, {**rule, "cidrIpv4": "198.51.100.99/32"},
                     config={})
    finally:
        pulumi.runtime.config.CONFIG.get().pop("onionstack:adminCidrs", None)


def test_ssh_only_via_the_balancer():
    balancer, worker, database = sg("balancer"), sg("worker"), sg("database")
    good = [balancer, worker, database,
            ingress("admin", 22, balancer, cidr="198.51.100.7/32"),
            ingress("jump-worker", 22, worker, source=balancer),
            ingress("jump-db", 22, database, source=balancer)]
    assert check_stack("ssh-only-via-the-balancer", good) == []
    bad = check_stack("ssh-only-via-the-balancer", good + [
        ingress("db-from-worker", 22, database, source=worker),
        ingress("admin-to-worker", 22, worker, cidr="198.51.100.7/32")])
    assert any("db-from-worker: admits SSH from the worker group" in v for v in bad)
    assert any("admin-to-worker: admits SSH from an address range into worker group" in v for v in bad)


def test_postgres_only_from_workers():
    worker, database, balancer = sg("worker"), sg("database"), sg("balancer")
    good = [worker, database, balancer, ingress("pg", 5432, database, source=worker),
            ingress("web", 443, balancer, source=worker)]
    assert check_stack("postgres-only-from-workers", good) == []
    bad = check_stack("postgres-only-from-workers", good + [
        ingress("pg-balancer", 5432, database, source=balancer),
        ingress("pg-cidr", 5432, database, cidr="10.42.0.0/16"),
        ingress("pg-worker-box", 5432, worker, source=worker),
        ingress("all-from-balancer", 0, database, source=balancer, protocol="-1")])
    assert any("pg-balancer: admits TCP 5432 from the balancer group" in v for v in bad)
    assert any("pg-cidr: admits TCP 5432 from 10.42.0.0/16" in v for v in bad)
    assert any("pg-worker-box: admits TCP 5432 into the worker group" in v for v in bad)
    assert any("all-from-balancer: admits TCP 5432 from the balancer group" in v for v in bad)
    # a rule whose groups are not this stack's resources cannot be vouched for
    stray = res(pack.INGRESS_RULE, "stray", {"ipProtocol": "tcp", "fromPort": 5432.0, "toPort": 5432.0,
                                             "referencedSecurityGroupId": "sg-0abc"})
    assert check_stack("postgres-only-from-workers", [stray])


@pytest.mark.parametrize("type_", [pack.INSTANCE, pack.LAUNCH_TEMPLATE])
def test_imdsv2_required(type_):
    assert check("imdsv2-required", type_, {"metadataOptions": {"httpTokens": "required"}}) == []
    assert check("imdsv2-required", type_, {"metadataOptions": {"httpTokens": "optional"}})
    assert check("imdsv2-required", type_, {})
    assert check("imdsv2-required", pack.VOLUME, {}) == []


def test_volumes_encrypted():
    assert check("volumes-encrypted", pack.VOLUME, {"encrypted": True}) == []
    assert check("volumes-encrypted", pack.VOLUME, {"encrypted": False})
    assert check("volumes-encrypted", pack.VOLUME, {})
    root = {"rootBlockDevice": {"encrypted": True}}
    assert check("volumes-encrypted", pack.INSTANCE, root) == []
    assert check("volumes-encrypted", pack.INSTANCE, {})                       # default: unencrypted
    assert check("volumes-encrypted", pack.INSTANCE, {**root, "ebsBlockDevices": [{"encrypted": False}]})
    assert check("volumes-encrypted", pack.LAUNCH_TEMPLATE,
                 {"blockDeviceMappings": [{"ebs": {"encrypted": "true"}}]}) == []
    assert check("volumes-encrypted", pack.LAUNCH_TEMPLATE,
                 {"blockDeviceMappings": [{"ebs": {"encrypted": "false"}}]})


def test_tags():
    vpc = "aws:ec2/vpc:Vpc"
    assert check("tags", vpc, {"tags": {**TAGS, "role": "network"}}) == []
    [v] = check("tags", vpc, {"tags": {"project": "onionstack", "stack": "prod"}})
    assert "lacks the tag(s) role, Name" in v
    assert check("tags", vpc, {"tags": {**TAGS, "stack": "staging"}})            # the URN says prod
    assert check("tags", vpc, {"tags": {**TAGS, "Name": "web-1"}})
    assert check("tags", vpc, {"tags": {**TAGS, "project": "other"}})
    # an instance's root volume carries the tags too
    assert check("tags", pack.INSTANCE, {"tags": TAGS, "rootBlockDevice": {"tags": TAGS}}) == []
    assert any("root volume lacks" in v for v in
               check("tags", pack.INSTANCE, {"tags": TAGS, "rootBlockDevice": {"encrypted": True}}))
    # resources that take no tags are not asked for them
    assert check("tags", "aws:ec2/routeTableAssociation:RouteTableAssociation", {}) == []
    assert check("tags", "command:remote:Command", {}) == []


def test_data_is_protected():
    volume_key, vault_key, logs_key = (res("aws:kms/key:Key", n, {}) for n in ("ebs-key", "backup-key", "logs-key"))
    volume = res(pack.VOLUME, "data", {"encrypted": True}, {"kmsKeyId": [volume_key]})
    vault = res("aws:backup/vault:Vault", "vault", {}, {"kmsKeyArn": [vault_key]})
    logs = res("aws:cloudwatch/logGroup:LogGroup", "logs", {}, {"kmsKeyId": [logs_key]})
    resources = [volume_key, vault_key, logs_key, volume, vault, logs]

    def protect(*names):
        for r in resources:
            r.opts.protect = r.name in names
        found: list[str] = []
        try:
            POLICIES["data-is-protected"].validate(StackValidationArgs(resources, config),
                                                   lambda message, urn=None: found.append(message))
        except Exception as exc:  # noqa: BLE001 - not_applicable raises
            assert type(exc).__name__ == "_NotApplicableError"
            found.append(f"n/a: {exc.reason}")
        return found

    config: dict = {}
    assert protect("ebs-key", "backup-key", "data", "vault") == []    # the log key holds no data
    missing = protect("data", "vault")
    assert len(missing) == 2 and all("is not protected" in v for v in missing)
    assert any(v.startswith("ebs-key:") for v in missing) and any(v.startswith("backup-key:") for v in missing)
    assert len(protect("ebs-key", "backup-key")) == 2                   # the volume and the vault
    config = {"protectData": False}
    assert protect() == ["n/a: onionstack:protectData is false: data resources are deliberately deletable"]


# ---------------------------------------------------------------- the mocked program, as the engine sends it

def servicer(config: dict | None = None) -> _PolicyAnalyzerServicer:
    svc = _PolicyAnalyzerServicer("onionstack-security", "0.0.1", pack.POLICIES, pack.ENFORCEMENT)
    policy_config = {}
    for name, props in (config or {}).items():
        struct = struct_pb2.Struct()
        struct.update(props)
        policy_config[name] = proto.PolicyConfig(enforcementLevel=proto.MANDATORY, properties=struct)
    svc.Configure(proto.ConfigureAnalyzerRequest(policyConfig=policy_config), None)
    return svc


def _struct(value: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(json.loads(json.dumps(value, default=str)), struct_pb2.Struct())


def analyze(result, config: dict, mutate=None) -> list[tuple[str, str, str]]:
    """(policy, resource name, message) for every diagnostic the pack reports on the mocked
    program's resources (each resource through Analyze, then the stack through AnalyzeStack)."""
    svc = servicer(config)
    resources = [r for r in result.resources if r.custom]
    if mutate:
        resources = [mutate(copy.deepcopy(r)) for r in resources]
    names = {r.urn: r.name for r in resources}
    out = []
    stack = []
    for r in resources:
        opts_ = proto.AnalyzerResourceOptions(protect=r.protect, parent=r.parent)
        req = proto.AnalyzeRequest(type=r.type, properties=_struct(r.inputs), urn=r.urn, name=r.name, options=opts_)
        for d in svc.Analyze(req, None).diagnostics:
            out.append((d.policyName, r.name, d.message))
        stack.append(proto.AnalyzerResource(
            type=r.type, properties=_struct(r.inputs), urn=r.urn, name=r.name, options=opts_, parent=r.parent,
            dependencies=list(r.dependencies),
            propertyDependencies={k: proto.AnalyzerPropertyDependencies(urns=list(v))
                                  for k, v in r.property_dependencies.items()}))
    for d in svc.AnalyzeStack(proto.AnalyzeStackRequest(resources=stack), None).diagnostics:
        out.append((d.policyName, names.get(d.urn, ""), d.message))
    return out


CONFIGS = {
    "minimal": lambda: minimal_config(adminCidrs=ADMIN),
    "prod": prod_config,
    "no-database": lambda: minimal_config(database={"enabled": False}),
    "three-workers": lambda: minimal_config(workers=3),
}


def admin_of(config: dict) -> list[str]:
    return config.get("adminCidrs") or config["onionstack:adminCidrs"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_mocked_program_passes_every_policy(name):
    config = CONFIGS[name]()
    result = run(config)
    assert analyze(result, {"ssh-only-from-admin-cidrs": {"adminCidrs": admin_of(config)}}) == []
    # the stack policies saw the rules and their groups' roles (not a vacuous pass)
    rules = [r for r in result.resources if r.type == pack.INGRESS_RULE]
    assert rules and all(r.property_dependencies.get("securityGroupId") for r in rules)


def test_protect_data_false_makes_protection_not_applicable():
    result = run(minimal_config(protectData=False))
    assert analyze(result, {"ssh-only-from-admin-cidrs": {"adminCidrs": ["198.51.100.7/32"]},
                            "data-is-protected": {"protectData": False}}) == []
    found = analyze(result, {"ssh-only-from-admin-cidrs": {"adminCidrs": ["198.51.100.7/32"]}})
    assert {p for p, *_ in found} == {"data-is-protected"} and len(found) >= 5


def _open_to_world(r):
    if r.type == pack.INGRESS_RULE and r.name == "access-balancer-ssh-admin-0":
        r.inputs["cidrIpv4"] = "0.0.0.0/0"
    return r


def _imds_optional(r):
    if r.type == pack.INSTANCE:
        r.inputs["metadataOptions"] = {**r.inputs["metadataOptions"], "httpTokens": "optional"}
    return r


def _untagged_volume(r):
    if r.type == pack.VOLUME:
        r.inputs["tags"] = {k: v for k, v in r.inputs["tags"].items() if k != "role"}
        r.inputs["encrypted"] = False
    return r


def _pg_from_balancer(r):
    if r.type == pack.INGRESS_RULE and int(r.inputs.get("fromPort", 0)) == 5432:
        balancer_sg = next(u for u in r.property_dependencies["securityGroupId"])  # the database's group
        r.property_dependencies = {**r.property_dependencies,
                                   "referencedSecurityGroupId": (balancer_sg.replace("database", "balancer"),)}
    return r


@pytest.mark.parametrize("mutate, expected", [
    (_open_to_world, {"no-world-ingress", "ssh-only-from-admin-cidrs"}),
    (_imds_optional, {"imdsv2-required"}),
    (_untagged_volume, {"tags", "volumes-encrypted"}),
    (_pg_from_balancer, {"postgres-only-from-workers"}),
])
def test_a_changed_program_is_caught(mutate, expected):
    result = run(minimal_config())
    found = analyze(result, {"ssh-only-from-admin-cidrs": {"adminCidrs": ["198.51.100.7/32"]}}, mutate)
    assert {p for p, *_ in found} == expected, found
