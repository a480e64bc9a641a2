"""The remote steps of every role, wired the way the softmap runbook orders them.

    worker-N-tor-nginx     (each worker, through the balancer as jump host)
        install tor + nginx, the rendered torrcs / ob_configs / nginx files, check them with
        `tor --verify-config` and `nginx -t`, start; stdout: the worker's instance onion
        addresses (tor created their keys on the worker; they never leave it)
    balancer-onion-package (CopyToRemote: the `onion` package as a reproducible tarball)
    balancer-base          tor (ControlPort, cookie auth, SocksPort on 127.0.0.1), a venv
        with onion/requirements.txt, the package, the service unit
    balancer-core          AFTER every worker step and balancer-base: the balancer core
        config rendered from the workers' addresses + the master key files (secret stdin),
        checked by loading it with the real `python -m onion maps`, then (re)started
    worker-N-drain         on the balancer; its `delete` waits (bounded) until the balancer
        publishes descriptors without worker N's introduction points (scale-in)
    database-postgres      (through the jump host) xfs volumes, PostgreSQL, the password
        (secret stdin, from a RandomPassword)

Every step: `triggers` = [instance id, content hash of what it installs], so it re-runs
exactly when its rendered input (or its machine) changes, and a second `pulumi up` with
the same config changes nothing. docs/bootstrap.md explains the order and the scale-in
dependency edges.
"""
from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import json
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pulumi
import yaml
from pulumi_command import remote

from infra.config import Site, StackConfig
from nodes import steps
from nodes.render import (RenderedFile, SiteSpec, TorTuning, WorkerSpec, content_hash, render_worker,
                          worker_directories)
from onion.keys import IdentityKey, parse_address

ROOT = Path(__file__).resolve().parent.parent
ONION_PACKAGE_DIR = ROOT / "onion"

WORKER_PACKAGES = ("tor", "nginx", "libnginx-mod-http-subs-filter")
BALANCER_PACKAGES = ("tor", "python3-venv")
DATABASE_PACKAGES = ("postgresql", "xfsprogs")

# ---- the balancer's layout (api.md's balancer core config; the service user owns keys and state)
BALANCER_USER = "onionbalancer"
BALANCER_ETC = "/etc/onionstack"
BALANCER_CONFIG = f"{BALANCER_ETC}/balancer.yaml"
BALANCER_STATE_DIR = "/var/lib/onion-balancer"
BALANCER_KEY_DIR = f"{BALANCER_STATE_DIR}/keys"
BALANCER_CONTROL_PORT = 9051
BALANCER_SOCKS_PORT = 9050
OPT = "/opt/onionstack"
VENV_PYTHON = f"{OPT}/venv/bin/python"
PACKAGE_LIB = f"{OPT}/lib"  # /opt/onionstack/lib/onion/... on PYTHONPATH
BALANCER_UNIT = "onion-balancer.service"

# ---- the worker's addresses: how long the step waits for tor to write every hostname file
HOSTNAME_WAIT_SECONDS = 180
ADDRESS_LINE = "onionstack-instance"  # stdout lines: "onionstack-instance <site> <daemon> <address>"

# ---- scale-in
DRAIN_WAIT_SECONDS = 900   # bounded wait for the balancer to stop publishing a removed worker
DRAIN_POLL_SECONDS = 15
STATUS_FRESH_SECONDS = 180  # a status file older than this means the balancer core is not running


# ================================================================ sites -> templates
def site_spec(site: Site) -> SiteSpec:
    """The renderer's view of a config site.

    Two gaps between the stack config and the worker templates are bridged here until
    the templates accept both forms (requested in /tmp/briefs/requests-for-C.md):
    `blockPaths` are regular expressions in the config but path prefixes in the
    templates (a `^/literal` regex is exactly a prefix; anything else is refused with the
    field named), and `originAddress` may name a host, which the templates only accept as
    an IP literal (a named origin host is left to DNS through the VPC resolver, with a
    warning).
    """
    prefixes = tuple(_regex_as_prefix(site.name, i, p) for i, p in enumerate(site.block_paths))
    origin = site.origin_address
    if origin is not None and not _is_ip_port(origin):
        pulumi.log.warn(
            f"onionstack:sites[{site.name}].originAddress = {origin}: the worker templates connect "
            f"to an IP literal only; nginx resolves {site.domain} through the VPC resolver instead "
            f"(set originAddress to IP:port to pin the origin)"
        )
        origin = None
    return SiteSpec(
        name=site.name,
        domain=site.domain,
        onion_address=site.onion_address,
        origin_address=origin,
        block_hosts=site.block_hosts,
        block_paths=prefixes,
    )


