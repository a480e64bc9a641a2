"""Each machine role's render spec, built once from the stack config.

The Pulumi program (nodes/site.py) builds a `RoleSpecs` from `StackConfig` before it
declares any resource; the remote steps get their specs from it and from nothing else.
The local lab builds its workers with the same `worker_spec` builder, only with its own
`Machine` (paths under a scratch directory, daemons as the lab's user, the private
network's torrc include), so both render the same templates from the same inputs.

No pulumi here: plain data, importable by the lab and the tests.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from infra.config import ConfigError, Site, StackConfig
from nodes.render import (AppSiteSpec, BalancerSpec, DatabaseSpec, DatabaseTls, Layout, NginxTuning, RenderError, SiteDos,
                          SiteSpec, TorTuning, ValidationPath, WorkerSpec, database_volumes)

LAYOUT = Layout()  # a machine's layout: files land under /

# The balancer core's install, as render_balancer's units and checks name it.
_BALANCER = BalancerSpec.__dataclass_fields__
VENV = _BALANCER["venv"].default
VENV_PYTHON = f"{VENV}/bin/python"
PACKAGE_LIB = _BALANCER["package_lib"].default
BALANCER_USER = _BALANCER["user"].default
BALANCER_CONFIG = LAYOUT.path("etc_dir", "balancer.yaml")  # BalancerSpec.config_file
BALANCER_STATE_DIR = "/" + _BALANCER["state_dir_rel"].default  # BalancerSpec.state_dir


@dataclass(frozen=True)
class Machine:
    """Where a role's files land and who runs its daemons: an AWS instance (the defaults)
    or the local lab (a scratch root, the lab's own user, the private network)."""

    layout: Layout = LAYOUT
    tor_user: Optional[str] = "debian-tor"
    nginx_user: Optional[str] = "www-data"
    tor_include: Optional[str] = None  # a torrc every tor %includes (the lab's network)
    trusted_ca_file: str = NginxTuning.__dataclass_fields__["trusted_ca_file"].default
    # Each worker tor's MetricsPort on 127.0.0.1: base, base+1, ... per daemon (tor's own
    # tor_hs_* counters; docs/operations.md "Is my site up?"). None: no MetricsPort (the lab
    # picks free ports itself, several workers share its machine).
    tor_metrics_base: Optional[int] = 9101
    # Where the worker's nginx serves those MetricsPorts to the balancer (base, base+1, ...
    # per daemon, on the worker's VPC address; only the balancer's security group may connect
    # and nginx admits only the VPC's addresses): the balancer reads each instance's PoW
    # queue depth there (onion/load.py), while tor's own MetricsPort stays on 127.0.0.1.
    # None: not served (the lab's balancer reads 127.0.0.1 directly).
    tor_metrics_proxy_base: Optional[int] = 9201


AWS = Machine()


APP_HOST_PORT_BASE = 18080  # the i-th app site (config order) is published on 127.0.0.1:BASE+i


def app_host_ports(sites) -> dict[str, int]:
    """Each app site's loopback port on the workers (its container publishes there)."""
    return {s.name: APP_HOST_PORT_BASE + i for i, s in enumerate(x for x in sites if x.is_app)}


def site_spec(site: Site, host_port: Optional[int] = None) -> SiteSpec:
    """The renderer's view of a config site (public facts only; no key). App sites need
    their `host_port` (app_host_ports)."""
    d = site.dos
    if site.is_app:
        return SiteSpec(name=site.name, domain=None, onion_address=site.onion_address, block_paths=site.block_paths,
                        app=AppSiteSpec(host_port=host_port, health_path=site.app.health_path),
                        dos=SiteDos(pow=d.pow, pow_queue_rate=d.pow_queue_rate, pow_queue_burst=d.pow_queue_burst,
                                    intro_defense=d.intro_defense, intro_rate=d.intro_rate,
                                    intro_burst=d.intro_burst, max_streams=d.max_streams,
                                    max_streams_close_circuit=d.max_streams_close_circuit))
    return SiteSpec(name=site.name, domain=site.domain, onion_address=site.onion_address,
                    origin_address=site.origin_address, block_hosts=site.block_hosts,
                    block_paths=site.block_paths, https=site.serves_https, http_redirect=site.http_redirect,
                    validation_paths=tuple(ValidationPath(v.path, v.content) for v in site.validation_paths),
                    foreign_onions=site.foreign_onions,
                    dos=SiteDos(pow=d.pow, pow_queue_rate=d.pow_queue_rate, pow_queue_burst=d.pow_queue_burst,
                                intro_defense=d.intro_defense, intro_rate=d.intro_rate, intro_burst=d.intro_burst,
                                max_streams=d.max_streams, max_streams_close_circuit=d.max_streams_close_circuit))


def vpc_resolver(vpc_cidr: str) -> str:
    """The Amazon-provided DNS resolver of a VPC: its base address + 2."""
    return str(ipaddress.ip_network(vpc_cidr).network_address + 2)


def worker_spec(sites: Sequence[SiteSpec], *, resolver: str, tor_daemons: int, intro_points: int,
                machine: Machine = AWS, vpc_cidr: Optional[str] = None) -> WorkerSpec:
    """A worker: `tor_daemons` tor processes with one instance per site, and nginx."""
    return WorkerSpec(
        sites=tuple(sites), resolver=resolver, tor_daemons=tor_daemons,
        tor=TorTuning(intro_points=intro_points),
        nginx=NginxTuning(trusted_ca_file=machine.trusted_ca_file),
        layout=machine.layout, tor_user=machine.tor_user, nginx_user=machine.nginx_user,
        tor_include=machine.tor_include,
        metrics_ports=tuple(machine.tor_metrics_base + i for i in range(tor_daemons))
        if machine.tor_metrics_base else (),
        metrics_proxy_ports=tuple(machine.tor_metrics_proxy_base + i for i in range(tor_daemons))
        if machine.tor_metrics_base and machine.tor_metrics_proxy_base and vpc_cidr else (),
        metrics_allow=vpc_cidr if machine.tor_metrics_base and machine.tor_metrics_proxy_base else None)


@dataclass(frozen=True)
class RoleSpecs:
    """Every role's spec for one stack config. The worker spec is complete; the balancer's
    needs the instance addresses the workers report, the database's its machine's address
    and volumes: those are filled in by `balancer()` and `database()`."""

    sites: tuple[SiteSpec, ...]
    worker: WorkerSpec
    publish: bool
    layout: Layout = field(default=LAYOUT)
    postgres_version: int = DatabaseSpec.__dataclass_fields__["pg_version"].default
    # (CloudWatch namespace, region) the balancer's metrics shipper puts into; None: no shipper
    cloudwatch: Optional[tuple[str, str]] = None

    @classmethod
    def of(cls, config: StackConfig) -> "RoleSpecs":
        """Raise ConfigError, naming the config key, for values the stack config accepts but
        the templates cannot render (a `blockPaths` regex not anchored with '^', an IPv6
        `originAddress`): the program stops before it declares any resource instead of
        failing halfway through an `up`."""
        sites = []
        for i, site in enumerate(config.sites):
            try:
                sites.append(site_spec(site, app_host_ports(config.sites).get(site.name)))
            except RenderError as exc:
                raise ConfigError(f"onionstack:sites[{i}] ({site.name}): the node templates refuse it: {exc}") from None
        try:
            specs = cls(
                sites=tuple(sites),
                worker=worker_spec(sites, resolver=vpc_resolver(config.vpc_cidr),
                                   tor_daemons=config.tor_daemons_per_worker,
                                   intro_points=config.intro_points_per_daemon, vpc_cidr=config.vpc_cidr),
                publish=config.balancer.publish,
                postgres_version=config.database.postgres_version,
            )
            # Any valid address stands in for the instances the workers will report.
            specs.balancer({s.name: [s.onion_address] for s in sites})
        except RenderError as exc:
            raise ConfigError(f"onionstack config: the node templates refuse it: {exc}") from None
        return specs

    def balancer(self, instances: Mapping[str, Sequence[str]], workers: Optional[Mapping[str, str]] = None,
                 standby: bool = False, instance_metrics: Optional[Mapping[str, str]] = None) -> BalancerSpec:
        """The balancer with `instances` (site name -> the workers' instance addresses);
        `workers`: instance address -> worker node name (the metrics' `worker` label);
        `standby`: a standby balancer (uploads only after a takeover); `instance_metrics`:
        instance address -> the URL where its worker serves its tor's MetricsPort."""
        return BalancerSpec(sites=self.sites, instances={name: tuple(a) for name, a in instances.items()},
                            publish=self.publish, layout=self.layout, workers=dict(workers or {}),
                            standby=standby, cloudwatch=self.cloudwatch,
                            instance_metrics=dict(instance_metrics or {}))

    def database(self, private_ip: str, client_cidrs: Sequence[str], volumes: Mapping[str, tuple[str, str]],
                 tls: DatabaseTls, apps: Sequence[str] = ()) -> DatabaseSpec:
        """PostgreSQL on `private_ip` for `client_cidrs`; `volumes`: purpose (data, journal,
        log) -> (EBS volume id, attachment device name); `tls`: its certificate and the CA's
        (nodes/pki.py)."""
        return DatabaseSpec(listen_ip=private_ip, client_cidrs=tuple(client_cidrs),
                            volumes=database_volumes(volumes["data"], volumes["journal"], volumes["log"]),
                            pg_version=self.postgres_version, layout=self.layout, tls=tls,
                            apps=tuple(apps))
