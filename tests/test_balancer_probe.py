"""Liveness probes: the SOCKS5 exchange with tor's SocksPort, against a fake SOCKS server."""
from __future__ import annotations

import queue
import socket
import struct
import threading

from onion.probe import Prober, socks_connect


class FakeSocks:
    """Speaks just enough SOCKS5 (RFC 1928/1929); answers CONNECT with `reply`."""

    def __init__(self, reply: int = 0, *, method: int = 2, close_early: bool = False):
        self.reply, self.method, self.close_early = reply, method, close_early
        self.users: list[str] = []
        self.targets: list[tuple[str, int]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._one(conn)
                except OSError:
                    pass

    def _one(self, conn):
        head = conn.recv(3)
        assert head == b"\x05\x01\x02"
        conn.sendall(bytes([5, self.method]))
        if self.method != 2:
            return
        ver, ulen = conn.recv(2)
        user = conn.recv(ulen).decode()
        plen = conn.recv(1)[0]
        conn.recv(plen)
        self.users.append(user)
        conn.sendall(b"\x01\x00")
        if self.close_early:
            return
        req = conn.recv(5)
        name = conn.recv(req[4]).decode()
        port = struct.unpack(">H", conn.recv(2))[0]
        self.targets.append((name, port))
        conn.sendall(bytes([5, self.reply, 0, 1]) + bytes(6))

    def close(self):
        self.sock.close()


def test_connect_success_and_target():
    srv = FakeSocks(0)
    assert socks_connect(srv.port, "x" * 56 + ".onion", 80, username="u1", timeout=5) == ""
    assert srv.targets == [("x" * 56 + ".onion", 80)] and srv.users == ["u1"]
    srv.close()


def test_tor_onion_failure_codes_are_named():
    for code, text in [(0xF2, "onion introduction failed"), (0x04, "host unreachable"),
                       (0xF0, "onion descriptor not found"), (0x99, "SOCKS reply 0x99")]:
        srv = FakeSocks(code)
        assert socks_connect(srv.port, "a.onion", 80, username="u", timeout=5) == text
        srv.close()


def test_proxy_without_username_auth():
    srv = FakeSocks(method=0xFF)
    assert "refused username/password" in socks_connect(srv.port, "a.onion", 80, username="u", timeout=5)
    srv.close()


def test_prober_reports_every_result_with_a_fresh_username_each_time():
    srv = FakeSocks(0)
    results: "queue.Queue" = queue.Queue()
    prober = Prober(srv.port, 8080, 5, results.put)
    got = []
    for _ in range(3):  # one at a time: a probe of an address still running is not started
        assert prober.start("b" * 56)
        got.append(results.get(timeout=10))
    assert all(r.ok and r.address == "b" * 56 and r.detail == "connected" for r in got)
    assert len(set(srv.users)) == 3  # IsolateSOCKSAuth: new circuits per probe
    assert {t[1] for t in srv.targets} == {8080}
    prober.close()
    srv.close()


def test_prober_turns_connection_errors_into_failed_results():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    results: "queue.Queue" = queue.Queue()
    prober = Prober(dead_port, 80, 2, results.put)
    prober.start("c" * 56)
    r = results.get(timeout=10)
    assert not r.ok and "ConnectionRefusedError" in r.detail
    srv = FakeSocks(close_early=True)
    prober = Prober(srv.port, 80, 2, results.put)
    prober.start("c" * 56)
    r = results.get(timeout=10)
    # the proxy hangs up mid-handshake: a clean close or a reset, depending on timing
    assert not r.ok and ("closed the connection" in r.detail or "ConnectionResetError" in r.detail)
    srv.close()