_PREFIX_RE = re.compile(r"^\^(/[A-Za-z0-9._~/%+-]*)$")


def _regex_as_prefix(site: str, index: int, pattern: str) -> str:
    match = _PREFIX_RE.match(pattern)
    if not match:
        raise ValueError(
            f"onionstack:sites[{site}].blockPaths[{index}] = {pattern!r}: the worker templates block "
            f"URL path prefixes; write it as '^/prefix' (letters, digits and ._~/%+- after the '^/')"
        )
    return match.group(1)


def _is_ip_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return port.isdigit()


def vpc_resolver(vpc_cidr: str) -> str:
    """The Amazon-provided DNS resolver of a VPC: its base address + 2."""
    return str(ipaddress.ip_network(vpc_cidr).network_address + 2)


def worker_spec(config: StackConfig) -> WorkerSpec:
    return WorkerSpec(
        sites=tuple(site_spec(s) for s in config.sites),
        resolver=vpc_resolver(config.vpc_cidr),
        tor_daemons=config.tor_daemons_per_worker,
        tor=TorTuning(intro_points=config.intro_points_per_daemon),
    )


# ================================================================ worker
# Interim units until nodes/templates/systemd/ has them (requested from the templates
# owner): one tor per daemon from its own torrc, and nginx from the onionstack config.
WORKER_TOR_UNIT = """\
## Rendered by onionstack (nodes/bootstrap.py): tor daemon %i of this worker.
[Unit]
Description=onionstack worker tor daemon %i (OnionBalance instance services)
After=network-online.target nginx-onionstack.service
Wants=network-online.target

[Service]
Type=simple
User=debian-tor
Group=debian-tor
ExecStartPre=/usr/bin/tor --verify-config -f /etc/onionstack/tor/%i.torrc
ExecStart=/usr/bin/tor -f /etc/onionstack/tor/%i.torrc --RunAsDaemon 0
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""

WORKER_NGINX_UNIT = """\
## Rendered by onionstack (nodes/bootstrap.py): nginx with the onionstack config.
[Unit]
Description=onionstack nginx (onion <-> clearnet reverse proxy)
After=network-online.target
Wants=network-online.target

[Service]
Type=forking
PIDFile=/run/onionstack/nginx.pid
# The unix sockets nginx creates for tor must be connectable by debian-tor (nginx
# creates them with the process umask); the worker runs nothing else.
UMask=0000
ExecStartPre=/usr/sbin/nginx -t -q -c /etc/onionstack/nginx/nginx.conf
ExecStart=/usr/sbin/nginx -c /etc/onionstack/nginx/nginx.conf
ExecReload=/usr/sbin/nginx -c /etc/onionstack/nginx/nginx.conf -s reload
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def worker_files(spec: WorkerSpec) -> dict[str, RenderedFile]:
    files = dict(render_worker(spec))
    layout = spec.layout
    files.setdefault(layout.key(layout.path("systemd_dir", "onionstack-tor@.service")),
                     RenderedFile(WORKER_TOR_UNIT))
    files.setdefault(layout.key(layout.path("systemd_dir", "nginx-onionstack.service")),
                     RenderedFile(WORKER_NGINX_UNIT))
    return files


