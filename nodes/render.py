"""Render every file that lands on a machine from the jinja2 templates in `nodes/templates/`.

Plain jinja2 (no pulumi import) so that the Pulumi program, the local lab and the tests all
render exactly the same bytes. Inputs are small frozen dataclasses validated on
construction; each `render_*` function returns `{relative_path: RenderedFile}` where the
path is relative to `Layout.root` (``"/"`` on a real machine, a scratch directory in the
lab), so `os.path.join(root, path)` is where the file belongs.

Secrets never pass through here: the balancer's master keys and the database password
travel in the remote step's secret stdin payload (nodes/payload.py) and are installed by
the role's `apply.sh`; this module only names where they go (`render_balancer` lists the
key files with empty content).
"""
from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

# Same rule as infra/config.py's site names: used in file, unit and nginx names.
SITE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# A DNS name as nginx and tor will see it: lowercase labels, at least two of them.
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")
# v3 onion address: 56 base32 chars, the last one encodes version 3 ('d'). tor checks the
# checksum itself when it reads ob_config (`tor --verify-config`).
ONION_RE = re.compile(r"^[a-z2-7]{55}d$")
# Paths and names end up inside torrc/nginx/systemd/shell files unquoted: allow only
# characters that need no quoting in any of them.
SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/@+-]+$")
SAFE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
BLOCK_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%+-]*$")
NGINX_RATE_RE = re.compile(r"^[1-9][0-9]{0,5}r/[sm]$")
# Unix socket paths are limited to 108 bytes including the NUL (sun_path).
MAX_UNIX_SOCKET_PATH = 107


class RenderError(ValueError):
    """A spec field has a value the templates cannot render; the message names the field."""


def _fail(field_name: str, value: object, fix: str) -> None:
    raise RenderError(f"{field_name}: {value!r} is invalid: {fix}")


@dataclass(frozen=True)
class RenderedFile:
    """One file's bytes and how it lands: `mode` (octal int) and `owner` (user name)."""

    content: str
    mode: int = 0o644
    owner: str = "root"


@dataclass(frozen=True)
class Layout:
    """Where things live on a machine. Relative dirs are joined to `root`; absolute ones
    are used as they are (the lab puts sockets in a short absolute dir: sun_path is 108
    bytes). Only files under `root` can be rendered, so etc/lib dirs must be relative."""

    root: str = "/"
    etc_dir: str = "etc/onionstack"
    lib_dir: str = "var/lib/onionstack"
    run_dir: str = "run/onionstack"
    log_dir: str = "var/log/onionstack"
    systemd_dir: str = "etc/systemd/system"
    tmpfiles_dir: str = "etc/tmpfiles.d"
    script_dir: str = "usr/local/lib/onionstack"

    def __post_init__(self) -> None:
        if not self.root.startswith("/") or not SAFE_PATH_RE.match(self.root):
            _fail("layout.root", self.root, "use an absolute path of [A-Za-z0-9._/@+-] characters")
        for name in ("etc_dir", "lib_dir", "run_dir", "log_dir", "systemd_dir", "tmpfiles_dir", "script_dir"):
            value = getattr(self, name)
            if not SAFE_PATH_RE.match(value) or ".." in value.split("/"):
                _fail(f"layout.{name}", value, "use a path of [A-Za-z0-9._/@+-] characters without '..'")

    def path(self, name: str, *parts: str) -> str:
        """Absolute path of `parts` inside the layout directory `name` (e.g. "etc_dir")."""
        return posixpath.normpath(posixpath.join(self.root, getattr(self, name), *parts))

    def key(self, absolute: str) -> str:
        """The render key (path relative to root) of an absolute path under root."""
        rel = posixpath.relpath(absolute, self.root)
        if rel.startswith(".."):
            raise RenderError(f"layout: {absolute!r} is outside layout.root {self.root!r}: "
                              "make that directory relative so the file lands under root")
        return rel


# A validation path (a CA's file on the onion, EOTK's ssl_proof_csv): an absolute URL path.
VALIDATION_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/+-]{0,254}$")
# Its fixed body: printable ASCII and newlines, without what nginx would interpret inside
# a double-quoted `return` text (quotes, backslashes, `$` variables).
VALIDATION_CONTENT_RE = re.compile(r'^[\x20-\x7e\n]{1,4096}$')
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ValidationPath:
    """A URL path served as it is on port 80 even when HTTPS is forced (a certificate
    authority proving control of the onion fetches it over plain HTTP).

    With `content` (EOTK's ssl_proof_csv): exactly `path` answers 200 text/plain with that
    body, from the worker itself. Without: every path under the `path` prefix is passed to
    the origin (e.g. "/.well-known/acme-challenge/" for a token the origin serves)."""

    path: str
    content: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not VALIDATION_PATH_RE.match(self.path) or \
                ".." in self.path.split("/"):
            _fail("validation_paths[].path", self.path,
                  "use an absolute URL path of A-Za-z0-9._~/+- characters, e.g. "
                  "'/.well-known/pki-validation/FILE.txt'")
        if self.content is not None:
            if not isinstance(self.content, str) or not VALIDATION_CONTENT_RE.match(self.content) or \
                    re.search(r'["\\$]', self.content):
                _fail(f"validation_paths[{self.path}].content", self.content,
                      "use 1..4096 printable ASCII characters (newlines allowed) without quotes, "
                      "backslashes or '$'")


@dataclass(frozen=True)
class SiteDos:
    """tor's onion-service DoS controls for one site, on every worker tor daemon.

    `pow`: HiddenServicePoWDefensesEnabled with its queue (`pow_queue_rate` rendezvous
    requests handled per second, `pow_queue_burst`; 0 rate = no limit). The frontend's
    descriptor never carries `pow-params`, so readers of the frontend send no solutions:
    every request waits in the queue with effort 0 (load shedding, not prioritisation).
    `intro_defense`: HiddenServiceEnableIntroDoSDefense, the introduction points' own
    INTRODUCE2 rate limit (`intro_rate` per second, `intro_burst`).
    `max_streams`: HiddenServiceMaxStreams per rendezvous circuit (0 = unlimited), the
    circuit closed when exceeded if `max_streams_close_circuit`."""

    pow: bool = False
    pow_queue_rate: int = 250
    pow_queue_burst: int = 2500
    intro_defense: bool = True
    intro_rate: int = 25
    intro_burst: int = 200
    max_streams: int = 32
    max_streams_close_circuit: bool = True

    def __post_init__(self) -> None:
        for name in ("pow", "intro_defense", "max_streams_close_circuit"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"dos.{name}", getattr(self, name), "use true or false")
        for name, lo in (("pow_queue_rate", 0), ("pow_queue_burst", 1), ("intro_rate", 1),
                         ("intro_burst", 1), ("max_streams", 0)):
            value = getattr(self, name)
            hi = 65535 if name == "max_streams" else INT32_MAX
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                _fail(f"dos.{name}", value, f"use an integer {lo}..{hi}")
        # tor refuses a rate above the burst for the introduction points' token bucket.
        if self.intro_rate > self.intro_burst:
            _fail("dos.intro_rate", self.intro_rate, f"use at most intro_burst ({self.intro_burst})")
        if self.pow_queue_rate > self.pow_queue_burst:
            _fail("dos.pow_queue_rate", self.pow_queue_rate,
                  f"use at most pow_queue_burst ({self.pow_queue_burst})")


