"""Open SSH to the balancer for one CI deploy, from the runner's own address only, and
close it again (docs/operations.md, "How a deploy reaches the machines").

    python -m ci.ssh_window open  --group sg-... [--address 203.0.113.9] [--run ID]
    python -m ci.ssh_window close --group sg-... [--run ID]

The group is the stack's `deployerSecurityGroupId`: attached to the balancer, with no
rules Pulumi manages. `open` adds exactly one rule, TCP 22 from one address (/32, or
/128), described `onionstack-deploy run <ID>`; first it removes such rules left by other
runs (a runner that died before its closing step ran; deploys run one at a time). `close`
removes this run's rule and succeeds when it is already gone. Anything wider than one
address is refused. ID defaults to GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT; the address to what
https://checkip.amazonaws.com reports for the runner.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import urllib.request
from typing import Callable, Optional

SSH = 22
PREFIX = "onionstack-deploy run "
CHECKIP = "https://checkip.amazonaws.com"
GROUP_RE = re.compile(r"^sg-[0-9a-f]{8,17}$")
RUN_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Errors that mean "the rule (or its whole group) is not there any more".
GONE = {"InvalidPermission.NotFound", "InvalidSecurityGroupRuleId.NotFound", "InvalidGroup.NotFound"}


class WindowError(Exception):
    """A refusal: the message says what and why."""


def description(run: str) -> str:
    if not RUN_RE.match(run):
        raise WindowError(f"run id {run!r}: letters, digits, '.', '_' and '-' only, at most 64")
    return PREFIX + run


def single_address(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The one-address network of `address`; a wider network is refused."""
    try:
        net = ipaddress.ip_network(address.strip(), strict=True)
    except ValueError as exc:
        raise WindowError(f"{address!r} is not an IP address ({exc})") from None
    if net.prefixlen != net.max_prefixlen:
        raise WindowError(f"{address} is {net.num_addresses} addresses: the window opens for one "
                          f"(/{net.max_prefixlen}), the runner's own")
    return net


def runner_address(fetch: Callable[[str], bytes] = lambda url: urllib.request.urlopen(url, timeout=20).read()
                   ) -> str:
    """The runner's public address, as AWS sees it."""
    text = fetch(CHECKIP).decode("ascii", "replace").strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise WindowError(f"{CHECKIP} answered {text[:60]!r}, not an address") from None


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _check_group(group: str) -> None:
    if not GROUP_RE.match(group):
        raise WindowError(f"{group!r} is not a security group id (sg-...)")


def _our_rules(ec2, group: str) -> list[dict]:
    pages = ec2.get_paginator("describe_security_group_rules").paginate(
        Filters=[{"Name": "group-id", "Values": [group]}])
    return [r for page in pages for r in page["SecurityGroupRules"]
            if not r["IsEgress"] and r.get("Description", "").startswith(PREFIX)]


def _revoke(ec2, group: str, rule_ids: list[str]) -> int:
    if not rule_ids:
        return 0
    try:
        ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=rule_ids)
    except Exception as exc:                      # botocore ClientError, by code
        if _code(exc) not in GONE:
            raise
        return 0
    return len(rule_ids)


def open_window(ec2, group: str, address: str, run: str, log: Callable[[str], None] = print) -> str:
    """Add this run's one rule (after removing other runs' leftovers); its rule id."""
    _check_group(group)
    net = single_address(address)
    desc = description(run)
    leftovers = [r["SecurityGroupRuleId"] for r in _our_rules(ec2, group) if r.get("Description") != desc]
    if _revoke(ec2, group, leftovers):
        log(f"ssh-window: removed {len(leftovers)} rule(s) left by earlier runs from {group}")
    ranges = ({"IpRanges": [{"CidrIp": str(net), "Description": desc}]} if net.version == 4
              else {"Ipv6Ranges": [{"CidrIpv6": str(net), "Description": desc}]})
    permission = {"IpProtocol": "tcp", "FromPort": SSH, "ToPort": SSH, **ranges}
    try:
        answer = ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[permission])
        (rule,) = answer["SecurityGroupRules"]
        rule_id = rule["SecurityGroupRuleId"]
    except Exception as exc:
        if _code(exc) != "InvalidPermission.Duplicate":
            raise
        # this run opened it already (a retried step)
        (rule_id,) = [r["SecurityGroupRuleId"] for r in _our_rules(ec2, group) if r.get("Description") == desc]
    log(f"ssh-window: opened TCP {SSH} from {net} in {group} ({rule_id}, {desc})")
    return rule_id


def close_window(ec2, group: str, run: str, log: Callable[[str], None] = print) -> int:
    """Remove this run's rule; 0 when it is already gone (or the group is)."""
    _check_group(group)
    desc = description(run)
    try:
        mine = [r["SecurityGroupRuleId"] for r in _our_rules(ec2, group) if r.get("Description") == desc]
    except Exception as exc:
        if _code(exc) not in GONE:
            raise
        mine = []
    removed = _revoke(ec2, group, mine)
    log(f"ssh-window: closed ({removed} rule(s) removed from {group})" if removed
        else f"ssh-window: nothing to close in {group} (already gone)")
    return removed


def default_run() -> Optional[str]:
    run_id, attempt = os.environ.get("GITHUB_RUN_ID"), os.environ.get("GITHUB_RUN_ATTEMPT", "1")
    return f"{run_id}-{attempt}" if run_id else None


def main(argv: Optional[list[str]] = None, ec2=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ci.ssh_window", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["open", "close"])
    ap.add_argument("--group", required=True, help="the stack's deployerSecurityGroupId")
    ap.add_argument("--address", help=f"the one address to admit (default: what {CHECKIP} says)")
    ap.add_argument("--run", default=default_run(), help="this run's id (default GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT)")
    args = ap.parse_args(argv)
    if not args.run:
        ap.error("--run is needed outside GitHub Actions")
    if ec2 is None:
        import boto3

        ec2 = boto3.client("ec2")
    try:
        if args.action == "open":
            open_window(ec2, args.group, args.address or runner_address(), args.run)
        else:
            close_window(ec2, args.group, args.run)
    except WindowError as exc:
        print(f"ssh-window: refused: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
