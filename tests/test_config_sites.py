"""The per-site keys of docs/sites.md (https, httpRedirect, certificateChain + tlsKeys,
validationPaths, foreignOnions, dos): parsed once into frozen dataclasses; each bad value
stops with one error naming the key and the fix; a private key is never echoed."""
from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra.config import DEFAULT_DOS, ConfigError, SiteDos, ValidationPath, onion_address_of, parse_config
from mockrun import demo_master_key
from nodes import render
from tests.conftest_tools import onion_address_for
from tests.stackmocks import minimal_config

NEWS_ONION = onion_address_of(demo_master_key("news"))
SHOP_ONION = onion_address_of(demo_master_key("shop"))
FB = onion_address_for("facebook") + ".onion"


def site(**extra) -> dict:
    return {"name": "news", "domain": "example.com", **extra}


def parsed(*sites: dict, **overrides):
    keys = {s["name"]: demo_master_key(s["name"]) for s in sites}
    return parse_config(minimal_config(sites=list(sites), masterKeys=keys, **overrides))


def error_of(*sites: dict, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        parsed(*sites, **overrides)
    return str(info.value)


def certificate(names: list[str], *, days: int = 90, key=None, expired: bool = False) -> tuple[str, str]:
    """A CA-issued-looking chain (leaf + issuer) and the leaf's key, as PEM text."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Onion CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer).public_key(issuer_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(issuer_key, hashes.SHA256()))
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = now - datetime.timedelta(days=100 if expired else 1)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(2)
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem(leaf) + pem(ca), key_pem


def test_defaults_are_plain_http_and_the_renderers_dos_defaults():
    s = parsed(site()).sites[0]
    assert (s.https, s.http_redirect, s.certificate_chain, s.tls_key) == ("off", True, None, None)
    assert s.validation_paths == () and s.foreign_onions == ()
    assert s.onion_url == f"http://{NEWS_ONION}/"
    # one set of defaults: the config's SiteDos and the renderer's agree field by field
    assert dataclasses.asdict(s.dos) == dataclasses.asdict(render.SiteDos())
    assert dataclasses.asdict(SiteDos()) == dataclasses.asdict(render.SiteDos())
    assert set(DEFAULT_DOS) == {"pow", "powQueueRate", "powQueueBurst", "introDefense", "introRate",
                                "introBurst", "maxStreams", "maxStreamsCloseCircuit"}


def test_every_site_key_parses():
    s = parsed(site(https="selfSigned", httpRedirect=False,
                    validationPaths=[{"path": "/.well-known/pki-validation/A.txt", "content": "tok\nca.example"},
                                     {"path": "/.well-known/acme-challenge/"}],
                    foreignOnions={"Facebook.com": FB.upper()},
                    dos={"pow": True, "powQueueRate": 20, "powQueueBurst": 100, "introRate": 5,
                         "introBurst": 15, "maxStreams": 8})).sites[0]
    assert (s.https, s.http_redirect, s.onion_url) == ("selfSigned", False, f"https://{NEWS_ONION}/")
    assert s.validation_paths == (ValidationPath("/.well-known/pki-validation/A.txt", "tok\nca.example"),
                                  ValidationPath("/.well-known/acme-challenge/"))
    assert s.foreign_onions == (("facebook.com", FB),)
    assert s.dos == SiteDos(pow=True, pow_queue_rate=20, pow_queue_burst=100, intro_rate=5, intro_burst=15,
                            max_streams=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.https = "off"


@pytest.mark.parametrize("extra,expected", [
    (dict(https="on"), 'onionstack:sites[0].https = "on": must be off (plain HTTP), selfSigned'),
    (dict(https=True), "onionstack:sites[0].https = true: must be off"),
    (dict(httpRedirect=False), "onionstack:sites[0].httpRedirect = false: applies only to a site with https"),
    (dict(https="selfSigned", httpRedirect="no"), 'onionstack:sites[0].httpRedirect = "no": must be true or false'),
    (dict(https="selfSigned", certificateChain="-----BEGIN CERTIFICATE-----"),
     "onionstack:sites[0].certificateChain = \"(PEM)\": is used only with https: provided"),
    (dict(validationPaths=[{"path": "well-known"}]), 'onionstack:sites[0].validationPaths[0].path = "well-known"'),
    (dict(validationPaths=[{"path": "/a/../b"}]), 'onionstack:sites[0].validationPaths[0].path = "/a/../b"'),
    (dict(validationPaths=[{"path": "/a", "content": "x$host"}]),
     'onionstack:sites[0].validationPaths[0].content = "x$host": must be 1..4096 printable ASCII'),
    (dict(validationPaths=[{"path": "/a"}, {"path": "/a"}]), 'onionstack:sites[0].validationPaths[1].path = "/a": is listed twice'),
    (dict(validationPaths=[{"path": "/a", "file": "x"}]), "onionstack:sites[0].validationPaths[0].file"),
    (dict(foreignOnions=["facebook.com"]), "onionstack:sites[0].foreignOnions = [\"facebook.com\"]: must be an object"),
    (dict(foreignOnions={"facebook.com": "facebook.onion"}),
     'onionstack:sites[0].foreignOnions["facebook.com"] = "facebook.onion": must be a v3 onion address'),
    (dict(foreignOnions={"cdn.example.com": FB}),
     'onionstack:sites[0].foreignOnions["cdn.example.com"] = "cdn.example.com": overlaps this site\'s own domain'),
    (dict(foreignOnions={"facebook.com": FB, "m.facebook.com": onion_address_for("m")}),
     'onionstack:sites[0].foreignOnions["m.facebook.com"] = "m.facebook.com": is under facebook.com'),
    (dict(dos={"introRate": 300}), "onionstack:sites[0].dos.introRate = 300: must not exceed sites[0].dos.introBurst (200)"),
    (dict(dos={"pow": True, "powQueueRate": 10, "powQueueBurst": 5}), "onionstack:sites[0].dos.powQueueRate = 10: must not exceed"),
    (dict(dos={"maxStreams": 70000}), "onionstack:sites[0].dos.maxStreams = 70000: must be an integer from 0 to 65535"),
    (dict(dos={"introRate": 0}), "onionstack:sites[0].dos.introRate = 0: must be an integer from 1"),
    (dict(dos={"pow": "yes"}), 'onionstack:sites[0].dos.pow = "yes": must be true or false'),
    (dict(dos={"powRate": 1}), "onionstack:sites[0].dos.powRate = 1: unknown key; sites[0].dos accepts pow, powQueueRate"),
])
def test_site_key_errors_name_the_key_and_the_fix(extra, expected):
    assert error_of(site(**extra)).startswith(expected)


def test_foreign_onions_may_not_shadow_another_site():
    shop = {"name": "shop", "domain": "shop.example.org"}
    assert error_of(site(foreignOnions={"example.org": FB}), shop).startswith(
        'onionstack:sites[0].foreignOnions["example.org"] = "example.org": site \'shop\' serves shop.example.org itself')
    assert error_of(site(foreignOnions={"other.net": SHOP_ONION}), shop).startswith(
        f'onionstack:sites[0].foreignOnions["other.net"] = "{SHOP_ONION}": is the address of site \'shop\'')


# ---------------------------------------------------------------- provided certificates
def test_provided_certificate_and_key_parse_and_stay_secret():
    chain, key = certificate([NEWS_ONION, "*." + NEWS_ONION])
    cfg = parsed(site(https="provided", certificateChain=chain), tlsKeys={"news": key})
    s = cfg.sites[0]
    assert s.https == "provided" and s.certificate_chain == chain.strip() + "\n"
    assert s.tls_key.reveal() == key
    assert "PRIVATE KEY" not in repr(cfg) and "PRIVATE KEY" not in str(s.tls_key)


def test_provided_without_a_key_says_how_to_store_it():
    chain, _ = certificate([NEWS_ONION])
    msg = error_of(site(https="provided", certificateChain=chain))
    assert msg.startswith("onionstack:tlsKeys.news is missing: site 'news' has https: provided but no private key")
    assert "`pulumi config set --secret --path 'tlsKeys.news' < news.key`" in msg


@pytest.mark.parametrize("case", ["other-key", "garbage", "passphrase"])
def test_a_wrong_key_is_refused_without_echoing_it(case):
    chain, right = certificate([NEWS_ONION])
    if case == "other-key":
        _, bad = certificate([NEWS_ONION])
        reason = "it does not belong to the certificate"
    elif case == "garbage":
        bad = "-----BEGIN PRIVATE KEY-----\nnotakeyatall\n-----END PRIVATE KEY-----\n"
        reason = "it is not a PEM private key"
    else:
        bad = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass")).decode()
        reason = "it is passphrase-protected"
    msg = error_of(site(https="provided", certificateChain=chain), tlsKeys={"news": bad})
    assert msg.startswith("onionstack:tlsKeys.news = [secret]: must be the PEM private key of certificateChain's leaf")
    assert reason in msg
    body = "".join(bad.splitlines()[1:-1])
    assert all(body[i:i + 8] not in msg for i in range(0, max(1, len(body) - 8)))


def test_a_chain_for_another_name_or_expired_is_refused():
    chain, key = certificate(["www.example.com"])
    assert error_of(site(https="provided", certificateChain=chain), tlsKeys={"news": key}).startswith(
        f'onionstack:sites[0].certificateChain = "(PEM)": its first certificate does not name {NEWS_ONION} '
        "(it names www.example.com)")
    chain, key = certificate([NEWS_ONION], days=30, expired=True)
    assert "its first certificate expired on" in error_of(site(https="provided", certificateChain=chain),
                                                          tlsKeys={"news": key})
    assert error_of(site(https="provided", certificateChain="not pem"), tlsKeys={"news": key}).startswith(
        'onionstack:sites[0].certificateChain = "(not PEM)": must be the PEM certificate chain')


def test_tls_keys_for_sites_without_provided_https_are_refused():
    _, key = certificate([NEWS_ONION])
    assert error_of(site(), tlsKeys={"news": key}).startswith(
        "onionstack:tlsKeys.news = [secret]: is used only with https: provided")
    assert error_of(site(), tlsKeys={"blog": key}).startswith(
        "onionstack:tlsKeys.blog = [secret]: names no site with https: provided")
    assert error_of(site(), tlsKeys="x").startswith("onionstack:tlsKeys = [secret]: must be an object")


def test_tls_keys_plain_text_is_refused_but_the_empty_default_is_not():
    """The CLI passes Pulumi.yaml's `tlsKeys: {}` default in plain text: nothing secret in
    it. A key set without --secret is refused per site, like masterKeys."""
    from infra.config import plain_secret_paths

    never_secret = lambda key: False  # noqa: E731
    assert plain_secret_paths({"tlsKeys": {}}, never_secret, None) == []
    _, key = certificate([NEWS_ONION])
    assert plain_secret_paths({"tlsKeys": {"news": key, "blog": key}}, never_secret, None) == \
        ["tlsKeys.blog", "tlsKeys.news"]
    stored = {"onionstack:tlsKeys": {"news": {"secure": "v1:abc"}, "blog": key}}
    assert plain_secret_paths({"tlsKeys": {"news": "x", "blog": key}}, lambda k: True, stored) == ["tlsKeys.blog"]
