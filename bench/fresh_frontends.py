"""Experiment: new frontends going live around a time-period start, as test a sees one.

For each offset, a fresh frontend (its own key, one worker with one tor instance, its own
balancer and balancer tor) is started that many seconds from a time-period start; the lab
client then asks for it every 2 s until it answers (as `Lab.wait_frontend` does) and at
once asks 8 more times, each on fresh circuits (the wait's own failures, before the first
upload, are expected and not reported). Between them, these requests cross the
client's own period switch (its consensus for the new period arrives a few seconds after
the period starts, and tor then drops the cached descriptor), which is where test a once
failed in CI: the wait succeeded, the next request failed with SOCKS (240).

The client logs its rend/dir/circ/edge/app steps at info level, unscrubbed, to
`logs/tor-client-info.log` in the state dir. Printed: every failed request and, per
frontend, how many of its requests after the wait re-fetched the descriptor (the
period-switch case). Rounds repeat this at successive period starts.

    .venv/bin/python bench/fresh_frontends.py [--offsets -8,-5,-2,1,4,7] [--rounds 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab import trace_client  # noqa: E402
from bench.period_switch import log, next_period_start  # noqa: E402
from lab import balancer as balancer_mod  # noqa: E402
from lab.client import fetch  # noqa: E402
from lab.stack import Lab  # noqa: E402

VOTING_INTERVAL = 10
AFTER_REQUESTS = 8
WORKERS_PUBLISH = 40.0  # s for the new workers' instances to publish before the round


def prepare(lab: Lab, round_no: int, count: int) -> list[dict]:
    """Per frontend: key, one worker (one tor instance), a bootstrapped balancer tor."""
    fronts = []
    for i in range(count):
        tag = f"r{round_no}f{i}"
        key = lab.make_frontend_key(tag=tag)
        [worker] = lab.start_workers(1, tor_daemons=1, tag=f"x{round_no}{i}-", first_listener=0)
        btag = f"b{round_no}{i}"
        node = lab.net.add_tor(lab.procs, lab.ports, "tor" + btag,
                               balancer_mod.balancer_tor_lines("onion"), socks=True)
        fronts.append({"tag": tag, "key": key, "worker": worker, "balancer": btag, "node": node})
    for f in fronts:
        balancer_mod.wait_balancer_tor_ready(lab.net, lab.procs, f["node"])
    return fronts


def run_frontend(lab: Lab, front: dict, at: float, offset: float, results: list, lock) -> None:
    time.sleep(max(0.0, at - time.time()))
    lab.start_balancer("onion", tag=front["balancer"],
                       key_file=lab.state_dir / "keys" / front["tag"] / "hs_ed25519_secret_key",
                       instances=front["worker"].instance_addresses)
    url, port, t0 = f"http://{front['key'].hostname}/", lab.net.client.socks_port, time.time()

    def one(phase: str, n: int) -> bool:
        started = time.time()
        resp = fetch(port, url, isolation=f"{front['tag']}-{phase}{n}")
        ok = resp.ok and resp.status == 200
        with lock:
            results.append({"front": front["key"].hostname, "offset": offset, "phase": phase,
                            "at": started, "seconds": time.time() - started, "ok": ok,
                            "error": "" if ok else resp.error})
        return ok

    n = 0
    while time.time() - t0 < 180:
        n += 1
        if one("wait", n):
            break
        time.sleep(2)
    for k in range(AFTER_REQUESTS):
        one("after", k)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offsets", default="-8,-5,-2,1,4,7",
                        help="seconds from a period start at which each frontend's balancer starts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--state-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / ".lab" / "fresh-frontends")
    args = parser.parse_args(argv)
    offsets = [float(x) for x in args.offsets.split(",")]
    lab = Lab.create(args.state_dir, tie_to_parent=True, voting_interval=VOTING_INTERVAL, progress=log)
    results: list[dict] = []
    lock = threading.Lock()
    try:
        lab.start_network()
        lab.start_origin(listeners=1)
        # dir: which HSDir answered 404; edge/app: how a stream ended
        trace = trace_client(lab, "rend,dir,circ,edge,app", "tor-client-info.log")
        for round_no in range(args.rounds):
            fronts = prepare(lab, round_no, len(offsets))
            time.sleep(WORKERS_PUBLISH)
            start = next_period_start(lab)
            if start + min(offsets) - time.time() < 5:
                start += 24 * VOTING_INTERVAL
            log(f"round {round_no + 1}/{args.rounds}: period start at "
                f"{time.strftime('%H:%M:%S', time.gmtime(start))}")
            threads = [threading.Thread(target=run_frontend, args=(lab, f, start + off, off, results, lock))
                       for f, off in zip(fronts, offsets)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        text = trace.read_text(errors="replace") if trace.exists() else ""
    finally:
        (args.state_dir / "results.json").write_text(json.dumps(results, indent=1))
        lab.down()

    misses = collections.Counter(re.findall(r"No descriptor found in our cache for (\w+)\.", text))
    waits = collections.Counter(r["front"] for r in results if r["phase"] == "wait")
    after = [r for r in results if r["phase"] == "after"]
    for r in sorted(after, key=lambda r: r["at"]):  # the wait's failures are expected
        if not r["ok"]:
            print(f"  failed: {r['front'][:12]} (offset {r['offset']:+.0f} s) {r['phase']} at "
                  f"{time.strftime('%H:%M:%S', time.gmtime(r['at']))} after {r['seconds']:.1f} s: {r['error']}")
    refetches = sum(max(0, misses[f.removesuffix('.onion')] - waits[f]) for f in waits)
    print(f"frontends: {len(waits)}; requests after the wait: {sum(not r['ok'] for r in after)}/"
          f"{len(after)} failed; {refetches} of them re-fetched the descriptor (the client's period switch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
