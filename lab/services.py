"""Plain (non-balanced) onion services on the lab network: the smoke test that the network
carries onion-service traffic, independent of the workers and the balancer."""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from pathlib import Path
from typing import Iterator

from lab.ports import PortAllocator
from lab.procs import ProcessRegistry
from lab.tornet import TorNetwork, TorNode


def read_hostname(hs_dir: Path, timeout: float = 30.0) -> str:
    """The onion hostname tor writes into a HiddenServiceDir at start-up."""
    path = Path(hs_dir) / "hostname"
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"tor wrote no {path} within {timeout:.0f} s")
        time.sleep(0.1)
    return path.read_text().strip()


def start_plain_service(net: TorNetwork, procs: ProcessRegistry, ports: PortAllocator,
                        nickname: str, target_port: int, virtual_port: int = 80
                        ) -> tuple[TorNode, str]:
    """A tor hosting one onion service that forwards to 127.0.0.1:target_port."""
    hs_dir = Path(net.net_dir) / nickname / "hs"
    hs_dir.mkdir(parents=True, exist_ok=True)
    hs_dir.chmod(0o700)
    node = net.add_tor(procs, ports, nickname, [
        f"HiddenServiceDir {hs_dir}",
        f"HiddenServicePort {virtual_port} 127.0.0.1:{target_port}",
    ])
    return node, read_hostname(hs_dir)


@contextlib.contextmanager
def serve_text(body: bytes) -> Iterator[int]:
    """A tiny HTTP server on 127.0.0.1 answering every GET with `body`; yields its port.
    The target of plain onion services in tests (no TLS, no nginx in between)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
