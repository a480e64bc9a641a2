"""The remote steps, each a component: what runs on which machine, after what.

    WorkerSetup     worker-N-tor-nginx: the rendered worker files (torrcs, ob_configs,
                    nginx, units, scripts), installed and checked by the templates' own
                    scripts; declares `instance_addresses`, the addresses tor created (the
                    keys never leave the worker)
    BalancerPackage balancer-onion-package (copy) + balancer-package: the `onion` package
                    in the balancer's venv, swapped in whole
    BalancerCore    balancer-core, after BalancerPackage and EVERY WorkerSetup: the
                    balancer's config rendered from the workers' addresses, plus the master
                    key files (secret stdin); (re)starts tor and the core
    WorkerDrain     worker-N-drain, on the balancer: its delete holds the worker's removal
                    until the balancer publishes without it (scale-in)
    DatabaseSetup   database-postgres: volumes, the cluster, pg_hba; the password (secret stdin)

Each takes a typed args dataclass, parents its remote resources, and registers what others
read. Every step's `triggers` = [instance id, content hash of what it installs, digest of
its script], so it re-runs exactly when its rendered input (or its machine) changes, and a
second `pulumi up` with the same config changes nothing. Component names end in "-step";
their remote resources keep the step's own name (`worker-1-tor-nginx-step` holds the
command `worker-1-tor-nginx`). docs/bootstrap.md shows the order and the edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
from pulumi_command import remote

from infra.config import Site
from nodes.balancer import BalancerNode
from nodes.database import DatabaseNode
from nodes.instance import Node
from nodes.pki import DatabaseCertificates
from nodes.payload import BinaryFile, digest, onion_package_tarball, payload
from nodes.remote import STEP_TIMEOUTS, command, connection
from nodes.render import BalancerSpec, DatabaseTls, RenderedFile, WorkerSpec, content_hash, render_balancer, \
    render_database, render_worker, worker_secret_files
from nodes.roles import RoleSpecs
from nodes.scripts import as_root, drain_script, package_script, parse_instance_addresses, runner_script, \
    worker_setup_script
from nodes.worker import WorkerNode
from onion.keys import IdentityKey

STEP_SUFFIX = "-step"


def _resource_name(name: str) -> str:
    """The name of a step's remote resource: the step component's name without "-step"."""
    return name.removesuffix(STEP_SUFFIX)


def _opts(step: pulumi.ComponentResource, node: Node, *after: pulumi.Resource,
          legacy_parent: Optional[pulumi.Input[str]] = None, **kwargs) -> pulumi.ResourceOptions:
    """A step's remote resource: a child of the step, after the node is ready and `after`.

    `legacy_parent`: the URN of the resource it was a child of before steps were
    components (the node at the stack's top level), so that a stack deployed then keeps it
    instead of replacing it (an alias; nodes/site.py passes it)."""
    aliases = [pulumi.Alias(parent=legacy_parent)] if legacy_parent is not None else None
    return pulumi.ResourceOptions(parent=step, depends_on=[*node.ready, *after], aliases=aliases, **kwargs)


# ================================================================ worker
@dataclass(frozen=True)
class WorkerSetupArgs:
    node: WorkerNode
    spec: WorkerSpec  # RoleSpecs.worker: the same for every worker
    ssh_key: pulumi.Input[str]  # secret
    # HTTPS sites' (chain, key) PEMs (OnionCertificates.files(): secret) and the chains'
    # digest (public, for the triggers); None when no site serves HTTPS.
    tls: Optional[pulumi.Output] = None
    tls_digest: Optional[pulumi.Output] = None


class WorkerSetup(pulumi.ComponentResource):
    """Installs and starts a worker's tor daemons and nginx; declares `instance_addresses`
    (secret Output of {site: [56-char addresses in daemon order]}, None when unknown: mocks
    without command emulation).

    The instance addresses are for the operator only (whoever knows one can solve PoW
    against that instance and jump its queue: docs/sites.md): the step's stdout, where the
    script prints them, is secret and not logged (stderr, tool errors only, still is). Its
    stdin is secret when it carries HTTPS sites' keys."""

    command: remote.Command
    instance_addresses: pulumi.Output
    instance_metrics: pulumi.Output  # secret {instance address: its MetricsPort URL on the worker}

    def __init__(self, name: str, args: WorkerSetupArgs, opts: Optional[pulumi.ResourceOptions] = None, *,
                 legacy_parent: Optional[pulumi.Input[str]] = None):
        super().__init__("onionstack:nodes:WorkerSetup", name, None, opts)
        spec, node = args.spec, args.node
        self.node_name = node.node_name  # the balancer labels this worker's instances with it
        files = render_worker(spec)
        script = worker_setup_script(spec)
        triggers = [node.instance.id, content_hash(files), digest(script)]
        if any(site.https for site in spec.sites):
            if args.tls is None or args.tls_digest is None:
                raise ValueError(f"{name}: the worker has HTTPS sites: give their certificates (tls, tls_digest)")
            stdin = pulumi.Output.secret(args.tls.apply(
                lambda pems: payload({**files, **worker_secret_files(spec, pems)}) if pems is not None else None))
            triggers.append(args.tls_digest)  # a renewed certificate re-runs the step
        else:
            stdin = payload(files)
        self.command = command(
            _resource_name(name),
            connection=connection(node.ssh, args.ssh_key),
            create=as_root(script),
            stdin=stdin,
            triggers=triggers,
            secret=True,
            log_stderr=True,
            opts=_opts(self, node, legacy_parent=legacy_parent),
        )
        sites = [s.name for s in spec.sites]
        self.instance_addresses = pulumi.Output.secret(self.command.stdout.apply(
            lambda out: parse_instance_addresses(out, sites, spec.daemon_names)))
        # Where the balancer reads each instance's tor MetricsPort (its PoW queue depth):
        # the worker's nginx serves it on the VPC address. Keyed by instance address: secret.
        self.instance_metrics = pulumi.Output.secret(pulumi.Output.all(node.private_ip, self.instance_addresses).apply(
            lambda a: spec.instance_metrics_urls(a[0], a[1]) if a[1] is not None and a[0] else {}))
        self.register_outputs({"instanceAddresses": self.instance_addresses,
                               "instanceMetrics": self.instance_metrics})


# ================================================================ balancer
@dataclass(frozen=True)
class BalancerPackageArgs:
    node: BalancerNode
    ssh_key: pulumi.Input[str]  # secret


class BalancerPackage(pulumi.ComponentResource):
    """Copies the `onion` package (a reproducible tarball) to the balancer and installs it
    into the core's venv; declares `package_digest` (what changes when the package does)."""

    copy: remote.CopyToRemote
    command: remote.Command
    package_digest: str

    def __init__(self, name: str, args: BalancerPackageArgs, opts: Optional[pulumi.ResourceOptions] = None, *,
                 legacy_parent: Optional[pulumi.Input[str]] = None):
        super().__init__("onionstack:nodes:BalancerPackage", name, None, opts)
        node = args.node
        package = onion_package_tarball()
        self.package_digest = digest(package)
        package_path = f"/home/{node.ssh.user}/onionstack-onion.tar.gz.b64"
        self.copy = remote.CopyToRemote(
            f"{node.node_name}-onion-package",
            connection=connection(node.ssh, args.ssh_key),
            source=pulumi.StringAsset(package),
            remote_path=package_path,
            triggers=[node.instance.id, self.package_digest],
            opts=_opts(self, node, legacy_parent=legacy_parent, custom_timeouts=STEP_TIMEOUTS),
        )
        script = package_script(package_path)
        self.command = command(
            _resource_name(name),
            connection=connection(node.ssh, args.ssh_key),
            create=as_root(script),
            triggers=[node.instance.id, self.package_digest, digest(script)],
            opts=_opts(self, node, self.copy, legacy_parent=legacy_parent),
        )
        self.register_outputs({"packageDigest": self.package_digest})


def key_files(spec: BalancerSpec, sites: Sequence[Site]) -> dict[str, BinaryFile]:
    """Each site's master key as tor's `hs_ed25519_secret_key` file at the path the
    rendered config and apply.sh name (0600, the core's user). Only for the secret
    payload: never logged, never in a plain input."""
    return {
        spec.layout.key(spec.key_file(s.name)): BinaryFile(
            IdentityKey.from_config_string(s.master_key.reveal()).to_tor_secret_key(), 0o600, spec.user)
        for s in sites
    }


@dataclass(frozen=True)
class BalancerCoreArgs:
    node: BalancerNode
    specs: RoleSpecs
    sites: tuple[Site, ...]  # the stack config's sites: their master keys (secrets)
    package: BalancerPackage
    workers: tuple[WorkerSetup, ...]
    ssh_key: pulumi.Input[str]  # secret
    standby: bool = False  # a standby balancer: uploads only after a takeover (onion/standby.py)


class BalancerCore(pulumi.ComponentResource):
    """The balancer's tor and core, configured from every worker's instance addresses;
    declares `config_digest` (of the public files it installs: addresses, publish, key
    paths; never key material) and `instances` ({site: [addresses]})."""

    command: remote.Command
    config_digest: pulumi.Output
    instances: pulumi.Output

    def __init__(self, name: str, args: BalancerCoreArgs, opts: Optional[pulumi.ResourceOptions] = None, *,
                 legacy_parent: Optional[pulumi.Input[str]] = None):
        super().__init__("onionstack:nodes:BalancerCore", name, None, opts)
        node, specs, sites = args.node, args.specs, args.sites
        names = [s.name for s in specs.sites]
        script = runner_script(specs.layout.script_dir)

        def merge(per_worker: list) -> Optional[dict[str, list[str]]]:
            if any(w is None for w in per_worker):
                return None  # addresses not known (mocks without command emulation)
            return {n: [a for w in per_worker for a in w[n]] for n in names}

        worker_names = [getattr(w, "node_name", f"worker-{i + 1}") for i, w in enumerate(args.workers)]

        def workers_of(per_worker: list) -> dict[str, str]:
            """instance address -> the worker it runs on (metrics' worker label, status)."""
            return {a.lower().removesuffix(".onion"): worker_names[i]
                    for i, w in enumerate(per_worker) if w is not None for n in names for a in w[n]}

        per_worker = pulumi.Output.all(*[w.instance_addresses for w in args.workers])
        metrics = pulumi.Output.all(*[w.instance_metrics for w in args.workers]).apply(
            lambda ms: {a: url for m in ms if m for a, url in m.items()})
        self.instances = per_worker.apply(lambda ws: merge(list(ws)))
        spec = pulumi.Output.all(self.instances, per_worker, metrics).apply(
            lambda a: specs.balancer(a[0], workers=workers_of(list(a[1])), standby=args.standby,
                                     instance_metrics=a[2])
            if a[0] is not None else None)
        public = spec.apply(lambda sp: render_balancer(sp) if sp is not None else None)
        # Secret payload: the public files + the master key files, one tar on stdin.
        stdin = pulumi.Output.secret(spec.apply(
            lambda sp: payload({**render_balancer(sp), **key_files(sp, sites)}) if sp is not None else None))
        # A hash of the files (which name the instance addresses, secret): not secret itself.
        self.config_digest = pulumi.Output.unsecret(public.apply(lambda f: content_hash(f) if f is not None else None))
        # Triggers from public facts only: the rendered files and each site's onion address
        # (a new key is a new address), never key material.
        self.command = command(
            _resource_name(name),
            connection=connection(node.ssh, args.ssh_key),
            create=as_root(script),
            stdin=stdin,
            triggers=[node.instance.id, self.config_digest,
                      digest(script, *[s.onion_address for s in sites])],
            secret=True,
            opts=_opts(self, node, args.package, *args.workers, legacy_parent=legacy_parent),
        )
        self.register_outputs({"configDigest": self.config_digest, "instances": self.instances})


# ================================================================ drain (scale-in)
@dataclass(frozen=True)
class WorkerDrainArgs:
    worker: WorkerNode
    setup: WorkerSetup  # the worker's own step: its instance addresses
    balancer: BalancerNode  # where the drain runs
    core: BalancerCore
    ssh_key: pulumi.Input[str]  # secret


class WorkerDrain(pulumi.ComponentResource):
    """Runs nothing on create; its delete waits (bounded) until the balancer publishes
    without the worker's instance addresses. Declare it as a child of the worker (it goes
    with the worker): it depends on the worker's instance and step (Pulumi deletes it FIRST)
    and on the balancer's instance and core step (still there while it waits). Declares
    `addresses` (the flat, sorted list its delete waits for)."""

    command: remote.Command
    addresses: pulumi.Output

    def __init__(self, name: str, args: WorkerDrainArgs, opts: Optional[pulumi.ResourceOptions] = None, *,
                 legacy_parent: Optional[pulumi.Input[str]] = None):
        super().__init__("onionstack:nodes:WorkerDrain", name, None, opts)
        # Secret like the addresses themselves: in the triggers, the delete command and the
        # component's outputs they stay out of plain state and logs.
        self.addresses = pulumi.Output.secret(args.setup.instance_addresses.apply(
            lambda per_site: sorted({a for v in per_site.values() for a in v}) if per_site is not None else []))
        self.command = command(
            _resource_name(name),
            connection=connection(args.balancer.ssh, args.ssh_key),
            create="true",
            # As root: the config (0640) and the status file (in a 0750 dir) belong to the
            # balancer core's user.
            delete=self.addresses.apply(lambda addresses: as_root(drain_script(addresses))),
            # A new instance (new tor keys, new addresses) REPLACES the drain: the old one's
            # delete then waits for the old addresses before the old instance goes.
            triggers=[self.addresses],
            # The addresses are operator-only: stdout (which names them) secret and unlogged;
            # stderr (the WARNING line, no addresses) still logged.
            secret=True,
            log_stderr=True,
            opts=_opts(self, args.worker, args.setup, args.balancer.instance, args.core,
                       legacy_parent=legacy_parent, replace_on_changes=["triggers"]),
        )
        self.register_outputs({"addresses": self.addresses})


# ================================================================ database
@dataclass(frozen=True)
class DatabaseSetupArgs:
    node: DatabaseNode
    specs: RoleSpecs
    password: pulumi.Input[str]  # secret (a RandomPassword's result)
    client_cidrs: tuple[pulumi.Input[str], ...]  # the subnets PostgreSQL accepts the application from
    ssh_key: pulumi.Input[str]  # secret
    certificates: DatabaseCertificates  # its TLS certificate (+ key, secret) and the CA's
    app_passwords: Optional[dict] = None  # app site name -> secret password (RandomPassword result)


def database_files(spec, password: Optional[str], tls_key: Optional[str] = None,
                   app_passwords: Optional[dict] = None) -> dict[str, RenderedFile]:
    """The secret half of the database payload: the password at the path apply.sh reads
    and PostgreSQL's TLS key (both 0600 postgres). The generated password is alphanumeric.
    `None` only under mocks that do not emulate `random.RandomPassword`."""
    out: dict[str, RenderedFile] = {}
    if password is not None:
        if not password.isalnum():
            raise ValueError("the database password must be alphanumeric (RandomPassword special=False)")
        out[spec.layout.key(spec.password_file)] = RenderedFile(password, 0o600, "postgres")
    if tls_key is not None:
        out[spec.layout.key(spec.key_file)] = RenderedFile(tls_key, 0o600, "postgres")
    for app, app_password in (app_passwords or {}).items():
        if app_password is None:
            continue
        if not app_password.isalnum():
            raise ValueError(f"app site {app}'s database password must be alphanumeric (RandomPassword special=False)")
        out[spec.layout.key(spec.app_password_file(app))] = RenderedFile(app_password, 0o600, "postgres")
    return out


class DatabaseSetup(pulumi.ComponentResource):
    """PostgreSQL on the database's volumes; declares `config_digest` (of its public files)."""

    command: remote.Command
    config_digest: pulumi.Output

    def __init__(self, name: str, args: DatabaseSetupArgs, opts: Optional[pulumi.ResourceOptions] = None, *,
                 legacy_parent: Optional[pulumi.Input[str]] = None):
        super().__init__("onionstack:nodes:DatabaseSetup", name, None, opts)
        node, specs = args.node, args.specs
        script = runner_script(specs.layout.script_dir)
        volumes = pulumi.Output.all(**{p: vid for p, (vid, _) in node.volume_devices.items()})
        devices = {p: device for p, (_, device) in node.volume_devices.items()}
        certs = args.certificates
        tls_pems = pulumi.Output.all(certs.cert_pem, certs.ca_cert_pem)
        apps = tuple(sorted(args.app_passwords or {}))
        spec = pulumi.Output.all(node.private_ip, pulumi.Output.all(*args.client_cidrs), volumes, tls_pems).apply(
            lambda a: specs.database(a[0], a[1], {p: (a[2][p], devices[p]) for p in devices},
                                     DatabaseTls(cert_pem=a[3][0], ca_pem=a[3][1]), apps))
        app_passwords = pulumi.Output.all(**(args.app_passwords or {}))
        # The public files: the certificates among them, so a renewed one changes the
        # config digest (the triggers) and the step installs it.
        public = spec.apply(render_database)
        stdin = pulumi.Output.secret(pulumi.Output.all(spec, public, args.password, certs.key_pem, app_passwords).apply(
            lambda a: payload({**a[1], **database_files(a[0], a[2], a[3], a[4])})))
        self.config_digest = public.apply(content_hash)
        self.command = command(
            _resource_name(name),
            connection=connection(node.ssh, args.ssh_key),
            create=as_root(script),
            stdin=stdin,
            # The password is not in the triggers; a new one changes stdin, which updates.
            triggers=[node.instance.id, self.config_digest, digest(script)],
            secret=True,
            opts=_opts(self, node, legacy_parent=legacy_parent),
        )
        self.register_outputs({"configDigest": self.config_digest})
