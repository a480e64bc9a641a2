"""The sample app site on the private Tor network (lab/apps.py, docs/apps.md): the guestbook
on two workers against a real PostgreSQL (TLS verify-full, its own role), published by
the balancer core. A line written through one worker is read through the other; an
upgrade to a second build (migration, then each worker drained, switched, put back)
fails no reader request, measured by the probe loop."""
from __future__ import annotations

import subprocess
import time

import pytest

from lab.client import ProbeLoop, wait_reachable

pytestmark = pytest.mark.lab


def curl(socks_port: int, url: str, *, text: str | None = None, isolation: str = "x") -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{socks_port}",
           "--proxy-user", f"{isolation}:x", "-D", "-"]
    if text is not None:
        cmd += ["--data-urlencode", f"text={text}"]
    return subprocess.run(cmd + [url], capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def app_site(lab):
    """Start the app site beside whatever else the shared lab runs; the lab's own records
    (frontend, balancer) are put back afterwards for the other lab tests."""
    kept = {k: lab.info.get(k) for k in ("frontend", "frontend_key_file", "balancer", "app")}
    workers = lab.start_app_site(2, tor_daemons=1, intro_points=3)
    record = lab.start_balancer("onion", tag="appbalancer", key_file=lab.info["frontend_key_file"],
                                instances=[a for w in workers for a in w.instance_addresses])
    frontend = lab.info["frontend"]
    url = f"http://{frontend}/entries"
    _, took = wait_reachable(lab.net.client.socks_port, url, timeout=240, what="app site")
    print(f"\n[measure] app_site_reachable_s {took:.1f}")
    try:
        yield {"workers": workers, "balancer": record, "frontend": frontend, "url": url,
               "database": lab.app_database}
    finally:
        for k, v in kept.items():
            if v is None:
                lab.info.pop(k, None)
            else:
                lab.info[k] = v
        lab.save()


def test_write_through_one_worker_read_through_another(lab, app_site):
    socks = lab.net.client.socks_port
    w1, w2 = app_site["workers"]
    line = f"written through {w1.name} at {time.time():.0f}"
    wrote = curl(socks, f"http://{w1.instance_addresses[0]}.onion/entries", text=line, isolation="w1")
    assert wrote.returncode == 0 and " 201 " in wrote.stdout.splitlines()[0], wrote.stdout + wrote.stderr
    read = curl(socks, f"http://{w2.instance_addresses[0]}.onion/entries", isolation="w2")
    assert read.returncode == 0 and " 200 " in read.stdout.splitlines()[0], read.stdout + read.stderr
    head, _, body = read.stdout.replace("\r\n", "\n").partition("\n\n")
    assert "content-type: text/plain" in head.lower()
    assert line in body.splitlines()
    # ... and through the frontend (the balancer's address), which readers use
    front = curl(socks, app_site["url"], isolation="front")
    assert line in front.stdout.splitlines()
    # the app reached the database with verify-full and its own role only
    db = app_site["database"]
    who = db.psql("-A", "-t", "-c", "SELECT usename, ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                  "WHERE usename = 'app_guestbook' LIMIT 1")
    assert who.stdout.strip() == "app_guestbook|t", who.stdout + who.stderr


def test_upgrade_to_a_second_build_fails_no_reader_request(lab, app_site):
    from lab import apps

    socks = lab.net.client.socks_port
    loop = ProbeLoop(socks, app_site["url"], interval=1.0, timeout=30, prefix="upgrade").start()
    time.sleep(8)
    started = time.time()
    records = apps.rolling_upgrade(lab.procs, app_site["workers"], app_site["database"], app_site["balancer"],
                                   lab.state_dir, "2", progress=lambda m: print(f"[lab] {m}", flush=True))
    ended = time.time()
    time.sleep(8)
    probes = loop.stop()
    failed = [p for p in probes if not p.ok]
    during = [p for p in probes if p.at + p.seconds >= started and p.at < ended]
    print(f"\n[measure] app_upgrade_probes_total {len(probes)} during_upgrade {len(during)} "
          f"failed {len(failed)} upgrade_s {ended - started:.0f}")
    for r in records:
        print(f"[measure] app_upgrade_worker {r['worker']} drain_s {r['drain_s']} switch_s {r['switch_s']} "
              f"undrain_s {r['undrain_s']}")
    assert len(during) >= 10, "the probe loop must cover the upgrade"
    assert failed == [], [(p.at, p.error) for p in failed]
    for w in app_site["workers"]:
        out = subprocess.run(["curl", "-sS", "-D", "-", f"http://127.0.0.1:{w.host_port}/healthz"],
                             capture_output=True, text=True, timeout=30).stdout
        assert "X-Guestbook-Build: 2" in out, out
        assert w.build == "2"
    # each drain really took the worker out of the balancer's config, and it came back
    assert all("drained" in r["drain"] or "publishes without" in r["drain"] for r in records), records
    assert all("published again" in r["undrain"] for r in records), records
