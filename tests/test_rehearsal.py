"""The deploy rehearsal end to end (marker `rehearsal`, root): `python -m lab rehearse`
as a user runs it, every check of docs/rehearsal.md, and nothing of it left afterwards;
an interrupted and a killed rehearsal clean up too (Ctrl-C by itself, a crash with
`python -m lab rehearse down`).

Run as root, or as a user with passwordless sudo (the commands then run under sudo -n)."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Also `lab`: it starts a private Tor network (and boots containers): not in quick `-m "not lab"` runs.
pytestmark = [pytest.mark.rehearsal, pytest.mark.lab]
ROOT = Path(__file__).resolve().parent.parent
CHECKS = [
    "first deploy",
    "frontend answers with the origin's page",
    "every unit active and enabled",
    "database accepts a worker, refuses the balancer",
    "a second run changes nothing",
    "hosts rebooted: the site comes back without any step",
    "scale 2 -> 1: the drain runs before the worker goes, the site stays up",
    "a host with another host key stops the run before any secret is sent",
]


def _as_root(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        pytest.fail("the rehearsal needs root: run the tests as root or with passwordless sudo")
    return ["sudo", "-n", "-E", *argv]


def _lab(state: Path, *args: str) -> list[str]:
    return _as_root([sys.executable, "-m", "lab", "--state-dir", str(state), "rehearse", *args])


def machine_state() -> dict[str, set[str]]:
    """What the rehearsal could leave behind: mounts, links, network namespaces, loop
    devices, iptables rules, systemd-nspawn processes, cgroups."""
    def lines(argv):
        return set(subprocess.run(_as_root(argv), capture_output=True, text=True).stdout.splitlines())

    return {
        "mounts": {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()},
        "links": {re.split(r"[:@]", line)[1].strip() for line in lines(["ip", "-o", "link", "show"])},
        "netns": lines(["ip", "netns", "list"]),
        "loops": lines(["losetup", "-a"]),
        "iptables": lines(["iptables", "-w", "-S"]),
        "nspawn": {p.name for p in Path("/proc").iterdir() if p.name.isdigit() and
                   b"systemd-nspawn" in _read(p / "cmdline")},
        "cgroups": {str(p) for h in ("systemd", "unified") for p in Path("/sys/fs/cgroup", h).glob("*")
                    if p.is_dir()},
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def left_behind(before: dict[str, set[str]], state: Path) -> dict[str, set[str]]:
    after = machine_state()
    new = {k: after[k] - before[k] for k in after}
    new["nspawn"] = {p for p in new["nspawn"] if str(state).encode() in _read(Path("/proc", p, "cmdline"))}
    # the SSH control sockets' directory in /tmp, named after the rehearsal's tag
    tag = "rh" + hashlib.sha256(str((state / "rehearse").resolve()).encode()).hexdigest()[:4]
    new["tmp"] = {str(p) for p in Path("/tmp").glob(f"{tag}-ssh-*")}
    return {k: v for k, v in new.items() if v}


@pytest.mark.timeout(1800)
def test_rehearsal_runs_every_check_and_leaves_nothing(tmp_path):
    state = tmp_path / "lab"
    before = machine_state()
    t0 = time.monotonic()
    proc = subprocess.run(_lab(state), cwd=ROOT, capture_output=True, text=True, timeout=1500)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0, out[-6000:]
    passed = [line.split("PASS  ", 1)[1] for line in out.splitlines() if "PASS  " in line]
    assert len(passed) == len(CHECKS) and all(line.startswith(f"{check}: ") for line, check in zip(passed, CHECKS))
    assert "teardown: FAILED" not in out
    print(f"[measure] rehearsal_seconds {took:.0f}")
    assert left_behind(before, state) == {}
    assert not (state / "rehearse" / "fabric.json").exists()


def _start_and_wait_for_hosts(state: Path) -> subprocess.Popen:
    proc = subprocess.Popen(_lab(state), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if "host database: booting" in line:
            return proc
        assert time.monotonic() < deadline, "no host booted within 300 s"
    pytest.fail(f"the rehearsal ended before booting its hosts (exit {proc.wait()})")


def test_interrupted_or_killed_rehearsals_leave_nothing(tmp_path):
    state = tmp_path / "lab"
    before = machine_state()
    # Ctrl-C: the rehearsal removes everything it made by itself
    proc = _start_and_wait_for_hosts(state)
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, rest
    assert "everything it made is removed" in rest
    assert left_behind(before, state) == {}
    # killed outright: `lab rehearse down` removes what it left, from its ledger
    proc = _start_and_wait_for_hosts(state)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert left_behind(before, state), "a killed rehearsal left nothing behind: nothing was tested"
    down = subprocess.run(_lab(state, "down"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert left_behind(before, state) == {}
