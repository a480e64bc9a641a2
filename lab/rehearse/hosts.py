"""Local systemd hosts for the rehearsal: each a systemd-nspawn container booting this
machine's own root file system through a private overlay, in its own network namespace.

    deployer (this machine's root namespace)
      |  "public" veth: deployer 10.214.0.1 <-> balancer's public address
    balancer ---------- "private" bridge (the VPC) ---------- worker-1, worker-2, database
                         (the deployer is on it only as 10.214.0.1, the "internet" where the
                          lab's Tor network and origin listen; it cannot open connections
                          into the VPC: one iptables rule, like the workers' security group)

Only what an EC2 instance brings with it is emulated (the AMI, not the stack): Debian's own
tor, nginx, postgresql (and this machine's other services) are masked in each overlay, the
machine's SSH host keys are removed (cloud-init makes the instance's own), a cloud.cfg.d
drop-in makes the default user `ubuntu` with passwordless sudo as on Ubuntu's AMI, and the
NoCloud seed carries the admin public key, the hostname and the stack's own user data. The
hosts have no default route: they reach each other, the deployer's 10.214.0.1 and nothing else.

Every thing made here is written to `<state>/fabric.json` *before* it is made, so
`teardown()` (also from another process after a crash: `python -m lab rehearse down`)
undoes exactly those things, in reverse order, and nothing else.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

Progress = Callable[[str], None]

# This machine's services that a fresh EC2 instance does not run (or that the stack must
# install and start itself): masked in every overlay.
MASKED_UNITS = (
    "tor.service", "tor@default.service", "nginx.service", "postgresql.service",
    "prometheus.service", "podman.service", "podman.socket", "podman-restart.service",
    "podman-auto-update.service", "podman-auto-update.timer", "apt-daily.timer",
    "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "dpkg-db-backup.timer",
)
# The AMI's cloud-init defaults (Ubuntu: user `ubuntu`, passwordless sudo, C.UTF-8); the
# NoCloud seed is this platform's metadata service.
AMI_CLOUD_CFG = {
    "datasource_list": ["NoCloud", "None"],
    "manage_etc_hosts": True,
    "locale": "C.UTF-8",
    "system_info": {"default_user": {
        "name": "ubuntu", "lock_passwd": True, "gecos": "Ubuntu", "groups": ["adm", "sudo"],
        "sudo": ["ALL=(ALL) NOPASSWD:ALL"], "shell": "/bin/bash"}},
}
INTERNET_IP = "10.214.0.1"   # the deployer on both links; the lab network and origin listen here
PUBLIC_NET = "10.214.0.0/24"
DISK_BYTES = 320 * 2**20     # mkfs.xfs wants >= 300 MiB; sparse, so it costs nothing
# systemd-nspawn makes the container's cgroups inside its own, in these hierarchies
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True)
class HostSpec:
    """One instance as the program declared it (read from the mocked aws:ec2:Instance)."""

    name: str                       # the program's node name: balancer, worker-1, database
    private_ip: str
    public_ip: str | None = None    # the balancer only
    user_data: str = ""
    instance_id: str = ""
    disks: tuple[str, ...] = ()     # EBS attachment device names (/dev/sdf, ...)


@dataclass
class Host:
    spec: HostSpec
    dir: str
    netns: str
    machine: str
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    loops: dict[str, str] = field(default_factory=dict)  # /dev/sdX -> /dev/loopN
    booted_at: float = 0.0

    @property
    def root(self) -> Path:
        return Path(self.dir) / "root"


class Fabric:
    def __init__(self, state_dir: Path, vpc_cidr: str, *, progress: Progress = print,
                 tie_to_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.vpc = ipaddress.ip_network(vpc_cidr)
        self.progress = progress
        self.tie_to_parent = tie_to_parent
        self.ledger_path = self.state_dir / "fabric.json"
        self.ledger: list[dict] = []
        self.hosts: dict[str, Host] = {}
        tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:4]
        self.tag = f"rh{tag}"
        self.bridge = f"{self.tag}br"

    # ------------------------------------------------------------------ the ledger
    def _record(self, kind: str, host: str = "", **what) -> None:
        self.ledger.append({"kind": kind, "host": host, **what})
        self._save()

    def _save(self) -> None:
        data = {"tag": self.tag, "ledger": self.ledger,
                "hosts": {n: {**asdict(h), "spec": asdict(h.spec)} for n, h in self.hosts.items()}}
        tmp = self.ledger_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.ledger_path)

    @classmethod
    def load(cls, state_dir: Path, vpc_cidr: str = "10.213.0.0/16", **kw) -> "Fabric":
        fabric = cls(state_dir, vpc_cidr, **kw)
        if fabric.ledger_path.exists():
            data = json.loads(fabric.ledger_path.read_text())
            fabric.ledger = data["ledger"]
            for name, h in data.get("hosts", {}).items():
                spec = h.pop("spec")
                fabric.hosts[name] = Host(spec=HostSpec(**{**spec, "disks": tuple(spec["disks"])}), **h)
        return fabric

    def adopt_dir(self, path: Path) -> None:
        """A directory made for the rehearsal elsewhere: teardown removes it too."""
        self._record("dir", path=str(path))

    # ------------------------------------------------------------------ the network
    def up_network(self) -> None:
        """The VPC bridge and the deployer's place on it (no new connections into it)."""
        if shutil.which("systemd-nspawn") is None:
            raise RuntimeError("systemd-nspawn is missing: run `bash scripts/setup` (package systemd-container)")
        if os.geteuid() != 0:
            raise RuntimeError("the rehearsal needs root (network namespaces, mounts, systemd-nspawn)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The addresses are fixed (the program's VPC, the deployer's 10.214.0.1): one
        # rehearsal per machine. Another's network still up is named, not half-overwritten.
        route = _ip("route", "show", str(self.vpc)).split()
        address = _ip("-o", "addr", "show", "to", INTERNET_IP).split()   # "N: DEV inet ..."
        if route or address:
            dev = route[route.index("dev") + 1] if "dev" in route else address[1]
            raise RuntimeError(f"{self.vpc} or {INTERNET_IP} is already in use on this machine (device "
                               f"{dev}; another rehearsal's?): remove it with "
                               f"`python -m lab --state-dir DIR rehearse down` (DIR: that rehearsal's)")
        self._record("link", name=self.bridge)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        _ip("addr", "add", f"{INTERNET_IP}/32", "dev", self.bridge)
        _ip("route", "add", str(self.vpc), "dev", self.bridge, "src", INTERNET_IP)
        # The security group of the private machines: nothing from the deployer's side
        # opens a connection into the VPC; replies to the hosts' own connections pass.
        rule = ["OUTPUT", "-o", self.bridge, "-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT"]
        self._record("iptables", rule=rule)
        _run(["iptables", "-w", "-I", *rule])

    def _veth_into(self, host: Host, outside: str, inside: str) -> None:
        self._record("link", host=host.spec.name, name=outside)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", host.netns)
        _ip("link", "set", outside, "up")
        _ip("-n", host.netns, "link", "set", inside, "up")

    def _host_network(self, host: Host) -> None:
        spec = host.spec
        self._record("netns", host=spec.name, name=host.netns)
        _ip("netns", "add", host.netns)
        _ip("-n", host.netns, "link", "set", "lo", "up")
        idx = len(self.hosts)
        self._veth_into(host, f"{self.tag}v{idx}", "eth0")
        _ip("link", "set", f"{self.tag}v{idx}", "master", self.bridge)
        _ip("-n", host.netns, "addr", "add", f"{spec.private_ip}/{self.vpc.prefixlen}", "dev", "eth0")
        if spec.public_ip:
            # One veth per public host: the deployer's address on it, a route to the host's.
            outside = f"{self.tag}p{idx}"
            self._veth_into(host, outside, "eth1")
            prefix = ipaddress.ip_network(PUBLIC_NET).prefixlen
            _ip("-n", host.netns, "addr", "add", f"{spec.public_ip}/{prefix}", "dev", "eth1")
            _ip("addr", "add", f"{INTERNET_IP}/32", "dev", outside)
            _ip("route", "add", f"{spec.public_ip}/32", "dev", outside, "src", INTERNET_IP)
        else:
            # The private machines reach the "internet" (Tor network, origin) like through
            # a NAT gateway: one on-link route, no default route.
            _ip("-n", host.netns, "route", "add", f"{INTERNET_IP}/32", "dev", "eth0")

    # ------------------------------------------------------------------ hosts
    def add_host(self, spec: HostSpec, *, admin_public_key: str, image_files: dict[str, str],
                 binds: dict[str, str] | None = None,
                 prepare: Callable[[Path], None] | None = None) -> Host:
        """Make the host's network, overlay, seed and disks; boot it (returns at once).
        `image_files`: path -> content ("-> TARGET": a symlink); `prepare(root)` edits the
        image further before the boot."""
        hdir = self.state_dir / "hosts" / spec.name
        host = Host(spec=spec, dir=str(hdir), netns=f"{self.tag}-{spec.name}",
                    machine=f"{self.tag}-{spec.name}")
        self.hosts[spec.name] = host
        self._record("dir", host=spec.name, path=str(hdir))
        for sub in ("lower", "upper", "work", "root"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        self._host_network(host)
        self._record("mount", host=spec.name, path=str(hdir / "lower"))
        _run(["mount", "--bind", "/", str(hdir / "lower")])  # not recursive: / alone
        self._record("mount", host=spec.name, path=str(host.root))
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={hdir / 'lower'},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", str(host.root)])
        self._image(host, admin_public_key, image_files)
        if prepare is not None:
            prepare(host.root)
        for device in spec.disks:
            image = hdir / f"disk-{Path(device).name}.img"
            with open(image, "wb") as f:
                f.truncate(DISK_BYTES)
            self._record("loop", host=spec.name, file=str(image))
            loop = _run(["losetup", "--find", "--show", str(image)]).strip()
            host.loops[device] = loop
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(host.root),
                f"--machine={host.machine}", f"--network-namespace-path=/run/netns/{host.netns}",
                "--link-journal=no", "--resolv-conf=off", "--timezone=off"]
        for device, loop in host.loops.items():
            # The loop device under its own name too: blkid -L finds volumes by scanning them.
            argv += [f"--bind={loop}", f"--bind={loop}:{device}"]
        for src, dst in (binds or {}).items():
            argv.append(f"--bind-ro={src}:{dst}")
        host.argv = argv + ["-b", "systemd.firstboot=off"]
        self.start(host)
        return host

    def _image(self, host: Host, admin_public_key: str, image_files: dict[str, str]) -> None:
        root, spec = host.root, host.spec
        systemd = root / "etc/systemd/system"
        for unit in MASKED_UNITS:
            link = systemd / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        # The AMI boots cloud-init and sshd whatever this machine does with them.
        for off in ("etc/cloud/cloud-init.disabled", "etc/ssh/sshd_not_to_be_run"):
            (root / off).unlink(missing_ok=True)
        wants = systemd / "multi-user.target.wants" / "ssh.service"
        if not wants.exists():
            wants.parent.mkdir(parents=True, exist_ok=True)
            wants.unlink(missing_ok=True)
            wants.symlink_to("/lib/systemd/system/ssh.service")
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        shutil.rmtree(root / "var/lib/cloud", ignore_errors=True)
        seed = root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True)
        (seed / "meta-data").write_text(yaml.safe_dump({
            "instance-id": spec.instance_id or f"i-{host.machine}", "local-hostname": spec.name,
            "public-keys": [admin_public_key]}))
        (seed / "user-data").write_text(spec.user_data or "#cloud-config\n{}\n")
        (root / "etc/cloud/cloud.cfg.d/90-onionstack-rehearsal-ami.cfg").write_text(
            "# The AMI's defaults, emulated by the rehearsal (lab/rehearse/hosts.py).\n"
            + yaml.safe_dump(AMI_CLOUD_CFG, sort_keys=False))
        for path, content in image_files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if content.startswith("-> "):
                target.symlink_to(content[3:])
            else:
                target.write_text(content)

    def _cgroups(self, host: Host) -> list[Path]:
        """The host's own cgroup in the systemd and unified hierarchies. Without them every
        container started from here shares this process's cgroup as its root, and their
        systemds share e.g. /payload/system.slice/nginx-onionstack.service: a unit stopped on
        one host kills its namesake on another, and a reboot finds cgroups still in use."""
        made = []
        for hierarchy in CGROUP_HIERARCHIES:
            if not (hierarchy / "cgroup.procs").exists():
                continue
            path = hierarchy / host.machine
            if not path.exists():
                self._record("cgroup", host=host.spec.name, path=str(path))
                path.mkdir()
            made.append(path)
        return made

    def start(self, host: Host) -> None:
        self._log(host).parent.mkdir(parents=True, exist_ok=True)
        cgroups = self._cgroups(host)

        def enter() -> None:
            for cgroup in cgroups:
                (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
            if self.tie_to_parent:
                _die_with_parent()

        with open(self._log(host), "ab") as log:
            proc = subprocess.Popen(host.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=enter)
        host.pid, host.booted_at = proc.pid, time.time()
        self._popen = getattr(self, "_popen", {})
        self._popen[host.spec.name] = proc
        self._record("proc", host=host.spec.name, pid=proc.pid, machine=host.machine)

    def boot_finished_at(self, host: Host) -> float:
        """When cloud-init's final stage (after sshd) last finished on `host` (0: never)."""
        # (var/lib/cloud/instance is an absolute symlink: valid inside the host only)
        marker = host.root / "var/lib/cloud/instances" / (host.spec.instance_id or f"i-{host.machine}") / "boot-finished"
        try:
            return marker.stat().st_mtime
        except OSError:
            return 0.0

    def boot_finished(self, host: Host) -> bool:
        """cloud-init's final stage ran in this boot."""
        return self.boot_finished_at(host) >= host.booted_at - 1

    def wait_booted(self, names: list[str] | None = None, timeout: float = 180) -> float:
        t0 = time.monotonic()
        pending = set(names or self.hosts)
        while pending:
            for name in list(pending):
                host = self.hosts[name]
                if self.boot_finished(host):
                    pending.discard(name)
                elif not _ours(host.pid, host.machine):
                    raise RuntimeError(f"host {name}: systemd-nspawn exited; see {self._log(host)}")
            if pending and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"hosts {sorted(pending)} did not finish booting within {timeout:.0f} s")
            time.sleep(0.5)
        return time.monotonic() - t0

    def _log(self, host: Host) -> Path:
        return self.state_dir / "logs" / f"host-{host.spec.name}.log"

    def poweroff(self, name: str, timeout: float = 60) -> None:
        """SIGTERM to systemd-nspawn: the container shuts down cleanly (-b)."""
        host = self.hosts[name]
        _stop(host.pid, host.machine, timeout)
        popen = getattr(self, "_popen", {}).get(name)
        if popen is not None:
            popen.poll()

    def reboot(self, names: list[str]) -> None:
        """Restart the containers (all powered off first, in parallel)."""
        for name in names:
            host = self.hosts[name]
            if _ours(host.pid, host.machine):
                os.kill(host.pid, signal.SIGTERM)
        for name in names:
            self.poweroff(name)
        for name in names:
            self.start(self.hosts[name])

    def nsenter(self, name: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run argv inside a host (its PID 1's namespaces): for checks that must not go
        through SSH (e.g. swapping the host key an impostor presents)."""
        leader = _children(self.hosts[name].pid)
        if not leader:
            raise RuntimeError(f"host {name} is not running")
        return subprocess.run(["nsenter", "-t", str(leader[0]), "-m", "-u", "-i", "-n", "-p", "--", *argv],
                              capture_output=True, text=True, timeout=120, **kw)

    def remove_host(self, name: str) -> None:
        """Terminate an instance: power it off and undo everything made for it."""
        self.poweroff(name)
        host = self.hosts.pop(name)
        mine = [e for e in self.ledger if e["host"] == name]
        for entry in reversed(mine):
            _undo(entry)
        self.ledger = [e for e in self.ledger if e not in mine]
        self._save()

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> list[str]:
        """Undo every recorded thing, newest first; returns what was undone."""
        done = []
        for entry in reversed(self.ledger):
            try:
                if _undo(entry):
                    done.append(_describe(entry))
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest, report it
                done.append(f"FAILED {_describe(entry)}: {exc}")
        self.ledger = []
        self.hosts = {}
        if self.ledger_path.exists():
            self.ledger_path.unlink()
        return done


# ---------------------------------------------------------------------- helpers
def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _ip(*args: str) -> str:
    return _run(["ip", *args])


def _die_with_parent() -> None:
    from lab.procs import _die_with_parent as die

    die()


def _children(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        text = " ".join(Path(t, "children").read_text() for t in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _ours(pid: int | None, machine: str) -> bool:
    """pid still runs our systemd-nspawn for `machine` (a recycled pid is never signalled)."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and f"--machine={machine}".encode() in cmdline


def _stop(pid: int | None, machine: str, timeout: float) -> bool:
    """SIGTERM to systemd-nspawn (the container powers off); after `timeout`, SIGKILL to
    every process in the container's cgroups (nspawn killed alone would orphan the
    container's init, which then keeps running with its mounts)."""
    if not _ours(pid, machine):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _ours(pid, machine) and time.monotonic() < deadline:
        time.sleep(0.2)
    while _ours(pid, machine) or _cgroup_pids(machine):
        for victim in _cgroup_pids(machine):
            _signal(victim, signal.SIGKILL)
        if _ours(pid, machine):
            _signal(pid, signal.SIGKILL)
        time.sleep(0.2)
    return True


def _cgroup_pids(machine: str) -> list[int]:
    """Every process in the container's own cgroups (all of it: nspawn, init, services)."""
    pids: set[int] = set()
    for hierarchy in CGROUP_HIERARCHIES:
        root = hierarchy / machine
        if (hierarchy / "cgroup.procs").exists() and root.is_dir():
            for procs in root.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
    return sorted(pids)


def _undo(entry: dict) -> bool:
    kind = entry["kind"]
    if kind == "proc":
        return _stop(entry["pid"], entry["machine"], 60)
    if kind == "mount":
        if subprocess.run(["mountpoint", "-q", entry["path"]]).returncode == 0:
            _run(["umount", entry["path"]])
            return True
        return False
    if kind == "loop":
        out = _run(["losetup", "-j", entry["file"]])
        for line in out.splitlines():
            _run(["losetup", "-d", line.split(":")[0]])
        return bool(out.strip())
    if kind == "netns":
        if Path(f"/run/netns/{entry['name']}").exists():
            _ip("netns", "del", entry["name"])
            return True
        return False
    if kind == "link":
        if subprocess.run(["ip", "link", "show", entry["name"]], capture_output=True).returncode == 0:
            _ip("link", "del", entry["name"])
            return True
        return False
    if kind == "iptables":
        if subprocess.run(["iptables", "-w", "-C", *entry["rule"]], capture_output=True).returncode == 0:
            _run(["iptables", "-w", "-D", *entry["rule"]])
            return True
        return False
    if kind == "cgroup":
        path = Path(entry["path"])
        if not path.exists():
            return False
        # Anything still in it is the container's (this cgroup was made for it), e.g. a
        # process of a boot that was cut short: it goes first.
        deadline = time.monotonic() + 30
        while True:
            left = [int(p) for f in path.rglob("cgroup.procs") for p in f.read_text().split()]
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: processes {left} do not exit")
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.2)
        # bottom-up: a cgroup goes only when it has no children and no processes
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        path.rmdir()
        return True
    if kind == "dir":
        path = Path(entry["path"])
        if path.exists():
            # Only after every mount below it is gone (the ledger undoes those first):
            # rmtree would walk into a bind mount of / and delete the machine.
            busy = mounts_under(path)
            if busy:
                raise RuntimeError(f"{path} still has mounts: {', '.join(busy)}; not removing it")
            shutil.rmtree(path)
            return True
        return False
    raise ValueError(f"unknown ledger entry {entry!r}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    root = str(Path(path).resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return found


def _describe(entry: dict) -> str:
    rest = {k: v for k, v in entry.items() if k not in ("kind", "host")}
    return f"{entry['kind']} {' '.join(str(v) if not isinstance(v, list) else ' '.join(v) for v in rest.values())}"
