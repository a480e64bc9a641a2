"""The operator's view on the lab (marker `lab`): a real Prometheus (Debian's binary) scrapes
a balancer core's /metrics, its tor's and the workers' tors' MetricsPorts on 127.0.0.1 with
the shipped alert rules; read-back repairs a wiped HSDir; killing every worker fires
"frontend unreachable" and `onion status --check` exits 2; a standby takes over when the
primary balancer dies.

Its own frontend key, two workers (ops1, ops2) and balancers on the session's network, so
the other lab tests keep theirs. Tests run in file order; the worker kill restores the
workers, the standby test (which kills this module's primary) is last.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.client import ProbeLoop, split_around, wait_reachable
from lab.monitor import start_prometheus, wait_for, wait_status

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parent.parent


def measure(name: str, value) -> None:
    print(f"[measure] {name} = {value}", flush=True)


def check(state_dir: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onion", "status", "--state-dir", state_dir, "--check"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)


def read_status(state_dir: str) -> dict:
    from onion.status import read_status as read

    return read(state_dir)


def current(status: dict) -> dict:
    """The descriptor of the time period clients use now (what read-back fetches)."""
    from onion.status import clients_descriptor

    return clients_descriptor(status["frontends"][0], status)


@pytest.fixture(scope="module")
def ops(lab):
    """Frontend key + 2 workers with tor MetricsPorts + the primary balancer (metrics, e2e
    probe every 10 s, read-back every 20 s, its tor's MetricsPort) + Prometheus."""
    saved = {k: lab.info.get(k) for k in ("frontend", "frontend_key_file", "frontend_cert", "balancer")}
    key = lab.make_frontend_key(tag="ops")
    key_file = Path(lab.info["frontend_key_file"])
    workers = lab.start_workers(2, tor_daemons=2, intro_points=3, tag="ops", metrics=True)
    instances = [a for w in workers for a in w.instance_addresses]
    port = lab.ports.take()
    primary = lab.start_balancer("onion", tag="opsprimary", key_file=key_file, instances=instances,
                                 tor_metrics=True, extra_config={
                                     "metrics": {"listen": f"127.0.0.1:{port}"},
                                     "frontend_probe": {"interval": 10, "timeout": 30},
                                     "readback": {"interval": 20}})
    for k, v in saved.items():  # the other lab tests keep their frontend and balancer
        if v is None:
            lab.info.pop(k, None)
        else:
            lab.info[k] = v
    lab.save()
    url = f"http://{key.hostname}/"
    wait_reachable(lab.net.client.socks_port, url, 240, "ops frontend")
    prom = start_prometheus(lab, balancers=[port], balancer_tors=[primary["tor_metrics_port"]],
                            worker_tors=[p for w in workers for p in w.metrics_ports])
    return {"key": key, "key_file": key_file, "workers": workers, "instances": instances, "primary": primary,
            "metrics_port": port, "prom": prom, "url": url,
            "balancer_job": f'job="onion-balancer",instance="127.0.0.1:{port}"'}


def test_healthy_site_is_reachable_in_prometheus(lab, ops):
    prom = ops["prom"]
    _, took = wait_for("onion_service_reachable 1 in Prometheus",
                       lambda: prom.value(f'onion_service_reachable{{{ops["balancer_job"]}}}') == 1, 180)
    measure("ops_reachable_in_prometheus_s", round(took, 1))
    assert prom.value(f'onion_balancer_instances_up{{{ops["balancer_job"]}}}') == 4
    # every worker tor's and the balancer tor's MetricsPort is scraped, with tor's own metrics
    up, _ = wait_for("every target scraped and up", lambda: (lambda t: t if all(t.values()) else None)(
        prom.targets_up()), 60, 1)
    assert len([t for t in up if t.startswith("tor-worker")]) == 4, up
    assert prom.value('count(count by (instance) ({job="tor-worker", __name__=~"tor_.+"}))') == 4
    assert prom.value('up{job="tor-balancer"}') == 1  # the balancer tor's MetricsPort answers
    # read-back: the current descriptor is served by HSDirs, as uploaded
    # (the period clients fetch now: role "current" or, between a period's start and the
    # next shared random value, "next")
    _, took = wait_for("read-back shows HSDirs serving", lambda: prom.value(
        f'onion_service_descriptor_reachable{{{ops["balancer_job"]}}}') == 1 and prom.value(
        f'max(onion_balancer_hsdirs_serving{{{ops["balancer_job"]}}})'), 120)
    proc = check(ops["primary"]["state_dir"])
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("lab: OK 4/4 instances up, "), proc.stdout
    assert " HSDirs serve rev " in proc.stdout.splitlines()[0] and "reachable" in proc.stdout


def seconds_to_next_period(status: dict, voting_interval: int) -> float:
    """Until the clients' next time period (tor: period starts are offset by 12 voting
    intervals; onion.hashring.NetworkTiming.time_period_start)."""
    tor = status["tor"]
    return (tor["time_period"] + 1) * tor["period_length_minutes"] * 60 + 12 * voting_interval - time.time()


def test_a_wiped_hsdir_is_noticed_by_read_back_and_repaired(lab, ops):
    state_dir = ops["primary"]["state_dir"]
    # A new time period re-uploads to every HSDir (and read-back starts over for it): a wipe
    # just before one is repaired by that, not by read-back (CI at 54c8265: wiped 31 s before
    # a period began, never read back as missing). Wipe early in a period.
    left = seconds_to_next_period(read_status(state_dir), lab.voting_interval)
    if left < 150:
        period = read_status(state_dir)["tor"]["time_period"]
        time.sleep(max(0.0, left))
        wait_for("the next time period in the balancer's status",
                 lambda: read_status(state_dir)["tor"]["time_period"] > period, 60, 1)
        wait_for("read-back of the new period", lambda: [
            u for u in current(read_status(state_dir))["hsdirs"]
            if (u.get("served") or {}).get("state") == "serving"], 90, 1)
    serving = [u for u in current(read_status(state_dir))["hsdirs"]
               if (u.get("served") or {}).get("state") == "serving"]
    assert serving, "no HSDir read back as serving yet"
    victim = serving[0]["hsdir"]
    node = next(n for n in lab.net.relays if n.fingerprint.upper() == victim.upper())
    before_checks = serving[0]["served"]["checks"]
    # tor keeps onion-service descriptors in memory only: a restart wipes the HSDir's cache
    lab.procs.stop(node.process_name)
    wiped_at = time.time()
    lab.net.start_tor(lab.procs, node)

    def served(states):
        for u in current(read_status(state_dir))["hsdirs"]:
            s = u.get("served") or {}
            if u["hsdir"] == victim and s.get("checks", 0) > before_checks and s.get("state") in states \
                    and (s.get("checked_at") or 0) > wiped_at:
                return u
        return None

    noticed, _ = wait_for(f"read-back notices {victim[:8]} wiped", lambda: served(("missing", "failed")), 120, 1)
    detected_s = time.time() - wiped_at
    repaired, _ = wait_for(f"{victim[:8]} serves again", lambda: served(("serving",)), 120, 1)
    repaired_s = time.time() - wiped_at
    measure("hsdir_wipe_detected_s", f"{detected_s:.1f} ({noticed['served']['state']}: {noticed['served']['detail']})")
    measure("hsdir_wipe_repaired_s", round(repaired_s, 1))
    assert repaired_s <= 120
    assert repaired["state"] == "uploaded" and (repaired["confirmed_at"] or 0) > wiped_at  # re-uploaded


def test_all_workers_killed_fire_frontend_unreachable_and_check_exits_2(lab, ops):
    prom, state_dir = ops["prom"], ops["primary"]["state_dir"]
    for w in ops["workers"]:
        lab.kill_worker(w)
    killed_at = time.monotonic()
    try:
        # Exit 2 comes first from the liveness probes (0 of 4 instances up, within seconds);
        # the summary says UNREACHABLE once an end-to-end probe of the frontend has failed
        # (one started before the kill may take its whole timeout).
        _, down_took = wait_for("status --check exits 2", lambda: check(state_dir).returncode == 2, 180, 2)
        proc, check_took = wait_for("status --check exits 2 with UNREACHABLE in its summary", lambda: (
            lambda p: p if p.returncode == 2 and "UNREACHABLE" in p.stdout.splitlines()[0] else None)(
            check(state_dir)), 180, 2)
        check_took = time.monotonic() - killed_at
        measure("workers_killed_check_exit2_instances_down_s", round(down_took, 1))
        measure("workers_killed_check_unreachable_s", round(check_took, 1))
        assert check_took <= 180, proc.stdout
        assert "CRITICAL" in proc.stdout.splitlines()[0] and "end-to-end probe failed" in proc.stdout, proc.stdout
        firing, _ = wait_for("OnionFrontendUnreachable firing", lambda: [
            a for a in prom.firing("OnionFrontendUnreachable")
            if a["labels"].get("instance") == f"127.0.0.1:{ops['metrics_port']}"], 180, 2)
        alert_took = time.monotonic() - killed_at
        measure("workers_killed_alert_firing_s", round(alert_took, 1))
        assert alert_took <= 180
        assert firing[0]["labels"]["severity"] == "critical"
        wait_for("OnionWorkerTorDown firing", lambda: prom.firing("OnionWorkerTorDown"), 240, 5)
    finally:
        for w in ops["workers"]:
            lab.restart_worker(w)
    wait_reachable(lab.net.client.socks_port, ops["url"], 300, "ops frontend after the workers' restart")
    wait_for("reachable again in Prometheus", lambda: prom.value(
        f'onion_service_reachable{{{ops["balancer_job"]}}}') == 1, 180)


def test_standby_takes_over_when_the_primary_dies(lab, ops):
    saved = lab.info.get("balancer")
    port = lab.ports.take()
    standby = lab.start_balancer("onion", tag="opsstandby", key_file=ops["key_file"], instances=ops["instances"],
                                 extra_config={"metrics": {"listen": f"127.0.0.1:{port}"},
                                               "frontend_probe": {"interval": 10, "timeout": 30},
                                               "readback": {"interval": 10},
                                               "standby": {"takeover_after": 60}})
    lab.info["balancer"] = saved
    lab.save()
    sdir = standby["state_dir"]
    wait_status(lab, standby)  # its first status file, a moment after the process starts

    def standing_by():
        fe = read_status(sdir)["frontends"][0]
        read = [u for u in current(read_status(sdir))["hsdirs"] if (u.get("served") or {}).get("checked_at")]
        return fe["standby"]["state"] == "standing by" and len(read) >= 4 and not fe["publishing"]

    wait_for("standby reads back the primary's descriptors", standing_by, 180, 2)
    posted = [u for u in current(read_status(sdir))["hsdirs"] if u.get("state") == "uploaded"]
    assert posted == []  # a standby uploads nothing while the primary serves
    loop = ProbeLoop(lab.net.client.socks_port, ops["url"], interval=3.0, prefix="ops-takeover-").start()
    time.sleep(6)
    lab.procs.stop(ops["primary"]["process"])
    killed = time.time()

    def taken_over():
        fe = read_status(sdir)["frontends"][0]
        return fe["standby"]["state"] == "active" and fe["publishing"]

    def served_by_standby():
        ups = current(read_status(sdir))["hsdirs"]
        return [u for u in ups if u.get("state") == "uploaded" and (u.get("served") or {}).get("state") == "serving"]

    try:
        _, takeover = wait_for("the standby takes over", taken_over, 480, 2)
        takeover_s = time.time() - killed
        _, _ = wait_for("the standby's descriptors are served", served_by_standby, 120, 2)
        served_s = time.time() - killed
        time.sleep(30)
    finally:
        probes = loop.stop()
    before, during, after = split_around(probes, killed, killed + served_s)
    measure("standby_takeover_s", round(takeover_s, 1))
    measure("standby_descriptors_served_s", round(served_s, 1))
    measure("standby_failed_before", f"{sum(not p.ok for p in before)}/{len(before)}")
    measure("standby_failed_during", f"{sum(not p.ok for p in during)}/{len(during)}")
    measure("standby_failed_after_served", f"{sum(not p.ok for p in after)}/{len(after)}")
    assert served_s <= 600
    assert after and sum(not p.ok for p in after) == 0, [p.error for p in after if not p.ok]
    proc = check(sdir)
    assert "standby active" in proc.stdout.splitlines()[0], proc.stdout
