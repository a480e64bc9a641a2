"""The balancer: public subnet, an Elastic IP, tor + the onion balancer core; SSH jump host."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from infra.tags import tags
from nodes.instance import InstanceArgs, Node
from nodes.remote import SshTarget


@dataclass(frozen=True)
class BalancerNodeArgs:
    instance: InstanceArgs  # public_ip=True, a public subnet
    # What the Elastic IP waits for: the VPC's internet gateway (AWS associates an EIP only
    # in a VPC with one attached).
    eip_after: Sequence[pulumi.Resource] = field(default_factory=tuple)


class BalancerNode(Node):
    """Declares `eip` and `public_ip` (its address: admins and every step dial it) besides
    Node's. The address is an Elastic IP: it stays across a stop/start and a replaced
    instance, where an instance's own public IP would go back to AWS's pool, to be handed
    to someone else; a host key pinned to the machine makes such an address harmless, the
    EIP makes it stable."""

    eip: aws.ec2.Eip
    public_ip: pulumi.Output[str]

    def __init__(self, name: str, args: BalancerNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        if not args.instance.public_ip:
            raise ValueError("the balancer is the SSH jump host and needs a public IP")
        self._eip_after = tuple(args.eip_after)
        super().__init__("onionstack:nodes:BalancerNode", name, args.instance, opts)

    def _add_role_resources(self) -> None:
        self.eip = aws.ec2.Eip(
            f"{self.node_name}-eip",
            domain="vpc",
            instance=self.instance.id,  # a replaced instance gets the same address
            tags=tags("balancer", f"{self.node_name}-eip"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self._eip_after)),
        )
        self.public_ip = self.eip.public_ip
        # Steps dial the EIP: they wait until it points at this instance.
        self.ready = (self.instance, self.eip)

    def _ssh_target(self) -> SshTarget:
        return SshTarget(host=self.public_ip, host_key=self.host_public_key)
