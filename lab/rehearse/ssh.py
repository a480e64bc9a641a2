"""The executor's SSH transport: OpenSSH's own client.

Why OpenSSH and not a Python SSH library: it is the reference client and a separate process
(a hung step is killed with its timeout, nothing of it stays in the harness), its
`StrictHostKeyChecking` is the host-key check (no comparison code of ours to get wrong), and
ProxyCommand gives the jump host for free. A ControlMaster connection is the "dial"
(connect, host key, auth: what pulumi-command retries), commands and copies then run as
sessions over it, as the provider's `client.NewSession()` does.

Per connection a 0600 ssh_config, the private key and (when `hostKey` is set) a known_hosts
file holding exactly that key, with `HostKeyAlgorithms` limited to its type (the provider's
`ssh.FixedHostKey` + `HostKeyAlgorithms`). Without `hostKey` any key is accepted, as the
provider does (`InsecureIgnoreHostKey`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from lab.rehearse.executor import Connection, DialError, StepError

# The algorithms a host key of each type is offered under (ssh-rsa's SHA-1 is off in OpenSSH).
HOST_KEY_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256"}


class OpenSSH:
    def __init__(self, work_dir: Path, allowed_hosts: Optional[set[str]] = None, *,
                 sock_prefix: str = "rh-ssh-") -> None:
        """`allowed_hosts`: the only addresses it may dial (the rehearsal's hosts): a wrong
        address in a step must never send traffic off this machine. `sock_prefix`: the name
        of the control sockets' directory in /tmp begins with it."""
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.allowed_hosts = allowed_hosts
        # unix socket paths are short (sun_path): control sockets in a short private dir,
        # removed by close()
        self.sock_dir = Path(tempfile.mkdtemp(prefix=sock_prefix, dir="/tmp"))

    def close(self) -> None:
        """Remove the control-socket directory (every session is closed by then)."""
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def __enter__(self) -> "OpenSSH":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, name: str, content: str) -> Path:
        """A 0600 file, replaced whole (a concurrent ssh never reads half of it)."""
        path = self.dir / name
        tmp = self.dir / f".{name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.replace(tmp, path)
        return path

    def _host_block(self, alias: str, conn: Connection) -> list[str]:
        if self.allowed_hosts is not None and conn.host not in self.allowed_hosts:
            raise StepError(f"connection to {conn.host}: not one of the rehearsal's hosts "
                            f"({', '.join(sorted(self.allowed_hosts))}); refusing to dial it")
        if not conn.private_key:
            raise StepError(f"connection to {conn.host}: no privateKey")
        key = self._write(f"key-{_short(conn.private_key)}", conn.private_key.rstrip("\n") + "\n")
        lines = [f"Host {alias}", f"  HostName {conn.host}", f"  Port {conn.port}", f"  User {conn.user}",
                 f"  IdentityFile {key}", "  IdentitiesOnly yes", "  BatchMode yes",
                 f"  ConnectTimeout {conn.per_dial_timeout or 0}", "  ServerAliveInterval 15",
                 "  ServerAliveCountMax 4", "  LogLevel ERROR", f"  HostKeyAlias {alias}"]
        if conn.host_key:
            parts = conn.host_key.split()
            if len(parts) < 2:
                raise StepError(f"connection to {conn.host}: hostKey {conn.host_key!r} is not "
                                "an authorized_keys-style public key")
            known = self._write(f"known-{alias}", f"{alias} {parts[0]} {parts[1]}\n")
            lines += ["  StrictHostKeyChecking yes", f"  UserKnownHostsFile {known}",
                      f"  HostKeyAlgorithms {HOST_KEY_ALGORITHMS.get(parts[0], parts[0])}"]
        else:
            lines += ["  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null"]
        return lines

    def dial(self, conn: Connection) -> "OpenSSHSession":
        # One config and control socket per dial: steps that reach the same host at the same
        # time (the drains on the balancer) must not share a master connection.
        ident = _short(repr(conn.to_json())) + secrets.token_hex(4)
        target = f"t{ident}"
        lines = self._host_block(target, conn)
        if conn.proxy:
            jump = f"j{ident}"
            lines += [f"  ProxyCommand ssh -F {self.dir / f'config-{ident}'} -W %h:%p {jump}"]
            lines += self._host_block(jump, conn.proxy)
        config = self._write(f"config-{ident}", "\n".join(lines) + "\n")
        sock = self.sock_dir / ident
        base = ["ssh", "-F", str(config), "-o", f"ControlPath={sock}"]
        # stderr to a file, not a pipe: the backgrounded master and its ProxyCommand keep
        # the descriptors they inherit, and a pipe would never reach EOF.
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.run(base + ["-o", "ControlMaster=yes", "-f", "-N", target],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=(conn.per_dial_timeout or 60) * (2 if conn.proxy else 1) + 30)
            err.seek(0)
            message = err.read().strip()
        if proc.returncode != 0:
            config.unlink(missing_ok=True)
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            # OpenSSH's host-key warning is a banner of many lines: say what it means
            verdict = [line for line in lines if line.startswith("Host key verification failed")]
            raise DialError((verdict or lines or [f"ssh exit {proc.returncode}"])[-1])
        return OpenSSHSession(base, target, config)


class OpenSSHSession:
    def __init__(self, base: list[str], target: str, config: Path) -> None:
        self.base, self.target, self.config = base, target, config

    def run(self, command: str, stdin: Optional[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        opts = []
        for key, value in env.items():
            # SetEnv reaches the command only where sshd's AcceptEnv allows it (as with the provider).
            opts += ["-o", f"SetEnv={key}={shlex.quote(value)}"]
        proc = subprocess.run(self.base + opts + ["-o", "ControlMaster=no", self.target, command],
                              input=(stdin or "").encode(), capture_output=True, timeout=timeout)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")

    def copy(self, content: bytes, remote_path: str, timeout: float) -> None:
        """SFTP, as the provider: parent directories made, the file created (0644) and written."""
        with tempfile.TemporaryDirectory(prefix="rh-copy-") as tmp:
            local = Path(tmp) / "content"
            local.write_bytes(content)
            local.chmod(0o644)
            parents, path = [], Path(remote_path).parent
            while str(path) not in ("/", "."):
                parents.insert(0, str(path))
                path = path.parent
            batch = "".join(f"-mkdir {_sftp_quote(p)}\n" for p in parents)
            batch += f"put {_sftp_quote(str(local))} {_sftp_quote(remote_path)}\n"
            proc = subprocess.run(["sftp", "-q", "-b", "-", "-F", self.base[2], "-o", self.base[4],
                                   "-o", "ControlMaster=no", self.target],
                                  input=batch.encode(), capture_output=True, timeout=timeout)
            if proc.returncode != 0:
                raise StepError(f"copy to {remote_path}: {proc.stderr.decode(errors='replace').strip()}")

    def close(self) -> None:
        subprocess.run(self.base + ["-O", "exit", self.target], capture_output=True, timeout=30)
        self.config.unlink(missing_ok=True)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sftp_quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