def worker_script(spec: WorkerSpec, *, root: str = "/") -> str:
    """Install, check, start; then print every instance address (waiting for tor)."""
    q = shlex.quote
    layout = spec.layout
    torrcs = [layout.path("etc_dir", "tor", f"{d}.torrc") for d in spec.daemon_names]
    nginx_conf = layout.path("etc_dir", "nginx", "nginx.conf")
    dirs = worker_directories(spec)
    run_dir = next(d for d in dirs if d.path == layout.path("run_dir"))
    pre = [
        # The directories the templates need, in order (tor refuses group/world-accessible
        # DataDirectory and HiddenServiceDir). umask 022 so that missing parents are
        # traversable (the script's own umask is 077).
        "(",
        "  umask 022",
        *(f"  install -d -o {d.owner} -g {d.owner} -m {d.mode:04o} {q(d.path)}" for d in dirs),
        ")",
        # The run dir is on tmpfs: recreate it at boot before nginx and tor start.
        f"printf 'd %s %s %s %s -\\n' {q(run_dir.path)} {run_dir.mode:04o} {run_dir.owner} {run_dir.owner}"
        " > /etc/tmpfiles.d/onionstack.conf",
    ]
    verify = [f"tor --verify-config -f {q(t)} >/dev/null" for t in torrcs]
    verify.append(f"nginx -t -q -c {q(nginx_conf)}")
    units = " ".join(f"onionstack-tor@{d}.service" for d in spec.daemon_names)
    activate = [
        "systemctl daemon-reload",
        # Debian's own nginx and tor services would compete for nothing useful here.
        "systemctl disable --now nginx.service tor.service >/dev/null 2>&1 || true",
        "systemctl enable nginx-onionstack.service " + units,
        "systemctl reload-or-restart nginx-onionstack.service",
        "systemctl reload-or-restart " + units,
    ]
    hostnames = [(s.name, d, spec.hs_dir(d, s) + "/hostname") for s in spec.sites for d in spec.daemon_names]
    post = [f"deadline=$(( $(date +%s) + {HOSTNAME_WAIT_SECONDS} ))"]
    for site, daemon, path in hostnames:
        post += [
            f"until [ -s {q(path)} ]; do",
            "  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then",
            f"    echo {q(f'onionstack: tor {daemon} wrote no {path} within {HOSTNAME_WAIT_SECONDS} s; see journalctl -u onionstack-tor@{daemon}')} >&2",
            "    exit 1",
            "  fi",
            "  sleep 2",
            "done",
            f"printf '%s %s %s %s\\n' {ADDRESS_LINE} {q(site)} {q(daemon)} \"$(tr -d '[:space:]' < {q(path)})\"",
        ]
    return steps.apply_script(packages=WORKER_PACKAGES, pre_install=pre,
                              checks=steps.Checks(tuple(verify), tuple(activate)), post=post, root=root)


def parse_instance_addresses(stdout: Optional[str], sites: Sequence[str], daemons: Sequence[str]) -> dict[str, list[str]]:
    """site -> the worker's instance addresses (56 chars, daemon order) from a step's stdout.

    Every (site, daemon) must be reported exactly once with a valid v3 address, else the
    balancer would be rendered from a wrong list: raise naming what is missing or bad.
    `None` (no stdout at all) only happens under Pulumi mocks that do not emulate commands
    (`python -m mockrun`): the provider always sets stdout. It gives empty lists.
    """
    if stdout is None:
        return {s: [] for s in sites}
    found: dict[tuple[str, str], str] = {}
    for line in (stdout or "").splitlines():
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
BALANCER_TORRC = f"""\
## Rendered by onionstack (nodes/bootstrap.py): the balancer's tor.
## Debian's tor@default adds /usr/share/tor/tor-service-defaults-torrc (User debian-tor,
## DataDirectory /var/lib/tor). No onion service of its own: the balancer core publishes
## the frontends' descriptors over the control port.
SocksPort 127.0.0.1:{BALANCER_SOCKS_PORT}
ControlPort 127.0.0.1:{BALANCER_CONTROL_PORT}
CookieAuthentication 1
CookieAuthFile /run/tor/control.authcookie
CookieAuthFileGroupReadable 1
SafeLogging 1
Log notice syslog
"""

