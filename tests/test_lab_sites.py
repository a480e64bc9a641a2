"""End-to-end on the private Tor network: an HTTPS site (the worker templates with a
self-signed certificate for the onion, as `https: selfSigned` makes), reached through the
lab's Tor client with curl and `--cacert`, HTTP/2; port 80 redirecting; a foreign onion
map rewriting links to another site; and the DoS controls running in the instances' tor:
PoW on each instance (its own descriptor advertises `pow-params`) while the frontend's
descriptor, built by the balancer core from those instances, does not; and load-aware
intro selection fed by the instances' real descriptors and MetricsPorts.

The site runs beside the session's other lab sites (its own frontend key, workers and
balancer), and the lab's records are restored afterwards so that other tests see theirs."""
from __future__ import annotations

import copy
import http.server
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.client import curl_command, fetch, wait_reachable
from lab.observe import fetch_inner_layer, fetch_intro_keys
from lab.origin import FOREIGN_DOMAIN

pytestmark = pytest.mark.lab


class MetricsRelay:
    """Serves one instance tor's real MetricsPort page on 127.0.0.1, with the PoW queue
    depth of that instance replaced by `queue` when it is set: an overloaded tor's page
    without having to overload it (the load tests below drive the balancer with it)."""

    def __init__(self, upstream: str, address: str):
        self.upstream, self.queue = upstream, None
        line = re.compile(r'^(tor_hs_rdv_pow_pqueue_count\{[^}]*onion="' + address + r'[^}]*\}) \S+$', re.M)
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                page = urllib.request.urlopen(relay.upstream, timeout=5).read().decode()
                if relay.queue is not None:
                    page, n = line.subn(lambda m: f"{m.group(1)} {relay.queue}", page)
                    assert n == 1, "the instance's tor lists no PoW queue for it"
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def close(self):
        self.httpd.shutdown()


LOAD = {"queue_threshold": 50, "recover_seconds": 20, "metrics_interval": 2}


@pytest.fixture(scope="module")
def https_site(lab):
    from nodes.render import SiteDos
    from onion.keys import IdentityKey

    saved = copy.deepcopy(lab.info)
    record = relay = None
    workers = []
    try:
        lab.make_frontend_key(tag="sites")
        cert = lab.make_frontend_certificate()
        dos = SiteDos(pow=True, pow_queue_rate=50, pow_queue_burst=200, intro_rate=20, intro_burst=100)
        foreign = IdentityKey.generate().address  # another operator's onion site
        workers = lab.start_workers(2, tor_daemons=1, intro_points=3, tag="sitesw", dos=dos, metrics=True,
                                    foreign_onions={FOREIGN_DOMAIN: foreign})
        frontend = lab.info["frontend"]
        # The balancer reads the first instance's MetricsPort directly, the second's through
        # the relay (its real page; the test sets the queue depth it shows).
        (a, *_), (b, *_) = (w.instance_addresses for w in workers)
        relay = MetricsRelay(f"http://127.0.0.1:{workers[1].metrics_ports[0]}/metrics", b)
        record = lab.start_balancer("onion", tag="sitesbal", key_file=Path(lab.info["frontend_key_file"]),
                                    instances=[a, b], metrics={b: relay.url}, extra_config={"load": LOAD})
        resp, _ = wait_reachable(lab.net.client.socks_port, f"https://{frontend}/", timeout=240,
                                 what="HTTPS frontend", cacert=str(cert))
        yield SimpleNamespace(frontend=frontend, cert=cert, workers=workers, first=resp,
                              curl_line=lab.curl_line(), foreign=foreign, a=a, b=b, relay=relay)
    finally:
        if relay is not None:
            relay.close()
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


def test_foreign_onion_links_become_that_onion_through_tor(lab, https_site):
    resp = fetch(lab.net.client.socks_port, f"https://{https_site.frontend}/", isolation="foreign", timeout=60,
                 cacert=str(https_site.cert))
    assert resp.ok and resp.status == 200, resp.error or resp.status
    assert f'href="https://www.{https_site.foreign}.onion/story"' in resp.body
    assert FOREIGN_DOMAIN not in resp.body


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


# ---------------------------------------------------------------- load-aware intro selection
def _load_of(lab, address: str) -> dict:
    status = lab.balancer_status()
    return next(i["load"] for i in status["frontends"][0]["instances"] if i["address"].removesuffix(".onion") == address)


def _wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _frontend_split(lab, site) -> tuple[int, int, int] | None:
    """(intro points from A, from B, others) in the frontend's descriptor as an HSDir serves it."""
    client = lab.net.client
    keys = {x: fetch_intro_keys(client, getattr(site, x)) for x in ("a", "b")}
    front = fetch_intro_keys(client, site.frontend)
    if front is None or None in keys.values():
        return None
    return len(front & keys["a"]), len(front & keys["b"]), len(front - keys["a"] - keys["b"])


def test_an_overloaded_instance_gets_fewer_intro_points_then_its_share_back(lab, https_site):
    """Readings from real tor: both instances' suggested effort from their own descriptors'
    pow-params (0: not overloaded), A's PoW queue from its MetricsPort. Then B's tor page
    shows a deep queue: the frontend's descriptor on the HSDirs keeps one of B's intro
    points and status says why; the queue empties: after recover_seconds B has all three."""
    site = https_site
    a, b = site.a, site.b
    _wait("real readings in status", lambda: (
        (la := _load_of(lab, a))["pow_queue"] == 0 and la["metrics_error"] is None and la["pow_effort"] == 0
        and _load_of(lab, b)["pow_effort"] == 0 and _load_of(lab, b)["pow_queue"] == 0 and la), 60)
    assert _wait("all six intro points", lambda: _frontend_split(lab, site) == (3, 3, 0) or None, 90)

    site.relay.queue = 120
    why = _wait("B overloaded in status", lambda: _load_of(lab, b)["why"], 30)
    assert why == "overloaded (PoW queue 120 >= 50): 1 of 3 intro points"
    assert _load_of(lab, b)["intro_points_allowed"] == 1 and _load_of(lab, a)["why"] is None
    _wait("B down to one intro point on the HSDirs", lambda: _frontend_split(lab, site) == (3, 1, 0) or None, 90)

    site.relay.queue = None  # B's tor's own page again: queue 0
    _wait("B recovering", lambda: (_load_of(lab, b)["why"] or "").startswith("recovering: calm for"), 30)
    _wait("B restored in status", lambda: _load_of(lab, b)["why"] is None, LOAD["recover_seconds"] + 30)
    assert _wait("B's three intro points back on the HSDirs",
                 lambda: _frontend_split(lab, site) == (3, 3, 0) or None, 90)
