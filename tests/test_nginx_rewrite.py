"""The rendered worker nginx, run for real on unix sockets in front of a local HTTPS origin
(test CA made here; nginx verifies it). Requests arrive the way tor delivers them: a PROXY
protocol line carrying the circuit id, then HTTP with the onion Host.

Each test names one rewriting behaviour; together they are the list issue 4 asks for.
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import pytest

from nodes import render
from nodes.render import Layout, NginxTuning, SiteSpec, WorkerSpec
from tests.conftest_tools import (Nginx, Origin, Reply, TestCA, free_port, gzip_if_asked, onion_address_for,
                                  onion_address_starting_with_digit, request, short_tmpdir, write_tree)

pytestmark = pytest.mark.tools

NEWS = onion_address_for("rewrite-news")
OTHER = onion_address_starting_with_digit()  # "$1<digit>..." must not become capture $12
BAD = onion_address_for("rewrite-bad")

PAGE = b"""<!doctype html><html><body>
<a id="a" href="https://www.example.com/a">www</a>
<a id="b" href="https://example.com/b">bare</a>
<img id="c" src="//static.example.com/c.png">
<a id="d" href="https://other.org/d">cross-site</a>
<a id="e" href="HTTPS://Shop.Other.Org/e">case</a>
<p id="f">notexample.com example.com.au mail@example.com</p>
<script>var api = "https:\\/\\/api.example.com\\/v1";</script>
</body></html>
"""


def _json_reply(_req):
    # "escaped" is written the way many JSON encoders write URLs: with "\/" for "/".
    body = (b'{"url": "https://api.example.com/v1", "escaped": "https:\\/\\/www.example.com\\/x", '
            b'"other": "other.org", "host": "cdn.other.org"}')
    return Reply(200, [("Content-Type", "application/json")], body)


ROUTES = {
    "/page": lambda req: Reply(200, [("Content-Type", "text/html; charset=utf-8")], PAGE),
    "/redirect": lambda req: Reply(302, [("Location", "https://www.example.com:443/target?x=1"),
                                         ("Content-Type", "text/plain")], b"moved"),
    "/redirect-other": lambda req: Reply(301, [("Location", "https://other.org/y")], b""),
    "/refresh": lambda req: Reply(200, [("Refresh", "5; url=https://shop.other.org/z"),
                                        ("Content-Type", "text/plain")], b"soon"),
    "/redirect-relative": lambda req: Reply(302, [("Location", "/here?q=example.com")], b""),
    "/cookie": lambda req: Reply(200, [("Set-Cookie", "sid=1; Domain=.example.com; Path=/; HttpOnly"),
                                       ("Set-Cookie", "pref=2; Domain=shop.other.org; Path=/"),
                                       ("Set-Cookie", "plain=3; Path=/"),
                                       ("Content-Type", "text/plain")], b"ok"),
    "/api.json": _json_reply,
    "/gzip": lambda req: gzip_if_asked(PAGE, req, "text/html"),
    "/echo": lambda req: Reply(200, [("Content-Type", "text/plain")], b"echo"),
    "/headers": lambda req: Reply(200, [
        ("Content-Type", "text/plain"),
        ("Strict-Transport-Security", "max-age=63072000; includeSubDomains; preload"),
        ("Server", "SecretOrigin/1.0"),
        ("X-Powered-By", "PHP/8.3"),
        ("Alt-Svc", 'h3=":443"'),
        ("Access-Control-Allow-Origin", "https://www.example.com"),
        ("Link", "<https://static.example.com/s.css>; rel=preload, <https://other.org/x.js>; rel=preload"),
        ("Content-Location", "https://example.com/headers.txt"),
        ("X-Kept", "yes"),
        ("Content-Security-Policy", "default-src 'self' https://static.example.com *.example.com; "
                                    "img-src https://other.org https://cdn.other.org data:; "
                                    "upgrade-insecure-requests; connect-src 'self' api.example.com"),
        ("Content-Security-Policy-Report-Only", "default-src https://example.com; report-uri /csp"),
    ], b"headers"),
}


class Stack:
    """nginx + origins for the module; `circuits` hands out fresh circuit ids so that
    tests never share a rate-limit bucket unless they mean to."""

    def __init__(self, root: Path, run_dir: Path):
        self.ca = TestCA(root / "ca")
        cert, key = self.ca.issue(["example.com", "*.example.com", "other.org", "*.other.org"])
        self.origin = Origin(cert, key, ROUTES)
        # Same names, but a CA nginx does not trust: verification must fail (502).
        rogue = TestCA(root / "rogue", name="rogue CA")
        rcert, rkey = rogue.issue(["bad.example.net"])
        self.rogue_origin = Origin(rcert, rkey, ROUTES)
        self.spec = WorkerSpec(
            sites=(
                SiteSpec("news", "example.com", NEWS, origin_address=self.origin.address,
                         block_hosts=("admin.example.com",),
                         block_paths=("/private/", r"^/wp-(admin|login)(/|\.php)")),
                SiteSpec("other", "other.org", OTHER, origin_address=self.origin.address),
                SiteSpec("bad", "bad.example.net", BAD, origin_address=self.rogue_origin.address),
            ),
            resolver="127.0.0.1", tor_daemons=2,
            nginx=NginxTuning(trusted_ca_file=str(self.ca.cert_path), rate="1r/m", burst=4),
            layout=Layout(root=str(root), run_dir=str(run_dir)), tor_user=None, nginx_user=None,
        )
        write_tree(root, render.render_worker(self.spec))
        for d in render.worker_directories(self.spec):
            Path(d.path).mkdir(parents=True, exist_ok=True)
        self.nginx = Nginx(root / "etc/onionstack/nginx/nginx.conf")
        for site in self.spec.sites:
            for daemon in self.spec.daemon_names:
                self.nginx.wait_for_socket(self.socket(site.name, daemon))
        self.circuits = itertools.count(1000)

    def socket(self, site: str, daemon: str = "tor1") -> str:
        s = next(x for x in self.spec.sites if x.name == site)
        return self.spec.listener(s, daemon).removeprefix("unix:")

    def get(self, path: str, host: str, site: str = "news", daemon: str = "tor1",
            headers: dict | None = None, circuit: int | None = None):
        circuit = next(self.circuits) if circuit is None else circuit
        return request(self.socket(site, daemon), path, host, headers, circuit_id=circuit)

    def last_seen(self, path: str):
        matches = [r for r in self.origin.seen if r.path == path]
        assert matches, f"the origin never received {path}"
        return matches[-1]

    def close(self) -> None:
        log = self.nginx.stop()
        self.origin.close()
        self.rogue_origin.close()
        return log


@pytest.fixture(scope="module")
def stack():
    root, run_dir = short_tmpdir("os-nx-"), short_tmpdir("os-run-")
    s = Stack(root, run_dir)
    yield s
    s.close()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def test_page_links_become_onion_links(stack):
    r = stack.get("/page", f"{NEWS}.onion")
    assert r.status == 200
    body = r.text
    assert f'href="http://www.{NEWS}.onion/a"' in body
    assert f'href="http://{NEWS}.onion/b"' in body
    assert f'src="//static.{NEWS}.onion/c.png"' in body
    # every site's domain is rewritten in every site's pages (cross-site mapping)
    assert f'href="http://{OTHER}.onion/d"' in body
    assert f'href="http://Shop.{OTHER}.onion/e"' in body
    # longer names that merely contain the domain stay untouched
    assert "notexample.com example.com.au" in body
    assert f"mail@{NEWS}.onion" in body
    assert f'"http:\\/\\/api.{NEWS}.onion\\/v1"' in body
    assert "https://" not in body and "example.com/" not in body


def test_subdomain_host_maps_to_origin_subdomain_with_sni_and_verified_tls(stack):
    assert stack.get("/echo", f"www.{NEWS}.onion").status == 200
    seen = stack.last_seen("/echo")
    assert seen.headers["Host"] == "www.example.com"
    assert seen.sni == "www.example.com"
    assert stack.get("/echo", f"{NEWS}.onion").status == 200
    seen = stack.last_seen("/echo")
    assert seen.headers["Host"] == "example.com" and seen.sni == "example.com"
    # an instance address or garbage Host means the bare domain
    assert stack.get("/echo", "someinstance.onion").status == 200
    assert stack.last_seen("/echo").headers["Host"] == "example.com"
    # the other site's socket maps to the other domain
    assert stack.get("/echo", f"cdn.{OTHER}.onion", site="other").status == 200
    assert stack.last_seen("/echo").headers["Host"] == "cdn.other.org"


def test_redirect_location_is_rewritten(stack):
    r = stack.get("/redirect", f"{NEWS}.onion")
    assert r.status == 302
    assert r.headers["Location"] == f"http://www.{NEWS}.onion/target?x=1"
    r = stack.get("/redirect-other", f"{NEWS}.onion")
    assert r.headers["Location"] == f"http://{OTHER}.onion/y"
    r = stack.get("/refresh", f"{NEWS}.onion")
    assert r.headers["Refresh"] == f"5; url=http://shop.{OTHER}.onion/z"
    r = stack.get("/redirect-relative", f"{NEWS}.onion")
    assert r.headers["Location"] == "/here?q=example.com"  # relative: already on the onion


def test_set_cookie_domains_are_rewritten(stack):
    r = stack.get("/cookie", f"{NEWS}.onion")
    cookies = r.headers.get_all("Set-Cookie")
    assert f"sid=1; Domain=.{NEWS}.onion; Path=/; HttpOnly" in cookies
    assert f"pref=2; Domain=shop.{OTHER}.onion; Path=/" in cookies
    assert "plain=3; Path=/" in cookies


def test_json_body_is_rewritten(stack):
    r = stack.get("/api.json", f"{NEWS}.onion")
    assert r.status == 200
    assert f'"http:\\/\\/www.{NEWS}.onion\\/x"' in r.text
    data = json.loads(r.body)
    assert data == {"url": f"http://api.{NEWS}.onion/v1", "escaped": f"http://www.{NEWS}.onion/x",
                    "other": f"{OTHER}.onion", "host": f"cdn.{OTHER}.onion"}


def test_referer_origin_cookie_reach_origin_with_clearnet_names(stack):
    r = stack.get("/echo", f"www.{NEWS}.onion", headers={
        "Referer": f"http://www.{NEWS}.onion/from?q=http://{OTHER}.onion/",
        "Origin": f"http://{NEWS}.onion",
        "Cookie": f"ret={OTHER}.onion; a=1",
        "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9",
    })
    assert r.status == 200
    seen = stack.last_seen("/echo")
    assert seen.headers["Referer"] == "https://www.example.com/from?q=https://other.org/"
    assert seen.headers["Origin"] == "https://example.com"
    assert seen.headers["Cookie"] == "ret=other.org; a=1"
    assert seen.headers["X-Forwarded-For"] is None and seen.headers["Forwarded"] is None
    # without those headers nothing is invented
    stack.get("/echo", f"{NEWS}.onion")
    seen = stack.last_seen("/echo")
    assert seen.headers["Referer"] is None and seen.headers["Origin"] is None
    assert seen.headers["Cookie"] is None


def test_blocked_paths_and_hosts_get_403_without_reaching_origin(stack):
    before = len(stack.origin.seen)
    assert stack.get("/private/x", f"{NEWS}.onion").status == 403
    assert stack.get("/wp-login.php", f"www.{NEWS}.onion").status == 403
    assert stack.get("/wp-admin/", f"{NEWS}.onion").status == 403
    assert stack.get("/", f"admin.{NEWS}.onion").status == 403
    assert len(stack.origin.seen) == before
    # neighbours of the blocked ones pass
    assert stack.get("/echo", f"www.{NEWS}.onion").status == 200
    assert stack.get("/wp-content/x", f"{NEWS}.onion").status == 404  # origin's own 404
    # block lists are per site
    assert stack.get("/private/x", f"{OTHER}.onion", site="other").status == 404


def test_compressing_origin_is_asked_for_identity_and_still_rewritten(stack):
    r = stack.get("/gzip", f"{NEWS}.onion", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status == 200
    seen = stack.last_seen("/gzip")
    assert not seen.headers.get("Accept-Encoding")
    assert r.headers.get("Content-Encoding") is None
    assert f'href="http://www.{NEWS}.onion/a"' in r.text


def test_response_headers_dropped_and_rewritten(stack):
    r = stack.get("/headers", f"{NEWS}.onion")
    assert r.status == 200
    for dropped in ("Strict-Transport-Security", "X-Powered-By", "Alt-Svc"):
        assert r.headers.get(dropped) is None, dropped
    assert "SecretOrigin" not in (r.headers.get("Server") or "")
    assert r.headers["X-Kept"] == "yes"
    assert r.headers["Access-Control-Allow-Origin"] == f"http://www.{NEWS}.onion"
    assert r.headers["Link"] == (f"<http://static.{NEWS}.onion/s.css>; rel=preload, "
                                 f"<http://{OTHER}.onion/x.js>; rel=preload")
    assert r.headers["Content-Location"] == f"http://{NEWS}.onion/headers.txt"
    assert r.headers["Content-Security-Policy"] == (
        f"default-src 'self' http://static.{NEWS}.onion *.{NEWS}.onion; "
        f"img-src http://{OTHER}.onion http://cdn.{OTHER}.onion data:; "
        f"connect-src 'self' api.{NEWS}.onion")
    assert r.headers.get("Content-Security-Policy-Report-Only") is None


def test_rate_limit_is_per_circuit(stack):
    """rate=1r/m burst=4: a circuit gets 5 requests, then 429; another circuit is not
    affected, nor is the same circuit id arriving from the other tor daemon."""
    statuses = [stack.get("/echo", f"{NEWS}.onion", circuit=77).status for _ in range(8)]
    assert statuses[:5] == [200] * 5
    assert statuses[5:] == [429] * 3
    assert stack.get("/echo", f"{NEWS}.onion", circuit=78).status == 200
    assert stack.get("/echo", f"{NEWS}.onion", circuit=77, daemon="tor2").status == 200
    assert stack.get("/echo", f"{NEWS}.onion", circuit=77).status == 429


def test_unverifiable_origin_certificate_gives_502(stack):
    before = len(stack.rogue_origin.seen)
    r = stack.get("/echo", f"{BAD}.onion", site="bad")
    assert r.status == 502
    assert len(stack.rogue_origin.seen) == before, "no request may reach an unverified origin"


def test_access_log_is_off_by_default(stack):
    conf = Path(stack.spec.layout.path("etc_dir", "nginx", "nginx.conf")).read_text()
    assert "    access_log off;\n" in conf
    assert not list(Path(stack.spec.layout.path("log_dir")).glob("*access*"))


def test_tcp_listeners_keep_daemons_apart_in_the_rate_limit(tmp_path):
    """nginx_tcp_base_port mode (all listeners on 127.0.0.1): the port, not the address,
    tells the tor daemons apart, so one daemon's circuit 5 does not throttle another's."""
    ca = TestCA(tmp_path / "ca")
    cert, key = ca.issue(["example.com", "*.example.com"])
    origin = Origin(cert, key, ROUTES)
    base = free_port()
    root = short_tmpdir("os-tcp-")
    spec = WorkerSpec(sites=(SiteSpec("news", "example.com", NEWS, origin_address=origin.address),),
                      resolver="127.0.0.1", tor_daemons=2, nginx_tcp_base_port=base,
                      nginx=NginxTuning(trusted_ca_file=str(ca.cert_path), rate="1r/m", burst=0),
                      layout=Layout(root=str(root)), tor_user=None, nginx_user=None)
    write_tree(root, render.render_worker(spec))
    for d in render.worker_directories(spec):
        Path(d.path).mkdir(parents=True, exist_ok=True)
    nginx = Nginx(root / "etc/onionstack/nginx/nginx.conf")
    try:
        first, second = (spec.listener(spec.sites[0], d) for d in spec.daemon_names)
        assert (first, second) == (f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                status = request(first, "/echo", f"{NEWS}.onion", circuit_id=5).status
                break
            except (ConnectionRefusedError, ConnectionResetError):
                # not listening yet, or accepted by the socket of an nginx still starting
                time.sleep(0.05)
        assert status == 200
        assert request(first, "/echo", f"{NEWS}.onion", circuit_id=5).status == 429
        assert request(second, "/echo", f"{NEWS}.onion", circuit_id=5).status == 200
        assert origin.seen[-1].headers["Host"] == "example.com"
    finally:
        nginx.stop()
        origin.close()
        shutil.rmtree(root, ignore_errors=True)
