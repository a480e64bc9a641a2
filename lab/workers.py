"""Lab workers: each is M tor daemons (OnionBalance instances with `ob_config`) plus one
nginx, all rendered by `nodes.render.render_worker` -- the same templates AWS workers get --
into `<state>/workers/wN/` and started as ordinary processes.

Lab-only differences, all through the `Machine` the spec builder takes: every torrc
`%include`s the private network's options, daemons run as the lab's user, nginx trusts the
lab's test CA; and each worker's `originAddress` is its own origin listener (so a response
says which worker carried it). tor's seccomp sandbox is off, as on AWS (TorTuning).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.procs import ProcessRegistry
from lab.services import read_hostname

SITE_NAME = "lab"


@dataclass
class Worker:
    index: int
    root: str
    tor_daemons: int
    instance_addresses: list[str]  # one per tor daemon, without ".onion"
    tag: str = "w"
    commands: dict[str, list[str]] = field(default_factory=dict)  # process name -> argv
    metrics_ports: list[int] = field(default_factory=list)  # tor MetricsPorts on 127.0.0.1, daemon order

    @property
    def name(self) -> str:
        return f"{self.tag}{self.index}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Worker":
        return cls(**data)

    def process_names(self) -> list[str]:
        return [f"{self.name}-tor{d}" for d in range(1, self.tor_daemons + 1)] + [f"{self.name}-nginx"]


def onion_certificate(onion_host: str, days: int = 365) -> tuple[str, str]:
    """(chain PEM, key PEM): a self-signed certificate for `onion_host` and its subdomains,
    the shape the stack's pulumi-tls certificate has for `https: selfSigned` (ECDSA P-256,
    SANs onion + *.onion, serverAuth). A reader trusts it by taking it as its CA file."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, onion_host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(onion_host), x509.DNSName("*." + onion_host)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def worker_spec(root: Path, *, frontend_address: str, domain: str, origin_port: int,
                ca_file: str, network_torrc: str, tor_daemons: int, intro_points: int,
                https: bool = False, dos=None, metrics_ports: tuple[int, ...] = (),
                foreign_onions: tuple[tuple[str, str], ...] = ()):
    """The WorkerSpec the AWS program builds (nodes.roles.worker_spec, the same builder),
    on the lab's machine: its paths, its user, its CA and the private network. `https`: the
    site also serves 443 (certificate staged by start_worker); `dos`: the site's
    nodes.render.SiteDos (None: the defaults); `foreign_onions`: (domain, onion) of other
    onion sites, as the stack config's `foreignOnions`."""
    from nodes.render import Layout, SiteDos, SiteSpec
    from nodes.roles import Machine, worker_spec as build

    site = SiteSpec(name=SITE_NAME, domain=domain, onion_address=frontend_address,
                    origin_address=f"127.0.0.1:{origin_port}", https=https, dos=dos or SiteDos(),
                    foreign_onions=tuple(foreign_onions))
    machine = Machine(layout=Layout(root=str(root)), tor_user=None, nginx_user=None,
                      tor_include=network_torrc, trusted_ca_file=ca_file, tor_metrics_base=None)
    from dataclasses import replace

    spec = build((site,), resolver="127.0.0.1", tor_daemons=tor_daemons, intro_points=intro_points,
                 machine=machine)
    return replace(spec, metrics_ports=tuple(metrics_ports)) if metrics_ports else spec


def write_rendered(root: Path, files) -> None:
    for rel, f in sorted(files.items()):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.content)
        os.chmod(dest, f.mode)


def prepare_dirs(spec) -> None:
    """Directories the daemons need before they start (on AWS the bootstrap script makes
    them): tor refuses data and hidden-service dirs that others can read."""
    layout = spec.layout
    for daemon in spec.daemon_names:
        for d in [spec.data_dir(daemon)] + [spec.hs_dir(daemon, s) for s in spec.sites]:
            Path(d).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        Path(layout.path("lib_dir", "nginx", sub)).mkdir(parents=True, exist_ok=True)
    for name in ("run_dir", "log_dir"):
        Path(layout.path(name)).mkdir(parents=True, exist_ok=True)


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} rejected the rendered config:\n{proc.stdout}{proc.stderr}")


def start_worker(procs: ProcessRegistry, state_dir: Path, index: int, tag: str = "w",
                 tls: tuple[str, str] | None = None, **spec_kw) -> Worker:
    """`tls`: (chain PEM, key PEM) of the site's certificate, for an HTTPS site; staged
    where the AWS worker gets it (the key 0600), as the remote step's secret payload does."""
    from nodes.render import render_worker, worker_secret_files

    root = Path(state_dir) / "workers" / f"{tag}{index}"
    spec = worker_spec(root, **spec_kw)
    write_rendered(root, render_worker(spec))
    if spec.sites[0].https:
        write_rendered(root, worker_secret_files(spec, {SITE_NAME: tls}))
    prepare_dirs(spec)
    nginx_conf = spec.layout.path("etc_dir", "nginx", "nginx.conf")
    nginx_cmd = ["nginx", "-c", nginx_conf, "-e", spec.layout.path("log_dir", "nginx-start.log")]
    # The real tools check the rendered files first, as the AWS bootstrap does.
    _check(nginx_cmd + ["-t", "-q"], "nginx -t")
    torrcs = [spec.layout.path("etc_dir", "tor", f"{d}.torrc") for d in spec.daemon_names]
    for torrc in torrcs:
        _check(["tor", "--verify-config", "-f", torrc], "tor --verify-config")
    worker = Worker(index=index, root=str(root), tor_daemons=spec.tor_daemons,
                    instance_addresses=[], tag=tag, metrics_ports=list(spec.metrics_ports))
    worker.commands[f"{worker.name}-nginx"] = nginx_cmd + ["-g", "daemon off;"]
    for daemon, torrc in zip(spec.daemon_names, torrcs):
        worker.commands[f"{worker.name}-{daemon}"] = ["tor", "-f", torrc]
    for name, argv in worker.commands.items():
        procs.start(name, argv)
    for daemon in spec.daemon_names:
        host = read_hostname(Path(spec.hs_dir(daemon, spec.sites[0])))
        worker.instance_addresses.append(host.removesuffix(".onion"))
    return worker


def stop_worker(procs: ProcessRegistry, worker: Worker) -> list[str]:
    return [n for n in worker.process_names() if procs.stop(n)]


def restart_worker(procs: ProcessRegistry, worker: Worker) -> list[str]:
    """Start the worker's stopped processes again: same files, same instance keys."""
    started = []
    for name, argv in worker.commands.items():
        if not procs.is_running(name):
            procs.start(name, argv)
            started.append(name)
    return started
