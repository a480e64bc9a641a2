"""onionstack: composition only. config -> network -> security -> nodes (+ remote steps) -> backup -> exports."""
import pulumi
import pulumi_random as random

from infra.backup import Backup, BackupArgs
from infra.config import load_config
from infra.flowlogs import FlowLogs, FlowLogsArgs
from infra.kms import EbsKey, EbsKeyArgs, lookup_account
from infra.network import Network, NetworkArgs, available_zones
from infra.security import SecurityArgs, SecurityGroups, admin_key_pair
from infra.storage import database_volume_specs
from nodes.balancer import BalancerNode, BalancerNodeArgs
from nodes.bootstrap import (BootstrapContext, balancer_bootstrap, balancer_core_step, database_bootstrap,
                             drain_step, worker_bootstrap)
from nodes.database import DatabaseNode, DatabaseNodeArgs
from nodes.instance import SSH_USER, AmiCatalog, InstanceArgs
from nodes.worker import WorkerNode, WorkerNodeArgs, spread

config = load_config()  # raises ConfigError before any resource exists
steps = BootstrapContext.of(config)  # so does a value the node templates cannot render

zones = available_zones(config.availability_zones)
ami_for = AmiCatalog()
network = Network(
    "net",
    NetworkArgs(config.vpc_cidr, zones, nat_per_az=config.nat_gateways == "perAz"),
)
security = SecurityGroups(
    "access",
    SecurityArgs(network.vpc.id, config.admin_cidrs, database=config.database.enabled),
)
key_pair = admin_key_pair("admin-key", config.ssh_public_key)
account = lookup_account()
copy_regions = (config.backup.copy_to_region,) if config.backup.enabled and config.backup.copy_to_region else ()
if config.flow_logs.enabled:
    FlowLogs("flow-logs", FlowLogsArgs(network.vpc.id, account, config.flow_logs.traffic,
                                       config.flow_logs.retention_days))
# One customer-managed key for every EBS volume (data and root), so the recovery points
# of the data volumes are under a key with an explicit policy, not aws/ebs (infra/kms.py).
ebs_key = EbsKey("ebs", EbsKeyArgs(account, protect=config.protect_data, copy_regions=copy_regions))


def instance(role: str, instance_type: str, subnet, group, public_ip: bool = False) -> InstanceArgs:
    return InstanceArgs(
        role=role,
        instance_type=instance_type,
        ami_id=ami_for(instance_type),
        subnet_id=subnet.id,
        security_group_ids=[group.id],
        key_name=key_pair.key_name,
        public_ip=public_ip,
        root_kms_key_id=ebs_key.key.arn,
    )


balancer = BalancerNode(
    "balancer",
    BalancerNodeArgs(
        instance=instance("balancer", config.instance_types.balancer, network.public_subnets[0],
                          security.balancer, public_ip=True),
        sites=config.sites,
        publish=config.balancer.publish,
        bootstrap=balancer_bootstrap(steps),
    ),
)

worker_steps = worker_bootstrap(steps)  # rendered once, the same for every worker
workers = [
    WorkerNode(
        f"worker-{i + 1}",
        WorkerNodeArgs(
            instance=instance("worker", config.instance_types.worker, network.private_subnets[z],
                              security.workers),
            index=i,
            availability_zone=zones[z],
            jump_host=balancer.public_ip,
            tor_daemons=config.tor_daemons_per_worker,
            intro_points_per_daemon=config.intro_points_per_daemon,
            bootstrap=worker_steps,
        ),
    )
    for i, z in enumerate(spread(config.workers, zones))
]

# The runbook's order: every worker's tor + nginx first, then the balancer core rendered
# from their instance addresses; each worker's drain step holds its removal (scale-in)
# until the balancer publishes without it (docs/bootstrap.md).
balancer_core = balancer_core_step(steps, balancer, workers)
for worker in workers:
    drain_step(steps, worker, balancer, balancer_core)

database = None
if config.database.enabled:
    # Generated once and kept in the state as a secret; reaches the machine only via stdin.
    database_password = random.RandomPassword("database-password", length=32, special=False)
    database = DatabaseNode(
        "database",
        DatabaseNodeArgs(
            instance=instance("database", config.instance_types.database, network.private_subnets[0],
                              security.database),
            availability_zone=zones[0],
            volumes=database_volume_specs(config.database.data_gb, config.database.journal_gb,
                                          config.database.log_gb),
            jump_host=balancer.public_ip,
            protect_data=config.protect_data,
            backup=config.backup.enabled,
            volume_kms_key_id=ebs_key.key.arn,
            bootstrap=database_bootstrap(steps, database_password.result,
                                         [s.cidr_block for s in network.private_subnets]),
        ),
    )

backup = None
if config.backup.enabled:
    backup = Backup("backup", BackupArgs(config.backup.rules, protect=config.protect_data, account=account,
                                         lock=config.backup.lock, copy_to_region=config.backup.copy_to_region))

# ---- outputs (nothing secret)
jump = balancer.public_ip.apply(lambda ip: f"{SSH_USER}@{ip}")
pulumi.export("vpcId", network.vpc.id)
pulumi.export("availabilityZones", list(zones))
pulumi.export("balancerPublicIp", balancer.public_ip)
pulumi.export("balancerPrivateIp", balancer.private_ip)
pulumi.export("workerPrivateIps", [w.private_ip for w in workers])
pulumi.export("sshBalancer", jump.apply(lambda j: f"ssh {j}"))
pulumi.export(
    "sshWorkers",
    [pulumi.Output.concat("ssh -J ", jump, f" {SSH_USER}@", w.private_ip) for w in workers],
)
if database is not None:
    pulumi.export("databasePrivateIp", database.private_ip)
    pulumi.export("sshDatabase", pulumi.Output.concat("ssh -J ", jump, f" {SSH_USER}@", database.private_ip))
if backup is not None:
    pulumi.export("backupVaultName", backup.vault.name)
# What `pulumi destroy` keeps (protect + retainOnDelete; docs/stack.md "Teardown").
kept = {}
if config.protect_data:
    kept["ebsKmsKey"] = ebs_key.key.arn
    if database is not None:
        kept["databaseVolumes"] = [v.id for v in database.volumes.volumes.values()]
    if backup is not None:
        kept["backupVault"] = backup.vault.name
        kept["backupKmsKey"] = backup.key.arn
        if backup.copy_vault is not None:
            kept["backupCopy"] = {"region": config.backup.copy_to_region, "vault": backup.copy_vault.name,
                                  "kmsKey": backup.copy_key.arn}
pulumi.export("keptOnDestroy", kept)
pulumi.export(
    "sites",
    {
        s.name: {"domain": s.domain, "onionAddress": s.onion_address, "originAddress": s.origin_address}
        for s in config.sites
    },
)
# Instance addresses are public (clients never see them; the balancer fetches their
# descriptors): worker name -> site -> one address per tor daemon.
pulumi.export(
    "instanceAddresses",
    {w.node_name: w.instance_addresses.apply(
        lambda per_site: None if per_site is None  # not known: mocks without command emulation
        else {site: [f"{a}.onion" for a in addrs] for site, addrs in per_site.items()})
     for w in workers},
)
pulumi.export("balancerPublishes", config.balancer.publish)
pulumi.export(
    "introPoints",
    {
        "perWorker": config.intro_points_per_worker,
        "total": config.workers * config.intro_points_per_worker,
    },
)