BALANCER_SERVICE = f"""\
## Rendered by onionstack (nodes/bootstrap.py): the onion balancer core.
[Unit]
Description=onionstack balancer core (publishes the frontends' descriptors)
After=network-online.target tor@default.service
Wants=network-online.target tor@default.service

[Service]
Type=simple
User={BALANCER_USER}
Group={BALANCER_USER}
# Reads tor's control cookie (group debian-tor).
SupplementaryGroups=debian-tor
Environment=PYTHONPATH={PACKAGE_LIB}
ExecStart={VENV_PYTHON} -m onion run --config {BALANCER_CONFIG}
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={BALANCER_STATE_DIR}

[Install]
WantedBy=multi-user.target
"""


def balancer_base_files() -> dict[str, RenderedFile]:
    return {
        "etc/tor/torrc": RenderedFile(BALANCER_TORRC),
        f"etc/systemd/system/{BALANCER_UNIT}": RenderedFile(BALANCER_SERVICE),
    }


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


def balancer_base_script(package_path: str, *, root: str = "/") -> str:
    q = shlex.quote
    pre = [
        f"id -u {BALANCER_USER} >/dev/null 2>&1 || useradd --system --home-dir {BALANCER_STATE_DIR} "
        f"--shell /usr/sbin/nologin {BALANCER_USER}",
        f"install -d -o {BALANCER_USER} -g {BALANCER_USER} -m 0755 {BALANCER_STATE_DIR}",
        f"install -d -o {BALANCER_USER} -g {BALANCER_USER} -m 0700 {BALANCER_KEY_DIR}",
        f"install -d -m 0755 {OPT}",
        f"[ -x {VENV_PYTHON} ] || python3 -m venv {OPT}/venv",
        # The package: unpack next to the live copy, then swap (never a half-written package).
        f"rm -rf {OPT}/lib.new && install -d -m 0755 {OPT}/lib.new",
        f"base64 -d < {q(package_path)} | tar -xz --no-same-owner -C {OPT}/lib.new",
        f"{OPT}/venv/bin/pip install --quiet --disable-pip-version-check -r {OPT}/lib.new/onion/requirements.txt",
        f"PYTHONPATH={OPT}/lib.new {VENV_PYTHON} -c 'import onion.balancer, onion.servicecli'",
        f"rm -rf {OPT}/lib.old && if [ -d {PACKAGE_LIB} ]; then mv {PACKAGE_LIB} {OPT}/lib.old; fi",
        f"mv {OPT}/lib.new {PACKAGE_LIB} && rm -rf {OPT}/lib.old",
        # The venv's python finds the package without PYTHONPATH (operators run
        # `/opt/onionstack/venv/bin/python -m onion status` as is).
        f"echo {PACKAGE_LIB} > \"$({VENV_PYTHON} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/onionstack.pth\"",
    ]
    verify = ["tor --verify-config --defaults-torrc /usr/share/tor/tor-service-defaults-torrc -f /etc/tor/torrc >/dev/null"]
    activate = [
        "systemctl daemon-reload",
        "systemctl enable tor@default.service",
        "systemctl reload-or-restart tor@default.service",
        # The core itself starts once balancer-core has written its config; a running one
        # picks up a new package version here.
        f"if systemctl is-active --quiet {BALANCER_UNIT}; then systemctl restart {BALANCER_UNIT}; fi",
    ]
    return steps.apply_script(packages=BALANCER_PACKAGES, pre_install=pre,
                              checks=steps.Checks(tuple(verify), tuple(activate)), root=root)


@dataclass(frozen=True)
class Frontend:
    name: str
    instances: tuple[str, ...]  # 56-char instance addresses


def balancer_core_config(frontends: Sequence[Frontend], publish: bool) -> str:
    """The balancer core's YAML (api.md format), from public facts only."""
    doc = {
        "publish": bool(publish),
        "control": {"port": BALANCER_CONTROL_PORT},
        "socks_port": BALANCER_SOCKS_PORT,
        "state_dir": BALANCER_STATE_DIR,
        "frontends": [
            {
                "name": fe.name,
                "key_file": f"{BALANCER_KEY_DIR}/{fe.name}.key",
                "instances": [{"address": f"{a}.onion"} for a in fe.instances],
            }
            for fe in frontends
        ],
    }
    header = "## Rendered by onionstack (nodes/bootstrap.py): the balancer core's config.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


