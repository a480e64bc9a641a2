"""Experiment: requests in flight when the lab client enters a new time period.

tor's client drops a service's cached descriptor when its consensus enters a new time
period and fetches the new period's one. A request whose introduction circuit is open at
that moment, waiting for its rendezvous circuit, then finds its intro point missing from
the new descriptor (a service's descriptors for two periods have different intro points)
and tor closes it: hs_client.c consider_sending_introduce1(), "Unable to find
introduction point ... while trying to send an INTRODUCE1 cell" -> the SOCKS request ends
with error 1 (general failure). That would hit any v3 onion service, balanced or not.

This script makes the moment likely: on one lab network (10 s voting: a period every
240 s) it starts a plain onion service (no balancer) and onionstack's frontend (balancer
core, 2 workers), and around each of several time-period starts it sends overlapping
requests to both, each on fresh circuits. It prints per target the requests, the failures
and how many of them the client's log attributes to that tor code path.

    .venv/bin/python bench/period_switch.py [--periods 4] [--state-dir DIR]
"""
from __future__ import annotations

import argparse
import calendar
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab import trace_client  # noqa: E402
from lab.client import fetch, wait_reachable  # noqa: E402
from lab.stack import Lab  # noqa: E402
from lab.tornet import controller  # noqa: E402
from onion.hashring import NetworkTiming  # noqa: E402

VOTING_INTERVAL = 10
BEFORE, AFTER = 10.0, 30.0  # seconds of requests around each period start
EVERY = 0.4                 # one new request per target this often inside a window


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def next_period_start(lab: Lab) -> float:
    with controller(lab.net.client) as ctl:
        va = ctl.get_info("consensus/valid-after")
        fu = ctl.get_info("consensus/fresh-until")
    parse = lambda s: calendar.timegm(time.strptime(s, "%Y-%m-%d %H:%M:%S"))  # noqa: E731
    timing = NetworkTiming.from_times(parse(va), parse(fu), testing_network=True)
    start = timing.time_period_start(timing.time_period_number(int(time.time())) + 1)
    return float(start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=4)
    parser.add_argument("--state-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / ".lab" / "period-switch")
    args = parser.parse_args(argv)
    lab = Lab.create(args.state_dir, tie_to_parent=True, voting_interval=VOTING_INTERVAL, progress=log)
    results: dict[str, list[tuple[float, bool, str]]] = {"control": [], "frontend": []}
    lock = threading.Lock()
    try:
        lab.start_network()
        lab.start_origin(listeners=2)
        key = lab.make_frontend_key()
        lab.start_workers(2)
        lab.start_balancer("onion")
        lab.wait_frontend(300)
        control = lab.start_control_service()
        port = lab.net.client.socks_port
        urls = {"control": f"http://{control}/", "frontend": f"http://{key.hostname}/"}
        wait_reachable(port, urls["control"], 300, "control service")
        trace = trace_client(lab)
        counter = iter(range(10**9))

        def one(target: str) -> None:
            started = time.time()
            resp = fetch(port, urls[target], isolation=f"ps{next(counter)}", timeout=30)
            with lock:
                results[target].append((started, resp.ok and resp.status == 200,
                                        resp.error or str(resp.status)))

        with ThreadPoolExecutor(max_workers=40) as pool:
            for n in range(args.periods):
                start = next_period_start(lab)
                log(f"period start {n + 1}/{args.periods} at {time.strftime('%H:%M:%S', time.gmtime(start))}; "
                    f"requests from {BEFORE:.0f} s before to {AFTER:.0f} s after")
                time.sleep(max(0.0, start - BEFORE - time.time()))
                while time.time() < start + AFTER:
                    for target in urls:
                        pool.submit(one, target)
                    time.sleep(EVERY)
                time.sleep(35)  # let the window's last requests finish before the next one
        text = trace.read_text(errors="replace") if trace.exists() else ""
    finally:
        lab.down()

    for target, rows in results.items():
        failed = [r for r in rows if not r[1]]
        address = urls[target].split("//")[1].split(".onion")[0]
        race = len(re.findall(r"Unable to find introduction point for service " + address, text))
        print(f"{target:9s}: {len(failed)}/{len(rows)} requests failed; client log, 'Unable to find "
              f"introduction point' (descriptor replaced under an open intro circuit): {race}")
        for at, _, error in failed:
            print(f"    {time.strftime('%H:%M:%S', time.gmtime(at))} {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
