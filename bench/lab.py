"""Benchmark on one lab network: OnionBalance 0.2.4 (the baseline, from PyPI in its own
venv) and then onionstack's balancer core, each with fresh workers built the same way.

For each balancer it prints: seconds from the balancer's start to the frontend first
answering a client; failover seconds after one worker is killed (until a descriptor
fetched from the HSDirs, by a separate observer tor, no longer lists the dead worker's
intro points; an observer fetch that no HSDir answers counts neither way); requests failed
before / during / after failover (one request every 1.5 s, each on a fresh circuit); the
balancer's CPU seconds and peak RSS. The last line holds the ratios (ours / OnionBalance;
below 1 is better for time, CPU and memory).

`--soak SECONDS` then runs both balancers side by side (fresh frontends and workers) and
probes each frontend on fresh circuits for that long, together with a plain onion service
as the control; use at least 3 time periods (3 x 24 x 20 s = 1440 s) to cross time-period
and SRV changes. `--hostile-worker` makes one of onionstack's soak workers hostile: its
instances' descriptors on the HSDirs are replaced, from before the balancer starts and for
the whole soak, by validly signed ~41 kB ones whose intro points carry padded link
specifiers of an unknown type (lab/hostile.py). `--soak-only` skips the failover runs.

`--ops` instead measures what an operator sees, on a network of its own (voting interval
10 s: a time period is 4 minutes): a real Prometheus scrapes the balancer, its tor and the
workers' tors with the shipped alert rules (lab/monitor.py), and it times, from the fault,
worker loss -> OnionWorkerTorDown firing; every worker lost -> OnionFrontendUnreachable
firing; an HSDir restarted with an empty cache -> read-back noticing it
(onion_balancer_hsdir_serving 0 in Prometheus) and the re-upload repairing it; the primary
balancer killed -> a standby's takeover, its descriptors served, and the failed requests
of a client probing every 3 s (before, during, after the standby's descriptors are served).
Targets: detection under 2 minutes; takeover under 5 minutes with 0 failed requests once
the standby's descriptors are served.

Usage: .venv/bin/python bench/lab.py [--workers 2] [--soak 1500 [--hostile-worker] [--soak-only]]
       [--state-dir DIR]
       .venv/bin/python bench/lab.py --ops
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.balancer import ONIONBALANCE_VOTING_INTERVAL  # noqa: E402
from lab.client import ProbeLoop, split_around, wait_reachable  # noqa: E402
from lab.observe import fetch_intro_keys  # noqa: E402
from lab.stack import Lab  # noqa: E402

FAILOVER_TIMEOUT = 180.0
KINDS = ("onionbalance", "onion")
LABEL = {"onionbalance": "OnionBalance 0.2.4", "onion": "onionstack"}
TAG = {"onionbalance": "ob", "onion": "os"}


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def start_run(lab: Lab, kind: str, workers: int, first_listener: int, phase: str = "",
              before_balancer=None) -> dict:
    tag = phase + TAG[kind]  # distinct keys, workers and balancer per phase
    key = lab.make_frontend_key(tag=tag)
    started = lab.start_workers(workers, tag=f"{tag}w", first_listener=first_listener)
    instances = [a for w in started for a in w.instance_addresses]
    # Only time the balancer: every instance is published and answering before it starts.
    for address in instances:
        wait_reachable(lab.net.client.socks_port, f"http://{address}.onion/", 180,
                       f"instance {address}")
    if before_balancer is not None:
        before_balancer(started)
    record = lab.start_balancer(kind, tag=f"{tag}bal", key_file=Path(
        lab.info["frontend_key_file"]), instances=instances)
    return {"kind": kind, "frontend": key.hostname, "workers": started, "record": record}


def measure(lab: Lab, observer, run: dict) -> dict:
    kind, frontend, record = run["kind"], run["frontend"], run["record"]
    url = f"http://{frontend}/"
    try:
        wait_reachable(lab.net.client.socks_port, url, 300, f"{kind} frontend", interval=1.0)
    except TimeoutError as exc:
        log(f"{LABEL[kind]}: {exc}")
        cpu, rss = proc_usage(lab.procs.pid(record["process"])) \
            if lab.procs.is_running(record["process"]) else (float("nan"),) * 2
        return {"kind": kind, "reachable": None, "failover": None, "cpu": cpu, "rss": rss,
                "failed_before": "-", "failed_during": "-", "failed_after": "-",
                "alive": lab.procs.is_running(record["process"])}
    reachable = time.time() - record["started"]
    log(f"{LABEL[kind]}: frontend reachable {reachable:.1f} s after the balancer started")

    victim = run["workers"][-1]
    victim_keys: set[str] = set()
    for address in victim.instance_addresses:
        for _ in range(5):  # a fetch that an HSDir fails returns None: ask again
            keys = fetch_intro_keys(observer, address)
            if keys:
                victim_keys |= keys
                break
            time.sleep(2)
    # Failover is the change from "the published descriptor lists the victim's intro
    # points" to "it does not": first make sure the first state holds.
    deadline = time.time() + 120
    while not (fetch_intro_keys(observer, frontend, timeout=20) or set()) & victim_keys:
        if time.time() > deadline:
            log(f"{LABEL[kind]}: the published descriptor never listed worker {victim.name}")
            break
        time.sleep(2)
    loop = ProbeLoop(lab.net.client.socks_port, url, interval=1.5, prefix=f"{kind}-").start()
    time.sleep(10)
    killed_at = time.time()
    lab.kill_worker(victim)
    log(f"{LABEL[kind]}: killed worker {victim.name}; watching the published descriptor")
    failover = None
    clean = 0
    while time.time() - killed_at < FAILOVER_TIMEOUT:
        keys = fetch_intro_keys(observer, frontend, timeout=20)
        if keys is None:  # no HSDir answered the observer in time: no evidence either way
            time.sleep(2)
            continue
        clean = clean + 1 if keys and not keys & victim_keys else 0
        if clean == 2:  # two fetches in a row (likely from different HSDirs) agree
            failover = time.time() - killed_at
            break
        time.sleep(2)
    time.sleep(30)
    probes = loop.stop()
    pid = lab.procs.pid(record["process"])
    cpu, rss = proc_usage(pid) if pid and lab.procs.is_running(record["process"]) else (float("nan"),) * 2
    end = killed_at + (failover if failover is not None else FAILOVER_TIMEOUT)

    def count(sel):
        return f"{sum(not p.ok for p in sel)}/{len(sel)}"

    before, during, after = split_around(probes, killed_at, end)
    result = {
        "kind": kind, "reachable": reachable, "failover": failover, "cpu": cpu, "rss": rss,
        "failed_before": count(before),
        "failed_during": count(during),
        "failed_after": count(after),
        "alive": lab.procs.is_running(record["process"]),
    }
    lab.procs.stop(record["process"])
    lab.procs.stop(f"tor-{record['tor']}")
    for w in run["workers"]:
        lab.kill_worker(w)
    return result


def make_hostile(lab: Lab, worker) -> dict:
    """Start lab/hostile.py for `worker` and wait until the HSDirs serve its oversized
    descriptor for every instance of the worker."""
    from lab.hostile import start_hostile_publisher

    name = start_hostile_publisher(lab, worker)
    log_path = lab.procs.log_path(name)
    deadline = time.time() + 180
    while time.time() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if all(f"{a}.onion: replaced" in text for a in worker.instance_addresses):
            break
        time.sleep(2)
    else:
        raise TimeoutError(f"hostile publisher did not replace every descriptor of {worker.name}; see {log_path}")
    log(f"hostile worker {worker.name}: the HSDirs serve ~41 kB descriptors with padded link "
        f"specifiers for {', '.join(a[:12] for a in worker.instance_addresses)}")
    return {"worker": worker, "process": name, "log": log_path}


def soak(lab: Lab, workers: int, seconds: float, hostile: bool = False) -> dict:
    hostile_info: dict = {}

    def hook(kind):
        if not (hostile and kind == "onion"):
            return None
        return lambda started: hostile_info.update(make_hostile(lab, started[-1]))

    runs = [start_run(lab, kind, workers, first_listener=i * workers, phase="soak",
                      before_balancer=hook(kind))
            for i, kind in enumerate(KINDS)]
    for run in runs:
        wait_reachable(lab.net.client.socks_port, f"http://{run['frontend']}/", 300,
                       f"{run['kind']} frontend")
    control = lab.start_control_service()
    wait_reachable(lab.net.client.socks_port, f"http://{control}/", 300, "control service")
    trace = trace_client(lab)
    log(f"soak: the client's onion-service and circuit steps at info level in {trace}")
    loops = {run["kind"]: ProbeLoop(lab.net.client.socks_port, f"http://{run['frontend']}/",
                                    interval=10.0, prefix=f"soak-{run['kind']}-").start()
             for run in runs}
    # A plain onion service probed alongside: failures there are the network's or host's.
    loops["control"] = ProbeLoop(lab.net.client.socks_port, f"http://{control}/",
                                 interval=10.0, prefix="soak-control-").start()
    log(f"soak: probing both frontends every 10 s on fresh circuits for {seconds:.0f} s")
    time.sleep(seconds)
    out = {}
    if hostile_info:
        out["hostile"] = hostile_report(lab, runs, hostile_info)
    for kind, loop in loops.items():
        probes = loop.stop()
        failed = [p for p in probes if not p.ok]
        out[kind] = (len(failed), len(probes))
        for p in failed:
            excerpt = client_log_excerpt(trace, p.at - 1, p.at + p.seconds + 1,
                                         f"soak-failed-{kind}-{time.strftime('%H%M%S', time.localtime(p.at))}")
            log(f"soak {LABEL.get(kind, kind)}: failed at {time.strftime('%H:%M:%S', time.localtime(p.at))} "
                f"after {p.seconds:.1f} s: {p.error} (client log: {excerpt})")
    return out


def hostile_report(lab: Lab, runs: list, info: dict) -> str:
    """What the hostile worker did and what onionstack's balancer made of it."""
    from onion.status import read_status

    run = next(r for r in runs if r["kind"] == "onion")
    status = read_status(run["record"]["state_dir"])
    text = info["log"].read_text(errors="replace")
    uploads = text.count(": replaced tor's descriptor")
    lines = [f"hostile worker {info['worker'].name}: {uploads} oversized descriptors uploaded over the soak"]
    for fe in status["frontends"]:
        for inst in fe["instances"]:
            if inst["address"] in info["worker"].instance_addresses:
                lines.append(f"  {inst['address'][:16]}...: {inst['rejected_descriptors']} refused by the "
                             f"balancer, in use: {inst['in_use']}, probe: {(inst.get('probe') or {}).get('last_result')}, "
                             f"last error: {inst['last_error']}")
        lines.append(f"  frontend note: {fe.get('note')}; published intro points: "
                     f"{len(fe['published_intro_points'])}")
    for line in lines:
        log(line)
    return "\n".join(lines)


