"""`python -m onion keygen | address | import`, and agreement with a real tor.

The tor tests start tor with `DisableNetwork 1`, `SocksPort 0` and no control port: it
never touches any network, it only loads (or creates) the hidden-service keys and writes
`hostname`, which is exactly what is being compared.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onion.__main__ import main
from onion.keys import IdentityKey, parse_address

REPO = Path(__file__).resolve().parents[1]
TOR = shutil.which("tor") or "tor"  # scripts/setup installs it; a missing tor must fail


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onion", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_keygen_address_import_round_trip(tmp_path):
    out = tmp_path / "site"
    r = run_cli("keygen", "--out", str(out))
    assert r.returncode == 0, r.stderr
    hostname = r.stdout.strip()
    assert hostname.endswith(".onion") and len(hostname) == 62
    parse_address(hostname)
    assert (out / "hostname").read_text().strip() == hostname
    assert "hs_ed25519_secret_key" in r.stderr  # where the secret went, not the secret

    r = run_cli("address", str(out))
    assert (r.returncode, r.stdout.strip()) == (0, hostname)
    r = run_cli("address", str(out / "hs_ed25519_public_key"))
    assert (r.returncode, r.stdout.strip()) == (0, hostname)

    r = run_cli("import", str(out))
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert secret.startswith("ED25519-V3:")
    assert IdentityKey.from_config_string(secret).hostname == hostname
    assert secret not in r.stderr


def test_keygen_pem_and_address_of_pem(tmp_path):
    r = run_cli("keygen", "--out", str(tmp_path / "hs"), "--pem", str(tmp_path / "k.pem"))
    assert r.returncode == 0, r.stderr
    r2 = run_cli("address", str(tmp_path / "k.pem"))
    assert r2.stdout.strip() == r.stdout.strip()


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    first = (tmp_path / "hs_ed25519_secret_key").read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists: refusing to replace a key" in err[0]
    assert (tmp_path / "hs_ed25519_secret_key").read_bytes() == first


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no hs_ed25519_secret_key"),
    (lambda p: p.write_bytes(b"== ed25519v1-secret: type0 ==\x00\x00\x00" + bytes(10)), "truncated"),
    (lambda p: p.write_bytes(b"hello"), "not a tor ed25519 secret key file"),
])
def test_bad_input_exits_non_zero_with_one_line(tmp_path, capsys, setup, fragment):
    target = tmp_path / "thing"
    setup(target)
    for command in ("address", "import"):
        assert main([command, str(target)]) == 2
        err = capsys.readouterr()
        assert err.out == ""
        lines = err.err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines


# --- real tor --------------------------------------------------------------------------------

def _run_tor_until_hostname(hs_dir: Path, data_dir: Path, timeout: float = 60.0) -> str:
    """Start an offline tor on `hs_dir`; return the hostname it writes, then stop it."""
    torrc = data_dir / "torrc"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    torrc.write_text(
        "DisableNetwork 1\nSocksPort 0\nControlPort 0\nORPort 0\nDirPort 0\n"
        f"DataDirectory {data_dir}\nLog notice file {data_dir / 'tor.log'}\n"
        f"__OwningControllerProcess {os.getpid()}\n"
        "AvoidDiskWrites 1\nSandbox 0\n"
        f"HiddenServiceDir {hs_dir}\nHiddenServicePort 80 127.0.0.1:9\n")
    proc = subprocess.Popen([TOR, "-f", str(torrc), "--ignore-missing-torrc"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        hostname = hs_dir / "hostname"
        while time.monotonic() < deadline:
            if hostname.exists() and hostname.read_text().strip().endswith(".onion"):
                return hostname.read_text().strip()
            if proc.poll() is not None:
                log = (data_dir / "tor.log").read_text() if (data_dir / "tor.log").exists() else ""
                pytest.fail(f"tor exited with {proc.returncode}: {log[-2000:]}")
            time.sleep(0.1)
        pytest.fail("tor wrote no hostname within the timeout")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.tools
def test_tor_derives_our_address_from_a_keygen_directory(tmp_path):
    hs = tmp_path / "hs"
    r = run_cli("keygen", "--out", str(hs))
    assert r.returncode == 0, r.stderr
    ours = r.stdout.strip()
    secret_before = (hs / "hs_ed25519_secret_key").read_bytes()
    # Remove what tor would otherwise just read back: it must derive both itself.
    (hs / "hostname").unlink()
    (hs / "hs_ed25519_public_key").unlink()
    assert _run_tor_until_hostname(hs, tmp_path / "tor") == ours
    assert (hs / "hs_ed25519_secret_key").read_bytes() == secret_before
    assert (hs / "hs_ed25519_public_key").read_bytes()[32:] == parse_address(ours)


@pytest.mark.tools
def test_we_derive_the_address_of_a_directory_tor_created(tmp_path):
    hs = tmp_path / "hs"
    hs.mkdir(mode=0o700)
    theirs = _run_tor_until_hostname(hs, tmp_path / "tor")
    r = run_cli("address", str(hs / "hs_ed25519_secret_key"))
    assert (r.returncode, r.stdout.strip()) == (0, theirs)
    key = IdentityKey.from_hs_dir(hs)  # also cross-checks tor's public key file and hostname
    assert key.hostname == theirs
    r = run_cli("import", str(hs))
    assert IdentityKey.from_config_string(r.stdout.strip()).hostname == theirs
