"""A worker: private subnet, no public IP; tor daemons (OnionBalance instances) + nginx."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from nodes.instance import InstanceArgs, Node
from nodes.remote import SshTarget


@dataclass(frozen=True)
class WorkerNodeArgs:
    instance: InstanceArgs  # a private subnet, public_ip=False
    jump: SshTarget  # the balancer: steps reach the worker through it


def spread(count: int, zones: tuple[str, ...]) -> list[int]:
    """Zone index of each of `count` workers: round-robin, so AZs differ by at most one."""
    return [i % len(zones) for i in range(count)]


class WorkerNode(Node):
    def __init__(self, name: str, args: WorkerNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if args.instance.public_ip:
            raise ValueError("workers accept nothing from the internet and get no public IP")
        self._jump = args.jump
        super().__init__("onionstack:nodes:WorkerNode", name, args.instance, opts)

    def _ssh_target(self) -> SshTarget:
        return SshTarget(host=self.private_ip, host_key=self.host_public_key, proxy=self._jump)
