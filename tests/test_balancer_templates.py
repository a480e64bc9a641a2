"""The balancer machine's files from nodes/templates/ that the core depends on, checked with
the real tools: tor serving its control interface on a group-only unix socket that the
core's real connection code uses, the memory ceiling of the core's unit, and apply.sh
removing the master key of a site that is no longer configured."""
from __future__ import annotations

import grp
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nodes import render
from nodes.render import BalancerSpec, Layout, SiteSpec
from tests.conftest_tools import TOR, free_port, onion_address_for, run, short_tmpdir, write_tree

pytestmark = pytest.mark.tools

SITES = (SiteSpec("news", "example.com", onion_address_for("tpl-news")),
         SiteSpec("shop", "shop.example.org", onion_address_for("tpl-shop")))
INSTANCES = {"news": (onion_address_for("tpl-i1"),), "shop": (onion_address_for("tpl-i2"),)}

# Connect to a unix socket and send PROTOCOLINFO, with the system python (no venv: it runs
# as `nobody`, who may not read the checkout): prints tor's first reply line or the error.
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__)
    sys.exit(0)
s.sendall(b"PROTOCOLINFO 1\\r\\n")
print(s.recv(200).decode().splitlines()[0])
"""


def test_the_core_reaches_tor_on_a_control_socket_only_tors_group_may_open():
    """The core used a TCP control port any local process could connect to. Now tor (the
    rendered torrc, run as debian-tor as the unit runs it, DisableNetwork) listens on a
    unix socket in its 0750 runtime dir; the core's own connection code (onion.control,
    cookie auth) gets through it, a user in tor's group may open it, others may not."""
    root = short_tmpdir("os-sock-")
    os.chmod(root, 0o755)
    run_dir = root / "run"
    run_dir.mkdir(mode=0o755)
    runtime = run_dir / "onionstack-tor-balancer"   # what RuntimeDirectory= makes (0750, tor's group)
    runtime.mkdir()
    shutil.chown(runtime, "debian-tor", "debian-tor")
    os.chmod(runtime, 0o750)
    spec = BalancerSpec(sites=SITES, instances=INSTANCES, layout=Layout(root=str(root)),
                        socks_port=free_port(), cookie_file=str(runtime / "control.authcookie"),
                        control_socket=str(runtime / "control"))
    files = render.render_balancer(spec)
    write_tree(root, files)
    torrc = root / "etc/onionstack/tor/balancer.torrc"
    assert "ControlPort" not in torrc.read_text()
    for d in (root / "var", root / "var/lib", root / "var/lib/onionstack", root / "var/lib/onionstack/tor"):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    data = Path(spec.data_dir)
    data.mkdir(mode=0o700)
    shutil.chown(data, "debian-tor", "debian-tor")
    for p in (root / "etc", root / "etc/onionstack", root / "etc/onionstack/tor"):
        os.chmod(p, 0o755)
    os.chmod(torrc, 0o644)
    tor = subprocess.Popen(["setpriv", "--reuid=debian-tor", "--regid=debian-tor", "--init-groups",
                            "--bounding-set=-all", "--no-new-privs", TOR, "-f", str(torrc),
                            "--RunAsDaemon", "0", "--DisableNetwork", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sock = Path(spec.control_socket)
    try:
        deadline = time.monotonic() + 30
        while not (sock.exists() and Path(spec.cookie_file).exists()) and time.monotonic() < deadline \
                and tor.poll() is None:
            time.sleep(0.1)
        assert sock.exists(), tor.stdout.read().decode() if tor.poll() is not None else "timeout"
        st = sock.stat()
        assert st.st_mode & 0o007 == 0 and grp.getgrgid(st.st_gid).gr_name == "debian-tor"
        assert st.st_mode & 0o060 == 0o060                # group may connect

        # the core's real connection code, as the rendered balancer.yaml configures it
        from onion.config import load_config
        from onion.control import TorControl

        cfg = load_config(spec.config_file, load_keys=False)
        assert cfg.control.socket == str(sock) and cfg.control.port is None
        got: list = []
        control = TorControl(cfg.control, got.append)
        control.connect()
        try:
            assert control.get_info("version").startswith("0.4")
        finally:
            control.close()

        def as_nobody(*groups: str) -> str:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup",
                   "--groups=" + ",".join(groups) if groups else "--clear-groups",
                   "/usr/bin/python3", "-c", PROBE, str(sock)]
            return run(cmd).stdout.strip()

        assert as_nobody("debian-tor").startswith("250-PROTOCOLINFO")
        assert as_nobody() == "PermissionError"
    finally:
        tor.terminate()
        tor.wait(timeout=20)
        shutil.rmtree(root, ignore_errors=True)


def test_the_core_unit_has_a_memory_ceiling():
    unit = render.render_balancer(BalancerSpec(sites=SITES, instances=INSTANCES))[
        "etc/systemd/system/onion-balancer.service"].content
    value = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("MemoryMax=")]
    assert value and value[0].endswith("M") and 128 <= int(value[0][:-1]) <= 512
    assert "Restart=on-failure" in unit                # killed at the ceiling: started again


def _apply(stage: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", 'umask 077; exec bash "$0" "$1"',
                           str(stage / "usr/local/lib/onionstack/apply.sh"), str(stage)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_apply_removes_the_master_key_of_a_site_no_longer_configured(tmp_path):
    """A removed site's master key file stayed on the balancer forever."""
    root, work = short_tmpdir("os-live-"), short_tmpdir("os-stage-")
    os.chmod(root, 0o755)
    bin_dir, marker, log = tmp_path / "bin", tmp_path / "systemd", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    marker.mkdir()
    for tool in ("systemctl", "systemd-tmpfiles"):
        fake = bin_dir / tool
        fake.write_text(f"#!/bin/sh\necho \"{tool} $*\" >> {log}\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ONIONSTACK_SYSTEMD_MARKER": str(marker)}

    def stage_for(sites) -> BalancerSpec:
        # user root: no system user is created on this machine by the test
        spec = BalancerSpec(sites=sites, instances={s.name: INSTANCES[s.name] for s in sites},
                            layout=Layout(root=str(root)), user="root")
        stage = work / "stage"
        if stage.exists():
            shutil.rmtree(stage)
        write_tree(stage, render.render_balancer(spec))
        for site in sites:  # the remote step stages each key (a secret, never rendered)
            key = stage / spec.layout.key(spec.key_file(site))
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(b"== ed25519v1-secret: type0 ==\x00\x00\x00" + site.name.encode().ljust(64, b"k"))
            key.chmod(0o600)
        return spec

    both = stage_for(SITES)
    first = _apply(work / "stage", env)
    assert first.returncode == 0, first.stderr
    keys = Path(both.state_dir) / "keys"
    assert sorted(p.name for p in keys.iterdir()) == ["news.key", "shop.key"]
    (keys / "notes.txt").write_text("not a key")       # only key files are the script's business

    # a failed check removes nothing (the old config, which names shop, stays in force)
    only_news = stage_for(SITES[:1])
    torrc = work / "stage/etc/onionstack/tor/balancer.torrc"
    torrc.write_text(torrc.read_text() + "NoSuchTorOption 1\n")
    failed = _apply(work / "stage", env)
    assert failed.returncode == 1 and (keys / "shop.key").exists()

    only_news = stage_for(SITES[:1])
    second = _apply(work / "stage", env)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["news.key", "notes.txt"]
    assert f"removed {keys / 'shop.key'}" in second.stdout
    assert only_news.key_file("news") == str(keys / "news.key")
    calls = log.read_text().splitlines()
    assert "systemctl restart onion-balancer.service" in calls
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
