"""The stack with HTTPS sites, under Pulumi mocks (preview=False, every apply runs): the
certificate made with pulumi-tls for `selfSigned` (names, validity, early renewal), a
provided chain and key from the config, both delivered only in the worker step's secret
stdin (key 0600 root), re-delivered when the certificate changes; the stack outputs
`onionLocation` and `tlsCertificates`; instance addresses only as secrets."""
from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import mockrun
from infra.config import SELF_SIGNED_DAYS, SELF_SIGNED_RENEW_DAYS, onion_address_of
from mockrun import demo_master_key, mock_instance_address, mock_tls_key, reveal
from nodes.payload import digest, unpack
from tests.stackmocks import minimal_config

NEWS = onion_address_of(demo_master_key("news"))
SHOP = onion_address_of(demo_master_key("shop"))
BLOG = onion_address_of(demo_master_key("blog"))


def provided_chain(onion: str) -> tuple[str, str]:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Onion DV CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, onion)]))
            .issuer_name(ca).public_key(key.public_key()).serial_number(9)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(onion), x509.DNSName("*." + onion)]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (leaf.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


CHAIN, KEY = provided_chain(BLOG)


def https_config(sites=None, **overrides):
    sites = sites or [{"name": "news", "domain": "example.com", "https": "selfSigned",
              "validationPaths": [{"path": "/.well-known/pki-validation/a.txt", "content": "tok"}]},
             {"name": "shop", "domain": "shop.example.org", "foreignOnions": {"facebook.com": onion_address_of(
                 demo_master_key("facebook"))}, "dos": {"pow": True, "powQueueRate": 20, "powQueueBurst": 200}},
             {"name": "blog", "domain": "blog.example.net", "https": "provided", "httpRedirect": False,
              "certificateChain": CHAIN}]
    keys = {"blog": KEY} if any(s["name"] == "blog" for s in sites) else {}
    return minimal_config(sites=sites, masterKeys={s["name"]: demo_master_key(s["name"]) for s in sites},
                          tlsKeys=keys, workers=2, **overrides)


@pytest.fixture(scope="module")
def result():
    return mockrun.run_program(https_config())


def worker_files(result, n: int = 1) -> dict:
    return unpack(reveal(result.named(f"worker-{n}-tor-nginx").inputs["stdin"]))


def onion_certificates(result, type_):
    """The resources of `type_` the sites' certificates component holds (the database's CA
    and certificate are pulumi-tls resources too)."""
    (component,) = result.of_type("onionstack:nodes:OnionCertificates")
    return [r for r in result.of_type(type_) if r.parent == component.urn]


def test_self_signed_certificate_names_the_onion_and_renews_early(result):
    (key,) = onion_certificates(result, "tls:index/privateKey:PrivateKey")
    (cert,) = onion_certificates(result, "tls:index/selfSignedCert:SelfSignedCert")
    assert key.name == "news-onion-tls-key" and cert.name == "news-onion-tls-cert"
    assert (key.input("algorithm"), key.input("ecdsaCurve")) == ("ECDSA", "P256")
    assert cert.input("dnsNames") == [NEWS, "*." + NEWS]
    assert cert.input("subject") == {"commonName": NEWS}
    assert cert.input("validityPeriodHours") == SELF_SIGNED_DAYS * 24
    assert cert.input("earlyRenewalHours") == SELF_SIGNED_RENEW_DAYS * 24
    assert sorted(cert.input("allowedUses")) == ["digital_signature", "server_auth"]
    # the key goes into the certificate only as a secret, and stays one in the state
    assert mockrun.is_secret(cert.inputs["privateKeyPem"])
    assert "privateKeyPem" in key.additional_secret_outputs
    (component,) = result.of_type("onionstack:nodes:OnionCertificates")
    assert cert.parent == component.urn and key.parent == component.urn


def test_each_worker_gets_the_chains_and_keys_in_its_secret_stdin(result):
    for n in (1, 2):
        step = result.named(f"worker-{n}-tor-nginx")
        assert mockrun.is_secret(step.inputs["stdin"])
        files = worker_files(result, n)
        news_key, blog_key = files["etc/onionstack/tls/news.key"], files["etc/onionstack/tls/blog.key"]
        assert (news_key.mode, news_key.owner) == (0o600, "root") and (blog_key.mode, blog_key.owner) == (0o600, "root")
        assert news_key.content == mock_tls_key("news-onion-tls-key").strip() + "\n"
        assert blog_key.content == KEY.strip() + "\n"
        assert files["etc/onionstack/tls/blog.crt"].content == CHAIN.strip() + "\n"
        leaf = x509.load_pem_x509_certificate(files["etc/onionstack/tls/news.crt"].content.encode())
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == [NEWS, "*." + NEWS]
        assert "etc/onionstack/tls/shop.key" not in files  # shop serves plain HTTP
        # the rendered files carry the sites' settings
        assert "listen unix:/run/onionstack/news.tor1.443.sock ssl http2 proxy_protocol;" in \
            files["etc/onionstack/nginx/sites/news.conf"].content
        assert "HiddenServicePoWQueueRate 20\n" in files["etc/onionstack/tor/tor1.torrc"].content
        assert "install_file etc/onionstack/tls/news.key 600 root" in files["usr/local/lib/onionstack/apply.sh"].content


def test_a_new_certificate_re_runs_the_worker_steps(result):
    """The chains' digest is a trigger: a renewed (replaced) certificate changes it."""
    (cert,) = onion_certificates(result, "tls:index/selfSignedCert:SelfSignedCert")
    chains = {"blog": CHAIN, "news": cert.state["certPem"]}
    expected = digest(*[f"{n}\n{chains[n]}" for n in sorted(chains)])
    for n in (1, 2):
        assert result.named(f"worker-{n}-tor-nginx").input("triggers")[3] == expected
    chain, key = provided_chain(NEWS)
    other = mockrun.run_program(minimal_config(sites=[{"name": "news", "domain": "example.com", "https": "provided",
                                                       "certificateChain": chain}], tlsKeys={"news": key}))
    assert other.named("worker-1-tor-nginx").input("triggers")[3] not in (expected, None)


def test_without_https_nothing_changes_for_the_worker(tmp_path):
    plain = mockrun.run_program(minimal_config())
    assert not plain.of_type("onionstack:nodes:OnionCertificates")
    step = plain.named("worker-1-tor-nginx")
    assert not mockrun.is_secret(step.inputs["stdin"]) and len(step.input("triggers")) == 3
    assert "tlsCertificates" not in plain.outputs


def test_onion_location_and_certificate_outputs(result):
    out = result.outputs
    assert out["onionLocation"]["news"] == {
        "header": f"Onion-Location: https://{NEWS}/",
        "meta": f'<meta http-equiv="onion-location" content="https://{NEWS}/" />'}
    assert out["onionLocation"]["shop"]["header"] == f"Onion-Location: http://{SHOP}/"
    assert out["sites"]["blog"]["onionUrl"] == f"https://{BLOG}/" and out["sites"]["blog"]["https"] == "provided"
    tls = out["tlsCertificates"]
    assert tls["news"] == {"mode": "selfSigned", "notAfter": "2027-01-01T00:00:00Z",
                           "renewFrom": "2026-11-02T00:00:00Z"}  # the mock's validity: 365 days from 2026-01-01
    assert tls["blog"]["mode"] == "provided" and set(tls) == {"news", "blog"}
    assert "tlsCertificates" not in result.secret_outputs and "onionLocation" not in result.secret_outputs


def test_instance_addresses_appear_only_as_secrets(result):
    """Every instance address the workers report: in the secret output, and nowhere plain
    (no other output, no resource's plain inputs or state, no command line)."""
    from tests.test_secrets_scan import public_texts

    addresses = {mock_instance_address(f"worker-{n}-tor-nginx", d, s) for n in (1, 2) for d in ("tor1", "tor2")
                 for s in ("news", "shop", "blog")}
    assert result.secret_outputs == {"instanceAddresses", "adminSshPrivateKey"}
    listed = {a.removesuffix(".onion") for w in result.outputs["instanceAddresses"].values() for v in w.values()
              for a in v}
    assert listed == addresses
    # The drain's delete names them on the balancer (a command line is not a log, and it is
    # secret in the state and the diff): every other text is checked.
    secret_commands = {f"{r.name} {k}" for r in result.resources if r.type == "command:remote:Command"
                       for k in ("create", "update", "delete") if mockrun.is_secret(r.inputs.get(k))}
    leaks = [where for where, text in public_texts(result) for a in addresses
             if a.encode() in text and where not in secret_commands]
    assert leaks == []
    for n in (1, 2):
        drain = result.named(f"worker-{n}-drain")
        assert f"worker-{n}-drain delete" in secret_commands
        assert drain.input("logging") == "stderr" and "stdout" in drain.additional_secret_outputs
        triggers = drain.inputs["triggers"]
        assert mockrun.is_secret(triggers) or mockrun.is_secret(triggers[0])
