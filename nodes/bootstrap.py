"""The remote steps of every role, wired the way the softmap runbook orders them.

    worker-N-tor-nginx     (each worker, through the balancer as jump host)
        the rendered worker files (nodes/render.render_worker: torrcs, ob_configs, nginx,
        units, install-packages.sh, apply.sh), installed and checked by the templates'
        own scripts (`tor --verify-config`, `nginx -t`, rollback on failure); stdout: the
        worker's instance onion addresses (tor created their keys on the worker; the keys
        never leave it)
    balancer-onion-package (CopyToRemote: the `onion` package as a reproducible tarball)
    balancer-package       a venv with onion/requirements.txt and the package, swapped in whole
    balancer-core          AFTER every worker step and balancer-package: render_balancer from
        the workers' addresses + the master key files (secret stdin); its apply.sh checks
        them with `python -m onion maps` and (re)starts tor and the balancer core
    worker-N-drain         on the balancer; its `delete` waits (bounded) until the balancer
        publishes descriptors without worker N's introduction points (scale-in)
    database-postgres      (through the jump host) render_database: xfs volumes, the cluster,
        pg_hba; the password (secret stdin, from a RandomPassword)

Every step: `triggers` = [instance id, content hash of what it installs, ...], so it re-runs
exactly when its rendered input (or its machine) changes, and a second `pulumi up` with
the same config changes nothing. docs/bootstrap.md explains the order and the scale-in
dependency edges.
"""
from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pulumi
from pulumi_command import remote

from infra.config import ConfigError, Site, StackConfig
from infra.storage import VolumeSpec as VolumeAttachmentSpec
from nodes import steps
from nodes.steps import BinaryFile
from nodes.render import (BALANCER_UNIT, BalancerSpec, DatabaseSpec, Layout, RenderedFile, RenderError, SiteSpec,
                          TorTuning, WorkerSpec, content_hash, database_volumes, render_balancer, render_database, render_worker)
from onion.keys import IdentityKey, parse_address

ROOT = Path(__file__).resolve().parent.parent
ONION_PACKAGE_DIR = ROOT / "onion"
LAYOUT = Layout()  # a machine's layout: files land under /

# ---- the balancer core's install (the paths render_balancer's units and checks use)
_BALANCER_DEFAULTS = BalancerSpec.__dataclass_fields__
VENV = _BALANCER_DEFAULTS["venv"].default
VENV_PYTHON = f"{VENV}/bin/python"
PACKAGE_LIB = _BALANCER_DEFAULTS["package_lib"].default
BALANCER_USER = _BALANCER_DEFAULTS["user"].default
BALANCER_CONFIG = LAYOUT.path("etc_dir", "balancer.yaml")  # BalancerSpec.config_file
BALANCER_STATE_DIR = "/" + _BALANCER_DEFAULTS["state_dir_rel"].default  # BalancerSpec.state_dir

WHEELHOUSE = "/var/cache/onionstack/wheels"  # an image's own wheels: pip installs offline from them

# ---- the worker's addresses: how long the step waits for tor to write every hostname file
HOSTNAME_WAIT_SECONDS = 180
ADDRESS_LINE = "onionstack-instance"  # stdout lines: "onionstack-instance <site> <daemon> <address>"

# ---- scale-in
DRAIN_WAIT_SECONDS = 900   # bounded wait for the balancer to stop publishing a removed worker
DRAIN_POLL_SECONDS = 15
STATUS_FRESH_SECONDS = 180  # a status file older than this means the balancer core is not running


# ================================================================ config -> render specs
def site_spec(site: Site) -> SiteSpec:
    """The renderer's view of a config site (public facts only; no key)."""
    return SiteSpec(
        name=site.name,
        domain=site.domain,
        onion_address=site.onion_address,
        origin_address=site.origin_address,
        block_hosts=site.block_hosts,
        block_paths=site.block_paths,
    )


