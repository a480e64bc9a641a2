"""What the balancer survives: ordinary faults and valid-but-odd inputs that once stopped it
publishing (docs/balancer.md, "What the balancer survives").

Driven like tests/test_balancer_core.py: a fake tor controller and a fake crypto/hash ring,
with controlled clocks; real sockets (SOCKS probes through the real prober on 127.0.0.1),
real config files and real key files where the fault lives there.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import struct
import tempfile
import threading
import time

import pytest

from onion import status as status_module
from onion.balancer import Balancer
from onion.config import BalancerConfig, ControlEndpoint, FrontendConfig, InstanceConfig, ProbeSettings
from onion.control import CommandRejected, ControlError, DescEvent
from onion.keys import IdentityKey
from onion.probe import Prober, ProbeResult
from onion.publisher import REPUBLISH_INTERVAL
from tests.test_balancer_core import (A, B, C, FRONT, FakeControl, FakeIdentity, FakeProber, FakeProtocol,
                                      confirm_all, content, posted_keys)

# An EC private key on sect163k1, a curve this system's OpenSSL does not build: loading it
# raises cryptography's UnsupportedAlgorithm, which is no ValueError.
ODD_CURVE_PEM = b"""-----BEGIN PRIVATE KEY-----
MGMCAQAwEAYHKoZIzj0CAQYFK4EEAAEETDBKAgEBBBUA2L+n1+XfNPOIeMlvvD4K
KwDBwVOhLgMsAAQD9B3t+XpL/LO/jnet6kxlTZYyQJgGS/W/IqcS695Idm0Xn6SD
pZ2lb+k=
-----END PRIVATE KEY-----
"""


class Clocks:
    """A wall clock and a monotonic clock that move together unless the wall is stepped."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.wall_t = t
        self.mono_t = 1000.0

    def wall(self) -> float:
        return self.wall_t

    def mono(self) -> float:
        return self.mono_t

    def advance(self, seconds: float) -> None:
        self.wall_t += seconds
        self.mono_t += seconds


class Control(FakeControl):
    """FakeControl that can refuse HSFETCH per address and answers GETINFO."""

    def __init__(self, info: dict[str, str] | None = None):
        super().__init__()
        self.refuse_fetch: set[str] = set()
        self.info = dict(info or {})
        self.info_asked: list[str] = []

    def fetch_descriptor(self, address, servers=()):
        if address in self.refuse_fetch:
            raise CommandRejected("HSFETCH: 552 Unknown SERVER")
        super().fetch_descriptor(address, servers)

    def get_info(self, key):
        self.info_asked.append(key)
        if key not in self.info:
            raise CommandRejected(f"GETINFO {key}: 552 Unrecognized key")
        return self.info[key]


def make(tmp_path, *, instances=(A, B), publish=True, probe=ProbeSettings(interval=20, timeout=30, failures=3),
         socks_port=9050, control=None, prober=None, clocks=None):
    cfg = BalancerConfig(publish=publish, control=ControlEndpoint(port=9051), socks_port=socks_port,
                         state_dir=str(tmp_path / "state"),
                         frontends=(FrontendConfig(name="news", key_file="unused",
                                                   instances=tuple(InstanceConfig(a) for a in instances)),),
                         probe=probe, path=str(tmp_path / "cfg.yaml"))
    control = control or Control()
    clocks = clocks or Clocks()
    proto = FakeProtocol()
    prober = prober if prober is not None else FakeProber()
    bal = Balancer(cfg, {"news": FakeIdentity()}, control, proto, prober, clock=clocks.wall,
                   monotonic=clocks.mono)
    return bal, control, proto, prober, clocks


def write_config(path, key, instances, *, publish=True, extra=""):
    lines = "".join(f"      - address: {i.address}\n" for i in instances)
    path.write_text(f"publish: {'true' if publish else 'false'}\nstate_dir: state\nprobe: false\n{extra}"
                    f"frontends:\n  - name: news\n    key_file: {key}\n    instances:\n{lines}")


def real_config(tmp_path, n_instances=2, publish=True):
    front = IdentityKey.generate()
    insts = [IdentityKey.generate() for _ in range(n_instances)]
    key = tmp_path / "front.key"
    key.write_bytes(front.to_tor_secret_key())
    os.chmod(key, 0o600)
    path = tmp_path / "balancer.yaml"
    write_config(path, key, insts, publish=publish)
    return path, key, front, insts


