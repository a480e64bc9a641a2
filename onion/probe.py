"""Liveness probes: connect to an instance address through the balancer tor's SocksPort.

A dead worker's descriptor stays on the HSDirs for hours, so a successful HSFETCH proves
nothing. A SOCKS CONNECT to `<instance>.onion:PORT` succeeds only if tor completed the
introduction and the rendezvous with the instance, i.e. the instance is alive now.

Every probe uses a fresh SOCKS username, so tor's IsolateSOCKSAuth (on by default) puts it
on fresh circuits: one bad circuit does not fail every later probe.

The SOCKS5 client is hand-written (RFC 1928 + RFC 1929, ~40 lines) because the standard
library has none and the balancer machine installs only onion/requirements.txt.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

# SOCKS5 reply codes (RFC 1928) and tor's extended onion-service codes (tor's socks5 reply
# 0xF0-0xF7, prop304), so a failed probe says why.
_REPLIES = {
    0x01: "general failure", 0x02: "not allowed", 0x03: "network unreachable",
    0x04: "host unreachable", 0x05: "connection refused", 0x06: "TTL expired",
    0x07: "command not supported", 0x08: "address type not supported",
    0xF0: "onion descriptor not found", 0xF1: "onion descriptor invalid",
    0xF2: "onion introduction failed", 0xF3: "onion rendezvous failed",
    0xF4: "onion client auth missing", 0xF5: "onion client auth incorrect",
    0xF6: "onion address invalid", 0xF7: "onion introduction timed out",
}


@dataclass(frozen=True)
class ProbeResult:
    address: str
    ok: bool
    detail: str
    seconds: float


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("SOCKS proxy closed the connection")
        data += chunk
    return data


def socks_connect(socks_port: int, host: str, port: int, *, username: str, timeout: float) -> str:
    """SOCKS5 CONNECT via 127.0.0.1:socks_port; returns "" on success or the failure reason."""
    with socket.create_connection(("127.0.0.1", socks_port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"\x05\x01\x02")  # version 5, one method: username/password
        ver, method = _recv_exact(sock, 2)
        if ver != 5 or method != 2:
            return f"SOCKS proxy refused username/password auth (method {method:#x})"
        user = username.encode()[:255]
        sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x01x")
        if _recv_exact(sock, 2)[1] != 0:
            return "SOCKS auth rejected"
        name = host.encode()[:255]
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        head = _recv_exact(sock, 4)
        if head[1] != 0:
            return _REPLIES.get(head[1], f"SOCKS reply {head[1]:#x}")
        return ""


class Prober:
    """Runs probes on a small thread pool; each result goes to `sink` (the balancer queue)."""

    def __init__(self, socks_port: int, port: int, timeout: float, sink: Callable[[object], None],
                 workers: int = 8):
        self.socks_port = socks_port
        self.port = port
        self.timeout = timeout
        self._sink = sink
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        # A per-process random prefix plus a counter: never reuse an isolation username.
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def start(self, address: str) -> None:
        username = f"onion-probe-{self._prefix}-{next(self._counter)}"
        self._pool.submit(self._run, address, username)

    def _run(self, address: str, username: str) -> None:
        started = time.monotonic()
        try:
            why = socks_connect(self.socks_port, f"{address}.onion", self.port,
                                username=username, timeout=self.timeout)
        except (OSError, ConnectionError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._sink(ProbeResult(address=address, ok=not why, detail=why or "connected",
                               seconds=time.monotonic() - started))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