def check_renderable(config: StackConfig) -> None:
    """Raise ConfigError, naming the config key, for values the stack config accepts but
    the templates cannot render (e.g. a `blockPaths` regex not anchored with '^', an IPv6
    `originAddress`), so the program stops before declaring any resource instead of
    failing halfway through."""
    for i, site in enumerate(config.sites):
        try:
            site_spec(site)
        except RenderError as exc:
            raise ConfigError(f"onionstack:sites[{i}] ({site.name}): the node templates refuse it: {exc}") from None
    try:
        worker_spec(config)
        # Any valid address stands in for the instances the workers will report.
        balancer_spec(config, {s.name: [s.onion_address] for s in config.sites})
    except RenderError as exc:
        raise ConfigError(f"onionstack config: the node templates refuse it: {exc}") from None


def vpc_resolver(vpc_cidr: str) -> str:
    """The Amazon-provided DNS resolver of a VPC: its base address + 2."""
    return str(ipaddress.ip_network(vpc_cidr).network_address + 2)


def worker_spec(config: StackConfig) -> WorkerSpec:
    return WorkerSpec(
        sites=tuple(site_spec(s) for s in config.sites),
        resolver=vpc_resolver(config.vpc_cidr),
        tor_daemons=config.tor_daemons_per_worker,
        tor=TorTuning(intro_points=config.intro_points_per_daemon),
        layout=LAYOUT,
    )


def balancer_spec(config: StackConfig, instances: Mapping[str, Sequence[str]]) -> BalancerSpec:
    return BalancerSpec(
        sites=tuple(site_spec(s) for s in config.sites),
        instances={name: tuple(addrs) for name, addrs in instances.items()},
        publish=config.balancer.publish,
        layout=LAYOUT,
    )


def database_spec(private_ip: str, client_cidrs: Sequence[str], volume_ids: Mapping[str, str],
                  attachments: Sequence[VolumeAttachmentSpec], pg_version: int = 16) -> DatabaseSpec:
    """`volume_ids`: purpose (data/journal/log) -> EBS id; `attachments`: the stack's
    volume specs (purpose -> device name)."""
    device = {a.purpose: a.device_name for a in attachments}
    pair = lambda purpose: (volume_ids[purpose], device[purpose])  # noqa: E731
    return DatabaseSpec(
        listen_ip=private_ip,
        client_cidrs=tuple(client_cidrs),
        volumes=database_volumes(pair("data"), pair("journal"), pair("log")),
        pg_version=pg_version,
        layout=LAYOUT,
    )


# ================================================================ worker
def worker_script(spec: WorkerSpec, *, hostname_wait: int = HOSTNAME_WAIT_SECONDS) -> str:
    """Install and check via the rendered scripts; then print every instance address,
    waiting (bounded) for each tor daemon to write its hostname files."""
    q = shlex.quote
    post = [f"deadline=$(( $(date +%s) + {int(hostname_wait)} ))"]
    for site in spec.sites:
        for daemon in spec.daemon_names:
            path = spec.hs_dir(daemon, site) + "/hostname"
            post += [
                f"until [ -s {q(path)} ]; do",
                "  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then",
                f"    echo {q(f'onionstack: tor {daemon} wrote no {path} within {hostname_wait} s; see journalctl -u onionstack-tor@{daemon}')} >&2",
                "    exit 1",
                "  fi",
                "  sleep 2",
                "done",
                f"printf '%s %s %s %s\\n' {ADDRESS_LINE} {q(site.name)} {q(daemon)} \"$(tr -d '[:space:]' < {q(path)})\"",
            ]
    return steps.role_script(LAYOUT.script_dir, post=post)