@dataclass(frozen=True)
class BinaryFile:
    """A file whose content is bytes (tor's binary key format); same fields as RenderedFile."""

    content: bytes
    mode: int = 0o600
    owner: str = "root"


def balancer_core_files(frontends: Sequence[Frontend], publish: bool) -> dict[str, RenderedFile]:
    """The public part of balancer-core's payload (the key files are added separately)."""
    return {BALANCER_CONFIG.lstrip("/"): RenderedFile(balancer_core_config(frontends, publish), 0o640, BALANCER_USER)}


def key_files(sites: Sequence[Site]) -> dict[str, BinaryFile]:
    """Each site's master key as tor's `hs_ed25519_secret_key` file, 0600, service user.
    Only for the secret payload: never logged, never in a plain input."""
    return {
        f"{BALANCER_KEY_DIR.lstrip('/')}/{s.name}.key": BinaryFile(
            IdentityKey.from_config_string(s.master_key.reveal()).to_tor_secret_key(), 0o600, BALANCER_USER)
        for s in sites
    }


def balancer_core_script(site_names: Sequence[str], *, root: str = "/") -> str:
    keep = " ".join(f"{n}.key" for n in site_names)
    verify = [
        # The real loader: parses the YAML, checks key file modes, loads every key and
        # checks instances against frontends, as the daemon will at start.
        f"runuser -u {BALANCER_USER} -- env PYTHONPATH={PACKAGE_LIB} {VENV_PYTHON} -m onion maps "
        f"--config {BALANCER_CONFIG} >/dev/null",
    ]
    activate = [
        # Keys of sites removed from the config do not stay on the machine.
        f"keep=' {keep} '",
        f"for f in {BALANCER_KEY_DIR}/*; do case \"$keep\" in *\" ${{f##*/}} \"*) ;; *) rm -f -- \"$f\" ;; esac; done",
        "systemctl daemon-reload",
        f"systemctl enable {BALANCER_UNIT}",
        f"systemctl restart {BALANCER_UNIT}",
        f"systemctl is-active --quiet {BALANCER_UNIT}",
    ]
    return steps.apply_script(checks=steps.Checks(tuple(verify), tuple(activate)), root=root)


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
for fe in s.get("frontends", []):
    if any(i.get("address") in gone for i in fe.get("instances", [])):
        sys.exit("the balancer still lists the instance")
    owners = set(p.get("instance") for p in fe.get("published_intro_points", []))
    if owners & gone or "?" in owners:
        sys.exit("descriptors with the instance's introduction points are still published")
    ups = [u for d in fe.get("descriptors", []) for u in d.get("hsdirs", [])]
    if not any(u.get("state") in ("uploaded", "standby") for u in ups):
        sys.exit("no descriptor uploaded since the restart yet")
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
# PostgreSQL on the three EBS volumes: data (PGDATA), journal (WAL, initdb --waldir), log
# (the server log). Ubuntu's packaging (postgresql-common) manages clusters; onionstack
# creates its cluster `main` on the volumes instead of the package's default one.
DATABASE_ROLE = "onionstack"
DATABASE_NAME = "onionstack"
PG_ETC = "etc/onionstack/postgres"
DATABASE_PASSWORD_FILE = f"{PG_ETC}/password"
PG_CONF = f"{PG_ETC}/onionstack.conf"
PG_HBA = f"{PG_ETC}/pg_hba.conf"
PG_MOUNTS = {"data": "/srv/postgres/data", "journal": "/srv/postgres/journal", "log": "/srv/postgres/log"}


