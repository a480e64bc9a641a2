"""Fast checks of the lab's parts that need no running network."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

from lab import __main__ as lab_cli
from lab.origin import make_test_ca, page
from lab.ports import PortAllocator
from lab.procs import ProcessRegistry
from lab.tornet import TorNetwork


def test_port_allocator_gives_distinct_bindable_ports():
    ports = PortAllocator()
    taken = [ports.take() for _ in range(50)]
    assert len(set(taken)) == 50
    for port in taken[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def _sleeper(state_dir):
    return [sys.executable, "-c", "import time; time.sleep(60)", str(state_dir)]


def test_registry_records_pid_and_stops_by_pid(tmp_path):
    procs = ProcessRegistry(tmp_path)
    proc = procs.start("sleeper", _sleeper(tmp_path))
    assert procs.pid("sleeper") == proc.pid
    assert procs.is_running("sleeper")
    # A second registry (as `python -m lab down` would create) finds and stops it.
    other = ProcessRegistry(tmp_path)
    assert other.is_running("sleeper")
    assert other.stop_all() == ["sleeper"]
    proc.wait(timeout=5)
    assert proc.returncode is not None
    assert procs.names() == []


def test_registry_never_signals_a_pid_that_is_not_the_labs(tmp_path):
    procs = ProcessRegistry(tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs.pid_dir.mkdir(parents=True)
        (procs.pid_dir / "recycled.pid").write_text(f"{stranger.pid}\n")
        assert not procs.is_running("recycled")
        assert procs.stop_all() == []
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


def test_registry_refuses_commands_that_do_not_name_the_state_dir(tmp_path):
    with pytest.raises(ValueError, match="must mention"):
        ProcessRegistry(tmp_path).start("x", ["sleep", "1"])


def test_anchor_exits_when_its_parent_does(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from lab.procs import ProcessRegistry\n"
            "print(ProcessRegistry(%r).start_anchor(), flush=True)\n" % (os.getcwd(), str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    anchor = int(out.stdout)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{anchor}") and time.monotonic() < deadline:
        time.sleep(0.05)
    state = open(f"/proc/{anchor}/stat").read().split()[2] if os.path.exists(f"/proc/{anchor}") else "gone"
    assert state in ("gone", "Z")


def test_voting_interval_below_tors_minimum_is_refused(tmp_path):
    with pytest.raises(ValueError, match="voting_interval: 5 s is below tor's minimum"):
        TorNetwork.create(tmp_path, PortAllocator(), voting_interval=5)


@pytest.mark.tools
def test_every_generated_torrc_passes_tor_verify_config(tmp_path):
    net = TorNetwork.create(tmp_path, PortAllocator(), voting_interval=10, owner_pid=os.getpid())
    assert len(net.authorities) == 3 and len(net.relays) == 8
    assert len({n.fingerprint for n in net.relays}) == 8
    text = net.network_torrc.read_text()
    assert text.count("DirAuthority ") == 3
    assert "TestingTorNetwork 1" in text and f"__OwningControllerProcess {os.getpid()}" in text
    # a fixed circuit-build timeout: a learned one is ~50 ms on loopback (CI flakes)
    assert "LearnCircuitBuildTimeout 0\n" in text and "CircuitBuildTimeout 10\n" in text
    for node in net.nodes:
        out = subprocess.run(["tor", "--verify-config", "-f", str(node.torrc)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (node.nickname, out.stdout[-2000:])
    auth = net.authorities[0].torrc.read_text()
    assert "V3AuthVotingInterval 10" in auth and "TestingV3AuthInitialVotingInterval 10" in auth
    exit_torrc = net.node("relay0").torrc.read_text()
    assert "ExitPolicy accept 127.0.0.0/8:*" in exit_torrc
    assert "ExitPolicy accept" not in net.node("relay4").torrc.read_text()
    # network.json round-trips: status and down work from a fresh process.
    again = TorNetwork.load(tmp_path)
    assert again.nodes == net.nodes and again.voting_interval == 10


def test_origin_certificate_verifies_only_for_its_domain(tmp_path):
    files = make_test_ca(tmp_path, "lab.example")
    assert oct(files["key"].stat().st_mode & 0o777) == "0o600"
    ctx = ssl.create_default_context(cafile=str(files["ca"]))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files["cert"], files["key"])
    for name, ok in (("lab.example", True), ("www.lab.example", True), ("evil.example", False)):
        assert _client_accepts(ctx, server_ctx, name) is ok, name


def _client_accepts(client_ctx, server_ctx, name: str) -> bool:
    """A TLS handshake over a socketpair; True if the client accepts the server for name."""
    import threading

    a, b = socket.socketpair()
    with a, b:
        def serve():
            try:
                with server_ctx.wrap_socket(b, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass
        t = threading.Thread(target=serve)
        t.start()
        try:
            with client_ctx.wrap_socket(a, server_hostname=name):
                return True
        except ssl.SSLCertVerificationError:
            return False
        finally:
            a.close()
            t.join(5)


def test_origin_pages_link_absolutely_to_its_domain():
    status, body = page("/", "lab.example", 1)
    assert status == 200
    assert 'href="https://lab.example/about"' in body
    assert 'href="https://static.lab.example/style.css"' in body
    assert "origin-listener: 1" in body
    assert page("/nope", "lab.example", 0)[0] == 404


@pytest.mark.parametrize("argv, message", [
    (["up", "--workers", "0"], "--workers: '0' is not a whole number in 1..8"),
    (["up", "--voting-interval", "5"], "--voting-interval: '5' is not a whole number in 10..300"),
    (["up", "--balancer", "nginx"], "invalid choice: 'nginx'"),
])
def test_cli_rejects_bad_arguments_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        lab_cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_status_without_a_lab_says_how_to_start_one(tmp_path, capsys):
    assert lab_cli.main(["--state-dir", str(tmp_path), "status"]) == 2
    assert "run `python -m lab up`" in capsys.readouterr().err


def test_cli_down_without_a_lab_stops_nothing(tmp_path, capsys):
    assert lab_cli.main(["--state-dir", str(tmp_path), "down"]) == 0
    assert "stopped 0 processes" in capsys.readouterr().out


def test_a_request_in_flight_when_the_worker_dies_counts_as_during_not_before():
    from lab.client import Probe, split_around

    done = Probe(at=100.0, ok=True, seconds=1.0)            # finished before the kill at 110
    in_flight = Probe(at=109.5, ok=False, seconds=30.0)     # the kill broke it (CI, 10:42:57)
    during = Probe(at=115.0, ok=False, seconds=3.0)
    after = Probe(at=125.0, ok=True, seconds=1.0)            # failover over at 125
    before, mid, later = split_around([done, in_flight, during, after], 110.0, 125.0)
    assert before == [done] and mid == [in_flight, during] and later == [after]


def test_probe_loop_keeps_its_pace_while_a_request_hangs(monkeypatch):
    import time as _time

    import lab.client as client

    def fake_fetch(port, url, isolation=None, timeout=30.0):
        if isolation.startswith("p1-"):  # the first request hangs, as one did in test c
            _time.sleep(1.5)
            return client.Response(ok=False, error="curl: (28) timed out", seconds=1.5)
        return client.Response(ok=True, status=200, seconds=0.01)

    monkeypatch.setattr(client, "fetch", fake_fetch)
    loop = client.ProbeLoop(1, "http://x.onion/", interval=0.1, timeout=2.0, prefix="p").start()
    _time.sleep(1.0)
    during_hang = loop.snapshot()
    probes = loop.stop()
    assert len(during_hang) >= 5 and all(p.ok for p in during_hang)  # kept going meanwhile
    assert not probes[0].ok and probes[0].seconds == 1.5               # the hung one, first
    assert [p.at for p in probes] == sorted(p.at for p in probes)
