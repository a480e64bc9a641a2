"""The stack configuration: every `onionstack:` key, parsed once into frozen dataclasses.

`parse_config(raw)` is pure (no Pulumi runtime needed) so each validation rule is
testable on its own; `load_config()` reads `pulumi.Config("onionstack")` and calls it.
Any bad value raises `ConfigError` naming the key, the bad value and the accepted form,
before `__main__` declares a single resource.

Defaults live here as well as in Pulumi.yaml: the Pulumi CLI applies Pulumi.yaml's
`config:` defaults, but the SDK under mocks does not, so the program must not depend on
them (tests/test_config_schema.py checks that both agree).
"""
from __future__ import annotations

import base64
import binascii
import calendar
import difflib
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from onion.keys import IdentityKey, onion_address

NAMESPACE = "onionstack"

# ---------------------------------------------------------------- defaults (mirror Pulumi.yaml)
DEFAULT_INSTANCE_TYPES = {"balancer": "t3.micro", "worker": "t3.small", "database": "t3.small"}
# postgresVersion: the major version the image's postgresql package installs (Ubuntu 24.04: 16).
DEFAULT_DATABASE = {"enabled": True, "dataGb": 20, "journalGb": 4, "logGb": 4, "postgresVersion": 16}
DEFAULT_BACKUP = {
    "enabled": True,
    "threeHourlyKeep": 7,
    "dailyKeep": 6,
    "weeklyKeep": 4,
    "monthlyKeep": 24,
    # Backups an attacker with the deploy role cannot delete (infra/backup.py, docs/stack.md):
    "lockMode": "governance",
    "lockChangeableForDays": 3,
    "lockConfirm": "",
    "copyToRegion": "",
}
DEFAULT_FLOW_LOGS = {"enabled": True, "traffic": "REJECT", "retentionDays": 90}
DEFAULT_BALANCER = {"publish": True, "standby": False}

# key -> (Pulumi.yaml type or None for objects, default or REQUIRED)
REQUIRED = object()
SCHEMA: dict[str, tuple[Optional[str], Any]] = {
    "sites": (None, REQUIRED),
    "masterKeys": (None, REQUIRED),
    "workers": ("integer", 2),
    "torDaemonsPerWorker": ("integer", 2),
    "introPointsPerDaemon": ("integer", 3),
    "instanceTypes": (None, DEFAULT_INSTANCE_TYPES),
    "availabilityZones": ("integer", 2),
    "vpcCidr": ("string", "10.42.0.0/16"),
    # No declared type: besides a list (`--path 'adminCidrs[0]'`), a comma-separated string,
    # which is what `pulumi new`'s prompt stores (a plain string, which the CLI would refuse
    # for a key typed array).
    "adminCidrs": (None, REQUIRED),
    # Both or neither: without them the stack makes its own admin key (pulumi-tls, ED25519).
    # "" is what the CLI passes for an unset key (Pulumi.yaml's default): the same as unset.
    "sshPublicKey": ("string", ""),
    "sshPrivateKey": ("string", ""),
    "database": (None, DEFAULT_DATABASE),
    "backup": (None, DEFAULT_BACKUP),
    "protectData": ("boolean", True),
    "natGateways": ("string", "one"),
    "balancer": (None, DEFAULT_BALANCER),
    "flowLogs": (None, DEFAULT_FLOW_LOGS),
    "alarmEmails": ("array", []),
    "tlsKeys": (None, {}),
}
SECRET_KEYS = ("masterKeys", "sshPrivateKey", "tlsKeys")

SITE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# A DNS name: labels of letters, digits and inner hyphens, at least two labels.
DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME_RE = re.compile(rf"^(?:{DNS_LABEL}\.)+{DNS_LABEL}\.?$")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
MASTER_KEY_PREFIX = "ED25519-V3:"

# Per-site HTTPS (sites[].https) and DoS controls (sites[].dos): defaults mirror
# nodes/render.py's SiteDos; docs/sites.md says how they were chosen.
HTTPS_MODES = ("off", "selfSigned", "provided")
DEFAULT_DOS = {
    "pow": False,
    "powQueueRate": 250,
    "powQueueBurst": 2500,
    "introDefense": True,
    "introRate": 25,
    "introBurst": 200,
    "maxStreams": 32,
    "maxStreamsCloseCircuit": True,
}
INT32_MAX = 2**31 - 1
VALIDATION_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/+-]{0,254}$")
VALIDATION_CONTENT_RE = re.compile(r"^[\x20-\x7e\n]{1,4096}$")
# A self-signed onion certificate (pulumi-tls) lives this long and is replaced by the first
# `pulumi up` within its last SELF_SIGNED_RENEW_DAYS (early renewal; docs/sites.md).
SELF_SIGNED_DAYS = 365
SELF_SIGNED_RENEW_DAYS = 60

