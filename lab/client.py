"""Requests through the lab client's SocksPort, with curl (the same line `lab up` prints).

Each request can name an isolation token: tor puts SOCKS connections with different
username/password on different circuits, which spreads test requests over fresh circuits
without `SIGNAL NEWNYM` (rate-limited to once per 10 s).
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    ok: bool  # transport worked and an HTTP status came back
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""
    seconds: float = 0.0


def curl_command(socks_port: int, url: str, isolation: str | None = None,
                 timeout: float = 30.0) -> list[str]:
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "--socks5-hostname",
           f"127.0.0.1:{socks_port}"]
    if isolation:
        cmd += ["--proxy-user", f"{isolation}:x"]
    return cmd + [url]


def fetch(socks_port: int, url: str, isolation: str | None = None,
          timeout: float = 30.0) -> Response:
    """GET url through the SocksPort; never raises for network errors."""
    cmd = curl_command(socks_port, url, isolation, timeout)
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
                   interval: float = 2.0) -> tuple[Response, float]:
    """Retry until a 200 comes back; returns it and the seconds it took."""
    t0 = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        resp = fetch(socks_port, url, isolation=f"wait{attempt}", timeout=30)
        if resp.ok and resp.status == 200:
            return resp, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not reachable at {url} within {timeout:.0f} s "
                               f"(last: {resp.error or resp.status})")
        time.sleep(interval)
