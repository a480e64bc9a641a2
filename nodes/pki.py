"""The database's TLS: a private CA (pulumi-tls) that issues PostgreSQL's certificate, so that
clients on the workers connect with `sslmode=verify-full` (chain AND host name checked).

    DatabaseCertificates
      database-ca-key       tls.PrivateKey         ECDSA P-256, the CA's key (a secret in the state)
      database-ca           tls.SelfSignedCert     is_ca_certificate, cert_signing + crl_signing,
                                                   CA_VALIDITY_HOURS
      database-tls-key      tls.PrivateKey         ECDSA P-256, PostgreSQL's key
      database-tls-request  tls.CertRequest        CN and SAN: DATABASE_HOST_NAME and the
                                                   database's private IP
      database-tls-cert     tls.LocallySignedCert  signed by the CA, server_auth,
                                                   CERT_VALIDITY_HOURS, renewed by the first
                                                   `pulumi up` in its last CERT_RENEW_HOURS

The CA's key never leaves the Pulumi state. PostgreSQL's key reaches the database only
inside the database step's secret stdin (0600 postgres); the certificates are public: the
database gets its own and the CA's, every worker the CA's.

The parameters are plain constants here so the tests can make a CA and a certificate the
same way with `cryptography` (tests/pgtools.py) and check them against a real PostgreSQL
and a real libpq client.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_tls as tls

# The name the database's certificate carries besides its IP: stable across a replaced
# database instance (new IP) for clients that set `host` to it and `hostaddr` to the IP.
DATABASE_HOST_NAME = "database.onionstack.internal"
KEY_ALGORITHM, KEY_CURVE = "ECDSA", "P256"
CA_VALIDITY_HOURS = 10 * 365 * 24
CA_USES = ("cert_signing", "crl_signing", "digital_signature")
CERT_VALIDITY_HOURS = 2 * 365 * 24
CERT_RENEW_HOURS = 60 * 24
SERVER_USES = ("digital_signature", "key_encipherment", "server_auth")


def ca_common_name(stack: str) -> str:
    return f"onionstack {stack} database CA"


@dataclass(frozen=True)
class DatabaseCertificatesArgs:
    private_ip: pulumi.Input[str]  # the database's address: the certificate's IP SAN
    stack: str  # names the CA


class DatabaseCertificates(pulumi.ComponentResource):
    """Declares `ca_cert_pem` and `cert_pem` (public PEM Outputs) and `key_pem` (secret)."""

    ca_cert_pem: pulumi.Output
    cert_pem: pulumi.Output
    key_pem: pulumi.Output

    def __init__(self, name: str, args: DatabaseCertificatesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:nodes:DatabaseCertificates", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ca_key = tls.PrivateKey("database-ca-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
        ca = tls.SelfSignedCert(
            "database-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=ca_common_name(args.stack),
                                                  organization="onionstack"),
            allowed_uses=list(CA_USES), validity_period_hours=CA_VALIDITY_HOURS, set_subject_key_id=True,
            opts=child)
        key = tls.PrivateKey("database-tls-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
        request = tls.CertRequest(
            "database-tls-request", private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=DATABASE_HOST_NAME, organization="onionstack"),
            dns_names=[DATABASE_HOST_NAME], ip_addresses=[args.private_ip], opts=child)
        cert = tls.LocallySignedCert(
            "database-tls-cert", cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
            allowed_uses=list(SERVER_USES), validity_period_hours=CERT_VALIDITY_HOURS,
            # The first `pulumi up` in the certificate's last CERT_RENEW_HOURS replaces it; the
            # database step's triggers include the certificate, so the new one is installed.
            early_renewal_hours=CERT_RENEW_HOURS, opts=child)
        self.ca_cert_pem = ca.cert_pem
        self.cert_pem = cert.cert_pem
        self.key_pem = pulumi.Output.secret(key.private_key_pem)
        self.register_outputs({"caCertPem": self.ca_cert_pem, "certPem": self.cert_pem})


__all__ = ["CA_USES", "CA_VALIDITY_HOURS", "CERT_RENEW_HOURS", "CERT_VALIDITY_HOURS", "DATABASE_HOST_NAME",
           "DatabaseCertificates", "DatabaseCertificatesArgs", "SERVER_USES", "ca_common_name"]