def database_config_files(private_ip: str, worker_cidrs: Sequence[str]) -> dict[str, RenderedFile]:
    """postgresql.conf additions and pg_hba.conf: listen on the private IP, password logins
    (scram-sha-256) for the application role from the worker subnets only."""
    ipaddress.ip_address(private_ip)
    cidrs = [str(ipaddress.ip_network(c)) for c in worker_cidrs]
    conf = "\n".join([
        "## Rendered by onionstack (nodes/bootstrap.py): included from the cluster's conf.d.",
        f"listen_addresses = 'localhost,{private_ip}'",
        "port = 5432",
        "password_encryption = 'scram-sha-256'",
        f"hba_file = '/{PG_HBA}'",
        "logging_collector = on",
        f"log_directory = '{PG_MOUNTS['log']}'",
        "log_connections = on",
        "",
    ])
    hba = "\n".join([
        "## Rendered by onionstack (nodes/bootstrap.py). TYPE DATABASE USER ADDRESS METHOD",
        "local all postgres peer",
        "local all all peer",
        "host all all 127.0.0.1/32 scram-sha-256",
        *(f"host {DATABASE_NAME} {DATABASE_ROLE} {c} scram-sha-256" for c in cidrs),
        "",
    ])
    return {PG_CONF: RenderedFile(conf, 0o640, "postgres"), PG_HBA: RenderedFile(hba, 0o640, "postgres")}


def database_script(volume_ids: Mapping[str, str], *, root: str = "/") -> str:
    """Format (once) and mount the volumes (xfs, found by EBS volume id), create the cluster
    on them (once), install the config, check it with the server itself, restart, then
    create the role/database and set the password from the staged 0600 file through
    psql's stdin."""
    q = shlex.quote
    pre_packages = [
        # Keep the package from creating its default cluster on the root volume.
        "if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q 'install ok installed'; then",
        "  install -d -m 0755 /etc/postgresql-common",
        "  printf 'create_main_cluster = false\\n' > /etc/postgresql-common/createcluster.conf",
        "  chmod 0644 /etc/postgresql-common/createcluster.conf",
        "fi",
    ]
    pre = []
    for purpose, mount in PG_MOUNTS.items():
        vol = volume_ids[purpose]
        # Nitro instances expose an EBS volume as NVMe with the volume id (sans '-') as serial.
        dev = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{vol.replace('-', '')}"
        label = f"pg-{purpose}"  # xfs labels: at most 12 characters
        pre += [
            f"for _ in $(seq 90); do [ -e {q(dev)} ] && break; sleep 2; done",
            f"[ -e {q(dev)} ] || {{ echo {q(f'onionstack: volume {vol} ({purpose}) is not attached')} >&2; exit 1; }}",
            # Never format a volume that has a filesystem (a restored or reattached one).
            f"blkid {q(dev)} >/dev/null || mkfs.xfs -q -L {label} {q(dev)}",
            f"(umask 022; install -d {q(mount)})",
            f"grep -q {q(' ' + mount + ' ')} /etc/fstab || echo {q(f'LABEL={label} {mount} xfs defaults,nofail,noatime 0 2')} >> /etc/fstab",
            f"mountpoint -q {q(mount)} || mount {q(mount)}",
            f"chown postgres:postgres {q(mount)} && chmod 0700 {q(mount)}",
        ]
    pre += [
        "ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\\n' | sort -V | tail -n 1)",
        "if ! pg_lsclusters -h | awk '{print $1\" \"$2}' | grep -qx \"$ver main\"; then",
        f"  pg_createcluster \"$ver\" main -d \"{PG_MOUNTS['data']}/$ver\" -- "
        f"--waldir=\"{PG_MOUNTS['journal']}/$ver\" --auth-local=peer --auth-host=scram-sha-256",
        "fi",
        f"printf \"include '%s'\\n\" /{PG_CONF} > \"/etc/postgresql/$ver/main/conf.d/onionstack.conf\"",
        "chmod 0644 \"/etc/postgresql/$ver/main/conf.d/onionstack.conf\"",
    ]
    sql = "runuser -u postgres -- psql -X -q -tA -v ON_ERROR_STOP=1"
    verify = [
        # The server reads the files on disk for these views: errors show before a reload.
        "systemctl start \"postgresql@$ver-main\"",
        f"[ \"$({sql} -c 'SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL')\" = 0 ]",
        f"[ \"$({sql} -c 'SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL')\" = 0 ]",
    ]
    activate = [
        "systemctl enable \"postgresql@$ver-main\"",
        "systemctl restart \"postgresql@$ver-main\"",  # listen_addresses needs a restart
    ]
    post = [
        f"if [ -z \"$({sql} -c \"SELECT 1 FROM pg_roles WHERE rolname='{DATABASE_ROLE}'\")\" ]; then",
        f"  {sql} -c 'CREATE ROLE {DATABASE_ROLE} LOGIN'",
        "fi",
        f"if [ -z \"$({sql} -c \"SELECT 1 FROM pg_database WHERE datname='{DATABASE_NAME}'\")\" ]; then",
        f"  {sql} -c 'CREATE DATABASE {DATABASE_NAME} OWNER {DATABASE_ROLE}'",
        "fi",
        # printf is a shell builtin: the password never appears in a process's argv.
        f"pw=$(cat /{DATABASE_PASSWORD_FILE})",
        f"printf \"ALTER ROLE {DATABASE_ROLE} PASSWORD '%s';\\n\" \"$pw\" | {sql}",
        "unset pw",
    ]
    return steps.apply_script(packages=DATABASE_PACKAGES, pre_packages=pre_packages, pre_install=pre,
                              checks=steps.Checks(tuple(verify), tuple(activate)), post=post, root=root)


