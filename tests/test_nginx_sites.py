"""Sites as EOTK serves them, on the real worker nginx: HTTPS on the onion's port 443 (a
self-signed certificate like the one the stack makes, HTTP/2, checked by real TLS
clients: Python's ssl and curl), port 80 redirecting to HTTPS except validation paths,
links/redirects/headers naming `https://` for HTTPS sites, Secure cookies, foreign onion
maps, and the origin's Onion-Location never reaching onion readers.

Sites: `news` (HTTPS, port 80 redirects, validation paths, a foreign onion map),
`plain` (HTTP only), `both` (HTTPS, port 80 keeps serving). Requests arrive the way tor
delivers them: a PROXY line with the circuit id, then HTTP or TLS.
"""
from __future__ import annotations

import http.cookiejar
import itertools
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from nodes import render
from nodes.render import Layout, NginxTuning, SiteSpec, ValidationPath, WorkerSpec
from tests.conftest_tools import (Nginx, Origin, ProxyBridge, Reply, TestCA, onion_address_for,
                                  onion_address_starting_with_digit, request, self_signed, short_tmpdir,
                                  write_tree)

pytestmark = pytest.mark.tools

NEWS = onion_address_for("sites-news")
PLAIN = onion_address_starting_with_digit()
BOTH = onion_address_for("sites-both")
FACEBOOK = onion_address_for("sites-facebook")  # a foreign onion (another operator's site)
CA_TOKEN = "5a1b2c3d4e5f\nsectigo.com\nt0ken-value"

PAGE = b"""<!doctype html><html><head>
<meta http-equiv="onion-location" content="http://someonesonion.onion/"/>
<META CONTENT="http://someonesonion.onion/" HTTP-EQUIV="Onion-Location">
</head><body>
<a id="a" href="https://www.example.com/a">www</a>
<a id="b" href="http://example.com/b">plain link to an https site</a>
<a id="c" href="https://other.org/c">plain site</a>
<a id="d" href="https://both.net/d">both</a>
<a id="e" href="https://www.facebook.com/e">foreign</a>
<a id="f" href="http://facebook.com/f">foreign, http</a>
<p id="g">notfacebook.com facebook.com.au</p>
<script>var api = "https:\\/\\/api.example.com\\/v1";</script>
</body></html>
"""

ROUTES = {
    "/page": lambda req: Reply(200, [("Content-Type", "text/html; charset=utf-8"),
                                     ("Onion-Location", "http://someonesonion.onion/page")], PAGE),
    "/redirect": lambda req: Reply(302, [("Location", "https://www.example.com:443/target?x=1")], b""),
    "/redirect-plain": lambda req: Reply(301, [("Location", "https://other.org/y")], b""),
    "/redirect-foreign": lambda req: Reply(302, [("Location", "https://m.facebook.com/login?next=/")], b""),
    "/cookie": lambda req: Reply(200, [("Set-Cookie", "sid=1; Domain=.example.com; Path=/; Secure; HttpOnly; SameSite=Lax"),
                                       ("Set-Cookie", "__Host-csrf=2; Path=/; Secure"),
                                       ("Set-Cookie", "__Secure-pref=3; Domain=example.com; Path=/; Secure"),
                                       ("Content-Type", "text/plain")], b"ok"),
    "/echo": lambda req: Reply(200, [("Content-Type", "text/plain")], b"echo"),
    "/.well-known/acme-challenge/tok1": lambda req: Reply(200, [("Content-Type", "text/plain")], b"tok1.thumb"),
    "/headers": lambda req: Reply(200, [
        ("Content-Type", "text/plain"),
        ("Access-Control-Allow-Origin", "https://www.example.com"),
        ("Link", "<https://static.example.com/s.css>; rel=preload, <https://cdn.facebook.com/x.js>; rel=preload"),
        ("Content-Location", "https://other.org/headers.txt"),
        ("Content-Security-Policy", "default-src 'self' https://static.example.com; img-src https://other.org "
                                    "https://www.facebook.com *.facebook.com; upgrade-insecure-requests"),
        ("Onion-Location", "http://someonesonion.onion/headers"),
        ("Strict-Transport-Security", "max-age=63072000"),
    ], b"headers"),
}


