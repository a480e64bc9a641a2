"""The rehearsal executor's SSH transport (lab/rehearse/ssh.py) against a real OpenSSH
server on 127.0.0.1: host-key pinning refuses another key before any login, the jump
host, stdin/stdout/exit status, SFTP copies."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lab.rehearse.executor import Connection, DialError, StepError
from lab.rehearse.ssh import OpenSSH

pytestmark = pytest.mark.tools


def _keygen(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd on a free 127.0.0.1 port, logging to a file; yields (port, host pub, other pub,
    client private key, log path)."""
    d = tmp_path_factory.mktemp("sshd")
    _, host_pub = _keygen(d / "host")
    _, other_pub = _keygen(d / "other")
    client_key, client_pub = _keygen(d / "client")
    (d / "authorized_keys").write_text(client_pub)
    (d / "authorized_keys").chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", f"PidFile {d / 'pid'}",
        "Subsystem sftp internal-sftp", "PermitRootLogin prohibit-password", "LogLevel VERBOSE"]) + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = d / "sshd.log"
    proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "sshd did not start"
            time.sleep(0.1)
    yield port, host_pub, other_pub, client_key, log
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def transport(tmp_path):
    """An OpenSSH transport; afterwards its control-socket directory is gone."""
    ssh = OpenSSH(tmp_path)
    assert ssh.sock_dir.is_dir()
    with ssh:
        yield ssh
    assert not ssh.sock_dir.exists()


def _conn(port, key, host_key, proxy=None):
    return Connection(host="127.0.0.1", port=port, user=os.environ.get("USER") or "root", private_key=key,
                      host_key=host_key, per_dial_timeout=10, proxy=proxy)


def test_pinned_host_key_runs_with_stdin_and_exit_status(sshd, transport, tmp_path):
    port, host_pub, _, key, _ = sshd
    session = transport.dial(_conn(port, key, host_pub))
    try:
        assert session.run("cat; echo err >&2; exit 3", "from stdin\n", {}, 30) == (3, "from stdin\n", "err\n")
        session.copy(b"text asset", str(tmp_path / "made" / "by" / "copy.txt"), 30)
    finally:
        session.close()
    copied = tmp_path / "made" / "by" / "copy.txt"
    assert copied.read_bytes() == b"text asset" and oct(copied.stat().st_mode & 0o777) == "0o644"


def test_another_host_key_is_refused_before_any_login(sshd, transport):
    port, _, other_pub, key, log = sshd
    before = log.read_text().count("Accepted publickey")
    with pytest.raises(DialError, match="Host key verification failed"):
        transport.dial(_conn(port, key, other_pub))
    # through a jump host the same: the target's key is checked too
    with pytest.raises(DialError):
        transport.dial(_conn(port, key, other_pub, proxy=_conn(port, key, sshd[1])))
    time.sleep(0.5)
    # the jump login (its key was right) is the only one accepted; the target never got in
    assert log.read_text().count("Accepted publickey") == before + 1


def test_jump_host_and_no_host_key(sshd, transport):
    port, host_pub, _, key, _ = sshd
    for conn in (_conn(port, key, host_pub, proxy=_conn(port, key, host_pub)), _conn(port, key, None)):
        session = transport.dial(conn)
        try:
            assert session.run("echo hello", None, {}, 30) == (0, "hello\n", "")
        finally:
            session.close()


def test_only_the_rehearsals_hosts_are_dialled(sshd, tmp_path):
    port, host_pub, _, key, _ = sshd
    with pytest.raises(StepError, match="not one of the rehearsal's hosts"):
        with OpenSSH(tmp_path, allowed_hosts={"10.213.0.5"}) as ssh:
            ssh.dial(_conn(port, key, host_pub))
