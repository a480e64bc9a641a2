"""The restore drill's "the app reads the old rows", for real (docs/apps.md): the sample app
on a real PostgreSQL (rendered config, its own role, verify-full, the WAL in its own
directory as it is on its own volume on the database instance) writes rows; both
directories are copied at one instant of a running server (an immediate shutdown leaves
what a snapshot of the running volumes holds); the app writes more. Putting back the data
directory alone does not give the snapshot's rows (the current WAL is replayed onto it, or
the server refuses to start): that is why the drill restores the data and the journal
volume. Putting back both does: the app reads exactly the rows of the snapshot. The AWS
side of the drill (a volume from a recovery point, swapped onto the instance) is
tests/test_restore.py with moto."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lab import apps
from lab.database import PostgresCluster
from tests.conftest_tools import free_port, short_tmpdir

pytestmark = pytest.mark.tools


def post(port: int, text: str) -> int:
    data = urllib.parse.urlencode({"text": text}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/entries", data=data, timeout=10) as resp:
        return resp.status


def entries(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/entries", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode().splitlines()


def copy_volume(src: Path, dest: Path) -> None:
    """A volume's contents, owners and modes kept (`cp -a`; pg_wal stays a symlink)."""
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True, timeout=120)


def stop(server: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """SIGINT: fast shutdown (the app's open connections end); SIGQUIT: immediate, no
    checkpoint, crash recovery on the next start (as after a snapshot of a running server)."""
    if server.poll() is None:
        server.send_signal(sig)
    server.wait(timeout=60)


def start(cluster: PostgresCluster) -> subprocess.Popen | None:
    """The server on the cluster's directories, or None if it refuses to start."""
    server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return None
        try:
            cluster.wait_ready(timeout=1)
            return server
        except TimeoutError:
            continue
    stop(server)
    raise TimeoutError("PostgreSQL neither started nor exited within 60 s")


def test_restored_data_and_journal_volumes_give_the_app_its_old_rows():
    root = short_tmpdir("os-restore-")
    cluster = PostgresCluster(root / "db", free_port(), apps=("guestbook",))
    cluster.prepare()
    assert (cluster.data_dir / "pg_wal").resolve() == cluster.wal_dir  # two "volumes"
    server = start(cluster)
    assert server is not None
    module = apps.build(root, "1")
    port = free_port()
    app = None
    snapshot = {"data": root / "snapshot-data", "wal": root / "snapshot-wal"}
    live = {"data": cluster.data_dir, "wal": cluster.wal_dir}
    try:
        cluster.create_roles()
        apps.migrate(cluster, module, "1")
        app = subprocess.Popen([sys.executable, str(module), "serve"], env=apps.app_env(cluster, port, "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        apps.wait_healthy(port)
        for line in ("first entry", "second entry"):
            assert post(port, line) == 201
        assert entries(port) == ["first entry", "second entry"]

        # the backup: both volumes as they are at one instant of the running server
        stop(server, signal.SIGQUIT)
        for v in ("data", "wal"):
            copy_volume(live[v], snapshot[v])
        server = start(cluster)
        assert server is not None
        apps.wait_healthy(port)  # the app reconnects by itself
        assert post(port, "written after the backup") == 201
        assert entries(port)[-1] == "written after the backup"

        # the data volume restored alone, the journal volume kept: not the backup's rows
        stop(server)
        copy_volume(snapshot["data"], live["data"])
        server = start(cluster)
        if server is not None:  # it started: the current WAL was replayed onto the old data
            apps.wait_healthy(port)
            assert entries(port) == ["first entry", "second entry", "written after the backup"]
            stop(server)

        # both volumes restored from the backup: the app reads exactly the old rows
        for v in ("data", "wal"):
            copy_volume(snapshot[v], live[v])
        server = start(cluster)
        assert server is not None
        apps.wait_healthy(port)
        assert entries(port) == ["first entry", "second entry"]
        assert post(port, "written after the restore") == 201
        assert entries(port)[-1] == "written after the restore"
    finally:
        if app is not None:
            app.terminate()
            app.wait(timeout=30)
        if server is not None:
            stop(server)
        shutil.rmtree(root, ignore_errors=True)
