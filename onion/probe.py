"""Liveness probes: connect to an instance address through the balancer tor's SocksPort.

A dead worker's descriptor stays on the HSDirs for hours, so a successful HSFETCH proves
nothing. A SOCKS CONNECT to `<instance>.onion:PORT` succeeds only if tor completed the
introduction and the rendezvous with the instance, i.e. the instance is alive now.

Every probe uses a fresh SOCKS username, so tor's IsolateSOCKSAuth (on by default) puts it
on fresh circuits: one bad circuit does not fail every later probe.

A failure is *local* when it happened before tor said anything about the onion service:
the SOCKS port refused the connection (nothing listens there), the proxy would not speak
SOCKS5 with username auth, or tor's SocksPolicy refused us. Such a failure says nothing
about the instance; the balancer reports its probe path as broken instead of marking every
instance down (see onion/balancer.py).

Each probe runs in a thread of its own, at most one per instance address at a time: a
probe is never queued behind others (a fixed pool of 8 lagged minutes behind at 240
instances, and re-submitted probes still waiting in its queue ran twice), and `start`
refuses an address whose probe is still running. The number of probes running at once is
thus bounded by the number of instances (and by `limit`, sized from it).

The SOCKS5 client is hand-written (RFC 1928 + RFC 1929, ~40 lines) because the standard
library has none and the balancer machine installs only onion/requirements.txt.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import time
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
# Replies that tor gives without trying the onion service: its own SocksPolicy refused us.
_LOCAL_REPLIES = {0x02}

MIN_PROBE_THREADS = 8
MAX_PROBE_THREADS = 1024  # one per instance; far above any site's instance count


@dataclass(frozen=True)
class SocksEndpoint:
    """Where tor's SocksPort listens: a TCP port on this host, or a unix socket."""
    host: str = "127.0.0.1"
    port: int | None = None
    path: str | None = None

    def describe(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)


def parse_socks_listeners(reply: str) -> list[SocksEndpoint]:
    """`GETINFO net/listeners/socks` ("127.0.0.1:9050" "unix:/run/tor/socks" ..., each
    quoted, space-separated; control-spec) -> endpoints this host can connect to. A
    wildcard listener is reached on loopback."""
    out: list[SocksEndpoint] = []
    for item in reply.split():
        item = item.strip().strip('"')
        if not item:
            continue
        if item.startswith("unix:"):
            if item[5:].startswith("/"):
                out.append(SocksEndpoint(path=item[5:]))
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            continue
        host = host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        out.append(SocksEndpoint(host=host, port=int(port)))
    # loopback TCP first, then unix sockets, then anything else this host listens on
    return sorted(out, key=lambda e: 0 if e.host in ("127.0.0.1", "::1") and not e.path else
                  1 if e.path else 2)


@dataclass(frozen=True)
class ProbeResult:
    address: str
    ok: bool
    detail: str
    seconds: float
    local: bool = False  # failed before tor tried the onion service: our probe path is broken


class _LocalFailure(Exception):
    """The SOCKS proxy itself failed us (not the onion service)."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("SOCKS proxy closed the connection")
        data += chunk
    return data


def _socks_connect(socks: SocksEndpoint, host: str, port: int, *, username: str,
                   timeout: float) -> tuple[str, bool]:
    """SOCKS5 CONNECT; ("", False) on success, else (reason, local)."""
    try:
        sock = socks.connect(timeout)
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return f"cannot connect to tor's SocksPort {socks.describe()}: {why}", True
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(b"\x05\x01\x02")  # version 5, one method: username/password
            ver, method = _recv_exact(sock, 2)
            if ver != 5 or method != 2:
                return f"SOCKS proxy refused username/password auth (method {method:#x})", True
            user = username.encode()[:255]
            sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x01x")
            if _recv_exact(sock, 2)[1] != 0:
                return "SOCKS auth rejected", True
        except (OSError, ConnectionError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return f"SOCKS handshake with {socks.describe()} failed: {why}", True
        name = host.encode()[:255]
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        head = _recv_exact(sock, 4)
        if head[1] != 0:
            return _REPLIES.get(head[1], f"SOCKS reply {head[1]:#x}"), head[1] in _LOCAL_REPLIES
        return "", False


def socks_connect(socks: int | SocksEndpoint, host: str, port: int, *, username: str,
                  timeout: float) -> str:
    """SOCKS5 CONNECT via tor's SocksPort (a port on 127.0.0.1, or an endpoint); returns
    "" on success or the failure reason."""
    endpoint = socks if isinstance(socks, SocksEndpoint) else SocksEndpoint(port=socks)
    try:
        return _socks_connect(endpoint, host, port, username=username, timeout=timeout)[0]
    except (OSError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Prober:
    """Runs each probe in its own thread; each result goes to `sink` (the balancer queue).

    `socks`: tor's SocksPort (a port on 127.0.0.1 or a `SocksEndpoint`), or None until the
    balancer has asked tor (`set_socks`). `instances`: how many instances will be probed,
    which sizes `limit` (`resize` when a reload changes it)."""

    def __init__(self, socks: int | SocksEndpoint | None, port: int, timeout: float,
                 sink: Callable[[object], None], *, instances: int = MIN_PROBE_THREADS):
        self.socks: SocksEndpoint | None = None
        self.set_socks(socks)
        self.port = port
        self.timeout = timeout
        self._sink = sink
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._closed = False
        self.limit = MIN_PROBE_THREADS
        self.resize(instances)
        # A per-process random prefix plus a counter: never reuse an isolation username.
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def set_socks(self, socks: int | SocksEndpoint | None) -> None:
        self.socks = SocksEndpoint(port=socks) if isinstance(socks, int) else socks

    def resize(self, instances: int) -> None:
        """At most one probe per instance runs at a time: room for all of them."""
        self.limit = max(MIN_PROBE_THREADS, min(MAX_PROBE_THREADS, int(instances)))

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self, address: str) -> bool:
        """Start probing `address` now; False (nothing started) if a probe of it is still
        running, the limit is reached, or there is no SocksPort to probe through."""
        socks = self.socks
        if socks is None:
            return False
        with self._lock:
            if self._closed or address in self._running or len(self._running) >= self.limit:
                return False
            self._running.add(address)
        username = f"onion-probe-{self._prefix}-{next(self._counter)}"
        try:
            threading.Thread(target=self._run, args=(socks, address, username), daemon=True,
                             name=f"probe-{address[:8]}").start()
        except RuntimeError:  # cannot start a thread (resource limit): try again later
            with self._lock:
                self._running.discard(address)
            return False
        return True

    def _run(self, socks: SocksEndpoint, address: str, username: str) -> None:
        started = time.monotonic()
        try:
            why, local = _socks_connect(socks, f"{address}.onion", self.port,
                                        username=username, timeout=self.timeout)
        except (OSError, ConnectionError) as exc:
            why, local = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), False
        finally:
            with self._lock:
                self._running.discard(address)
                closed = self._closed
        if not closed:
            self._sink(ProbeResult(address=address, ok=not why, detail=why or "connected",
                                   seconds=time.monotonic() - started, local=local))

    def close(self) -> None:
        with self._lock:
            self._closed = True
