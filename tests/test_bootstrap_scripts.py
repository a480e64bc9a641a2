"""The shell programs the remote steps run: shellcheck-clean, and their behaviour for real
(install with backup, check, rollback that leaves the old files; the drain's bounded wait)
against a scratch root on this machine."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nodes import steps
from nodes.bootstrap import (BALANCER_TORRC, balancer_base_script, balancer_core_script, database_script, drain_script,
                             worker_script, worker_spec)
from nodes.render import RenderedFile
from infra.config import parse_config
from tests.stackmocks import minimal_config, mock_instance_address, prod_config, run

SHELLCHECK = shutil.which("shellcheck") or "shellcheck"  # installed by scripts/setup


def _script_of(command_line: str) -> str:
    """The script inside `sudo -n /bin/bash -c '<script>'`."""
    argv = shlex.split(command_line)
    assert argv[:4] == ["sudo", "-n", "/bin/bash", "-c"] and len(argv) == 5, argv[:4]
    return argv[4]


def _shellcheck(script: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/bin/bash\n" + script)
    proc = subprocess.run([SHELLCHECK, "-s", "bash", "-S", "style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.tools
@pytest.mark.parametrize("config", [prod_config(), minimal_config(workers=2)], ids=["prod", "minimal"])
def test_every_step_script_is_shellcheck_clean(config, tmp_path):
    result = run(config)
    checked = 0
    for step in result.of_type("command:remote:Command"):
        create = step.input("create")
        _shellcheck(create if step.name.endswith("-drain") else _script_of(create), tmp_path, step.name)
        checked += 1
        if step.input("delete"):
            _shellcheck(step.input("delete"), tmp_path, step.name + "-delete")
            checked += 1
    assert checked >= 2 * 2 + 2 + 1


# ---------------------------------------------------------------- apply: install, check, rollback
def _apply(tmp_path: Path, files: dict, verify: tuple[str, ...], activate: tuple[str, ...] = (), post=()):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    script = steps.apply_script(checks=steps.Checks(verify, activate), post=post, root=str(root))
    return root, subprocess.run(["bash", "-c", script], input=steps.payload(files), capture_output=True, text=True,
                                timeout=60)


def test_apply_installs_files_with_mode_and_owner_then_activates(tmp_path):
    files = {
        "etc/app/app.conf": RenderedFile("good = 1\n", 0o644, "root"),
        "var/lib/app/secret.key": RenderedFile("k\n", 0o600, "nobody"),
    }
    marker = tmp_path / "activated"
    root, proc = _apply(tmp_path, files, verify=(f"grep -q 'good' {tmp_path}/root/etc/app/app.conf",),
                        activate=(f"touch {marker}",), post=("echo done-post",))
    assert proc.returncode == 0, proc.stderr
    conf, key = root / "etc/app/app.conf", root / "var/lib/app/secret.key"
    assert conf.read_text() == "good = 1\n" and (conf.stat().st_mode & 0o777) == 0o644
    assert (key.stat().st_mode & 0o777) == 0o600
    if os.geteuid() == 0:
        import pwd

        assert pwd.getpwuid(key.stat().st_uid).pw_name == "nobody"
        # Parent directories are traversable (0755), not 0700 from the script's umask.
        assert ((root / "var/lib/app").stat().st_mode & 0o777) == 0o755
    assert marker.exists() and "done-post" in proc.stdout
    # The staging dir and the backups are gone.
    assert not list(Path("/var/tmp").glob(f"{Path(steps.STAGING_PREFIX).name}*.backup"))


def test_a_failed_check_restores_the_old_files_and_reloads_nothing(tmp_path):
    root = tmp_path / "root"
    (root / "etc/app").mkdir(parents=True)
    (root / "etc/app/app.conf").write_text("good = 1\n")
    os.chmod(root / "etc/app/app.conf", 0o640)
    marker = tmp_path / "activated"
    files = {
        "etc/app/app.conf": RenderedFile("broken\n", 0o644),
        "etc/app/extra.conf": RenderedFile("new file\n", 0o644),
    }
    _, proc = _apply(tmp_path, files, verify=(f"grep -q 'good' {root}/etc/app/app.conf",),
                     activate=(f"touch {marker}",), post=(f"touch {marker}.post",))
    assert proc.returncode == 1
    assert "check failed" in proc.stderr and "previous files restored, nothing reloaded" in proc.stderr
    assert (root / "etc/app/app.conf").read_text() == "good = 1\n"
    assert ((root / "etc/app/app.conf").stat().st_mode & 0o777) == 0o640
    assert not (root / "etc/app/extra.conf").exists()  # files that were new are removed again
    assert not marker.exists() and not Path(f"{marker}.post").exists()


def test_apply_is_idempotent(tmp_path):
    files = {"etc/app/app.conf": RenderedFile("good\n")}
    for _ in range(2):
        root, proc = _apply(tmp_path, files, verify=(f"grep -q good {tmp_path}/root/etc/app/app.conf",))
        assert proc.returncode == 0, proc.stderr
    assert (root / "etc/app/app.conf").read_text() == "good\n"


def test_payload_is_reproducible_and_round_trips():
    files = {"b/x": RenderedFile("x", 0o600, "debian-tor"), "a/y": RenderedFile("y"), "k": steps_binary()}
    assert steps.payload(files) == steps.payload(dict(reversed(list(files.items()))))
    back = steps.unpack(steps.payload(files))
    assert back["b/x"] == RenderedFile("x", 0o600, "debian-tor") and back["a/y"] == RenderedFile("y", 0o644, "root")
    assert back["k"].content == b"\x00\xff binary"
    with pytest.raises(ValueError, match="relative to /"):
        steps.payload({"/etc/x": RenderedFile("x")})
    with pytest.raises(ValueError, match="no '..'"):
        steps.payload({"etc/../x": RenderedFile("x")})


def steps_binary():
    from nodes.bootstrap import BinaryFile

    return BinaryFile(b"\x00\xff binary")


# ---------------------------------------------------------------- the real tools on what the steps install
@pytest.mark.tools
def test_worker_files_pass_tor_and_nginx_checks_as_the_step_runs_them(tmp_path):
    """The step's own verify commands, run against the worker files rendered into a
    scratch root (paths rewritten from / to the root): tor and nginx accept them."""
    from nodes.render import Layout, WorkerSpec, render_worker

    config = parse_config({k.split(":", 1)[1]: v for k, v in prod_config().items() if k.startswith("onionstack:")})
    spec = worker_spec(config)
    scratch = WorkerSpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__},
                            "layout": Layout(root=str(tmp_path), run_dir=str(tmp_path / "run")),
                            "tor_user": None, "nginx_user": None})
    files = render_worker(scratch)
    (tmp_path / "run").mkdir()
    for rel, f in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f.content)
        p.chmod(f.mode)
    for d in scratch.daemon_names:
        Path(scratch.data_dir(d)).chmod(0o700)
        for s in scratch.sites:
            Path(scratch.hs_dir(d, s)).chmod(0o700)
        torrc = tmp_path / "etc/onionstack/tor" / f"{d}.torrc"
        proc = subprocess.run(["tor", "--verify-config", "-f", str(torrc)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
    # The directories the worker script creates before it installs the files.
    from nodes.render import worker_directories

    for d in worker_directories(scratch):
        Path(d.path).mkdir(parents=True, exist_ok=True)
        Path(d.path).chmod(d.mode)
    proc = subprocess.run(["nginx", "-t", "-q", "-c", str(tmp_path / "etc/onionstack/nginx/nginx.conf"),
                           "-e", "stderr"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # ...and the worker script runs exactly these checks (same files, at the live paths).
    script = worker_script(spec)
    for d in spec.daemon_names:
        assert f"tor --verify-config -f /etc/onionstack/tor/{d}.torrc" in script
    assert "nginx -t -q -c /etc/onionstack/nginx/nginx.conf" in script


@pytest.mark.tools
def test_balancer_torrc_passes_tor_verify_config(tmp_path):
    torrc = tmp_path / "torrc"
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    torrc.write_text(BALANCER_TORRC.replace("/run/tor/control.authcookie", str(tmp_path / "cookie"))
                     + f"DataDirectory {data}\n")
    proc = subprocess.run(["tor", "--verify-config", "-f", str(torrc)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "SocksPort 127.0.0.1:9050" in BALANCER_TORRC and "ControlPort 127.0.0.1:9051" in BALANCER_TORRC


def test_scripts_never_contain_secrets_or_echo_files():
    """Secrets reach a machine only inside the stdin payload: no script mentions one."""
    for script in (balancer_base_script("/home/ubuntu/p"), balancer_core_script(["news"]),
                   database_script({"data": "vol-1", "journal": "vol-2", "log": "vol-3"})):
        assert "PRIVATE KEY" not in script and "ED25519-V3" not in script
        assert "cat /var/lib/onion-balancer/keys" not in script and "set -x" not in script
    db = database_script({"data": "vol-1", "journal": "vol-2", "log": "vol-3"})
    # The password goes from a 0600 file to psql's stdin via the printf builtin, never argv.
    assert "\" \"$pw\" | runuser -u postgres -- psql" in db and "pw=$(cat /etc/onionstack/postgres/password)" in db
    assert "psql -c \"ALTER" not in db and "PASSWORD '$" not in db


# ---------------------------------------------------------------- drain: bounded wait on the real status JSON
def _status(addresses_published=(), listed=(), written_at=None, uploaded=True):
    now = time.time() if written_at is None else written_at
    return {
        "version": 1, "written_at": now, "publish": True,
        "frontends": [{
            "name": "news", "address": "x",
            "instances": [{"address": a} for a in listed],
            "published_intro_points": [{"auth_key": f"{i:064x}", "instance": a} for i, a in enumerate(addresses_published)],
            "descriptors": [{"time_period": 1, "role": "current",
                             "hsdirs": [{"hsdir": "A" * 40, "state": "uploaded" if uploaded else "failed"}]}],
        }],
    }


def _drain(tmp_path: Path, status: dict | None, config_text: str, wait: int = 3, poll: int = 1):
    fake_python = tmp_path / "python"
    status_file = tmp_path / "status.json"
    if status is not None:
        status_file.write_text(json.dumps(status))
    # Stands in for the venv's `python -m onion status --json`: prints the status file.
    fake_python.write_text(f"#!/bin/sh\ncat {status_file}\n")
    fake_python.chmod(0o755)
    config = tmp_path / "balancer.yaml"
    config.write_text(config_text)
    os.utime(config, (time.time() - 60, time.time() - 60))
    gone = [mock_instance_address("worker-3-tor-nginx", "tor1", "news")]
    script = drain_script(gone, wait=wait, poll=poll, config=str(config), python=str(fake_python),
                          state_dir=str(tmp_path), package_lib=str(tmp_path))
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    return gone[0], proc, time.monotonic() - started


def test_drain_returns_once_the_balancer_publishes_without_the_instance(tmp_path):
    other = mock_instance_address("worker-1-tor-nginx", "tor1", "news")
    _, proc, took = _drain(tmp_path, _status([other], [other]), f"frontends: [{other}.onion]\n", wait=30)
    assert proc.returncode == 0 and "publishes without" in proc.stdout and took < 10


def test_drain_waits_bounded_then_proceeds_with_a_warning(tmp_path):
    other = mock_instance_address("worker-1-tor-nginx", "tor1", "news")
    gone = mock_instance_address("worker-3-tor-nginx", "tor1", "news")
    _, proc, took = _drain(tmp_path, _status([other, gone], [other]), f"frontends: [{other}.onion]\n", wait=3)
    assert proc.returncode == 0
    assert "WARNING: not drained after 3 s" in proc.stderr and "still published" in proc.stderr
    assert 2 <= took < 15  # date +%s granularity: the deadline is 3 s from a whole second


@pytest.mark.parametrize("status,why", [
    (_status(["?"], []), "still published"),                       # unattributed intro points
    (_status([], [], written_at=time.time() - 3600), "stale"),      # daemon not running
    (_status([], [], uploaded=False), "no descriptor uploaded"),    # restarted, nothing uploaded yet
])
def test_drain_is_conservative(tmp_path, status, why):
    _, proc, _ = _drain(tmp_path, status, "frontends: []\n", wait=2)
    assert proc.returncode == 0 and "WARNING" in proc.stderr and why in proc.stderr


def test_drain_does_not_wait_when_the_balancer_still_lists_the_instance(tmp_path):
    """A whole-stack destroy deletes the drain while the balancer config still names the
    worker (nothing re-rendered it): waiting could never succeed, so it goes on at once."""
    gone = mock_instance_address("worker-3-tor-nginx", "tor1", "news")
    _, proc, took = _drain(tmp_path, _status([gone], [gone]), f"frontends: [{gone}.onion]\n", wait=30)
    assert proc.returncode == 0 and "still lists" in proc.stdout and took < 5


def test_drain_without_a_balancer_core_goes_on(tmp_path):
    script = drain_script(["x" * 56], config=str(tmp_path / "missing.yaml"), python=str(tmp_path / "nope"))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "no balancer core" in proc.stdout


# ---------------------------------------------------------------- the onion package for the balancer
def test_onion_package_tarball_is_complete_and_reproducible(tmp_path):
    """What balancer-onion-package copies: every module of `onion` (and only sources and
    requirements), importable on its own with the package's requirements."""
    import base64
    import gzip
    import io
    import sys
    import tarfile

    from nodes.bootstrap import ONION_PACKAGE_DIR, onion_package_tarball

    encoded = onion_package_tarball()
    assert encoded == onion_package_tarball()
    (tmp_path / "pkg").mkdir()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded)))) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "pkg", filter="data")
    expected = sorted(f"onion/{p.name}" for p in ONION_PACKAGE_DIR.glob("*.py")) + ["onion/requirements.txt"]
    assert names == sorted(expected)
    proc = subprocess.run([sys.executable, "-c", "import onion.balancer, onion.servicecli, onion.status; "
                           "import onion, sys; print(onion.__file__)"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "pkg")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(tmp_path / "pkg"))
    # The balancer installs onion/requirements.txt; it must not pull in pulumi or the stack.
    reqs = [line.split("#")[0].strip().lower() for line in (tmp_path / "pkg/onion/requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r] and not any(r.startswith(("pulumi", "boto", "jinja2")) for r in reqs)


def test_package_copy_step():
    result = run(prod_config())
    copy = result.named("balancer-onion-package")
    from nodes.bootstrap import onion_package_tarball

    assert copy.inputs["source"].text == onion_package_tarball()
    assert copy.input("remotePath") == "/home/ubuntu/onionstack-onion.tar.gz.b64"
    assert copy.input("triggers")[0] == result.named("balancer-instance").id
    base = result.named("balancer-base")
    assert "base64 -d < /home/ubuntu/onionstack-onion.tar.gz.b64" in base.input("create")
    assert copy.input("triggers")[1] in base.input("triggers")  # a new package re-runs the install