def database_files(password: Optional[str]) -> dict[str, RenderedFile]:
    """The secret half of the database payload (the generated password is alphanumeric, so
    it needs no quoting in SQL). `None` only under mocks that do not emulate
    `random.RandomPassword` (`python -m mockrun`); a real run always has one."""
    if password is None:
        return {}
    if not password.isalnum():
        raise ValueError("the database password must be alphanumeric (RandomPassword special=False)")
    return {DATABASE_PASSWORD_FILE: RenderedFile(password, 0o600, "postgres")}


# ================================================================ composing the steps
@dataclass(frozen=True)
class BootstrapContext:
    """What every step needs from the stack config (secrets stay Outputs or `Secret`s)."""

    config: StackConfig
    private_key: pulumi.Output  # secret

    @classmethod
    def of(cls, config: StackConfig) -> "BootstrapContext":
        return cls(config, config.ssh_private_key.output())

    def connection(self, node, *, dial_error_limit: int = steps.UNLIMITED_DIALS) -> remote.ConnectionArgs:
        return steps.connection(node.ssh_host, node.ssh_user, self.private_key,
                                jump_host=node.jump_host, dial_error_limit=dial_error_limit)


def worker_bootstrap(ctx: BootstrapContext):
    """The `bootstrap` callable of a WorkerNode: declares worker-N-tor-nginx and sets
    `node.bootstrap_step` and `node.instance_addresses` (Output[{site: [addresses]}])."""
    spec = worker_spec(ctx.config)
    files = worker_files(spec)
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
    """The `bootstrap` callable of the BalancerNode: the onion package copy + balancer-base."""
    package = onion_package_tarball()
    files = balancer_base_files()

    def bootstrap(node) -> None:
        home = f"/home/{node.ssh_user}"
        package_path = f"{home}/onionstack-onion.tar.gz.b64"
        package_hash = steps.digest(package)
        copy = remote.CopyToRemote(
            f"{node.node_name}-onion-package",
            connection=ctx.connection(node),
            source=pulumi.StringAsset(package),
            remote_path=package_path,
            triggers=[node.instance.id, package_hash],
            opts=node.child_opts(custom_timeouts=steps.STEP_TIMEOUTS),
        )
        script = balancer_base_script(package_path)
        node.base_step = steps.command(
            f"{node.node_name}-base",
            connection=ctx.connection(node),
            create=steps.as_root(script),
            stdin=steps.payload(files),
            triggers=[node.instance.id, content_hash(files), package_hash, steps.digest(script)],
            opts=node.child_opts(copy),
        )
        node.package_copy = copy

    return bootstrap


