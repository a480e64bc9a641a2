"""The rehearsal from nothing to the last check, one printed line per check; the first
broken check stops it (`CheckFailed`). Used by `python -m lab rehearse`, the `rehearsal`
pytest and bench/rehearsal.py.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab.rehearse.run import ROOT, Deploy, Rehearsal

Progress = Callable[[str], None]


# systemd's default PATH: what the hosts' services and SSH sessions find commands on
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# The scale-in: requests go on for AFTER_GONE s after the removed worker is gone; those
# that start SETTLED s or more after it must all succeed (at least 3 of them).
AFTER_GONE, SETTLED = 45, 30


class CheckFailed(AssertionError):
    pass


@dataclass
class Report:
    print: Progress = print
    passed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        if not ok:
            self.print(f"FAIL  {name}: {detail}")
            raise CheckFailed(f"{name}: {detail}")
        self.passed.append(name)
        self.print(f"PASS  {name}: {detail}")


def wheelhouse(cache: Path = ROOT / ".lab") -> Path:
    """The balancer's wheels for an offline install, for the hosts' python (this machine's
    /usr/bin/python3): the files of onion/requirements.lock, hash-checked, downloaded once
    per lock (onion/requirements.txt and the build tools an sdist needs, without a lock)."""
    lock = ROOT / "onion" / "requirements.lock"
    source = lock if lock.exists() else ROOT / "onion" / "requirements.txt"
    # the python3 a host's steps run: the first on systemd's default PATH (not this shell's)
    host_python = shutil.which("python3", path=HOST_PATH)
    if host_python is None:
        raise RuntimeError(f"no python3 on {HOST_PATH}: the hosts' image has none; run `bash scripts/setup`")
    python = subprocess.run([host_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    digest = hashlib.sha256(source.read_bytes() + python.encode()).hexdigest()[:12]
    target = cache / f"wheelhouse-{digest}"
    if target.is_dir():
        return target
    tmp = target.with_name(target.name + ".tmp")
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    # pip of the hosts' own python picks the files that python installs
    subprocess.run([host_python, "-m", "venv", str(tmp / "venv")], check=True)
    pip = [str(tmp / "venv" / "bin" / "pip"), "download", "--quiet", "--disable-pip-version-check",
           "-d", str(tmp / "wheels")]
    if lock.exists():
        subprocess.run(pip + ["--require-hashes", "--no-deps", "-r", str(lock)], check=True)
    else:
        subprocess.run(pip + ["-r", str(source), "setuptools", "wheel"], check=True)
    (tmp / "wheels").rename(target)
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    return target


def _run(report: Report, name: str, fn, *args, **kw):
    """fn's result; an AssertionError, RuntimeError or TimeoutError is that check failing."""
    try:
        return fn(*args, **kw)
    except (AssertionError, RuntimeError, TimeoutError) as exc:
        report.check(name, False, str(exc))


def steps_of(deploy: Deploy, kind: str) -> list[str]:
    return sorted(o.name for o in deploy.ops if o.kind == kind)


def rehearse(state_dir: Path, *, workers: int = 2, tor_daemons: int = 2, voting_interval: int = 10,
             progress: Progress = print, report: Report | None = None, tie_to_parent: bool = False,
             keep: bool = False) -> Report:
    """Everything the issue lists, in order; tears down at the end (and on any error or
    Ctrl-C) unless `keep`."""
    if workers < 2:
        raise ValueError(f"workers: {workers}: the rehearsal scales in from at least 2 workers")
    report = report or Report(print=progress)
    r = Rehearsal(state_dir, workers=workers, tor_daemons=tor_daemons, voting_interval=voting_interval,
                  progress=progress, tie_to_parent=tie_to_parent)
    try:
        _all_checks(r, report, workers)
    finally:
        if not keep:
            undone = r.down()
            progress(f"teardown: undid {len(undone)} things (containers, mounts, links, processes)")
            for line in undone:
                if line.startswith("FAILED"):
                    progress(f"teardown: {line}")
    return report


