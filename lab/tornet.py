"""A private Tor network on 127.0.0.1: 3 directory authorities, 5 relays (3 of them exits for
127.0.0.0/8) and a client with a SocksPort: the smallest shape that bootstraps reliably here.

`address` puts the relays (ORPort, DirPort, Address, OutboundBindAddress; exits then accept
only that address) on another local address, e.g. a bridge that local systemd hosts reach
(the rehearsal); control and SOCKS ports always stay on 127.0.0.1. TestingTorNetwork lets
relays use private addresses.

Every tor includes one generated `network.torrc` (TestingTorNetwork, the DirAuthority lines,
...), so every tor the lab starts (workers, balancer, test services) is on this network and
nothing can reach the public one. Ports are picked at runtime. Start-up is gated the way the
notes measured to avoid 30-40 s stalls: the client starts only when the authorities'
consensus lists every relay and every relay reports bootstrap PROGRESS=100.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import jinja2

from lab.heartbeat import Heartbeat
from lab.ports import PortAllocator
from lab.procs import ProcessRegistry

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=True)

# tor refuses V3AuthVotingInterval below 10 s even on a test network.
MIN_VOTING_INTERVAL = 10
Progress = Callable[[str], None]


@dataclass
class TorNode:
    nickname: str
    role: str  # authority | relay | exit | client | service
    directory: str  # holds torrc and data/
    control_port: int
    or_port: int | None = None
    dir_port: int | None = None
    socks_port: int | None = None
    fingerprint: str | None = None  # relay identity (hex), for DirAuthority and gating
    v3ident: str | None = None  # authority v3 identity (hex)

    @property
    def torrc(self) -> Path:
        return Path(self.directory) / "torrc"

    @property
    def data_dir(self) -> Path:
        return Path(self.directory) / "data"

    @property
    def process_name(self) -> str:
        return f"tor-{self.nickname}"


@dataclass
class TorNetwork:
    state_dir: str
    voting_interval: int = 20
    nodes: list[TorNode] = field(default_factory=list)
    owner_pid: int | None = None
    address: str = "127.0.0.1"  # where the relays listen and what they publish

    @property
    def exit_network(self) -> str:
        """What the exits accept: loopback, or only the network's own address."""
        return "127.0.0.0/8" if ipaddress.ip_address(self.address).is_loopback else f"{self.address}/32"

    # ---------------------------------------------------------------- layout
    @property
    def net_dir(self) -> Path:
        return Path(self.state_dir) / "net"

    @property
    def network_torrc(self) -> Path:
        return self.net_dir / "network.torrc"

    @property
    def authorities(self) -> list[TorNode]:
        return [n for n in self.nodes if n.role == "authority"]

    @property
    def relays(self) -> list[TorNode]:
        """Every node that is a relay in the consensus (authorities included)."""
        return [n for n in self.nodes if n.or_port]

    @property
    def client(self) -> TorNode:
        return next(n for n in self.nodes if n.role == "client")

    def node(self, nickname: str) -> TorNode:
        for n in self.nodes:
            if n.nickname == nickname:
                return n
        raise KeyError(f"no tor node named {nickname!r} in the lab network")

    @property
    def vote_delay(self) -> int:
        return 4 if self.voting_interval >= 20 else 2

    @property
    def time_period_seconds(self) -> int:
        # hs_common.c get_time_period_length(): 24 voting intervals on a test network.
        return 24 * self.voting_interval

    # ---------------------------------------------------------------- persistence
    def save(self) -> None:
        data = {"voting_interval": self.voting_interval, "owner_pid": self.owner_pid,
                "address": self.address, "nodes": [asdict(n) for n in self.nodes]}
        (Path(self.state_dir) / "network.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> "TorNetwork":
        path = Path(state_dir) / "network.json"
        data = json.loads(path.read_text())
        return cls(state_dir=str(Path(state_dir).resolve()), voting_interval=data["voting_interval"],
                   owner_pid=data.get("owner_pid"), address=data.get("address", "127.0.0.1"),
                   nodes=[TorNode(**n) for n in data["nodes"]])

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, state_dir: Path, ports: PortAllocator, *, voting_interval: int = 20,
               n_authorities: int = 3, n_relays: int = 5, n_exits: int = 3,
               owner_pid: int | None = None, address: str = "127.0.0.1") -> "TorNetwork":
        """Generate keys and torrcs for a network (nothing is started yet)."""
        if voting_interval < MIN_VOTING_INTERVAL:
            raise ValueError(f"voting_interval: {voting_interval} s is below tor's minimum of "
                             f"{MIN_VOTING_INTERVAL} s; use {MIN_VOTING_INTERVAL} or more")
        if not 0 <= n_exits <= n_relays:
            raise ValueError(f"n_exits: {n_exits} must be between 0 and n_relays ({n_relays})")
        if ipaddress.ip_address(address).version != 4:
            raise ValueError(f"address: {address!r} must be an IPv4 address of this machine")
        net = cls(state_dir=str(Path(state_dir).resolve()), voting_interval=voting_interval,
                  owner_pid=owner_pid, address=address)
        net.net_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_authorities):
            net.nodes.append(net._new_node(f"auth{i}", "authority", ports, or_port=ports.take(),
                                           dir_port=ports.take()))
        for i in range(n_relays):
            role = "exit" if i < n_exits else "relay"
            net.nodes.append(net._new_node(f"relay{i}", role, ports, or_port=ports.take()))
        net.nodes.append(net._new_node("client", "client", ports, socks_port=ports.take()))
        (net.net_dir / "geoip").write_text("")
        (net.net_dir / "geoip6").write_text("")
        (net.net_dir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(net._make_authority_keys, net.authorities))
            list(pool.map(net._read_fingerprint, net.relays))
        net.write_network_torrc()
        for node in net.nodes:
            net._write_node_torrc(node)
        net.save()
        return net

    def _new_node(self, nickname: str, role: str, ports: PortAllocator, **kw) -> TorNode:
        directory = self.net_dir / nickname
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "data").chmod(0o700)
        return TorNode(nickname=nickname, role=role, directory=str(directory),
                       control_port=ports.take(), **kw)

    def _make_authority_keys(self, node: TorNode) -> None:
        keys = node.data_dir / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        # Empty passphrase on fd 0: the lab's authority keys protect nothing outside the lab.
        subprocess.run(
            ["tor-gencert", "--create-identity-key", "-m", "12", "-a",
             f"{self.address}:{node.dir_port}", "-i", str(keys / "authority_identity_key"),
             "-s", str(keys / "authority_signing_key"), "-c", str(keys / "authority_certificate"),
             "--passphrase-fd", "0"],
            input=b"\n", check=True, capture_output=True, timeout=120)
        for line in (keys / "authority_certificate").read_text().splitlines():
            if line.startswith("fingerprint "):
                node.v3ident = line.split()[1]
        if not node.v3ident:
            raise RuntimeError(f"tor-gencert wrote no fingerprint for {node.nickname}")

    def _read_fingerprint(self, node: TorNode) -> None:
        """Create the relay identity key now (offline) so DirAuthority lines can name it."""
        empty = self.net_dir / "empty.torrc"
        empty.touch()
        out = subprocess.run(
            ["tor", "--list-fingerprint", "-f", str(empty), "--defaults-torrc", str(empty),
             "--DisableNetwork", "1", "--DataDirectory", str(node.data_dir),
             "--Nickname", node.nickname, "--ORPort", f"{self.address}:{node.or_port}",
             "--Address", self.address, "--GeoIPFile", "", "--GeoIPv6File", "",
             "--Log", "err stderr"],
            check=True, capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == node.nickname:
                node.fingerprint = "".join(parts[1:])
        if not node.fingerprint or len(node.fingerprint) != 40:
            raise RuntimeError(f"tor --list-fingerprint gave no fingerprint for {node.nickname}: {out!r}")

    def write_network_torrc(self) -> None:
        self.network_torrc.write_text(TEMPLATES.get_template("network.torrc.j2").render(
            geoip_file=self.net_dir / "geoip", geoip6_file=self.net_dir / "geoip6",
            owner_pid=self.owner_pid, authorities=self.authorities, address=self.address,
            outbound_address=self.address))

    def network_torrc_for(self, geoip_file: str) -> str:
        """The network's options for a tor on another host (the rehearsal's systemd hosts):
        no OutboundBindAddress (the host's own address), no owning process, GeoIP files at
        `geoip_file` on that host."""
        return TEMPLATES.get_template("network.torrc.j2").render(
            geoip_file=geoip_file, geoip6_file=geoip_file, owner_pid=None,
            authorities=self.authorities, address=self.address, outbound_address=None)

    def _write_node_torrc(self, node: TorNode, extra_lines: list[str] = ()) -> None:
        node.torrc.write_text(TEMPLATES.get_template("node.torrc.j2").render(
            role=node.role, nickname=node.nickname, network_torrc=self.network_torrc,
            data_dir=node.data_dir, control_port=node.control_port, socks_port=node.socks_port,
            or_port=node.or_port, dir_port=node.dir_port, voting_interval=self.voting_interval,
            address=self.address, exit_network=self.exit_network,
            vote_delay=self.vote_delay, resolv_conf=self.net_dir / "resolv.conf",
            extra_lines=list(extra_lines)))

    # ---------------------------------------------------------------- running
    def start_tor(self, procs: ProcessRegistry, node: TorNode) -> None:
        procs.start(node.process_name, ["tor", "-f", str(node.torrc)])

    def start(self, procs: ProcessRegistry, progress: Progress = print,
              timeout: float = 300.0) -> float:
        """Start the network and block until the client has bootstrapped; returns seconds."""
        t0 = time.monotonic()
        for node in self.relays:
            self.start_tor(procs, node)
        progress(f"network: started {len(self.authorities)} authorities and "
                 f"{len(self.relays) - len(self.authorities)} relays "
                 f"(voting interval {self.voting_interval} s)")
        self.wait_relays(procs, progress, t0, timeout)
        self.start_tor(procs, self.client)
        wait_bootstrapped(self, procs, self.client, timeout - (time.monotonic() - t0), progress)
        took = time.monotonic() - t0
        progress(f"network: client bootstrapped, SocksPort 127.0.0.1:{self.client.socks_port} "
                 f"({took:.0f} s)")
        return took

    def wait_relays(self, procs: ProcessRegistry, progress: Progress, t0: float,
                    timeout: float) -> None:
        """Gate: the consensus lists every relay and every relay is at bootstrap 100 %."""
        want = {n.fingerprint for n in self.relays}
        last = ""
        beat = Heartbeat(progress, "network")
        while True:
            check_alive(procs, self.relays)
            listed = consensus_fingerprints(self.authorities[0]) & want
            done = sum(1 for n in self.relays if bootstrap_progress(n) == 100)
            line = (f"network: consensus lists {len(listed)}/{len(want)} relays, "
                    f"{done}/{len(want)} relays bootstrapped")
            if line != last:
                progress(f"{line} ({time.monotonic() - t0:.0f} s)")
                last = line
                beat.spoke()
            else:
                beat.beat(line.removeprefix("network: "))
            if len(listed) == len(want) and done == len(want):
                return
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{line} after {timeout:.0f} s; see {procs.log_dir}/tor-*.log")
            time.sleep(1)

    def add_tor(self, procs: ProcessRegistry, ports: PortAllocator, nickname: str,
                extra_lines: list[str], socks: bool = False) -> TorNode:
        """A client-style tor on this network (no ORPort) with extra torrc lines, started."""
        node = self._new_node(nickname, "service", ports,
                              socks_port=ports.take() if socks else None)
        self._write_node_torrc(node, extra_lines)
        self.nodes.append(node)
        self.save()
        self.start_tor(procs, node)
        return node

    def status(self, procs: ProcessRegistry) -> list[tuple[TorNode, str]]:
        rows = []
        for node in self.nodes:
            if not procs.is_running(node.process_name):
                rows.append((node, "stopped"))
                continue
            try:
                rows.append((node, f"bootstrap {bootstrap_progress(node)} %"))
            except Exception as exc:  # noqa: BLE001 - status reports, never fails
                rows.append((node, f"running, control port not answering ({exc})"))
        return rows


# -------------------------------------------------------------------- control-port helpers
@contextmanager
def controller(node: TorNode) -> Iterator["stem.control.Controller"]:
    from stem.control import Controller

    ctl = Controller.from_port(address="127.0.0.1", port=node.control_port)
    try:
        ctl.authenticate()  # cookie: stem reads the path from PROTOCOLINFO
        yield ctl
    finally:
        ctl.close()


def bootstrap_progress(node: TorNode) -> int:
    """PROGRESS= of status/bootstrap-phase, or -1 while the control port is not up."""
    import stem

    try:
        with controller(node) as ctl:
            phase = ctl.get_info("status/bootstrap-phase")
    except (stem.SocketError, stem.connection.AuthenticationFailure, OSError):
        return -1
    for word in phase.split():
        if word.startswith("PROGRESS="):
            return int(word.split("=", 1)[1])
    return -1


def consensus_fingerprints(node: TorNode) -> set[str]:
    """Relay fingerprints (hex) in the node's current consensus; empty before it has one."""
    import stem

    try:
        with controller(node) as ctl:
            text = ctl.get_info("ns/all", "")
    except (stem.SocketError, stem.connection.AuthenticationFailure, stem.ControllerError, OSError):
        return set()
    fps = set()
    for line in text.splitlines():
        if line.startswith("r "):
            ident = line.split()[2]
            fps.add(base64.b64decode(ident + "=" * (-len(ident) % 4)).hex().upper())
    return fps


def wait_bootstrapped(net: TorNetwork, procs: ProcessRegistry, node: TorNode,
                      timeout: float, progress: Progress | None = None) -> None:
    deadline = time.monotonic() + timeout
    beat = Heartbeat(progress, f"tor {node.nickname}")
    while (percent := bootstrap_progress(node)) != 100:
        check_alive(procs, [node])
        if time.monotonic() > deadline:
            raise TimeoutError(f"tor {node.nickname} did not bootstrap within {timeout:.0f} s; "
                               f"see {procs.log_path(node.process_name)}")
        beat.beat(f"bootstrap {max(percent, 0)} %")
        time.sleep(0.5)


def check_alive(procs: ProcessRegistry, nodes: list[TorNode]) -> None:
    for node in nodes:
        if not procs.is_running(node.process_name):
            log = procs.log_path(node.process_name)
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise RuntimeError(f"tor {node.nickname} exited; last log lines:\n" + "\n".join(tail))
