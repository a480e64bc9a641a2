"""The onion sites' TLS certificates (sites[].https): made here for `selfSigned`, taken
from the config for `provided`.

    OnionCertificates
      <site>-onion-tls-key   tls.PrivateKey      ECDSA P-256 (selfSigned sites)
      <site>-onion-tls-cert  tls.SelfSignedCert  <onion> and *.<onion>, SELF_SIGNED_DAYS,
                                                 replaced by the first `pulumi up` in its
                                                 last SELF_SIGNED_RENEW_DAYS (early renewal)

pulumi-tls keeps the private key in the state as a secret (`private_key_pem`); a provided
key is the `tlsKeys.<site>` config secret. Either reaches a worker only inside the worker
step's secret stdin (nodes/steps.py WorkerSetup, render.worker_secret_files).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_tls as tls

from infra.config import SELF_SIGNED_DAYS, SELF_SIGNED_RENEW_DAYS, Site
from nodes.payload import digest


@dataclass(frozen=True)
class OnionCertificatesArgs:
    sites: tuple[Site, ...]  # every configured site; those with https off are skipped


def _not_after(chain_pem: str) -> str:
    """The leaf's notAfter as RFC 3339 (UTC), from a PEM chain."""
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    return leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _renew_from(not_after: Optional[str]) -> Optional[str]:
    if not not_after:
        return None
    end = datetime.datetime.strptime(not_after[:19], "%Y-%m-%dT%H:%M:%S")
    return (end - datetime.timedelta(days=SELF_SIGNED_RENEW_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")


class OnionCertificates(pulumi.ComponentResource):
    """Declares, per HTTPS site: `chains` (public PEM Output), `keys` (secret PEM Output),
    and `info` ({mode, notAfter, renewFrom} for the stack output `tlsCertificates`).
    `files()` is what WorkerSetup stages; `chains_digest()` what its triggers watch."""

    chains: dict[str, pulumi.Output]
    keys: dict[str, pulumi.Output]
    info: dict[str, pulumi.Output]

    def __init__(self, name: str, args: OnionCertificatesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("onionstack:nodes:OnionCertificates", name, None, opts)
        self.chains, self.keys, self.info = {}, {}, {}
        child = pulumi.ResourceOptions(parent=self)
        for site in args.sites:
            if site.https == "selfSigned":
                key = tls.PrivateKey(f"{site.name}-onion-tls-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
                cert = tls.SelfSignedCert(
                    f"{site.name}-onion-tls-cert",
                    private_key_pem=key.private_key_pem,
                    subject=tls.SelfSignedCertSubjectArgs(common_name=site.onion_address),
                    dns_names=[site.onion_address, "*." + site.onion_address],
                    allowed_uses=["digital_signature", "server_auth"],
                    validity_period_hours=SELF_SIGNED_DAYS * 24,
                    # The first `pulumi up` in the certificate's last days replaces it
                    # (pulumi-tls marks it ready_for_renewal), and the worker steps, whose
                    # triggers include the chain's digest, deliver the new one.
                    early_renewal_hours=SELF_SIGNED_RENEW_DAYS * 24,
                    opts=child)
                self.chains[site.name] = cert.cert_pem
                self.keys[site.name] = pulumi.Output.secret(key.private_key_pem)
                self.info[site.name] = cert.validity_end_time.apply(
                    lambda end: {"mode": "selfSigned", "notAfter": end, "renewFrom": _renew_from(end)})
            elif site.https == "provided":
                self.chains[site.name] = pulumi.Output.from_input(site.certificate_chain)
                self.keys[site.name] = site.tls_key.output()  # a secret
                self.info[site.name] = pulumi.Output.from_input(
                    {"mode": "provided", "notAfter": _not_after(site.certificate_chain)})
        self.register_outputs({"chains": self.chains, "tlsCertificates": self.info})

    def files(self) -> pulumi.Output:
        """Secret Output of {site: (chain PEM, key PEM)}; None while any is unknown (mocks
        that do not emulate pulumi-tls)."""
        names = sorted(self.chains)
        pairs = pulumi.Output.all(*[pulumi.Output.all(self.chains[n], self.keys[n]) for n in names])
        return pulumi.Output.secret(pairs.apply(
            lambda ps: None if any(c is None or k is None for c, k in ps)
            else {n: (c, k) for n, (c, k) in zip(names, ps)}))

    def chains_digest(self) -> pulumi.Output:
        """Public: changes when any certificate does (a renewal re-runs the worker steps)."""
        names = sorted(self.chains)
        return pulumi.Output.all(*[self.chains[n] for n in names]).apply(
            lambda cs: digest(*[f"{n}\n{c or ''}" for n, c in zip(names, cs)]))


__all__ = ["OnionCertificates", "OnionCertificatesArgs"]
