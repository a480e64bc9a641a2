"""The lab as a whole: the same parts that `__main__.py` composes on AWS, on 127.0.0.1.

Order (as in the softmap runbook): private Tor network -> origin -> frontend key -> workers
(tor instances + nginx, from the worker templates) -> balancer (its tor + the balancer
core, or OnionBalance 0.2.4 as the baseline). Everything lives under one state directory;
`lab.json` there records what `status` and `down` need.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab import balancer as balancer_mod
from lab import origin as origin_mod
from lab.client import wait_reachable
from lab.ports import PortAllocator, wait_for_port
from lab.procs import ProcessRegistry
from lab.tornet import TorNetwork, TorNode
from lab.workers import Worker, restart_worker, start_worker, stop_worker

Progress = Callable[[str], None]

# Subdirectories `up` may clear from an earlier run; anything else (ob-venv) is kept.
RUN_SUBDIRS = ("net", "pids", "logs", "origin", "workers", "balancer", "keys", "control")


@dataclass
class Lab:
    state_dir: Path
    procs: ProcessRegistry
    ports: PortAllocator
    voting_interval: int = 20
    progress: Progress = print
    net: TorNetwork | None = None
    info: dict = field(default_factory=dict)  # persisted as lab.json
    tie_to_parent: bool = False  # daemons die with this process (tests, benchmark)

    @classmethod
    def create(cls, state_dir: Path, *, tie_to_parent: bool = False, voting_interval: int = 20,
               progress: Progress = print) -> "Lab":
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        procs = ProcessRegistry(state_dir, tie_to_parent=tie_to_parent)
        if any(procs.is_running(n) for n in procs.names()):
            raise RuntimeError(f"a lab is already running in {state_dir}: "
                               f"run `python -m lab down --state-dir {state_dir}` first")
        for sub in RUN_SUBDIRS:
            shutil.rmtree(state_dir / sub, ignore_errors=True)
        (state_dir / "lab.json").unlink(missing_ok=True)
        lab = cls(state_dir=state_dir, procs=procs, ports=PortAllocator(),
                  voting_interval=voting_interval, progress=progress, tie_to_parent=tie_to_parent)
        lab.info = {"state_dir": str(state_dir), "voting_interval": voting_interval}
        return lab

    @classmethod
    def load(cls, state_dir: Path) -> "Lab":
        state_dir = Path(state_dir).resolve()
        path = state_dir / "lab.json"
        if not path.exists():
            raise FileNotFoundError(f"no lab in {state_dir} (no lab.json): run `python -m lab up`")
        lab = cls(state_dir=state_dir, procs=ProcessRegistry(state_dir), ports=PortAllocator())
        lab.info = json.loads(path.read_text())
        lab.voting_interval = lab.info["voting_interval"]
        if (state_dir / "network.json").exists():
            lab.net = TorNetwork.load(state_dir)
        return lab

    def save(self) -> None:
        (self.state_dir / "lab.json").write_text(json.dumps(self.info, indent=2) + "\n")

    # ---------------------------------------------------------------- steps
    def start_network(self, address: str = "127.0.0.1") -> None:
        """`address`: where the relays listen (lab/tornet.py); 127.0.0.1 unless other hosts
        must reach the network (the rehearsal)."""
        owner = self.procs.start_anchor() if self.tie_to_parent else None
        self.net = TorNetwork.create(self.state_dir, self.ports, voting_interval=self.voting_interval,
                                     owner_pid=owner, address=address)
        self.info["socks_port"] = self.net.client.socks_port
        self.save()
        took = self.net.start(self.procs, self.progress)
        self.info["network_seconds"] = round(took, 1)
        self.save()

    def start_origin(self, listeners: int, domain: str = origin_mod.DEFAULT_DOMAIN,
                     address: str = "127.0.0.1") -> None:
        files = origin_mod.make_test_ca(self.state_dir, domain)
        ports = [self.ports.take() for _ in range(listeners)]
        self.procs.start("origin", [
            os.environ.get("LAB_PYTHON", _python()), "-m", "lab.origin",
            "--state-dir", str(self.state_dir), "--domain", domain, "--address", address,
            "--ports", ",".join(map(str, ports))], cwd=_repo_root())
        for port in ports:
            wait_for_port(port, 15, "origin", host=address)
        self.info["origin"] = {"domain": domain, "ports": ports, "ca": str(files["ca"]), "address": address}
        self.save()
        self.progress(f"origin: https://{domain} on {address} ports {ports} (test CA {files['ca']})")

    def make_frontend_key(self, tag: str = "lab"):
        """A fresh frontend (master) identity, as a tor hs_ed25519_secret_key file (0600).

        `python -m onion keygen` makes the same kind of key for a real site; the lab's key
        is throw-away and never leaves the state dir."""
        from onion.keys import IdentityKey

        key = IdentityKey.generate()
        key_dir = key.write_hs_dir(self.state_dir / "keys" / tag)
        self.info["frontend"] = key.hostname
        self.info["frontend_key_file"] = str(key_dir / "hs_ed25519_secret_key")
        self.info.pop("frontend_cert", None)
        self.save()
        return key

    def make_frontend_certificate(self) -> Path:
        """A self-signed certificate for the current frontend and its subdomains (what the
        stack makes for `https: selfSigned`); workers started afterwards serve HTTPS with
        it. Returns the certificate file, the reader's `--cacert` (key beside it, 0600)."""
        from lab.workers import onion_certificate

        chain, key = onion_certificate(self.info["frontend"])
        tls_dir = Path(self.info["frontend_key_file"]).parent / "tls"
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        (tls_dir / "onion.crt").write_text(chain)
        key_file = tls_dir / "onion.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key)
        self.info["frontend_cert"] = str(tls_dir / "onion.crt")
        self.save()
        return tls_dir / "onion.crt"

    def frontend_url(self, path: str = "/") -> str:
        scheme = "https" if self.info.get("frontend_cert") else "http"
        return f"{scheme}://{self.info['frontend']}{path}"

    def start_workers(self, count: int, *, tor_daemons: int = 2, intro_points: int = 3,
                      tag: str = "w", first_listener: int = 0, dos=None,
                      metrics: bool = False, foreign_onions: dict[str, str] | None = None) -> list[Worker]:
        """`count` workers for the current frontend, each proxying to its own origin listener
        (first_listener, first_listener + 1, ...). They serve HTTPS too when the frontend
        has a certificate (make_frontend_certificate); `dos`: the site's SiteDos; `metrics`:
        each tor daemon gets a MetricsPort on 127.0.0.1 (Worker.metrics_ports);
        `foreign_onions`: clearnet domain -> onion address of other onion sites."""
        origin = self.info["origin"]
        if first_listener + count > len(origin["ports"]):
            raise ValueError(f"workers: {count} workers from listener {first_listener} need "
                             f"{first_listener + count} origin listeners, the origin has "
                             f"{len(origin['ports'])}; start the origin with more listeners")
        workers = []
        for i in range(1, count + 1):
            worker = start_worker(
                self.procs, self.state_dir, i, tag=tag,
                frontend_address=self.info["frontend"].removesuffix(".onion"),
                domain=origin["domain"], origin_port=origin["ports"][first_listener + i - 1],
                ca_file=origin["ca"],
                network_torrc=str(self.net.network_torrc), tor_daemons=tor_daemons,
                intro_points=intro_points, dos=dos, **self._tls_args(),
                foreign_onions=tuple(sorted((foreign_onions or {}).items())),
                metrics_ports=tuple(self.ports.take() for _ in range(tor_daemons)) if metrics else ())
            workers.append(worker)
            self.progress(f"worker {worker.name}: {tor_daemons} tor instances "
                          f"{', '.join(a[:12] + '...' for a in worker.instance_addresses)} + nginx "
                          f"-> origin listener {first_listener + i - 1}")
        self.info["workers"] = self.info.get("workers", []) + [w.to_json() for w in workers]
        self.save()
        return workers

    def _tls_args(self) -> dict:
        cert = self.info.get("frontend_cert")
        if not cert:
            return {"https": False}
        return {"https": True, "tls": (Path(cert).read_text(), Path(cert).with_suffix(".key").read_text())}

    def start_control_service(self) -> str:
        """A plain onion service (no balancer, no workers) in front of a static HTTP server:
        the control group for probes. When a frontend probe and a control probe fail at the
        same time, the network or the machine was at fault, not the balancer."""
        from lab.services import start_plain_service

        root = self.state_dir / "control"
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text("control\n")
        port = self.ports.take()
        self.procs.start("control-http", [_python(), "-m", "http.server", str(port), "--bind",
                                          "127.0.0.1", "--directory", str(root)])
        wait_for_port(port, 15, "control http server")
        _, hostname = start_plain_service(self.net, self.procs, self.ports, "controlhs", port)
        self.info["control"] = hostname
        self.save()
        self.progress(f"control: plain onion service {hostname}")
        return hostname

    @property
    def workers(self) -> list[Worker]:
        return [Worker.from_json(w) for w in self.info.get("workers", [])]

    def instance_addresses(self) -> list[str]:
        return [a for w in self.workers for a in w.instance_addresses]

    def kill_worker(self, worker: Worker) -> list[str]:
        return stop_worker(self.procs, worker)

    def restart_worker(self, worker: Worker) -> list[str]:
        return restart_worker(self.procs, worker)

    def start_balancer(self, kind: str = "onion", tag: str = "balancer", *,
                       key_file: Path | None = None, instances: list[str] | None = None,
                       extra_config: dict | None = None, tor_metrics: bool = False,
                       metrics: dict[str, str] | None = None) -> dict:
        """The balancer's tor (gated as the notes say), then the balancer itself, for the
        frontend key (default: the last one made) and instances (default: every worker's).
        Returns its record (also in info["balancers"][tag]; info["balancer"] is the last).
        `metrics`: instance address -> the MetricsPort URL the balancer reads for it, over
        the workers' own (load-aware intro selection)."""
        if kind not in balancer_mod.KINDS:
            raise ValueError(f"balancer: {kind!r} is not one of {', '.join(balancer_mod.KINDS)}")
        if kind == "onionbalance" and self.voting_interval != balancer_mod.ONIONBALANCE_VOTING_INTERVAL:
            raise ValueError(f"voting_interval: OnionBalance 0.2.4 works only with "
                             f"{balancer_mod.ONIONBALANCE_VOTING_INTERVAL} s on a test network, "
                             f"the lab has {self.voting_interval} s")
        # tor nicknames: 1..19 characters [A-Za-z0-9].
        nickname = "tor" + "".join(c for c in tag if c.isascii() and c.isalnum())[:16]
        tor_metrics_port = self.ports.take() if tor_metrics else None
        node = self.net.add_tor(self.procs, self.ports, nickname,
                                balancer_mod.balancer_tor_lines(kind, tor_metrics_port), socks=True) \
            if nickname not in {n.nickname for n in self.net.nodes} else self.net.node(nickname)
        if not self.procs.is_running(node.process_name):
            self.net.start_tor(self.procs, node)
        balancer_mod.wait_balancer_tor_ready(self.net, self.procs, node, progress=self.progress)
        self.progress(f"balancer tor: bootstrapped, holds every HSDir (control 127.0.0.1:"
                      f"{node.control_port}, socks 127.0.0.1:{node.socks_port})")
        key_file = Path(key_file or self.info["frontend_key_file"])
        instances = instances if instances is not None else self.instance_addresses()
        bdir = self.state_dir / "balancer" / tag
        if kind == "onion":
            # Workers started with metrics=True: the balancer reads their MetricsPorts.
            metrics = {**{a: f"http://127.0.0.1:{port}/metrics" for w in self.workers
                          for a, port in zip(w.instance_addresses, w.metrics_ports)}, **(metrics or {})}
            config = balancer_mod.write_onion_config(
                bdir / "balancer.yaml", control_port=node.control_port,
                socks_port=node.socks_port, state_dir=bdir / "state", key_file=key_file,
                instances=instances, metrics=metrics, extra=extra_config,
                workers={a: w.name for w in self.workers for a in w.instance_addresses})
            argv = balancer_mod.onion_command(config, node.control_port)
        else:
            script = balancer_mod.ensure_onionbalance(self.ob_venv)
            config = balancer_mod.write_onionbalance_config(
                bdir / "config.yaml", key_file=key_file, instances=instances)
            argv = balancer_mod.onionbalance_command(script, config, node.control_port)
        self.procs.start(tag, argv, cwd=_repo_root())
        record = {"kind": kind, "process": tag, "tor": node.nickname, "config": str(config),
                  "state_dir": str(bdir / "state"), "argv": argv, "started": time.time(),
                  "tor_metrics_port": tor_metrics_port}
        self.info["balancer"] = record
        self.info.setdefault("balancers", {})[tag] = record
        self.save()
        self.progress(f"balancer: {kind} started ({' '.join(argv[1:3]) if kind == 'onion' else 'onionbalance'}"
                      f" --config {config})")
        return record

    @property
    def ob_venv(self) -> Path:
        """OnionBalance's own venv, shared by every lab of this checkout (installed once)."""
        return _repo_root() / ".lab" / "ob-venv"

    def balancer_tor(self) -> TorNode:
        return self.net.node(self.info["balancer"]["tor"])

    def stop_balancer(self) -> bool:
        return self.procs.stop(self.info["balancer"]["process"])

    def restart_balancer(self) -> None:
        """Stop the balancer process and start it again with the same config and key."""
        b = self.info["balancer"]
        self.procs.stop(b["process"])
        self.procs.start(b["process"], b["argv"], cwd=_repo_root())
        b["started"] = time.time()
        self.save()

    def reload_balancer(self) -> None:
        """SIGHUP: the balancer core re-reads its config."""
        import signal

        pid = self.procs.pid(self.info["balancer"]["process"])
        if pid is None or not self.procs.is_running(self.info["balancer"]["process"]):
            raise RuntimeError("balancer is not running")
        os.kill(pid, signal.SIGHUP)

    def balancer_status(self) -> dict:
        """The balancer core's status.json (what `python -m onion status --json` prints)."""
        from onion.status import read_status

        return read_status(self.info["balancer"]["state_dir"])

    def wait_frontend(self, timeout: float = 180.0) -> float:
        """Block until the frontend answers through the client; returns seconds waited."""
        path = "/entries" if self.info.get("app") else "/"
        resp, took = wait_reachable(self.net.client.socks_port, self.frontend_url(path),
                                    timeout=timeout, what="frontend", cacert=self.info.get("frontend_cert"),
                                    progress=self.progress)
        return took

    def start_app_site(self, count: int = 2, *, tor_daemons: int = 2, intro_points: int = 3) -> list:
        """The sample app site (lab/apps.py): PostgreSQL on 127.0.0.1 from the database
        templates, build 1 of the guestbook migrated, `count` workers each running it
        behind nginx (app-site.conf) and tor instances, and a fresh frontend key for it.
        The balancer is started by the caller (start_balancer)."""
        from lab import apps

        db_port = self.ports.take()
        self.app_database = apps.start_database(self.procs, self.state_dir, db_port)
        self.progress(f"database: PostgreSQL on 127.0.0.1:{db_port}, TLS from the lab CA "
                      f"{self.app_database.ca_file}, role and database app_{apps.APP}")
        module = apps.build(self.state_dir, "1")
        apps.migrate(self.app_database, module, "1")
        self.make_frontend_key(tag=apps.APP)
        self.app_workers = []
        for i in range(1, count + 1):
            worker = apps.start_app_worker(
                self.procs, self.state_dir, i, frontend_address=self.info["frontend"].removesuffix(".onion"),
                ports=(self.ports.take(), self.ports.take()), network_torrc=str(self.net.network_torrc), tor_daemons=tor_daemons,
                intro_points=intro_points)
            apps.start_app(self.procs, worker, self.app_database, module, "1")
            self.app_workers.append(worker)
            self.progress(f"worker {worker.name}: {tor_daemons} tor instances + nginx -> guestbook build 1 on "
                          f"127.0.0.1:{worker.host_port}")
        self.info["app"] = {"name": apps.APP, "database_port": db_port, "ca": self.app_database.ca_file,
                            "workers": [w.to_json() for w in self.app_workers]}
        self.save()
        return self.app_workers

    def up(self, workers: int = 2, balancer: str = "onion", tor_daemons: int = 2, https: bool = False,
           app: bool = False) -> None:
        t0 = time.monotonic()
        self.start_network()
        if app:
            self.start_app_site(workers, tor_daemons=tor_daemons)
            self.progress(f"frontend (app site): {self.info['frontend']}")
            self.start_balancer(balancer, instances=[a for w in self.app_workers for a in w.instance_addresses])
            self.progress("waiting for the app site to answer through the client ...")
            took = self.wait_frontend()
            self.info["up_seconds"] = round(time.monotonic() - t0, 1)
            self.save()
            self.progress(f"app site reachable {took:.0f} s after the balancer started "
                          f"({self.info['up_seconds']:.0f} s in total)")
            return
        self.start_origin(listeners=workers)
        self.make_frontend_key()
        self.progress(f"frontend: {self.info['frontend']}")
        if https:
            cert = self.make_frontend_certificate()
            self.progress(f"frontend certificate (self-signed, the onion and its subdomains): {cert}")
        self.start_workers(workers, tor_daemons=tor_daemons)
        self.start_balancer(balancer)
        self.progress("waiting for the frontend to answer through the client ...")
        took = self.wait_frontend()
        self.info["up_seconds"] = round(time.monotonic() - t0, 1)
        self.save()
        self.progress(f"frontend reachable {took:.0f} s after the balancer started "
                      f"({self.info['up_seconds']:.0f} s in total)")

    # ---------------------------------------------------------------- teardown / status
    def down(self) -> list[str]:
        stopped = self.procs.stop_all()
        self.info["stopped_at"] = time.time()
        if (self.state_dir / "lab.json").exists():
            self.save()
        return stopped

    def status_lines(self, start_command: str = "python -m lab up") -> list[str]:
        lines = [f"state dir: {self.state_dir}"]
        running = [n for n in self.procs.names() if self.procs.is_running(n)]
        if not running:
            # After `down` (or a crash) the per-process view would list every part as
            # stopped and still print a curl line that cannot work: say it plainly.
            when = self.info.get("stopped_at")
            how = (f"stopped by `python -m lab down` at {time.strftime('%H:%M:%S', time.localtime(when))}"
                   if when else "its processes have exited")
            lines.append(f"nothing is running: {how}")
            lines.append(f"logs and configs of the last run: {self.state_dir}")
            lines.append(f"start it again: {start_command}")
            return lines
        stopped = [n for n in self.procs.names() if n not in running]
        lines.append(f"processes running: {len(running)}" +
                     (f" (not running: {', '.join(stopped)})" if stopped else ""))
        if running:
            rss, cpu = self.resource_use()
            lines.append(f"resources: {rss:.0f} MiB RSS in total, {cpu:.1f} CPU seconds so far")
        if self.net:
            for node, state in self.net.status(self.procs):
                lines.append(f"  tor {node.nickname:10} {node.role:9} control 127.0.0.1:"
                             f"{node.control_port}  {state}")
        if "origin" in self.info:
            o = self.info["origin"]
            lines.append(f"origin: https://{o['domain']} ports {o['ports']} "
                         f"({'running' if self.procs.is_running('origin') else 'stopped'})")
        for w in self.workers:
            states = ["up" if self.procs.is_running(n) else "DOWN" for n in w.process_names()]
            lines.append(f"worker {w.name}: " + ", ".join(
                f"{n} {st}" for n, st in zip(w.process_names(), states)))
            for a in w.instance_addresses:
                lines.append(f"    instance {a}.onion")
        if "balancer" in self.info:
            b = self.info["balancer"]
            lines.append(f"balancer: {b['kind']} "
                         f"({'running' if self.procs.is_running(b['process']) else 'stopped'}), "
                         f"config {b['config']}")
        if "frontend" in self.info:
            lines.append(f"frontend: {self.info['frontend']}")
            if self.info.get("app"):  # the guestbook: a write and a read (python -m lab up --app)
                write, read = self.app_curl_lines()
                lines += [f"write: {write}", f"read: {read}"]
            else:
                lines.append(f"try: {self.curl_line()}")
        return lines

    def resource_use(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds) summed over the lab's running processes (from /proc)."""
        rss_kib, ticks = 0, 0
        for name in self.procs.names():
            pid = self.procs.pid(name)
            if pid is None or not self.procs.is_running(name):
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            ticks += int(stat[11]) + int(stat[12])
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
        return rss_kib / 1024, ticks / os.sysconf("SC_CLK_TCK")

    def app_curl_lines(self) -> list[str]:
        """Write one line through the onion address, then read every line back."""
        proxy = f"curl --socks5-hostname 127.0.0.1:{self.info['socks_port']}"
        return [f"{proxy} --data-urlencode 'text=hello from the lab' {self.frontend_url('/entries')}",
                f"{proxy} {self.frontend_url('/entries')}"]

    def curl_line(self) -> str:
        cacert = f"--cacert {self.info['frontend_cert']} " if self.info.get("frontend_cert") else ""
        return (f"curl {cacert}--socks5-hostname 127.0.0.1:{self.info['socks_port']} "
                f"{self.frontend_url()}")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _python() -> str:
    import sys

    return sys.executable