WORKERS_RANGE = (1, 30)
DAEMONS_RANGE = (1, 8)
INTRO_RANGE = (1, 20)
AZ_RANGE = (1, 6)
VOLUME_GB_RANGE = (1, 16384)  # gp3 limits
POSTGRES_VERSION_RANGE = (13, 18)
KEEP_RANGE = (1, 1000)
# AWS Backup Vault Lock: ChangeableForDays is at least 3; retention at most 100 years.
LOCK_CHANGEABLE_RANGE = (3, 36500)
LOCK_MODES = ("governance", "compliance")
# An AWS region name: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4, ...
REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
FLOW_LOG_TRAFFIC = ("REJECT", "ALL")
# An e-mail address SNS can deliver to: one @, a local part without spaces or angle
# brackets, and a DNS name (deliberately not the whole of RFC 5322: a display name or a
# quoted local part here is far more likely a paste error than an address).
EMAIL_RE = re.compile(rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@(?:{DNS_LABEL}\.)+{DNS_LABEL}$")


class ConfigError(ValueError):
    """A stack config value is missing or invalid; the message says which and how to fix it."""


# ---------------------------------------------------------------- secret holder
class Secret:
    """A config value that must never be printed: `repr`/`str` hide it.

    `reveal()` gives the plain value to code that must use it (validation, rendering a
    0600 file); `output()` gives a `pulumi.Output.secret` for resource inputs.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def output(self):
        import pulumi  # local: parse_config must stay usable without a Pulumi runtime

        return pulumi.Output.secret(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class ValidationPath:
    """A path port 80 serves even when HTTPS is forced: fixed `content` (a CA's validation
    file, EOTK's ssl_proof_csv), or with `content` None every path under this prefix
    passed to the origin (e.g. an ACME http-01 challenge the origin answers)."""

    path: str
    content: Optional[str] = None


@dataclass(frozen=True)
class SiteDos:
    """tor's DoS controls for the site's instance services on every worker daemon."""

    pow: bool = DEFAULT_DOS["pow"]
    pow_queue_rate: int = DEFAULT_DOS["powQueueRate"]
    pow_queue_burst: int = DEFAULT_DOS["powQueueBurst"]
    intro_defense: bool = DEFAULT_DOS["introDefense"]
    intro_rate: int = DEFAULT_DOS["introRate"]
    intro_burst: int = DEFAULT_DOS["introBurst"]
    max_streams: int = DEFAULT_DOS["maxStreams"]
    max_streams_close_circuit: bool = DEFAULT_DOS["maxStreamsCloseCircuit"]


@dataclass(frozen=True)
class Site:
    """One onion address mapping one clearnet domain and its subdomains (EOTK hardmap), or,
    with `app`, one onion-native application run on the workers (`domain` None)."""

    name: str
    domain: Optional[str]
    master_key: Secret = field(repr=False)
    onion_address: str = ""  # 56 chars + ".onion"; public, derived from the key
    origin_address: Optional[str] = None  # host:port to connect to instead of `domain`
    block_hosts: tuple[str, ...] = ()
    block_paths: tuple[str, ...] = ()
    https: str = "off"  # off | selfSigned | provided
    http_redirect: bool = True  # with https: port 80 answers 307 to https (validation paths aside)
    certificate_chain: Optional[str] = None  # provided: PEM chain, leaf first (public)
    tls_key: Optional[Secret] = field(default=None, repr=False)  # provided: the leaf's key (secret)
    validation_paths: tuple[ValidationPath, ...] = ()
    foreign_onions: tuple[tuple[str, str], ...] = ()  # (domain, "<56>.onion") of other onion sites
    dos: SiteDos = field(default_factory=SiteDos)
    app: Optional["AppConfig"] = None  # kind app: the application the workers run (no domain, no origin)

    @property
    def is_app(self) -> bool:
        return self.app is not None

    @property
    def serves_https(self) -> bool:
        return self.https != "off"

    @property
    def onion_url(self) -> str:
        """The site's onion root URL as readers should use it (https when HTTPS is on)."""
        return f"{'https' if self.serves_https else 'http'}://{self.onion_address}/"


@dataclass(frozen=True)
class InstanceTypes:
    balancer: str
    worker: str
    database: str


@dataclass(frozen=True)
class DatabaseConfig:
    enabled: bool
    data_gb: int
    journal_gb: int
    log_gb: int
    postgres_version: int = 16


@dataclass(frozen=True)
class BackupRule:
    """One AWS Backup rule: `keep` recovery points translated into days (AWS retains by age)."""

    name: str
    schedule: str  # AWS cron, UTC
    keep: int
    retention_days: int


@dataclass(frozen=True)
class VaultLock:
    """AWS Backup Vault Lock on the stack's vaults: governance mode can be lifted by a
    principal allowed `backup:DeleteBackupVaultLockConfiguration`; compliance mode cannot,
    by anyone, once `changeable_for_days` have passed."""

    mode: str = "governance"  # governance | compliance
    changeable_for_days: Optional[int] = None  # compliance only: the grace period


@dataclass(frozen=True)
class BackupConfig:
    enabled: bool
    rules: tuple[BackupRule, ...]
    lock: VaultLock = VaultLock()
    copy_to_region: Optional[str] = None  # a second region that gets a copy of every recovery point

    @property
    def min_retention_days(self) -> int:
        """The vault lock's lower bound: the shortest rule's retention (a lock refuses any
        recovery point retained for less, so it must not exceed any rule's)."""
        return min(r.retention_days for r in self.rules)

    @property
    def max_retention_days(self) -> int:
        """The vault lock's upper bound: the longest rule's retention."""
        return max(r.retention_days for r in self.rules)


@dataclass(frozen=True)
class FlowLogsConfig:
    enabled: bool
    traffic: str  # REJECT | ALL
    retention_days: int


@dataclass(frozen=True)
class BalancerConfig:
    publish: bool  # false: a standby fleet that never uploads descriptors (blue/green)
    # true: a second balancer in another zone that uploads only when the primary's
    # descriptors are missing or stale on the HSDirs (onion/standby.py)
    standby: bool = False


@dataclass(frozen=True)
class StackConfig:
    sites: tuple[Site, ...]
    workers: int
    tor_daemons_per_worker: int
    intro_points_per_daemon: int
    instance_types: InstanceTypes
    availability_zones: int
    vpc_cidr: str
    admin_cidrs: tuple[str, ...]
    # The admin SSH key pair from the config, or None (both): the stack generates one.
    ssh_public_key: Optional[str] = None
    ssh_private_key: Optional[Secret] = field(default=None, repr=False)
    database: DatabaseConfig = field(default_factory=lambda: DatabaseConfig(True, 20, 4, 4))
    backup: BackupConfig = field(default_factory=lambda: BackupConfig(True, ()))
    protect_data: bool = True
    nat_gateways: str = "one"
    balancer: BalancerConfig = field(default_factory=lambda: BalancerConfig(True))
    flow_logs: FlowLogsConfig = field(default_factory=lambda: FlowLogsConfig(True, "REJECT", 90))
    alarm_emails: tuple[str, ...] = ()

    @property
    def intro_points_per_worker(self) -> int:
        return self.tor_daemons_per_worker * self.intro_points_per_daemon


# ---------------------------------------------------------------- error helpers
SECRET_SHOWN = "[secret]"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _fail(key: str, value: Any, accepted: str, *, secret: bool = False) -> ConfigError:
    shown = SECRET_SHOWN if secret else _show(value)
    return ConfigError(f"{NAMESPACE}:{key} = {shown}: {accepted}")


def _missing(key: str, accepted: str) -> ConfigError:
    return ConfigError(f"{NAMESPACE}:{key} is missing: {accepted}")


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    # bool is an int subclass in Python; `true` is not a count.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(key, value, f"must be an integer from {lo} to {hi}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail(key, value, f"must be an integer from {lo} to {hi}")
        value = int(value)
    if isinstance(value, str):
        if not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise _fail(key, value, f"must be an integer from {lo} to {hi}")
        value = int(value)
    if not lo <= value <= hi:
        raise _fail(key, value, f"must be an integer from {lo} to {hi}")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _fail(key, value, "must be true or false")


def _parse_balancer(value: Any, zones: int) -> BalancerConfig:
    merged = _object("balancer", value, DEFAULT_BALANCER)
    standby = _bool("balancer.standby", merged["standby"])
    if standby and zones < 2:
        raise _fail("balancer.standby", standby,
                    "needs availabilityZones >= 2 (the standby balancer runs in another zone than the primary)")
    return BalancerConfig(publish=_bool("balancer.publish", merged["publish"]), standby=standby)


def _object(key: str, value: Any, allowed: Mapping[str, Any]) -> dict:
    if not isinstance(value, Mapping):
        raise _fail(key, value, f"must be an object with keys {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _fail(
            f"{key}.{unknown[0]}",
            value[unknown[0]],
            f"unknown key; {key} accepts {', '.join(allowed)}",
        )
    return {**allowed, **value}


def _str_list(key: str, value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, value, f"must be a list of {what}")
    return value


# ---------------------------------------------------------------- master keys
def master_key_error(value: str) -> Optional[str]:
    """Why `value` is not a usable site master key, or None when it is.

    The key is parsed by `onion.keys.IdentityKey.from_config_string`, the same parser the
    balancer uses. The reason returned is phrased here, not copied from the exception,
    because a message quoting the input would put key material in logs.
    """
    try:
        IdentityKey.from_config_string(value)
    except ValueError:
        pass
    else:
        return None
    if not value.startswith(MASTER_KEY_PREFIX):
        return f"does not start with {MASTER_KEY_PREFIX!r}"
    try:
        raw = base64.b64decode(value[len(MASTER_KEY_PREFIX):].strip(), validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64 after the prefix"
    if len(raw) != 64:
        return f"decodes to {len(raw)} bytes, not 64"
    return "is not a valid ed25519 expanded secret key"


def onion_address_of(master_key: str) -> str:
    """The public `.onion` hostname of a valid master key."""
    return IdentityKey.from_config_string(master_key).hostname


def _keygen_fix(name: str) -> str:
    # The key travels through a pipe: `pulumi config set` reads a missing value from stdin,
    # so it never lands on a command line or in shell history.
    return (
        f"create one with `python -m onion keygen --out keys/{name}` (or use an existing tor "
        f"hidden-service directory), then "
        f"`python -m onion import keys/{name} | pulumi config set --secret --path 'masterKeys.{name}'`"
    )


# ---------------------------------------------------------------- sections
def _parse_sites(raw_sites: Any, raw_keys: Any, raw_tls_keys: Any = None) -> tuple[Site, ...]:
    accepted = (
        "must be a non-empty list of {name, domain, originAddress?, blockHosts?, blockPaths?, https?, "
        "httpRedirect?, certificateChain?, validationPaths?, foreignOnions?, dos?}"
    )
    if raw_sites is None:
        raise _missing(
            "sites",
            "list each onion site, e.g. `pulumi config set --path 'sites[0].name' news` and "
            "`pulumi config set --path 'sites[0].domain' example.com`",
        )
    if not isinstance(raw_sites, list) or not raw_sites:
        raise _fail("sites", raw_sites, accepted)
    if raw_keys is None:
        raw_keys = {}
    if not isinstance(raw_keys, Mapping):
        raise _fail(
            "masterKeys", raw_keys, "must be an object mapping each site name to its key", secret=True
        )
    if not raw_tls_keys:  # unset, or empty in whatever form a tool wrote it ({}, [])
        raw_tls_keys = {}
    if not isinstance(raw_tls_keys, Mapping):
        raise _fail("tlsKeys", raw_tls_keys, "must be an object mapping site names to PEM private keys", secret=True)
    sites: list[Site] = []
    seen: set[str] = set()
    allowed = {"name": None, "domain": None, "originAddress": None, "blockHosts": [], "blockPaths": [],
               "https": "off", "httpRedirect": None, "certificateChain": None, "validationPaths": [],
               "foreignOnions": {}, "dos": DEFAULT_DOS, "kind": "proxy", "app": None}
    for i, entry in enumerate(raw_sites):
        key = f"sites[{i}]"
        entry = _object(key, entry, allowed)
        name = entry["name"]
        if not isinstance(name, str) or not SITE_NAME_RE.match(name):
            raise _fail(
                f"{key}.name", name,
                "must match ^[a-z][a-z0-9-]{0,30}$ (lower-case letter, then letters, digits, hyphens)",
            )
        if name in seen:
            raise _fail(f"{key}.name", name, "is used by an earlier site; site names must be unique")
        seen.add(name)
        app = _parse_app_site(key, entry)
        domain = entry["domain"]
        if app is not None:
            domain = None  # an app site has no clearnet side
        elif not isinstance(domain, str) or not DNS_NAME_RE.match(domain):
            raise _fail(f"{key}.domain", domain, "must be a DNS name such as example.com")
        else:
            domain = domain.rstrip(".").lower()
        origin = entry["originAddress"]
        if origin is not None:
            origin = _parse_host_port(f"{key}.originAddress", origin)
        block_hosts = _str_list(f"{key}.blockHosts", entry["blockHosts"], "DNS names")
        for j, host in enumerate(block_hosts):
            if not DNS_NAME_RE.match(host):
                raise _fail(f"{key}.blockHosts[{j}]", host, "must be a DNS name such as ads.example.com")
        block_paths = _str_list(f"{key}.blockPaths", entry["blockPaths"], "path regular expressions")
        for j, path in enumerate(block_paths):
            try:
                re.compile(path)
            except re.error as exc:
                raise _fail(f"{key}.blockPaths[{j}]", path, f"must be a valid regular expression ({exc})")
        if name not in raw_keys:
            raise _missing(f"masterKeys.{name}", f"site {name!r} has no master key; {_keygen_fix(name)}")
        value = raw_keys[name]
        problem = master_key_error(value) if isinstance(value, str) else "is not a string"
        if problem:
            raise _fail(
                f"masterKeys.{name}", value,
                f"must be {MASTER_KEY_PREFIX}<base64 of tor's 64-byte expanded secret key> "
                f"({problem}); {_keygen_fix(name)}",
                secret=True,
            )
        onion = onion_address_of(value)
        https, chain, tls_key, redirect = _parse_https(key, name, entry, onion, raw_tls_keys)
        sites.append(
            Site(
                name=name,
                domain=domain,
                master_key=Secret(value),
                onion_address=onion,
                origin_address=origin,
                block_hosts=tuple(h.lower() for h in block_hosts),
                block_paths=tuple(block_paths),
                https=https,
                http_redirect=redirect,
                certificate_chain=chain,
                tls_key=tls_key,
                validation_paths=_parse_validation_paths(f"{key}.validationPaths", entry["validationPaths"]),
                foreign_onions=_parse_foreign_onions(f"{key}.foreignOnions", entry["foreignOnions"], domain),
                dos=_parse_dos(f"{key}.dos", entry["dos"]),
                app=app,
            )
        )
    extra = sorted(set(raw_keys) - seen)
    if extra:
        raise _fail(
            f"masterKeys.{extra[0]}", None,
            "names no site in onionstack:sites; remove it with "
            f"`pulumi config rm --path 'masterKeys.{extra[0]}'` or add the site",
            secret=True,
        )
    extra = sorted(set(raw_tls_keys) - {s.name for s in sites if s.https == "provided"})
    if extra:
        raise _fail(
            f"tlsKeys.{extra[0]}", None,
            "names no site with https: provided; remove it with "
            f"`pulumi config rm --path 'tlsKeys.{extra[0]}'`",
            secret=True,
        )
    _check_foreign_onions_across_sites(sites)
    return tuple(sites)


# ---------------------------------------------------------------- app sites (kind: app)
@dataclass(frozen=True)
class AppConfig:
    """An onion-native application (docs/apps.md): a digest-pinned container image every
    worker runs (podman), listening on `port` inside the container, answering `health_path`
    with 2xx when ready; `env` from config (public; DATABASE_URL is added by the stack, a
    secret); `migrate`, an optional one-shot command (argv) run with the same environment
    once per image change before any worker switches. `ecr`: the stack creates the image's
    repository (KMS-encrypted, scan on push, immutable tags) and `image` is only the digest."""

    image: str  # "<registry>/<repo>@sha256:<64 hex>" or, with ecr, "sha256:<64 hex>"
    port: int = 8080
    health_path: str = "/healthz"
    env: tuple[tuple[str, str], ...] = ()
    migrate: tuple[str, ...] = ()
    ecr: bool = False

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[-1]


APP_KINDS = ("proxy", "app")
DEFAULT_APP = {"image": None, "port": 8080, "healthPath": "/healthz", "env": {}, "migrate": [], "ecr": False}
IMAGE_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# registry host[:port]/path[:tag]@sha256:digest (the tag, if any, is informational: podman pulls the digest)
IMAGE_REF_RE = re.compile(r"^(?P<registry>[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?)/"
                          r"[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
APP_RESERVED_ENV = ("DATABASE_URL", "PORT", "PGSSLROOTCERT")
HEALTH_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
APP_PORT_RANGE = (1, 65535)
# Keys only a proxy site has: an app site has no clearnet origin to map.
PROXY_ONLY_KEYS = ("domain", "originAddress", "blockHosts", "blockPaths", "foreignOnions")


def _check_apps_have_a_database(sites: tuple[Site, ...], database: Any) -> None:
    if isinstance(database, Mapping) and database.get("enabled") in (False, "false"):
        apps = [i for i, s in enumerate(sites) if s.is_app]
        if apps:
            raise _fail("database.enabled", False, f"sites[{apps[0]}] ({sites[apps[0]].name}) is an app site: its "
                        "data lives in the stack's PostgreSQL; enable the database or remove the app site")


def _parse_app_site(key: str, entry: Mapping[str, Any]) -> Optional[AppConfig]:
    """`sites[i].kind` and `sites[i].app`: None for a proxy site, else the app's settings."""
    kind = entry["kind"]
    if kind not in APP_KINDS:
        raise _fail(f"{key}.kind", kind, "must be \"proxy\" (a rewriting proxy to a clearnet origin, the default) "
                    "or \"app\" (an application the workers run; sites[].app says which)")
    if kind == "proxy":
        if entry["app"] is not None:
            raise _fail(f"{key}.app", "{...}", "is for sites with kind: app; set "
                        f"`pulumi config set --path '{key}.kind' app` or remove it")
        return None
    for extra in PROXY_ONLY_KEYS:
        if entry.get(extra) not in (None, [], {}):
            raise _fail(f"{key}.{extra}", entry[extra], "an app site (kind: app) has no clearnet origin; remove it")
    if entry["app"] is None:
        raise _missing(f"{key}.app", "an app site needs its image, e.g. `pulumi config set --path "
                       f"'{key}.app.image' registry.example/guestbook@sha256:<digest>`")
    app = _object(f"{key}.app", entry["app"], DEFAULT_APP)
    ecr = _bool(f"{key}.app.ecr", app["ecr"])
    image = app["image"]
    if ecr:
        if not isinstance(image, str) or not IMAGE_DIGEST_RE.match(image):
            raise _fail(f"{key}.app.image", image, "with app.ecr the stack's repository holds the image: give its "
                        "digest only, sha256:<64 hex> (`podman push --digestfile`)")
    elif not isinstance(image, str) or not IMAGE_REF_RE.match(image):
        raise _fail(f"{key}.app.image", image, "must be pinned by digest: <registry>/<repository>@sha256:<64 hex>, "
                    "e.g. ghcr.io/example/guestbook@sha256:... (a tag alone can change under you)")
    port = _int(f"{key}.app.port", app["port"], *APP_PORT_RANGE)
    health = app["healthPath"]
    if not isinstance(health, str) or not HEALTH_PATH_RE.match(health):
        raise _fail(f"{key}.app.healthPath", health, "must be a URL path such as /healthz")
    env = app["env"]
    if not isinstance(env, Mapping):
        raise _fail(f"{key}.app.env", env, "must be an object of NAME: value strings")
    pairs = []
    for name in sorted(env):
        value = env[name]
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise _fail(f"{key}.app.env.{name}", value, "names must match ^[A-Z_][A-Z0-9_]*$")
        if name in APP_RESERVED_ENV:
            raise _fail(f"{key}.app.env.{name}", value, f"is set by the stack ({', '.join(APP_RESERVED_ENV)}); remove it")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or "\n" in str(value):
            raise _fail(f"{key}.app.env.{name}", value, "must be a one-line string or number (secrets do not "
                        "belong here: plain config is not encrypted)")
        pairs.append((name, str(value)))
    migrate = app["migrate"]
    if isinstance(migrate, str):
        migrate = [migrate]
    if not isinstance(migrate, list) or not all(isinstance(a, str) and a and "\n" not in a for a in migrate):
        raise _fail(f"{key}.app.migrate", migrate, "must be a command as a list of arguments, e.g. "
                    "[\"python\", \"-m\", \"guestbook\", \"migrate\"], or [] for none")
    return AppConfig(image=image, port=port, health_path=health, env=tuple(pairs), migrate=tuple(migrate), ecr=ecr)


# ---------------------------------------------------------------- HTTPS, foreign onions, DoS
def _tls_key_fix(name: str) -> str:
    # stdin again: the key never lands on a command line or in shell history.
    return f"store it with `pulumi config set --secret --path 'tlsKeys.{name}' < {name}.key`"


def _parse_https(key: str, name: str, entry: Mapping[str, Any], onion: str,
                 raw_tls_keys: Mapping[str, Any]) -> tuple[str, Optional[str], Optional[Secret], bool]:
    https = entry["https"]
    if https not in HTTPS_MODES:
        raise _fail(f"{key}.https", https,
                    "must be off (plain HTTP), selfSigned (the stack makes and renews a certificate for the "
                    "onion and its subdomains) or provided (certificateChain + a tlsKeys secret)")
    redirect = entry["httpRedirect"]
    if redirect is None:
        redirect = True
    else:
        redirect = _bool(f"{key}.httpRedirect", redirect)
        if https == "off":
            raise _fail(f"{key}.httpRedirect", entry["httpRedirect"],
                        "applies only to a site with https selfSigned or provided; remove it")
    chain = entry["certificateChain"]
    if https != "provided":
        if chain is not None:
            raise _fail(f"{key}.certificateChain", "(PEM)",
                        f"is used only with https: provided (this site has https: {https}); remove it")
        if name in raw_tls_keys:
            raise _fail(f"tlsKeys.{name}", None, f"is used only with https: provided (sites[{name}] has "
                        f"https: {https}); remove it with `pulumi config rm --path 'tlsKeys.{name}'`", secret=True)
        return https, None, None, redirect
    if not isinstance(chain, str) or "-----BEGIN CERTIFICATE-----" not in chain:
        raise _fail(f"{key}.certificateChain", chain if not isinstance(chain, str) else "(not PEM)",
                    "must be the PEM certificate chain for the onion, leaf first; set it with "
                    f"`pulumi config set --path '{key}.certificateChain' < chain.pem`")
    if name not in raw_tls_keys:
        raise _missing(f"tlsKeys.{name}", f"site {name!r} has https: provided but no private key; "
                                          f"{_tls_key_fix(name)}")
    pem = raw_tls_keys[name]
    problem = _certificate_problem(chain, pem, onion) if isinstance(pem, str) else "the key is not a string"
    if problem:
        where, what = problem
        if where == "key":
            raise _fail(f"tlsKeys.{name}", pem, f"must be the PEM private key of certificateChain's leaf ({what}); "
                        f"{_tls_key_fix(name)}", secret=True)
        raise _fail(f"{key}.certificateChain", "(PEM)", what)
    return https, chain.strip() + "\n", Secret(pem), redirect


def _certificate_problem(chain: str, key_pem: str, onion: str) -> Optional[tuple[str, str]]:
    """Why a provided chain and key cannot serve `onion`: ("chain" | "key", reason), or None.

    Parsed with `cryptography` (the same library pulumi-tls' outputs are checked with in
    the tests). Reasons never quote the key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(chain.encode())
    except ValueError as exc:
        return "chain", f"is not a readable PEM certificate chain ({exc})"
    leaf = certs[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if onion not in [n.lower() for n in names]:
        return "chain", (f"its first certificate does not name {onion} (it names {', '.join(names) or 'nothing'}); "
                         "give the onion's certificate first, then its intermediates")
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        return "chain", f"its first certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}; renew it"
    try:
        private = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        return "key", "it is passphrase-protected; nginx needs an unencrypted key"
    except (ValueError, TypeError, binascii.Error):
        return "key", "it is not a PEM private key"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        return "key", "it does not belong to the certificate"
    return None


def _parse_validation_paths(key: str, value: Any) -> tuple[ValidationPath, ...]:
    if not isinstance(value, list):
        raise _fail(key, value, "must be a list of {path, content?}")
    out: list[ValidationPath] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        item = _object(where, item, {"path": None, "content": None})
        path, content = item["path"], item["content"]
        if not isinstance(path, str) or not VALIDATION_PATH_RE.match(path) or ".." in path.split("/"):
            raise _fail(f"{where}.path", path, "must be an absolute URL path of A-Za-z0-9._~/+- characters, "
                        "e.g. /.well-known/pki-validation/FILE.txt")
        if content is not None and (not isinstance(content, str) or not VALIDATION_CONTENT_RE.match(content)
                                    or re.search(r'["\\$]', content)):
            raise _fail(f"{where}.content", content, "must be 1..4096 printable ASCII characters (newlines "
                        "allowed) without quotes, backslashes or '$'")
        if path in [v.path for v in out]:
            raise _fail(f"{where}.path", path, "is listed twice")
        out.append(ValidationPath(path, content))
    return tuple(out)


def _parse_foreign_onions(key: str, value: Any, domain: str) -> tuple[tuple[str, str], ...]:
    from onion.keys import parse_address

    if not isinstance(value, Mapping):
        raise _fail(key, value, "must be an object mapping other sites' domains to their onion addresses, "
                    "e.g. {facebook.com: facebookwkhpilnemxj7asaniu7vnjjbiltxjqhye3mhbshg7kx5tfyd.onion}")
    out = []
    for fdomain, onion in value.items():
        where = f"{key}[\"{fdomain}\"]"
        if not isinstance(fdomain, str) or not DNS_NAME_RE.match(fdomain) or fdomain.lower().endswith(".onion"):
            raise _fail(where, fdomain, "the key must be a clearnet DNS name such as facebook.com")
        fdomain = fdomain.rstrip(".").lower()
        if fdomain == domain or fdomain.endswith("." + domain) or domain.endswith("." + fdomain):
            raise _fail(where, fdomain, f"overlaps this site's own domain {domain}, which it maps itself")
        try:
            address = onion_address(parse_address(onion)) if isinstance(onion, str) else None
        except ValueError as exc:
            raise _fail(where, onion, f"must be a v3 onion address ({exc})") from None
        if address is None:
            raise _fail(where, onion, "must be a v3 onion address")
        out.append((fdomain, address + ".onion"))
    names = sorted(d for d, _ in out)
    for a in names:
        for b in names:
            if a != b and a.endswith("." + b):
                raise _fail(f"{key}[\"{a}\"]", a, f"is under {b}, which is already mapped (with its subdomains)")
    return tuple(sorted(out))


def _check_foreign_onions_across_sites(sites: list[Site]) -> None:
    for i, site in enumerate(sites):
        for fdomain, fonion in site.foreign_onions:
            for other in sites:
                d = other.domain
                if other is not site and (fdomain == d or fdomain.endswith("." + d) or d.endswith("." + fdomain)):
                    raise _fail(f"sites[{i}].foreignOnions[\"{fdomain}\"]", fdomain,
                                f"site {other.name!r} serves {d} itself; every site's links to it are "
                                "rewritten already: remove it")
                if fonion == other.onion_address:
                    raise _fail(f"sites[{i}].foreignOnions[\"{fdomain}\"]", fonion,
                                f"is the address of site {other.name!r}; remove it")


def _parse_dos(key: str, value: Any) -> SiteDos:
    merged = _object(key, value, DEFAULT_DOS)
    flags = {k: _bool(f"{key}.{k}", merged[k]) for k in ("pow", "introDefense", "maxStreamsCloseCircuit")}
    ints = {k: _int(f"{key}.{k}", merged[k], lo, hi) for k, lo, hi in (
        ("powQueueRate", 0, INT32_MAX), ("powQueueBurst", 1, INT32_MAX), ("introRate", 1, INT32_MAX),
        ("introBurst", 1, INT32_MAX), ("maxStreams", 0, 65535))}
    # tor refuses a rate above its burst for both token buckets (`tor --verify-config`).
    for rate, burst in (("powQueueRate", "powQueueBurst"), ("introRate", "introBurst")):
        if ints[rate] > ints[burst]:
            raise _fail(f"{key}.{rate}", ints[rate], f"must not exceed {key}.{burst} ({ints[burst]}): tor refuses "
                        "a token bucket whose rate is above its burst")
    return SiteDos(pow=flags["pow"], pow_queue_rate=ints["powQueueRate"], pow_queue_burst=ints["powQueueBurst"],
                   intro_defense=flags["introDefense"], intro_rate=ints["introRate"], intro_burst=ints["introBurst"],
                   max_streams=ints["maxStreams"], max_streams_close_circuit=flags["maxStreamsCloseCircuit"])


def _parse_host_port(key: str, value: Any) -> str:
    accepted = "must be host:port, e.g. origin.example.com:443 or 192.0.2.10:8443"
    if not isinstance(value, str) or ":" not in value:
        raise _fail(key, value, accepted)
    host, _, port = value.rpartition(":")
    host_ok = bool(DNS_NAME_RE.match(host))
    if not host_ok:
        try:
            ipaddress.ip_address(host.strip("[]"))
            host_ok = True
        except ValueError:
            pass
    if not host_ok or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(key, value, accepted)
    return value


def _parse_vpc_cidr(value: Any) -> str:
    accepted = "must be a private (RFC 1918) IPv4 network from /16 to /22, e.g. 10.42.0.0/16"
    if not isinstance(value, str):
        raise _fail("vpcCidr", value, accepted)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _fail("vpcCidr", value, accepted) from None
    if net.version != 4 or not net.is_private or not 16 <= net.prefixlen <= 22:
        raise _fail("vpcCidr", value, accepted)
    if str(net) != value:
        raise _fail("vpcCidr", value, f"has host bits set; did you mean {net}?")
    return value


def _parse_admin_cidrs(value: Any) -> tuple[str, ...]:
    accepted = (
        "must be a non-empty list of the CIDRs allowed to SSH to the balancer, "
        "e.g. [\"198.51.100.7/32\"] (or the same comma-separated); together at most a /16 of IPv4 and a /48 of IPv6"
    )
    if value is None:
        raise _missing(
            "adminCidrs",
            "list the CIDRs allowed to SSH to the balancer, e.g. "
            "`pulumi config set --path 'adminCidrs[0]' 198.51.100.7/32`",
        )
    if isinstance(value, str):  # "198.51.100.7/32, 2001:db8::/64" (pulumi new's prompt)
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise _fail("adminCidrs", value, accepted)
    out = []
    for i, cidr in enumerate(value):
        key = f"adminCidrs[{i}]"
        if not isinstance(cidr, str):
            raise _fail(key, cidr, "must be a CIDR string such as 198.51.100.7/32")
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise _fail(key, cidr, f"must be a CIDR such as 198.51.100.7/32 ({exc})") from None
        if net.prefixlen == 0:
            raise _fail(key, cidr, "opens SSH to the whole internet; list your admin networks instead")
        out.append(str(net))
    _check_admin_span(out)
    return tuple(out)


# The widest union of adminCidrs per IP version: a /16 of IPv4 (65 536 addresses), a /48 of
# IPv6 (one site's allocation). Wider is no longer "the admin network".
ADMIN_SPAN = {4: 16, 6: 48}


def _check_admin_span(cidrs: list[str]) -> None:
    """Refuse a set whose union is wider than ADMIN_SPAN, however it is split: the merged
    ranges (ipaddress.collapse_addresses) are compared by address count, so 0.0.0.0/1 plus
    128.0.0.0/1 counts as the whole internet it is."""
    for version, widest in ADMIN_SPAN.items():
        nets = [(i, ipaddress.ip_network(c)) for i, c in enumerate(cidrs)]
        nets = [(i, n) for i, n in nets if n.version == version]
        covered = sum(n.num_addresses for n in ipaddress.collapse_addresses(n for _, n in nets))
        limit = 2 ** ((32 if version == 4 else 128) - widest)
        if covered > limit:
            entries = ", ".join(f"adminCidrs[{i}] {n}" for i, n in nets)
            raise ConfigError(
                f"{NAMESPACE}:adminCidrs: {entries} together admit {_pow2(covered)} IPv{version} "
                f"addresses, more than a /{widest} ({_pow2(limit)}); SSH to the balancer is for "
                f"your admin networks: list narrower CIDRs (CI opens its own /32 for the run, "
                f"docs/operations.md)"
            )


def _pow2(n: int) -> str:
    exact = n.bit_length() - 1
    return f"2^{exact}" if n == 1 << exact else str(n)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_ssh_keys(public: Any, private: Any) -> tuple[Optional[str], Optional[Secret]]:
    """The admin key pair: both keys, or neither (None, None: the stack makes its own)."""
    from cryptography.hazmat.primitives import serialization

    if _absent(public) and _absent(private):
        return None, None
    if _absent(public):
        raise _missing("sshPublicKey", "sshPrivateKey is set, and the two go together: set its public half "
                       "with `pulumi config set sshPublicKey \"$(ssh-keygen -y -f KEYFILE)\"`, or remove "
                       "sshPrivateKey (`pulumi config rm sshPrivateKey`) and the stack makes its own key "
                       "(stack output adminSshPrivateKey)")
    accepted = "must be an OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'"
    if not isinstance(public, str):
        raise _fail("sshPublicKey", public, accepted)
    try:
        pub = serialization.load_ssh_public_key(public.strip().encode())
    except (ValueError, TypeError):
        raise _fail("sshPublicKey", public, accepted) from None
    fix = "set it with `pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519`"
    if _absent(private):
        raise _missing("sshPrivateKey", f"sshPublicKey is set, and the two go together: the bootstrap steps "
                       f"need its private half; {fix}, or remove sshPublicKey (`pulumi config rm "
                       f"sshPublicKey`) and the stack makes its own key (stack output adminSshPrivateKey)")
    if not isinstance(private, str):
        raise _fail("sshPrivateKey", private, f"must be an OpenSSH private key; {fix}", secret=True)
    try:
        priv = serialization.load_ssh_private_key(private.encode(), password=None)
    except TypeError:
        raise _fail(
            "sshPrivateKey", private,
            "is passphrase-protected; the bootstrap steps need an unencrypted key (a Pulumi secret "
            "is encrypted at rest); make one with `ssh-keygen -t ed25519 -N '' -f onionstack_key`",
            secret=True,
        ) from None
    except (ValueError, binascii.Error):
        raise _fail("sshPrivateKey", private, f"must be an OpenSSH private key; {fix}", secret=True) from None
    raw = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    if priv.public_key().public_bytes(*raw) != pub.public_bytes(*raw):
        raise _fail(
            "sshPrivateKey", private,
            "does not belong to onionstack:sshPublicKey; set both from the same key pair",
            secret=True,
        )
    return public.strip(), Secret(private)


def _parse_instance_types(value: Any) -> InstanceTypes:
    merged = _object("instanceTypes", value, DEFAULT_INSTANCE_TYPES)
    for role, itype in merged.items():
        if not isinstance(itype, str) or not INSTANCE_TYPE_RE.match(itype):
            raise _fail(f"instanceTypes.{role}", itype, "must be an EC2 instance type such as t3.small")
    return InstanceTypes(**merged)


def _parse_database(value: Any) -> DatabaseConfig:
    merged = _object("database", value, DEFAULT_DATABASE)
    lo, hi = VOLUME_GB_RANGE
    return DatabaseConfig(
        enabled=_bool("database.enabled", merged["enabled"]),
        data_gb=_int("database.dataGb", merged["dataGb"], lo, hi),
        journal_gb=_int("database.journalGb", merged["journalGb"], lo, hi),
        log_gb=_int("database.logGb", merged["logGb"], lo, hi),
        postgres_version=_int("database.postgresVersion", merged["postgresVersion"], *POSTGRES_VERSION_RANGE),
    )


def _max_days_of_months(n: int) -> int:
    """The most days any run of `n` consecutive calendar months can span (leap years included)."""
    years = n // 12 + 9  # enough windows to meet every leap-year placement
    lengths = [calendar.monthrange(2000 + y, m)[1] for y in range(years) for m in range(1, 13)]
    return max(sum(lengths[s:s + n]) for s in range(len(lengths) - n + 1))


# Rule name, config key, schedule (AWS cron, UTC; staggered so no two rules start in the
# same hour: AWS Backup runs one job per resource at a time and a queued job that cannot
# start within its start window fails), and the period in days (None: calendar months).
BACKUP_RULES = (
    ("three-hourly", "threeHourlyKeep", "cron(0 0/3 * * ? *)", 3 / 24),
    ("daily", "dailyKeep", "cron(30 1 * * ? *)", 1),
    ("weekly", "weeklyKeep", "cron(30 4 ? * SUN *)", 7),
    ("monthly", "monthlyKeep", "cron(30 7 1 * ? *)", None),  # calendar months
)


def retention_days(keep: int, period_days: Optional[float]) -> int:
    """Days to retain so that the last `keep` recovery points always exist.

    The oldest of the last `keep` points is at most `keep` periods old, so retaining for
    ceil(keep * period) days keeps at least `keep` (up to one more just before the oldest
    expires). Monthly periods use the longest run of `keep` calendar months. AWS Backup's
    minimum is 1 day.
    """
    if period_days is None:
        return _max_days_of_months(keep)
    return max(1, math.ceil(keep * period_days - 1e-9))


def _parse_backup(value: Any) -> BackupConfig:
    merged = _object("backup", value, DEFAULT_BACKUP)
    enabled = _bool("backup.enabled", merged["enabled"])
    rules = []
    for name, key, schedule, period in BACKUP_RULES:
        keep = _int(f"backup.{key}", merged[key], *KEEP_RANGE)
        rules.append(BackupRule(name, schedule, keep, retention_days(keep, period)))
    return BackupConfig(enabled, tuple(rules), _parse_vault_lock(merged),
                        _parse_copy_region(merged["copyToRegion"]))


def compliance_confirmation(days: int) -> str:
    """The exact `backup.lockConfirm` text that turns compliance mode on."""
    return f"irreversible after {days} days"


def _parse_vault_lock(merged: Mapping[str, Any]) -> VaultLock:
    mode = merged["lockMode"]
    if mode not in LOCK_MODES:
        raise _fail(
            "backup.lockMode", mode,
            "must be \"governance\" (lifted by a principal allowed "
            "backup:DeleteBackupVaultLockConfiguration) or \"compliance\" (irreversible after "
            "backup.lockChangeableForDays; needs backup.lockConfirm)",
        )
    days = _int("backup.lockChangeableForDays", merged["lockChangeableForDays"], *LOCK_CHANGEABLE_RANGE)
    confirm = merged["lockConfirm"]
    if not isinstance(confirm, str):
        raise _fail("backup.lockConfirm", confirm, "must be a string")
    expected = compliance_confirmation(days)
    if mode == "governance":
        if confirm:
            raise _fail(
                "backup.lockConfirm", confirm,
                "only confirms lockMode \"compliance\"; remove it "
                "(`pulumi config rm --path backup.lockConfirm`) or set backup.lockMode compliance",
            )
        return VaultLock("governance")
    if confirm != expected:
        # Compliance mode cannot be undone: a typo in lockMode must not turn it on.
        raise _fail(
            "backup.lockConfirm", confirm,
            f"compliance mode becomes immutable {days} days after `pulumi up` applies it "
            f"(backup.lockChangeableForDays): from then on no one, not even the account's root "
            f"user, can delete a recovery point before it expires, shorten its retention, or "
            f"remove the lock, and the vault cannot be deleted while it holds recovery points; "
            f"to accept that, set backup.lockConfirm to {expected!r}",
        )
    return VaultLock("compliance", days)


def _parse_copy_region(value: Any) -> Optional[str]:
    if value in ("", None):
        return None
    if not isinstance(value, str) or not REGION_RE.match(value):
        raise _fail(
            "backup.copyToRegion", value,
            "must be an AWS region name such as eu-west-1 (a second region that gets a copy "
            "of every recovery point), or \"\" for no copy",
        )
    return value


def check_copy_region(backup: BackupConfig, region: Optional[str]) -> None:
    """The copy must go to another region than the stack's own."""
    if backup.enabled and backup.copy_to_region and backup.copy_to_region == region:
        raise _fail(
            "backup.copyToRegion", backup.copy_to_region,
            f"is the stack's own region (aws:region); name a second region, or \"\" for no copy",
        )


def _parse_flow_logs(value: Any) -> FlowLogsConfig:
    merged = _object("flowLogs", value, DEFAULT_FLOW_LOGS)
    traffic = merged["traffic"]
    if traffic not in FLOW_LOG_TRAFFIC:
        raise _fail(
            "flowLogs.traffic", traffic,
            "must be \"REJECT\" (what the security groups and network ACLs refused) or \"ALL\"",
        )
    days = merged["retentionDays"]
    if isinstance(days, bool) or days not in LOG_RETENTION_DAYS:
        raise _fail(
            "flowLogs.retentionDays", days,
            f"must be one of CloudWatch Logs' retention periods: {', '.join(map(str, LOG_RETENTION_DAYS))}",
        )
    return FlowLogsConfig(_bool("flowLogs.enabled", merged["enabled"]), traffic, int(days))


def _parse_alarm_emails(value: Any) -> tuple[str, ...]:
    accepted = ("must be a list of e-mail addresses that get the alarms (each confirms an SNS "
                "subscription e-mail), e.g. [\"ops@example.com\"]")
    if not isinstance(value, list):
        raise _fail("alarmEmails", value, accepted)
    seen: list[str] = []
    for i, address in enumerate(value):
        if not isinstance(address, str) or not EMAIL_RE.match(address):
            raise _fail(f"alarmEmails[{i}]", address, "must be an e-mail address such as ops@example.com")
        if address.lower() in (a.lower() for a in seen):
            raise _fail(f"alarmEmails[{i}]", address, "is listed twice; list each address once")
        seen.append(address)
    return tuple(seen)


def _parse_nat(value: Any) -> str:
    if value not in ("one", "perAz"):
        raise _fail("natGateways", value, "must be \"one\" (cheaper) or \"perAz\" (survives an AZ outage)")
    return value


# ---------------------------------------------------------------- entry points
def parse_config(raw: Mapping[str, Any]) -> StackConfig:
    """Validate plain config values (keys without the `onionstack:` prefix)."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, SCHEMA, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        # The value is not shown: a mistyped key may well hold a secret (`masterKey`).
        raise ConfigError(
            f"{NAMESPACE}:{key} is not a known key{hint}; remove it with "
            f"`pulumi config rm {key}`; onionstack accepts {', '.join(SCHEMA)}"
        )

    def get(key: str) -> Any:
        value = raw.get(key)
        if value is None:
            default = SCHEMA[key][1]
            return None if default is REQUIRED else default
        return value

    sites = _parse_sites(get("sites"), get("masterKeys"), get("tlsKeys"))
    _check_apps_have_a_database(sites, get("database"))
    ssh_public, ssh_private = _parse_ssh_keys(get("sshPublicKey"), get("sshPrivateKey"))
    nat = _parse_nat(get("natGateways"))
    return StackConfig(
        sites=sites,
        workers=_int("workers", get("workers"), *WORKERS_RANGE),
        tor_daemons_per_worker=_int("torDaemonsPerWorker", get("torDaemonsPerWorker"), *DAEMONS_RANGE),
        intro_points_per_daemon=_int("introPointsPerDaemon", get("introPointsPerDaemon"), *INTRO_RANGE),
        instance_types=_parse_instance_types(get("instanceTypes")),
        availability_zones=_int("availabilityZones", get("availabilityZones"), *AZ_RANGE),
        vpc_cidr=_parse_vpc_cidr(get("vpcCidr")),
        admin_cidrs=_parse_admin_cidrs(get("adminCidrs")),
        ssh_public_key=ssh_public,
        ssh_private_key=ssh_private,
        database=_parse_database(get("database")),
        backup=_parse_backup(get("backup")),
        protect_data=_bool("protectData", get("protectData")),
        nat_gateways=nat,
        balancer=_parse_balancer(get("balancer"), _int("availabilityZones", get("availabilityZones"), *AZ_RANGE)),
        flow_logs=_parse_flow_logs(get("flowLogs")),
        alarm_emails=_parse_alarm_emails(get("alarmEmails")),
    )


def decode_raw(key: str, text: str) -> Any:
    """Turn one Pulumi config string into its value by the key's declared type.

    The engine hands every value to the program as a string; objects, lists, numbers and
    booleans arrive JSON-encoded. Strings stay as they are, and so does text that is not
    JSON, for `parse_config` to reject with the key's own accepted form.
    """
    if SCHEMA.get(key, (None, None))[0] == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ---------------------------------------------------------------- secrets stay encrypted
def read_stack_file(stack: str, root: Optional[str]) -> tuple[str, Optional[Mapping[str, Any]]]:
    """The stack settings file's name and its `config:` as stored (secure values still
    `{secure: ...}`), or None when there is none (config from elsewhere)."""
    import yaml

    # The project root (Pulumi.yaml) as the SDK reports it, else the working directory the
    # CLI runs the program in (under mocks the SDK reports a placeholder).
    base = next((Path(d) for d in (root, os.getcwd()) if d and (Path(d) / "Pulumi.yaml").is_file()),
                Path(os.getcwd()))
    folder = base
    try:
        project = yaml.safe_load((base / "Pulumi.yaml").read_text()) or {}
        if isinstance(project.get("stackConfigDir"), str):
            folder = base / project["stackConfigDir"]
    except (OSError, yaml.YAMLError):
        pass
    path = folder / f"Pulumi.{stack}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return path.name, None
    config = data.get("config") if isinstance(data, dict) else None
    return path.name, config if isinstance(config, dict) else None


def _encrypted(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


def plain_secret_paths(
    raw: Mapping[str, Any],
    is_secret: Callable[[str], bool],
    stored: Optional[Mapping[str, Any]],
) -> list[str]:
    """Config paths that hold a secret (SECRET_KEYS) in plain text.

    Pulumi tells a program only which top-level keys hold a secret, and a key counts as
    secret when any part of it is (`masterKeys` with one site's key set `--secret` and
    another's set plain is "secret"). The stack settings file as stored says it per path:
    an encrypted value is `{secure: ...}` there, so each site's key is checked in it.
    """
    plain: list[str] = []
    for key in SECRET_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if not value:
            continue  # empty (tlsKeys' default, which the CLI passes in plain text): no secret in it
        if not is_secret(key):
            if key in ("masterKeys", "tlsKeys") and isinstance(value, dict):
                plain += [f"{key}.{site}" for site in sorted(value)]
            else:
                plain.append(key)
            continue
        kept = (stored or {}).get(f"{NAMESPACE}:{key}")
        if isinstance(kept, dict) and not _encrypted(kept):
            plain += [f"{key}.{site}" for site in sorted(kept) if not _encrypted(kept[site])]
    return plain


def plain_secret_error(paths: list[str], stack_file: str) -> ConfigError:
    """One line: the plain paths and, for each, the command that encrypts it in place."""
    names = ", ".join(f"{NAMESPACE}:{p}" for p in paths)
    verb = "is" if len(paths) == 1 else "are"
    fixes = "; ".join(
        f"`pulumi config get --path '{p}' | pulumi config set --secret --path '{p}'`" for p in paths
    )
    return ConfigError(
        f"{names} {verb} stored in plain text in the stack config ({stack_file}); secrets must "
        f"be encrypted: {fixes} (a key whose plain text was ever committed or shared has leaked: "
        f"replace it)"
    )


def load_config() -> StackConfig:
    """Read and validate `onionstack:*` from the Pulumi config (CLI or mocks)."""
    import pulumi

    from pulumi.runtime import config as runtime_config

    cfg = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    # Every key set under our namespace, so a typo (`onionstack:worker`) is an error
    # instead of a silently ignored value.
    present = {*runtime_config.CONFIG.get(), *runtime_config.get_config_env()}
    for full in sorted(present):
        ns, _, key = full.partition(":")
        if ns == NAMESPACE and key not in SCHEMA and "." not in key:
            raw[key] = decode_raw(key, cfg.get(key) or "")
    for key in SCHEMA:
        # Plain `get` also reads secret keys; they are wrapped in `Secret` straight away
        # and reach resources only through `Secret.output()` (a Pulumi secret).
        text = cfg.get(key)
        if text is not None:
            raw[key] = decode_raw(key, text)
    stack_file, stored = read_stack_file(pulumi.get_stack(), pulumi.get_root_directory())
    plain = plain_secret_paths(raw, lambda key: runtime_config.is_config_secret(f"{NAMESPACE}:{key}"), stored)
    if plain:
        raise plain_secret_error(plain, stack_file)
    parsed = parse_config(raw)
    check_copy_region(parsed.backup, pulumi.Config("aws").get("region"))
    return parsed
