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

from nodes.payload import BinaryFile, payload, unpack
from nodes.render import RenderedFile
from nodes.scripts import STAGING_PREFIX, drain_script, runner_script
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
            _shellcheck(_script_of(step.input("delete")), tmp_path, step.name + "-delete")
            checked += 1
    assert checked >= 2 * 2 + 2 + 1
    # ...and the templates' own scripts in every payload (what the runner runs).
    for step in result.of_type("command:remote:Command"):
        stdin = step.input("stdin")
        if not stdin:
            continue
        for path, f in unpack(stdin).items():
            if path.endswith(".sh"):
                _shellcheck(f.content.split("\n", 1)[1], tmp_path, step.name + "-" + path.rsplit("/", 1)[1])
                checked += 1
    assert checked >= 2 * 2 + 2 + 1 + 2 * (2 + 1 + 1)


# ---------------------------------------------------------------- the runner around the templates' scripts
def test_runner_runs_install_packages_then_apply_on_the_staged_files(tmp_path):
    """The runner unpacks the payload and runs the role's own rendered scripts from it:
    install-packages.sh first, then apply.sh STAGE with every file staged; neither sees
    the payload on stdin; the stage is removed afterwards; a failing apply fails the step."""
    log = tmp_path / "log"
    files = {
        "usr/local/lib/onionstack/install-packages.sh": RenderedFile(
            f"echo install >> {log}\n[ -t 0 ] || [ -z \"$(cat)\" ] || echo install-read-stdin >> {log}\n", 0o755),
        "usr/local/lib/onionstack/apply.sh": RenderedFile(
            f"echo \"apply $1\" >> {log}\ncat \"$1/etc/app.conf\" >> {log}\n"
            f"[ -z \"$(cat)\" ] || echo apply-read-stdin >> {log}\nexit \"${{FAIL:-0}}\"\n", 0o755),
        "etc/app.conf": RenderedFile("the config\n"),
    }
    script = runner_script("usr/local/lib/onionstack")
    proc = subprocess.run(["bash", "-c", script], input=payload(files), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "install" and lines[1].startswith("apply " + STAGING_PREFIX)
    assert lines[2:] == ["the config"]
    assert not Path(lines[1].split()[1]).exists()  # the stage is gone
    log.unlink()
    proc = subprocess.run(["bash", "-c", script], input=payload(files), capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FAIL": "1"})
    assert proc.returncode == 1 and log.read_text().splitlines()[-1] == "the config"


def test_payload_is_reproducible_and_round_trips():
    files = {"b/x": RenderedFile("x", 0o600, "debian-tor"), "a/y": RenderedFile("y"), "k": steps_binary()}
    assert payload(files) == payload(dict(reversed(list(files.items()))))
    back = unpack(payload(files))
    assert back["b/x"] == RenderedFile("x", 0o600, "debian-tor") and back["a/y"] == RenderedFile("y", 0o644, "root")
    assert back["k"].content == b"\x00\xff binary"
    with pytest.raises(ValueError, match="relative to /"):
        payload({"/etc/x": RenderedFile("x")})
    with pytest.raises(ValueError, match="no '..'"):
        payload({"etc/../x": RenderedFile("x")})


def steps_binary():
    return BinaryFile(b"\x00\xff binary")


def test_step_scripts_never_contain_secrets():
    """Secrets reach a machine only inside the stdin payload: no step script mentions one,
    and none turns on tracing (set -x would print the payload's handling)."""
    result = run(prod_config())
    for step in result.of_type("command:remote:Command"):
        for key in ("create", "delete"):
            text = step.input(key) or ""
            assert "PRIVATE KEY" not in text and "ED25519-V3" not in text and "set -x" not in text, step.name


# ---------------------------------------------------------------- drain: bounded wait on the real status JSON
def _status(addresses_published=(), listed=(), written_at=None, uploaded=True, pending_hsdir=False):
    now = time.time() if written_at is None else written_at
    hsdirs = [{"hsdir": "A" * 40, "state": "uploaded" if uploaded else "failed"}]
    if pending_hsdir:
        hsdirs.append({"hsdir": "B" * 40, "state": "not yet"})
    return {
        "version": 1, "written_at": now, "publish": True,
        "frontends": [{
            "name": "news", "address": "x",
            "instances": [{"address": a} for a in listed],
            "published_intro_points": [{"auth_key": f"{i:064x}", "instance": a} for i, a in enumerate(addresses_published)],
            "descriptors": [{"time_period": 1, "role": "current", "hsdirs": hsdirs}],
        }],
    }


REPO = Path(__file__).resolve().parent.parent
OTHER = mock_instance_address("worker-1-tor-nginx", "tor1", "news")
GONE = mock_instance_address("worker-3-tor-nginx", "tor1", "news")


def _balancer_config(tmp_path: Path, instances) -> Path:
    """A balancer config as balancer-core renders it (the parts `onion drained` reads)."""
    import yaml

    config = tmp_path / "balancer.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "frontends": [{"name": "news", "key_file": str(tmp_path / "news.key"),
                       "instances": [{"address": f"{a}.onion"} for a in instances]}]}))
    os.utime(config, (time.time() - 60, time.time() - 60))
    return config


