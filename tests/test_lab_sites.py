"""End-to-end on the private Tor network: an HTTPS site (the worker templates with a
self-signed certificate for the onion, as `https: selfSigned` makes), reached through the
lab's Tor client with curl and `--cacert`, HTTP/2; port 80 redirecting; and the DoS
controls running in the instances' tor: PoW on each instance (its own descriptor
advertises `pow-params`) while the frontend's descriptor, built by the balancer core from
those instances, does not.

The site runs beside the session's other lab sites (its own frontend key, workers and
balancer), and the lab's records are restored afterwards so that other tests see theirs."""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.client import curl_command, fetch, wait_reachable
from lab.observe import fetch_inner_layer

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def https_site(lab):
    from nodes.render import SiteDos

    saved = copy.deepcopy(lab.info)
    record = None
    workers = []
    try:
        lab.make_frontend_key(tag="sites")
        cert = lab.make_frontend_certificate()
        dos = SiteDos(pow=True, pow_queue_rate=50, pow_queue_burst=200, intro_rate=20, intro_burst=100)
        workers = lab.start_workers(2, tor_daemons=1, intro_points=3, tag="sitesw", dos=dos)
        frontend = lab.info["frontend"]
        record = lab.start_balancer("onion", tag="sitesbal", key_file=Path(lab.info["frontend_key_file"]),
                                    instances=[a for w in workers for a in w.instance_addresses])
        resp, _ = wait_reachable(lab.net.client.socks_port, f"https://{frontend}/", timeout=240,
                                 what="HTTPS frontend", cacert=str(cert))
        yield SimpleNamespace(frontend=frontend, cert=cert, workers=workers, first=resp,
                              curl_line=lab.curl_line())
    finally:
        if record is not None:
            lab.procs.stop(record["process"])
            lab.procs.stop(f"tor-{record['tor']}")
        for w in workers:
            lab.kill_worker(w)
        lab.info.clear()
        lab.info.update(saved)
        lab.save()


def test_the_lab_prints_a_curl_line_with_cacert_that_works(lab, https_site):
    line = https_site.curl_line
    assert line == (f"curl --cacert {https_site.cert} --socks5-hostname 127.0.0.1:{lab.info['socks_port']} "
                    f"https://{https_site.frontend}/")
    proc = subprocess.run(line.split() + ["-sS", "--max-time", "60", "--proxy-user", "curlline:x"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "Hello from" in proc.stdout


def test_https_through_tor_with_http2_and_https_links(lab, https_site):
    frontend = https_site.frontend
    cmd = curl_command(lab.net.client.socks_port, f"https://www.{frontend}/", isolation="h2",
                       timeout=60, cacert=str(https_site.cert))
    proc = subprocess.run(cmd[:1] + ["-i", "--http2"] + cmd[1:], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HTTP/2 200"), proc.stdout[:120]
    # the origin's https:// links name the onion over https (the site serves HTTPS)
    assert f'href="https://{frontend}/about"' in proc.stdout
    assert f'href="https://www.{frontend}/news?x=1"' in proc.stdout
    assert "lab.example" not in proc.stdout


def test_the_certificate_is_checked_for_real(lab, https_site):
    """Without the onion's certificate as CA, curl refuses the connection (the chain does
    not verify); so the --cacert runs above did verify it."""
    resp = fetch(lab.net.client.socks_port, f"https://{https_site.frontend}/", isolation="nocacert", timeout=60)
    assert not resp.ok and ("certificate" in resp.error.lower() or "SSL" in resp.error), resp.error


def test_port_80_redirects_to_https(lab, https_site):
    resp = fetch(lab.net.client.socks_port, f"http://{https_site.frontend}/about?x=1", isolation="redirect",
                 timeout=60)
    assert resp.ok and resp.status == 307, resp.error or resp.status
    assert resp.headers["location"] == f"https://{https_site.frontend}/about?x=1"


def test_instances_advertise_pow_but_the_frontend_never_does(lab, https_site):
    client = lab.net.client
    for worker in https_site.workers:
        for address in worker.instance_addresses:
            inner = fetch_inner_layer(client, address)
            assert inner is not None, f"no descriptor of instance {address}"
            assert "\npow-params v1 " in "\n" + inner, f"instance {address} does not advertise PoW"
    inner = fetch_inner_layer(client, https_site.frontend)
    assert inner is not None and "introduction-point" in inner
    assert "pow-params" not in inner