def _all_checks(r: Rehearsal, report: Report, workers: int) -> None:
    from lab.client import ProbeLoop, fetch, split_around

    wheels = wheelhouse()
    first = r.up(wheels)
    report.timings.update(r.timings)
    report.check("first deploy", not first.error and not steps_of(first, "failed"),
                 first.error or f"{len(steps_of(first, 'create'))} steps created "
                 f"({', '.join(steps_of(first, 'create'))}) in {first.seconds['steps']:.0f} s")

    url = f"http://{r.frontend()}/"
    page = fetch(r.lab.net.client.socks_port, url, isolation="rehearsal-page", timeout=60)
    report.check("frontend answers with the origin's page",
                 page.ok and page.status == 200 and "Hello from" in page.body and r.frontend() in page.body,
                 f"HTTP {page.status} from {r.frontend()} via the lab client, origin page with links "
                 f"rewritten to the onion name" if page.ok else page.error)

    units = _run(report, "every unit active and enabled", r.check_units)
    report.check("every unit active and enabled", True, f"{len(units)} units: " + ", ".join(units))

    ok_user, refused = _run(report, "database accepts a worker, refuses the balancer", r.check_database)
    report.check("database accepts a worker, refuses the balancer", True,
                 f"worker-1 logged in as {ok_user}; balancer: {refused}")

    again = r.deploy(workers)
    report.timings["noop_run"] = again.seconds["total"]
    report.check("a second run changes nothing", not again.error and not again.changed(),
                 again.error or f"{len(again.ops)} steps unchanged, nothing ran "
                 f"({again.seconds['total']:.1f} s)" if not again.changed() else
                 f"changed: {[(o.kind, o.name) for o in again.changed()]}")

    t0 = time.monotonic()
    rebooted = "hosts rebooted: the site comes back without any step"
    r.fabric.reboot(sorted(r.fabric.hosts))
    booted = _run(report, rebooted, r.fabric.wait_booted)
    # Readers arriving now: each request from a lab client that forgot what it fetched
    # before (the descriptor cached before the reboot lists intro points that died with
    # the workers' tors, and one fetched while the balancer was still catching up can be
    # as stale; tor's client would not fetch it again from the same HSDirs within 15 min).
    _run(report, rebooted, r.wait_new_reader, timeout=300)
    units = _run(report, rebooted, r.check_units)
    report.check(rebooted, True,
                 f"all {len(r.fabric.hosts)} hosts restarted (booted in {booted:.0f} s); frontend answered "
                 f"{time.monotonic() - t0:.0f} s after the reboot began; {len(units)} units active and enabled")

    try:
        client_log = r.client_info_log("client-scalein.log")
    except Exception as exc:  # noqa: BLE001 - a diagnostic only: the check runs without it
        client_log = f"none ({exc})"
    probes = ProbeLoop(r.lab.net.client.socks_port, url, interval=3.0, prefix="scalein").start()
    try:
        scale = r.deploy(workers - 1)
        time.sleep(AFTER_GONE)  # the site must go on serving once the worker is gone
    finally:
        results = probes.stop()
    gone = f"worker-{workers}"
    name = f"scale {workers} -> {workers - 1}: the drain runs before the worker goes, the site stays up"
    drains = [o for o in scale.ops if o.kind == "delete" and o.name == f"{gone}-drain" and o.ran]
    drained_at = drains[0].started + drains[0].seconds if drains else None
    off = scale.removed.get(gone)
    # Before the worker powers off (the balancer re-rendered, the drain waiting for the
    # republish) no request may fail. A request in flight when it powers off can break (its
    # rendezvous circuit ends there). Right after it is gone, a reader whose cached frontend
    # descriptor still lists its introduction points can be introduced to it and wait in
    # vain (seen here: INTRODUCE_ACK success, then no RENDEZVOUS2, 30 s timeout, at +2..+5 s):
    # reported; every request that starts SETTLED s or more after it is gone must succeed.
    before, cut, after = split_around(results, *off) if off else (results, [], [])
    failed_before = [p for p in before if not p.ok]
    cut_failed = [p for p in cut if not p.ok]
    settled = [p for p in after if p.at >= off[1] + SETTLED] if off else []
    transient = [p for p in after if not p.ok and p not in settled]
    failed = failed_before + [p for p in settled if not p.ok]
    status = _run(report, name, r.balancer_status)
    listed = {i["address"] for fe in status.get("frontends", []) for i in fe.get("instances", [])}

    def when(p) -> str:
        rel = f"{p.at - off[1]:+.0f} s from the poweroff" if off else ""
        return f"{time.strftime('%H:%M:%S', time.localtime(p.at))} ({rel}) after {p.seconds:.1f} s ({p.error})"

    report.check(name,
                 not scale.error and drained_at is not None and off is not None and drained_at <= off[0]
                 and not failed and len(settled) >= 3 and len(listed) == (workers - 1) * r.tor_daemons,
                 scale.error or (f"drain of {gone} ran {drains[0].seconds:.0f} s and ended "
                                 f"{off[0] - drained_at:.1f} s before {gone} powered off; "
                                 f"{len(results)} requests: {len(before)} before it powered off "
                                 f"({len(failed_before)} failed), {len(cut)} in flight then ({len(cut_failed)} failed), "
                                 f"{len(after)} after ({len(transient)} failed within {SETTLED} s of it, "
                                 f"{len([p for p in settled if not p.ok])} of {len(settled)} later failed); "
                                 f"the balancer lists {len(listed)} instances"
                                 if drains and off else
                                 f"ops {[(o.kind, o.name) for o in scale.changed()]}, removed {scale.removed}")
                 + "".join(f"; failed: {when(p)}" for p in sorted(failed + cut_failed + transient, key=lambda p: p.at))
                 + (f"; the lab client's log of it: {client_log}" if failed + cut_failed + transient else ""))

    saved = r.swap_host_keys("balancer")
    since = time.time()
    impostor = r.deploy(workers - 1, overrides={"balancer": {"publish": False}}, max_step_seconds=180)
    ran = [o.name for o in impostor.ops if o.ran]
    accepted = r.sessions_accepted("balancer", since)
    report.check("a host with another host key stops the run before any secret is sent",
                 bool(impostor.error) and "host key" in impostor.error.lower() and not ran and accepted == 0,
                 f"the run failed ({impostor.error.splitlines()[0][:160] if impostor.error else 'it did NOT fail'}); "
                 f"steps that ran: {ran or 'none'}; SSH logins the impostor accepted: {accepted}")
    r.restore_host_keys("balancer", saved)