def _drain(tmp_path: Path, status: dict | None, config_instances=(OTHER,), wait: int = 3, poll: int = 1):
    """The drain's delete script on this machine, with this venv's python and the repo's
    `onion` package in place of the balancer's: the real `python -m onion drained` reads
    the status file as the daemon writes it (onion.status.write_status)."""
    import sys

    from onion.status import write_status

    config = _balancer_config(tmp_path, config_instances)
    if status is not None:
        write_status(str(tmp_path / "state"), status)
    script = drain_script([GONE], wait=wait, poll=poll, config=str(config), python=sys.executable,
                          state_dir=str(tmp_path / "state"), package_lib=str(REPO))
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def test_drain_returns_once_the_balancer_publishes_without_the_instance(tmp_path):
    proc, took = _drain(tmp_path, _status([OTHER], [OTHER]), wait=30)
    assert proc.returncode == 0 and "publishes without" in proc.stdout and took < 10, proc.stderr


def test_drain_waits_bounded_then_proceeds_with_a_warning(tmp_path):
    proc, took = _drain(tmp_path, _status([OTHER, GONE], [OTHER]), wait=3)
    assert proc.returncode == 0
    # the reason (it may name instance addresses) on stdout, secret; stderr, logged, without it
    assert "WARNING: not drained after 3 s" in proc.stderr and "still published" in proc.stdout
    assert "still published" not in proc.stderr
    assert 2 <= took < 15  # date +%s granularity: the deadline is 3 s from a whole second


# Factories, not values: a status built at collection time would predate the config file the
# test writes minutes later in a full run, and the drain would rightly call it outdated.
@pytest.mark.parametrize("make_status,why", [
    (lambda: _status(["?"], []), "still published"),                       # unattributed intro points
    (lambda: _status([], [], written_at=time.time() - 3600), "stale"),      # daemon not running
    (lambda: _status([], [], written_at=time.time() - 120), "predates"),    # not reloaded since the config
    (lambda: _status([], [], uploaded=False), "not every HSDir"),           # restarted, upload failed
    (lambda: _status([], [], pending_hsdir=True), "not every HSDir"),       # one HSDir still has the old one
    (lambda: {**_status([], []), "frontends": []}, "no frontends"),         # a core that has not loaded its config
    (lambda: None, "no status file"),                                       # the core never wrote one
], ids=["unattributed", "stale", "predates-config", "upload-failed", "hsdir-pending", "no-frontends", "no-status"])
def test_drain_is_conservative(tmp_path, make_status, why):
    proc, _ = _drain(tmp_path, make_status(), wait=2)
    assert proc.returncode == 0 and "WARNING" in proc.stderr and why in proc.stdout, (proc.stdout, proc.stderr)


def test_drain_does_not_wait_when_the_balancer_still_lists_the_instance(tmp_path):
    """A whole-stack destroy deletes the drain while the balancer config still names the
    worker (nothing re-rendered it): waiting could never succeed, so it goes on at once."""
    proc, took = _drain(tmp_path, _status([GONE], [GONE]), config_instances=(OTHER, GONE), wait=30)
    assert proc.returncode == 0 and "still lists" in proc.stdout and took < 5, proc.stderr


