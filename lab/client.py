"""Requests through the lab client's SocksPort, with curl (the same line `lab up` prints).

Each request can name an isolation token: tor puts SOCKS connections with different
username/password on different circuits, which spreads test requests over fresh circuits
without `SIGNAL NEWNYM` (rate-limited to once per 10 s).
"""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

from lab.heartbeat import Heartbeat


@dataclass
class Response:
    ok: bool  # transport worked and an HTTP status came back
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""
    seconds: float = 0.0


def curl_command(socks_port: int, url: str, isolation: str | None = None,
                 timeout: float = 30.0, cacert: str | None = None) -> list[str]:
    """`cacert`: the onion's certificate (or its CA) for an https:// URL."""
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "--socks5-hostname",
           f"127.0.0.1:{socks_port}"]
    if isolation:
        cmd += ["--proxy-user", f"{isolation}:x"]
    if cacert:
        cmd += ["--cacert", str(cacert)]
    return cmd + [url]


def fetch(socks_port: int, url: str, isolation: str | None = None,
          timeout: float = 30.0, cacert: str | None = None) -> Response:
    """GET url through the SocksPort; never raises for network errors."""
    cmd = curl_command(socks_port, url, isolation, timeout, cacert)
    cmd[1:1] = ["-i"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        return Response(ok=False, error=proc.stderr.strip() or f"curl exit {proc.returncode}",
                        seconds=took)
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(ok=True, status=status, headers=headers, body=body, seconds=took)


def wait_reachable(socks_port: int, url: str, timeout: float, what: str,
                   interval: float = 2.0, cacert: str | None = None,
                   progress=None) -> tuple[Response, float]:
    """Retry until a 200 comes back; returns it and the seconds it took. `progress` gets a
    heartbeat line every ~15 s while it waits."""
    t0 = time.monotonic()
    beat = Heartbeat(progress, f"{what} at {url}")
    attempt = 0
    while True:
        attempt += 1
        resp = fetch(socks_port, url, isolation=f"wait{attempt}", timeout=30, cacert=cacert)
        if resp.ok and resp.status == 200:
            return resp, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not reachable at {url} within {timeout:.0f} s "
                               f"(last: {resp.error or resp.status})")
        beat.beat(f"{attempt} requests so far, the last: {resp.error or f'HTTP {resp.status}'}")
        time.sleep(interval)


@dataclass
class Probe:
    at: float  # time.time() when the request started
    ok: bool  # HTTP 200
    seconds: float
    listener: str | None = None  # X-Lab-Origin-Listener: which worker carried it
    error: str = ""


def split_around(probes: list[Probe], start: float, end: float) -> tuple[list[Probe], list[Probe], list[Probe]]:
    """(before, during, after) an event from `start` to `end` (time.time()): before = done
    before it started; after = started once it was over; during = the rest, including a
    request still in flight when it started (killing a worker breaks the request it was
    carrying: that is not a failure "before the kill")."""
    before = [p for p in probes if p.at + p.seconds < start]
    after = [p for p in probes if p.at >= end]
    during = [p for p in probes if p.at + p.seconds >= start and p.at < end]
    return before, during, after


class ProbeLoop:
    """Requests the frontend every `interval` seconds, each on a fresh circuit (its own SOCKS
    isolation token), until stopped. Used for steady load (failover, restart) and for
    rotation soaks.

    Each request runs in its own thread, on schedule whether or not the previous one has
    finished: a request that hangs (tor's client waits up to its SocksTimeout for a
    rendezvous that a killed worker will never complete) must not pause the steady load,
    or the requests that should show the failover never happen (test c in CI at d84bcad:
    one request hung 30 s from the kill on, and none started after the failover)."""

    def __init__(self, socks_port: int, url: str, interval: float = 2.0, timeout: float = 30.0,
                 prefix: str = "probe") -> None:
        self.socks_port, self.url, self.interval, self.timeout = socks_port, url, interval, timeout
        self.prefix = prefix
        self.results: list[Probe] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._requests: list[threading.Thread] = []

    def start(self) -> "ProbeLoop":
        self._thread.start()
        return self

    def stop(self) -> list[Probe]:
        """Stop starting requests and wait for those in flight (at most their timeout)."""
        self._stop.set()
        self._thread.join(self.interval + 5)
        deadline = time.monotonic() + self.timeout + 15
        for thread in list(self._requests):
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.snapshot()

    def snapshot(self) -> list[Probe]:
        """The finished requests, in the order they started."""
        with self._lock:
            return sorted(self.results, key=lambda p: p.at)

    def _one(self, n: int, started: float) -> None:
        resp = fetch(self.socks_port, self.url, isolation=f"{self.prefix}{n}-{started:.0f}",
                     timeout=self.timeout)
        ok = resp.ok and resp.status == 200
        probe = Probe(at=started, ok=ok, seconds=resp.seconds,
                      listener=resp.headers.get("x-lab-origin-listener"),
                      error="" if ok else (resp.error or f"HTTP {resp.status}"))
        with self._lock:
            self.results.append(probe)

    def _run(self) -> None:
        n = 0
        next_at = time.time()
        while not self._stop.is_set():
            n += 1
            thread = threading.Thread(target=self._one, args=(n, time.time()), daemon=True)
            self._requests = [t for t in self._requests if t.is_alive()] + [thread]
            thread.start()
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.time()))
