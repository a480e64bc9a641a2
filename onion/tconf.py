"""`python -m onion import-tconf FILE.tconf`: EOTK site configuration -> onionstack stack config.

EOTK's configuration language (lib.d/do-configure.pl and expand-config.pl in EOTK) is a
line language: lines ending in an odd number of backslashes are joined to the next, then
whole-line `#` comments and blank lines are dropped, and each line is split on whitespace:

    set VARIABLE VALUE…                    (VALUE is the rest of the line, single-spaced)
    hardmap ONION|%NEW_V3_ONION% DOMAIN [SUBDOMAIN…]
    softmap ONION|%NEW_V3_ONION% DOMAIN [SUBDOMAIN…]
    foreignmap ONION DOMAIN

Each hardmap/softmap line becomes one onionstack site (one onion address for a domain and
its subdomains; onionstack balances every site, so both kinds map the same way). EOTK's
settings that have an onionstack equivalent are converted (block lists, intro points and
tor daemons per worker); every other setting is reported on stderr as having no
equivalent. The stack config goes to a NEW stack file (`Pulumi.<stack>.yaml`, or --out; an
existing file is never overwritten) or, with --print-commands, to stdout as `pulumi config
set` lines for a stack that already exists. Private keys go to neither: new keys are
written as tor hidden-service directories under --keys-dir, and the printed
`python -m onion import DIR | pulumi config set --secret …` pipelines read them from there.

This parser is hand-written because EOTK's own is Perl inside EOTK and no library reads
the format; it mirrors EOTK's rules (see the functions' comments) and adds line numbers.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from onion.cli import command_parser
from onion.errors import OnionError
from onion.keys import (HOSTNAME_FILE, SECRET_KEY_FILE, AddressError, IdentityKey, KeyFileError,
                        onion_address, parse_address)

NEW_ONION = "%NEW_V3_ONION%"
RETIRED_NEW_ONIONS = ("%NEW_ONION%", "%NEW_HARD_ONION%", "%NEW_SOFT_ONION%")
MAP_DIRECTIVES = ("hardmap", "softmap")
SITE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")       # infra/config.py's rule
DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DNS_NAME_RE = re.compile(rf"^(?:{DNS_LABEL}\.)+{DNS_LABEL}$")
LABEL_RE = re.compile(rf"^{DNS_LABEL}$")
VAR_RE = re.compile(r"^[A-Za-z_]\w+$")                      # EOTK's SetEnv check
OTHER_EXPANSION_RE = re.compile(r"%([\w+]+)%")

# onionstack's limits (infra/config.py) for the settings that carry over.
INTRO_POINTS_RANGE = (1, 20)
DAEMONS_PER_WORKER_RANGE = (1, 8)
WORKERS_RANGE = (1, 30)

# EOTK's settings (do-configure.pl's defaults and blank list), to tell "no equivalent"
# from "not an EOTK setting at all" (a typo EOTK itself warns about).
EOTK_SETTINGS = frozenset("""
block_err debug_csp_sandbox debug_origin_headers deonionify_post_bodies drop_unrewritable_content
force_https hard_mode left_tld_re nginx_action_abort nginx_block_busy_size nginx_block_count
nginx_block_size nginx_cache_min_uses nginx_cache_seconds nginx_cache_size nginx_hash_bucket_size
nginx_hello_onion nginx_resolver nginx_rlim nginx_syslog nginx_template nginx_timeout
nginx_tmpfile_size nginx_workers onion_version preserve_before preserve_after preserve_preamble_re
project projects_home softmap_nginx_workers softmap_tor_workers ssl_cert_each_onion ssl_mkcert
ssl_tool suppress_header_csp suppress_header_hpkp suppress_header_hsts suppress_methods_except_get
suppress_tor2web template_tool tor_single_onion tor_syslog tor_template tor_worker_prefix
x_from_onion_value block_host block_host_re block_location block_location_re block_origin
block_origin_re block_param block_param_re block_path block_path_re block_referer block_referer_re
block_user_agent block_user_agent_re cookie_lock debug_trap extra_processing_csv
extra_subs_filter_types foreignmap_csv hardcoded_endpoint_csv host_blacklist host_blacklist_re
host_whitelist host_whitelist_re inject_headers_upstream inject_origin inject_referer
kludge_disable_sri log_separate nginx_modules_dirs no_cache_content_type no_cache_host
origin_blacklist origin_blacklist_re origin_whitelist origin_whitelist_re param_blacklist
param_blacklist_re param_whitelist param_whitelist_re path_blacklist path_blacklist_re
path_whitelist path_whitelist_re preserve_csv redirect_fixed_host redirect_fixed_path
redirect_host redirect_path referer_blacklist referer_blacklist_re referer_whitelist
referer_whitelist_re ssl_proof_csv tor_intros_per_daemon user_agent_blacklist
user_agent_blacklist_re user_agent_whitelist user_agent_whitelist_re cert_common_name ssl_dir
log_dir project_dir
""".split())

# Onionspray's settings beyond EOTK's (its tconf templates and the Tor Project's
# onionspray-role): per-daemon DoS controls, circuit ids, TLS trust, proxy extras.
ONIONSPRAY_SETTINGS = frozenset("""
tor_pow_enabled tor_pow_queue_rate tor_pow_queue_burst tor_intro_dos_defense
tor_intro_dos_rate_per_sec tor_intro_dos_burst_per_sec tor_max_streams
tor_max_streams_close_circuit tor_export_circuit_id nginx_x_onion_circuit_id
nginx_proxy_ssl_trusted_certificate
""".split())

# Settings this importer converts (the rest of EOTK_SETTINGS has no equivalent).
CONVERTED = frozenset({"project", "tor_intros_per_daemon", "softmap_tor_workers", "block_host",
                       "block_host_re", "block_path", "block_path_re", "block_location",
                       "block_location_re", "force_https", "ssl_proof_csv", "ssl_dir", "ssl_mkcert",
                       "ssl_cert_each_onion",
                       "tor_pow_enabled", "tor_pow_queue_rate", "tor_pow_queue_burst", "tor_intro_dos_defense",
                       "tor_intro_dos_rate_per_sec", "tor_intro_dos_burst_per_sec", "tor_max_streams",
                       "tor_max_streams_close_circuit"})

# Settings refused with the reason (they cannot be honoured as the operator meant them).
REFUSED = {
    "tor_single_onion": "single-onion services (HiddenServiceNonAnonymousMode) make each worker's network "
                        "location learnable; onionstack's instances stay ordinary anonymous onion services",
    "nginx_x_onion_circuit_id": "sending a reader's circuit id to the origin would let it link that reader's "
                                "requests; onionstack sends nothing upstream that tells readers apart",
    "x_from_onion_value": "onionstack adds no request header upstream (X-From-Onion marks onion readers to "
                          "the origin); tell onion traffic apart by the workers' addresses instead",
    "inject_headers_upstream": "onionstack adds no request headers upstream",
    "cert_common_name": "each site's certificate names its own onion and *.onion (no shared umbrella certificate)",
    "hardcoded_endpoint_csv": "fixed answers on regular-expression paths are not supported; validationPaths "
                              "take exact paths (EOTK's ssl_proof_csv is converted)",
    "nginx_hello_onion": "onionstack serves no /hello-onion/ page; a self-signed certificate is accepted on any page",
    "foreignmap_csv": "write foreignmap lines instead (they become every site's foreignOnions)",
    "log_separate": "onionstack keeps no access log by default",
    "nginx_resolver": "workers resolve origins through the VPC resolver only (public resolvers are refused)",
    "nginx_proxy_ssl_trusted_certificate": "origins are always verified against the system CA bundle",
}
# tor_export_circuit_id: onionstack always exports "haproxy" (nginx's per-circuit rate limit).
DEFAULT_EXPORT_CIRCUIT_ID = "haproxy"

# Onionspray name -> onionstack sites[].dos key, (lo, hi) for numbers or None for 0/1 flags.
DOS_SETTINGS = {
    "tor_pow_enabled": ("pow", None),
    "tor_pow_queue_rate": ("powQueueRate", (0, 2**31 - 1)),
    "tor_pow_queue_burst": ("powQueueBurst", (1, 2**31 - 1)),
    "tor_intro_dos_defense": ("introDefense", None),
    "tor_intro_dos_rate_per_sec": ("introRate", (1, 2**31 - 1)),
    "tor_intro_dos_burst_per_sec": ("introBurst", (1, 2**31 - 1)),
    "tor_max_streams": ("maxStreams", (0, 65535)),
    "tor_max_streams_close_circuit": ("maxStreamsCloseCircuit", None),
}
# infra/config.py's rules for validationPaths (onion/ cannot import infra/).
VALIDATION_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/+-]{0,254}$")
VALIDATION_CONTENT_RE = re.compile(r"^[\x20-\x7e\n]{1,4096}$")
ONION_TRUNCATE = 20   # EOTK's TruncateOnion: certificate files are <first 20 chars>-v3.cert / .pem


class TconfError(OnionError):
    """The .tconf file is malformed or asks for something that cannot be converted."""


@dataclass(frozen=True)
class Line:
    number: int          # first physical line of a joined line
    words: tuple[str, ...]


@dataclass(frozen=True)
class Mapping:
    kind: str                     # hardmap | softmap
    onion: str | None             # 56-char address, None for %NEW_V3_ONION%
    domain: str
    subdomains: tuple[str, ...]
    project: str
    line: int


@dataclass(frozen=True)
class Setting:
    name: str
    value: str
    line: int


@dataclass
class Tconf:
    source: str
    settings: dict[str, Setting] = field(default_factory=dict)
    mappings: list[Mapping] = field(default_factory=list)
    foreign: list[Mapping] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---- reading ------------------------------------------------------------------------------

def logical_lines(text: str, source: str) -> list[Line]:
    """EOTK's JoinLines then comment filter: a line ending in an odd number of backslashes
    continues on the next (joined with one space, surrounding blanks trimmed); an even
    number is literal. Comments are whole lines starting with `#` (after blanks), and
    they are dropped *after* joining, as EOTK does. A `#` later in a line is data."""
    # Linear in the text: the trailing backslashes are counted, not matched (a regex
    # `(\\+)$` retried a long backslash run from every position: quadratic), and a line
    # that continues over many physical lines grows as a list of pieces (re-joining the
    # string at each continuation copied it again and again).
    joined: list[tuple[int, list[str]]] = []
    pending = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if pending:
            pieces = joined[-1][1]
            while len(pieces) > 1 and not pieces[-1].rstrip():
                pieces.pop()              # what prev.rstrip() removed: whitespace-only tails
            pieces[-1] = pieces[-1].rstrip()
            line = line.lstrip()
            pieces += (" ", line)
            tail = line
        else:
            joined.append((number, [line]))
            tail = line
        trailing = len(tail) - len(tail.rstrip("\\"))
        pending = trailing % 2 == 1
        if pending:
            pieces = joined[-1][1]
            pieces[-1] = pieces[-1][:-1]
    if pending:
        raise TconfError(f"{source}:{joined[-1][0]}: the last line ends in a backslash (a line "
                         "continuation with nothing to continue); remove it")
    joined_lines = [(number, "".join(pieces)) for number, pieces in joined]
    out = []
    for number, line in joined_lines:
        if re.match(r"^\s*(#.*)?$", line):
            continue
        out.append(Line(number, tuple(line.split())))
    return out


def parse(text: str, source: str = "<tconf>") -> Tconf:
    conf = Tconf(source)
    project = "default"              # EOTK's default project name
    project_kind: dict[str, str] = {}
    for line in logical_lines(text, source):
        where = f"{source}:{line.number}"
        cmd, args = line.words[0], list(line.words[1:])
        for word in args:
            m = OTHER_EXPANSION_RE.search(word)
            if m and word != NEW_ONION:
                if word in RETIRED_NEW_ONIONS:
                    raise TconfError(f"{where}: {word} is retired EOTK syntax (v2 onions); use {NEW_ONION}")
                raise TconfError(f"{where}: %{m.group(1)}% expands an environment variable at EOTK "
                                 f"configure time; write its value into the file instead")
        if cmd == "set":
            if not args:
                raise TconfError(f"{where}: 'set' needs a variable name: set VARIABLE VALUE…")
            name = args[0]
            if not VAR_RE.match(name):
                raise TconfError(f"{where}: {name!r} is not a variable name (letters, digits, _)")
            name = name.lower()
            value = " ".join(args[1:])
            if name in conf.settings and name != "project":
                conf.warnings.append(f"{where}: set {name} overrides line {conf.settings[name].line}")
            conf.settings[name] = Setting(name, value, line.number)
            if name == "project":
                if not value:
                    raise TconfError(f"{where}: 'set project' needs a project name")
                project = value
        elif cmd in MAP_DIRECTIVES:
            mapping = _parse_map(cmd, args, project, line.number, where)
            # EOTK: a project is all-hardmap or all-softmap.
            kind = project_kind.setdefault(project, cmd)
            if kind != cmd:
                raise TconfError(f"{where}: {cmd} in project {project!r}, which already has "
                                 f"{kind} lines; EOTK keeps one kind per project (set project NAME first)")
            conf.mappings.append(mapping)
        elif cmd == "foreignmap":
            if len(args) != 2:
                raise TconfError(f"{where}: foreignmap takes ONION DOMAIN, got {len(args)} words")
            onion = _onion(args[0], where, allow_new=False)
            conf.foreign.append(Mapping("foreignmap", onion, _domain(args[1], where), (), project, line.number))
        else:
            raise TconfError(f"{where}: unknown directive {cmd!r}; EOTK knows set, hardmap, softmap "
                             "and foreignmap")
    if not conf.mappings:
        raise TconfError(f"{source}: no hardmap or softmap line: nothing to serve "
                         f"(e.g. `hardmap {NEW_ONION} example.com`)")
    _check_unique(conf)
    return conf


def _parse_map(cmd: str, args: list[str], project: str, number: int, where: str) -> Mapping:
    if len(args) < 2:
        raise TconfError(f"{where}: {cmd} needs ONION DOMAIN [SUBDOMAIN…], e.g. "
                         f"`{cmd} {NEW_ONION} example.com www`")
    onion = _onion(args[0], where, allow_new=True, legacy_suffix=(cmd == "hardmap"))
    domain = _domain(args[1], where)
    subs = []
    for sub in args[2:]:
        s = sub.lower()
        if not all(LABEL_RE.match(label) for label in s.split(".")):
            raise TconfError(f"{where}: subdomain {sub!r} of {domain} is not a DNS label (letters, digits, "
                             "inner hyphens)")
        subs.append(s)
    return Mapping(cmd, onion, domain, tuple(subs), project, number)


def _onion(word: str, where: str, *, allow_new: bool, legacy_suffix: bool = False) -> str | None:
    if word == NEW_ONION:
        if not allow_new:
            raise TconfError(f"{where}: {NEW_ONION} makes no sense in a foreignmap (it names another "
                             "site's existing onion)")
        return None
    # EOTK's ExtractOnion: strip a path and `.onion`; hardmap also took `ONION.key` once.
    text = word.rsplit("/", 1)[-1]
    if legacy_suffix:
        text = re.sub(r"\.(key|pem)$", "", text)
    try:
        return onion_address(parse_address(text))
    except AddressError as exc:
        raise TconfError(f"{where}: {exc}") from None


def _domain(word: str, where: str) -> str:
    d = word.lower().rstrip(".")
    if not DNS_NAME_RE.match(d):
        raise TconfError(f"{where}: {word!r} is not a DNS name such as example.com")
    if d.endswith(".onion"):
        raise TconfError(f"{where}: {word!r} is an onion name; the second word is the clearnet domain "
                         "(ONION DOMAIN)")
    return d


def _check_unique(conf: Tconf) -> None:
    by_domain: dict[str, Mapping] = {}
    by_onion: dict[str, Mapping] = {}
    for m in conf.mappings + conf.foreign:
        where = f"{conf.source}:{m.line}"
        if m.domain in by_domain:
            raise TconfError(f"{where}: {m.domain} is already mapped on line {by_domain[m.domain].line}; "
                             "one onion per domain")
        by_domain[m.domain] = m
        if m.onion:
            if m.onion in by_onion:
                raise TconfError(f"{where}: {m.onion}.onion is already used on line {by_onion[m.onion].line}; "
                                 "an onionstack site has one onion address and one domain")
            by_onion[m.onion] = m


# ---- converting ---------------------------------------------------------------------------

def site_name(domain: str, taken: set[str]) -> str:
    """`example.com` -> `example-com`, made to fit infra/config.py's site name rule and unique."""
    base = re.sub(r"[^a-z0-9]+", "-", domain.lower()).strip("-")
    if not base or not base[0].isalpha():
        base = "s-" + base
    base = base[:31].rstrip("-")
    name, n = base, 2
    while name in taken:
        suffix = f"-{n}"
        name = base[: 31 - len(suffix)].rstrip("-") + suffix
        n += 1
    assert SITE_NAME_RE.match(name), name
    taken.add(name)
    return name