def test_drain_without_addresses_goes_on(tmp_path):
    proc = subprocess.run(["bash", "-c", drain_script([], config=str(tmp_path / "c"), python="/bin/true")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "no instance addresses recorded" in proc.stdout


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

    from nodes.payload import ONION_PACKAGE_DIR, onion_package_tarball

    encoded = onion_package_tarball()
    assert encoded == onion_package_tarball()
    (tmp_path / "pkg").mkdir()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded)))) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "pkg", filter="data")
    expected = ([f"onion/{p.name}" for p in ONION_PACKAGE_DIR.glob("*.py")]
                + [f"onion/schema/{p.name}" for p in (ONION_PACKAGE_DIR / "schema").glob("*.json")]
                + ["onion/requirements.txt", "onion/requirements.lock", "pyproject.toml"])
    assert names == sorted(expected) and "onion/schema/balancer.schema.json" in names
    proc = subprocess.run([sys.executable, "-c", "import onion.balancer, onion.servicecli, onion.status, onion.drain; "
                           "import onion, sys; print(onion.__file__)"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "pkg")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(tmp_path / "pkg"))
    # The balancer installs exactly onion/requirements.lock; it must not pull in pulumi or the stack.
    reqs = [line.split("#")[0].strip().lower() for line in (tmp_path / "pkg/onion/requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r] and not any(r.startswith(("pulumi", "boto", "jinja2")) for r in reqs)
    lock = (tmp_path / "pkg/onion/requirements.lock").read_text()
    assert lock == (ONION_PACKAGE_DIR / "requirements.lock").read_text() and "--hash=sha256:" in lock
    assert not any(line.lower().startswith(("pulumi", "boto", "jinja2")) for line in lock.splitlines())
    # `onion schema` on the balancer finds its file in the copied package.
    schema = subprocess.run([sys.executable, "-m", "onion", "schema", "--path"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}, capture_output=True, text=True,
                            timeout=60)
    assert schema.returncode == 0 and Path(schema.stdout.strip()).is_file(), schema.stderr
    assert schema.stdout.strip().startswith(str(tmp_path / "pkg"))


def test_package_copy_step():
    result = run(prod_config())
    copy = result.named("balancer-onion-package")
    from nodes.payload import onion_package_tarball

    assert copy.inputs["source"].text == onion_package_tarball()
    assert copy.input("remotePath") == "/home/ubuntu/onionstack-onion.tar.gz.b64"
    assert copy.input("triggers")[0] == result.named("balancer-instance").id
    base = result.named("balancer-package")
    assert "base64 -d < /home/ubuntu/onionstack-onion.tar.gz.b64" in base.input("create")
    assert copy.input("triggers")[1] in base.input("triggers")  # a new package re-runs the install
    # ...which installs exactly the package's lock (tests/test_balancer_package_step.py runs it)
    script = shlex.split(base.input("create"))[4]
    assert '-r "$lock"' in script and 'lock="$lib.new/onion/requirements.lock"' in script
    installs = [line for line in script.splitlines() if " install " in line and "pip" in line]
    # ...and the package itself from the wheel built on the machine: no index, no dependencies
    assert len(installs) == 3 and all("--no-deps" in line and ("--require-hashes" in line or "--no-index" in line)
                                      for line in installs), installs
    assert sum("--no-index" in line for line in installs) == 1 and '"$wheels"/*.whl' in script


def test_drain_polls_until_the_balancer_has_republished(tmp_path):
    """The balancer still publishes the removed instance's intro points when the drain
    starts; it republishes without them a few seconds later: the drain notices on a later
    poll and returns (no warning)."""
    import sys

    from onion.status import write_status

    config = _balancer_config(tmp_path, [OTHER])
    state = str(tmp_path / "state")
    write_status(state, _status([OTHER, GONE], [OTHER]))
    script = drain_script([GONE], wait=60, poll=1, config=str(config), python=sys.executable,
                          state_dir=state, package_lib=str(REPO))
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert proc.poll() is None  # still waiting
    write_status(state, _status([OTHER], [OTHER]))
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0 and "publishes without" in out and "WARNING" not in err, (out, err)
    assert 3 <= took < 20


def test_worker_script_reports_every_instance_address_once_tor_wrote_it(tmp_path):
    """The worker step end to end on this machine, with the templates' scripts replaced by
    stand-ins: apply.sh "starts tor", which writes the hostname files a moment later; the
    step waits for them and prints lines that parse into the balancer's instance lists."""
    from nodes.scripts import parse_instance_addresses, worker_setup_script as worker_script
    from nodes.render import Layout, SiteSpec, WorkerSpec

    sites = (SiteSpec("news", "example.com", mock_instance_address("m", "x", "news")),
             SiteSpec("shop", "example.org", mock_instance_address("m", "x", "shop")))
    spec = WorkerSpec(sites=sites, resolver="10.42.0.2", tor_daemons=2,
                      layout=Layout(root=str(tmp_path), run_dir=str(tmp_path / "run")))
    expected = {s.name: [mock_instance_address("w", d, s.name) for d in spec.daemon_names] for s in sites}
    writes = "\n".join(f"mkdir -p {spec.hs_dir(d, s)} && echo {expected[s.name][i]}.onion > {spec.hs_dir(d, s)}/hostname"
                       for s in sites for i, d in enumerate(spec.daemon_names))
    files = {
        "usr/local/lib/onionstack/install-packages.sh": RenderedFile("true\n", 0o755),
        # tor writes its hostname files a little after it starts
        "usr/local/lib/onionstack/apply.sh": RenderedFile(f"( sleep 3; {writes} ) &\n", 0o755),
    }
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", worker_script(spec)], input=payload(files), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 2.5  # it waited for tor
    assert parse_instance_addresses(proc.stdout, ["news", "shop"], ["tor1", "tor2"]) == expected


def test_worker_script_fails_clearly_when_tor_writes_no_hostname(tmp_path):
    from nodes.scripts import worker_setup_script as worker_script
    from nodes.render import Layout, SiteSpec, WorkerSpec

    spec = WorkerSpec(sites=(SiteSpec("news", "example.com", mock_instance_address("m", "x", "news")),),
                      resolver="10.42.0.2", tor_daemons=1,
                      layout=Layout(root=str(tmp_path), run_dir=str(tmp_path / "run")))
    files = {"usr/local/lib/onionstack/install-packages.sh": RenderedFile("true\n", 0o755),
             "usr/local/lib/onionstack/apply.sh": RenderedFile("true\n", 0o755)}
    proc = subprocess.run(["bash", "-c", worker_script(spec, hostname_wait=2)], input=payload(files),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"tor tor1 wrote no {spec.hs_dir('tor1', spec.sites[0])}/hostname within 2 s" in proc.stderr
    assert "journalctl -u onionstack-tor@tor1" in proc.stderr


def test_worker_script_reports_nothing_when_apply_fails(tmp_path):
    """A failed check (apply.sh exits 1) fails the step before any address is printed: the
    balancer is never rendered from a worker whose configuration did not apply."""
    from nodes.scripts import ADDRESS_LINE, worker_setup_script
    from nodes.render import Layout, SiteSpec, WorkerSpec

    spec = WorkerSpec(sites=(SiteSpec("news", "example.com", mock_instance_address("m", "x", "news")),),
                      resolver="10.42.0.2", tor_daemons=1,
                      layout=Layout(root=str(tmp_path), run_dir=str(tmp_path / "run")))
    hostname = Path(spec.hs_dir("tor1", spec.sites[0])) / "hostname"
    hostname.parent.mkdir(parents=True)
    hostname.write_text(mock_instance_address("w", "tor1", "news") + ".onion\n")  # an old instance's
    files = {"usr/local/lib/onionstack/install-packages.sh": RenderedFile("true\n", 0o755),
             "usr/local/lib/onionstack/apply.sh": RenderedFile("echo 'check failed' >&2; exit 1\n", 0o755)}
    proc = subprocess.run(["bash", "-c", worker_setup_script(spec, hostname_wait=2)], input=payload(files),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "check failed" in proc.stderr and ADDRESS_LINE not in proc.stdout


@pytest.mark.tools
def test_worker_step_end_to_end_with_real_apply_and_tor(tmp_path):
    """The whole worker step on this machine, scratch root: the real payload of
    render_worker, the real apply.sh (install, tor --verify-config, nginx -t), a stand-in
    systemctl that starts each tor daemon the way its unit does (debian-tor, no network:
    DisableNetwork 1), and the step's own wait + report. The addresses it prints are the
    ones tor generated, and they parse into the balancer's instance lists.
    (install-packages.sh is replaced: it would reach the package mirrors.)"""
    import tempfile

    from nodes.scripts import parse_instance_addresses, worker_setup_script as worker_script
    from nodes.render import Layout, SiteSpec, TorTuning, WorkerSpec, render_worker

    root = Path(tempfile.mkdtemp(prefix="os-e2e-", dir="/tmp"))  # short: unix socket paths
    os.chmod(root, 0o755)
    bin_dir, marker, log = tmp_path / "bin", tmp_path / "systemd", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    marker.mkdir()
    tor = shutil.which("tor")
    # `systemctl enable --now ... onionstack-tor@torN.service ...`: start that tor as the unit would.
    (bin_dir / "systemctl").write_text(f"""#!/bin/bash
echo "systemctl $*" >> {log}
if [ "$1" = enable ] && [ "$2" = --now ]; then
  for unit in "${{@:3}}"; do
    case "$unit" in onionstack-tor@*.service)
      d=${{unit#onionstack-tor@}}; d=${{d%.service}}
      setsid setpriv --reuid=debian-tor --regid=debian-tor --init-groups --no-new-privs \\
        {tor} -f {root}/etc/onionstack/tor/$d.torrc --RunAsDaemon 0 --DisableNetwork 1 \\
        >{tmp_path}/tor-$d.log 2>&1 </dev/null &
      echo $! >> {tmp_path}/tor.pids ;;
    esac
  done
fi
""")
    (bin_dir / "systemd-tmpfiles").write_text("#!/bin/sh\ntrue\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    sites = (SiteSpec("news", "example.com", mock_instance_address("m", "x", "news")),
             SiteSpec("shop", "example.org", mock_instance_address("m", "x", "shop")))
    spec = WorkerSpec(sites=sites, resolver="10.42.0.2", tor_daemons=2, tor=TorTuning(sandbox=False),
                      layout=Layout(root=str(root)))
    files = dict(render_worker(spec))
    files["usr/local/lib/onionstack/install-packages.sh"] = RenderedFile("echo stand-in\n", 0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ONIONSTACK_SYSTEMD_MARKER": str(marker)}
    try:
        proc = subprocess.run(["bash", "-c", worker_script(spec, hostname_wait=60)], input=payload(files),
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr + "".join(p.read_text() for p in tmp_path.glob("tor-*.log"))
        assert "configuration checked (changed)" in proc.stdout
        got = parse_instance_addresses(proc.stdout, ["news", "shop"], ["tor1", "tor2"])
        for site in sites:
            for i, d in enumerate(spec.daemon_names):
                hostname = Path(spec.hs_dir(d, site)) / "hostname"
                assert got[site.name][i] + ".onion" == hostname.read_text().strip()
        # one tor per daemon, one instance address per (daemon, site), all distinct
        flat = [a for v in got.values() for a in v]
        assert len(set(flat)) == 4
    finally:
        if (tmp_path / "tor.pids").exists():
            for pid in (tmp_path / "tor.pids").read_text().split():
                try:
                    os.kill(int(pid), 15)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)


def test_role_script_stages_on_tmpfs_and_cleans_up_when_killed(tmp_path):
    """The stage (it holds keys and passwords) lives under /run and is removed even when
    the step is cut short; apply.sh's own temporary files go to /run too (TMPDIR)."""
    import signal

    log = tmp_path / "log"
    files = {
        "usr/local/lib/onionstack/install-packages.sh": RenderedFile("true\n", 0o755),
        "usr/local/lib/onionstack/apply.sh": RenderedFile(
            f"echo \"$1 $TMPDIR\" > {log}\nsleep 30\n", 0o755),
        "etc/secret": RenderedFile("s3cret\n", 0o600),
    }
    # Its own session: the signal goes to the whole process group, as a dropped SSH
    # session's SIGHUP does (bash runs its trap once the foreground child has died).
    proc = subprocess.Popen(["bash", "-c", runner_script("usr/local/lib/onionstack")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc.stdin.write(payload(files))
    proc.stdin.close()
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stage, tmpdir = log.read_text().split()
    assert stage.startswith("/run/onionstack-stage.") and tmpdir == "/run"
    assert (Path(stage) / "etc/secret").exists() and (Path(stage).stat().st_mode & 0o777) == 0o700
    os.killpg(proc.pid, signal.SIGHUP)
    proc.wait(timeout=20)
    assert proc.returncode != 0 and not Path(stage).exists()
