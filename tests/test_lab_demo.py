"""End-to-end: the README's demo command, `python -m lab up`, then `status` and `down`, as a
user runs them (its own small network with a 10 s voting interval, one worker)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tests.test_lab_cli import _lab

pytestmark = pytest.mark.lab


def test_lab_up_prints_a_working_curl_line_and_down_stops_every_process(tmp_path):
    state = tmp_path / "lab"
    try:
        up = _lab(state, "up", "--workers", "1", "--tor-daemons", "1", "--voting-interval", "10")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "network: client bootstrapped" in up.stdout  # progress was shown
        frontend = re.search(r"^frontend: ([a-z2-7]{56}\.onion)$", up.stdout, re.M).group(1)
        curl = re.search(r"^try: +(curl --socks5-hostname 127\.0\.0\.1:\d+ http://\S+/)$",
                         up.stdout, re.M).group(1)
        assert frontend in curl
        page = subprocess.run(shlex.split(curl) + ["-sS", "--max-time", "60"],
                              capture_output=True, text=True, timeout=90)
        assert page.returncode == 0, page.stderr
        assert f'href="http://{frontend}/about"' in page.stdout

        status = _lab(state, "status", timeout=60)
        assert status.returncode == 0
        assert f"frontend: {frontend}" in status.stdout
        assert "balancer: onion (running)" in status.stdout
        pids = [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
        assert len(pids) >= 13  # 9 network tors + origin + worker tor + nginx + balancer (+ its tor)
    finally:
        down = _lab(state, "down", timeout=120)
    assert down.returncode == 0
    assert re.search(r"stopped \d+ processes", down.stdout)
    assert not list((state / "pids").glob("*.pid"))
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", pid