def _unescape(value: str) -> str:
    # EOTK values land inside double-quoted nginx strings, where `\\` is one backslash;
    # the demo files write `\\.` for a regex `\.`.
    return value.replace("\\\\", "\\")


def _int_setting(s: Setting, lo: int, hi: int, key: str, source: str) -> int:
    try:
        n = int(s.value)
    except ValueError:
        raise TconfError(f"{source}:{s.line}: set {s.name} {s.value!r} must be a whole number "
                         f"(onionstack's {key} takes {lo}..{hi})") from None
    if not lo <= n <= hi:
        raise TconfError(f"{source}:{s.line}: set {s.name} {n} is out of range: onionstack's {key} takes "
                         f"{lo}..{hi}")
    return n


_UNRENDERABLE = re.compile(r'["\'\s\x00-\x1f\x7f]')
_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")


def _regex_literal(text: str) -> str:
    """`/a.php` -> `/a\\.php`: escape only regex operators, so paths stay readable
    (re.escape would also escape `-`, `~` and more)."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)


_HOST_PREFIX_RE = re.compile(r"^\^\(?([a-z0-9|-]+)\)?\\\.$")


@dataclass
class SiteOut:
    name: str
    mapping: Mapping
    key: IdentityKey | None = None
    key_path: Path | None = None      # what `python -m onion import` reads
    new: bool = False
    block_hosts: list[str] = field(default_factory=list)
    block_paths: list[str] = field(default_factory=list)
    https: dict = field(default_factory=dict)        # https, httpRedirect, certificateChain
    tls_key_path: Path | None = None                 # https: provided: EOTK's <onion>.pem


@dataclass
class Result:
    config: dict
    sites: list[SiteOut]
    notes: list[str]          # settings without equivalent, and other remarks
    commands: list[str]       # shell commands that move the keys into the stack secrets


def convert(conf: Tconf, *, keys_dir: Path | None, secrets_dirs: list[Path], stack: str | None = None,
            workers: int | None = None, write_keys: bool = True, ssl_dirs: list[Path] | None = None) -> Result:
    src = conf.source
    notes = list(conf.warnings)
    taken: set[str] = set()
    sites = [SiteOut(site_name(m.domain, taken), m) for m in conf.mappings]

    # keys first: fail before writing anything when one is missing
    for s in sites:
        if s.mapping.onion is None:
            if keys_dir is None:
                raise TconfError(f"{src}:{s.mapping.line}: {NEW_ONION} needs --keys-dir DIR to keep the new "
                                 f"key (the key is the site's identity: losing it loses the address)")
            continue
        found = find_key(s.mapping.onion, keys_dir, secrets_dirs)
        if found is None:
            looked = [str(d) for d in ([keys_dir] if keys_dir else []) + secrets_dirs]
            raise TconfError(f"{src}:{s.mapping.line}: no key for {s.mapping.onion}.onion in "
                             f"{', '.join(looked) or '(no directory given)'}; pass --secrets-dir (EOTK keeps "
                             f"it as secrets.d/{s.mapping.onion}.v3sec.key) or --keys-dir with its "
                             f"hidden-service directory")
        s.key, s.key_path = found

    _convert_blocks(conf, sites, notes)
    _convert_https(conf, sites, notes, ssl_dirs if ssl_dirs is not None else default_ssl_dirs(conf))
    validation = _convert_ssl_proof(conf, notes)
    foreign = _convert_foreign(conf, sites, notes)
    dos = _convert_dos(conf, notes)

    config: dict = {}
    entries = []
    for s in sites:
        e = {"name": s.name, "domain": s.mapping.domain}
        if s.block_hosts:
            e["blockHosts"] = s.block_hosts
        if s.block_paths:
            e["blockPaths"] = s.block_paths
        e.update(s.https)
        if validation:
            e["validationPaths"] = validation
        if foreign:
            e["foreignOnions"] = foreign
        if dos:
            e["dos"] = dos
        entries.append(e)
    config["onionstack:sites"] = entries
    st = conf.settings
    if "tor_intros_per_daemon" in st and st["tor_intros_per_daemon"].value:
        config["onionstack:introPointsPerDaemon"] = _int_setting(
            st["tor_intros_per_daemon"], *INTRO_POINTS_RANGE, "introPointsPerDaemon", src)
    if "softmap_tor_workers" in st and st["softmap_tor_workers"].value:
        config["onionstack:torDaemonsPerWorker"] = _int_setting(
            st["softmap_tor_workers"], *DAEMONS_PER_WORKER_RANGE, "torDaemonsPerWorker", src)
    if workers is not None:
        config["onionstack:workers"] = workers

    for name, s in sorted(st.items(), key=lambda kv: kv[1].line):
        if name in CONVERTED:
            continue
        if name == "tor_export_circuit_id":
            if s.value.strip().lower() == DEFAULT_EXPORT_CIRCUIT_ID:
                notes.append(f"{src}:{s.line}: set {name} {s.value}: onionstack always exports haproxy circuit "
                             "ids to nginx (its per-circuit rate limit); nothing to set")
            else:
                notes.append(f"{src}:{s.line}: set {name} {s.value}: not supported: onionstack always exports "
                             "haproxy circuit ids to nginx, which rate-limits per circuit with them; ignored")
        elif name in REFUSED:
            notes.append(f"{src}:{s.line}: set {name}: not supported: {REFUSED[name]}; ignored")
        elif name not in EOTK_SETTINGS and name not in ONIONSPRAY_SETTINGS:
            notes.append(f"{src}:{s.line}: set {name}: not an EOTK or Onionspray setting (a typo?); ignored")
        else:
            notes.append(f"{src}:{s.line}: set {name}: no onionstack equivalent; ignored")
    projects = sorted({m.project for m in conf.mappings})
    if len(projects) > 1:
        notes.append(f"EOTK projects {', '.join(projects)} become sites of one stack")
    for s in sites:
        if s.mapping.subdomains:
            notes.append(f"{src}:{s.mapping.line}: subdomains {' '.join(s.mapping.subdomains)} of "
                         f"{s.mapping.domain}: onionstack serves every subdomain of a site's domain; nothing to set")

    # Everything is checked; now make and write keys. A key already in keys_dir/<site>
    # (an earlier run of this import) is reused rather than replaced by a new one.
    for s in sites:
        target = keys_dir / s.name if keys_dir else None
        if s.mapping.onion is None:
            if target is not None and (target / SECRET_KEY_FILE).is_file():
                s.key, s.key_path = IdentityKey.from_hs_dir(target), target
                notes.append(f"{src}:{s.mapping.line}: {NEW_ONION} for {s.mapping.domain}: reusing the key "
                             f"already in {target} ({s.key.hostname}) from an earlier import")
                continue
            s.key, s.new = IdentityKey.generate(), True
        if target is not None and (s.new or s.key_path.resolve() != target.resolve()):
            if write_keys:
                s.key.write_hs_dir(target)
            s.key_path = target

    commands = []
    stack_opt = f" --stack {shlex.quote(stack)}" if stack else ""
    for s in sites:
        commands.append(f"python -m onion import {shlex.quote(str(s.key_path))} | pulumi config set{stack_opt} "
                        f"--secret --path {shlex.quote('masterKeys.' + s.name)}")
    for s in sites:
        if s.tls_key_path is not None:   # the provided certificate's key, through stdin as well
            commands.append(f"pulumi config set{stack_opt} --secret --path {shlex.quote('tlsKeys.' + s.name)} "
                            f"< {shlex.quote(str(s.tls_key_path))}")
    return Result(config={"config": config}, sites=sites, notes=notes, commands=commands)


def _convert_blocks(conf: Tconf, sites: list[SiteOut], notes: list[str]) -> None:
    """EOTK's block_* settings are global (every project); onionstack's are per site.
    block_host/block_path match exactly, the *_re forms are case-insensitive regexes
    (`$http_host ~* "…"`, `$uri ~* "…"` in EOTK's nginx)."""
    src, st = conf.source, conf.settings
    onion_to_site = {s.mapping.onion: s for s in sites if s.mapping.onion}

    def add_host(host: str, s: Setting) -> None:
        host = host.lower().rstrip(".")
        # an onion-side name (sub.<onion>.onion) means the same host of that onion's domain
        if host.endswith(".onion"):
            labels = host[: -len(".onion")].split(".")
            site = onion_to_site.get(labels[-1])
            if site is None:
                notes.append(f"{src}:{s.line}: set {s.name} {host}: not one of this file's onions; ignored")
                return
            host = ".".join(labels[:-1] + [site.mapping.domain])
        owners = [x for x in sites if host == x.mapping.domain or host.endswith("." + x.mapping.domain)]
        if not owners or not DNS_NAME_RE.match(host):
            notes.append(f"{src}:{s.line}: set {s.name} {host}: not under any mapped domain; ignored")
            return
        for x in owners:
            if host not in x.block_hosts:
                x.block_hosts.append(host)

    if "block_host" in st:
        for host in st["block_host"].value.split():
            add_host(host, st["block_host"])
    if "block_host_re" in st:
        s = st["block_host_re"]
        for pattern in s.value.split():
            rx = _unescape(pattern).lower()
            # Only leftmost-label patterns like `^(login|donate)\.` translate to names;
            # blockHosts takes DNS names, not regexes.
            m = _HOST_PREFIX_RE.match(rx)
            if m and all(LABEL_RE.match(p) for p in m.group(1).split("|")):
                for x in sites:
                    for label in m.group(1).split("|"):
                        h = f"{label}.{x.mapping.domain}"
                        if h not in x.block_hosts:
                            x.block_hosts.append(h)
                notes.append(f"{src}:{s.line}: set block_host_re {pattern}: converted to blockHosts "
                             f"{{{m.group(1).replace('|', ',')}}}.<domain> of every site")
            else:
                notes.append(f"{src}:{s.line}: set block_host_re {pattern}: no onionstack equivalent "
                             "(blockHosts takes DNS names, not regexes); ignored")
    # onionstack's blockPaths (nodes/render.py): "/prefix" (nginx `location ^~`) or
    # "^regex" (`location ~`, case-sensitive, PCRE). EOTK's block_path is an exact match
    # (`$uri = "…"`) and block_path_re a case-insensitive search (`$uri ~* "…"`), so both
    # become "^" regexes with the same meaning: `^/exact$` and `^(?i:.*(?:RX))` (a scoped
    # flag, which PCRE and Python's re both read; a leading global `(?i)` would not be
    # "^"-first). Values with quotes or blanks cannot be rendered and are reported.
    paths: list[str] = []
    for exact, regex in (("block_path", "block_path_re"), ("block_location", "block_location_re")):
        if exact in st:
            s = st[exact]
            for p in s.value.split():
                p = _unescape(p)
                if not p.startswith("/") or _UNRENDERABLE.search(p):
                    notes.append(f"{src}:{s.line}: set {exact} {p}: no onionstack equivalent (a blockPaths "
                                 "path starts with / and has no quotes); ignored")
                    continue
                paths.append("^" + _regex_literal(p) + "$")
                notes.append(f"{src}:{s.line}: set {exact} {p}: converted to blockPaths {paths[-1]} (exact path)")
        if regex in st:
            s = st[regex]
            for p in s.value.split():
                rx = _unescape(p)
                try:
                    re.compile(rx)
                except re.error as exc:
                    raise TconfError(f"{src}:{s.line}: set {regex} {p!r} is not a valid regular "
                                     f"expression ({exc})") from None
                if _UNRENDERABLE.search(rx):
                    notes.append(f"{src}:{s.line}: set {regex} {p}: no onionstack equivalent (quotes cannot "
                                 "be rendered into nginx); ignored")
                    continue
                if rx.startswith("^") and "|" not in rx:
                    paths.append(f"^(?i:{rx[1:]})")
                else:
                    paths.append(f"^(?i:.*(?:{rx}))")
                notes.append(f"{src}:{s.line}: set {regex} {p}: converted to blockPaths {paths[-1]} "
                             "(case-insensitive search, as EOTK's ~*)")
    for n in ("block_location", "block_location_re"):
        if n in st:
            notes.append(f"{src}:{st[n].line}: set {n} is deprecated in EOTK; treated like "
                         f"{n.replace('location', 'path')}")
    for x in sites:
        x.block_paths = list(dict.fromkeys(paths))


# ---- HTTPS, validation paths, foreign onions, DoS controls --------------------------------------

def default_ssl_dirs(conf: Tconf) -> list[Path]:
    """Where EOTK keeps each project's certificates: `set ssl_dir DIR`, else
    projects.d/<project>.d/ssl.d beside the configuration (do-configure.pl's defaults)."""
    st = conf.settings
    if "ssl_dir" in st and st["ssl_dir"].value and "$" not in st["ssl_dir"].value:
        return [Path(st["ssl_dir"].value)]
    here = Path(conf.source).parent
    return [here / "projects.d" / f"{project}.d" / "ssl.d" for project in sorted({m.project for m in conf.mappings})]


@dataclass(frozen=True)
class FoundCertificate:
    cert: Path
    key: Path | None
    chain: str
    ca_issued: bool          # neither self-signed nor from a local mkcert CA
    names_onion: bool
    expired: bool


def find_certificate(onion: str, project: str, ssl_dirs: list[Path], mkcert: bool) -> FoundCertificate | None:
    """EOTK's certificate for `onion`: <ssl_dir>/<first 20 chars>-v3.cert with its key in
    .pem (ssl_cert_each_onion, the default), else the project's umbrella <project>.cert."""
    import datetime

    from cryptography import x509

    for d in ssl_dirs:
        for stem in (f"{onion[:ONION_TRUNCATE]}-v3", project):
            cert = d / f"{stem}.cert"
            if not cert.is_file():
                continue
            text = cert.read_text(errors="replace")
            try:
                certs = x509.load_pem_x509_certificates(text.encode())
            except ValueError:
                continue
            leaf = certs[0]
            try:
                names = leaf.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            except x509.ExtensionNotFound:
                names = []
            issuer = leaf.issuer.rfc4514_string()
            local = leaf.issuer == leaf.subject or mkcert or "mkcert" in issuer
            key = d / f"{stem}.pem"
            now = datetime.datetime.now(datetime.timezone.utc)
            return FoundCertificate(cert, key if key.is_file() else None, text.strip() + "\n", not local,
                                    f"{onion}.onion" in [n.lower() for n in names], leaf.not_valid_after_utc <= now)
    return None


def _flag(s: Setting, src: str) -> bool:
    value = s.value.strip().lower()
    if value not in ("0", "1", "true", "false", "on", "off"):
        raise TconfError(f"{src}:{s.line}: set {s.name} {s.value!r} must be 0 or 1")
    return value in ("1", "true", "on")


def _convert_https(conf: Tconf, sites: list[SiteOut], notes: list[str], ssl_dirs: list[Path]) -> None:
    """EOTK serves every onion over HTTPS as well (its own certificates), and with force_https
    (on by default) answers port 80 with a redirect: every site gets https, httpRedirect
    false where force_https is 0. A CA-issued certificate EOTK has for the onion (e.g. a DV
    certificate for the .onion) is carried over as https: provided with its key as a
    tlsKeys secret; self-signed and mkcert ones are not (the stack makes its own)."""
    src, st = conf.source, conf.settings
    redirect = _flag(st["force_https"], src) if "force_https" in st else True
    mkcert = _flag(st["ssl_mkcert"], src) if "ssl_mkcert" in st else False
    where = f"{src}:{st['force_https'].line}: set force_https {st['force_https'].value}" if "force_https" in st \
        else f"{src}: force_https (EOTK's default, 1)"
    notes.append(f"{where}: every site serves HTTPS (https: selfSigned unless a CA-issued certificate is found) "
                 + ("and port 80 redirects to it" if redirect else "and keeps serving plain HTTP (httpRedirect: false)"))
    if mkcert:
        notes.append(f"{src}:{st['ssl_mkcert'].line}: set ssl_mkcert: mkcert's certificates come from a local "
                     "development CA only its own machines trust; the stack makes self-signed ones instead")
    if "ssl_cert_each_onion" in st:
        notes.append(f"{src}:{st['ssl_cert_each_onion'].line}: set ssl_cert_each_onion: onionstack always has one "
                     "certificate per onion (the onion and *.onion)")
    for s in sites:
        s.https = {"https": "selfSigned"}
        if not redirect:
            s.https["httpRedirect"] = False
        if s.mapping.onion is None:
            continue
        found = find_certificate(s.mapping.onion, s.mapping.project, ssl_dirs, mkcert)
        if found is None:
            continue
        why = None
        if not found.ca_issued:
            why = "self-signed or from a local CA: the stack makes a new self-signed one"
        elif not found.names_onion:
            why = f"it does not name {s.mapping.onion}.onion"
        elif found.expired:
            why = "it has expired"
        elif found.key is None:
            why = f"its key {found.cert.with_suffix('.pem').name} is not beside it"
        if why:
            notes.append(f"{src}:{s.mapping.line}: certificate {found.cert} for {s.mapping.domain}: not carried over "
                         f"({why}); https: selfSigned")
            continue
        s.https = {"https": "provided", **({"httpRedirect": False} if not redirect else {}),
                   "certificateChain": found.chain}
        s.tls_key_path = found.key
        notes.append(f"{src}:{s.mapping.line}: certificate {found.cert} for {s.mapping.domain}: carried over "
                     f"(https: provided; its key {found.key} becomes the tlsKeys.{s.name} secret)")


def _convert_ssl_proof(conf: Tconf, notes: list[str]) -> list[dict]:
    """ssl_proof_csv `PATH,VALUE ...` -> validationPaths [{path, content}] (every site, as
    EOTK serves them on every onion, on port 80 and 443)."""
    src, st = conf.source, conf.settings
    if "ssl_proof_csv" not in st:
        return []
    s = st["ssl_proof_csv"]
    out: list[dict] = []
    for item in s.value.split():
        path, sep, content = item.partition(",")
        if not sep or not VALIDATION_PATH_RE.match(path) or ".." in path.split("/") or \
                not VALIDATION_CONTENT_RE.match(content) or re.search(r'["\\$]', content):
            notes.append(f"{src}:{s.line}: set ssl_proof_csv {item}: not supported (validationPaths take "
                         "/path,content with a URL path and printable text without quotes, backslashes or '$'); "
                         "ignored")
            continue
        if path in [v["path"] for v in out]:
            raise TconfError(f"{src}:{s.line}: set ssl_proof_csv lists {path} twice")
        out.append({"path": path, "content": content})
    if out:
        notes.append(f"{src}:{s.line}: set ssl_proof_csv: converted to validationPaths of every site "
                     f"({', '.join(v['path'] for v in out)}; answered on port 80 even when it redirects)")
    return out


def _convert_foreign(conf: Tconf, sites: list[SiteOut], notes: list[str]) -> dict[str, str]:
    """foreignmap lines -> foreignOnions of every site (EOTK's apply to every project)."""
    src = conf.source
    out: dict[str, str] = {}
    for f in conf.foreign:
        clash = [s for s in sites if f.domain.endswith("." + s.mapping.domain) or s.mapping.domain.endswith("." + f.domain)]
        if clash:
            notes.append(f"{src}:{f.line}: foreignmap {f.onion}.onion {f.domain}: not supported: site "
                         f"{clash[0].name} serves {clash[0].mapping.domain}, which overlaps it; ignored")
            continue
        nested = [d for d in out if f.domain.endswith("." + d) or d.endswith("." + f.domain)]
        if nested:
            notes.append(f"{src}:{f.line}: foreignmap {f.onion}.onion {f.domain}: not supported: it overlaps the "
                         f"foreignmap of {nested[0]} (onionstack maps a domain with its subdomains); ignored")
            continue
        out[f.domain] = f"{f.onion}.onion"
        notes.append(f"{src}:{f.line}: foreignmap {f.onion}.onion {f.domain}: converted to foreignOnions of every "
                     "site (links to it and its subdomains are rewritten to that onion)")
    return out


# tor's defaults, which Onionspray's torrc leaves in force for a setting it does not write.
TOR_DOS_DEFAULTS = {"powQueueRate": 250, "powQueueBurst": 2500, "introRate": 25, "introBurst": 200}


def _convert_dos(conf: Tconf, notes: list[str]) -> dict:
    """Onionspray's per-daemon tor DoS settings -> every site's dos (onionstack's workers
    run every site's instance service in every tor daemon)."""
    src, st = conf.source, conf.settings
    out: dict = {}
    for name, (key, bounds) in DOS_SETTINGS.items():
        if name not in st or not st[name].value:
            continue
        s = st[name]
        out[key] = _flag(s, src) if bounds is None else _int_setting(s, *bounds, f"sites[].dos.{key}", src)
        notes.append(f"{src}:{s.line}: set {name} {s.value}: converted to dos.{key} of every site")
    for rate, burst in (("powQueueRate", "powQueueBurst"), ("introRate", "introBurst")):
        if rate in out or burst in out:
            r, b = out.get(rate, TOR_DOS_DEFAULTS[rate]), out.get(burst, TOR_DOS_DEFAULTS[burst])
            if r > b:
                raise TconfError(f"{src}: dos.{rate} {r} is above dos.{burst} {b} (tor's default where unset): "
                                 "tor refuses that; set both")
            out[rate], out[burst] = r, b
    return out


def find_key(onion: str, keys_dir: Path | None, secrets_dirs: list[Path]) -> tuple[IdentityKey, Path] | None:
    """The key of `onion` in EOTK's secrets.d (`<onion>.v3sec.key`) or a tor
    hidden-service directory (`<dir>/<onion>/`, or any `<dir>/*/` whose hostname says so)."""
    candidates: list[Path] = []
    for d in ([keys_dir] if keys_dir else []) + secrets_dirs:
        if not d.is_dir():
            continue
        candidates += [d / f"{onion}.v3sec.key", d / onion, d / f"{onion}.onion"]
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            host = sub / HOSTNAME_FILE
            if host.is_file() and host.read_text(errors="replace").strip() == f"{onion}.onion":
                candidates.append(sub)
    for c in candidates:
        if c.is_file() or (c.is_dir() and (c / SECRET_KEY_FILE).is_file()):
            key = IdentityKey.from_file(c)
            if key.address != onion:
                raise KeyFileError(f"{c} holds the key of {key.hostname}, not {onion}.onion")
            return key, c
    return None


def count_workers(path: Path) -> int:
    """EOTK's eotk-workers.conf: one worker hostname per line."""
    hosts = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if not WORKERS_RANGE[0] <= len(hosts) <= WORKERS_RANGE[1]:
        raise TconfError(f"{path}: {len(hosts)} workers; onionstack's workers takes "
                         f"{WORKERS_RANGE[0]}..{WORKERS_RANGE[1]}")
    return len(hosts)


def render_yaml(result: Result, source: str, stack: str | None) -> str:
    head = [f"# onionstack stack config for Pulumi.{stack or '<stack>'}.yaml, imported from EOTK {source}",
            "# by `python -m onion import-tconf`. The master keys are NOT here: run the commands",
            "# printed on stderr. Still to set: adminCidrs (the stack makes its own SSH key).",
            "# Sites and their onion addresses:"]
    for s in result.sites:
        head.append(f"#   {s.name}: {s.mapping.domain} -> {s.key.hostname}{' (new key)' if s.new else ''}")
    return "\n".join(head) + "\n" + yaml.safe_dump(result.config, sort_keys=False, default_flow_style=False)


# ---- command --------------------------------------------------------------------------------

STACK_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")   # Pulumi's stack name characters


def _key_variable(site: str) -> str:
    """The shell variable that holds one site's master key in the printed script (site
    names are `[a-z][a-z0-9-]*`, so `-` -> `_` keeps them apart and valid)."""
    return "master_key_" + site.replace("-", "_")


def render_commands(result: Result, source: str, stack: str | None) -> str:
    """The same config as `pulumi config set` lines (one per key, each replacing that key's
    whole value; a JSON value is what the stack's config parser reads for lists), and the
    lines that store the secrets, as a `sh` script. Nothing secret is on any line.

    Every secret is read BEFORE anything is set, and `set -eu` stops the script at the first
    failure: a key that cannot be read (a wrong path, a damaged key file) leaves the stack as
    it was. A plain `onion import DIR | pulumi config set --secret ...` pipeline would not:
    the shell runs both sides, and a failed import hands `pulumi config set` an empty stdin,
    which it stores as the key (pipefail would only report it afterwards). A master key is
    held in a shell variable (not exported) and written to the pipe by `printf`, a shell
    builtin, so it is on no command line; the TLS keys go from their files by redirection."""
    stack_opt = f" --stack {shlex.quote(stack)}" if stack else ""
    head = [f"# onionstack stack config imported from EOTK {source} by `onion import-tconf`.",
            f"# Review, then run it with `sh FILE`: each `pulumi config set` replaces that key's whole",
            f"# value in stack {stack or '(the selected stack)'}. Every secret is read first: if one cannot",
            "# be read, the script stops before it changes anything.",
            "# Still to set: adminCidrs (the stack makes its own SSH key).",
            "# Sites and their onion addresses:"]
    for s in result.sites:
        head.append(f"#   {s.name}: {s.mapping.domain} -> {s.key.hostname}{' (new key)' if s.new else ''}")
    reads = ["set -eu"]
    for s in result.sites:
        reads.append(f"{_key_variable(s.name)}=$(python -m onion import {shlex.quote(str(s.key_path))})")
    for s in result.sites:
        if s.tls_key_path is not None:
            path = shlex.quote(str(s.tls_key_path))
            reads.append(f"test -r {path} || {{ echo {shlex.quote(f'cannot read {s.tls_key_path}')} >&2; exit 1; }}")
    lines = []
    for key, value in result.config["config"].items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
        lines.append(f"pulumi config set{stack_opt} {shlex.quote(key)} {shlex.quote(str(text))}")
    for s in result.sites:
        lines.append(f"printf '%s\\n' \"${_key_variable(s.name)}\" | pulumi config set{stack_opt} "
                     f"--secret --path {shlex.quote('masterKeys.' + s.name)}")
    for s in result.sites:
        if s.tls_key_path is not None:   # the provided certificate's key, through stdin as well
            lines.append(f"pulumi config set{stack_opt} --secret --path {shlex.quote('tlsKeys.' + s.name)} "
                         f"< {shlex.quote(str(s.tls_key_path))}")
    return "\n".join(head + reads + lines) + "\n"


def stack_file_target(args) -> Path | None:
    """Where the stack file goes: --out, else Pulumi.<stack>.yaml here; None with --print-commands."""
    if args.print_commands:
        return None
    if args.out is not None:
        return args.out
    if not args.stack:
        raise TconfError("name the output: --stack NAME writes a new Pulumi.NAME.yaml here, --out FILE "
                         "writes a new FILE, or --print-commands prints `pulumi config set` lines for a "
                         "stack that already exists")
    # `org/project/stack` is a fully qualified stack name; its file is Pulumi.<stack>.yaml.
    name = args.stack.rsplit("/", 1)[-1]
    if not STACK_NAME_RE.match(name):
        raise TconfError(f"--stack {args.stack!r}: a stack name has letters, digits, '-', '_' and '.' only")
    return Path(f"Pulumi.{name}.yaml")


def refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise TconfError(f"{target} already exists: refusing to overwrite it (a stack file holds that "
                         "stack's config and its secrets); choose another --stack or --out, or use "
                         "--print-commands for `pulumi config set` lines to apply to the existing stack")
    if not target.parent.is_dir():
        raise TconfError(f"--out {target}: directory {target.parent} does not exist; create it first")


def add_commands(subparsers) -> None:
    p = command_parser(
        subparsers, "import-tconf", help="convert an EOTK .tconf site configuration to onionstack stack config",
        description="Convert an EOTK site configuration (.tconf) to onionstack stack config: one site per "
                    "hardmap/softmap line, with its key. It writes a new stack file "
                    "(Pulumi.<stack>.yaml, or --out) and never overwrites one that exists; "
                    "--print-commands prints `pulumi config set` lines for an existing stack instead. "
                    "New keys go to --keys-dir; what EOTK sets that onionstack has no equivalent for is "
                    "listed on stderr.",
        examples="""\
onion import-tconf site.tconf --keys-dir keys --stack eotk        # writes Pulumi.eotk.yaml (new)
onion import-tconf site.tconf --keys-dir keys --out stacks/Pulumi.eotk.yaml
onion import-tconf site.tconf --keys-dir keys --stack prod --print-commands > import.sh   # existing stack""")
    p.add_argument("file", type=Path, help="EOTK configuration (.tconf or .conf)")
    p.add_argument("--keys-dir", type=Path,
                   help="where keys go: one tor hidden-service directory per site (created 0700, keys 0600); "
                        "also searched for existing onions' keys")
    p.add_argument("--secrets-dir", type=Path, action="append", default=None,
                   help="EOTK secrets.d holding <onion>.v3sec.key files (default: secrets.d beside FILE); "
                        "may repeat")
    p.add_argument("--ssl-dir", type=Path, action="append", default=None,
                   help="where EOTK keeps certificates (<onion prefix>-v3.cert + .pem); a CA-issued one for an "
                        "onion becomes https: provided (default: set ssl_dir, else projects.d/<project>.d/ssl.d "
                        "beside FILE); may repeat")
    p.add_argument("--workers-file", type=Path,
                   help="EOTK's eotk-workers.conf, to carry over the number of workers "
                        "(default: eotk-workers.conf beside FILE when present)")
    p.add_argument("--stack", help="stack name: names the new stack file (Pulumi.STACK.yaml) and goes into "
                                   "the printed pulumi commands")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--out", type=Path, metavar="FILE",
                        help="the new stack file to write (default: Pulumi.STACK.yaml in the current "
                             "directory); refused if it exists")
    output.add_argument("--print-commands", action="store_true",
                        help="write no file: print `pulumi config set` lines and the key pipelines on "
                             "stdout, for a stack that already exists")
    p.set_defaults(func=run)