def parse_instance_addresses(stdout: Optional[str], sites: Sequence[str],
                             daemons: Sequence[str]) -> Optional[dict[str, list[str]]]:
    """site -> the worker's instance addresses (56 chars, daemon order) from a step's stdout.

    Every (site, daemon) must be reported exactly once with a valid v3 address, else the
    balancer would be rendered from a wrong list: raise naming what is missing or bad.
    `None` (no stdout at all) only happens under Pulumi mocks that do not emulate commands
    (`python -m mockrun`); the provider always sets stdout. It stays None ("not known").
    """
    if stdout is None:
        return None
    found: dict[tuple[str, str], str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] != ADDRESS_LINE:
            continue
        _, site, daemon, address = parts
        try:
            parse_address(address)
        except ValueError:
            raise ValueError(f"worker step reported {address!r} for site {site} daemon {daemon}: "
                             f"not a v3 onion address; check that daemon's hostname file") from None
        found[(site, daemon)] = address.removesuffix(".onion")
    missing = [f"{s}/{d}" for s in sites for d in daemons if (s, d) not in found]
    if missing:
        raise ValueError(f"worker step reported no instance address for {', '.join(missing)}; "
                         f"re-run `pulumi up` (the step waits {HOSTNAME_WAIT_SECONDS} s for tor)")
    return {s: [found[(s, d)] for d in daemons] for s in sites}


