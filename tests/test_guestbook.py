"""The sample app (apps/guestbook) against a real PostgreSQL (rendered config, its own role,
verify-full): its contract in docs/apps.md, the part the lab's upgrade leans on. On SIGTERM
(podman stop, a switch to the next release) a request being served still gets its answer."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from lab import apps
from lab.database import PostgresCluster
from tests.conftest_tools import free_port, short_tmpdir

pytestmark = pytest.mark.tools


def test_a_request_in_flight_at_sigterm_is_answered():
    root = short_tmpdir("os-guestbook-")
    cluster = PostgresCluster(root / "db", free_port(), apps=("guestbook",))
    cluster.prepare()
    server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = None
    try:
        cluster.wait_ready()
        cluster.create_roles()
        module = apps.build(root, "1")
        apps.migrate(cluster, module, "1")
        port = free_port()
        app = subprocess.Popen([sys.executable, str(module), "serve"], env=apps.app_env(cluster, port, "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        apps.wait_healthy(port)
        body = b"text=sent+across+the+stop"
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"POST /entries HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
            time.sleep(0.5)  # the request is being read ...
            app.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # ... when the stop comes
            assert app.poll() is None, "the app exited with a request in flight"
            conn.sendall(body[5:])
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 201 "), reply
        assert app.wait(timeout=20) == 0
        # no new connection is taken once stopped; the row is there
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        rows = cluster.psql("-A", "-t", "-c", "SELECT text FROM entries", database="app_guestbook")
        assert rows.stdout.strip() == "sent across the stop", rows.stdout + rows.stderr
    finally:
        if app is not None and app.poll() is None:
            app.kill()
            app.wait(timeout=10)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
