"""The rehearsal: the lab's Tor network and origin, local systemd hosts for every instance
the program declares, and the program's own remote steps run over SSH against them; then
the checks (docs/rehearsal.md).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lab.rehearse.executor import TYPES, Connection, Op, Provider
from lab.rehearse.hosts import INTERNET_IP, Fabric, HostSpec
from lab.rehearse.program import VPC_CIDR, Evaluation, evaluate, rehearsal_config
from lab.rehearse.ssh import OpenSSH

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE_DIR = "/var/cache/onionstack/wheels"      # the image's wheels (balancer's pip switch)
PACKAGES_MARKER = "/etc/onionstack/preinstalled-packages"  # install-packages.sh's switch
GEOIP = "/etc/tor/rehearsal-empty-geoip"
# The VM's part of mounting EBS volumes: systemd's fstab generator skips device entries
# inside a container (no udev), so the database image mounts its xfs volumes itself.
MOUNT_UNIT = """[Unit]
Description=Mount the xfs volumes in /etc/fstab (what udev + fstab do on the VM)
DefaultDependencies=no
After=local-fs-pre.target
Before=local-fs.target postgresql.service
[Service]
Type=oneshot
ExecStart=/bin/mount -a -t xfs
RemainAfterExit=yes
[Install]
WantedBy=local-fs.target
"""


@dataclass
class Deploy:
    """One `pulumi up` of the rehearsal: what ran, how long each part took."""

    workers: int
    ops: list[Op] = field(default_factory=list)
    booted: list[str] = field(default_factory=list)
    removed: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> (poweroff began, ended)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def changed(self) -> list[Op]:
        return [o for o in self.ops if o.kind != "same"]


class Rehearsal:
    def __init__(self, state_dir: Path, *, workers: int = 2, tor_daemons: int = 2,
                 voting_interval: int = 10, progress: Progress = print, tie_to_parent: bool = False,
                 max_step_seconds: float = 900.0) -> None:
        from lab.stack import Lab

        self.state_dir = Path(state_dir).resolve()
        self.workers, self.tor_daemons = workers, tor_daemons
        self.progress = progress
        self.max_step_seconds = max_step_seconds
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if Fabric.load(self.state_dir).ledger:
            raise RuntimeError(f"a rehearsal in {self.state_dir} still has hosts: run "
                               f"`python -m lab rehearse down` first")
        for stale in ("executor.json", "generated.json", "steps.log", "secret-steps.log"):
            (self.state_dir / stale).unlink(missing_ok=True)
        for stale in ("ssh", "logs"):
            shutil.rmtree(self.state_dir / stale, ignore_errors=True)
        self.lab = Lab.create(self.state_dir / "lab", tie_to_parent=tie_to_parent,
                              voting_interval=voting_interval, progress=progress)
        self.fabric = Fabric(self.state_dir, VPC_CIDR, progress=progress, tie_to_parent=tie_to_parent)
        self.generated = Generated(self.state_dir / "generated.json")
        self.ssh = OpenSSH(self.state_dir / "ssh", sock_prefix=f"{self.fabric.tag}-ssh-")
        # its control sockets' directory (in /tmp: socket paths are short) goes with the rest
        self.fabric.adopt_dir(self.ssh.sock_dir)
        self.connections: dict[str, Connection] = {}  # host address -> the program's connection
        self.last: Optional[Evaluation] = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def keys(self) -> dict:
        def make():
            from mockrun import demo_ssh_key_pair
            from onion.keys import IdentityKey

            public, private = demo_ssh_key_pair()
            return {"ssh_public": public.replace("onionstack-demo", "onionstack-rehearsal"),
                    "ssh_private": private, "master": IdentityKey.generate().to_config_string()}
        return self.generated.get("rehearsal-keys", make)

    def config(self, workers: int, overrides: Optional[dict] = None) -> dict:
        k = self.keys()
        origin = self.lab.info["origin"]
        return {**rehearsal_config(workers=workers, tor_daemons=self.tor_daemons, domain=origin["domain"],
                                   origin=f"{INTERNET_IP}:{origin['ports'][0]}", master_key=k["master"],
                                   ssh_public=k["ssh_public"], ssh_private=k["ssh_private"]),
                **(overrides or {})}

    def frontend(self) -> str:
        from onion.keys import IdentityKey

        return IdentityKey.from_config_string(self.keys()["master"]).hostname

    def up(self, wheelhouse: Path) -> Deploy:
        """Network, origin and hosts, then the first deploy; returns it (timings inside)."""
        from lab.tornet import TorNetwork

        t0 = time.monotonic()
        self.wheelhouse = Path(wheelhouse)
        self.fabric.up_network()
        self.lab.start_origin(listeners=1, address=INTERNET_IP)
        owner = self.lab.procs.start_anchor() if self.lab.tie_to_parent else None
        net = self.lab.net = TorNetwork.create(self.lab.state_dir, self.lab.ports, owner_pid=owner,
                                               voting_interval=self.lab.voting_interval, address=INTERNET_IP)
        self.lab.info["socks_port"] = net.client.socks_port
        self.lab.save()
        # Hosts boot while the Tor network bootstraps.
        plan = self.plan(self.workers)
        self.boot(plan.instances)
        took = net.start(self.lab.procs, self.progress)
        self.lab.info["network_seconds"] = round(took, 1)
        self.timings["network"] = took
        self.lab.save()
        self.fabric.wait_booted()
        self.timings["host_boot"] = self._boot_seconds()
        self.progress(f"hosts: {', '.join(self.fabric.hosts)} booted ({self.timings['host_boot']:.0f} s)")
        self.check_isolation()
        deploy = self.deploy(self.workers, plan=plan)
        self.timings["steps"] = deploy.seconds["steps"]
        if deploy.error:
            return deploy
        t1 = time.monotonic()
        try:
            self.wait_frontend()
        except TimeoutError as exc:
            deploy.error = str(exc)
            return deploy
        self.timings["first_reachability"] = time.monotonic() - t1
        self.timings["total"] = time.monotonic() - t0
        return deploy

    def _boot_seconds(self) -> float:
        """From the first container start to the last host's cloud-init final stage."""
        ends = [self.fabric.boot_finished_at(h) for h in self.fabric.hosts.values()]
        starts = [self.fabric.hosts[n].booted_at for n in self.fabric.hosts]
        return max(ends) - min(starts)

    def image_files(self, spec: HostSpec) -> dict[str, str]:
        """What the image brings besides the machine's root: the Tor network the hosts are
        on, the web PKI the origin's certificate chains to, the packages switch."""
        net = self.lab.net
        bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
        ca = Path(self.lab.info["origin"]["ca"]).read_text()
        files = {
            "/etc/tor/torrc-defaults": "## The rehearsal's Tor network (tor reads this before every torrc).\n"
                                       + net.network_torrc_for(GEOIP),
            GEOIP: "",
            "/etc/ssl/certs/ca-certificates.crt": bundle + ca,
            PACKAGES_MARKER: "# The image brings every package (the rehearsal's hosts).\n",
        }
        if spec.disks:
            files["/etc/systemd/system/rehearsal-xfs-mounts.service"] = MOUNT_UNIT
            files["/etc/systemd/system/local-fs.target.wants/rehearsal-xfs-mounts.service"] = \
                "-> /etc/systemd/system/rehearsal-xfs-mounts.service"
        return files

    def boot(self, specs: list[HostSpec]) -> list[str]:
        booted = []
        for spec in specs:
            if spec.name in self.fabric.hosts:
                continue
            binds = {str(self.wheelhouse): WHEELHOUSE_DIR} if spec.public_ip else {}
            self.fabric.add_host(spec, admin_public_key=self.keys()["ssh_public"],
                                 image_files=self.image_files(spec), binds=binds,
                                 prepare=_no_default_cluster if spec.disks else None)
            booted.append(spec.name)
            self.progress(f"host {spec.name}: booting ({spec.private_ip}"
                          f"{', public ' + spec.public_ip if spec.public_ip else ''})")
        return booted

    # ------------------------------------------------------------------ deploys
    def plan(self, workers: int, overrides: Optional[dict] = None) -> Evaluation:
        """The program under mocks without running anything: which instances exist."""
        return evaluate(self.config(workers, overrides))

    def deploy(self, workers: int, *, plan: Optional[Evaluation] = None, overrides: Optional[dict] = None,
               max_step_seconds: Optional[float] = None) -> Deploy:
        """One `pulumi up`: boot new instances, run the steps, delete what left the program
        (drains first), then terminate the instances that left it."""
        result = Deploy(workers)
        t0 = time.monotonic()
        plan = plan or self.plan(workers, overrides)
        declared = {h.name for h in plan.instances}
        result.booted = self.boot(plan.instances)
        if result.booted:
            self.fabric.wait_booted(result.booted)
        allowed = {INTERNET_IP} | {h.spec.public_ip or h.spec.private_ip for h in self.fabric.hosts.values()} \
            | {h.spec.private_ip for h in self.fabric.hosts.values()}
        self.ssh.allowed_hosts = allowed
        provider = Provider(self.state_dir / "executor.json", self.ssh, log=self._step_log,
                            max_step_seconds=max_step_seconds or self.max_step_seconds)
        t1 = time.monotonic()
        try:
            self.last = evaluate(self.config(workers, overrides), provider)
            for r in self.last.resources:
                if r.type in TYPES:
                    conn = Connection.from_inputs(r.inputs["connection"])
                    self.connections[conn.host] = conn
            provider.finish()
        except Exception as exc:  # noqa: BLE001 - the run failed: report, keep the state
            result.error = _first_line(exc)
            provider.wait_idle(self.max_step_seconds)
        result.ops = provider.ops
        result.seconds["steps"] = time.monotonic() - t1
        if not result.error:
            for name in sorted(set(self.fabric.hosts) - declared):
                began = time.time()
                self.fabric.remove_host(name)
                result.removed[name] = (began, time.time())
                self.progress(f"host {name}: terminated (left the program)")
        result.seconds["total"] = time.monotonic() - t0
        return result

    def _step_log(self, line: str) -> None:
        with open(self.state_dir / "steps.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        if line.startswith("["):
            self.progress(f"step {line}")

    # ------------------------------------------------------------------ access for checks
    def ssh_to(self, host: str, command: str, stdin: Optional[str] = None, timeout: float = 120) -> tuple[int, str, str]:
        """Run a command on a host as the admin, the way the steps reach it."""
        spec = self.fabric.hosts[host].spec
        conn = self.connections.get(spec.public_ip or spec.private_ip)
        if conn is None:
            raise RuntimeError(f"no step connection to {host} recorded")
        session = self.ssh.dial(conn)
        try:
            return session.run(command, stdin, {}, timeout)
        finally:
            session.close()

    def client_info_log(self, name: str) -> Path:
        """From now on the lab client also logs its onion-service client and circuit work at
        info level to `<state>/logs/<name>` (what a failed request went through)."""
        from lab.tornet import controller

        path = self.state_dir / "logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with controller(self.lab.net.client) as ctl:
            logs = [line for line in ctl.get_conf("Log", multiple=True) if line]
            ctl.set_conf("Log", logs + [f"[rend,circ,edge]info file {path}"])
        return path

    def new_reader(self) -> None:
        """SIGNAL NEWNYM to the lab client: it drops its onion-service state (cached
        descriptors, intro point failures), as a reader who was not here before."""
        from lab.tornet import controller

        with controller(self.lab.net.client) as ctl:
            ctl.msg("SIGNAL NEWNYM")

    def wait_new_reader(self, timeout: float = 300) -> float:
        """Seconds until a reader who arrives now gets the page: before each request the
        lab client forgets its onion-service state (SIGNAL NEWNYM, at most one per 10 s),
        so a descriptor it fetched while the site was still coming back is not what the
        next request uses (tor would not fetch it again from the same HSDirs for 15 min)."""
        from lab.client import fetch

        t0 = time.monotonic()
        attempt, last = 0, None
        while True:
            attempt += 1
            if last is not None:
                time.sleep(max(0.0, 10.5 - (time.monotonic() - last)))
            self.new_reader()
            last = time.monotonic()
            resp = fetch(self.lab.net.client.socks_port, f"http://{self.frontend()}/",
                         isolation=f"reader{attempt}", timeout=30)
            if resp.ok and resp.status == 200:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the frontend did not answer a new reader within {timeout:.0f} s "
                                   f"({attempt} readers; the last: {resp.error or f'HTTP {resp.status}'})")

    def wait_frontend(self, timeout: float = 300) -> float:
        from lab.client import wait_reachable

        _, took = wait_reachable(self.lab.net.client.socks_port, f"http://{self.frontend()}/",
                                 timeout=timeout, what="frontend")
        return took

    # ------------------------------------------------------------------ checks
    def check_isolation(self) -> None:
        """The fabric itself: the deployer reaches the balancer's SSH, not a private host's."""
        import socket

        for spec in (h.spec for h in self.fabric.hosts.values()):
            address = spec.public_ip or spec.private_ip
            try:
                with socket.create_connection((address, 22), timeout=5):
                    reachable = True
            except OSError:
                reachable = False
            if reachable != bool(spec.public_ip):
                raise RuntimeError(f"host {spec.name} ({address}:22) is {'' if reachable else 'not '}"
                                   f"reachable from the deployer")

    def units_of(self, host: str) -> list[str]:
        if host.startswith("worker-"):
            return [f"onionstack-tor@tor{i}.service" for i in range(1, self.tor_daemons + 1)] + \
                ["nginx-onionstack.service"]
        if host == "balancer":
            return ["onionstack-tor@balancer.service", "onion-balancer.service"]
        if host == "database":
            rc, out, _ = self.ssh_to(host, "ls /etc/postgresql")
            return [f"postgresql@{v}-main.service" for v in out.split()]
        return []

    def check_units(self, hosts: Optional[list[str]] = None) -> list[str]:
        """Every service unit of every host is active and enabled; returns 'host: unit' lines."""
        seen = []
        for host in hosts or sorted(self.fabric.hosts):
            units = self.units_of(host)
            rc, out, err = self.ssh_to(host, "for u in " + " ".join(units) +
                                       "; do echo \"$u $(systemctl is-active $u) $(systemctl is-enabled $u)\"; done")
            for line in out.splitlines():
                unit, active, enabled = line.split()
                if (active, enabled) != ("active", "enabled"):
                    raise AssertionError(f"{host}: {unit} is {active} and {enabled}")
                seen.append(f"{host}: {unit}")
        return seen

    def check_database(self) -> tuple[str, str]:
        """A worker logs in to PostgreSQL; the balancer is refused by pg_hba (not the network)."""
        db = self.fabric.hosts["database"].spec.private_ip
        password = next(r.state["result"] for r in self.last.resources
                        if r.type == "random:index/randomPassword:RandomPassword")
        probe = ("IFS= read -r PGPASSWORD; export PGPASSWORD; "
                 f"psql -X -A -t -c 'select current_user' "
                 f"{shlex.quote(f'host={db} dbname=onionstack user=onionstack sslmode=require connect_timeout=10')}")
        rc, user, err = self.ssh_to("worker-1", probe, stdin=password + "\n")
        if rc != 0 or user.strip() != "onionstack":
            raise AssertionError(f"worker-1 could not log in to the database: {err.strip()}")
        rc, out, err = self.ssh_to("balancer", probe, stdin=password + "\n")
        if rc == 0 or "no pg_hba.conf entry" not in err:
            raise AssertionError(f"the balancer was not refused by pg_hba: exit {rc}: {err.strip()}")
        return user.strip(), err.strip().splitlines()[-1]

    def balancer_status(self) -> dict:
        rc, out, err = self.ssh_to("balancer", "sudo -n /opt/onionstack/venv/bin/python -m onion status --json "
                                               "--state-dir /var/lib/onion-balancer")
        if rc != 0:
            raise RuntimeError(f"onion status: {err.strip()}")
        return json.loads(out)

    def swap_host_keys(self, host: str) -> Path:
        """Make `host` present other SSH host keys (an impostor at its address); returns
        where the real ones were saved."""
        saved = Path(self.fabric.hosts[host].dir) / "real-host-keys"
        saved.mkdir(exist_ok=True)
        root = self.fabric.hosts[host].root / "etc/ssh"
        for key in root.glob("ssh_host_*"):
            (saved / key.name).write_bytes(key.read_bytes())
            key.unlink()
        proc = self.fabric.nsenter(host, ["sh", "-c", "ssh-keygen -A >/dev/null && systemctl restart ssh.service"])
        if proc.returncode != 0:
            raise RuntimeError(f"{host}: new host keys: {proc.stderr.strip()}")
        return saved

    def restore_host_keys(self, host: str, saved: Path) -> None:
        root = self.fabric.hosts[host].root / "etc/ssh"
        for key in root.glob("ssh_host_*"):
            key.unlink()
        for key in saved.iterdir():
            (root / key.name).write_bytes(key.read_bytes())
            (root / key.name).chmod(0o600 if not key.name.endswith(".pub") else 0o644)
        self.fabric.nsenter(host, ["systemctl", "restart", "ssh.service"])

    def sessions_accepted(self, host: str, since: float) -> int:
        """How many SSH logins `host`'s sshd accepted since `since` (read without SSH)."""
        proc = self.fabric.nsenter(host, ["journalctl", "-u", "ssh.service", "-o", "cat",
                                          "--since", f"@{int(since)}"])
        return sum(1 for line in proc.stdout.splitlines() if line.startswith("Accepted "))

    # ------------------------------------------------------------------ teardown
    def down(self) -> list[str]:
        undone = []
        try:
            undone += [f"process {n}" for n in self.lab.down()]
        finally:
            undone += self.fabric.teardown()
        return undone



class Generated:
    """Secrets a provider would generate once and keep in the state (host keys, passwords)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self._lock = threading.Lock()

    def get(self, name: str, make) -> dict:
        with self._lock:
            if name not in self.data:
                self.data[name] = make()
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(self.data, f, indent=1)
            return self.data[name]

def _no_default_cluster(root: Path) -> None:
    """The database image without the package's default cluster, as on AWS where
    install-packages.sh installs postgresql with create_main_cluster = false."""
    import shutil

    for sub in ("etc/postgresql", "var/lib/postgresql"):
        for child in (root / sub).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 2000 else text[:2000] + " ..."


__all__ = ["Deploy", "Rehearsal"]
