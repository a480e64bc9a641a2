"""End-to-end: workers rendered from the AWS templates serve the origin through tor, with
the origin's names rewritten to the frontend's onion name (issue 5). No balancer needed:
each instance address is reached directly."""
from __future__ import annotations

import re

import pytest

from lab.client import wait_reachable

pytestmark = pytest.mark.lab


def test_every_instance_serves_the_origin_through_its_workers_nginx(lab, lab_workers):
    frontend = lab.info["frontend"]
    assert len(lab_workers) == 2
    for listener, worker in enumerate(lab_workers):
        assert len(worker.instance_addresses) == 2
        for address in worker.instance_addresses:
            resp, _ = wait_reachable(lab.net.client.socks_port, f"http://{address}.onion/",
                                     timeout=120, what=f"instance {address}")
            # The worker's own origin listener answered: this worker's nginx proxied it.
            assert resp.headers["x-lab-origin-listener"] == str(listener)
            assert f"origin-listener: {listener}" in resp.body
            # Absolute links to the origin's domain and subdomains now name the frontend.
            assert f'href="http://{frontend}/about"' in resp.body
            assert f'href="http://www.{frontend}/news?x=1"' in resp.body
            assert f'href="http://static.{frontend}/style.css"' in resp.body
            assert "lab.example" not in resp.body
            assert resp.headers.get("server") == "nginx"


def test_subdomain_requests_reach_the_origins_subdomain(lab, lab_workers):
    """www.<onion> maps to www.lab.example upstream (Host and SNI), and back in the page."""
    address = lab_workers[0].instance_addresses[0]
    frontend = lab.info["frontend"]
    resp, _ = wait_reachable(lab.net.client.socks_port, f"http://{address}.onion/style.css",
                             timeout=60, what="stylesheet")
    assert re.search(rf"url\(http://static\.{re.escape(frontend)}/bg\.png\)", resp.body), resp.body


def test_workers_run_the_rendered_configs_checked_by_the_real_tools(lab, lab_workers):
    from pathlib import Path

    for worker in lab_workers:
        root = Path(worker.root)
        torrc = (root / "etc/onionstack/tor/tor1.torrc").read_text()
        assert "HiddenServiceOnionBalanceInstance 1" in torrc
        assert f"%include {lab.net.network_torrc}" in torrc
        ob_config = next(root.glob("var/lib/onionstack/tor/tor1/hs/*/ob_config"))
        assert ob_config.read_text().strip() == f"MasterOnionAddress {lab.info['frontend']}"
        assert oct(ob_config.stat().st_mode & 0o777) == "0o600"
        for name in worker.process_names():
            assert lab.procs.is_running(name), name
