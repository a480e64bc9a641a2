"""One onion site, the whole of it: `OnionSite(name, OnionSiteArgs(config))`.

    OnionSite
      Network (VPC, subnets, gateways)   SecurityGroups   KeyPair + PrivateKey (the admin key)
      BalancerNode  <- BalancerPackage, BalancerCore
      WorkerNode x N  <- WorkerSetup, WorkerDrain
      DatabaseNode  <- DatabaseSetup          RandomPassword (the database's)
      Backup (vault, lock, policy, plan, selection)   EbsKey   FlowLogs
      MetricsPublisher (the balancer's instance role)   Alarms (topic, alarms)

The steps run in the softmap runbook's order: every worker's tor and nginx first (they
create the instance addresses), then the balancer core configured from them; each
worker's drain holds its removal until the balancer publishes without it
(docs/bootstrap.md). `exports` are the stack outputs (names and meaning in
docs/stack.md); `__main__.py` exports them as they are.

Importable without running anything: another Pulumi program declares the same site with
`OnionSite("site", OnionSiteArgs.from_stack_config())` (the `onionstack:*` keys of its stack)
or `OnionSiteArgs.of(sites=..., master_keys=..., admin_cidrs=...)` (the same settings as
arguments), in a VPC of its own making with `network=ExistingNetwork(vpc_id, public_subnet_ids,
private_subnet_ids)` (docs/stack.md "Embedding the site in your own program").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_random as random

from infra.alarms import Alarms, AlarmsArgs, FrontendRef, MetricsPublisher
from infra.backup import Backup, BackupArgs
from infra.config import SCHEMA, ConfigError, StackConfig, check_copy_region, load_config, parse_config
from infra.flowlogs import FlowLogs, FlowLogsArgs
from infra.kms import EbsKey, EbsKeyArgs, lookup_account
from infra.network import ExistingNetwork, Network, NetworkArgs, SiteNetwork, available_zones
from infra.security import AdminKey, SecurityArgs, SecurityGroups, admin_key_pair, admin_ssh_key
from infra.storage import database_volume_specs
from nodes.balancer import BalancerNode, BalancerNodeArgs
from nodes.database import DatabaseNode, DatabaseNodeArgs
from nodes.hostkey import known_hosts_line
from nodes.instance import AmiCatalog, InstanceArgs, Node
from nodes.pki import DatabaseCertificates, DatabaseCertificatesArgs
from nodes.appsteps import AppRollout, AppRolloutArgs
from infra.ecr import AppRepositories, AppRepositoriesArgs
from nodes.roles import RoleSpecs
from nodes.tls import OnionCertificates, OnionCertificatesArgs
from nodes.steps import (BalancerCore, BalancerCoreArgs, BalancerPackage, BalancerPackageArgs, DatabaseSetup,
                         DatabaseSetupArgs, WorkerDrain, WorkerDrainArgs, WorkerSetup, WorkerSetupArgs)
from nodes.worker import WorkerNode, WorkerNodeArgs, spread


@dataclass(frozen=True)
class OnionSiteArgs:
    config: StackConfig  # parsed and validated (infra.config.load_config / parse_config)
    # A VPC to build in instead of making one (vpcCidr, availabilityZones and natGateways are
    # then not used); None: the site makes its own (infra/network.py).
    network: Optional[ExistingNetwork] = None

    @classmethod
    def from_stack_config(cls, network: Optional[ExistingNetwork] = None) -> "OnionSiteArgs":
        """The `onionstack:*` keys of the running stack's config (what `pulumi config set
        onionstack:...` sets; the same checks as this repository's own program)."""
        return cls(load_config(), network)

    @classmethod
    def of(cls, *, network: Optional[ExistingNetwork] = None, **settings: Any) -> "OnionSiteArgs":
        """The same settings as arguments, named like the config keys in snake_case:
        `sites=[{"name": "news", "domain": "example.com"}], master_keys={"news":
        "ED25519-V3:..."}, admin_cidrs=["198.51.100.7/32"]`, and optionally `workers=3`,
        `database={"enabled": False}`, ... Same validation and defaults as the stack config.
        Read secrets (master_keys, tls_keys, ssh_private_key) from secret config; the site
        keeps them secret in every resource that uses them."""
        by_snake = {_snake(k): k for k in SCHEMA}
        unknown = sorted(set(settings) - set(by_snake))
        if unknown:
            raise ConfigError(f"OnionSiteArgs.of: unknown setting {unknown[0]}; accepted: {', '.join(sorted(by_snake))}")
        config = parse_config({by_snake[k]: v for k, v in settings.items() if v is not None})
        check_copy_region(config.backup, pulumi.Config("aws").get("region"))
        return cls(config, network)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


class OnionSite(pulumi.ComponentResource):
    """Declares the parts (`network`, `security`, `flow_logs`, `ebs_key`, `balancer`, `workers`, `database`,
    `backup`, and the steps `balancer_package`, `balancer_core`, `worker_setups`,
    `worker_drains`, `database_setup`) and `exports`, the stack outputs."""

    network: Optional[Network]  # the VPC the site made; None when it was given one (OnionSiteArgs.network)
    placement: SiteNetwork  # where the machines go, in either case
    security: SecurityGroups
    ebs_key: EbsKey
    flow_logs: Optional[FlowLogs]
    balancer: BalancerNode
    workers: list[WorkerNode]
    database: Optional[DatabaseNode]
    backup: Optional[Backup]
    metrics_publisher: MetricsPublisher
    alarms: Alarms
    balancer_package: BalancerPackage
    balancer_core: BalancerCore
    standby_balancer: Optional[BalancerNode]   # balancer.standby: a second balancer in another zone
    standby_core: Optional[BalancerCore]
    worker_setups: list[WorkerSetup]
    worker_drains: list[WorkerDrain]
    database_setup: Optional[DatabaseSetup]
    nodes: list[Node]  # every machine: the balancer, the workers, the database
    database_certificates: Optional[DatabaseCertificates]
    app_repositories: Optional[AppRepositories]
    app_rollout: Optional[AppRollout]
    certificates: Optional[OnionCertificates]
    admin_key: AdminKey
    exports: dict[str, Any]

    def __init__(self, name: str, args: OnionSiteArgs, opts: Optional[pulumi.ResourceOptions] = None):
        config = args.config
        # Before any resource: a value the templates cannot render, or more zones than the
        # region has, stops here (ConfigError).
        specs = RoleSpecs.of(config)
        region = pulumi.Config("aws").get("region")
        if region:  # the balancer ships its metrics to the namespace its role may write
            from infra.metrics import namespace

            specs = dataclasses.replace(specs, cloudwatch=(namespace(pulumi.get_stack()), region))
        given = args.network
        if given is not None and config.balancer.standby and len(list(given.public_subnet_ids)) < 2:
            raise ConfigError("onionstack:balancer.standby needs a second public subnet for the standby balancer: "
                              "add one to ExistingNetwork.public_subnet_ids, or set balancer.standby false")
        zones = available_zones(config.availability_zones) if given is None else None
        super().__init__("onionstack:site:OnionSite", name, None, opts)
        # The admin key: the config's, or one the stack makes (a secret in the state).
        self.admin_key = admin_ssh_key("admin-ssh-key", config.ssh_public_key, config.ssh_private_key,
                                       opts=pulumi.ResourceOptions(parent=self))
        ssh_key = self.admin_key.private_key  # a secret; the only road the key takes
        # Until nodes/ had step components, these lived at the stack's top level and the
        # steps' commands directly under their node: aliases keep a stack deployed then.
        top = pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(parent=pulumi.ROOT_STACK_RESOURCE)])

        def legacy(node_type: str, node_name: str) -> pulumi.Output[str]:
            return pulumi.create_urn(node_name, node_type)

        ami_for = AmiCatalog()
        self.network = None
        if given is None:
            self.network = Network("net", NetworkArgs(config.vpc_cidr, zones, nat_per_az=config.nat_gateways == "perAz"),
                                   opts=top)
            self.placement = SiteNetwork.made(self.network)
        else:
            self.placement = SiteNetwork.existing(given, opts=pulumi.InvokeOptions(parent=self))
        net = self.placement
        zones = net.zones
        self.security = SecurityGroups(
            "access", SecurityArgs(net.vpc_id, config.admin_cidrs, database=config.database.enabled,
                                   worker_metrics_ports=specs.worker.metrics_proxy_ports),
            opts=top)
        key_pair = admin_key_pair("admin-key", self.admin_key.public_key, opts=top)
        account = lookup_account()
        copy_regions = (config.backup.copy_to_region,) if config.backup.enabled and config.backup.copy_to_region \
            else ()
        self.flow_logs = None
        if config.flow_logs.enabled:
            self.flow_logs = FlowLogs("flow-logs", FlowLogsArgs(net.vpc_id, account, config.flow_logs.traffic,
                                                                config.flow_logs.retention_days), opts=top)
        # One customer-managed key for every EBS volume (data and root), so the recovery points
        # of the data volumes are under a key with an explicit policy, not aws/ebs (infra/kms.py).
        self.ebs_key = EbsKey("ebs", EbsKeyArgs(account, protect=config.protect_data, copy_regions=copy_regions),
                              opts=top)

        def instance(role: str, instance_type: str, subnet, group, public_ip: bool = False,
                     profile: Optional[pulumi.Input[str]] = None, extra_groups=()) -> InstanceArgs:
            return InstanceArgs(role=role, instance_type=instance_type, ami_id=ami_for(instance_type),
                                subnet_id=subnet.id, security_group_ids=[group.id, *(g.id for g in extra_groups)],
                                key_name=key_pair.key_name,
                                public_ip=public_ip, root_kms_key_id=self.ebs_key.key.arn,
                                iam_instance_profile=profile)

        # The balancer's instance role: it may put its metrics into Onionstack/<stack> only.
        self.metrics_publisher = MetricsPublisher("balancer-metrics", opts=pulumi.ResourceOptions(parent=self))

        # ---- the balancer: jump host for every other machine
        self.balancer = BalancerNode("balancer", BalancerNodeArgs(
            instance=instance("balancer", config.instance_types.balancer, net.public_subnets[0],
                              self.security.balancer, public_ip=True,
                              profile=self.metrics_publisher.profile.name,
                              extra_groups=(self.security.deployer,)),
            eip_after=net.eip_after), opts=top)
        balancer_urn = legacy("onionstack:nodes:BalancerNode", "balancer")
        on_balancer = pulumi.ResourceOptions(parent=self.balancer)
        self.balancer_package = BalancerPackage(
            "balancer-package-step", BalancerPackageArgs(self.balancer, ssh_key), opts=on_balancer,
            legacy_parent=balancer_urn)

        # ---- the HTTPS sites' certificates (made for selfSigned, from the config for provided)
        self.certificates = None
        tls_args: dict[str, Any] = {}
        if any(s.serves_https for s in config.sites):
            self.certificates = OnionCertificates("onion-certificates", OnionCertificatesArgs(config.sites), opts=top)
            tls_args = {"tls": self.certificates.files(), "tls_digest": self.certificates.chains_digest()}

        # ---- app sites: the stack's image repositories (sites[].app.ecr) and the workers'
        # role that may pull from them (docs/apps.md)
        app_sites = [s for s in config.sites if s.is_app]
        self.app_repositories = None
        worker_profile = None
        if any(s.app.ecr for s in app_sites):
            self.app_repositories = AppRepositories(
                "app-repositories", AppRepositoriesArgs([s.name for s in app_sites if s.app.ecr]), opts=top)
            worker_profile = self.app_repositories.profile.name

        # ---- workers: tor + nginx first (their steps report the instance addresses)
        self.workers, self.worker_setups = [], []
        for i, z in enumerate(spread(config.workers, zones)):
            name_i = f"worker-{i + 1}"
            worker = WorkerNode(name_i, WorkerNodeArgs(
                instance=instance("worker", config.instance_types.worker, net.private_subnets[z],
                                  self.security.workers, profile=worker_profile),
                jump=self.balancer.ssh), opts=top)
            self.workers.append(worker)
            self.worker_setups.append(WorkerSetup(
                f"{name_i}-tor-nginx-step", WorkerSetupArgs(worker, specs.worker, ssh_key, **tls_args),
                opts=pulumi.ResourceOptions(parent=worker),
                legacy_parent=legacy("onionstack:nodes:WorkerNode", name_i)))

        # ---- the balancer core, from every worker's addresses; then each worker's drain
        self.balancer_core = BalancerCore(
            "balancer-core-step",
            BalancerCoreArgs(node=self.balancer, specs=specs, sites=config.sites, package=self.balancer_package,
                             workers=tuple(self.worker_setups), ssh_key=ssh_key),
            opts=on_balancer, legacy_parent=balancer_urn)
        # ---- a standby balancer in another zone (balancer.standby): the same package, keys and
        # instances; it uploads only when the primary's descriptors go missing or stale
        self.standby_balancer, self.standby_core = None, None
        if config.balancer.standby:
            self.standby_balancer = BalancerNode("balancer-standby", BalancerNodeArgs(
                instance=instance("balancer", config.instance_types.balancer,
                                  net.public_subnets[1 % len(net.public_subnets)],
                                  self.security.balancer, public_ip=True,
                                  profile=self.metrics_publisher.profile.name,
                                  extra_groups=(self.security.deployer,)),
                eip_after=net.eip_after), opts=top)
            on_standby = pulumi.ResourceOptions(parent=self.standby_balancer)
            standby_package = BalancerPackage(
                "balancer-standby-package-step", BalancerPackageArgs(self.standby_balancer, ssh_key), opts=on_standby)
            self.standby_core = BalancerCore(
                "balancer-standby-core-step",
                BalancerCoreArgs(node=self.standby_balancer, specs=specs, sites=config.sites, package=standby_package,
                                 workers=tuple(self.worker_setups), ssh_key=ssh_key, standby=True),
                opts=on_standby)
        self.worker_drains = [
            WorkerDrain(f"{w.node_name}-drain-step",
                        WorkerDrainArgs(worker=w, setup=s, balancer=self.balancer, core=self.balancer_core,
                                        ssh_key=ssh_key),
                        opts=pulumi.ResourceOptions(parent=w),
                        legacy_parent=legacy("onionstack:nodes:WorkerNode", w.node_name))
            for w, s in zip(self.workers, self.worker_setups)
        ]

        # ---- the database
        self.database, self.database_setup, self.database_certificates = None, None, None
        if config.database.enabled:
            # Generated once and kept in the state as a secret; reaches the machine only via stdin.
            password = random.RandomPassword("database-password", length=32, special=False, opts=top)
            # Each app site its own role, database and password (secret; stdin only).
            app_passwords = {s.name: random.RandomPassword(f"app-{s.name}-database-password", length=32,
                                                           special=False, opts=top).result for s in app_sites}
            self.database = DatabaseNode("database", DatabaseNodeArgs(
                instance=instance("database", config.instance_types.database, net.private_subnets[0],
                                  self.security.database),
                availability_zone=zones[0],
                volumes=database_volume_specs(config.database.data_gb, config.database.journal_gb,
                                              config.database.log_gb),
                jump=self.balancer.ssh, protect_data=config.protect_data, backup=config.backup.enabled,
                volume_kms_key_id=self.ebs_key.key.arn), opts=top)
            # A private CA issues PostgreSQL's certificate for its private IP: clients verify it.
            self.database_certificates = DatabaseCertificates(
                "database-certificates", DatabaseCertificatesArgs(self.database.private_ip, pulumi.get_stack()),
                opts=pulumi.ResourceOptions(parent=self))
            self.database_setup = DatabaseSetup(
                "database-postgres-step",
                DatabaseSetupArgs(node=self.database, specs=specs, password=password.result,
                                  client_cidrs=tuple(s.cidr_block for s in net.private_subnets),
                                  ssh_key=ssh_key, certificates=self.database_certificates,
                                  app_passwords=app_passwords),
                opts=pulumi.ResourceOptions(parent=self.database),
                legacy_parent=legacy("onionstack:nodes:DatabaseNode", "database"))

        # ---- app sites: migrations, then the workers switch one at a time (nodes/appsteps.py)
        self.app_rollout = None
        if app_sites:
            self.app_rollout = AppRollout("apps", AppRolloutArgs(
                sites=config.sites, workers=tuple(self.workers), setups=tuple(self.worker_setups),
                balancer=self.balancer, core=self.balancer_core, database=self.database_setup,
                database_ip=self.database.private_ip, ca_pem=self.database_certificates.ca_cert_pem,
                passwords=app_passwords,
                ecr_urls={n: r.repository_url for n, r in self.app_repositories.repositories.items()}
                if self.app_repositories else {},
                ssh_key=ssh_key), opts=pulumi.ResourceOptions(parent=self))

        self.backup = None
        if config.backup.enabled:
            self.backup = Backup("backup", BackupArgs(config.backup.rules, protect=config.protect_data, account=account,
                                                      lock=config.backup.lock,
                                                      copy_to_region=config.backup.copy_to_region), opts=top)

        # CloudWatch alarms on the balancer's metrics (infra/metrics.py) and the EC2 recovery
        # of the balancer, to an encrypted SNS topic with the alarmEmails subscribed.
        self.alarms = Alarms("alarms", AlarmsArgs(
            account=account,
            frontends=tuple(FrontendRef(s.name, s.onion_address) for s in config.sites),
            instances_per_frontend=config.workers * config.tor_daemons_per_worker,
            workers=tuple(w.node_name for w in self.workers),
            instances_per_worker=config.tor_daemons_per_worker * len(config.sites),
            balancer_instance_id=self.balancer.instance.id,
            emails=config.alarm_emails, publishes=config.balancer.publish), opts=pulumi.ResourceOptions(parent=self))

        self.nodes = [self.balancer, *self.workers, *([self.database] if self.database is not None else [])]
        self.exports = self._exports(config, zones)
        self.register_outputs(self.exports)

    def _exports(self, config: StackConfig, zones) -> dict[str, Any]:
        """The stack outputs (secret: instanceAddresses only)."""
        user = self.balancer.ssh.user
        jump = pulumi.Output.concat(user, "@", self.balancer.public_ip)
        out: dict[str, Any] = {
            "vpcId": self.placement.vpc_id,
            # The zones the site's private subnets are in (once each).
            "availabilityZones": list(zones) if self.network is not None
            else pulumi.Output.all(*zones).apply(lambda names: list(dict.fromkeys(names))),
            "balancerPublicIp": self.balancer.public_ip,
            **({"standbyBalancerPublicIp": self.standby_balancer.public_ip,
                "sshStandbyBalancer": pulumi.Output.concat("ssh ", self.balancer.ssh.user, "@",
                                                           self.standby_balancer.public_ip)}
               if self.standby_balancer is not None else {}),
            "balancerPrivateIp": self.balancer.private_ip,
            "workerPrivateIps": [w.private_ip for w in self.workers],
            "sshBalancer": pulumi.Output.concat("ssh ", jump),
            # The admin key's private half, a secret output (made by the stack unless the
            # config gives one): `pulumi stack output --show-secrets adminSshPrivateKey`.
            "adminSshPrivateKey": self.admin_key.private_key,
            "adminSshPublicKey": self.admin_key.public_key,
            # The group CI's deploy job opens SSH in for its own address, per run
            # (ci/ssh_window.py, docs/operations.md).
            "deployerSecurityGroupId": self.security.deployer.id,
            "sshWorkers": [pulumi.Output.concat("ssh -J ", jump, f" {user}@", w.private_ip) for w in self.workers],
            # Every machine's pinned host key as known_hosts lines (its address, the key):
            # `pulumi stack output sshKnownHosts > known_hosts` (docs/operations.md).
            "sshKnownHosts": pulumi.Output.all(*[pulumi.Output.all(n.ssh.host, n.host_public_key) for n in self.nodes])
            .apply(lambda pairs: "".join(known_hosts_line(h, k) + "\n" for h, k in pairs)),
        }
        if self.database is not None:
            out["databasePrivateIp"] = self.database.private_ip
            # Public: what a client needs to verify the database (sslmode=verify-full).
            out["databaseCaCertificate"] = self.database_certificates.ca_cert_pem
            out["sshDatabase"] = pulumi.Output.concat("ssh -J ", jump, f" {user}@", self.database.private_ip)
        if self.backup is not None:
            out["backupVaultName"] = self.backup.vault.name
        # What `pulumi destroy` keeps (protect + retainOnDelete; docs/stack.md "Teardown").
        kept: dict[str, Any] = {}
        if config.protect_data:
            kept["ebsKmsKey"] = self.ebs_key.key.arn
            if self.database is not None:
                kept["databaseVolumes"] = [v.id for v in self.database.volumes.volumes.values()]
            if self.backup is not None:
                kept["backupVault"] = self.backup.vault.name
                kept["backupKmsKey"] = self.backup.key.arn
                if self.backup.copy_vault is not None:
                    kept["backupCopy"] = {"region": config.backup.copy_to_region, "vault": self.backup.copy_vault.name,
                                          "kmsKey": self.backup.copy_key.arn}
        out["keptOnDestroy"] = kept
        apps = {}
        for site in config.sites:
            if site.is_app:
                repo = self.app_repositories.repositories.get(site.name) if self.app_repositories else None
                apps[site.name] = {"onionUrl": site.onion_url, "image": site.app.image,
                                   **({"repository": repo.repository_url} if repo is not None else {})}
        if apps:
            out["appSites"] = apps
        out["sites"] = {s.name: {"domain": s.domain, "onionAddress": s.onion_address, "onionUrl": s.onion_url,
                                 "https": s.https, "originAddress": s.origin_address} for s in config.sites}
        # What the clearnet site sends so that Tor Browser offers the onion (docs/sites.md
        # has the per-server lines that append each page's path).
        out["onionLocation"] = {s.name: {"header": f"Onion-Location: {s.onion_url}",
                                         "meta": f'<meta http-equiv="onion-location" content="{s.onion_url}" />'}
                                for s in config.sites}
        if self.certificates is not None:
            out["tlsCertificates"] = self.certificates.info
        # Instance addresses are for the operator only (whoever knows one can solve PoW
        # against that instance's own descriptor and jump its queue): a secret output,
        # `pulumi stack output --show-secrets instanceAddresses`. Worker name -> site -> one
        # address per tor daemon.
        out["instanceAddresses"] = pulumi.Output.secret({
            w.node_name: s.instance_addresses.apply(
                lambda per_site: None if per_site is None  # not known: mocks without command emulation
                else {site: [f"{a}.onion" for a in addrs] for site, addrs in per_site.items()})
            for w, s in zip(self.workers, self.worker_setups)})
        out["balancerPublishes"] = config.balancer.publish
        out["alarmTopicArn"] = self.alarms.topic.arn
        out["introPoints"] = {"perWorker": config.intro_points_per_worker,
                              "total": config.workers * config.intro_points_per_worker}
        return out