# ================================================================ balancer
def onion_package_tarball(package_dir: Path = ONION_PACKAGE_DIR) -> str:
    """base64 of a reproducible tar.gz of the `onion` package (sources + requirements).

    Built from the tracked file kinds only, so __pycache__ or editor files on the deploying
    machine never change it (a change would re-run the balancer's install step).
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(package_dir.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix != ".py" and path.name != "requirements.txt":
                continue
            rel = path.relative_to(package_dir.parent).as_posix()
            data = path.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode("ascii")


def package_script(package_path: str, *, venv: str = VENV, package_lib: str = PACKAGE_LIB) -> str:
    """balancer-package: python3-venv, the venv with the package's requirements, and the
    package itself, unpacked beside the live copy, import-checked, then swapped in whole.
    A running balancer core is restarted onto the new version (the first run has none:
    balancer-core starts it)."""
    q = shlex.quote
    new, old = f"{package_lib}.new", f"{package_lib}.old"
    return "\n".join([
        "set -euo pipefail",
        "umask 022",  # the core runs as its own user: the venv and the package are world-readable
        "export DEBIAN_FRONTEND=noninteractive",
        "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi",
        "if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed'; then",
        "  apt-get update -q </dev/null",
        "  apt-get install -y -q --no-install-recommends python3-venv </dev/null",
        "fi",
        f"[ -x {q(venv + '/bin/python')} ] || python3 -m venv {q(venv)}",
        f"rm -rf -- {q(new)} && install -d -m 0755 {q(new)}",
        f"base64 -d < {q(package_path)} | tar -xz --no-same-owner -C {q(new)}",
        # An image with its own wheels (the rehearsal's hosts: no internet) installs from them only.
        f"wheels=(); if [ -d {q(WHEELHOUSE)} ]; then wheels=(--no-index --find-links {q(WHEELHOUSE)}); fi",
        f"{q(venv + '/bin/pip')} install --quiet --disable-pip-version-check \"${{wheels[@]}}\" -r {q(new + '/onion/requirements.txt')} </dev/null",
        f"PYTHONPATH={q(new)} {q(venv + '/bin/python')} -c 'import onion.balancer, onion.servicecli, onion.status'",
        f"rm -rf -- {q(old)}",
        f"if [ -d {q(package_lib)} ]; then mv -- {q(package_lib)} {q(old)}; fi",
        f"mv -- {q(new)} {q(package_lib)} && rm -rf -- {q(old)}",
        # The venv's python finds the package without PYTHONPATH (operators run
        # `sudo /opt/onionstack/venv/bin/python -m onion status` as is).
        f"echo {q(package_lib)} > \"$({q(venv + '/bin/python')} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/onionstack.pth\"",
        f"if systemctl is-active --quiet {BALANCER_UNIT}; then systemctl restart {BALANCER_UNIT}; fi",
    ]) + "\n"


def key_files(spec: BalancerSpec, sites: Sequence[Site]) -> dict[str, BinaryFile]:
    """Each site's master key as tor's `hs_ed25519_secret_key` file at the path the
    rendered config and apply.sh name (0600, the core's user). Only for the secret
    payload: never logged, never in a plain input."""
    return {
        spec.layout.key(spec.key_file(s.name)): BinaryFile(
            IdentityKey.from_config_string(s.master_key.reveal()).to_tor_secret_key(), 0o600, spec.user)
        for s in sites
    }


# ================================================================ drain (scale-in)
# Runs on the balancer, reading `python -m onion status --json` from stdin; argv: the
# removed worker's instance addresses, the config file's mtime. Exit 0 = drained.
DRAIN_CHECK = r"""
import json, sys, time
gone = set(a.removesuffix(".onion") for a in sys.argv[2:])
config_mtime = float(sys.argv[1])
s = json.load(sys.stdin)
if time.time() - float(s.get("written_at") or 0) > %(fresh)d:
    sys.exit("status file is stale: is the balancer core running?")
if float(s.get("written_at") or 0) < config_mtime:
    sys.exit("status predates the current config")
if not s.get("frontends"):
    sys.exit("the status lists no frontends yet")
for fe in s.get("frontends", []):
    if any(i.get("address") in gone for i in fe.get("instances", [])):
        sys.exit("the balancer still lists the instance")
    owners = set(p.get("instance") for p in fe.get("published_intro_points", []))
    if owners & gone or "?" in owners:
        sys.exit("descriptors with the instance's introduction points are still published")
    ups = [u for d in fe.get("descriptors", []) for u in d.get("hsdirs", [])]
    # Every responsible HSDir (current and next period) has the new descriptor: an HSDir
    # still holding the old one would keep handing out the removed instance's intro points.
    if not ups or not all(u.get("state") in ("uploaded", "standby") for u in ups):
        sys.exit("not every HSDir has the new descriptor yet")
""" % {"fresh": STATUS_FRESH_SECONDS}


def drain_script(addresses: Sequence[str], *, wait: int = DRAIN_WAIT_SECONDS, poll: int = DRAIN_POLL_SECONDS,
                 config: str = BALANCER_CONFIG, python: str = VENV_PYTHON, state_dir: str = BALANCER_STATE_DIR,
                 package_lib: str = PACKAGE_LIB) -> str:
    """The drain step's delete: wait, bounded, until the balancer publishes without `addresses`.

    - the balancer config still lists the instance: this is a whole-stack destroy (or the
      balancer was not re-rendered), nothing will drain it: say so and go on at once;
    - no balancer core (no venv/config): nothing publishes it: go on;
    - otherwise poll `python -m onion status --json` until DRAIN_CHECK passes, at most
      `wait` s, then go on with a WARNING (the instance's intro points may stay in
      descriptors until they expire; clients then retry other intro points).
    Never fails: a delete that fails would block the scale-in forever.
    """
    q = shlex.quote
    addrs = steps.quoted_list(a.removesuffix(".onion") for a in addresses)
    return "\n".join([
        "set -u",
        f"addrs=({addrs})",
        "if [ ${#addrs[@]} -eq 0 ]; then echo 'onionstack drain: no instance addresses recorded; nothing to wait for'; exit 0; fi",
        f"check={q(DRAIN_CHECK)}",
        f"if [ ! -x {q(python)} ] || [ ! -f {q(config)} ]; then",
        "  echo 'onionstack drain: no balancer core on this host; nothing to wait for'",
        "  exit 0",
        "fi",
        "for a in \"${addrs[@]}\"; do",
        f"  if grep -q \"$a\" {q(config)}; then",
        "    echo \"onionstack drain: the balancer config still lists $a (whole-stack destroy?); not waiting\"",
        "    exit 0",
        "  fi",
        "done",
        f"mtime=$(stat -c %Y {q(config)})",
        f"deadline=$(( $(date +%s) + {int(wait)} ))",
        "while :; do",
        f"  if why=$(PYTHONPATH={q(package_lib)} {q(python)} -m onion status --json --state-dir {q(state_dir)} 2>&1 "
        "| python3 -c \"$check\" \"$mtime\" \"${addrs[@]}\" 2>&1); then",
        "    echo \"onionstack drain: the balancer publishes without ${addrs[*]}\"",
        "    exit 0",
        "  fi",
        "  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then",
        f"    echo \"onionstack drain: WARNING: not drained after {int(wait)} s ($why); proceeding\" >&2",
        "    exit 0",
        "  fi",
        f"  sleep {int(poll)}",
        "done",
    ]) + "\n"


# ================================================================ database
def database_files(spec: DatabaseSpec, password: Optional[str]) -> dict[str, RenderedFile]:
    """The secret half of the database payload: the password at the path apply.sh reads
    (0600 postgres). The generated password is alphanumeric. `None` only under mocks
    that do not emulate `random.RandomPassword` (`python -m mockrun`)."""
    if password is None:
        return {}
    if not password.isalnum():
        raise ValueError("the database password must be alphanumeric (RandomPassword special=False)")
    return {spec.layout.key(spec.password_file): RenderedFile(password, 0o600, "postgres")}


# ================================================================ composing the steps
@dataclass(frozen=True)
class BootstrapContext:
    """What every step needs from the stack config (secrets stay Outputs or `Secret`s)."""

    config: StackConfig
    private_key: pulumi.Output  # secret

    @classmethod
    def of(cls, config: StackConfig) -> "BootstrapContext":
        """Checks that the templates can render `config` (ConfigError otherwise): call it
        before declaring resources."""
        check_renderable(config)
        return cls(config, config.ssh_private_key.output())

    def connection(self, node, *, dial_error_limit: int = steps.UNLIMITED_DIALS) -> remote.ConnectionArgs:
        return steps.connection(node.ssh_host, node.ssh_user, self.private_key,
                                jump_host=node.jump_host, dial_error_limit=dial_error_limit)


def worker_bootstrap(ctx: BootstrapContext):
    """The `bootstrap` callable of a WorkerNode: declares worker-N-tor-nginx and sets
    `node.bootstrap_step` and `node.instance_addresses` (Output[{site: [addresses]}])."""
    spec = worker_spec(ctx.config)
    files = render_worker(spec)
    encoded = steps.payload(files)
    script = worker_script(spec)
    files_hash = content_hash(files)
    sites = [s.name for s in spec.sites]

    def bootstrap(node) -> None:
        step = steps.command(
            f"{node.node_name}-tor-nginx",
            connection=ctx.connection(node),
            create=steps.as_root(script),
            stdin=encoded,
            triggers=[node.instance.id, files_hash, steps.digest(script)],
            opts=node.child_opts(),
        )
        node.bootstrap_step = step
        node.instance_addresses = step.stdout.apply(
            lambda out: parse_instance_addresses(out, sites, spec.daemon_names))

    return bootstrap


def balancer_bootstrap(ctx: BootstrapContext):
    """The `bootstrap` callable of the BalancerNode: the onion package copy + its install."""
    package = onion_package_tarball()
    package_hash = steps.digest(package)

    def bootstrap(node) -> None:
        package_path = f"/home/{node.ssh_user}/onionstack-onion.tar.gz.b64"
        copy = remote.CopyToRemote(
            f"{node.node_name}-onion-package",
            connection=ctx.connection(node),
            source=pulumi.StringAsset(package),
            remote_path=package_path,
            triggers=[node.instance.id, package_hash],
            opts=node.child_opts(custom_timeouts=steps.STEP_TIMEOUTS),
        )
        script = package_script(package_path)
        node.package_step = steps.command(
            f"{node.node_name}-package",
            connection=ctx.connection(node),
            create=steps.as_root(script),
            triggers=[node.instance.id, package_hash, steps.digest(script)],
            opts=node.child_opts(copy),
        )
        node.package_copy = copy

    return bootstrap


def balancer_core_step(ctx: BootstrapContext, balancer, workers: Sequence) -> remote.Command:
    """balancer-core: after balancer-package and EVERY worker step, rendered from their
    instance addresses (render_balancer) plus the master key files (secret stdin)."""
    config = ctx.config
    site_names = [s.name for s in config.sites]
    script = steps.role_script(LAYOUT.script_dir)

    def spec_of(per_worker: list) -> Optional[BalancerSpec]:
        if any(w is None for w in per_worker):
            return None  # addresses not known (mocks without command emulation)
        return balancer_spec(config, {name: [a for w in per_worker for a in w[name]] for name in site_names})

    spec = pulumi.Output.all(*[w.instance_addresses for w in workers]).apply(lambda ws: spec_of(list(ws)))
    public_files = spec.apply(lambda sp: render_balancer(sp) if sp is not None else None)
    # Secret payload: the public files + the master key files, one tar on stdin.
    stdin = pulumi.Output.secret(spec.apply(
        lambda sp: steps.payload({**render_balancer(sp), **key_files(sp, config.sites)}) if sp is not None else None))
    # Triggers from public facts only: the rendered files (addresses, publish, key paths)
    # and each site's onion address (a new key is a new address), never key material.
    addresses = [s.onion_address for s in config.sites]
    triggers = [balancer.instance.id,
                public_files.apply(lambda f: content_hash(f) if f is not None else None),
                steps.digest(script, *addresses)]
    step = steps.command(
        f"{balancer.node_name}-core",
        connection=ctx.connection(balancer),
        create=steps.as_root(script),
        stdin=stdin,
        triggers=triggers,
        secret=True,
        opts=balancer.child_opts(balancer.package_step, *[w.bootstrap_step for w in workers]),
    )
    balancer.core_step = step
    balancer.rendered_files = public_files
    return step


def drain_step(ctx: BootstrapContext, worker, balancer, core_step: remote.Command) -> remote.Command:
    """worker-N-drain: runs on the balancer; its `delete` holds the worker's removal until
    the balancer publishes without it. A child of the worker (it goes with the worker) and a
    dependent of the worker's instance and step, so Pulumi deletes it FIRST; dependent on
    the balancer's instance and core step, so those still exist while it waits."""
    flat = worker.instance_addresses.apply(
        lambda per_site: sorted({a for v in per_site.values() for a in v}) if per_site is not None else [])
    step = steps.command(
        f"{worker.node_name}-drain",
        connection=ctx.connection(balancer, dial_error_limit=steps.DRAIN_DIAL_LIMIT),
        create="true",
        # As root: the config (0640) and the status file (in a 0750 dir) belong to the
        # balancer core's user.
        delete=flat.apply(lambda addresses: steps.as_root(drain_script(addresses))),
        # A new instance (new tor keys, new addresses) REPLACES the drain: the old one's
        # delete then waits for the old addresses before the old instance goes.
        triggers=[flat],
        opts=worker.child_opts(worker.bootstrap_step, balancer.instance, core_step,
                               replace_on_changes=["triggers"]),
    )
    worker.drain_step = step
    return step


def database_bootstrap(ctx: BootstrapContext, password: pulumi.Output, client_cidrs: Sequence[pulumi.Input[str]]):
    """The `bootstrap` callable of the DatabaseNode (password: a secret Output; client_cidrs:
    the subnets PostgreSQL accepts the application role from)."""
    script = steps.role_script(LAYOUT.script_dir)

    def bootstrap(node) -> None:
        vol_ids = pulumi.Output.all(**{p: v.id for p, v in node.volumes.volumes.items()})
        spec = pulumi.Output.all(node.private_ip, pulumi.Output.all(*client_cidrs), vol_ids).apply(
            lambda a: database_spec(a[0], a[1], a[2], node.args.volumes, ctx.config.database.postgres_version))
        public = spec.apply(render_database)
        stdin = pulumi.Output.secret(pulumi.Output.all(spec, public, password).apply(
            lambda a: steps.payload({**a[1], **database_files(a[0], a[2])})))
        node.bootstrap_step = steps.command(
            f"{node.node_name}-postgres",
            connection=ctx.connection(node),
            create=steps.as_root(script),
            stdin=stdin,
            # The password is not in the triggers; a new one changes stdin, which updates.
            triggers=[node.instance.id, public.apply(content_hash), steps.digest(script)],
            secret=True,
            opts=node.child_opts(),
        )

    return bootstrap


__all__ = [
    "BootstrapContext", "balancer_bootstrap", "balancer_core_step", "balancer_spec", "database_bootstrap",
    "database_spec", "drain_script", "drain_step", "parse_instance_addresses", "site_spec", "worker_bootstrap",
    "worker_spec",
]
