"""The Tor Project's apt key, pinned by fingerprint: only that key reaches the keyring apt
trusts for deb.torproject.org (install-packages.sh's pin_tor_project_key).

The function is taken from the rendered script and run for real with real gpg on key
files made here from throwaway keys (no network), with the pinned fingerprint set to the
throwaway "genuine" key's. What apt would then accept is checked with gpgv, the verifier
apt runs with a `signed-by` keyring.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.test_templates_roles import all_roles

TOR_PROJECT_FPR = "A3C4F0F979CAA22CDBA8F512EE8CBC9E886DDD89"


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args], input=stdin,
                          capture_output=True, timeout=60, check=True)


def primaries(keyring: Path) -> list[str]:
    """The primary keys' fingerprints in a keyring file (subkeys left out)."""
    with tempfile.TemporaryDirectory() as home:
        out = gpg(Path(home), "--with-colons", "--show-keys", str(keyring)).stdout.decode()
    lines = [line.split(":") for line in out.splitlines()]
    return [b[9] for a, b in zip(lines, lines[1:]) if a[0] == "pub" and b[0] == "fpr"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A "genuine" key shaped like the Tor Project's (certify-only primary, signing subkey)
    and an impostor, each exported armored; a file signed by each."""
    base = tmp_path_factory.mktemp("gpg")
    made = {}
    for who in ("genuine", "impostor"):
        home = base / who
        home.mkdir(mode=0o700)
        if who == "genuine":
            gpg(home, "--passphrase", "", "--quick-gen-key", f"{who} <{who}@example.invalid>", "ed25519", "cert", "never")
        else:
            gpg(home, "--passphrase", "", "--quick-gen-key", f"{who} <{who}@example.invalid>", "ed25519", "sign", "never")
        (fpr,) = re.findall(r"^fpr:+([0-9A-F]{40}):", gpg(home, "--with-colons", "--list-keys").stdout.decode(), re.M)
        if who == "genuine":
            gpg(home, "--passphrase", "", "--quick-add-key", fpr, "ed25519", "sign", "never")
        (base / f"{who}.asc").write_bytes(gpg(home, "--armor", "--export", fpr).stdout)
        data = base / f"release-{who}"
        data.write_text(f"Release file signed by {who}\n")
        gpg(home, "--passphrase", "", "--pinentry-mode", "loopback", "--detach-sign", "-o", f"{data}.sig", str(data))
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
        made[who] = {"fpr": fpr, "asc": base / f"{who}.asc", "data": data, "sig": Path(f"{data}.sig")}
    return made


def pin_function() -> str:
    script = all_roles()["worker"]["usr/local/lib/onionstack/install-packages.sh"].content
    assert re.search(rf"^fingerprint={TOR_PROJECT_FPR}$", script, re.M)
    m = re.search(r"^# >>> key pin.*?^# <<< key pin$", script, re.M | re.S)
    assert m, "the key-pin block is in the rendered script"
    return m.group(0)


def run_pin(tmp_path: Path, pinned: str, downloaded: Path) -> tuple[subprocess.CompletedProcess, Path]:
    harness = tmp_path / "pin.sh"
    harness.write_text(f"set -euo pipefail\nfingerprint={pinned}\n{pin_function()}\n"
                       'pin_tor_project_key "$1" "$2"\n')
    keyring = tmp_path / "keyrings" / "deb.torproject.org-keyring.gpg"
    keyring.parent.mkdir()
    proc = subprocess.run(["bash", str(harness), str(downloaded), str(keyring)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    return proc, keyring


def apt_accepts(keyring: Path, signed: dict) -> bool:
    """gpgv with only this keyring, as apt verifies a repository signed-by it."""
    return subprocess.run(["gpgv", "--keyring", str(keyring), str(signed["sig"]), str(signed["data"])],
                          capture_output=True, timeout=60).returncode == 0


def concat(tmp_path: Path, name: str, *parts: Path) -> Path:
    out = tmp_path / name
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


def test_the_genuine_key_alone(tmp_path, keys):
    proc, keyring = run_pin(tmp_path, keys["genuine"]["fpr"], keys["genuine"]["asc"])
    assert proc.returncode == 0, proc.stderr
    assert primaries(keyring) == [keys["genuine"]["fpr"]]
    assert oct(keyring.stat().st_mode & 0o777) == "0o644"
    assert apt_accepts(keyring, keys["genuine"])       # its signing subkey came along
    assert not apt_accepts(keyring, keys["impostor"])
    assert list(tmp_path.glob("tmp.*")) == []           # the throwaway keyring is gone


@pytest.mark.parametrize("order", ["appended", "prepended"])
def test_a_key_added_to_the_download_never_reaches_the_keyring(tmp_path, keys, order):
    parts = (keys["genuine"]["asc"], keys["impostor"]["asc"])
    downloaded = concat(tmp_path, "key.asc", *(parts if order == "appended" else parts[::-1]))
    proc, keyring = run_pin(tmp_path, keys["genuine"]["fpr"], downloaded)
    assert proc.returncode == 0, proc.stderr
    assert primaries(keyring) == [keys["genuine"]["fpr"]]
    assert f"not the pinned key: {keys['impostor']['fpr']}" in proc.stderr
    assert apt_accepts(keyring, keys["genuine"])
    assert not apt_accepts(keyring, keys["impostor"])   # what the old script let through


def test_an_impostor_alone_is_refused(tmp_path, keys):
    proc, keyring = run_pin(tmp_path, keys["genuine"]["fpr"], keys["impostor"]["asc"])
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"install-packages.sh: the downloaded Tor Project key file holds {keys['impostor']['fpr']} instead, "
        f"expected {keys['genuine']['fpr']}: refusing")
    assert not keyring.exists()
    assert list(tmp_path.glob("tmp.*")) == []


def test_a_file_without_keys_is_refused(tmp_path, keys):
    junk = tmp_path / "key.asc"
    junk.write_text("<html>a captive portal</html>\n")
    proc, keyring = run_pin(tmp_path, keys["genuine"]["fpr"], junk)
    assert proc.returncode == 1
    assert "holds no key instead, expected" in proc.stderr
    assert not keyring.exists()
