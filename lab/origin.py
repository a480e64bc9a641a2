"""The lab's origin web site: HTTPS with a certificate from a throw-away test CA.

It stands in for the clearnet site behind the workers. Its pages link absolutely to its own
domain and a subdomain, so a test can see the workers' nginx rewrite them to the onion
hostname. It listens on one port per worker (each worker's `originAddress` names its own
port) and says in a header and in the page which listener answered: that tells the tests
which worker proxied a request without changing the workers' templates, which are the same
as on AWS.

Run by the lab as `python -m lab.origin --state-dir DIR --domain D --ports P1,P2,...`.
"""
from __future__ import annotations

import argparse
import datetime
import html
import http.server
import ssl
import sys
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DOMAIN = "lab.example"  # .example is reserved (RFC 2606): never a real site
LISTENER_HEADER = "X-Lab-Origin-Listener"


def origin_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "origin"


def make_test_ca(state_dir: Path, domain: str = DEFAULT_DOMAIN) -> dict[str, Path]:
    """Create a CA and a server certificate for `domain` and `*.domain`; returns the paths.

    Files: ca.pem (what the workers' nginx trusts), server.pem, server.key (0600).
    """
    out = origin_dir(state_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onionstack lab test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem", "cert": out / "server.pem", "key": out / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].touch(mode=0o600)
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


FOREIGN_DOMAIN = "elsewhere.example"  # another operator's site, which a lab worker may map to its onion


def page(path: str, domain: str, listener: int) -> tuple[int, str]:
    """The origin's pages: absolute links to its own domain, for the rewriting tests, and
    one to another site (FOREIGN_DOMAIN), for the foreign onion maps."""
    if path in ("/", "/index.html"):
        body = (
            f"<html><head><title>lab origin</title>"
            f'<link rel="stylesheet" href="https://static.{domain}/style.css"></head><body>\n'
            f"<h1>Hello from {html.escape(domain)}</h1>\n"
            f'<p><a href="https://{domain}/about">about</a> '
            f'<a href="https://www.{domain}/news?x=1">news</a> '
            f'<a href="https://www.{FOREIGN_DOMAIN}/story">elsewhere</a></p>\n'
            f"<p>origin-listener: {listener}</p>\n</body></html>\n")
        return 200, body
    if path == "/about":
        return 200, (f'<html><body><p>About <a href="https://{domain}/">home</a></p>'
                     f"<p>origin-listener: {listener}</p></body></html>\n")
    if path == "/style.css":
        return 200, f"body {{ background: url(https://static.{domain}/bg.png); }}\n"
    return 404, "<html><body>not found</body></html>\n"


def make_handler(domain: str, listener: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lab-origin"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status, body = page(self.path.split("?", 1)[0], domain, listener)
            data = body.encode()
            self.send_response(status)
            ctype = "text/css" if self.path.endswith(".css") else "text/html; charset=utf-8"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header(LISTENER_HEADER, str(listener))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:
            sys.stdout.write(f"listener {listener}: {self.address_string()} {fmt % args}\n")
            sys.stdout.flush()

    return Handler


def serve(state_dir: Path, domain: str, ports: list[int], address: str = "127.0.0.1") -> None:
    files = origin_dir(state_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files / "server.pem", files / "server.key")
    servers = []
    for i, port in enumerate(ports):
        srv = http.server.ThreadingHTTPServer((address, port), make_handler(domain, i))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        servers.append(srv)
    print(f"origin https://{domain} on {address} ports {ports}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers[1:]]
    for t in threads:
        t.start()
    servers[0].serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.origin", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--domain", default=DEFAULT_DOMAIN)
    parser.add_argument("--address", default="127.0.0.1",
                        help="local address to listen on (default 127.0.0.1)")
    parser.add_argument("--ports", required=True,
                        help="comma-separated ports on 127.0.0.1, one listener per worker")
    args = parser.parse_args(argv)
    try:
        ports = [int(p) for p in args.ports.split(",")]
    except ValueError:
        parser.error(f"--ports: {args.ports!r} is not a comma-separated list of port numbers")
    serve(args.state_dir, args.domain, ports, args.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