def run(args, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    path: Path = args.file
    # Before anything is written (keys included): where the config goes, and that it is new.
    target = stack_file_target(args)
    if target is not None:
        refuse_existing(target)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TconfError(f"{path}: not UTF-8 text ({exc})") from None
    conf = parse(text, str(path))
    secrets = args.secrets_dir if args.secrets_dir is not None else [path.parent / "secrets.d"]
    workers_file = args.workers_file or (path.parent / "eotk-workers.conf")
    workers = count_workers(workers_file) if (args.workers_file or workers_file.is_file()) else None
    keys_dir = args.keys_dir
    if keys_dir is not None:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = convert(conf, keys_dir=keys_dir, secrets_dirs=secrets, stack=args.stack, workers=workers,
                     ssl_dirs=args.ssl_dir)
    if target is None:
        out.write(render_commands(result, str(path), args.stack))
    else:
        # "x": created here or not at all, even if a file appeared since the check above.
        with open(target, "x", encoding="utf-8") as f:
            f.write(render_yaml(result, str(path), args.stack))
    for s in result.sites:
        how = f"new key written to {s.key_path}" if s.new else f"key from {s.key_path}"
        print(f"site {s.name}: {s.mapping.domain} -> {s.key.hostname} ({how})", file=err)
    if workers is not None:
        print(f"workers: {workers} (from {workers_file})", file=err)
    for n in result.notes:
        print(f"note: {n}", file=err)
    if target is None:
        print("The commands above set the stack config and store the master keys as stack secrets "
              "(each key is read from its directory; none appears on a command line).", file=err)
        return 0
    print(f"wrote {target} (a new stack file)", file=err)
    print("Store the master keys (and provided certificates' keys) as stack secrets (each is read from "
          "its file; none appears on a command line):", file=err)
    for c in result.commands:
        print(f"  {c}", file=err)
    return 0