def client_log_excerpt(trace: Path, start: float, end: float, name: str) -> Path:
    """The lines of the client's info log (trace_client) logged between start and end
    (unix times), copied to a file of their own next to it: a failed probe's steps."""
    out = trace.with_name(f"{name}.log")
    year = time.gmtime(start).tm_year
    with open(trace, errors="replace") as src, open(out, "w") as dst:
        for line in src:
            try:  # tor's log time, local: "Nov 22 05:58:01.123"
                stamp = time.mktime(time.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S"))
                stamp += float(line[15:19] or 0)
            except ValueError:
                continue
            if start <= stamp <= end:
                dst.write(line)
    return out


def trace_client(lab: Lab, domains: str = "rend,circ,guard",
                 name: str = "tor-client-rend-info.log") -> Path:
    """Log the lab client's onion-service, circuit and guard steps (or other log `domains`)
    at info level to a file of their own, so a failed soak probe can be traced to the step
    that failed. Unscrubbed (SafeLogging 0: a loopback lab has nothing to hide), so each
    line names its onion address and the frontend, the other frontend and the control can
    be told apart."""
    from lab.tornet import controller

    path = lab.procs.log_dir / name
    with controller(lab.net.client) as ctl:
        ctl.set_options([("Log", "notice stdout"),
                         ("Log", f"[{domains}]info file {path}")])
        ctl.set_conf("SafeLogging", "0")
    return path


def print_results(results: dict) -> None:
    print()
    print(f"{'balancer':20} {'reachable_s':>11} {'failover_s':>10} {'failed_before':>13} "
          f"{'failed_during':>13} {'failed_after':>12} {'cpu_s':>6} {'peak_rss_MiB':>12}")
    for kind in KINDS:
        r = results[kind]
        print(f"{LABEL[kind]:20} {fmt(r['reachable']):>11} {fmt(r['failover']):>10} "
              f"{r['failed_before']:>13} {r['failed_during']:>13} {r['failed_after']:>12} "
              f"{r['cpu']:6.2f} {r['rss']:12.1f}" + ("" if r["alive"] else "  (process had exited)"))
    print(f"(failover 'never' = still listed after {FAILOVER_TIMEOUT:.0f} s)", flush=True)


def fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


def ratio(ours: float | None, base: float | None) -> str:
    if ours is None or base is None or base == 0:
        return "n/a"
    return f"{ours / base:.2f}"


def ops_bench(state_dir: Path) -> dict:
    """The operator's measures (see the module docstring); returns name -> value."""
    from lab.monitor import start_prometheus, wait_for, wait_status
    from onion.status import clients_descriptor, read_status

    out: dict = {}
    lab = Lab.create(state_dir, tie_to_parent=True, voting_interval=10, progress=log)
    try:
        lab.start_network()
        lab.start_origin(listeners=2)
        key = lab.make_frontend_key(tag="ops")
        workers = lab.start_workers(2, tor_daemons=2, intro_points=3, tag="ops", metrics=True)
        instances = [a for w in workers for a in w.instance_addresses]
        ports = [lab.ports.take(), lab.ports.take()]
        common = {"frontend_probe": {"interval": 10, "timeout": 30}}
        primary = lab.start_balancer("onion", tag="opsprimary", instances=instances, tor_metrics=True,
                                     extra_config={**common, "metrics": {"listen": f"127.0.0.1:{ports[0]}"},
                                                   "readback": {"interval": 20}})
        url = f"http://{key.hostname}/"
        wait_reachable(lab.net.client.socks_port, url, 240, "frontend")
        prom = start_prometheus(lab, balancers=[ports[0]], balancer_tors=[primary["tor_metrics_port"]],
                                worker_tors=[p for w in workers for p in w.metrics_ports])
        job = f'instance="127.0.0.1:{ports[0]}"'
        wait_for("reachable in Prometheus", lambda: prom.value(f"onion_service_reachable{{{job}}}") == 1, 180)

        log("worker loss: killing one worker")
        lab.kill_worker(workers[-1])
        t0 = time.monotonic()
        wait_for("OnionWorkerTorDown", lambda: prom.firing("OnionWorkerTorDown"), 300, 1)
        out["detect_worker_loss_s"] = time.monotonic() - t0
        lab.restart_worker(workers[-1])
        wait_for("worker back", lambda: not prom.firing("OnionWorkerTorDown"), 300, 2)

        log("every worker lost")
        for w in workers:
            lab.kill_worker(w)
        t0 = time.monotonic()
        wait_for("OnionFrontendUnreachable", lambda: [a for a in prom.firing("OnionFrontendUnreachable")
                                                      if a["labels"].get("instance") == f"127.0.0.1:{ports[0]}"], 300, 1)
        out["detect_frontend_unreachable_s"] = time.monotonic() - t0
        for w in workers:
            lab.restart_worker(w)
        wait_reachable(lab.net.client.socks_port, url, 300, "frontend after the workers' restart")
        wait_for("reachable again", lambda: prom.value(f"onion_service_reachable{{{job}}}") == 1, 180)

        log("HSDir loss: restarting a responsible HSDir with an empty cache")
        status = read_status(primary["state_dir"])
        current = clients_descriptor(status["frontends"][0], status)  # the period read back
        victim = next(u["hsdir"] for u in current["hsdirs"] if (u.get("served") or {}).get("state") == "serving")
        node = next(n for n in lab.net.relays if n.fingerprint.upper() == victim.upper())
        serving = f'max(onion_balancer_hsdir_serving{{{job},hsdir="{victim}"}})'  # whichever role it has now
        lab.procs.stop(node.process_name)
        t0 = time.monotonic()
        lab.net.start_tor(lab.procs, node)
        wait_for("read-back notices", lambda: prom.value(serving) == 0, 300, 1)
        out["detect_hsdir_loss_s"] = time.monotonic() - t0
        wait_for("repaired", lambda: prom.value(serving) == 1, 300, 1)
        out["repair_hsdir_loss_s"] = time.monotonic() - t0

        log("standby takeover: starting a standby, then killing the primary")
        standby = lab.start_balancer("onion", tag="opsstandby", instances=instances, key_file=Path(
            lab.info["frontend_key_file"]), extra_config={**common, "metrics": {"listen": f"127.0.0.1:{ports[1]}"},
                                                          "readback": {"interval": 10},
                                                          "standby": {"takeover_after": 60}})
        wait_status(lab, standby)

        def st():
            return read_status(standby["state_dir"])["frontends"][0]

        def cur(fe):  # the descriptor of the period clients fetch (and read-back reads) now
            return clients_descriptor(fe, read_status(standby["state_dir"]))["hsdirs"]

        wait_for("standby standing by", lambda: st()["standby"]["state"] == "standing by" and len(
            [u for u in cur(st()) if (u.get("served") or {}).get("checked_at")]) >= 4, 240, 2)
        loop = ProbeLoop(lab.net.client.socks_port, url, interval=3.0, prefix="ops-").start()
        time.sleep(6)
        lab.procs.stop(primary["process"])
        killed = time.time()
        wait_for("takeover", lambda: st()["standby"]["state"] == "active", 600, 2)
        out["takeover_s"] = time.time() - killed
        wait_for("standby served", lambda: [u for u in cur(st()) if u.get("state") == "uploaded"
                                            and (u.get("served") or {}).get("state") == "serving"], 300, 2)
        served = time.time() - killed
        out["standby_served_s"] = served
        time.sleep(30)
        probes = loop.stop()
        before, during, after = split_around(probes, killed, killed + served)
        for name, sel in (("before", before), ("during", during), ("after_served", after)):
            out[f"takeover_failed_{name}"] = f"{sum(not p.ok for p in sel)}/{len(sel)}"
    finally:
        lab.down()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, choices=range(2, 5))
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--hostile-worker", action="store_true",
                        help="in the soak, one of onionstack's workers serves oversized descriptors")
    parser.add_argument("--soak-only", action="store_true", help="skip the failover runs")
    parser.add_argument("--ops", action="store_true",
                        help="instead: detection (fault -> alert) and standby takeover times (see above)")
    parser.add_argument("--state-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / ".lab" / "bench")
    args = parser.parse_args(argv)
    if args.ops:
        results = ops_bench(args.state_dir / "ops")
        print()
        for name, value in results.items():
            print(f"{name:32} {value:.1f}" if isinstance(value, float) else f"{name:32} {value}")
        print("targets: detection < 120 s, takeover < 300 s, 0 failed requests after the standby's "
              "descriptors are served")
        return 0
    tp = 24 * ONIONBALANCE_VOTING_INTERVAL
    if args.soak and args.soak < 3 * tp:
        log(f"note: --soak {args.soak:.0f} covers fewer than 3 time periods ({3 * tp} s)")

    lab = Lab.create(args.state_dir, tie_to_parent=True,
                     voting_interval=ONIONBALANCE_VOTING_INTERVAL, progress=log)
    try:
        lab.start_network()
        lab.start_origin(listeners=2 * args.workers)
        observer = lab.net.add_tor(lab.procs, lab.ports, "observer", [])
        from lab.tornet import wait_bootstrapped
        wait_bootstrapped(lab.net, lab.procs, observer, 120)
        results = {}
        if not args.soak_only:
            for kind in KINDS:
                log(f"--- {LABEL[kind]}")
                results[kind] = measure(lab, observer, start_run(lab, kind, args.workers, 0))
            print_results(results)
        soaked = None
        if args.soak:
            try:
                soaked = soak(lab, args.workers, args.soak, hostile=args.hostile_worker)
            except Exception as exc:  # noqa: BLE001 - still print the main results' ratios
                log(f"soak failed: {exc!r}")
    finally:
        lab.down()

    if soaked:
        for kind in KINDS + ("control",):
            failed, total = soaked[kind]
            what = LABEL.get(kind, "control (plain onion service)")
            print(f"soak {what}: {failed}/{total} probes failed over {args.soak:.0f} s"
                  + (" (with one hostile worker)" if kind == "onion" and "hostile" in soaked else ""))
        if "hostile" in soaked:
            print(soaked["hostile"])
    if not results:
        return 0
    ob, ours = results["onionbalance"], results["onion"]
    print(f"failover_ratio_vs_onionbalance: {ratio(ours['failover'], ob['failover'] or FAILOVER_TIMEOUT)}  "
          f"cpu_ratio_vs_onionbalance: {ratio(ours['cpu'], ob['cpu'])}  "
          f"rss_ratio_vs_onionbalance: {ratio(ours['rss'], ob['rss'])}")
    print(f"reachable_ratio_vs_onionbalance: {ratio(ours['reachable'], ob['reachable'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
