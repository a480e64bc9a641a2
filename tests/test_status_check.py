"""`onion status --check` (monitoring-plugin exit codes, one-line summary first), `--watch`,
human times and instance names; run as an operator runs them, on status files a real
Balancer (with fakes for tor) wrote."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onion.config import InstanceConfig
from onion.control import DescEvent
from onion.probe import ProbeResult
from onion.status import CRITICAL, OK, UNKNOWN, WARNING, _age, check, format_status, human_seconds
from tests.test_balancer_core import A, B, FRONT, confirm_all, make, start_with_descriptors

REPO = Path(__file__).resolve().parent.parent


def healthy(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    bal.handle(ProbeResult(A, True, "connected", 1.0))
    bal.handle(ProbeResult(B, True, "connected", 1.0))
    return bal, control, clock


def with_reach(data, ok, at, error=None, latency=1.2):
    for fe in data["frontends"]:
        fe["reachability"] = {"ok": ok, "at": at, "latency_seconds": latency if ok else None,
                              "error": error, "last_ok_at": at - 300 if not ok else at, "port": 80, "path": "/"}
    return data


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "onion", "status", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_healthy_is_ok_with_the_one_line_summary_first(tmp_path):
    bal, control, clock = healthy(tmp_path)
    data = with_reach(bal.status(), True, clock.t - 1.2)
    code, lines = check(data, now=clock.t)
    assert code == OK, lines
    assert lines[0].startswith("news: OK 2/2 instances up, 4/4 HSDirs confirmed rev ")
    assert lines[0].endswith(", reachable 1.2 s ago")
    assert len(lines) == 1


def test_problems_raise_the_exit_code_and_are_named(tmp_path):
    bal, control, clock = healthy(tmp_path)
    # instance B fails 3 probes: down -> WARNING, named
    for _ in range(3):
        bal.handle(ProbeResult(B, False, "onion introduction failed", 5.0))
    data = with_reach(bal.status(), True, clock.t)
    code, lines = check(data, now=clock.t)
    assert code == WARNING
    assert lines[0].startswith("news: WARNING 1/2 instances up")
    assert any("instance(s) down" in line and B[:12] in line for line in lines[1:])
    # the end-to-end probe fails -> CRITICAL, with tor's error
    data = with_reach(bal.status(), False, clock.t, error="onion descriptor not found (0xF0)")
    code, lines = check(data, now=clock.t)
    assert code == CRITICAL
    assert "UNREACHABLE" in lines[0]
    assert any("end-to-end probe failed: onion descriptor not found (0xF0)" in line for line in lines)


def test_an_old_status_file_is_critical_balancer_not_running(tmp_path):
    bal, control, clock = healthy(tmp_path)
    data = bal.status()
    interval = data["probes"]["interval"]
    assert check(data, now=clock.t + 3 * interval - 1)[0] != CRITICAL
    code, lines = check(data, now=clock.t + 3 * interval + 1)
    assert code == CRITICAL and "balancer not running?" in lines[0]


def test_cli_exit_codes(tmp_path):
    state = tmp_path / "state"
    # no status file: UNKNOWN
    proc = run_cli("--state-dir", str(state), "--check")
    assert proc.returncode == UNKNOWN and proc.stdout.startswith("UNKNOWN: no status file")
    bal, control, clock = healthy(tmp_path)
    bal._write_status(force=True)  # the fake clock's wall time is long past: a dead balancer
    proc = run_cli("--state-dir", str(state), "--check")
    assert proc.returncode == CRITICAL, proc.stdout
    assert "balancer not running?" in proc.stdout.splitlines()[0]
    # fresh: rewrite with the real time
    data = json.loads((state / "status.json").read_text())
    shift = time.time() - data["written_at"]

    def shifted(x):
        if isinstance(x, dict):
            return {k: (v + shift if k.endswith("_at") and isinstance(v, (int, float)) else shifted(v))
                    for k, v in x.items()}
        if isinstance(x, list):
            return [shifted(v) for v in x]
        return x
    (state / "status.json").write_text(json.dumps(with_reach(shifted(data), True, time.time() - 2)))
    proc = run_cli("--state-dir", str(state), "--check")
    assert proc.returncode == OK, proc.stdout
    assert proc.stdout.startswith("news: OK 2/2 instances up")
    proc = run_cli("--state-dir", str(state))
    assert proc.returncode == 0 and "frontend news" in proc.stdout


def test_watch_redraws_until_interrupted(tmp_path):
    bal, control, clock = healthy(tmp_path)
    bal._write_status(force=True)
    proc = subprocess.Popen([sys.executable, "-m", "onion", "status", "--state-dir", str(tmp_path / "state"),
                             "--check", "--watch", "0.3"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    frames = [line for line in out.splitlines() if "(every 0.3 s, Ctrl-C to stop)" in line]
    assert len(frames) >= 3
    assert out.count("news: CRITICAL") >= 3  # the fake clock's file is old: critical each time
    assert proc.returncode == CRITICAL


def test_human_times_and_instance_names(tmp_path):
    assert _age(1000.0 + 1800, 1000.0) == "in 30 min"
    assert _age(1000.0 - 1.2, 1000.0) == "1.2 s ago"
    assert _age(1000.0 - 7500, 1000.0) == "2 h 5 min ago"
    assert human_seconds(3 * 86400) == "3 days"
    bal, control, proto, prober, clock = make(tmp_path)
    bal.cfg = bal.cfg.__class__(**{**bal.cfg.__dict__, "frontends": (bal.cfg.frontends[0].__class__(
        name="news", key_file="unused", instances=(InstanceConfig(A, name="web1", worker="worker-1"),
                                                  InstanceConfig(B))),)})
    bal._apply_config(bal.cfg, {"news": bal.frontends[0].identity})
    start_with_descriptors(bal, control)
    text = format_status(bal.status(), now=clock.t)
    assert f"web1 (worker-1)  {A}.onion" in text
    assert "next planned publish" in text and "in " in text


def test_the_summary_speaks_of_the_descriptor_clients_fetch_now():
    """Between a time period's start and the next shared random value, clients fetch (and
    read-back reads) the descriptor tor's service side calls "next"."""
    from tests.test_metrics import _between_period_start_and_srv

    data = _between_period_start_and_srv()
    now = time.time()
    data.update(written_at=now, pid=1, probes={"interval": 20})
    data["tor"]["connected"] = True
    code, lines = check(data, now=now)
    assert lines[0].startswith("news: OK 0/0 instances up, 3/3 HSDirs serve rev 7"), lines
    assert code == OK, lines
    assert "time period 101 (next, the one clients fetch now): uploads" in format_status(data, now=now)