@dataclass(frozen=True)
class SiteSpec:
    """One onion site: the master onion address serving `domain` and all its subdomains
    (`www.<domain>` <-> `www.<onion>`), proxied to the clearnet origin over verified TLS.

    `origin_address` ("host:port"; an IP literal, or a DNS name that nginx resolves at
    request time through the VPC resolver) makes nginx connect there instead of to the
    domain; SNI, Host and certificate verification still use the (sub)domain.
    `block_hosts` are clearnet host names (the domain or its subdomains) answered with 403.
    `block_paths` answered with 403: an entry starting with "/" is a literal URL path
    prefix (`location ^~`), one starting with "^" a regular expression on the path
    (`location ~`, PCRE; the stack config's `blockPaths` form).

    `https`: the onion also serves HTTPS on port 443 (HTTP/2), with the certificate and key
    staged at `WorkerSpec.tls_cert_file/tls_key_file` (never rendered: see
    `worker_secret_files`); links, redirects and headers naming the site then use
    `https://`. `http_redirect` (with `https`): port 80 answers 307 to the same URL over
    HTTPS, except `validation_paths`; False serves both ports alike.
    `foreign_onions`: (domain, onion address) of OTHER onion sites (EOTK's foreignmap):
    that domain and its subdomains become that onion in this site's bodies and headers,
    scheme kept. `dos`: tor's DoS controls for this site's instance services.
    """

    name: str
    domain: str | None  # None: an app site (`app` set)
    onion_address: str
    origin_address: str | None = None
    block_hosts: tuple[str, ...] = ()
    block_paths: tuple[str, ...] = ()
    https: bool = False
    http_redirect: bool = True
    validation_paths: tuple[ValidationPath, ...] = ()
    foreign_onions: tuple[tuple[str, str], ...] = ()
    dos: SiteDos = field(default_factory=SiteDos)
    app: "AppSiteSpec | None" = None  # an app site: nginx proxies to the app on the worker (no rewriting)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SITE_NAME_RE.match(self.name):
            _fail("site.name", self.name, "use ^[a-z][a-z0-9-]{0,30}$, e.g. 'news'")
        where = f"sites[{self.name}]"
        if self.app is not None:
            _check_app_site(self)
            return
        domain = self.domain.lower().rstrip(".") if isinstance(self.domain, str) else self.domain
        if not isinstance(domain, str) or not DOMAIN_RE.match(domain) or domain.endswith(".onion"):
            _fail(f"{where}.domain", self.domain, "use a clearnet DNS name such as 'example.com'")
        object.__setattr__(self, "domain", domain)
        address = self.onion_address.lower() if isinstance(self.onion_address, str) else ""
        address = address[:-len(".onion")] if address.endswith(".onion") else address
        if not ONION_RE.match(address):
            _fail(f"{where}.onion_address", self.onion_address,
                  "use the 56-character v3 master address (with or without '.onion')")
        _check_onion_checksum(f"{where}.onion_address", address)
        object.__setattr__(self, "onion_address", address)
        if self.origin_address is not None:
            _check_ip_port(f"{where}.origin_address", self.origin_address)
        hosts = tuple(h.lower().rstrip(".") for h in self.block_hosts)
        for host in hosts:
            if not DOMAIN_RE.match(host) or not (host == domain or host.endswith("." + domain)):
                _fail(f"{where}.block_hosts", host, f"list {domain!r} or host names under it")
        object.__setattr__(self, "block_hosts", hosts)
        for path in self.block_paths:
            _check_block_path(f"{where}.block_paths", path)
        object.__setattr__(self, "block_paths", tuple(self.block_paths))
        for name in ("https", "http_redirect"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"{where}.{name}", getattr(self, name), "use True or False")
        paths = tuple(self.validation_paths)
        for v in paths:
            if not isinstance(v, ValidationPath):
                _fail(f"{where}.validation_paths", v, "use ValidationPath(path, content=None) entries")
        dupes = sorted({v.path for v in paths if [w.path for w in paths].count(v.path) > 1})
        if dupes:
            _fail(f"{where}.validation_paths", dupes, "list each path once")
        object.__setattr__(self, "validation_paths", paths)
        foreign = []
        for entry in self.foreign_onions:
            try:
                fdomain, fonion = entry
            except (TypeError, ValueError):
                _fail(f"{where}.foreign_onions", entry, "use (domain, onion address) pairs")
            fdomain = fdomain.lower().rstrip(".") if isinstance(fdomain, str) else fdomain
            if not isinstance(fdomain, str) or not DOMAIN_RE.match(fdomain) or fdomain.endswith(".onion"):
                _fail(f"{where}.foreign_onions", entry, "the first of each pair is a clearnet DNS name")
            if _overlaps(fdomain, domain):
                _fail(f"{where}.foreign_onions", fdomain,
                      f"a foreign domain may not be {domain}, under it or above it (the site maps it itself)")
            faddress = fonion.lower().removesuffix(".onion") if isinstance(fonion, str) else ""
            if not ONION_RE.match(faddress):
                _fail(f"{where}.foreign_onions[{fdomain}]", fonion, "use a 56-character v3 onion address")
            _check_onion_checksum(f"{where}.foreign_onions[{fdomain}]", faddress)
            if faddress == address:
                _fail(f"{where}.foreign_onions[{fdomain}]", fonion, "that is this site's own address")
            foreign.append((fdomain, faddress))
        for d in sorted({d for d, _ in foreign}):
            clash = [e for e in foreign if _overlaps(e[0], d) and e[0] != d]
            if [e[0] for e in foreign].count(d) > 1 or clash:
                _fail(f"{where}.foreign_onions", d, "list each foreign domain once, and none under another")
        object.__setattr__(self, "foreign_onions", tuple(sorted(foreign)))
        if not isinstance(self.dos, SiteDos):
            _fail(f"{where}.dos", self.dos, "use a SiteDos")

    @property
    def onion_host(self) -> str:
        return self.onion_address + ".onion"

    @property
    def scheme(self) -> str:
        """The scheme of this site's onion URLs in rewritten links, redirects and headers."""
        return "https" if self.https else "http"

    @property
    def foreign(self) -> tuple["ForeignOnion", ...]:
        """`foreign_onions` as the templates use them."""
        return tuple(ForeignOnion(d, o) for d, o in self.foreign_onions)


@dataclass(frozen=True)
class ForeignOnion:
    """Another onion site's clearnet domain and address (validated by SiteSpec)."""

    domain: str
    onion_address: str

    @property
    def onion_host(self) -> str:
        return self.onion_address + ".onion"

    @property
    def name(self) -> str:
        """For nginx variable names: the domain with every non-alphanumeric as '_'."""
        return re.sub(r"[^a-z0-9]", "_", self.domain)