class Stack:
    def __init__(self, root: Path, run_dir: Path):
        self.ca = TestCA(root / "ca")
        cert, key = self.ca.issue(["example.com", "*.example.com", "other.org", "*.other.org",
                                   "both.net", "*.both.net"])
        self.origin = Origin(cert, key, ROUTES)
        self.spec = WorkerSpec(
            sites=(
                SiteSpec("news", "example.com", NEWS, origin_address=self.origin.address, https=True,
                         validation_paths=(ValidationPath("/.well-known/pki-validation/ABC123.txt", CA_TOKEN),
                                           ValidationPath("/.well-known/acme-challenge/")),
                         foreign_onions=(("facebook.com", FACEBOOK),)),
                SiteSpec("plain", "other.org", PLAIN, origin_address=self.origin.address),
                SiteSpec("both", "both.net", BOTH, origin_address=self.origin.address, https=True,
                         http_redirect=False),
            ),
            resolver="127.0.0.1", tor_daemons=2,
            nginx=NginxTuning(trusted_ca_file=str(self.ca.cert_path)),
            layout=Layout(root=str(root), run_dir=str(run_dir)), tor_user=None, nginx_user=None,
        )
        # The onions' certificates: self-signed for the onion and its subdomains, as the
        # stack makes them; a reader trusts each by taking it as its CA file.
        self.certs = {}
        tls = {}
        for site in self.spec.sites:
            if site.https:
                cert_path, key_path = self_signed(root / "onion-certs", [site.onion_host, "*." + site.onion_host])
                self.certs[site.name] = cert_path
                tls[site.name] = (cert_path.read_text(), key_path.read_text())
        files = {**render.render_worker(self.spec), **render.worker_secret_files(self.spec, tls)}
        write_tree(root, files)
        for d in render.worker_directories(self.spec):
            Path(d.path).mkdir(parents=True, exist_ok=True)
        self.nginx = Nginx(root / "etc/onionstack/nginx/nginx.conf")
        for site in self.spec.sites:
            for daemon in self.spec.daemon_names:
                for port in self.spec.ports(site):
                    self.nginx.wait_for_socket(self.socket(site.name, daemon, port))
        self.circuits = itertools.count(1000)

    def site(self, name: str) -> SiteSpec:
        return next(x for x in self.spec.sites if x.name == name)

    def socket(self, site: str, daemon: str = "tor1", port: int = 80) -> str:
        return self.spec.listener(self.site(site), daemon, port).removeprefix("unix:")

    def tls_context(self, site: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.certs[site]))
        context.set_alpn_protocols(["http/1.1"])
        return context

    def get(self, path: str, host: str, site: str = "news", *, https: bool = False, method: str = "GET",
            headers: dict | None = None, body: bytes | None = None):
        tls = self.tls_context(site) if https else None
        return request(self.socket(site, "tor1", 443 if https else 80), path, host, headers,
                       circuit_id=next(self.circuits), method=method, tls=tls, body=body)

    def last_seen(self, path: str):
        matches = [r for r in self.origin.seen if r.path == path]
        assert matches, f"the origin never received {path}"
        return matches[-1]

    def close(self) -> None:
        self.nginx.stop()
        self.origin.close()


@pytest.fixture(scope="module")
def stack():
    root, run_dir = short_tmpdir("os-st-"), short_tmpdir("os-sr-")
    s = Stack(root, run_dir)
    yield s
    s.close()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- port 80

def test_port_80_redirects_to_https_and_nothing_reaches_the_origin(stack):
    before = len(stack.origin.seen)
    r = stack.get("/a/b?c=1&d=example.com", f"www.{NEWS}.onion")
    assert r.status == 307
    assert r.headers["Location"] == f"https://www.{NEWS}.onion/a/b?c=1&d=example.com"
    # 307 keeps a POST a POST (the reader's browser re-sends it over HTTPS)
    r = stack.get("/form", f"{NEWS}.onion", method="POST", body=b"x=1",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status, r.headers["Location"]) == (307, f"https://{NEWS}.onion/form")
    # a Host that is not this onion is never reflected into the redirect
    r = stack.get("/", "evil.example.net")
    assert r.headers["Location"] == f"https://{NEWS}.onion/"
    assert len(stack.origin.seen) == before


def test_validation_paths_answer_on_port_80(stack):
    r = stack.get("/.well-known/pki-validation/ABC123.txt", f"{NEWS}.onion")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.body.decode() == CA_TOKEN
    # a prefix without content goes to the origin (e.g. an ACME http-01 token it serves)
    r = stack.get("/.well-known/acme-challenge/tok1", f"{NEWS}.onion")
    assert (r.status, r.text) == (200, "tok1.thumb")
    assert stack.last_seen("/.well-known/acme-challenge/tok1").headers["Host"] == "example.com"
    # the neighbours still redirect
    assert stack.get("/.well-known/pki-validation/other.txt", f"{NEWS}.onion").status == 307
    assert stack.get("/.well-known/acme", f"{NEWS}.onion").status == 307
    # and the fixed file answers over HTTPS too
    r = stack.get("/.well-known/pki-validation/ABC123.txt", f"{NEWS}.onion", https=True)
    assert (r.status, r.body.decode()) == (200, CA_TOKEN)


