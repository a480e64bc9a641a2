"""The real `__main__.py` under Pulumi's mocks, with the rehearsal's provider behind every
remote step.

- AWS resources get mockrun's answers (deterministic ids and private addresses from the
  program's own subnets), except that the balancer's public address is the rehearsal's
  public link (10.214.0.2).
- pulumi-tls keys and certificates and random passwords: mockrun's emulation (real keys
  and certificates, derived from the resource names: every run sees the same ones, as
  Pulumi's state would keep them).
- `command:remote:Command` / `CopyToRemote` registrations go to `executor.Provider` (which
  runs them over SSH) instead of the mock, when one is given; without one (the dry pass
  that learns the instances to boot) mockrun's emulation answers.
"""
from __future__ import annotations

import base64
import contextvars
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import mockrun
from lab.rehearse.executor import TYPES, Provider, Resource
from lab.rehearse.hosts import HostSpec, INTERNET_IP

VPC_CIDR = "10.213.0.0/16"
PUBLIC_IP = "10.214.0.2"
SITE = "lab"


def rehearsal_config(*, workers: int, tor_daemons: int, origin: str, domain: str, master_key: str,
                     ssh_public: str, ssh_private: str) -> dict[str, Any]:
    """The rehearsal stack: one site whose origin is the lab's, local addresses, the
    deployer (10.214.0.1) as the only admin CIDR."""
    return {
        "aws:region": "eu-central-1",
        "sites": [{"name": SITE, "domain": domain, "originAddress": origin}],
        "masterKeys": {SITE: master_key},
        "workers": workers,
        "torDaemonsPerWorker": tor_daemons,
        "availabilityZones": 2,
        "vpcCidr": VPC_CIDR,
        "adminCidrs": [f"{INTERNET_IP}/32"],
        "sshPublicKey": ssh_public,
        "sshPrivateKey": ssh_private,
        "database": {"enabled": True, "dataGb": 1, "journalGb": 1, "logGb": 1,
                     "postgresVersion": image_postgres_version()},
    }


def image_postgres_version() -> int:
    """The PostgreSQL major version this machine's (= the hosts' image's) package installed."""
    versions = [int(p.parts[-3]) for p in Path("/usr/lib/postgresql").glob("*/bin/postgres") if p.parts[-3].isdigit()]
    if not versions:
        raise RuntimeError("no PostgreSQL server on this machine: run `bash scripts/setup`")
    return max(versions)


class RehearsalMocks(mockrun.StackMocks):
    """mockrun's answers, with public addresses on the rehearsal's public link: the balancer
    10.214.0.2, any other instance with a public IP (a standby balancer) the next ones; an
    Elastic IP is its instance's address."""

    def __init__(self) -> None:
        super().__init__("eu-central-1")
        self._public: dict[str, str] = {}  # instance id -> public address

    def new_resource(self, args):
        id_, state = super().new_resource(args)
        t = args.typ
        if t == "aws:ec2/instance:Instance" and args.inputs.get("associatePublicIpAddress"):
            state["publicIp"] = self._public.setdefault(id_, public_ip(args.name))
        elif t == "aws:ec2/eip:Eip":
            instance = mockrun.reveal(args.inputs.get("instance"))
            state["publicIp"] = self._public.get(instance) or public_ip(args.name.removesuffix("-eip") + "-instance")
        return id_, state


def public_ip(instance_name: str) -> str:
    """The balancer's public address 10.214.0.2; other public instances from .3 up, by name."""
    if instance_name == "balancer-instance":
        return PUBLIC_IP
    return str(ipaddress.ip_address(PUBLIC_IP) + 1 + int(hashlib.sha256(instance_name.encode()).hexdigest(), 16) % 200)