def settle(bal, control):
    """Confirm every upload until nothing more goes out (H3 serves both periods, one upload
    in flight at a time)."""
    while True:
        n = len(control.posts)
        confirm_all(bal, control)
        bal.tick()
        if len(control.posts) == n:
            return


def start(bal, control, addrs_keys):
    """Connect, feed each instance's descriptor, publish; confirm every upload."""
    bal.tick()
    for addr, keys in addrs_keys:
        bal.handle(content(addr, 100, 1, keys))
    bal.tick()
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)


# ----------------------------------------------------------------------------- item 3: SIGHUP

def balancer_from_file(tmp_path, path, control=None, clocks=None):
    from onion.config import load_config, load_keys

    cfg = load_config(str(path))
    control = control or Control()
    clocks = clocks or Clocks()
    proto = FakeProtocol()
    bal = Balancer(cfg, load_keys(cfg), control, proto, None, clock=clocks.wall, monotonic=clocks.mono)
    return bal, control, proto, clocks


def test_sighup_survives_a_lost_control_connection_and_a_refused_hsfetch(tmp_path):
    """reload() let a ControlError (tor gone while re-reading the ring) or a refused HSFETCH
    (for a new instance) escape step(), which ends run_forever: the daemon died on SIGHUP."""
    path, key, front, insts = real_config(tmp_path)
    bal, control, proto, clocks = balancer_from_file(tmp_path, path)
    start(bal, control, [(i.address, [f"k{n}"]) for n, i in enumerate(insts)])
    newcomer = IdentityKey.generate()

    # a new instance whose HSFETCH tor refuses
    write_config(path, key, insts + [newcomer])
    control.refuse_fetch.add(newcomer.address)
    bal.reload_requested = True
    bal.step()                                             # must not raise
    assert newcomer.address in bal.instances and bal.connected
    assert "HSFETCH refused" in bal.instances[newcomer.address].last_error

    # tor's control connection breaks while the reload re-reads the hash ring
    def broken(_control):
        raise ControlError("control connection closed")

    proto.refresh = broken
    write_config(path, key, insts)
    bal.reload_requested = True
    bal.step()                                             # must not raise
    assert set(bal.instances) == {i.address for i in insts}  # the new config is in force
    assert not bal.connected and "closed" in bal.last_error  # and it reconnects


@pytest.mark.parametrize("fault", ["odd EC curve key", "deeply nested YAML", "month 13"])
def test_a_config_that_cannot_load_keeps_the_old_one_and_says_why_once(tmp_path, caplog, fault):
    path, key, front, insts = real_config(tmp_path)
    bal, control, proto, clocks = balancer_from_file(tmp_path, path)
    start(bal, control, [(i.address, [f"k{n}"]) for n, i in enumerate(insts)])
    if fault == "odd EC curve key":
        odd = tmp_path / "odd.pem"
        odd.write_bytes(ODD_CURVE_PEM)
        os.chmod(odd, 0o600)
        write_config(path, odd, insts)
        expect = "cannot load"
    elif fault == "deeply nested YAML":
        path.write_text("frontends: " + "[" * 20000 + "]" * 20000 + "\n")
        expect = "nests too deeply"
    else:
        path.write_text(path.read_text() + "when: 2001-13-45\n")
        expect = "cannot construct"
    caplog.set_level(logging.INFO, logger="onion.balancer")
    bal.reload_requested = True
    bal.step()                                             # must not raise
    assert "reload failed, old config kept" in bal.last_error and expect in bal.last_error
    assert bal.frontends[0].address == front.address and set(bal.instances) == {i.address for i in insts}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "reload failed" in errors[0].getMessage()
    assert errors[0].exc_info is None                      # one line, no traceback
    # still publishing with the old config
    n = len(control.posts)
    bal.handle(content(insts[0].address, 100, 2, ["new"]))
    bal.tick()
    assert len(control.posts) > n


