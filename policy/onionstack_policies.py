"""onionstack's security invariants as Pulumi policies (pulumi-policy), run by
`pulumi preview --policy-pack policy` against what the program is about to deploy:

  no-world-ingress            no ingress rule admits 0.0.0.0/0 or ::/0
  ssh-only-from-admin-cidrs   SSH from an address range only from within onionstack:adminCidrs
  ssh-only-via-the-balancer   SSH from a security group only from the balancer's (the jump host)
  postgres-only-from-workers  TCP 5432 only into the database's group, only from the workers' group
  imdsv2-required             instances and launch templates require IMDSv2 tokens
  volumes-encrypted           every EBS volume (separate, root or in a launch template) encrypted
  tags                        every taggable AWS resource carries project, stack, role and Name
  data-is-protected           volumes, backup vaults and their KMS keys are `protect`ed (protectData)

Stack config (onionstack:adminCidrs, onionstack:protectData) reaches a policy pack through
the engine (PULUMI_CONFIG); a policy's own config (`--policy-pack-config`) overrides it.
Roles are the `role` tags of the security groups a rule depends on (resolved through the
rule's property dependencies, so it works in a preview before any group has an id).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import ipaddress
import json
from typing import Any, Iterable

from pulumi_policy import (EnforcementLevel, PolicyConfigSchema, ReportViolation, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy)

PROJECT = "onionstack"
SG = "aws:ec2/securityGroup:SecurityGroup"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"   # the VPC's own, inline rules only
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
VOLUME = "aws:ebs/volume:Volume"
KMS_KEY = "aws:kms/key:Key"
DATA_TYPES = (VOLUME, "aws:backup/vault:Vault")
DATA_KEY_PROPS = ("kmsKeyId", "kmsKeyArn")   # a volume's and a vault's encryption key
REQUIRED_TAGS = ("project", "stack", "role", "Name")
SSH, POSTGRES = 22, 5432


# ---------------------------------------------------------------- config

def _stack_config(key: str) -> Any:
    """onionstack:<key> from the stack config the engine hands the pack (JSON decoded)."""
    import pulumi

    try:
        text = pulumi.Config(PROJECT).get(key)
    except Exception:  # noqa: BLE001 - no runtime settings outside an engine run
        return None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def admin_cidrs(config: dict) -> list[str] | None:
    value = config.get("adminCidrs")
    if value is None:
        value = _stack_config("adminCidrs")
    if isinstance(value, str):  # comma-separated, as `pulumi new`'s prompt stores it
        value = [part.strip() for part in value.split(",") if part.strip()]
    return list(value) if isinstance(value, (list, tuple)) and value else None


def protect_data(config: dict) -> bool:
    value = config.get("protectData")
    if value is None:
        value = _stack_config("protectData")
    return value is not False and str(value).lower() != "false"


# ---------------------------------------------------------------- ingress rules

def _port(value: Any) -> int | None:
    return None if value is None else int(float(value))


class Rule:
    """One ingress permission in any of the three shapes AWS resources give it."""

    def __init__(self, protocol: Any, from_port: Any, to_port: Any, cidrs: Iterable[str],
                 source_group: Any = None) -> None:
        self.protocol = str(protocol if protocol is not None else "").lower()
        self.from_port, self.to_port = _port(from_port), _port(to_port)
        self.cidrs = [c for c in cidrs if c]
        self.source_group = source_group

    def admits_tcp(self, port: int) -> bool:
        if self.protocol in ("-1", "all"):
            return True                      # every protocol and port
        if self.protocol not in ("tcp", "6"):
            return False
        lo = self.from_port if self.from_port is not None else 0
        hi = self.to_port if self.to_port is not None else 65535
        return lo <= port <= hi


def ingress_rules(resource_type: str, props) -> list[Rule]:
    if resource_type == INGRESS_RULE:
        return [Rule(props.get("ipProtocol"), props.get("fromPort"), props.get("toPort"),
                     [props.get("cidrIpv4"), props.get("cidrIpv6")], props.get("referencedSecurityGroupId"))]
    if resource_type == LEGACY_RULE and props.get("type") == "ingress":
        return [Rule(props.get("protocol"), props.get("fromPort"), props.get("toPort"),
                     list(props.get("cidrBlocks") or []) + list(props.get("ipv6CidrBlocks") or []),
                     props.get("sourceSecurityGroupId"))]
    if resource_type in (SG, DEFAULT_SG):
        return [Rule(r.get("protocol"), r.get("fromPort"), r.get("toPort"),
                     list(r.get("cidrBlocks") or []) + list(r.get("ipv6CidrBlocks") or []),
                     (r.get("securityGroups") or [None])[0])
                for r in props.get("ingress") or []]
    return []


def _network(cidr: str):
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


def _is_world(cidr: str) -> bool:
    net = _network(cidr)
    return net is not None and net.prefixlen == 0


def validate_no_world_ingress(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for rule in ingress_rules(args.resource_type, args.props):
        for cidr in rule.cidrs:
            if _is_world(cidr):
                report_violation(f"{args.name}: ingress from {cidr} admits the whole internet; onion services "
                                 "need no inbound port, and SSH is for adminCidrs only")


def validate_ssh_from_admin_cidrs(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    rules = [r for r in ingress_rules(args.resource_type, args.props) if r.admits_tcp(SSH) and r.cidrs]
    if not rules:
        return
    allowed = admin_cidrs(args.get_config())
    if not allowed:
        report_violation(f"{args.name}: admits SSH from {', '.join(c for r in rules for c in r.cidrs)}, and no "
                         f"admin CIDRs are known to check it against (set {PROJECT}:adminCidrs)")
        return
    admin = [n for n in (_network(c) for c in allowed) if n is not None]
    for rule in rules:
        for cidr in rule.cidrs:
            net = _network(cidr)
            if net is None or not any(net.version == a.version and net.subnet_of(a) for a in admin):
                report_violation(f"{args.name}: admits SSH from {cidr}, which is not within adminCidrs "
                                 f"({', '.join(allowed)})")


# ---------------------------------------------------------------- rules by role (stack)

def _role(group) -> str | None:
    tags = group.props.get("tags") or {}
    return tags.get("role")


def _groups(resource, prop: str) -> list:
    return [d for d in (resource.property_dependencies or {}).get(prop, []) if d.resource_type == SG]


def _stack_rules(args: StackValidationArgs):
    """(resource, rule, target roles, source roles) for every ingress permission of the stack."""
    for r in args.resources:
        if r.resource_type in (SG, DEFAULT_SG):
            for rule in ingress_rules(r.resource_type, r.props):
                # An inline rule's source groups are ids: roles are not resolvable.
                yield r, rule, [_role(r)], [None] if rule.source_group else []
        elif r.resource_type in (INGRESS_RULE, LEGACY_RULE):
            source_prop = "referencedSecurityGroupId" if r.resource_type == INGRESS_RULE else "sourceSecurityGroupId"
            for rule in ingress_rules(r.resource_type, r.props):
                targets = [_role(g) for g in _groups(r, "securityGroupId")] or [None]
                sources = [_role(g) for g in _groups(r, source_prop)] or ([None] if rule.source_group else [])
                yield r, rule, targets, sources


def validate_ssh_via_balancer(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for r, rule, targets, sources in _stack_rules(args):
        if not rule.admits_tcp(SSH):
            continue
        if rule.cidrs and targets != ["balancer"]:
            report_violation(f"{r.name}: admits SSH from an address range into {targets[0] or 'an unknown'} "
                             "group; only the balancer (the jump host) takes SSH from adminCidrs", r.urn)
        for source in sources:
            if source != "balancer":
                report_violation(f"{r.name}: admits SSH from the {source or 'unknown'} group; machines take SSH "
                                 "only from the balancer's group (the jump host)", r.urn)


def validate_postgres_from_workers(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for r, rule, targets, sources in _stack_rules(args):
        if not rule.admits_tcp(POSTGRES):
            continue
        if targets != ["database"]:
            report_violation(f"{r.name}: admits TCP {POSTGRES} into the {targets[0] or 'unknown'} group; only "
                             "the database's group takes PostgreSQL connections", r.urn)
        if rule.cidrs:
            report_violation(f"{r.name}: admits TCP {POSTGRES} from {', '.join(rule.cidrs)}; PostgreSQL is for "
                             "the workers' group only", r.urn)
        for source in sources:
            if source != "worker":
                report_violation(f"{r.name}: admits TCP {POSTGRES} from the {source or 'unknown'} group; "
                                 "PostgreSQL is for the workers' group only", r.urn)


# ---------------------------------------------------------------- machines and volumes

def validate_imdsv2(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in (INSTANCE, LAUNCH_TEMPLATE):
        return
    tokens = (args.props.get("metadataOptions") or {}).get("httpTokens")
    if tokens != "required":
        report_violation(f"{args.name}: metadataOptions.httpTokens is {tokens!r}; set it to 'required' "
                         "(IMDSv2 only: no credential theft through a forged metadata request)")


def _encrypted(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def validate_encrypted(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props, name = args.props, args.name
    if args.resource_type == VOLUME and not _encrypted(props.get("encrypted")):
        report_violation(f"{name}: EBS volume is not encrypted; set encrypted: true")
    elif args.resource_type == INSTANCE:
        root = props.get("rootBlockDevice")
        if not root or not _encrypted(root.get("encrypted")):
            report_violation(f"{name}: the root volume is not encrypted; set rootBlockDevice.encrypted: true")
        for i, dev in enumerate(props.get("ebsBlockDevices") or []):
            if not _encrypted(dev.get("encrypted")):
                report_violation(f"{name}: ebsBlockDevices[{i}] is not encrypted")
    elif args.resource_type == LAUNCH_TEMPLATE:
        for i, mapping in enumerate(props.get("blockDeviceMappings") or []):
            ebs = mapping.get("ebs")
            if ebs is not None and not _encrypted(ebs.get("encrypted")):
                report_violation(f"{name}: blockDeviceMappings[{i}].ebs is not encrypted")


# ---------------------------------------------------------------- tags

@functools.lru_cache(maxsize=None)
def is_taggable(resource_type: str) -> bool:
    """Whether the pulumi-aws resource behind the type token takes `tags` (read from the SDK,
    so a new resource type in the program is checked without a list to keep up to date)."""
    try:
        pkg, module_path, cls = resource_type.split(":")
    except ValueError:
        return False
    if pkg != "aws":
        return False
    module = module_path.split("/")[0]
    try:
        mod = importlib.import_module("pulumi_aws" if module == "index" else f"pulumi_aws.{module}")
        klass = getattr(mod, cls)
    except (ImportError, AttributeError):
        return False
    init = getattr(klass, "_internal_init", None)
    return init is not None and "tags" in inspect.signature(init).parameters


def _stack_of(urn: str) -> str | None:
    parts = urn.split("::")
    return parts[0].rsplit(":", 1)[-1] if urn.startswith("urn:pulumi:") and len(parts) > 1 else None


def _tag_problems(tags: Any, stack: str | None, what: str, required=REQUIRED_TAGS) -> list[str]:
    tags = dict(tags or {})
    missing = [k for k in required if not tags.get(k)]
    problems = [f"{what} lacks the tag(s) {', '.join(missing)}"] if missing else []
    if tags.get("project") and tags["project"] != PROJECT:
        problems.append(f"{what} has project={tags['project']!r}, not {PROJECT!r}")
    if stack and tags.get("stack") and tags["stack"] != stack:
        problems.append(f"{what} has stack={tags['stack']!r} in stack {stack!r}")
    if stack and tags.get("Name") and not str(tags["Name"]).startswith(f"{PROJECT}-{stack}-"):
        problems.append(f"{what} has Name={tags['Name']!r}, not {PROJECT}-{stack}-…")
    return problems


def validate_tags(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not is_taggable(args.resource_type):
        return
    stack = _stack_of(args.urn)
    problems = _tag_problems(args.props.get("tags"), stack, args.name)
    if args.resource_type == INSTANCE:
        root = args.props.get("rootBlockDevice") or {}
        # the root volume needs no Name of its own
        problems += _tag_problems(root.get("tags"), stack, f"{args.name}'s root volume",
                                  required=("project", "stack", "role"))
    for p in problems:
        report_violation(f"{p} (cost, ownership and the backup selection go by tags)")


# ---------------------------------------------------------------- protect

def validate_protected(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """What holds data: EBS volumes, backup vaults (their recovery points), and the KMS keys
    those are encrypted with (without the key the data is unreadable). Other keys (flow
    logs, alarms) are not data."""
    if not protect_data(args.get_config()):
        args.not_applicable(f"{PROJECT}:protectData is false: data resources are deliberately deletable")
    data = [r for r in args.resources if r.resource_type in DATA_TYPES]
    keys = [k for r in data for prop in DATA_KEY_PROPS
            for k in (r.property_dependencies or {}).get(prop, []) if k.resource_type == KMS_KEY]
    seen = set()
    for r in data + keys:
        if r.urn in seen:
            continue
        seen.add(r.urn)
        if not r.opts.protect:
            report_violation(f"{r.name}: holds data (or the key to it) and is not protected; `pulumi destroy` "
                             f"would delete it (keep {PROJECT}:protectData true)", r.urn)


# ---------------------------------------------------------------- the pack

def _schema(**props) -> PolicyConfigSchema:
    return PolicyConfigSchema(properties=props)


POLICIES = [
    ResourceValidationPolicy(
        "no-world-ingress", "No security group rule admits traffic from anywhere (0.0.0.0/0 or ::/0).",
        validate_no_world_ingress),
    ResourceValidationPolicy(
        "ssh-only-from-admin-cidrs", "SSH from an address range only from within the stack's adminCidrs.",
        validate_ssh_from_admin_cidrs,
        config_schema=_schema(adminCidrs={"type": "array", "items": {"type": "string"}})),
    StackValidationPolicy(
        "ssh-only-via-the-balancer",
        "SSH from address ranges only into the balancer; between machines only from the balancer's group.",
        validate_ssh_via_balancer),
    StackValidationPolicy(
        "postgres-only-from-workers", "TCP 5432 only into the database's group and only from the workers' group.",
        validate_postgres_from_workers),
    ResourceValidationPolicy(
        "imdsv2-required", "Every instance and launch template requires IMDSv2 (httpTokens: required).",
        validate_imdsv2),
    ResourceValidationPolicy(
        "volumes-encrypted", "Every EBS volume is encrypted: separate volumes, root volumes, launch templates.",
        validate_encrypted),
    ResourceValidationPolicy(
        "tags", "Every taggable AWS resource carries the project, stack, role and Name tags.", validate_tags),
    StackValidationPolicy(
        "data-is-protected",
        "Volumes, backup vaults and the KMS keys they are encrypted with are protected from `pulumi destroy`.",
        validate_protected, config_schema=_schema(protectData={"type": "boolean"})),
]
ENFORCEMENT = EnforcementLevel.MANDATORY
