"""The balancer: public subnet, public address, tor + the onion balancer core; SSH jump host."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from nodes.instance import InstanceArgs, Node
from nodes.remote import SshTarget


@dataclass(frozen=True)
class BalancerNodeArgs:
    instance: InstanceArgs  # public_ip=True, a public subnet


class BalancerNode(Node):
    """Declares `public_ip` (the address admins and every step dial) besides Node's."""

    public_ip: pulumi.Output[str]

    def __init__(self, name: str, args: BalancerNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if not args.instance.public_ip:
            raise ValueError("the balancer is the SSH jump host and needs a public IP")
        super().__init__("onionstack:nodes:BalancerNode", name, args.instance, opts)

    def _add_role_resources(self) -> None:
        self.public_ip = self.instance.public_ip

    def _ssh_target(self) -> SshTarget:
        return SshTarget(host=self.public_ip)