class ProviderMonitor(mockrun.RecordingMonitor):
    """Remote steps go to the rehearsal's provider (when given), everything else to the mocks."""

    def __init__(self, mocks: RehearsalMocks, provider: Optional[Provider]) -> None:
        super().__init__(mocks)
        self.provider = provider

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        if self.provider is None or request.type not in TYPES:
            return super().RegisterResource(request)
        from pulumi.runtime import rpc
        from pulumi.runtime.mocks import MockMonitor
        from pulumi.runtime.proto import resource_pb2
        from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

        urn = self.make_urn(request.parent, request.type, request.name)
        _ensure_event_loop()
        inputs = rpc.deserialize_properties(request.object)
        timeouts = {k: _duration(getattr(request.customTimeouts, k)) for k in ("create", "update", "delete")}
        res = Resource(urn=urn, type=request.type, name=request.name, inputs=mockrun.reveal(inputs),
                       dependencies=tuple(request.dependencies),
                       replace_on_changes=tuple(request.replaceOnChanges),
                       delete_before_replace=bool(request.deleteBeforeReplace), timeouts=timeouts)
        outputs = self.provider.register(res)
        state = {**inputs, "stdout": outputs.get("stdout", ""), "stderr": outputs.get("stderr", "")} \
            if request.type.endswith(":Command") else dict(inputs)
        id_ = hashlib.sha256(urn.encode()).hexdigest()[:16]
        obj = _sync_await(rpc.serialize_properties(state, {}))
        self.resources[urn] = MockMonitor.ResourceRegistration(urn, id_, state)
        self.recorded.append(mockrun.MockedResource(
            type=request.type, name=request.name, urn=urn, parent=request.parent, custom=True,
            inputs=inputs, state=state, id=id_, dependencies=tuple(request.dependencies)))
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=obj)


def _duration(text: str) -> float:
    """Go duration ("30m", "1h30m", "20s") in seconds; 0 when unset."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(h|ms|m|s)", text or ""):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


@dataclass
class Evaluation:
    resources: list
    outputs: dict
    instances: list[HostSpec] = field(default_factory=list)


def evaluate(config: dict, provider: Optional[Provider] = None, stack: str = "rehearsal",
             program=None) -> Evaluation:
    """Run the program (default: the real `__main__.py`) once, with a fresh context and
    monitor; raises what the program raised."""
    return contextvars.Context().run(_evaluate, config, provider, stack, program or mockrun.run_main)


def _evaluate(config: dict, provider: Optional[Provider], stack: str, program) -> Evaluation:
    import pulumi
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from infra.config import SECRET_KEYS

    # An exception a failed run left in the RPC manager would fail the next run too
    # (pulumi.runtime.test clears these the same way).
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    encoded = mockrun.encode_config(config)
    secret_keys = [f"{mockrun.PROJECT}:{k}" for k in SECRET_KEYS if f"{mockrun.PROJECT}:{k}" in encoded]
    mocks = RehearsalMocks()
    monitor = ProviderMonitor(mocks, provider)
    runtime_config.set_all_config(dict(encoded), secret_keys)
    pulumi.runtime.set_mocks(mocks, project=mockrun.PROJECT, stack=stack, preview=False, monitor=monitor)
    _sync_await(run_pulumi_func(program))
    outputs, _ = _sync_await(mockrun._resolve_outputs(pulumi_settings.get_root_resource().outputs))
    return Evaluation(monitor.recorded, outputs, instances_of(monitor.recorded))


def instances_of(resources: list) -> list[HostSpec]:
    """The hosts to boot: every aws:ec2:Instance with its addresses, user data and disks."""
    disks: dict[str, list[str]] = {}
    for r in resources:
        if r.type == "aws:ec2/volumeAttachment:VolumeAttachment":
            disks.setdefault(mockrun.reveal(r.inputs["instanceId"]), []).append(r.inputs["deviceName"])
    hosts = []
    for r in resources:
        if r.type != "aws:ec2/instance:Instance":
            continue
        user_data = mockrun.reveal(r.inputs.get("userData")) or ""
        if not user_data and r.inputs.get("userDataBase64"):
            user_data = base64.b64decode(mockrun.reveal(r.inputs["userDataBase64"])).decode()
        hosts.append(HostSpec(name=r.name.removesuffix("-instance"), private_ip=r.state["privateIp"],
                              public_ip=r.state.get("publicIp") or None, user_data=user_data,
                              instance_id=r.id, disks=tuple(sorted(disks.get(r.id, [])))))
    return hosts
