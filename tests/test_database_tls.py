"""PostgreSQL TLS a client can verify: a real PostgreSQL on 127.0.0.1 configured from the
rendered database templates, its certificate and CA made the way nodes/pki.py has
pulumi-tls make them, and a real libpq client (psql) with `sslmode=verify-full`: it
connects with the right CA and host name, and refuses another CA and a wrong host name.
Also: the mocked stack's CA and certificate (pulumi-tls, emulated) chain and name the
database's private IP, and the key reaches the machine only in the step's secret stdin."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from lab.database import DATABASE_HOST_NAME, PostgresCluster, make_pki
from tests.conftest_tools import free_port, short_tmpdir

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def cluster():
    root = short_tmpdir("os-pgtls-")
    c = PostgresCluster(root, free_port(), apps=("guestbook", "forum"))
    c.prepare()
    server = subprocess.Popen(c.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c.wait_ready()
        c.create_roles()
        yield c
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def connect(c: PostgresCluster, role: str, *, host: str = "127.0.0.1", hostaddr: str | None = None,
            ca_file: str | None = None, database: str | None = None, sslmode: str = "verify-full"
            ) -> subprocess.CompletedProcess:
    """psql (libpq) over TCP; the password in the environment, never on the command line."""
    conninfo = (f"host={host} port={c.port} dbname={database or role} user={role} sslmode={sslmode} "
                f"sslrootcert={ca_file or c.ca_file}")
    if hostaddr:
        conninfo += f" hostaddr={hostaddr}"
    env = {**os.environ, "PGPASSWORD": c.passwords[role], "PGCONNECT_TIMEOUT": "10"}
    env.pop("PGSSLMODE", None)
    return subprocess.run(["psql", "-X", "-A", "-t", "-d", conninfo, "-c",
                           "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                          capture_output=True, text=True, timeout=30, env=env)


def test_verify_full_with_the_ca_succeeds_over_tls(cluster):
    for role in ("onionstack", "app_guestbook", "app_forum"):
        result = connect(cluster, role)
        assert result.returncode == 0, result.stderr
        ssl, version = result.stdout.strip().split("|")
        assert ssl == "t" and version.startswith("TLSv1.")


def test_the_stable_name_verifies_too(cluster):
    """host = the certificate's DNS name, hostaddr = where it is: libpq checks the name."""
    result = connect(cluster, "app_guestbook", host=DATABASE_HOST_NAME, hostaddr="127.0.0.1")
    assert result.returncode == 0, result.stderr


def test_another_ca_is_refused(cluster, tmp_path):
    other = tmp_path / "other-ca.crt"
    other.write_text(make_pki("127.0.0.1").ca_pem)  # made the same way, a different CA
    result = connect(cluster, "app_guestbook", ca_file=str(other))
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr


def test_a_wrong_host_name_is_refused(cluster):
    """localhost reaches the same server, but the certificate does not name it."""
    result = connect(cluster, "app_guestbook", host="localhost")
    assert result.returncode != 0
    assert 'does not match host name "localhost"' in result.stderr
    # ... while sslmode=require (no verification) would have let it through: the refusal
    # above is verify-full's doing, not a broken server.
    assert connect(cluster, "app_guestbook", host="localhost", sslmode="require").returncode == 0


def test_each_app_role_reaches_only_its_own_database(cluster):
    result = connect(cluster, "app_guestbook", database="app_forum")
    assert result.returncode != 0 and "permission denied for database" in result.stderr
    result = connect(cluster, "app_forum", database="onionstack")
    assert result.returncode != 0 and "permission denied for database" in result.stderr
    # a wrong password fails (the passwords are really per role)
    env_pw = cluster.passwords["app_guestbook"]
    cluster.passwords["app_guestbook"] = cluster.passwords["app_forum"]
    try:
        result = connect(cluster, "app_guestbook")
    finally:
        cluster.passwords["app_guestbook"] = env_pw
    assert result.returncode != 0 and "password authentication failed" in result.stderr


def test_the_server_presents_what_apply_sh_checks_for(cluster):
    """apply.sh's post-restart check (openssl s_client -starttls postgres ... -verify_ip):
    passes against this server with the CA, fails with another CA."""
    def s_client(ca: str) -> int:
        return subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"127.0.0.1:{cluster.port}",
                               "-CAfile", ca, "-verify_ip", "127.0.0.1", "-verify_return_error"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode

    assert s_client(cluster.ca_file) == 0
    other = Path(cluster.root) / "other.crt"
    other.write_text(make_pki("127.0.0.1").ca_pem)
    assert s_client(str(other)) != 0


def test_lab_pki_matches_the_programs_parameters():
    """lab.database makes the CA and certificate with nodes/pki.py's parameters."""
    from nodes import pki

    made = make_pki("10.42.1.10")
    cert = x509.load_pem_x509_certificate(made.cert_pem.encode())
    ca = x509.load_pem_x509_certificate(made.ca_pem.encode())
    assert DATABASE_HOST_NAME == pki.DATABASE_HOST_NAME
    assert pki.KEY_ALGORITHM == "ECDSA" and pki.KEY_CURVE == "P256"
    assert cert.public_key().curve.name == ca.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.DATABASE_HOST_NAME]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.42.1.10"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] and "server_auth" in pki.SERVER_USES
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign and "cert_signing" in pki.CA_USES


# ---------------------------------------------------------------- the program (mocks)
def test_the_stack_issues_the_database_certificate_from_its_ca():
    from nodes.payload import unpack
    from tests.stackmocks import prod_config, run

    result = run(prod_config())
    ip = result.named("database-instance").state["privateIp"]
    ca_res = result.named("database-ca")
    assert ca_res.input("isCaCertificate") is True and set(ca_res.input("allowedUses")) >= {"cert_signing"}
    request = result.named("database-tls-request")
    assert request.input("ipAddresses") == [ip] and request.input("dnsNames") == [DATABASE_HOST_NAME]
    signed = result.named("database-tls-cert")
    assert "server_auth" in signed.input("allowedUses") and signed.input("earlyRenewalHours") > 0
    files = unpack(result.named("database-postgres").input("stdin"))
    cert = x509.load_pem_x509_certificate(files["etc/onionstack/postgres/server.crt"].content.encode())
    ca = x509.load_pem_x509_certificate(files["etc/onionstack/postgres/ca.crt"].content.encode())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == [ip]
    key = files["etc/onionstack/postgres/server.key"]
    assert (key.mode, key.owner) == (0o600, "postgres") and "PRIVATE KEY" in key.content
    assert key.content == result.named("database-tls-key").state["privateKeyPem"]
    # the CA's key stays in the state: never in any payload
    assert result.named("database-ca-key").state["privateKeyPem"] not in str(result.named("database-postgres").inputs)
    assert result.outputs["databaseCaCertificate"] == files["etc/onionstack/postgres/ca.crt"].content
