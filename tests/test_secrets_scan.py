"""No key material outside secrets: the whole program under mocks, every non-secret input
and output of every resource, every stack output and every command line (create, update,
delete) is scanned for the master keys (config string, base64, the expanded 64 bytes and
their halves in hex/base64/base32, tor's key file), the SSH private key and the database
password. Base64 blobs (the steps' tar payloads, the package copy) are decoded, gunzipped
and unpacked, and their files scanned as raw bytes too.

The same scanner must FIND every secret in the secret parts (the balancer's stdin, the
connection, the database step's stdin): otherwise "nothing found" would prove nothing."""
from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import re
import tarfile
from typing import Any, Iterator

import pulumi
import pytest

import mockrun
from onion.keys import IdentityKey
from mockrun import mock_tls_key
from tests.stackmocks import minimal_config, mock_password, prod_config, run
from tests.test_bootstrap_graph import three_site_config
from tests.test_stack_apps import mixed_config
from tests.test_stack_sites import https_config

B64_BLOB = re.compile(r"[A-Za-z0-9+/=\s]{200,}")


# ---------------------------------------------------------------- what counts as key material
def _encodings(raw: bytes) -> set[bytes]:
    """Text forms a byte string could be leaked in."""
    forms = {
        raw.hex().encode(), raw.hex().upper().encode(),
        base64.b64encode(raw), base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="),
        base64.b32encode(raw).rstrip(b"="), base64.b32encode(raw).rstrip(b"=").lower(),
    }
    return {f for f in forms if len(f) >= 16}


def needles(config: dict) -> dict[str, set[bytes]]:
    """name -> byte patterns that must never appear outside a secret."""
    get = lambda k: config.get(f"onionstack:{k}", config.get(k))  # noqa: E731
    out: dict[str, set[bytes]] = {}
    for site, text in get("masterKeys").items():
        key = IdentityKey.from_config_string(text)
        expanded = base64.b64decode(text.split(":", 1)[1])
        pats = {text.encode(), text.split(":", 1)[1].encode(), expanded, expanded[:32], expanded[32:],
                key.to_tor_secret_key()}
        for raw in (expanded, expanded[:32], expanded[32:], key.to_tor_secret_key()):
            pats |= _encodings(raw)
        out[f"masterKeys.{site}"] = pats
    # The admin key: the config's, or the one the stack made (pulumi-tls, mocked).
    pem = get("sshPrivateKey") or mockrun.mock_host_key("admin-ssh-key")["privateKeyOpenssh"]
    body = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    ssh = {pem.encode(), "".join(body).encode()} | {line.encode() for line in body if len(line) >= 20}
    ssh |= {base64.b64decode("".join(body))}  # the binary openssh-key-v1 blob
    out["sshPrivateKey"] = ssh
    password = mock_password("database-password")
    out["databasePassword"] = {password.encode(), base64.b64encode(password.encode())}
    # TLS keys of HTTPS sites: provided ones from the config, selfSigned ones as pulumi-tls
    # (mocked) made them; the PEM, its base64 body lines and the DER.
    tls_keys = dict(get("tlsKeys") or {})
    for s in get("sites"):
        if s.get("https") == "selfSigned":
            tls_keys[s["name"]] = mock_tls_key(f"{s['name']}-onion-tls-key")
    for name, pem in tls_keys.items():
        body = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
        der = base64.b64decode("".join(body))
        out[f"tlsKeys.{name}"] = {pem.strip().encode(), "".join(body).encode(), der} | \
            {line.encode() for line in body if len(line) >= 20} | _encodings(der)
    if _database_enabled(config):
        # PostgreSQL's TLS key (in the database step's secret stdin) and the database CA's key
        # (in the Pulumi state only: it must appear nowhere, secret or not).
        out["databaseTlsKey"] = _pem_key_forms(mock_tls_key("database-tls-key"))
        out["databaseCaKey"] = _pem_key_forms(mock_tls_key("database-ca-key"))
    for site in get("sites"):
        if site.get("kind") == "app":  # each app site's database password
            app_pw = mock_password(f"app-{site['name']}-database-password")
            out[f"appPassword.{site['name']}"] = {app_pw.encode(), base64.b64encode(app_pw.encode())}
    return out


# Secrets that no resource input carries at all (kept in the state by their provider).
NOWHERE = {"databaseCaKey"}


def _database_enabled(config: dict) -> bool:
    db = config.get("onionstack:database", config.get("database")) or {}
    return db.get("enabled", True) is not False


def _pem_key_forms(pem: str) -> set[bytes]:
    """A PEM private key: the whole text, its base64 body, the DER and the private scalar
    (raw and encoded). Not each body line: PKCS#8 EC keys carry the public point too, which
    the certificates rightly show."""
    from cryptography.hazmat.primitives import serialization

    body = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    der = base64.b64decode("".join(body))
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return {pem.encode(), "".join(body).encode(), der, scalar} | _encodings(scalar)


# ---------------------------------------------------------------- what is public


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, pulumi.StringAsset):
        yield value.text
    elif value is not None:
        yield str(value)


