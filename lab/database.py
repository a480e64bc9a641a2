"""A real PostgreSQL on 127.0.0.1 configured from the database templates, for the lab's app
sites and for the tests: the rendered conf.d file, pg_hba.conf and database-roles.sql (the
files `pulumi up` installs on the database machine), TLS from a CA and certificate made the
way nodes/pki.py has pulumi-tls make them (ECDSA P-256, the same uses and names), and one
role + database + password per app site, created by the rendered SQL itself.

Run as root, PostgreSQL runs as the `postgres` OS user (it refuses root), so the cluster's
directory and its parents must be traversable by that user; run as anyone else, it runs as
that user (and that user is the cluster's superuser, by the rendered `local all all peer`).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodes.render import DatabaseSpec, DatabaseTls, Layout, app_database_name, database_volumes, render_database

# nodes/pki.py's parameters, without importing pulumi into the lab.
DATABASE_HOST_NAME = "database.onionstack.internal"
FAKE_VOLUMES = database_volumes(("vol-0123456789abcdef0", "/dev/sdf"), ("vol-0123456789abcdef1", "/dev/sdg"),
                                ("vol-0123456789abcdef2", "/dev/sdh"))


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are required (apt-get install postgresql)")
    return found[-1]


# --------------------------------------------------------------------------- PKI
@dataclass(frozen=True)
class Pki:
    ca_pem: str
    cert_pem: str
    key_pem: str

    @property
    def tls(self) -> DatabaseTls:
        return DatabaseTls(cert_pem=self.cert_pem, ca_pem=self.ca_pem)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # pulumi-tls: algorithm ECDSA, curve P256


def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_pki(ip: str, *, names: Sequence[str] = (DATABASE_HOST_NAME,), ca_name: str = "onionstack lab database CA"
             ) -> Pki:
    """A CA (basicConstraints CA:TRUE, keyCertSign + cRLSign + digitalSignature) and a server
    certificate it signs (digitalSignature + keyEncipherment, serverAuth; SAN = `names` and
    `ip`): what nodes/pki.py declares with tls.SelfSignedCert and tls.LocallySignedCert."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = _key(), _key()
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name),
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "onionstack")])
    ca = (x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(ip))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else ip)]))
            .issuer_name(ca_subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Pki(ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), _pem(key))


# --------------------------------------------------------------------------- the cluster
def database_url(role: str, password: str, host: str, port: int, database: str, ca_file: str) -> str:
    """A libpq URL that verifies the server: TLS required, chain to `ca_file`, host name
    (or IP) checked against the certificate."""
    return (f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(database, safe='')}"
            f"?sslmode=verify-full&sslrootcert={quote(ca_file, safe='/')}")


def _make_traversable(path: Path) -> None:
    """Give others the x bit (enter, not list) on `path` and its parents, so that the
    postgres user reaches a cluster under a root-owned 0700 temp dir."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o001)


@dataclass
class PostgresCluster:
    """One cluster under `root`: `fs/` holds the rendered files at their machine paths
    (layout root), `data/` the cluster, `wal/` its WAL (initdb --waldir: on the database
    instance the WAL is on the journal volume, the data on the data volume), `run/` its
    unix socket. `argv()` is the command that runs it in the foreground (the caller starts
    it: a lab process or a Popen)."""

    root: Path
    port: int
    apps: tuple[str, ...] = ()
    listen_ip: str = "127.0.0.1"
    client_cidrs: tuple[str, ...] = ("127.0.0.0/8",)
    pki: Pki | None = None
    passwords: dict[str, str] = field(default_factory=dict)  # role -> password

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if self.pki is None:
            self.pki = make_pki(self.listen_ip)
        self.spec = DatabaseSpec(self.listen_ip, tuple(self.client_cidrs), FAKE_VOLUMES, port=self.port,
                                 layout=Layout(root=str(self.root / "fs")), tls=self.pki.tls, apps=tuple(self.apps))
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        for r in self.spec.roles:
            self.passwords.setdefault(r.role, secrets.token_hex(16))

    # paths
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def ca_file(self) -> str:
        return self.spec.ca_file

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if os.geteuid() == 0 else argv

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, self.user, self.user)

    def prepare(self) -> None:
        """Render and install the files, initdb, point the cluster at the rendered config."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _make_traversable(self.root)
        files = render_database(self.spec)
        secret = {self.spec.layout.key(self.spec.key_file): self.pki.key_pem}
        secret.update({self.spec.layout.key(r.password_file): self.passwords[r.role] for r in self.spec.roles})
        fs = Path(self.spec.layout.root)
        for rel, f in {**{k: (v.content, v.mode, v.owner) for k, v in files.items()},
                       **{k: (v, 0o600, "postgres") for k, v in secret.items()}}.items():
            dest = fs / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(dest.parent, 0o755)
            dest.write_text(f[0])
            os.chmod(dest, f[1])
            if f[2] == "postgres":
                self._own(dest)
        for d in (self.data_dir, self.wal_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            self._own(d)
        init = subprocess.run(self._as_user([str(pg_bin() / "initdb"), "-D", str(self.data_dir),
                                             f"--waldir={self.wal_dir}", "--auth-local=peer",
                                             "--auth-host=scram-sha-256", "-U", self.user, "-E", "UTF8"]),
                              capture_output=True, text=True, timeout=180)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        conf_d = fs / next(k for k in files if k.endswith("conf.d/onionstack.conf"))
        hba = fs / next(k for k in files if k.endswith("/pg_hba.conf"))
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"include '{conf_d}'\nhba_file = '{hba}'\nunix_socket_directories = '{self.socket_dir}'\n")

    def argv(self) -> list[str]:
        """The server in the foreground. As root through setpriv, which execs postgres itself
        (runuser would stay in between and SIGKILL it 2 s after forwarding a SIGTERM), so a
        signal reaches the postmaster: SIGINT is PostgreSQL's fast shutdown."""
        server = [str(pg_bin() / "postgres"), "-D", str(self.data_dir)]
        if os.geteuid() != 0:
            return server
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *server]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while subprocess.run([str(pg_bin() / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
                             timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not accept connections on port {self.port} within {timeout:.0f} s")
            time.sleep(0.2)

    def psql(self, *args: str, stdin: str | None = None, database: str = "postgres") -> subprocess.CompletedProcess:
        """psql as the cluster's superuser over the unix socket (peer authentication)."""
        return subprocess.run(self._as_user(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                                             "-p", str(self.port), "-U", self.user, "-d", database, *args]),
                              input=stdin, capture_output=True, text=True, timeout=60)

    def create_roles(self) -> None:
        """Run the rendered database-roles.sql as apply.sh does (on psql's stdin)."""
        sql = (Path(self.spec.layout.root) / self.spec.layout.key(self.spec.layout.path(
            "script_dir", "database-roles.sql"))).read_text()
        result = self.psql(stdin=sql)
        if result.returncode != 0:
            raise RuntimeError(f"database-roles.sql failed: {result.stderr}")

    def url(self, app: str, host: str | None = None) -> str:
        name = app_database_name(app)
        return database_url(name, self.passwords[name], host or self.listen_ip, self.port, name, self.ca_file)


__all__ = ["DATABASE_HOST_NAME", "Pki", "PostgresCluster", "database_url", "make_pki", "pg_bin"]
