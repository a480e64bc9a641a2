"""The restore drill's "the app reads the old rows", for real (docs/apps.md): the sample app
on a real PostgreSQL (rendered config, its own role, verify-full) writes rows; the data
directory is copied while the server is stopped (what a snapshot of the data volume
keeps); the app writes more; the copy is put back (what a restored volume is) and the
server started on it: the app reads exactly the rows of the snapshot. The AWS side of the
drill (a volume from a recovery point, swapped onto the instance) is tests/test_restore.py
with moto."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

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


def test_restored_data_volume_gives_the_app_its_old_rows():
    root = short_tmpdir("os-restore-")
    cluster = PostgresCluster(root / "db", free_port(), apps=("guestbook",))
    cluster.prepare()
    server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    module = apps.build(root, "1")
    port = free_port()
    app = None
    try:
        cluster.wait_ready()
        cluster.create_roles()
        apps.migrate(cluster, module, "1")
        app = subprocess.Popen([sys.executable, str(module), "serve"], env=apps.app_env(cluster, port, "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        apps.wait_healthy(port)
        for line in ("first entry", "second entry"):
            assert post(port, line) == 201
        assert entries(port) == ["first entry", "second entry"]

        # the snapshot: the data directory of a cleanly stopped server
        server.send_signal(signal.SIGINT)  # fast shutdown: the app's open connections end
        server.wait(timeout=60)
        snapshot = root / "snapshot"
        shutil.copytree(cluster.data_dir, snapshot, symlinks=True, copy_function=shutil.copy2)
        if os.geteuid() == 0:  # the copy is root's; the volume's files belong to postgres
            for p in [snapshot, *snapshot.rglob("*")]:
                os.chown(p, *pwd.getpwnam(cluster.user)[2:4], follow_symlinks=False)
        server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cluster.wait_ready()
        assert post(port, "written after the backup") == 201
        assert entries(port)[-1] == "written after the backup"

        # the restore: the volume replaced by the one made from the snapshot
        server.send_signal(signal.SIGINT)  # fast shutdown: the app's open connections end
        server.wait(timeout=60)
        shutil.rmtree(cluster.data_dir)
        snapshot.rename(cluster.data_dir)
        server = subprocess.Popen(cluster.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cluster.wait_ready()
        apps.wait_healthy(port)  # the app reconnects by itself
        assert entries(port) == ["first entry", "second entry"]
    finally:
        if app is not None:
            app.terminate()
            app.wait(timeout=30)
        server.send_signal(signal.SIGINT)  # fast shutdown: the app's open connections end
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