def test_a_site_can_keep_plain_http(stack):
    r = stack.get("/echo", f"{BOTH}.onion", site="both")
    assert (r.status, r.text) == (200, "echo")
    r = stack.get("/echo", f"{BOTH}.onion", site="both", https=True)
    assert (r.status, r.text) == (200, "echo")
    assert stack.get("/echo", f"{PLAIN}.onion", site="plain").status == 200


# ---------------------------------------------------------------- TLS and HTTP/2

def test_https_uses_the_site_certificate_for_the_onion_and_its_subdomains(stack):
    context = ssl.create_default_context(cafile=str(stack.certs["news"]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    from tests.conftest_tools import proxied_socket
    for host in (f"{NEWS}.onion", f"www.{NEWS}.onion"):
        with context.wrap_socket(proxied_socket(stack.socket("news", "tor2", 443), 7, 443),
                                 server_hostname=host) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(names.get_values_for_type(x509.DNSName)) == {f"{NEWS}.onion", f"*.{NEWS}.onion"}
    # another site's certificate does not verify for this onion: each site has its own
    wrong = ssl.create_default_context(cafile=str(stack.certs["both"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.wrap_socket(proxied_socket(stack.socket("news", "tor1", 443), 8, 443), server_hostname=f"{NEWS}.onion")


def test_curl_gets_http2_over_the_onion_certificate(stack):
    bridge = ProxyBridge(stack.socket("news", "tor1", 443))
    try:
        url = f"https://www.{NEWS}.onion:{bridge.port}/page"
        proc = subprocess.run(
            ["curl", "-sS", "--http2", "--cacert", str(stack.certs["news"]), "--resolve",
             f"www.{NEWS}.onion:{bridge.port}:127.0.0.1", "-D", "-", url],
            capture_output=True, text=True, timeout=30)
    finally:
        bridge.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HTTP/2 200"), proc.stdout[:200]
    assert f'href="https://www.{NEWS}.onion/a"' in proc.stdout
    assert stack.last_seen("/page").headers["Host"] == "www.example.com"


# ---------------------------------------------------------------- rewriting with https

def test_links_use_https_for_https_sites_and_http_for_plain_ones(stack):
    r = stack.get("/page", f"www.{NEWS}.onion", https=True)
    assert r.status == 200
    body = r.text
    assert f'href="https://www.{NEWS}.onion/a"' in body
    assert f'href="http://{NEWS}.onion/b"' in body          # the origin's own scheme, redirected later
    assert f'href="http://{PLAIN}.onion/c"' in body         # plain site: https -> http
    assert f'href="https://{BOTH}.onion/d"' in body
    assert f'"https:\\/\\/api.{NEWS}.onion\\/v1"' in body
    # the same page from the plain site's server names the same schemes
    body = stack.get("/page", f"{PLAIN}.onion", site="plain").text
    assert f'href="https://www.{NEWS}.onion/a"' in body and f'href="http://{PLAIN}.onion/c"' in body


def test_redirect_location_uses_each_sites_scheme(stack):
    r = stack.get("/redirect", f"{NEWS}.onion", https=True)
    assert (r.status, r.headers["Location"]) == (302, f"https://www.{NEWS}.onion/target?x=1")
    r = stack.get("/redirect-plain", f"{NEWS}.onion", https=True)
    assert r.headers["Location"] == f"http://{PLAIN}.onion/y"
    r = stack.get("/redirect", f"{PLAIN}.onion", site="plain")
    assert r.headers["Location"] == f"https://www.{NEWS}.onion/target?x=1"


def test_origin_and_referer_from_https_onion_pages_reach_the_origin_as_https(stack):
    r = stack.get("/echo", f"www.{NEWS}.onion", https=True, headers={
        "Origin": f"https://www.{NEWS}.onion",
        "Referer": f"https://{NEWS}.onion/from?u=https://{BOTH}.onion/x",
    })
    assert r.status == 200
    seen = stack.last_seen("/echo")
    assert seen.headers["Origin"] == "https://www.example.com"
    assert seen.headers["Referer"] == "https://example.com/from?u=https://both.net/x"


def test_cors_link_csp_name_https_onions_and_keep_upgrade_insecure_requests(stack):
    r = stack.get("/headers", f"{NEWS}.onion", https=True)
    assert r.headers["Access-Control-Allow-Origin"] == f"https://www.{NEWS}.onion"
    assert r.headers["Link"] == (f"<https://static.{NEWS}.onion/s.css>; rel=preload, "
                                 f"<https://cdn.{FACEBOOK}.onion/x.js>; rel=preload")
    assert r.headers["Content-Location"] == f"http://{PLAIN}.onion/headers.txt"
    assert r.headers["Content-Security-Policy"] == (
        f"default-src 'self' https://static.{NEWS}.onion; img-src http://{PLAIN}.onion "
        f"https://www.{FACEBOOK}.onion *.{FACEBOOK}.onion; upgrade-insecure-requests")
    assert r.headers.get("Strict-Transport-Security") is None
    # a plain-HTTP site drops upgrade-insecure-requests, and has no foreign map of its own
    r = stack.get("/headers", f"{PLAIN}.onion", site="plain")
    assert r.headers["Content-Security-Policy"] == (
        f"default-src 'self' https://static.{NEWS}.onion; img-src http://{PLAIN}.onion "
        "https://www.facebook.com *.facebook.com")
    assert r.headers["Link"].endswith("<https://cdn.facebook.com/x.js>; rel=preload")


def test_secure_cookies_keep_working_over_https(stack):
    r = stack.get("/cookie", f"www.{NEWS}.onion", https=True)
    cookies = r.headers.get_all("Set-Cookie")
    assert f"sid=1; Domain=.{NEWS}.onion; Path=/; Secure; HttpOnly; SameSite=Lax" in cookies
    assert "__Host-csrf=2; Path=/; Secure" in cookies
    assert f"__Secure-pref=3; Domain={NEWS}.onion; Path=/; Secure" in cookies
    # A cookie jar (Python's, RFC 6265 rules incl. Secure) keeps them for the https onion
    # and sends them back; they come to the origin under the same names.
    jar = http.cookiejar.CookieJar()
    url = f"https://www.{NEWS}.onion/cookie"

    class _Response:
        def info(self):
            return r.headers

    jar.extract_cookies(_Response(), urllib.request.Request(url))
    assert {c.name for c in jar} == {"sid", "__Host-csrf", "__Secure-pref"}
    assert all(c.secure for c in jar)
    follow = urllib.request.Request(f"https://www.{NEWS}.onion/echo")
    jar.add_cookie_header(follow)
    assert stack.get("/echo", f"www.{NEWS}.onion", https=True,
                     headers={"Cookie": follow.get_header("Cookie")}).status == 200
    sent = stack.last_seen("/echo").headers["Cookie"]
    assert sorted(sent.split("; ")) == ["__Host-csrf=2", "__Secure-pref=3", "sid=1"]
    # Secure means what it says: the jar sends none of them over plain http
    plain = urllib.request.Request(f"http://www.{NEWS}.onion/echo")
    jar.add_cookie_header(plain)
    assert plain.get_header("Cookie") is None


# ---------------------------------------------------------------- foreign onions

def test_foreign_onion_links_are_rewritten_in_bodies_keeping_their_scheme(stack):
    body = stack.get("/page", f"{NEWS}.onion", https=True).text
    assert f'href="https://www.{FACEBOOK}.onion/e"' in body
    assert f'href="http://{FACEBOOK}.onion/f"' in body
    assert "notfacebook.com facebook.com.au" in body
    # a site that lists no foreign map leaves those links alone
    body = stack.get("/page", f"{BOTH}.onion", site="both").text
    assert 'href="https://www.facebook.com/e"' in body


def test_foreign_onion_redirects_are_rewritten(stack):
    r = stack.get("/redirect-foreign", f"{NEWS}.onion", https=True)
    assert r.headers["Location"] == f"https://m.{FACEBOOK}.onion/login?next=/"
    r = stack.get("/redirect-foreign", f"{BOTH}.onion", site="both", https=True)
    assert r.headers["Location"] == "https://m.facebook.com/login?next=/"


# ---------------------------------------------------------------- Onion-Location

@pytest.mark.parametrize("site,host,https", [("news", NEWS, True), ("plain", PLAIN, False), ("both", BOTH, False)],
                         ids=["https", "plain", "both"])
def test_the_origins_onion_location_never_reaches_onion_readers(stack, site, host, https):
    for path in ("/page", "/headers"):
        r = stack.get(path, f"{host}.onion", site=site, https=https)
        assert r.status == 200
        assert r.headers.get("Onion-Location") is None
        assert "onion-location" not in r.text.lower()
    assert "<html>" in stack.get("/page", f"{host}.onion", site=site, https=https).text
