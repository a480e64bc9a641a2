"""`python -m lab` as a user runs it: an interrupted `up` stops everything it started.
(The full demo, `up` -> curl -> `status` -> `down`, is in test_lab_demo.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent


def _lab(state: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "--state-dir", str(state), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_lab_up_interrupted_stops_what_it_started(tmp_path):
    state = tmp_path / "lab"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "--state-dir", str(state), "up",
                             "--voting-interval", "10"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "network: started" in line:
                break
        pids = [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
        assert pids
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            _lab(state, "down", timeout=60)
    assert proc.returncode == 130
    assert "lab up interrupted; stopped" in err
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", pid
