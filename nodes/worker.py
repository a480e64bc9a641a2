"""A worker: private subnet, no public IP; tor daemons (OnionBalance instances) + nginx."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from nodes.instance import Bootstrap, InstanceArgs, Node


@dataclass(frozen=True)
class WorkerNodeArgs:
    instance: InstanceArgs  # a private subnet, public_ip=False
    index: int  # 0-based position in the fleet
    availability_zone: str
    jump_host: pulumi.Input[str]  # the balancer's public IP
    tor_daemons: int = 2
    intro_points_per_daemon: int = 3
    bootstrap: Optional[Bootstrap] = None


def spread(count: int, zones: tuple[str, ...]) -> list[int]:
    """Zone index of each of `count` workers: round-robin, so AZs differ by at most one."""
    return [i % len(zones) for i in range(count)]


class WorkerNode(Node):
    def __init__(self, name: str, args: WorkerNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if args.instance.public_ip:
            raise ValueError("workers accept nothing from the internet and get no public IP")
        self.args = args
        super().__init__("onionstack:nodes:WorkerNode", name, args.instance, args.bootstrap, opts)

    @property
    def jump_host(self) -> pulumi.Output[str]:
        return pulumi.Output.from_input(self.args.jump_host)
