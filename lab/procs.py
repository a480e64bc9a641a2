"""Processes the lab starts, recorded by pid in the state directory so `down` can stop them.

Every process is started in its own session (so Ctrl-C in a terminal does not reach it half
way through a teardown) with its output in a log file under the state directory. Its pid is
written to `<state>/pids/<name>.pid`. Stopping checks that the pid still runs a command line
that mentions the state directory before signalling it, so a recycled pid is never killed.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: have the kernel send SIGTERM when the process that started us exits.

    Used by the test fixtures so daemons never outlive a crashed or killed pytest; tor's own
    `__OwningControllerProcess` covers tor, this covers nginx, the origin and the balancer.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessRegistry:
    def __init__(self, state_dir: Path, tie_to_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.pid_dir = self.state_dir / "pids"
        self.log_dir = self.state_dir / "logs"
        self.tie_to_parent = tie_to_parent
        self._popens: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], *, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start argv as `name`; its stdout+stderr go to logs/<name>.log."""
        if not any(str(self.state_dir) in a for a in argv):
            # The pid check in stop() relies on this; every lab command names a file in it.
            raise ValueError(f"process {name!r}: its command line must mention {self.state_dir}")
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if self.tie_to_parent else None)
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        self._popens[name] = proc
        return proc

    def start_anchor(self) -> int:
        """A process that lives exactly as long as this one; returns its pid.

        tor's `__OwningControllerProcess` is pointed at it rather than at us: stem takes
        ownership (TAKEOWNERSHIP) of any tor whose owning pid is the querying process, and
        that tor then exits when the query's control connection closes. The anchor reads its
        stdin, a pipe only we hold, so it exits when we do, even on SIGKILL.
        """
        import sys

        self.pid_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.buffer.read()", str(self.state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        self._anchor = proc  # keep the pipe open for our lifetime
        (self.pid_dir / "anchor.pid").write_text(f"{proc.pid}\n")
        self._popens["anchor"] = proc
        return proc.pid

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        try:
            return int((self.pid_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def names(self) -> list[str]:
        if not self.pid_dir.is_dir():
            return []
        return sorted(p.stem for p in self.pid_dir.glob("*.pid"))

    def is_running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and self._ours(pid)

    def _ours(self, pid: int) -> bool:
        popen = next((p for p in self._popens.values() if p.pid == pid), None)
        if popen is not None:
            # Our own unreaped child: its pid cannot have been reused. (Its /proc cmdline
            # may still be the parent's for a moment right after the fork.)
            return popen.poll() is None
        for attempt in range(3):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if str(self.state_dir).encode() in cmdline:
                return True
            # A process that is just being exec'd can briefly show its parent's cmdline.
            time.sleep(0.05)
        return False

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True if a process of ours was stopped."""
        pid = self.pid(name)
        stopped = False
        if pid is not None and self._ours(pid):
            stopped = True
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._ours(pid) and time.monotonic() < deadline:
                self._reap(name)
                time.sleep(0.05)
            if self._ours(pid):
                _signal(pid, signal.SIGKILL)
                while self._ours(pid):
                    self._reap(name)
                    time.sleep(0.05)
        self._reap(name)
        (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        return stopped

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        """Stop every recorded process (all signalled first, then waited for)."""
        names = self.names()
        live = [n for n in names if self.is_running(n)]
        for name in live:
            _signal(self.pid(name), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self.is_running(n) for n in live):
            for n in live:
                self._reap(n)
            time.sleep(0.05)
        for name in names:
            self.stop(name, timeout=1.0)
        return live

    def _reap(self, name: str) -> None:
        popen = self._popens.get(name)
        if popen is not None:
            popen.poll()


def _signal(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
