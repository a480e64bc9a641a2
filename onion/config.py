"""The balancer core's configuration file: onionstack's YAML, or OnionBalance's `config.yaml`.

onionstack's format::

    publish: true                 # false: everything but HSPOST (blue/green standby)
    control: {port: 9051}         # or {socket: /run/tor-balancer/control}; cookie auth
    socks_port: 9050              # optional: the balancer tor's SocksPort on 127.0.0.1 (liveness
                                  # probes); without it the balancer asks tor where it listens
    state_dir: /var/lib/onion-balancer
    probe: {port: 80, interval: 20, timeout: 30, failures: 3}   # optional
    load: {effort_threshold: 1, queue_threshold: 64, overloaded_share: 1, recover_seconds: 300,
           metrics_interval: 30}                                # optional; false: off
    frontends:
      - name: news
        key_file: /var/lib/onion-balancer/keys/news.key
        instances:
          - address: <56 chars>.onion
            metrics: http://10.42.8.5:9035/metrics   # optional: its tor's MetricsPort

OnionBalance's format (accepted as is, so its users switch by changing one command)::

    services:
      - key: news.key              # relative to the config file's directory
        instances:
          - address: <56 chars>.onion
            name: web1             # ignored

Every error names the field (as a path like `frontends[0].instances[2].address`), the bad
value and what to do instead.
"""
from __future__ import annotations

import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from onion.errors import OnionError
from onion.load import LoadPolicy

DEFAULT_STATE_DIR = "/var/lib/onion-balancer"
DEFAULT_CONTROL_PORT = 9051
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# tor clients reject descriptors with more than 20 introduction points (rend-spec-v3).
MAX_INTRO_POINTS = 20


class ConfigError(OnionError):
    """The config file is unusable; the message says where, what and how to fix it."""


@dataclass(frozen=True)
class ControlEndpoint:
    port: int | None = None
    socket: str | None = None

    def describe(self) -> str:
        return f"unix socket {self.socket}" if self.socket else f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ProbeSettings:
    """Liveness probes of instance addresses through the balancer tor's SocksPort."""
    port: int = 80          # virtual port the instances serve (HiddenServicePort)
    interval: float = 20.0  # seconds between probes of one instance
    timeout: float = 30.0   # a probe that has not connected by then failed
    failures: int = 3       # consecutive failures that take an instance out
    enabled: bool = True


@dataclass(frozen=True)
class InstanceConfig:
    address: str  # 56 chars, no ".onion"
    name: str | None = None
    metrics: str | None = None  # http://HOST:PORT/metrics of the instance's tor MetricsPort
    worker: str | None = None  # the machine it runs on (metrics' `worker` label, status)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus text at http://<listen>/metrics, on loopback only."""
    host: str = "127.0.0.1"
    port: int = 9961


@dataclass(frozen=True)
class FrontendProbeSettings:
    """The end-to-end probe: an HTTP request to each frontend through the balancer's own
    tor, on fresh circuits, every `interval` seconds."""
    port: int = 80
    path: str = "/"
    interval: float = 60.0
    timeout: float = 60.0
    enabled: bool = True


@dataclass(frozen=True)
class ReadbackSettings:
    """Read-back of the frontend's descriptors from each responsible HSDir."""
    interval: float = 300.0   # after a confirmed upload, and then this often
    enabled: bool = True


@dataclass(frozen=True)
class StandbySettings:
    """A standby balancer: everything but uploads, until the primary's descriptors are
    missing or stale on the HSDirs for `takeover_after` seconds."""
    enabled: bool = False
    takeover_after: float = 300.0
    # a served descriptor whose revision counter says it was built longer ago than this is
    # stale (the primary republishes hourly; HSDirs drop descriptors after 3 h)
    stale_after: float = 2 * 3600.0


@dataclass(frozen=True)
class FrontendConfig:
    name: str
    key_file: str
    instances: tuple[InstanceConfig, ...]
    max_intro_points: int = MAX_INTRO_POINTS


