"""Free TCP ports on 127.0.0.1, picked at runtime so several labs (or CI jobs) can coexist."""
from __future__ import annotations

import socket


class PortAllocator:
    """Hands out distinct free ports on 127.0.0.1.

    The kernel picks each port (bind to port 0); the socket is closed again so the daemon can
    bind it. Ports already handed out are never repeated, which matters because a closed
    socket's port may be offered again by the kernel before the daemon has bound it.
    """

    def __init__(self) -> None:
        self._given: set[int] = set()

    def take(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in self._given:
                self._given.add(port)
                return port
        raise RuntimeError("no free TCP port found on 127.0.0.1 after 100 tries")


def wait_for_port(port: int, timeout: float, what: str, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on host:port."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")
            time.sleep(0.1)