def _blobs(text: str) -> Iterator[bytes]:
    """Raw bytes hidden in base64 runs of `text`, gunzipped and untarred where possible."""
    for match in B64_BLOB.finditer(text):
        try:
            raw = base64.b64decode("".join(match.group(0).split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        yield raw
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            continue
        yield raw
        try:
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        yield member.name.encode()
                        yield tar.extractfile(member).read()
        except tarfile.TarError:
            pass


def public_texts(result) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) for every non-secret input/output, stack output and command line."""
    for r in result.resources:
        for key, value in r.inputs.items():
            for s in _strings(mockrun.redact(value)):
                yield f"{r.name} input {key}", s.encode()
        secret_inputs = {k for k, v in r.inputs.items() if mockrun.is_secret(v)}
        for key, value in r.state.items():
            # An output is secret if its input was (the engine carries secretness from an
            # input to the output of the same name) or the resource declares it secret.
            if key in secret_inputs or key in getattr(r, "additional_secret_outputs", ()):
                continue
            for s in _strings(mockrun.redact(value)):
                yield f"{r.name} output {key}", s.encode()
        if r.type == "command:remote:Command":
            # Command lines are scanned even if something marked them secret.
            for key in ("create", "update", "delete"):
                text = r.input(key)
                if text:
                    yield f"{r.name} {key}", text.encode()
    for name, value in result.outputs.items():
        if name not in result.secret_outputs:
            yield f"stack output {name}", json.dumps(value, default=str).encode()


def scan(texts: Iterator[tuple[str, bytes]], patterns: dict[str, set[bytes]]) -> list[str]:
    found = []
    for where, data in texts:
        for chunk in [data, *(_blobs(data.decode("utf-8", "replace")))]:
            for name, pats in patterns.items():
                if any(p in chunk for p in pats):
                    found.append(f"{name} in {where}")
    return found


CONFIGS = {"prod": prod_config, "three-sites": three_site_config, "minimal": lambda: minimal_config(workers=1),
           "https": https_config, "apps": lambda: mixed_config(),
           "generated-admin-key": lambda: minimal_config(sshPublicKey="", sshPrivateKey="")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_key_material_outside_secrets(name):
    config = CONFIGS[name]()
    result = run(config)
    leaks = scan(public_texts(result), needles(config))
    assert leaks == []
    # The scan did look at the payloads: the worker payload (public) was unpacked.
    worker = result.named("worker-1-tor-nginx").input("stdin")
    assert any(b"ob_config" in blob for blob in _blobs(worker))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_scanner_finds_every_secret_where_it_is_meant_to_be(name):
    """Revealed secret inputs DO contain each secret: the scanner is able to see them."""
    config = CONFIGS[name]()
    result = run(config)
    pats = needles(config)
    core = result.named("balancer-core")
    secret_texts = [("balancer-core stdin", core.input("stdin").encode()),
                    ("connection", json.dumps(core.input("connection")).encode()),
                    ("database stdin", result.named("database-postgres").input("stdin").encode()),
                    ("worker stdin", result.named("worker-1-tor-nginx").input("stdin").encode())]
    if any(r.name == "worker-1-apps" for r in result.resources):  # app sites' environment (DATABASE_URL)
        secret_texts.append(("worker apps stdin", result.named("worker-1-apps").input("stdin").encode()))
    found = {f.split(" in ")[0] for f in scan(iter(secret_texts), pats)}
    assert found == set(pats) - NOWHERE
    assert "databaseTlsKey" in found or not _database_enabled(config)


def test_secret_config_reaches_resources_only_as_secrets():
    result = run(prod_config())
    core = result.named("balancer-core")
    assert mockrun.is_secret(core.inputs["stdin"]) and mockrun.is_secret(core.inputs["connection"])
    password = result.named("database-password")
    assert "result" in password.additional_secret_outputs  # pulumi-random keeps it secret in state
    assert mockrun.is_secret(result.named("database-postgres").inputs["stdin"])
    # The only secret outputs: the instance addresses, operator-only (docs/sites.md), and
    # the admin SSH key's private half.
    assert result.secret_outputs == {"instanceAddresses", "adminSshPrivateKey"}


@pytest.mark.parametrize("leak", ["hex", "tor-file-in-tar", "ssh-line"])
def test_a_leak_is_caught(leak):
    """A program that leaks one secret in one of the forms the scanner knows is flagged."""
    import pulumi_aws as aws

    from infra.config import load_config
    from nodes.payload import BinaryFile, payload

    config = minimal_config()

    def program():
        cfg = load_config()
        key = IdentityKey.from_config_string(cfg.sites[0].master_key.reveal())
        if leak == "hex":
            value = base64.b64decode(cfg.sites[0].master_key.reveal().split(":", 1)[1]).hex()
        elif leak == "tor-file-in-tar":
            value = payload({"k": BinaryFile(key.to_tor_secret_key())})
        else:
            value = "prefix " + cfg.ssh_private_key.reveal().splitlines()[2] + " suffix"
        aws.sns.Topic("leaky", display_name=value)

    result = mockrun.run_program(config, program=program)
    leaks = scan(public_texts(result), needles(config))
    assert leaks and all("leaky input displayName" in f or "leaky output displayName" in f for f in leaks)