@dataclass(frozen=True)
class BalancerConfig:
    publish: bool
    control: ControlEndpoint
    socks_port: int | None          # None: ask tor (GETINFO net/listeners/socks)
    state_dir: str
    frontends: tuple[FrontendConfig, ...]
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    source_format: str = "onionstack"  # or "onionbalance"
    path: str = ""
    metrics: MetricsSettings | None = None   # None: no /metrics
    frontend_probe: FrontendProbeSettings = field(default_factory=FrontendProbeSettings)
    readback: ReadbackSettings = field(default_factory=ReadbackSettings)
    standby: StandbySettings = field(default_factory=StandbySettings)
    load: LoadPolicy = field(default_factory=LoadPolicy)


# ----------------------------------------------------------------------------- helpers

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlevel = 3  # bounded: YAML aliases can make a small file a huge nested value


def _fail(where: str, value: Any, problem: str, fix: str) -> ConfigError:
    shown = _SHOW.repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(f"{where}: {problem} (got {shown}); {fix}")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, value, "must be a mapping", "write it as `key: value` lines")
    return value


def _unknown_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(sorted(allowed))}"
        )


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail(where, value, "must be a TCP port number", "use an integer from 1 to 65535")
    return value


def _positive(value: Any, where: str, *, integer: bool = False, maximum: float | None = None) -> float:
    """A finite positive number, at most `maximum`. NaN and infinity are refused by name:
    YAML reads `.nan` and `.inf` as floats, and NaN passes every `<`/`>` check (a NaN probe
    interval probed every tick, a NaN timeout turned probing off)."""
    ok_types = (int,) if integer else (int, float)
    kind = "a positive integer" if integer else "a positive number"
    span = f"{kind}" + (f" up to {maximum:g}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _fail(where, value, f"must be {kind}", f"use {span}")
    if not math.isfinite(value):
        raise _fail(where, value, "must be a finite number", f"use {span}")
    if value <= 0:
        raise _fail(where, value, f"must be {kind}", f"use {span}")
    if maximum is not None and value > maximum:
        raise _fail(where, value, f"must be at most {maximum:g}", f"use a value from 1 to {maximum:g}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, value, "must be true or false", "write `true` or `false` without quotes")
    return value


def normalize_address(value: Any, where: str) -> str:
    """Validate an instance onion address; returns the 56 characters without `.onion`."""
    from onion import keys  # local import: keys is another helper's module

    if not isinstance(value, str) or not value.strip():
        raise _fail(where, value, "must be a v3 onion address",
                    "write the instance's 56-character address, e.g. `abcd…xyz.onion`")
    text = value.strip().lower()
    try:
        pubkey = keys.parse_address(text)
    except ValueError as exc:
        raise _fail(where, value, f"is not a valid v3 onion address: {exc}",
                    "copy the instance's address from its tor `hostname` file") from None
    return keys.onion_address(pubkey)


def _instances(value: Any, where: str) -> tuple[InstanceConfig, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, value, "must be a non-empty list of instances",
                    "list at least one `- address: <56 chars>.onion`")
    seen: dict[str, int] = {}
    result = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if isinstance(item, str):  # tolerate a bare address
            item = {"address": item}
        item = _mapping(item, here)
        _unknown_keys(item, {"address", "name", "worker", "metrics"}, here)
        if "address" not in item:
            raise ConfigError(f"{here}: missing key `address`; add `address: <56 chars>.onion`")
        address = normalize_address(item["address"], f"{here}.address")
        if address in seen:
            raise _fail(f"{here}.address", item["address"],
                        f"duplicates {where}[{seen[address]}].address", "list each instance once")
        seen[address] = i
        name = item.get("name")
        worker = item.get("worker")
        if worker is not None and (not isinstance(worker, str) or not NAME_RE.match(worker)):
            raise _fail(f"{here}.worker", worker, "is not a valid worker name",
                        "use the worker's node name, e.g. worker-1 (letters, digits, '.', '_', '-')")
        metrics = None if item.get("metrics") is None else _metrics_url(item["metrics"], f"{here}.metrics")
        result.append(InstanceConfig(address=address, name=None if name is None else str(name), metrics=metrics,
                                     worker=worker))
    return tuple(result)


_METRICS_URL_RE = re.compile(r"^http://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})(/[A-Za-z0-9._~/-]*)?$")


def _metrics_url(value: Any, where: str) -> str:
    """An instance's tor MetricsPort: plain http (tor serves no TLS there), host and port."""
    m = _METRICS_URL_RE.match(value) if isinstance(value, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise _fail(where, value, "must be the instance tor's MetricsPort URL",
                    "write e.g. http://10.42.8.5:9035/metrics (tor's MetricsPort is plain HTTP)")
    return value if m.group(3) else value + "/metrics"


def _load(value: Any, where: str) -> LoadPolicy:
    if value is None:
        return LoadPolicy()
    if value is False:
        return LoadPolicy(enabled=False)
    value = _mapping(value, where)
    allowed = {"enabled", "effort_threshold", "queue_threshold", "overloaded_share", "recover_seconds",
               "metrics_interval"}
    _unknown_keys(value, allowed, where)
    d = LoadPolicy()
    return LoadPolicy(
        enabled=_bool(value.get("enabled", True), f"{where}.enabled"),
        effort_threshold=int(_positive(value.get("effort_threshold", d.effort_threshold),
                                       f"{where}.effort_threshold", integer=True, maximum=2**32)),
        queue_threshold=int(_positive(value.get("queue_threshold", d.queue_threshold),
                                      f"{where}.queue_threshold", integer=True, maximum=2**31)),
        overloaded_share=int(_positive(value.get("overloaded_share", d.overloaded_share),
                                       f"{where}.overloaded_share", integer=True, maximum=MAX_INTRO_POINTS)),
        recover_seconds=float(_positive(value.get("recover_seconds", d.recover_seconds),
                                        f"{where}.recover_seconds", maximum=86400)),
        metrics_interval=float(_positive(value.get("metrics_interval", d.metrics_interval),
                                         f"{where}.metrics_interval", maximum=3600)),
    )


def _check_frontends_vs_instances(frontends: list[FrontendConfig], addresses: list[str],
                                  where: list[str]) -> None:
    """A frontend configured as its own instance would advertise itself: refuse."""
    own = dict(zip(addresses, where))
    for fi, fe in enumerate(frontends):
        for ii, inst in enumerate(fe.instances):
            if inst.address in own:
                raise ConfigError(
                    f"{where[fi]}.instances[{ii}].address: {inst.address}.onion is the address of "
                    f"frontend key {own[inst.address]}; list the workers' instance addresses, "
                    "not the frontend's own"
                )


# ----------------------------------------------------------------------------- keys

def check_key_file_mode(path: str) -> None:
    """Refuse a key file other users could read: the master key is the site's identity."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist; create it with "
                          "`python -m onion keygen` or point key_file at tor's hs_ed25519_secret_key") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"key file {path} is not a regular file; point key_file at the key itself")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"key file {path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` (the master key must be readable only by its owner)"
        )


def load_frontend_key(path: str):
    """Load a master identity key from tor's `hs_ed25519_secret_key` file or a PKCS#8 PEM
    (OnionBalance's format); returns an `onion.keys.IdentityKey`."""
    from onion import keys

    check_key_file_mode(path)
    try:
        return keys.IdentityKey.from_file(path)
    except ValueError as exc:
        raise ConfigError(f"key file {path}: {exc}") from None


# ----------------------------------------------------------------------------- loading

def load_config(path: str, *, control_port: int | None = None, control_socket: str | None = None,
                state_dir: str | None = None, load_keys: bool = True) -> BalancerConfig:
    """Read and validate FILE; command-line overrides win over the file's `control`/`state_dir`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass --config with the balancer's YAML") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}; check the path, its "
                          "permissions and that it is UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', exc)}; fix the syntax there") from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level: `[[[[...]]]]` a few thousand
        # deep exhausts Python's stack. No balancer config nests more than 4 levels.
        raise ConfigError(f"config file {path} nests too deeply to be a balancer config; "
                          "see docs/balancer.md for the format") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for values that parse but do not construct,
        # e.g. a timestamp with month 13
        raise ConfigError(f"config file {path} holds a value YAML cannot construct ({exc}); "
                          "fix or quote it") from None
    if not isinstance(data, dict):
        raise _fail(path, data, "must be a YAML mapping with `frontends:` (or OnionBalance's `services:`)",
                    "see docs/balancer.md for the format")
    base_dir = os.path.dirname(os.path.abspath(path))
    if "services" in data and "frontends" not in data:
        cfg = _parse_onionbalance(data, base_dir)
    elif "frontends" in data:
        cfg = _parse_onionstack(data, base_dir)
    else:
        raise ConfigError(f"{path}: neither `frontends:` (onionstack) nor `services:` (OnionBalance) "
                          "is present; add a `frontends:` list (see docs/balancer.md)")
    control = cfg["control"]
    if control_port is not None or control_socket is not None:
        if control_port is not None and control_socket is not None:
            raise ConfigError("--control-port and --control-socket: give one of them, not both")
        control = ControlEndpoint(port=_port(control_port, "--control-port") if control_port else None,
                                  socket=control_socket)
    result = BalancerConfig(
        publish=cfg["publish"], control=control, socks_port=cfg["socks_port"],
        state_dir=state_dir or cfg["state_dir"], frontends=tuple(cfg["frontends"]),
        probe=cfg["probe"], source_format=cfg["format"], path=os.path.abspath(path),
        metrics=cfg.get("metrics"),
        frontend_probe=cfg.get("frontend_probe", FrontendProbeSettings()),
        readback=cfg.get("readback", ReadbackSettings()),
        standby=cfg.get("standby", StandbySettings()),
        load=cfg.get("load") or LoadPolicy(),
    )
    if load_keys:
        _check_keys(result)
    return result


def load_keys(cfg: BalancerConfig) -> dict[str, Any]:
    """frontend name -> IdentityKey; errors name the frontend."""
    result = {}
    for fe in cfg.frontends:
        try:
            result[fe.name] = load_frontend_key(fe.key_file)
        except ConfigError as exc:
            raise ConfigError(f"frontend {fe.name!r}: {exc}") from None
    return result


def _check_keys(cfg: BalancerConfig) -> None:
    loaded = load_keys(cfg)
    addresses = [loaded[fe.name].address for fe in cfg.frontends]
    where = [f"frontend {fe.name!r}" for fe in cfg.frontends]
    for i, addr in enumerate(addresses):
        if addr in addresses[:i]:
            raise ConfigError(f"{where[i]}: key {cfg.frontends[i].key_file} is the same key as "
                              f"{where[addresses.index(addr)]}; give each frontend its own key")
    _check_frontends_vs_instances(list(cfg.frontends), addresses, where)


def _control(value: Any, where: str) -> ControlEndpoint:
    value = _mapping(value, where)
    _unknown_keys(value, {"port", "socket"}, where)
    if ("port" in value) == ("socket" in value):
        raise _fail(where, value, "needs exactly one of `port` and `socket`",
                    "write `control: {port: 9051}` or `control: {socket: /run/tor/control}`")
    if "port" in value:
        return ControlEndpoint(port=_port(value["port"], f"{where}.port"))
    sock = value["socket"]
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _fail(f"{where}.socket", sock, "must be an absolute path", "use e.g. /run/tor/control")
    return ControlEndpoint(socket=sock)


def _probe(value: Any, where: str) -> ProbeSettings:
    if value is None:
        return ProbeSettings()
    if value is False:
        return ProbeSettings(enabled=False)
    value = _mapping(value, where)
    _unknown_keys(value, {"port", "interval", "timeout", "failures", "enabled"}, where)
    d = ProbeSettings()
    return ProbeSettings(
        port=_port(value.get("port", d.port), f"{where}.port"),
        interval=float(_positive(value.get("interval", d.interval), f"{where}.interval", maximum=3600)),
        timeout=float(_positive(value.get("timeout", d.timeout), f"{where}.timeout", maximum=600)),
        failures=int(_positive(value.get("failures", d.failures), f"{where}.failures", integer=True, maximum=100)),
        enabled=_bool(value.get("enabled", True), f"{where}.enabled"),
    )


def _metrics(value: Any, where: str) -> MetricsSettings | None:
    if value is None or value is False:
        return None
    value = _mapping(value, where)
    _unknown_keys(value, {"listen"}, where)
    from onion.metrics import parse_listen  # prometheus_client is imported only when serving

    try:
        host, port = parse_listen(value.get("listen", "127.0.0.1:9961"))
    except ValueError:
        raise _fail(f"{where}.listen", value.get("listen"), "must be a loopback address and port",
                    "write `listen: 127.0.0.1:9961` (metrics are served on loopback only)") from None
    return MetricsSettings(host=host, port=port)


def _frontend_probe(value: Any, where: str) -> FrontendProbeSettings:
    if value is None:
        return FrontendProbeSettings()
    if value is False:
        return FrontendProbeSettings(enabled=False)
    value = _mapping(value, where)
    _unknown_keys(value, {"port", "path", "interval", "timeout", "enabled"}, where)
    d = FrontendProbeSettings()
    path = value.get("path", d.path)
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in path) \
            or len(path) > 1024:
        raise _fail(f"{where}.path", path, "must be an absolute URL path without spaces",
                    "use e.g. / or /healthz")
    return FrontendProbeSettings(
        port=_port(value.get("port", d.port), f"{where}.port"), path=path,
        interval=float(_positive(value.get("interval", d.interval), f"{where}.interval", maximum=3600)),
        timeout=float(_positive(value.get("timeout", d.timeout), f"{where}.timeout", maximum=600)),
        enabled=_bool(value.get("enabled", True), f"{where}.enabled"))


def _readback(value: Any, where: str) -> ReadbackSettings:
    if value is None:
        return ReadbackSettings()
    if value is False:
        return ReadbackSettings(enabled=False)
    value = _mapping(value, where)
    _unknown_keys(value, {"interval", "enabled"}, where)
    return ReadbackSettings(
        interval=float(_positive(value.get("interval", ReadbackSettings.interval), f"{where}.interval",
                                 maximum=3 * 3600)),
        enabled=_bool(value.get("enabled", True), f"{where}.enabled"))


def _standby(value: Any, where: str) -> StandbySettings:
    if value is None or value is False:
        return StandbySettings()
    if value is True:
        return StandbySettings(enabled=True)
    value = _mapping(value, where)
    _unknown_keys(value, {"enabled", "takeover_after", "stale_after"}, where)
    d = StandbySettings()
    return StandbySettings(
        enabled=_bool(value.get("enabled", True), f"{where}.enabled"),
        takeover_after=float(_positive(value.get("takeover_after", d.takeover_after), f"{where}.takeover_after",
                                       maximum=6 * 3600)),
        stale_after=float(_positive(value.get("stale_after", d.stale_after), f"{where}.stale_after",
                                    maximum=3 * 3600)))


def _resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _parse_onionstack(data: dict, base_dir: str) -> dict:
    _unknown_keys(data, {"publish", "control", "socks_port", "state_dir", "frontends", "probe", "metrics",
                         "frontend_probe", "readback", "standby", "load"}, "config")
    # Scalars first, so their errors are not hidden behind a frontend's.
    publish = _bool(data.get("publish", True), "publish")
    control = _control(data.get("control", {"port": DEFAULT_CONTROL_PORT}), "control")
    # No socks_port: ask tor where its SocksPort listens (a fixed default of 9050 probed
    # nothing on a tor listening elsewhere, and every instance then looked down).
    socks_port = None if data.get("socks_port") is None else _port(data["socks_port"], "socks_port")
    state_dir = data.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str) or not state_dir:
        raise _fail("state_dir", state_dir, "must be a directory path", f"use e.g. {DEFAULT_STATE_DIR}")
    probe = _probe(data.get("probe"), "probe")
    extras = {"metrics": _metrics(data.get("metrics"), "metrics"),
              "frontend_probe": _frontend_probe(data.get("frontend_probe"), "frontend_probe"),
              "readback": _readback(data.get("readback"), "readback"),
              "standby": _standby(data.get("standby"), "standby")}
    load = _load(data.get("load"), "load")
    frontends_raw = data["frontends"]
    if not isinstance(frontends_raw, list) or not frontends_raw:
        raise _fail("frontends", frontends_raw, "must be a non-empty list",
                    "add `- name: …, key_file: …, instances: […]` entries")
    frontends: list[FrontendConfig] = []
    names: dict[str, int] = {}
    for i, item in enumerate(frontends_raw):
        here = f"frontends[{i}]"
        item = _mapping(item, here)
        _unknown_keys(item, {"name", "key_file", "instances", "max_intro_points"}, here)
        for required in ("name", "key_file", "instances"):
            if required not in item:
                raise ConfigError(f"{here}: missing key `{required}`; every frontend needs name, "
                                  "key_file and instances")
        name = item["name"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _fail(f"{here}.name", name, "is not a valid name",
                        "use letters, digits, '.', '_' or '-' (1-64 chars, starting with a letter or digit)")
        if name in names:
            raise _fail(f"{here}.name", name, f"duplicates frontends[{names[name]}].name", "give each frontend its own name")
        names[name] = i
        key_file = item["key_file"]
        if not isinstance(key_file, str) or not key_file:
            raise _fail(f"{here}.key_file", key_file, "must be a file path",
                        "point it at tor's hs_ed25519_secret_key or an OnionBalance PEM key")
        max_ip = int(_positive(item.get("max_intro_points", MAX_INTRO_POINTS), f"{here}.max_intro_points",
                               integer=True, maximum=MAX_INTRO_POINTS))
        frontends.append(FrontendConfig(name=name, key_file=_resolve(key_file, base_dir),
                                        instances=_instances(item["instances"], f"{here}.instances"),
                                        max_intro_points=max_ip))
    return {
        "format": "onionstack", "publish": publish, "control": control, "socks_port": socks_port,
        "state_dir": _resolve(state_dir, base_dir), "probe": probe, "frontends": frontends, "load": load,
        **extras,
    }


# OnionBalance's top-level keys we accept and ignore (they configure its status socket/logging).
_ONIONBALANCE_IGNORED = {"status-socket-location", "log-level", "log-location", "REFRESH_INTERVAL",
                         "PUBLISH_CHECK_INTERVAL", "INITIAL_DELAY", "STATUS_SOCKET_LOCATION",
                         "TOR_CONTROL_SOCKET", "TOR_ADDRESS", "TOR_PORT", "TOR_CONTROL_PASSWORD",
                         "DESCRIPTOR_VALIDITY_PERIOD", "DESCRIPTOR_OVERLAP_PERIOD", "DESCRIPTOR_UPLOAD_PERIOD"}


def _parse_onionbalance(data: dict, base_dir: str) -> dict:
    _unknown_keys(data, {"services"} | _ONIONBALANCE_IGNORED, "config")
    services = data["services"]
    if not isinstance(services, list) or not services:
        raise _fail("services", services, "must be a non-empty list",
                    "add `- key: FILE` entries with `instances:` (OnionBalance's format)")
    frontends: list[FrontendConfig] = []
    used: set[str] = set()
    for i, item in enumerate(services):
        here = f"services[{i}]"
        item = _mapping(item, here)
        _unknown_keys(item, {"key", "instances"}, here)
        if "key" not in item:
            raise ConfigError(f"{here}: missing key `key`; set it to the frontend's key file")
        if "instances" not in item:
            raise ConfigError(f"{here}: missing key `instances`; list the backend instances' addresses")
        key = item["key"]
        if not isinstance(key, str) or not key:
            raise _fail(f"{here}.key", key, "must be a file path", "point it at the frontend's key file")
        # Name the frontend after its key file (OnionBalance names them `<address>.key`).
        stem_name = Path(key).stem
        name = stem_name if NAME_RE.match(stem_name) and stem_name not in used else f"service{i + 1}"
        used.add(name)
        frontends.append(FrontendConfig(name=name, key_file=_resolve(key, base_dir),
                                        instances=_instances(item["instances"], f"{here}.instances")))
    return {
        "format": "onionbalance",
        "publish": True,
        "control": ControlEndpoint(port=DEFAULT_CONTROL_PORT),
        "socks_port": None,           # OnionBalance has no such setting: ask tor
        "state_dir": DEFAULT_STATE_DIR,
        "probe": ProbeSettings(),
        "frontends": frontends,
    }
