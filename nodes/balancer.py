"""The balancer: public subnet, public IP, tor + the onion balancer core; SSH jump host."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from infra.config import Site
from nodes.instance import Bootstrap, InstanceArgs, Node


@dataclass(frozen=True)
class BalancerNodeArgs:
    instance: InstanceArgs  # public_ip=True, a public subnet
    sites: tuple[Site, ...]
    publish: bool = True  # false: standby fleet, never uploads descriptors
    bootstrap: Optional[Bootstrap] = None


class BalancerNode(Node):
    public_ip: pulumi.Output[str]

    def __init__(self, name: str, args: BalancerNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if not args.instance.public_ip:
            raise ValueError("the balancer is the SSH jump host and needs a public IP")
        self.args = args
        super().__init__("onionstack:nodes:BalancerNode", name, args.instance, args.bootstrap, opts)

    def _add_role_resources(self) -> None:
        self.public_ip = self.instance.public_ip

    @property
    def ssh_host(self) -> pulumi.Output[str]:
        return self.public_ip
