"""The lab as a newcomer meets it, without a Tor network: `lab up` names what the machine
lacks before starting anything; the silent waits print a heartbeat; `status` after `down`
says nothing runs; `scripts/demo` sets up only what the lab needs (and that is enough)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import __main__ as lab_cli
from lab import preflight
from lab.heartbeat import Heartbeat

REPO = Path(__file__).resolve().parent.parent


def path_without(tmp_path: Path, *absent: str) -> str:
    """A PATH with every command of this machine's PATH except `absent` (symlinks)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            link = bindir / entry.name
            if entry.name not in absent and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    for name in absent:
        assert shutil.which(name, path=str(bindir)) is None
    return str(bindir)


# ---------------------------------------------------------------- preflight

def test_up_without_tor_names_what_is_missing_and_the_setup_command(tmp_path):
    state = tmp_path / "lab"
    proc = subprocess.run([sys.executable, "-m", "lab", "--state-dir", str(state), "up"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": path_without(tmp_path, "tor", "tor-gencert", "curl")})
    assert proc.returncode == 2
    err = proc.stderr
    assert err.startswith("lab up: this machine lacks what the lab needs (nothing was started):")
    for name, package in (("tor", "tor"), ("tor-gencert", "tor"), ("curl", "curl")):
        assert any(line.split()[:1] == [name] and f"Debian package {package}" in line
                   for line in err.splitlines()), (name, err)
    assert "nginx" not in err                      # present: not named
    assert "bash scripts/setup" in err
    assert not state.exists()                      # nothing was started, not even a state dir
    assert proc.stdout == ""


def test_preflight_names_a_missing_nginx_module_and_python_package(monkeypatch):
    needs = (preflight.Need("/nonexistent/ngx_http_subs_filter_module.so", "file",
                            "Debian package libnginx-mod-http-subs-filter", "subs_filter"),
             preflight.Need("no_such_module_for_the_lab", "python", "the project's venv", "x"),
             preflight.Need("sh", "command", "Debian package dash", "present"))
    absent = preflight.missing(needs)
    assert [n.name for n in absent] == [needs[0].name, needs[1].name]
    text = preflight.report(absent)
    assert "file not found (Debian package libnginx-mod-http-subs-filter)" in text
    assert any(line.split()[0] == "no_such_module_for_the_lab" and
               line.endswith("Python module not found (the project's venv): x") for line in text.splitlines())
    assert preflight.report([]) == ""


def test_preflight_passes_on_this_machine():
    """scripts/setup installed everything here: the real check finds nothing missing
    (so `lab up` in the lab tests and the demo is not blocked by it)."""
    assert preflight.missing() == []


# ---------------------------------------------------------------- heartbeat

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_heartbeat_speaks_every_15_s_of_a_silent_wait_and_not_before():
    clock = FakeClock()
    lines: list[str] = []
    beat = Heartbeat(lines.append, "balancer tor", clock=clock.monotonic)
    for _ in range(80):                # 40 s of polls every 0.5 s
        clock.sleep(0.5)
        beat.beat("bootstrap 80 %")
    assert lines == ["balancer tor: still waiting (15 s): bootstrap 80 %",
                     "balancer tor: still waiting (30 s): bootstrap 80 %"]
    beat.spoke()                       # another line was shown at 40 s
    clock.sleep(10)
    beat.beat("x")
    assert len(lines) == 2
    Heartbeat(None, "quiet").beat("x")  # no progress callback: nothing to do


def test_waiting_for_the_frontend_prints_a_heartbeat_with_the_last_error(monkeypatch):
    import lab.client as client

    clock = FakeClock()
    monkeypatch.setattr(client.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(client.time, "sleep", clock.sleep)
    calls = []

    def slow_fetch(port, url, isolation=None, timeout=30.0, **kw):  # the frontend is not up yet
        calls.append(isolation)
        clock.sleep(3)
        if len(calls) < 12:
            return client.Response(ok=False, error="curl: (97) Can't complete SOCKS5 connection (240)",
                                   seconds=3)
        return client.Response(ok=True, status=200, seconds=3)

    monkeypatch.setattr(client, "fetch", slow_fetch)
    lines: list[str] = []
    _, took = client.wait_reachable(9050, "http://x.onion/", timeout=180, what="frontend", progress=lines.append)
    assert took == pytest.approx(12 * 3 + 11 * 2)
    assert len(lines) == 3             # ~58 s of waiting: at 15, 30 and 45 s
    assert all(line.startswith("frontend at http://x.onion/: still waiting (") for line in lines)
    assert "requests so far, the last: curl: (97) Can't complete SOCKS5 connection (240)" in lines[-1]


def test_waiting_for_the_balancer_tor_prints_a_heartbeat_with_its_state(monkeypatch):
    import lab.balancer as balancer

    clock = FakeClock()
    monkeypatch.setattr(balancer.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(balancer.time, "sleep", clock.sleep)
    monkeypatch.setattr(balancer, "check_alive", lambda procs, nodes: None)
    relays = [type("Relay", (), {"fingerprint": f"FP{i}"})() for i in range(3)]
    net = type("Net", (), {"relays": relays})()

    def progress_of(node):             # tor takes 40 s to bootstrap, then is ready
        return 100 if clock.now >= 1040 else 50

    monkeypatch.setattr(balancer, "bootstrap_progress", progress_of)
    monkeypatch.setattr(balancer, "consensus_fingerprints", lambda node: {"FP0", "FP1", "FP2"})

    class Ctl:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_info(self, key, default=None):
            return "md"

    monkeypatch.setattr(balancer, "controller", lambda node: Ctl())
    lines: list[str] = []
    balancer.wait_balancer_tor_ready(net, None, object(), timeout=120, progress=lines.append)
    assert lines == ["balancer tor: still waiting (15 s): bootstrap 50 %, 0/3 relays in its consensus",
                     "balancer tor: still waiting (30 s): bootstrap 50 %, 0/3 relays in its consensus"]


# ---------------------------------------------------------------- status after down

def test_status_of_an_app_lab_prints_its_write_and_read_lines(tmp_path, capsys):
    from lab.stack import Lab

    state = tmp_path / "lab"
    lab = Lab.create(state)
    lab.info.update({"frontend": "x" * 56 + ".onion", "socks_port": 9, "app": {"name": "guestbook"}})
    lab.save()
    lab.procs.start("a1-app-a", [sys.executable, "-c", "import time; time.sleep(60)", str(lab.state_dir)])
    try:
        assert lab_cli.main(["--state-dir", str(state), "status"]) == 0
        out = capsys.readouterr().out
    finally:
        assert lab_cli.main(["--state-dir", str(state), "down"]) == 0
    assert f"write: curl --socks5-hostname 127.0.0.1:9 --data-urlencode 'text=hello from the lab' " \
           f"http://{'x' * 56}.onion/entries" in out
    assert f"read: curl --socks5-hostname 127.0.0.1:9 http://{'x' * 56}.onion/entries" in out
    assert "try: curl" not in out


def test_status_after_down_says_nothing_is_running(tmp_path, capsys):
    from lab.stack import Lab

    state = tmp_path / "lab"
    lab = Lab.create(state)
    lab.info["frontend"] = "x" * 56 + ".onion"
    lab.info["socks_port"] = 9
    lab.save()
    lab.procs.start("origin", [sys.executable, "-c", "import time; time.sleep(60)", str(lab.state_dir)])
    try:
        assert lab_cli.main(["--state-dir", str(state), "status"]) == 0
        running = capsys.readouterr().out
        assert "processes running: 1" in running and "try: curl" in running
    finally:
        assert lab_cli.main(["--state-dir", str(state), "down"]) == 0
    assert "stopped 1 processes: origin" in capsys.readouterr().out
    assert lab_cli.main(["status", "--state-dir", str(state)]) == 0   # the flag after the command too
    out = capsys.readouterr().out
    assert "nothing is running: stopped by `python -m lab down` at " in out
    assert f"start it again: python -m lab up --state-dir {state}" in out
    assert "try: curl" not in out and "processes running" not in out
    assert json.loads((state / "lab.json").read_text())["stopped_at"] > time.time() - 60


def test_state_dir_works_before_and_after_the_command(tmp_path):
    parse = lab_cli.build_parser().parse_args
    assert parse(["--state-dir", str(tmp_path), "down"]).state_dir == tmp_path
    assert parse(["down", "--state-dir", str(tmp_path)]).state_dir == tmp_path
    assert parse(["up", "--workers", "1", "--state-dir", str(tmp_path)]).state_dir == tmp_path
    assert parse(["status"]).state_dir == lab_cli.DEFAULT_STATE_DIR


# ---------------------------------------------------------------- scripts/demo's set-up

def setup_copy(tmp_path: Path) -> Path:
    """What scripts/setup reads, in a scratch directory (so --dry-run sees no venv)."""
    root = tmp_path / "repo"
    (root / "onion").mkdir(parents=True)
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copy(REPO / "requirements.lock", root)
    shutil.copy(REPO / "onion" / "requirements.txt", root / "onion")
    return root


def dry_run(root: Path, *args: str, path: str | None = None) -> str:
    proc = subprocess.run(["bash", str(root / "scripts" / "setup"), *args, "--dry-run"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **({"PATH": path} if path else {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo_setup_installs_only_the_labs_tools(tmp_path):
    root = setup_copy(tmp_path)
    path = path_without(tmp_path, "tor", "tor-gencert", "shellcheck", "gpg")
    demo = dry_run(root, "--demo", path=path)
    full = dry_run(root, path=path)
    assert "setup: would install system packages: tor\n" in demo
    assert "setup: would install system packages: gpg shellcheck tor\n" in full


def test_demo_setup_installs_only_the_labs_python_packages(tmp_path):
    root = setup_copy(tmp_path)
    demo = dry_run(root, "--demo").split("(the lab's part):\n", 1)[1].split()
    full = dry_run(root).split("requirements.lock:\n", 1)[1].split()
    names = {p.split("==")[0] for p in demo}
    assert {"stem", "pynacl", "cryptography", "pyyaml", "jinja2", "markupsafe",
            "cffi", "pip", "setuptools"} <= names
    # optional in onion (the standard library gives the same bytes): not the lab's to need
    assert not names & {"numpy", "pybase64"}
    assert not any(n.startswith(("pulumi", "boto", "moto", "pytest")) for n in names)
    assert set(demo) < set(full)       # the same pins, a part of them


def test_the_demo_packages_are_all_the_lab_imports(tmp_path):
    """Every distribution the lab's code imports (the lab, the node templates, the balancer
    core it runs) is in the demo's part of the lock: `bash scripts/demo` lacks nothing."""
    root = setup_copy(tmp_path)
    demo = {p.split("==")[0] for p in dry_run(root, "--demo").split("(the lab's part):\n", 1)[1].split()}
    probe = """
import importlib, importlib.metadata as md, json, sys
for optional in ("numpy", "pybase64"):  # onion uses them when installed; a demo install has neither
    sys.modules[optional] = None
for m in ("lab.__main__", "lab.stack", "lab.workers", "lab.balancer", "lab.tornet", "lab.origin",
          "lab.client", "lab.services", "lab.observe", "lab.preflight", "nodes.roles", "nodes.render",
          "onion.__main__", "onion.balancer", "onion.control", "onion.frontend", "onion.probe",
          "onion.status", "onion.keys", "stem.control"):
    importlib.import_module(m)
dists = md.packages_distributions()
used = {d for name, mod in list(sys.modules.items()) if mod is not None
        for d in dists.get(name.split(".")[0], [])}
print(json.dumps(sorted(used)))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    used = {d.lower().replace("_", "-") for d in json.loads(out.stdout)}
    assert used and used <= demo, sorted(used - demo)