def _overlaps(a: str, b: str) -> bool:
    """True when DNS names a and b are equal or one is under the other."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


# An app site's second loopback port (a new release starts there beside the running one):
# its first port + this (18080 and 19080 for the first app site).
APP_NEXT_PORT_OFFSET = 1000


@dataclass(frozen=True)
class AppSiteSpec:
    """What a worker's nginx needs of an app site: the loopback port the app's container is
    published on (`host_port`), the second port a new release starts on beside the running
    one during a switch (`next_port`, default host_port + APP_NEXT_PORT_OFFSET), and its
    health path (docs/apps.md). nginx sends to whichever of the two answers."""

    host_port: int
    health_path: str = "/healthz"
    next_port: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.host_port, int) and 1024 <= self.host_port <= 65535):
            _fail("app.host_port", self.host_port, "use 1024..65535")
        if self.next_port is None:
            object.__setattr__(self, "next_port", self.host_port + APP_NEXT_PORT_OFFSET)
        if not (isinstance(self.next_port, int) and 1024 <= self.next_port <= 65535) or \
                self.next_port == self.host_port:
            _fail("app.next_port", self.next_port, "use 1024..65535, not host_port")

    @property
    def ports(self) -> tuple[int, int]:
        return (self.host_port, self.next_port)
        if not isinstance(self.health_path, str) or not re.match(r"^/[A-Za-z0-9._~/-]{0,200}$", self.health_path):
            _fail("app.health_path", self.health_path, "use a URL path such as /healthz")


def _check_app_site(site: "SiteSpec") -> None:
    where = f"sites[{site.name}]"
    if not isinstance(site.app, AppSiteSpec):
        _fail(f"{where}.app", site.app, "use an AppSiteSpec")
    for name in ("domain", "origin_address"):
        if getattr(site, name) is not None:
            _fail(f"{where}.{name}", getattr(site, name), "an app site has no clearnet side: leave it None")
    for name in ("block_hosts", "foreign_onions", "validation_paths"):
        if getattr(site, name):
            _fail(f"{where}.{name}", getattr(site, name), "an app site has no clearnet side: leave it empty")
    if site.https:
        _fail(f"{where}.https", site.https, "app sites serve plain HTTP over the onion service (tor encrypts)")
    for path in site.block_paths:
        _check_block_path(f"{where}.block_paths", path)
    address = site.onion_address.lower() if isinstance(site.onion_address, str) else ""
    address = address[:-len(".onion")] if address.endswith(".onion") else address
    if not ONION_RE.match(address):
        _fail(f"{where}.onion_address", site.onion_address,
              "use the 56-character v3 master address (with or without '.onion')")
    _check_onion_checksum(f"{where}.onion_address", address)
    object.__setattr__(site, "onion_address", address)
    object.__setattr__(site, "block_paths", tuple(site.block_paths))


def _check_onion_checksum(field_name: str, address: str) -> None:
    """A mistyped address would render fine and even pass `tor --verify-config` (it checks
    only the form): check the checksum with onion.keys."""
    from onion.keys import parse_address  # onion/ is below nodes/ in the layering

    try:
        parse_address(address)
    except ValueError as exc:
        _fail(field_name, address, f"not a valid v3 onion address ({exc})")


def _check_ip_port(field_name: str, value: str) -> None:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    try:
        ok = ipaddress.ip_address(host).version == 4
    except ValueError:
        ok = bool(DOMAIN_RE.match(host.lower()))
    ok = ok and sep == ":" and port.isdigit() and 0 < int(port) < 65536
    if not ok:
        _fail(field_name, value, "use 'a.b.c.d:port' or 'host.name:port'")


def _check_block_path(field_name: str, value: object) -> None:
    if isinstance(value, str) and value.startswith("/"):
        if not BLOCK_PATH_RE.match(value):
            _fail(field_name, value, "a path prefix may use only A-Za-z0-9._~/%+- characters")
        return
    if not isinstance(value, str) or not value.startswith("^"):
        _fail(field_name, value, "use a path prefix starting with '/' (e.g. '/admin/') or a "
              "regular expression starting with '^' (e.g. '^/wp-(admin|login)')")
    # Rendered inside an nginx double-quoted string: no quotes, whitespace or controls.
    if re.search(r'["\s\x00-\x1f\x7f]', value):
        _fail(field_name, value, "a regular expression here may not contain quotes or whitespace")
    try:
        re.compile(value)
    except re.error as exc:
        _fail(field_name, value, f"not a valid regular expression ({exc})")


def nginx_quote(value: str) -> str:
    """`value` as an nginx double-quoted string: nginx turns a doubled backslash into
    one, so each escaped backslash in a regex is doubled again (values have no quotes)."""
    return '"' + re.sub(r"\\(.)", lambda m: "\\" * 4 if m.group(1) == "\\" else m.group(0), value) + '"'


@dataclass(frozen=True)
class TorTuning:
    """Worker tor settings shared by every site (per-site DoS controls: SiteDos)."""

    intro_points: int = 3            # HiddenServiceNumIntroductionPoints (introPointsPerDaemon)
    # tor's seccomp sandbox: off by default. Measured here (tor 0.4.9.11, glibc 2.36) a
    # sandboxed tor ignores SIGTERM; systemd's hardening of the unit confines it instead.
    sandbox: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.intro_points, int) and 1 <= self.intro_points <= 20):
            _fail("intro_points", self.intro_points, "use 1..20 (tor's limit per service)")


@dataclass(frozen=True)
class NginxTuning:
    """nginx limits and logging on a worker."""

    rate: str = "10r/s"              # limit_req rate per rendezvous circuit
    burst: int = 40                  # limit_req burst (served without delay, then 429)
    access_log: bool = False         # off by default: onion visitors' requests are not kept
    worker_connections: int = 1024
    trusted_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    modules_dir: str = "/usr/lib/nginx/modules"
    mime_types: str = "/etc/nginx/mime.types"

    def __post_init__(self) -> None:
        if not NGINX_RATE_RE.match(str(self.rate)):
            _fail("nginx.rate", self.rate, "use nginx limit_req syntax like '10r/s' or '30r/m'")
        if not (isinstance(self.burst, int) and 0 <= self.burst <= 100000):
            _fail("nginx.burst", self.burst, "use 0..100000")
        for name in ("trusted_ca_file", "modules_dir", "mime_types"):
            value = getattr(self, name)
            if not value.startswith("/") or not SAFE_PATH_RE.match(value):
                _fail(f"nginx.{name}", value, "use an absolute path of [A-Za-z0-9._/@+-] characters")


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: `tor_daemons` tor processes, each publishing one OnionBalance instance
    service per site, and one nginx proxying every site.

    `resolver` is the VPC's DNS resolver (the VPC CIDR base + 2); public resolvers are
    refused. `tor_include` is an optional absolute path that every torrc `%include`s (the
    lab's private-network options). `nginx_tcp_base_port` switches nginx from unix sockets
    to 127.0.0.1:<port> listeners. `tor_user`/`nginx_user` None means "run as whoever
    starts it" (the lab).
    """

    sites: tuple[SiteSpec, ...]
    resolver: str
    tor_daemons: int = 2
    tor: TorTuning = field(default_factory=TorTuning)
    nginx: NginxTuning = field(default_factory=NginxTuning)
    layout: Layout = field(default_factory=Layout)
    tor_user: str | None = "debian-tor"
    nginx_user: str | None = "www-data"
    tor_include: str | None = None
    nginx_tcp_base_port: int | None = None
    tor_binary: str = "/usr/bin/tor"
    nginx_binary: str = "/usr/sbin/nginx"
    # tor's MetricsPort (Prometheus text: per-service PoW queue depth, suggested effort,
    # rejected introductions) on 127.0.0.1, one port per daemon in daemon order, readable
    # from 127.0.0.1 only; empty: no MetricsPort.
    metrics_ports: tuple[int, ...] = ()
    # nginx serves each daemon's MetricsPort to the balancer on these ports (all addresses;
    # the security group admits only the balancer, nginx only `metrics_allow`), one per
    # daemon in daemon order; empty: not served.
    metrics_proxy_ports: tuple[int, ...] = ()
    metrics_allow: str | None = None  # the VPC CIDR

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        if not sites:
            _fail("sites", sites, "give at least one site")
        names = [s.name for s in sites]
        proxies = [s for s in sites if s.app is None]  # app sites have no domain to map
        for kind, values in (("name", names), ("domain", [s.domain for s in proxies]),
                             ("onion_address", [s.onion_address for s in sites])):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                _fail(f"sites[].{kind}", dupes, f"each site needs its own {kind}")
        for a in proxies:
            for b in proxies:
                if a is not b and a.domain.endswith("." + b.domain):
                    _fail(f"sites[{a.name}].domain", a.domain,
                          f"it is a subdomain of sites[{b.name}] ({b.domain}), which already maps it")
                for fdomain, _ in a.foreign_onions:
                    if _overlaps(fdomain, b.domain):
                        _fail(f"sites[{a.name}].foreign_onions", fdomain,
                              f"sites[{b.name}] maps {b.domain} itself; a foreign domain may not be it, "
                              "under it or above it")
                if a is not b and b.onion_address in (o for _, o in a.foreign_onions):
                    _fail(f"sites[{a.name}].foreign_onions", b.onion_host,
                          f"that is sites[{b.name}]'s address, which every site already maps")
        ports = [p for s in sites if s.app is not None for p in s.app.ports]
        if len(set(ports)) != len(ports):
            _fail("sites[].app.host_port", ports, "each app site needs its own loopback port")
        object.__setattr__(self, "sites", sites)
        _check_resolver(self.resolver)
        if not (isinstance(self.tor_daemons, int) and 1 <= self.tor_daemons <= 8):
            _fail("tor_daemons", self.tor_daemons, "use 1..8 (torDaemonsPerWorker)")
        for name in ("tor_user", "nginx_user"):
            value = getattr(self, name)
            if value is not None and not SAFE_NAME_RE.match(value):
                _fail(name, value, "use a system user name or None")
        for name in ("tor_include", "tor_binary", "nginx_binary"):
            value = getattr(self, name)
            if value is not None and (not value.startswith("/") or not SAFE_PATH_RE.match(value)):
                _fail(name, value, "use an absolute path of [A-Za-z0-9._/@+-] characters")
        mports = tuple(self.metrics_ports)
        if mports and (len(mports) != self.tor_daemons or len(set(mports)) != len(mports) or
                       not all(isinstance(p, int) and 1024 <= p <= 65535 for p in mports)):
            _fail("metrics_ports", mports, "give one distinct free port >= 1024 per tor daemon, or ()")
        object.__setattr__(self, "metrics_ports", mports)
        proxied = tuple(self.metrics_proxy_ports)
        if proxied and (len(proxied) != len(mports) or len(set(proxied)) != len(proxied) or set(proxied) & set(mports)
                        or not all(isinstance(p, int) and 1024 <= p <= 65535 for p in proxied)):
            _fail("metrics_proxy_ports", proxied,
                  "give one distinct free port >= 1024 per MetricsPort, none of them a MetricsPort, or ()")
        object.__setattr__(self, "metrics_proxy_ports", proxied)
        if proxied:
            try:
                allow = ipaddress.ip_network(self.metrics_allow or "")
            except ValueError:
                allow = None
            if allow is None or allow.version != 4 or not allow.is_private:
                _fail("metrics_allow", self.metrics_allow, "use the VPC's private IPv4 CIDR")
        port = self.nginx_tcp_base_port
        if port is not None and not (isinstance(port, int)
                                     and 1024 <= port <= 65535 - 2 * len(sites) * self.tor_daemons):
            _fail("nginx_tcp_base_port", port, "use a free port >= 1024 with room for "
                  "2 x sites x tor_daemons consecutive ports, or None for unix sockets")
        if port is None:
            longest = max((self.listener(s, d, p) for s in sites for d in self.daemon_names
                           for p in self.ports(s)), key=len)
            if len(longest) - len("unix:") > MAX_UNIX_SOCKET_PATH:
                _fail("layout.run_dir", self.layout.run_dir,
                      f"socket path {longest[5:]!r} exceeds 107 bytes; use a shorter run_dir")

    @property
    def proxy_sites(self) -> tuple[SiteSpec, ...]:
        """The rewriting proxies to clearnet origins (the onion <-> clearnet maps cover these)."""
        return tuple(s for s in self.sites if s.app is None)

    @property
    def app_sites(self) -> tuple[SiteSpec, ...]:
        return tuple(s for s in self.sites if s.app is not None)

    @property
    def daemon_names(self) -> tuple[str, ...]:
        return tuple(f"tor{i}" for i in range(1, self.tor_daemons + 1))

    def listener(self, site: SiteSpec, daemon: str, port: int = 80) -> str:
        """Where nginx listens for `site`'s streams to onion `port` (80, or 443 for an HTTPS
        site) from `daemon`: one socket per triple, so that nginx knows the site without
        trusting Host and circuit ids of different tor processes (which may repeat) stay
        apart in the rate limiter. TCP mode: the port-80 listeners come first
        (base, base+1, ...), then the same order again for 443."""
        if port not in (80, 443):
            raise RenderError(f"listener port: {port!r} is invalid: onion sites serve 80 and 443")
        if self.nginx_tcp_base_port is not None:
            index = self.sites.index(site) * self.tor_daemons + self.daemon_names.index(daemon)
            if port == 443:
                index += len(self.sites) * self.tor_daemons
            return f"127.0.0.1:{self.nginx_tcp_base_port + index}"
        suffix = "" if port == 80 else f".{port}"
        return "unix:" + self.layout.path("run_dir", f"{site.name}.{daemon}{suffix}.sock")

    @staticmethod
    def ports(site: SiteSpec) -> tuple[int, ...]:
        """The onion ports `site` serves: 80, and 443 with HTTPS."""
        return (80, 443) if site.https else (80,)

    def tls_cert_file(self, site: SiteSpec) -> str:
        """Where an HTTPS site's certificate chain (PEM, leaf first) is staged: 0644 root."""
        return self.layout.path("etc_dir", "tls", f"{site.name}.crt")

    def tls_key_file(self, site: SiteSpec) -> str:
        """Where an HTTPS site's private key (PEM) is staged: 0600 root (nginx's master reads
        it before it drops privileges; its workers cannot)."""
        return self.layout.path("etc_dir", "tls", f"{site.name}.key")

    def data_dir(self, daemon: str) -> str:
        return self.layout.path("lib_dir", "tor", daemon)

    def metrics_port(self, daemon: str) -> int | None:
        """The daemon's MetricsPort on 127.0.0.1, or None."""
        return self.metrics_ports[self.daemon_names.index(daemon)] if self.metrics_ports else None

    def metrics_proxy_port(self, daemon: str) -> int | None:
        """Where nginx serves the daemon's MetricsPort to the balancer, or None."""
        return self.metrics_proxy_ports[self.daemon_names.index(daemon)] if self.metrics_proxy_ports else None

    def instance_metrics_urls(self, private_ip: str, addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
        """instance address -> the URL of its tor's MetricsPort as the balancer reaches it on
        the worker at `private_ip`; `addresses`: site name -> addresses in daemon order (what
        the worker step reports)."""
        if not self.metrics_proxy_ports:
            return {}
        return {a.lower().removesuffix(".onion"): f"http://{private_ip}:{self.metrics_proxy_ports[i]}/metrics"
                for site in addresses.values() for i, a in enumerate(site)}

    def hs_dir(self, daemon: str, site: SiteSpec) -> str:
        return self.layout.path("lib_dir", "tor", daemon, "hs", site.name)


def _check_resolver(value: str) -> None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if ip is None or ip.version != 4 or not (ip.is_private or ip.is_loopback):
        _fail("resolver", value, "use the VPC resolver's private IPv4 address (VPC CIDR base "
              "+ 2, e.g. 10.42.0.2); public resolvers would see every origin lookup")


# --------------------------------------------------------------------------- rendering

def _shquote(value: object) -> str:
    return shlex.quote(str(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["re_escape"] = lambda s: re.sub(r"([.\-])", r"\\\1", s)
    env.filters["shquote"] = _shquote
    env.filters["nginx_quote"] = nginx_quote
    return env


_ENV = _environment()


def render_template(name: str, **context: object) -> str:
    """Render one template by its name under nodes/templates (StrictUndefined)."""
    return _ENV.get_template(name).render(**context)


def content_hash(files: Mapping[str, RenderedFile]) -> str:
    """Stable sha256 over paths, modes, owners and contents (order-independent): the
    remote steps put it in `triggers` so a step re-runs exactly when a file changes."""
    digest = hashlib.sha256()
    for path in sorted(files):
        f = files[path]
        for part in (path, f"{f.mode:o}", f.owner, f.content):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Directory:
    """A directory a role needs before its services start (absolute path)."""

    path: str
    mode: int
    owner: str = "root"
    group: str = "root"


def worker_directories(spec: WorkerSpec) -> tuple[Directory, ...]:
    """Directories to create (in this order) before tor/nginx check or start: tor refuses
    group/world-accessible DataDirectory and HiddenServiceDir, so those are 0700. The run
    dir holds nginx's sockets (nginx makes them 0666): only tor's group may enter."""
    layout, tor_owner, www = spec.layout, spec.tor_user or "root", spec.nginx_user or "root"
    dirs = [Directory(layout.path("lib_dir"), 0o755), Directory(layout.path("run_dir"), 0o750, "root", tor_owner),
            Directory(layout.path("log_dir"), 0o750),
            Directory(layout.path("lib_dir", "nginx"), 0o700, www, www),
            Directory(layout.path("lib_dir", "tor"), 0o755)]
    for daemon in spec.daemon_names:
        dirs.append(Directory(spec.data_dir(daemon), 0o700, tor_owner, tor_owner))
        dirs.append(Directory(layout.path("lib_dir", "tor", daemon, "hs"), 0o700, tor_owner, tor_owner))
        dirs.extend(Directory(spec.hs_dir(daemon, site), 0o700, tor_owner, tor_owner) for site in spec.sites)
    if any(site.https for site in spec.sites):
        dirs.append(Directory(layout.path("etc_dir"), 0o755))
        dirs.append(Directory(layout.path("etc_dir", "tls"), 0o755))
    return tuple(dirs)


def worker_secret_files(spec: WorkerSpec, tls: Mapping[str, tuple[str, str]]) -> dict[str, RenderedFile]:
    """The staged half of a worker's files: each HTTPS site's certificate chain (0644 root)
    and private key (0600 root), from `tls` = {site name: (chain PEM, key PEM)}. The key is
    a secret: these files travel only in a secret payload and are never rendered by
    `render_worker` (apply.sh expects them in its stage all the same)."""
    wanted = {site.name for site in spec.sites if site.https}
    if set(tls) != wanted:
        raise RenderError(f"tls: {sorted(tls)!r} is invalid: give (chain, key) for exactly the HTTPS "
                          f"sites {sorted(wanted)}")
    out: dict[str, RenderedFile] = {}
    for site in spec.sites:
        if not site.https:
            continue
        chain, key = tls[site.name]
        if "-----BEGIN CERTIFICATE-----" not in chain or "PRIVATE KEY-----" not in key:
            raise RenderError(f"tls[{site.name}]: is invalid: give a PEM certificate chain and a PEM private key")
        out[spec.layout.key(spec.tls_cert_file(site))] = RenderedFile(chain.strip() + "\n", 0o644, "root")
        out[spec.layout.key(spec.tls_key_file(site))] = RenderedFile(key.strip() + "\n", 0o600, "root")
    return out


def _worker_secret_placeholders(spec: WorkerSpec) -> dict[str, RenderedFile]:
    """What apply.sh must find staged besides the rendered files (modes and owners only)."""
    out = {}
    for site in spec.sites:
        if site.https:
            out[spec.layout.key(spec.tls_cert_file(site))] = RenderedFile("", 0o644, "root")
            out[spec.layout.key(spec.tls_key_file(site))] = RenderedFile("", 0o600, "root")
    return out


WORKER_PACKAGES = ("tor", "deb.torproject.org-keyring", "nginx", "libnginx-mod-http-subs-filter")
WORKER_NGINX_UNIT = "nginx-onionstack.service"
TOR_UNIT_TEMPLATE = "onionstack-tor@.service"


def _script_files(layout: Layout, role: str, template: str, files: Mapping[str, RenderedFile],
                  directories: tuple[Directory, ...], packages: tuple[str, ...],
                  disable_units: tuple[str, ...], tor_project_repo: bool, **context: object) -> dict[str, RenderedFile]:
    """install-packages.sh and apply.sh for a role (apply.sh lists every other file)."""
    install = render_template("scripts/install-packages.sh.j2", role=role, packages=packages,
                              tor_project_repo=tor_project_repo, disable_units=disable_units)
    apply = render_template(template, role=role, root=layout.root, directories=directories,
                            files=sorted(files.items()), **context)
    return {layout.key(layout.path("script_dir", "install-packages.sh")): RenderedFile(install, 0o755),
            layout.key(layout.path("script_dir", "apply.sh")): RenderedFile(apply, 0o755)}


def render_worker(spec: WorkerSpec) -> dict[str, RenderedFile]:
    """Every file of a worker: torrc + ob_config per tor daemon, nginx, units, scripts."""
    layout = spec.layout
    out: dict[str, RenderedFile] = {}
    tor_owner = spec.tor_user or "root"

    def put(path: str, content: str, mode: int = 0o644, owner: str = "root") -> None:
        out[layout.key(path)] = RenderedFile(content, mode, owner)

    for daemon in spec.daemon_names:
        put(layout.path("etc_dir", "tor", f"{daemon}.torrc"),
            render_template("worker/torrc.j2", spec=spec, daemon=daemon))
        for site in spec.sites:
            put(posixpath.join(spec.hs_dir(daemon, site), "ob_config"),
                render_template("worker/ob_config.j2", site=site), 0o600, tor_owner)
    put(layout.path("etc_dir", "nginx", "nginx.conf"),
        render_template("worker/nginx.conf.j2", spec=spec, layout=layout))
    put(layout.path("etc_dir", "nginx", "onionmap.conf"),
        render_template("worker/onionmap.conf.j2", sites=spec.proxy_sites))
    for site in spec.sites:
        put(layout.path("etc_dir", "nginx", "sites", f"{site.name}.conf"),
            render_template("worker/app-site.conf.j2" if site.app else "worker/site.conf.j2", spec=spec, site=site))
    tor_user = spec.tor_user or "root"
    nginx_conf = layout.path("etc_dir", "nginx", "nginx.conf")
    put(layout.path("systemd_dir", TOR_UNIT_TEMPLATE),
        render_template("systemd/onionstack-tor@.service.j2", tor_user=tor_user, tor_binary=spec.tor_binary,
                        etc_dir=layout.path("etc_dir"), lib_dir=layout.path("lib_dir"),
                        after=WORKER_NGINX_UNIT))
    put(layout.path("systemd_dir", WORKER_NGINX_UNIT),
        render_template("systemd/nginx-onionstack.service.j2", daemons=spec.daemon_names, tor_user=tor_user,
                        nginx_user=spec.nginx_user or "root", nginx_binary=spec.nginx_binary, conf=nginx_conf,
                        run_dir=layout.path("run_dir"), log_dir=layout.path("log_dir"),
                        lib_dir=layout.path("lib_dir")))
    tmpfiles = layout.path("tmpfiles_dir", "onionstack.conf")
    put(tmpfiles, render_template("systemd/tmpfiles.conf.j2", directories=[
        d for d in worker_directories(spec) if d.path == layout.path("run_dir")]))
    units = (WORKER_NGINX_UNIT,) + tuple(f"onionstack-tor@{d}.service" for d in spec.daemon_names)
    out.update(_script_files(
        layout, "worker", "scripts/apply-worker.sh.j2", {**out, **_worker_secret_placeholders(spec)},
        worker_directories(spec), WORKER_PACKAGES,
        ("tor.service", "tor@default.service", "nginx.service"), True, tor_user=tor_user, tor_binary=spec.tor_binary,
        nginx_binary=spec.nginx_binary, nginx_conf=nginx_conf, tmpfiles=tmpfiles, units=units,
        torrcs=[layout.path("etc_dir", "tor", f"{d}.torrc") for d in spec.daemon_names]))
    return out


# --------------------------------------------------------------------------- balancer

BALANCER_UNIT = "onion-balancer.service"
METRICS_SHIPPER_UNIT = "onion-metrics-shipper.service"
BALANCER_PACKAGES = ("tor", "deb.torproject.org-keyring", "python3-venv")


# A worker's MetricsPort as the balancer reads it: plain HTTP to a private IPv4 address.
METRICS_URL_RE = re.compile(r"http://(?:\d{1,3}\.){3}\d{1,3}:\d{1,5}/metrics")


@dataclass(frozen=True)
class BalancerSpec:
    """The balancer: its tor (ControlPort + cookie, SocksPort on 127.0.0.1) and the core's
    config. `instances` maps each site name to the instance addresses the workers
    reported (56 chars, with or without ".onion"); `publish` False renders a standby
    (blue/green) that never uploads descriptors. Master key files are not rendered (they
    are secrets): `key_file(site)` says where the remote step must put each one (0600,
    owned by `user`); apply.sh expects them in its stage and installs them too."""

    sites: tuple[SiteSpec, ...]
    instances: Mapping[str, tuple[str, ...]]
    publish: bool = True
    socks_port: int = 9050
    layout: Layout = field(default_factory=Layout)
    user: str = "onionbalancer"
    tor_user: str = "debian-tor"
    tor_instance: str = "balancer"
    state_dir_rel: str = "var/lib/onion-balancer"
    cookie_file: str = "/run/onionstack-tor-balancer/control.authcookie"
    # tor's control socket, in its runtime dir (0750, tor's group): the core connects
    # through it, no TCP control port
    control_socket: str = "/run/onionstack-tor-balancer/control"
    venv: str = "/opt/onionstack/venv"
    package_lib: str = "/opt/onionstack/lib"
    tor_include: str | None = None
    tor_binary: str = "/usr/bin/tor"
    # the balancer tor's MetricsPort on 127.0.0.1 (tor's own counters; scraped locally)
    tor_metrics_port: int | None = 9052
    # the balancer core's /metrics on 127.0.0.1 (onion/metrics.py)
    metrics_port: int = 9961
    standby: bool = False  # a standby balancer (onion/standby.py): uploads only after a takeover
    # instance address (56 chars) -> the worker node it runs on (`worker-1`): status and the
    # metrics' `worker` label, which the per-worker alarms watch
    workers: Mapping[str, str] = field(default_factory=dict)
    # (namespace, region): a unit ships the core's metrics to CloudWatch; None: no shipper
    cloudwatch: tuple[str, str] | None = None
    # instance address -> http://<worker VPC address>:<port>/metrics, where the worker's nginx
    # serves that instance's tor MetricsPort (WorkerSpec.metrics_proxy_ports): the core reads
    # each instance's PoW queue depth there (onion/load.py)
    instance_metrics: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        if not sites:
            _fail("sites", sites, "give at least one site")
        names = [x.name for x in sites]
        if len(set(names)) != len(names):
            _fail("sites[].name", names, "each site needs its own name")
        object.__setattr__(self, "sites", sites)
        if not isinstance(self.instances, Mapping):
            _fail("instances", self.instances, "use {site name: (instance addresses...)}")
        unknown = sorted(set(self.instances) - set(names))
        if unknown:
            _fail("instances", unknown, f"name only configured sites ({', '.join(names)})")
        normalized: dict[str, tuple[str, ...]] = {}
        for name in names:
            addresses = []
            for a in self.instances.get(name, ()):
                address = a.lower().removesuffix(".onion") if isinstance(a, str) else ""
                if not ONION_RE.match(address):
                    _fail(f"instances[{name}]", a, "use 56-character v3 onion addresses")
                _check_onion_checksum(f"instances[{name}]", address)
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                _fail(f"instances[{name}]", self.instances.get(name, ()),
                      "list at least one instance address (the workers' outputs) per site")
            normalized[name] = tuple(addresses)
        object.__setattr__(self, "instances", normalized)
        if self.cloudwatch is not None and not (
                isinstance(self.cloudwatch, tuple) and len(self.cloudwatch) == 2
                and re.fullmatch(r"[A-Za-z0-9/_.#:-]{1,255}", str(self.cloudwatch[0]))
                and re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", str(self.cloudwatch[1]))):
            _fail("cloudwatch", self.cloudwatch, "use (namespace like Onionstack/prod, region like eu-central-1)")
        if not isinstance(self.workers, Mapping) or not all(
                isinstance(v, str) and SAFE_NAME_RE.match(v) for v in self.workers.values()):
            _fail("workers", self.workers, "use {instance address: worker node name}")
        object.__setattr__(self, "workers", {str(k).lower().removesuffix(".onion"): v
                                             for k, v in self.workers.items()})
        if not isinstance(self.instance_metrics, Mapping) or not all(
                isinstance(v, str) and METRICS_URL_RE.fullmatch(v) for v in self.instance_metrics.values()):
            _fail("instance_metrics", self.instance_metrics,
                  "use {instance address: http://<worker private IPv4>:<port>/metrics}")
        object.__setattr__(self, "instance_metrics", {str(k).lower().removesuffix(".onion"): v
                                                      for k, v in self.instance_metrics.items()})
        if not isinstance(self.publish, bool):
            _fail("publish", self.publish, "use true or false")
        if not (isinstance(self.socks_port, int) and 1 <= self.socks_port <= 65535):
            _fail("socks_port", self.socks_port, "use a TCP port 1..65535")
        for name in ("user", "tor_user", "tor_instance"):
            if not SAFE_NAME_RE.match(getattr(self, name)):
                _fail(name, getattr(self, name), "use a lowercase system name")
        for name in ("cookie_file", "control_socket", "venv", "package_lib", "tor_binary", "tor_include"):
            value = getattr(self, name)
            if value is not None and (not value.startswith("/") or not SAFE_PATH_RE.match(value)):
                _fail(name, value, "use an absolute path of [A-Za-z0-9._/@+-] characters")
        if not SAFE_PATH_RE.match(self.state_dir_rel) or self.state_dir_rel.startswith("/"):
            _fail("state_dir_rel", self.state_dir_rel, "use a path relative to layout.root")

    @property
    def state_dir(self) -> str:
        return posixpath.join(self.layout.root, self.state_dir_rel)

    @property
    def data_dir(self) -> str:
        return self.layout.path("lib_dir", "tor", self.tor_instance)

    def key_file(self, site: SiteSpec | str) -> str:
        """Absolute path of a site's master key file (tor's hs_ed25519_secret_key format)."""
        name = site if isinstance(site, str) else site.name
        return posixpath.join(self.state_dir, "keys", f"{name}.key")

    @property
    def config_file(self) -> str:
        return self.layout.path("etc_dir", "balancer.yaml")


def balancer_directories(spec: BalancerSpec) -> tuple[Directory, ...]:
    layout = spec.layout
    return (Directory(layout.path("lib_dir"), 0o755), Directory(layout.path("lib_dir", "tor"), 0o755),
            Directory(spec.data_dir, 0o700, spec.tor_user, spec.tor_user),
            Directory(spec.state_dir, 0o750, spec.user, spec.user),
            Directory(posixpath.join(spec.state_dir, "keys"), 0o700, spec.user, spec.user),
            Directory(layout.path("etc_dir"), 0o755))


def render_balancer(spec: BalancerSpec) -> dict[str, RenderedFile]:
    """Every public file of the balancer: tor, the core's config, units, scripts."""
    layout = spec.layout
    out: dict[str, RenderedFile] = {}

    def put(path: str, content: str, mode: int = 0o644, owner: str = "root") -> None:
        out[layout.key(path)] = RenderedFile(content, mode, owner)

    torrc = layout.path("etc_dir", "tor", f"{spec.tor_instance}.torrc")
    put(torrc, render_template("balancer/torrc.j2", spec=spec))
    # 0640: readable by the core's user through its group, not by everyone.
    put(spec.config_file, render_template("balancer.yaml.j2", spec=spec), 0o640, spec.user)
    put(layout.path("systemd_dir", TOR_UNIT_TEMPLATE),
        render_template("systemd/onionstack-tor@.service.j2", tor_user=spec.tor_user, tor_binary=spec.tor_binary,
                        etc_dir=layout.path("etc_dir"), lib_dir=layout.path("lib_dir"), after=""))
    put(layout.path("systemd_dir", BALANCER_UNIT),
        render_template("systemd/onion-balancer.service.j2", user=spec.user, tor_user=spec.tor_user,
                        tor_instance=spec.tor_instance, venv=spec.venv, package_lib=spec.package_lib,
                        config=spec.config_file, state_dir=spec.state_dir))
    if spec.cloudwatch is not None:
        put(layout.path("systemd_dir", METRICS_SHIPPER_UNIT),
            render_template("systemd/onion-metrics-shipper.service.j2", core_unit=BALANCER_UNIT, venv=spec.venv,
                            package_lib=spec.package_lib, metrics_port=spec.metrics_port,
                            namespace=spec.cloudwatch[0], region=spec.cloudwatch[1]))
    # apply.sh installs the secret key files from the stage as well (never rendered here).
    secret_keys = {layout.key(spec.key_file(site)): RenderedFile("", 0o600, spec.user) for site in spec.sites}
    out.update(_script_files(
        layout, "balancer", "scripts/apply-balancer.sh.j2", {**out, **secret_keys}, balancer_directories(spec),
        BALANCER_PACKAGES, ("tor.service", "tor@default.service"), True, spec=spec, torrc=torrc, config=spec.config_file,
        unit=BALANCER_UNIT))
    return out


# --------------------------------------------------------------------------- database

# ssl-cert: the snakeoil certificate pg_createcluster configures for `ssl = on`.
DATABASE_PACKAGES = ("postgresql", "ssl-cert", "xfsprogs", "openssl")  # openssl: the TLS checks in apply.sh
VOLUME_ID_RE = re.compile(r"^vol-[0-9a-f]{8,17}$")
DEVICE_NAME_RE = re.compile(r"^/dev/(sd|xvd)[f-p]$")
XFS_LABEL_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")  # xfs labels: at most 12 bytes


@dataclass(frozen=True)
class VolumeSpec:
    """An EBS volume of the database: found by `volume_id` (NVMe by-id link) or its
    attachment `device_name`, formatted xfs with `label` when blank, mounted by label."""

    label: str
    volume_id: str
    device_name: str
    mount_point: str
    mode: int = 0o700
    owner: str = "postgres"
    group: str = "postgres"

    def __post_init__(self) -> None:
        if not XFS_LABEL_RE.match(self.label):
            _fail("volume.label", self.label, "use ^[a-z][a-z0-9-]{0,11}$ (xfs labels are <= 12 bytes)")
        if not VOLUME_ID_RE.match(self.volume_id):
            _fail(f"volume[{self.label}].volume_id", self.volume_id, "use an EBS volume id like vol-0123456789abcdef0")
        if not DEVICE_NAME_RE.match(self.device_name):
            _fail(f"volume[{self.label}].device_name", self.device_name, "use the attachment name /dev/sdf../dev/sdp")
        if not self.mount_point.startswith("/") or not SAFE_PATH_RE.match(self.mount_point):
            _fail(f"volume[{self.label}].mount_point", self.mount_point, "use an absolute path")


def database_volumes(data: tuple[str, str], journal: tuple[str, str], log: tuple[str, str]) -> tuple[VolumeSpec, ...]:
    """The standard layout from (volume_id, device_name) pairs: data under
    /var/lib/postgresql, WAL (journal) under /var/lib/postgresql-wal, logs under
    /var/log/postgresql (Ubuntu's log dir, group adm may read)."""
    return (VolumeSpec("pgdata", *data, "/var/lib/postgresql", 0o700),
            VolumeSpec("pgwal", *journal, "/var/lib/postgresql-wal", 0o700),
            VolumeSpec("pglog", *log, "/var/log/postgresql", 0o750, "postgres", "adm"))


@dataclass(frozen=True)
class DatabaseTls:
    """PostgreSQL's certificate and the CA that issued it (public PEMs; the key is staged
    by the remote step at `DatabaseSpec.key_file`, never rendered). Checked here: both
    parse, the CA is a CA, the certificate is signed by it. DatabaseSpec checks that the
    certificate names its listen_ip, or `sslmode=verify-full` clients would refuse it."""

    cert_pem: str
    ca_pem: str

    def __post_init__(self) -> None:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
            ca = x509.load_pem_x509_certificate(self.ca_pem.encode())
        except (ValueError, AttributeError):
            _fail("tls", "<PEM>", "give PostgreSQL's certificate and its CA's as PEM")
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            _fail("tls.ca_pem", ca.subject.rfc4514_string(), "the CA certificate must be a CA (basicConstraints CA:TRUE)")
        from cryptography.exceptions import InvalidSignature

        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            _fail("tls.cert_pem", cert.subject.rfc4514_string(), f"not issued by the CA ({type(exc).__name__})")

    def names(self) -> tuple[set[str], set[str]]:
        """(DNS names, IP addresses) in the certificate's subjectAltName."""
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return set(), set()
        return set(san.get_values_for_type(x509.DNSName)), {str(i) for i in san.get_values_for_type(x509.IPAddress)}


@dataclass(frozen=True)
class DatabaseRole:
    """A login role with its own database (owned by it, CONNECT for it alone) and its own
    password, staged by the remote step at `password_file` (0600 postgres)."""

    purpose: str
    role: str
    database: str
    password_file: str


def app_database_name(site: str) -> str:
    """An app site's role and database name: `app_` + the site name, '-' as '_'."""
    return "app_" + site.replace("-", "_")


@dataclass(frozen=True)
class DatabaseSpec:
    """PostgreSQL on the database machine. `listen_ip` is its private address;
    `client_cidrs` the worker subnets (hostssl + scram-sha-256, nothing else remote).
    The password is not rendered: the remote step stages it at `password_file` (0600,
    postgres) and apply.sh hands it to psql through a file, never argv. `tls`: the
    certificate (with the listen_ip in its subjectAltName) and the CA; the step stages the
    key at `key_file` (0600 postgres)."""

    listen_ip: str
    client_cidrs: tuple[str, ...]
    volumes: tuple[VolumeSpec, ...]
    pg_version: int = 16
    port: int = 5432
    db_name: str = "onionstack"
    db_user: str = "onionstack"
    layout: Layout = field(default_factory=Layout)
    password_file_rel: str = "etc/onionstack/postgres/password"
    tls: DatabaseTls | None = None
    tls_dir_rel: str = "etc/onionstack/postgres"
    apps: tuple[str, ...] = ()  # app sites: each gets its own role, database and password

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.listen_ip)
            ok = ip.version == 4 and (ip.is_private or ip.is_loopback)
        except ValueError:
            ok = False
        if not ok:
            _fail("listen_ip", self.listen_ip, "use the database's private IPv4 address")
        if not isinstance(self.tls, DatabaseTls):
            _fail("tls", self.tls, "give the database's certificate and CA (DatabaseTls; nodes/pki.py makes them)")
        if self.listen_ip not in self.tls.names()[1]:
            _fail("tls.cert_pem", sorted(self.tls.names()[1]),
                  f"the certificate must name the listen_ip {self.listen_ip} (sslmode=verify-full checks it)")
        cidrs = tuple(self.client_cidrs)
        if not cidrs:
            _fail("client_cidrs", cidrs, "list the worker subnets' CIDRs")
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr)
                ok = net.version == 4 and net.is_private and net.prefixlen >= 8
            except ValueError:
                ok = False
            if not ok:
                _fail("client_cidrs", cidr, "use private IPv4 subnets such as 10.42.128.0/20")
        object.__setattr__(self, "client_cidrs", cidrs)
        labels = [v.label for v in self.volumes]
        if set(labels) != {"pgdata", "pgwal", "pglog"} or len(labels) != 3:
            _fail("volumes", labels, "give the data, journal and log volumes (see database_volumes())")
        if not (isinstance(self.pg_version, int) and 12 <= self.pg_version <= 40):
            _fail("pg_version", self.pg_version, "use the PostgreSQL major version of the image (Ubuntu 24.04: 16)")
        if not (isinstance(self.port, int) and 1024 <= self.port <= 65535):
            _fail("port", self.port, "use 1024..65535")
        for name in ("db_name", "db_user"):
            if not SAFE_NAME_RE.match(getattr(self, name)) or "-" in getattr(self, name):
                _fail(name, getattr(self, name), "use ^[a-z_][a-z0-9_]{0,31}$")
        apps = tuple(self.apps)
        for app in apps:
            if not isinstance(app, str) or not SITE_NAME_RE.match(app):
                _fail("apps", app, "use app site names (^[a-z][a-z0-9-]{0,30}$)")
        names = [self.db_name, self.db_user] + [app_database_name(a) for a in apps]
        if len(set(app_database_name(a) for a in apps)) != len(apps) or \
                {self.db_name, self.db_user} & {app_database_name(a) for a in apps}:
            _fail("apps", apps, f"each app needs its own role and database name ({names})")
        object.__setattr__(self, "apps", apps)

    def _mount(self, label: str) -> str:
        return next(v.mount_point for v in self.volumes if v.label == label)

    @property
    def data_dir(self) -> str:
        return f"{self._mount('pgdata')}/{self.pg_version}/main"

    @property
    def wal_dir(self) -> str:
        return f"{self._mount('pgwal')}/{self.pg_version}/main"

    @property
    def conf_dir(self) -> str:
        return posixpath.join(self.layout.root, "etc/postgresql", str(self.pg_version), "main")

    @property
    def pg_bin(self) -> str:
        return f"/usr/lib/postgresql/{self.pg_version}/bin"

    @property
    def password_file(self) -> str:
        return posixpath.join(self.layout.root, self.password_file_rel)

    def app_password_file(self, app: str) -> str:
        return posixpath.join(self.layout.root, posixpath.dirname(self.password_file_rel), "apps", f"{app}.password")

    @property
    def roles(self) -> tuple[DatabaseRole, ...]:
        """The stack's own role (kept for what already uses it) and one per app site."""
        return (DatabaseRole("the stack", self.db_user, self.db_name, self.password_file),) + tuple(
            DatabaseRole(f"app site {a}", app_database_name(a), app_database_name(a), self.app_password_file(a))
            for a in self.apps)

    @property
    def cert_file(self) -> str:
        return posixpath.join(self.layout.root, self.tls_dir_rel, "server.crt")

    @property
    def key_file(self) -> str:
        return posixpath.join(self.layout.root, self.tls_dir_rel, "server.key")

    @property
    def ca_file(self) -> str:
        return posixpath.join(self.layout.root, self.tls_dir_rel, "ca.crt")


def render_database(spec: DatabaseSpec) -> dict[str, RenderedFile]:
    """PostgreSQL's conf.d file and pg_hba.conf, plus the role's scripts (volumes, cluster,
    checks, role and database)."""
    layout = spec.layout
    out = {
        layout.key(posixpath.join(spec.conf_dir, "conf.d", "onionstack.conf")):
            RenderedFile(render_template("database/onionstack.conf.j2", spec=spec), 0o644, "postgres"),
        layout.key(posixpath.join(spec.conf_dir, "pg_hba.conf")):
            RenderedFile(render_template("database/pg_hba.conf.j2", spec=spec), 0o640, "postgres"),
    }
    # PostgreSQL's certificate and the CA's are public; the key (like the password) is a
    # secret the step stages: listed here so that apply.sh installs it, never rendered.
    out[layout.key(spec.cert_file)] = RenderedFile(spec.tls.cert_pem, 0o644, "root")
    out[layout.key(spec.ca_file)] = RenderedFile(spec.tls.ca_pem, 0o644, "root")
    roles_sql = layout.key(layout.path("script_dir", "database-roles.sql"))
    out[roles_sql] = RenderedFile(render_template("database/roles.sql.j2", spec=spec), 0o644, "root")
    secret = {layout.key(r.password_file): RenderedFile("", 0o600, "postgres") for r in spec.roles}
    secret[layout.key(spec.key_file)] = RenderedFile("", 0o600, "postgres")
    dirs = (Directory(posixpath.dirname(spec.password_file), 0o750, "root", "postgres"),)
    if spec.apps:
        dirs += (Directory(posixpath.dirname(spec.app_password_file(spec.apps[0])), 0o750, "root", "postgres"),)
    out.update(_script_files(layout, "database", "scripts/apply-database.sh.j2", {**out, **secret}, dirs,
                             DATABASE_PACKAGES, (), False, spec=spec, roles_sql=roles_sql))
    return out


__all__ = [
    "APP_NEXT_PORT_OFFSET", "AppSiteSpec", "BalancerSpec", "DatabaseRole", "DatabaseSpec", "DatabaseTls", "app_database_name", "SiteDos", "ValidationPath",
    "VolumeSpec", "worker_secret_files", "database_volumes", "render_database", "Directory", "Layout", "NginxTuning",
    "balancer_directories", "render_balancer", "RenderError", "RenderedFile", "SiteSpec", "TorTuning",
    "WorkerSpec", "content_hash", "render_template", "render_worker", "replace", "worker_directories",
]