def test_startup_with_those_configs_is_one_clear_line(tmp_path, capsys):
    from onion.__main__ import main

    path, key, front, insts = real_config(tmp_path)
    odd = tmp_path / "odd.pem"
    odd.write_bytes(ODD_CURVE_PEM)
    os.chmod(odd, 0o600)
    write_config(path, odd, insts)
    assert main(["run", "--config", str(path), "--control-port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ed25519" in err[0]
    path.write_text("frontends: " + "[" * 20000 + "]" * 20000 + "\n")
    assert main(["maps", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nests too deeply" in err[0]


# ----------------------------------------------------------------------------- item 4: HSFETCH

def test_a_refused_hsfetch_backs_off_that_instance_only(tmp_path):
    """tor refusing one HSFETCH (`552 Unknown SERVER`) used to abort the whole tick: no
    fetch, probe or publish for anyone, every second."""
    bal, control, proto, prober, clocks = make(tmp_path, instances=(B, A))
    control.refuse_fetch.add(A)   # A sorts first among the instances tor is asked about
    bal.tick()
    assert B in [a for a, _ in control.fetches]            # B was fetched despite A
    bal.handle(content(B, 100, 1, ["b1", "b2"]))
    clocks.advance(10)                                     # past the start-up hold
    bal.tick()
    assert control.posts and all(keys == ("b1", "b2") for _, _, keys in posted_keys(control))
    assert prober.started == [B]                           # and B is probed
    assert "HSFETCH refused" in bal.status()["frontends"][0]["instances"][1]["last_error"]
    # A is retried with backoff, not every tick
    fetch_attempts = []
    for _ in range(120):
        before = len(control.fetches)
        control.refuse_fetch.discard(A)
        clocks.advance(1)
        bal.tick()
        if any(a == A for a, _ in control.fetches[before:]):
            fetch_attempts.append(clocks.mono_t)
        control.refuse_fetch.add(A)
    # no success recorded while refused; when allowed it is retried after a backoff
    assert len(fetch_attempts) >= 1 and len(fetch_attempts) < 10
    # a republish due meanwhile still goes out
    confirm_all(bal, control)
    n = len(control.posts)
    clocks.advance(REPUBLISH_INTERVAL)
    bal.handle(content(B, 100, 2, ["b1", "b2"]))           # keep B's descriptor fresh
    bal.tick()
    assert len(control.posts) > n


# ----------------------------------------------------------------------------- item 5: standby

def test_standby_switched_to_publish_by_sighup_uploads_at_once(tmp_path):
    """Standby records counted as uploaded: after `publish: true` and SIGHUP the first
    upload came 60 minutes later."""
    path, key, front, insts = real_config(tmp_path, publish=False)
    bal, control, proto, clocks = balancer_from_file(tmp_path, path)
    start(bal, control, [(i.address, [f"k{n}"]) for n, i in enumerate(insts)])
    assert control.posts == [] and bal.book.records
    write_config(path, key, insts, publish=True)
    bal.reload_requested = True
    clocks.advance(1)
    bal.step()
    hsdirs = {h for s in bal.frontends[0].slots for h in s.hsdirs}
    # every HSDir gets an upload now (one per HSDir in flight at a time: H3 serves both)
    assert {h for _, _, h in control.posts} == hsdirs
    confirm_all(bal, control)
    bal.tick()
    assert {(p, h) for p, h, _ in posted_keys(control)} == {(str(s.period), h) for s in bal.frontends[0].slots
                                                           for h in s.hsdirs}


# ----------------------------------------------------------------------------- item 6: clocks

def test_wall_clock_stepped_back_does_not_delay_the_republish(tmp_path):
    """Scheduling on the wall clock: after the clock stepped back 3 h, the next upload
    came 240 minutes later, after HSDirs had dropped the descriptor (180 min)."""
    bal, control, proto, prober, clocks = make(tmp_path, probe=ProbeSettings(enabled=False))
    start(bal, control, [(A, ["a1"]), (B, ["b1"])])
    n = len(control.posts)
    clocks.wall_t -= 3 * 3600                              # NTP steps the clock back 3 h
    for _ in range(int(REPUBLISH_INTERVAL // 60)):
        clocks.advance(60)
        bal.handle(content(A, 100, 1, ["a1"]))             # the instances stay fresh
        bal.handle(content(B, 100, 1, ["b1"]))
        bal.tick()
    assert len(control.posts) > n                          # republished on time
    # a clock stepped *forward* does not rush anything either
    settle(bal, control)
    n = len(control.posts)
    clocks.wall_t += 6 * 3600
    bal.tick()
    assert len(control.posts) == n
    # the status still shows wall-clock times
    st = bal.status()
    assert abs(st["written_at"] - clocks.wall_t) < 1
    up = st["frontends"][0]["descriptors"][0]["hsdirs"][0]
    assert abs(up["confirmed_at"] - clocks.wall_t) < REPUBLISH_INTERVAL + 10


def test_descriptor_staleness_and_probe_schedule_ignore_wall_steps(tmp_path):
    bal, control, proto, prober, clocks = make(tmp_path)
    start(bal, control, [(A, ["a1"]), (B, ["b1"])])
    clocks.wall_t += 4 * 3600                              # more than STALE_AFTER on the wall
    bal.tick()
    assert all(bal.instances[a].has_valid_descriptor(clocks.mono(), 0) for a in (A, B))
    for addr in (A, B):
        bal.handle(ProbeResult(addr, True, "connected", 1.0))
    started = len(prober.started)
    clocks.wall_t -= 8 * 3600
    for _ in range(21):
        clocks.advance(1)
        bal.tick()
    assert len(prober.started) > started                   # probes keep their 20 s interval


# ----------------------------------------------------------------------------- item 9: probe path

class HoldingSocks:
    """A SOCKS5 server on 127.0.0.1 that records each CONNECT target and answers success,
    or holds every connection open until `release` (to count concurrent probes)."""

    def __init__(self, hold: bool = False):
        self.hold = threading.Event()
        if not hold:
            self.hold.set()
        self.lock = threading.Lock()
        self.targets: list[str] = []
        self.waiting = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _recv(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _one(self, conn):
        with conn:
            try:
                self._recv(conn, 3)
                conn.sendall(b"\x05\x02")
                _, ulen = self._recv(conn, 2)
                self._recv(conn, ulen)
                plen = self._recv(conn, 1)[0]
                self._recv(conn, plen)
                conn.sendall(b"\x01\x00")
                req = self._recv(conn, 5)
                name = self._recv(conn, req[4]).decode()
                self._recv(conn, 2)
                with self.lock:
                    self.targets.append(name)
                    self.waiting += 1
                self.hold.wait(60)
                conn.sendall(bytes([5, 0, 0, 1]) + bytes(6))
            except OSError:
                pass

    def close(self):
        self.hold.set()
        self.sock.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(bal, results: queue.Queue, n: int, timeout: float = 20.0) -> None:
    for _ in range(n):
        bal.handle(results.get(timeout=timeout))


def test_without_socks_port_the_balancer_asks_tor_where_its_socksport_is(tmp_path):
    """OnionBalance's config.yaml names no SocksPort: the balancer probed 127.0.0.1:9050
    and, on a tor listening elsewhere, saw every instance fail."""
    from onion.config import load_config

    socks = HoldingSocks()
    front, a = IdentityKey.generate(), IdentityKey.generate()
    key = tmp_path / "front.key"
    key.write_bytes(front.to_pem())
    os.chmod(key, 0o600)
    path = tmp_path / "config.yaml"
    path.write_text(f"services:\n  - key: front.key\n    instances:\n      - address: {a.address}\n"
                    "        name: web1\n")
    cfg = load_config(str(path), state_dir=str(tmp_path / "state"))
    assert cfg.socks_port is None
    control = Control({"net/listeners/socks": f'"127.0.0.1:{socks.port}" "unix:/nonexistent/socks"'})
    results: queue.Queue = queue.Queue()
    prober = Prober(cfg.socks_port, 80, 5, results.put, instances=1)
    clocks = Clocks()
    from onion.config import load_keys
    bal = Balancer(cfg, load_keys(cfg), control, FakeProtocol(), prober, clock=clocks.wall, monotonic=clocks.mono)
    bal.tick()
    assert "net/listeners/socks" in control.info_asked
    bal.handle(content(a.address, 100, 1, ["a1"]))
    bal.tick()
    drain(bal, results, 1)
    assert socks.targets == [f"{a.address}.onion"]
    inst = bal.status()["frontends"][0]["instances"][0]
    assert inst["healthy"] is True and bal.status()["probes"]["socks"] == f"127.0.0.1:{socks.port}"
    socks.close()


def test_every_probe_failing_locally_is_one_loud_problem_not_every_instance_down(tmp_path, caplog):
    """A SocksPort nobody listens on: every probe is refused locally. Before, each instance
    was marked down, the balancer quietly fell back to publishing them all, and a worker
    that really died was never dropped. Now: instances keep their state, the status and
    the log say the probe path is broken, once."""
    results: queue.Queue = queue.Queue()
    port = closed_port()
    prober = Prober(port, 80, 5, results.put, instances=3)
    bal, control, proto, _, clocks = make(tmp_path, instances=(A, B, C), socks_port=port, prober=prober)
    caplog.set_level(logging.INFO, logger="onion.balancer")
    bal.tick()
    for addr in (A, B, C):
        bal.handle(content(addr, 100, 1, [addr[0] + "1"]))
    for _ in range(4):                                     # > probe.failures rounds of probes
        clocks.advance(20)
        bal.tick()
        drain(bal, results, 3)
    st = bal.status()
    assert all(i["healthy"] is not False for i in st["frontends"][0]["instances"])
    assert all(bal.instances[a].probe.consecutive_failures == 0 for a in (A, B, C))
    assert st["probes"]["working"] is False and f"127.0.0.1:{port}" in st["probes"]["error"]
    assert "liveness probes cannot run" in st["frontends"][0]["note"]
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR and "liveness probes" in r.getMessage()]
    assert len(loud) == 1                                  # said once, not per probe
    # the probe path comes back: the same probes now count, and recovery is logged
    socks = HoldingSocks()
    prober.set_socks(socks.port)
    clocks.advance(20)
    bal.tick()
    drain(bal, results, 3)
    assert bal.status()["probes"]["working"] is True
    assert all(i["healthy"] is True for i in bal.status()["frontends"][0]["instances"])
    socks.close()


def test_tor_without_socksport_is_reported(tmp_path):
    control = Control({"net/listeners/socks": ""})
    bal, control, proto, prober, clocks = make(tmp_path, socks_port=None, control=control,
                                               prober=Prober(None, 80, 5, lambda m: None))
    bal.tick()
    st = bal.status()
    assert st["probes"]["socks"] is None and "tor has no SocksPort" in st["probes"]["error"]


# ----------------------------------------------------------------------------- item 10: probe pool

def test_probes_of_every_instance_run_at_once_and_never_twice():
    """8 probe threads for 240 instances (30 workers x 8 daemons): probes lagged minutes and
    were re-submitted while still queued, so some ran twice."""
    socks = HoldingSocks(hold=True)
    results: queue.Queue = queue.Queue()
    addresses = [f"{i:03d}".ljust(56, "x") for i in range(240)]
    prober = Prober(socks.port, 80, 30, results.put, instances=len(addresses))
    for address in addresses:
        assert prober.start(address)
    deadline = time.monotonic() + 60
    while socks.waiting < len(addresses) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert socks.waiting == len(addresses)                 # all running at once, none queued
    assert not prober.start(addresses[0])                  # still running: not started again
    socks.hold.set()
    got = [results.get(timeout=30) for _ in addresses]
    assert all(r.ok for r in got)
    time.sleep(0.2)
    assert sorted(socks.targets) == sorted(f"{a}.onion" for a in addresses)  # each exactly once
    prober.resize(2000)
    assert prober.limit >= 1000
    socks.close()


# ----------------------------------------------------------------------------- item 11: disk full

def test_a_full_disk_is_logged_once_not_every_second(tmp_path, caplog, monkeypatch):
    """Every status write failed with ENOSPC and each was logged: one error line a second."""
    bal, control, proto, prober, clocks = make(tmp_path)
    start(bal, control, [(A, ["a1"]), (B, ["b1"])])
    real_mkstemp = tempfile.mkstemp

    def full_disk(*args, **kwargs):  # the temp file is created, its writes hit /dev/full
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(status_module.tempfile, "mkstemp", full_disk)
    caplog.set_level(logging.INFO, logger="onion.balancer")
    for i in range(900):
        clocks.advance(1)
        bal.handle(DescEvent("RECEIVED", A, "H1"))         # something changes every second
        bal.tick()
    errors = [r.getMessage() for r in caplog.records if "cannot write status" in r.getMessage()]
    assert 1 <= len(errors) <= 2, errors                   # at start, then after 10 minutes
    assert "No space left on device" in errors[0]
    assert len(errors) == 1 or "more failed writes" in errors[1]
    assert [f for f in os.listdir(tmp_path / "state") if f.startswith(".status")] == []
    monkeypatch.setattr(status_module.tempfile, "mkstemp", real_mkstemp)
    clocks.advance(1)
    bal.handle(DescEvent("RECEIVED", A, "H1"))
    bal.tick()
    assert any("written again" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "state" / "status.json").exists()
    assert errno.ENOSPC  # (the errno the kernel's /dev/full gives)


def test_status_text_says_when_probes_cannot_run(tmp_path):
    from onion.status import format_status

    port = closed_port()
    results: queue.Queue = queue.Queue()
    bal, control, proto, _, clocks = make(tmp_path, socks_port=port,
                                          prober=Prober(port, 80, 5, results.put, instances=2))
    bal.tick()
    bal.handle(content(A, 100, 1, ["a1"]))
    bal.tick()
    drain(bal, results, 1)
    text = format_status(bal.status(), now=clocks.wall())
    assert "PROBES NOT WORKING" in text and f"127.0.0.1:{port}" in text
