"""bench/flood.py's flood client against a SOCKS5 server on 127.0.0.1 that records what it
is sent: every introduction is its own SOCKS CONNECT with its own isolation token (so tor
builds a new introduction and rendezvous for each), to the onion on port 80; the caps hold
whatever the caller asks; only onion targets are accepted."""
from __future__ import annotations

import socket
import struct
import threading

import pytest

from bench import flood as fl


class FakeSocks:
    """Accepts SOCKS5 username/password CONNECTs, records (user, host, port), and answers
    success, failure or nothing by the user's name."""

    def __init__(self):
        self.seen: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            f = conn.makefile("rb")
            assert f.read(3) == b"\x05\x01\x02"
            conn.sendall(b"\x05\x02")
            ver, ulen = f.read(2)
            user = f.read(ulen).decode()
            plen = f.read(1)[0]
            f.read(plen)
            conn.sendall(b"\x01\x00")
            head = f.read(5)
            host = f.read(head[4]).decode()
            (port,) = struct.unpack(">H", f.read(2))
            with self.lock:
                self.seen.append((user, host, port))
            import time
            time.sleep(0.02)
            conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
            f.read(1)  # until the client closes
        except (OSError, AssertionError, IndexError):
            pass
        finally:
            conn.close()


@pytest.fixture
def in_flight(monkeypatch):
    """The most introductions the flood had in flight at once (counted on its side)."""
    state = {"now": 0, "peak": 0}
    original = fl._socks_connect

    async def counted(*args, **kwargs):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            return await original(*args, **kwargs)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(fl, "_socks_connect", counted)
    return state


def test_each_introduction_is_its_own_isolated_connect_and_the_count_is_capped(in_flight):
    server = FakeSocks()
    onion = "a" * 55 + "d.onion"
    result = fl.flood([server.port], onion, concurrency=8, seconds=20, limit=40, timeout=5, tag="t")
    assert (result.started, result.connected, result.failed, result.timed_out) == (40, 40, 0, 0)
    users = [u for u, _, _ in server.seen]
    assert len(users) == len(set(users)) == 40                 # a new isolation token each time
    assert {(h, p) for _, h, p in server.seen} == {(onion, 80)}
    assert in_flight["peak"] == 8                               # the concurrency asked for


def test_the_hard_caps_and_the_onion_only_target(in_flight):
    with pytest.raises(ValueError, match="not an onion address"):
        fl.flood([9], "127.0.0.1", concurrency=1, seconds=1, limit=1, timeout=1, tag="t")
    server = FakeSocks()
    result = fl.flood([server.port], "b" * 55 + "d.onion", concurrency=10_000, seconds=0.5, limit=10**9,
                      timeout=5, tag="t")
    assert in_flight["peak"] == fl.MAX_CONCURRENCY
    assert result.seconds < 10 and result.started <= fl.MAX_INTRODUCTIONS
