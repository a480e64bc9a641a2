"""The end-to-end probe: the frontend as a reader sees it.

Through the balancer's own tor (its SocksPort on loopback), on fresh circuits (a new SOCKS
username per probe, so tor's IsolateSOCKSAuth builds new ones), the balancer connects to
`<frontend>.onion:<frontend_probe.port>` and sends one HTTP request for
`frontend_probe.path` (TLS without certificate checks on port 443: an onion site's
certificate is often self-signed, and the onion address already authenticates it). Any HTTP
answer counts as reachable; its status code and the latency (SOCKS connect, introduction,
rendezvous, first line of the answer) are recorded. On failure the result carries tor's
extended SOCKS error (prop304: 0xF0 descriptor not found, 0xF2 introduction failed, 0xF3
rendezvous failed, 0xF7 introduction timed out, ...), which says which step failed.

One thread per probe, at most one per frontend at a time; the result goes to the balancer's
queue as a `FrontendProbeResult`. The SOCKS handshake is onion/probe.py's.
"""
from __future__ import annotations

import itertools
import os
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from onion.probe import _LOCAL_REPLIES, _REPLIES, SocksEndpoint, _recv_exact

MAX_STATUS_LINE = 8192


@dataclass(frozen=True)
class FrontendProbeResult:
    address: str            # the frontend, 56 chars
    ok: bool
    detail: str             # "HTTP 200" or why it failed
    seconds: float
    status_code: int | None = None
    socks_error: int | None = None   # tor's SOCKS reply code on failure
    local: bool = False     # failed before tor tried the onion service (our SocksPort)


def http_probe(socks: SocksEndpoint, host: str, port: int, path: str, *, username: str,
               timeout: float) -> tuple[bool, str, int | None, int | None, bool]:
    """(ok, detail, HTTP status, SOCKS error code, local) of one request."""
    deadline = time.monotonic() + timeout
    try:
        sock = socks.connect(timeout)
    except OSError as exc:
        return False, f"cannot connect to tor's SocksPort {socks.describe()}: {exc}", None, None, True
    try:
        sock.settimeout(timeout)
        sock.sendall(b"\x05\x01\x02")
        ver, method = _recv_exact(sock, 2)
        if ver != 5 or method != 2:
            return False, f"SOCKS proxy refused username/password auth (method {method:#x})", None, None, True
        user = username.encode()[:255]
        sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x01x")
        if _recv_exact(sock, 2)[1] != 0:
            return False, "SOCKS auth rejected", None, None, True
        name = host.encode()[:255]
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        head = _recv_exact(sock, 4)
        if head[1] != 0:
            code = head[1]
            why = _REPLIES.get(code, "SOCKS reply")
            return False, f"{why} (SOCKS {code:#04x})", None, code, code in _LOCAL_REPLIES
        # the rest of the reply: bound address + port
        atyp = head[3]
        length = 4 if atyp == 1 else 16 if atyp == 4 else _recv_exact(sock, 1)[0]
        _recv_exact(sock, length + 2)
        stream = sock
        if port == 443:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the onion address authenticates the site
            stream = ctx.wrap_socket(sock, server_hostname=host)
        stream.settimeout(max(0.1, deadline - time.monotonic()))
        stream.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: onionstack-probe\r\n"
                       "Accept: */*\r\nConnection: close\r\n\r\n".encode())
        line = b""
        while b"\r\n" not in line and len(line) < MAX_STATUS_LINE:
            chunk = stream.recv(1024)
            if not chunk:
                break
            line += chunk
        first = line.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = first.split()
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return True, f"HTTP {parts[1]}", int(parts[1]), None, False
        return False, f"no HTTP answer (got {first[:60]!r})", None, None, False
    except (OSError, ConnectionError, ssl.SSLError) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return False, why, None, None, False
    finally:
        sock.close()


class FrontendProber:
    """Runs each frontend probe in a thread of its own; results go to `sink`."""

    def __init__(self, sink: Callable[[object], None]):
        self._sink = sink
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._closed = False
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def start(self, socks: SocksEndpoint, address: str, port: int, path: str, timeout: float) -> bool:
        with self._lock:
            if self._closed or address in self._running:
                return False
            self._running.add(address)
        username = f"onion-e2e-{self._prefix}-{next(self._counter)}"
        try:
            threading.Thread(target=self._run, args=(socks, address, port, path, timeout, username),
                             daemon=True, name=f"e2e-{address[:8]}").start()
        except RuntimeError:
            with self._lock:
                self._running.discard(address)
            return False
        return True

    def _run(self, socks, address, port, path, timeout, username) -> None:
        started = time.monotonic()
        try:
            ok, detail, code, socks_error, local = http_probe(socks, f"{address}.onion", port, path,
                                                              username=username, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a probe bug must not kill its thread silently
            ok, detail, code, socks_error, local = False, f"{type(exc).__name__}: {exc}", None, None, False
        finally:
            with self._lock:
                self._running.discard(address)
                closed = self._closed
        if not closed:
            self._sink(FrontendProbeResult(address=address, ok=ok, detail=detail,
                                           seconds=time.monotonic() - started, status_code=code,
                                           socks_error=socks_error, local=local))

    def close(self) -> None:
        with self._lock:
            self._closed = True
