"""Pieces of the rehearsal that need no root and no hosts: the lab network on another
address, the rehearsal stack under mocks, the image switches the
steps honour."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.ports import PortAllocator
from lab.tornet import TorNetwork


@pytest.mark.tools
def test_network_on_another_address_verifies_and_hosts_get_its_options(tmp_path):
    net = TorNetwork.create(tmp_path, PortAllocator(), voting_interval=10, owner_pid=os.getpid(),
                            address="10.214.0.1")
    text = net.network_torrc.read_text()
    assert "OutboundBindAddress 10.214.0.1\n" in text and text.count(" 10.214.0.1:") == 3  # DirAuthority lines
    for node in net.nodes:
        out = subprocess.run(["tor", "--verify-config", "-f", str(node.torrc)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, (node.nickname, out.stdout[-2000:])
    relay = net.node("relay0").torrc.read_text()
    assert "ORPort 10.214.0.1:" in relay and "Address 10.214.0.1\n" in relay
    assert "ExitPolicy accept 10.214.0.1/32:*" in relay and "127.0.0.0/8" not in relay
    # control and SOCKS stay on loopback
    assert f"SocksPort 127.0.0.1:{net.client.socks_port}" in net.client.torrc.read_text()
    hosts = net.network_torrc_for("/etc/tor/empty")
    assert "OutboundBindAddress" not in hosts and "__OwningControllerProcess" not in hosts
    assert "GeoIPFile /etc/tor/empty" in hosts and "TestingTorNetwork 1" in hosts
    assert hosts.count("DirAuthority ") == 3
    assert TorNetwork.load(tmp_path).address == "10.214.0.1"
    with pytest.raises(ValueError, match="IPv4"):
        TorNetwork.create(tmp_path / "v6", PortAllocator(), address="::1")


def test_default_network_stays_on_loopback(tmp_path):
    net = TorNetwork(state_dir=str(tmp_path))  # no keys needed to render the options
    net.net_dir.mkdir()
    net.write_network_torrc()
    assert "OutboundBindAddress 127.0.0.1\n" in net.network_torrc.read_text()
    assert net.exit_network == "127.0.0.0/8"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    from mockrun import demo_ssh_key_pair
    from onion.keys import IdentityKey
    from lab.rehearse.program import evaluate, rehearsal_config

    public, private = demo_ssh_key_pair()
    cfg = rehearsal_config(workers=2, tor_daemons=2, origin="10.214.0.1:8443", domain="lab.example",
                           master_key=IdentityKey.generate().to_config_string(), ssh_public=public,
                           ssh_private=private)
    return evaluate(cfg)


def test_rehearsal_stack_declares_the_hosts_to_boot(plan):
    import ipaddress

    hosts = {h.name: h for h in plan.instances}
    assert sorted(hosts) == ["balancer", "database", "worker-1", "worker-2"]
    assert hosts["balancer"].public_ip == "10.214.0.2"
    assert all(h.public_ip is None for n, h in hosts.items() if n != "balancer")
    assert all(ipaddress.ip_address(h.private_ip) in ipaddress.ip_network("10.213.0.0/16") for h in hosts.values())
    assert hosts["database"].disks == ("/dev/sdf", "/dev/sdg", "/dev/sdh")
    steps = sorted(r.name for r in plan.resources if r.type.startswith("command:remote:"))
    assert steps == ["balancer-core", "balancer-onion-package", "balancer-package", "database-postgres",
                     "worker-1-drain", "worker-1-tor-nginx", "worker-2-drain", "worker-2-tor-nginx"]


def test_rehearsal_database_uses_the_images_postgres_version(plan):
    from mockrun import reveal
    from nodes.payload import unpack
    from lab.rehearse.program import image_postgres_version

    step = next(r for r in plan.resources if r.name == "database-postgres")
    files = unpack(reveal(step.inputs["stdin"]))
    version = image_postgres_version()
    assert f"etc/postgresql/{version}/main/pg_hba.conf" in files


def test_install_switch_comes_before_any_apt(plan):
    """install-packages.sh: an image that brings its packages says so, and then nothing
    touches apt or a repository (the rehearsal's hosts: no internet)."""
    from mockrun import reveal
    from nodes.payload import unpack

    for name in ("worker-1-tor-nginx", "database-postgres"):
        step = next(r for r in plan.resources if r.name == name)
        script = next(f.content for p, f in unpack(reveal(step.inputs["stdin"])).items()
                      if p.endswith("install-packages.sh"))
        switch = script.index("/etc/onionstack/preinstalled-packages")
        assert switch < script.index("apt-get")
        assert "deb.torproject.org/torproject.org" not in script[:switch]


def test_install_switch_runs_nothing(tmp_path):
    """The rendered install script with the switch on: exits 0 without calling apt (a
    recording apt-get first on PATH); with the switch off it would call it."""
    from nodes.render import render_template

    script = render_template("scripts/install-packages.sh.j2", role="worker", packages=("tor",),
                             tor_project_repo=True, disable_units=())
    marker = tmp_path / "preinstalled-packages"
    script = script.replace("/etc/onionstack/preinstalled-packages", str(marker))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cloud-init").write_text("#!/bin/sh\nexit 0\n")  # first boot is long over
    (bindir / "cloud-init").chmod(0o755)
    for tool in ("apt-get", "dpkg-query", "curl", "gpg"):
        (bindir / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/called\nexit 1\n")
        (bindir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    marker.write_text("")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "installing nothing" in done.stdout
    assert not (tmp_path / "called").exists()
    marker.unlink()
    subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert "apt-get" in (tmp_path / "called").read_text()


def test_mounts_under_sees_the_hosts_bind_mounts():
    """The teardown's guard before removing a host's directory (a bind mount of / inside it
    would otherwise be walked into)."""
    from lab.rehearse.hosts import mounts_under

    assert "/proc" in mounts_under(Path("/proc")) and mounts_under(Path("/nonexistent-dir")) == []


def test_a_network_still_up_is_named_and_nothing_is_made(tmp_path, monkeypatch):
    """The addresses are fixed: a second rehearsal beside a stale one (killed, not yet
    `rehearse down`) stops before it makes anything, naming the other's bridge."""
    from lab.rehearse import hosts

    made = []

    def fake_ip(*args):
        if args[:2] == ("route", "show"):
            return "10.213.0.0/16 dev rhb5acbr scope link src 10.214.0.1\n"
        if args[:3] == ("-o", "addr", "show"):
            return ""
        made.append(args)
        return ""

    monkeypatch.setattr(hosts, "_ip", fake_ip)
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0)
    monkeypatch.setattr(hosts.shutil, "which", lambda name: "/usr/bin/" + name)
    fabric = hosts.Fabric(tmp_path, "10.213.0.0/16")
    with pytest.raises(RuntimeError, match=r"device rhb5acbr.*rehearse down"):
        fabric.up_network()
    assert made == [] and fabric.ledger == []
