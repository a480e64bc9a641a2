"""`onion import-tconf` for what sites serve beyond the mapping: EOTK's TLS settings
(force_https, its certificates, ssl_proof_csv), foreignmap, and Onionspray's per-daemon
DoS and circuit-id settings. Each converted value lands in the stack config the stack's
own parser accepts; each unsupported one is named on stderr with the reason."""
from __future__ import annotations

import datetime
import io
import tempfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from onion import tconf
from onion.__main__ import main as onion_main
from onion.keys import IdentityKey
from onion.tconf import TconfError

FB = "facebookwkhpilnemxj7asaniu7vnjjbiltxjqhye3mhbshg7kx5tfyd"


def run_import(path: Path, *extra: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    stack_file = Path(tempfile.mkdtemp(prefix="tconf-")) / "Pulumi.test.yaml"
    parser = __import__("onion.__main__", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["import-tconf", str(path), "--out", str(stack_file), *extra])
    assert tconf.run(args, out=out, err=err) == 0
    return stack_file.read_text(), err.getvalue()


def sites(text: str) -> list[dict]:
    return yaml.safe_load(text)["config"]["onionstack:sites"]


def write(tmp_path: Path, body: str, key: IdentityKey | None = None) -> Path:
    """A .tconf with one hardmap for `key` (its key in secrets.d beside it) after `body`."""
    key = key or IdentityKey.generate()
    secrets = tmp_path / "secrets.d"
    secrets.mkdir(exist_ok=True)
    (secrets / f"{key.address}.v3sec.key").write_bytes(key.to_tor_secret_key())
    path = tmp_path / "site.tconf"
    path.write_text(body + f"set project news\nhardmap {key.address} example.com\n")
    return path


# ---------------------------------------------------------------- Onionspray DoS settings
def test_onionspray_dos_settings_become_every_sites_dos(tmp_path):
    text, err = run_import(write(tmp_path, """set tor_pow_enabled 1
set tor_pow_queue_rate 40
set tor_pow_queue_burst 400
set tor_intro_dos_defense 1
set tor_intro_dos_rate_per_sec 10
set tor_max_streams 20
set tor_max_streams_close_circuit 0
"""))
    assert sites(text)[0]["dos"] == {"pow": True, "powQueueRate": 40, "powQueueBurst": 400, "introDefense": True,
                                     "introRate": 10, "introBurst": 200, "maxStreams": 20,
                                     "maxStreamsCloseCircuit": False}
    for name, key in (("tor_pow_enabled", "pow"), ("tor_intro_dos_rate_per_sec", "introRate"),
                      ("tor_max_streams", "maxStreams")):
        assert f"set {name} " in err and f"converted to dos.{key} of every site" in err
    assert "not an EOTK or Onionspray setting" not in err


@pytest.mark.parametrize("body,message", [
    ("set tor_intro_dos_rate_per_sec 300\n", r"dos.introRate 300 is above dos.introBurst 200 \(tor's default"),
    ("set tor_pow_queue_rate 10\nset tor_pow_queue_burst 5\n", r"dos.powQueueRate 10 is above dos.powQueueBurst 5"),
    ("set tor_pow_enabled maybe\n", r"site.tconf:1: set tor_pow_enabled 'maybe' must be 0 or 1"),
    ("set tor_max_streams 70000\n", r"set tor_max_streams 70000 is out of range: onionstack's sites\[\].dos.maxStreams"),
])
def test_onionspray_values_tor_would_refuse_stop_the_import(tmp_path, body, message):
    with pytest.raises(TconfError, match=message):
        run_import(write(tmp_path, body))


def test_unsupported_settings_are_named_with_their_reason(tmp_path):
    text, err = run_import(write(tmp_path, """set tor_single_onion 1
set nginx_x_onion_circuit_id 1
set tor_export_circuit_id none
set x_from_onion_value 1
set hardcoded_endpoint_csv ^/robots\\\\.txt$,nope
set cert_common_name example.onion
set nginx_proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt
"""))
    for line, name, reason in (
            (1, "tor_single_onion", "make each worker's network location learnable"),
            (2, "nginx_x_onion_circuit_id", "would let it link that reader's requests"),
            (4, "x_from_onion_value", "onionstack adds no request header upstream"),
            (5, "hardcoded_endpoint_csv", "validationPaths take exact paths"),
            (6, "cert_common_name", "names its own onion and *.onion"),
            (7, "nginx_proxy_ssl_trusted_certificate", "always verified against the system CA bundle")):
        note = next(n for n in err.splitlines() if f"site.tconf:{line}: set {name}: not supported: " in n)
        assert reason in note and note.endswith("; ignored"), name
    assert ("site.tconf:3: set tor_export_circuit_id none: not supported: onionstack always exports haproxy "
            "circuit ids to nginx") in err
    _, err = run_import(write(tmp_path, "set tor_export_circuit_id haproxy\n"))
    assert "set tor_export_circuit_id haproxy: onionstack always exports haproxy circuit ids" in err
    assert "not supported" not in err


# ---------------------------------------------------------------- TLS
def test_force_https_0_keeps_plain_http_beside_https(tmp_path):
    text, err = run_import(write(tmp_path, "set force_https 0\n"))
    assert sites(text)[0]["https"] == "selfSigned" and sites(text)[0]["httpRedirect"] is False
    assert "set force_https 0: every site serves HTTPS" in err and "keeps serving plain HTTP" in err


def test_ssl_proof_csv_becomes_validation_paths(tmp_path):
    text, err = run_import(write(tmp_path, """set ssl_proof_csv \\
    /.well-known/pki-validation/key1,value1 \\
    /.well-known/pki-validation/key2,VALUE-2 \\
    /bad"path,x
"""))
    assert sites(text)[0]["validationPaths"] == [
        {"path": "/.well-known/pki-validation/key1", "content": "value1"},
        {"path": "/.well-known/pki-validation/key2", "content": "VALUE-2"}]
    assert 'set ssl_proof_csv /bad"path,x: not supported' in err
    assert "converted to validationPaths of every site" in err


def onion_certificate(directory: Path, onion: str, *, self_signed: bool, names: list[str] | None = None) -> Path:
    """EOTK's files for an onion: <ssl_dir>/<first 20>-v3.cert and .pem."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{onion}.onion")])
    ca_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HARICA DV TLS ECC")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(3).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=300))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (names or [f"{onion}.onion",
                                                                                            f"*.{onion}.onion"])]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    stem = directory / f"{onion[:20]}-v3"
    stem.with_suffix(".cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    stem.with_suffix(".pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return stem.with_suffix(".pem")


def test_a_ca_issued_onion_certificate_is_carried_over_with_its_key_as_a_secret(tmp_path, capsys):
    key = IdentityKey.generate()
    ssl_dir = tmp_path / "projects.d" / "news.d" / "ssl.d"         # EOTK's default place for project news
    pem = onion_certificate(ssl_dir, key.address, self_signed=False)
    text, err = run_import(write(tmp_path, "", key))
    site = sites(text)[0]
    assert site["https"] == "provided"
    assert site["certificateChain"] == pem.with_suffix(".cert").read_text()
    assert f"pulumi config set --secret --path tlsKeys.example-com < {pem}" in err
    secret = "".join(pem.read_text().splitlines()[1:-1])
    assert secret[:40] not in text + err
    # what the stack's parser makes of it, with the key the printed command stores
    from infra.config import parse_config
    from mockrun import demo_ssh_key_pair
    raw = {k.split(":", 1)[1]: v for k, v in yaml.safe_load(text)["config"].items()}
    raw["masterKeys"] = {"example-com": key.to_config_string()}
    raw["tlsKeys"] = {"example-com": pem.read_text()}
    raw["sshPublicKey"], raw["sshPrivateKey"] = demo_ssh_key_pair()
    raw["adminCidrs"] = ["198.51.100.7/32"]
    cfg = parse_config(raw)
    assert cfg.sites[0].https == "provided" and cfg.sites[0].tls_key.reveal() == pem.read_text()


@pytest.mark.parametrize("case", ["self-signed", "other-name", "no-key"])
def test_other_eotk_certificates_are_not_carried_over(tmp_path, case):
    key = IdentityKey.generate()
    ssl_dir = tmp_path / "certs"
    pem = onion_certificate(ssl_dir, key.address, self_signed=case == "self-signed",
                            names=["www.example.com"] if case == "other-name" else None)
    if case == "no-key":
        pem.unlink()
    text, err = run_import(write(tmp_path, "", key), "--ssl-dir", str(ssl_dir))
    assert sites(text)[0]["https"] == "selfSigned" and "certificateChain" not in sites(text)[0]
    reason = {"self-signed": "self-signed or from a local CA", "other-name": f"it does not name {key.hostname}",
              "no-key": "is not beside it"}[case]
    assert "not carried over" in err and reason in err and "tlsKeys" not in err


def test_foreignmap_overlapping_a_site_is_refused(tmp_path):
    text, err = run_import(write(tmp_path, f"foreignmap {FB} cdn.example.com\n"))
    assert "foreignOnions" not in sites(text)[0]
    assert f"foreignmap {FB}.onion cdn.example.com: not supported: site example-com serves example.com" in err


def test_print_commands_carries_the_tls_key_pipeline(tmp_path):
    key = IdentityKey.generate()
    pem = onion_certificate(tmp_path / "projects.d" / "news.d" / "ssl.d", key.address, self_signed=False)
    out, err = io.StringIO(), io.StringIO()
    parser = __import__("onion.__main__", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["import-tconf", str(write(tmp_path, "", key)), "--stack", "prod", "--print-commands"])
    assert tconf.run(args, out=out, err=err) == 0
    assert f"pulumi config set --stack prod --secret --path tlsKeys.example-com < {pem}" in out.getvalue()
    assert "PRIVATE KEY" not in out.getvalue() + err.getvalue()