def balancer_core_step(ctx: BootstrapContext, balancer, workers: Sequence) -> remote.Command:
    """balancer-core: after balancer-base and EVERY worker step, rendered from their addresses."""
    config = ctx.config
    site_names = [s.name for s in config.sites]
    script = balancer_core_script(site_names)

    def render(per_worker: list) -> dict[str, RenderedFile]:
        frontends = [Frontend(name, tuple(a for w in per_worker for a in w[name])) for name in site_names]
        return balancer_core_files(frontends, config.balancer.publish)

    public_files = pulumi.Output.all(*[w.instance_addresses for w in workers]).apply(lambda ws: render(list(ws)))
    # Secret payload: the public files + the master key files, one tar on stdin.
    keys = key_files(config.sites)
    stdin = pulumi.Output.secret(public_files.apply(lambda files: steps.payload({**files, **keys})))
    # Triggers from public facts only: the rendered config (addresses, publish, key paths)
    # and each site's onion address (a new key is a new address), never key material.
    addresses = [s.onion_address for s in config.sites]
    triggers = [balancer.instance.id, public_files.apply(content_hash), steps.digest(script, *addresses)]
    step = steps.command(
        f"{balancer.node_name}-core",
        connection=ctx.connection(balancer),
        create=steps.as_root(script),
        stdin=stdin,
        triggers=triggers,
        secret=True,
        opts=balancer.child_opts(balancer.base_step, *[w.bootstrap_step for w in workers]),
    )
    balancer.core_step = step
    balancer.rendered_config = public_files
    return step


def drain_step(ctx: BootstrapContext, worker, balancer, core_step: remote.Command) -> remote.Command:
    """worker-N-drain: runs on the balancer; its `delete` holds the worker's removal until
    the balancer publishes without it. A child of the worker (it goes with the worker) and a
    dependent of the worker's instance and step, so Pulumi deletes it FIRST; dependent on
    the balancer's instance and core step, so those still exist while it waits."""
    flat = worker.instance_addresses.apply(lambda per_site: sorted({a for v in per_site.values() for a in v}))
    step = steps.command(
        f"{worker.node_name}-drain",
        connection=ctx.connection(balancer, dial_error_limit=steps.DRAIN_DIAL_LIMIT),
        create="true",
        delete=flat.apply(drain_script),
        # A new instance (new tor keys, new addresses) REPLACES the drain: the old one's
        # delete then waits for the old addresses before the old instance goes.
        triggers=[flat],
        opts=worker.child_opts(worker.bootstrap_step, balancer.instance, core_step,
                               replace_on_changes=["triggers"]),
    )
    worker.drain_step = step
    return step


def database_bootstrap(ctx: BootstrapContext, password: pulumi.Output, worker_cidrs: Sequence[pulumi.Input[str]]):
    """The `bootstrap` callable of the DatabaseNode (password: a secret Output; worker_cidrs:
    the subnets PostgreSQL accepts the application role from)."""
    def bootstrap(node) -> None:
        vol_ids = pulumi.Output.all(**{p: v.id for p, v in node.volumes.volumes.items()})
        script = vol_ids.apply(lambda ids: database_script(ids))
        public = pulumi.Output.all(node.private_ip, pulumi.Output.all(*worker_cidrs)).apply(
            lambda args: database_config_files(args[0], args[1]))
        stdin = pulumi.Output.secret(pulumi.Output.all(public, password).apply(
            lambda args: steps.payload({**args[0], **database_files(args[1])})))
        node.bootstrap_step = steps.command(
            f"{node.node_name}-postgres",
            connection=ctx.connection(node),
            create=script.apply(steps.as_root),
            stdin=stdin,
            # The password is not in the triggers; a new one changes stdin, which updates.
            triggers=[node.instance.id, public.apply(content_hash), script.apply(steps.digest)],
            secret=True,
            opts=node.child_opts(),
        )

    return bootstrap


__all__ = [
    "BootstrapContext", "Frontend", "balancer_bootstrap", "balancer_core_config", "balancer_core_step",
    "database_bootstrap", "drain_script", "drain_step", "parse_instance_addresses", "site_spec",
    "worker_bootstrap", "worker_spec",
]
