"""Readers under an introduction flood, on the lab's private Tor network (127.0.0.1 only).

For each scenario, a fresh frontend with its own workers (the worker templates, each tor
daemon with a MetricsPort) and balancer; then:

  1. baseline: a steady reader loop (one request every --reader-interval s, each on a
     fresh circuit, through the lab's client) for --baseline-seconds;
  2. flood: the same reader loop while --flood-clients separate tor clients each keep
     --flood-concurrency introductions in flight against the frontend (every one a SOCKS
     CONNECT with its own isolation token: a new introduction and rendezvous; closed once
     connected), capped at --flood-max introductions in all and --flood-seconds.

Scenarios: `off` (no DoS controls on the instances), `intro` (HiddenServiceEnableIntroDoS
Defense at --intro-rate/--intro-burst, or `intro:RATE:BURST`), `pow`
(HiddenServicePoWDefensesEnabled with a queue of --pow-rate/--pow-burst, or
`pow:RATE:BURST`), `both` (intro + pow, or `both:IR:IB:PR:PB`), and `onionbalance`
(OnionBalance 0.2.4 publishing the frontend of workers without DoS controls). The table gives, per
scenario, the readers' success and latency (median, 90th percentile) before and during
the flood, what the flood achieved, and the instances' largest PoW queue and suggested
effort seen on their MetricsPorts.

Every address is on 127.0.0.1; the flood has hard caps (see the argument limits). It
measures: run it alone, under the lab lock, on a quiet machine:

    flock /tmp/onionstack-lab.lock .venv/bin/python bench/flood.py
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import struct
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.balancer import ONIONBALANCE_VOTING_INTERVAL  # noqa: E402
from lab.client import ProbeLoop, wait_reachable  # noqa: E402
from lab.stack import Lab  # noqa: E402

SCENARIOS = ("off", "intro", "pow", "both", "onionbalance")
# Hard caps: the flood stays a bounded measurement, whatever the arguments say.
MAX_FLOOD_CLIENTS, MAX_CONCURRENCY, MAX_SECONDS, MAX_INTRODUCTIONS = 4, 64, 300, 20000


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


# ---------------------------------------------------------------- the flood
@dataclass
class FloodResult:
    started: int = 0
    connected: int = 0
    failed: int = 0
    timed_out: int = 0
    seconds: float = 0.0


async def _socks_connect(port: int, user: str, host: str, timeout: float) -> str:
    """One SOCKS5 CONNECT through a lab tor to `host`:80 with its own isolation token (a new
    introduction and rendezvous each). Returns "connected", "failed" or "timeout"."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return "failed"
    try:
        async def handshake() -> bool:
            writer.write(b"\x05\x01\x02")  # version 5, one method: username/password
            await writer.drain()
            if await reader.readexactly(2) != b"\x05\x02":
                return False
            u = user.encode()
            writer.write(b"\x01" + bytes([len(u)]) + u + b"\x01x")
            await writer.drain()
            if (await reader.readexactly(2))[1] != 0:
                return False
            h = host.encode()
            writer.write(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", 80))
            await writer.drain()
            reply = await reader.readexactly(4)
            return reply[1] == 0
        ok = await asyncio.wait_for(handshake(), timeout)
        return "connected" if ok else "failed"
    except asyncio.TimeoutError:
        return "timeout"
    except (OSError, asyncio.IncompleteReadError):
        return "failed"
    finally:
        writer.close()


async def _flood(ports: list[int], host: str, concurrency: int, seconds: float, limit: int,
                 timeout: float, tag: str) -> FloodResult:
    result = FloodResult()
    deadline = time.monotonic() + seconds
    counter = iter(range(limit))

    async def one_lane(port: int) -> None:
        while time.monotonic() < deadline:
            n = next(counter, None)
            if n is None:
                return
            result.started += 1
            outcome = await _socks_connect(port, f"{tag}-{n}", host, timeout)
            if outcome == "connected":
                result.connected += 1
            elif outcome == "timeout":
                result.timed_out += 1
            else:
                result.failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*[one_lane(p) for p in ports for _ in range(concurrency)])
    result.seconds = time.monotonic() - t0
    return result


def flood(ports: list[int], host: str, *, concurrency: int, seconds: float, limit: int, timeout: float,
          tag: str) -> FloodResult:
    for p in ports:
        if not isinstance(p, int):
            raise ValueError(f"flood: {p!r} is not a port")
    if not host.endswith(".onion"):
        raise ValueError(f"flood: {host!r} is not an onion address (the flood targets the lab frontend only)")
    # A loop of its own, not asyncio.run(): that would leave the thread without a current
    # event loop, which other code in the same process (Pulumi's SDK) still asks for.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_flood(ports, host, min(concurrency, MAX_CONCURRENCY), min(seconds, MAX_SECONDS),
                                              min(limit, MAX_INTRODUCTIONS), timeout, tag))
    finally:
        loop.close()


# ---------------------------------------------------------------- instance metrics
METRIC_RE = re.compile(r"^(tor_hs_rdv_pow_pqueue_count|tor_hs_pow_suggested_effort|"
                       r"tor_hs_intro_rejected_intro_req_count|tor_hs_rdv_error_count)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def read_metrics(port: int) -> dict[str, float]:
    """The PoW and introduction metrics of one tor daemon (summed over its services' labels)."""
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = METRIC_RE.match(line.strip())
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


class MetricsSampler:
    """Samples every worker daemon's MetricsPort every `interval` s; keeps the maxima."""

    def __init__(self, ports: list[int], interval: float = 2.0):
        self.ports, self.interval = ports, interval
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MetricsSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                for name, value in read_metrics(port).items():
                    key = name.removeprefix("tor_hs_")
                    self.peak[key] = max(self.peak.get(key, 0.0), value)
            self._stop.wait(self.interval)


# ---------------------------------------------------------------- scenarios
@dataclass
class Outcome:
    scenario: str
    before: list = field(default_factory=list)
    during: list = field(default_factory=list)
    flood: FloodResult | None = None
    peaks: dict = field(default_factory=dict)
    reachable_s: float | None = None
    note: str = ""


def parse_scenario(text: str) -> tuple[str, tuple[int, ...]]:
    """"pow" or "pow:RATE:BURST" (likewise "intro"; "both:IR:IB:PR:PB") -> (kind, numbers)."""
    kind, *numbers = text.strip().split(":")
    want = {"intro": 2, "pow": 2, "both": 4}.get(kind, 0)
    if kind not in SCENARIOS or (numbers and len(numbers) != want) or not all(n.isdigit() for n in numbers):
        raise ValueError(f"scenario {text!r}: use one of {', '.join(SCENARIOS)}; intro:RATE:BURST, "
                         "pow:RATE:BURST and both:INTRO_RATE:INTRO_BURST:POW_RATE:POW_BURST set their own values")
    return kind, tuple(int(n) for n in numbers)


def scenario_dos(text: str, args):
    from nodes.render import SiteDos

    kind, n = parse_scenario(text)
    ir, ib = (n[0], n[1]) if kind == "intro" and n else (n[0], n[1]) if kind == "both" and n else \
        (args.intro_rate, args.intro_burst)
    pr, pb = (n[0], n[1]) if kind == "pow" and n else (n[2], n[3]) if kind == "both" and n else \
        (args.pow_rate, args.pow_burst)
    intro = dict(intro_defense=True, intro_rate=ir, intro_burst=ib)
    pow_ = dict(pow=True, pow_queue_rate=pr, pow_queue_burst=pb)
    return {"off": SiteDos(intro_defense=False), "onionbalance": SiteDos(intro_defense=False),
            "intro": SiteDos(**intro), "pow": SiteDos(intro_defense=False, **pow_),
            "both": SiteDos(**intro, **pow_)}[kind]


def label(text: str, dos) -> str:
    kind, _ = parse_scenario(text)
    parts = []
    if dos.intro_defense:
        parts.append(f"intro {dos.intro_rate}/{dos.intro_burst}")
    if dos.pow:
        parts.append(f"pow {dos.pow_queue_rate}/{dos.pow_queue_burst}")
    return " + ".join(parts) if parts and kind != "onionbalance" else kind


def run_scenario(lab: Lab, index: int, text: str, args, flood_ports: list[int]) -> Outcome:
    dos = scenario_dos(text, args)
    name = label(text, dos)
    kind, _ = parse_scenario(text)
    out = Outcome(name)
    tag = f"fl{index}"
    log(f"--- {name}: {dos}")
    key = lab.make_frontend_key(tag=tag)
    workers = lab.start_workers(args.workers, tor_daemons=args.tor_daemons, tag=f"{tag}w", dos=dos,
                                metrics=True)
    instances = [a for w in workers for a in w.instance_addresses]
    for address in instances:  # the balancer is timed from a state where every instance answers
        wait_reachable(lab.net.client.socks_port, f"http://{address}.onion/", 240, f"instance {address}")
    record = lab.start_balancer("onionbalance" if kind == "onionbalance" else "onion", tag=f"{tag}bal",
                                key_file=Path(lab.info["frontend_key_file"]), instances=instances)
    url = f"http://{key.hostname}/"
    try:
        try:
            _, out.reachable_s = wait_reachable(lab.net.client.socks_port, url, 300, f"{name} frontend")
        except TimeoutError as exc:
            out.note = f"frontend never reachable: {exc}"
            log(out.note)
            return out
        log(f"{name}: frontend reachable after {out.reachable_s:.1f} s; baseline readers for "
            f"{args.baseline_seconds:.0f} s")
        ports = [p for w in workers for p in w.metrics_ports]
        with MetricsSampler(ports) as sampler:
            readers = ProbeLoop(lab.net.client.socks_port, url, interval=args.reader_interval,
                                timeout=args.reader_timeout, prefix=f"reader-{tag}-").start()
            time.sleep(args.baseline_seconds)
            flood_start = time.time()
            log(f"{name}: flood: {len(flood_ports)} clients x {args.flood_concurrency} in flight, at most "
                f"{args.flood_max} introductions in {args.flood_seconds:.0f} s")
            out.flood = flood(flood_ports, key.hostname, concurrency=args.flood_concurrency,
                              seconds=args.flood_seconds, limit=args.flood_max, timeout=args.flood_timeout,
                              tag=f"flood-{tag}-{int(flood_start)}")
            flood_end = time.time()
            probes = readers.stop()
            out.peaks = dict(sampler.peak)
        out.before = [p for p in probes if p.at + p.seconds < flood_start]
        out.during = [p for p in probes if p.at >= flood_start and p.at < flood_end]
        log(f"{name}: flood done: {out.flood}; readers before {summary(out.before)}, during {summary(out.during)}; "
            f"peaks {out.peaks}")
        return out
    finally:
        lab.procs.stop(record["process"])
        lab.procs.stop(f"tor-{record['tor']}")
        for w in workers:
            lab.kill_worker(w)


def summary(probes: list) -> str:
    if not probes:
        return "-"
    ok = [p for p in probes if p.ok]
    lat = sorted(p.seconds for p in ok)
    if not lat:
        return f"0/{len(probes)}"
    p90 = lat[min(len(lat) - 1, int(round(0.9 * (len(lat) - 1))))]
    return f"{len(ok)}/{len(probes)} ok, {statistics.median(lat):.1f}/{p90:.1f} s"


def print_table(outcomes: list[Outcome], args) -> None:
    print()
    print(f"flood: {args.flood_clients} clients x {args.flood_concurrency} in flight, <= {args.flood_max} "
          f"introductions, <= {args.flood_seconds:.0f} s; readers every {args.reader_interval} s "
          f"(timeout {args.reader_timeout:.0f} s); workers {args.workers} x {args.tor_daemons} tor daemons; "
          f"intro {args.intro_rate}/{args.intro_burst}, pow queue {args.pow_rate}/{args.pow_burst}")
    head = (f"{'scenario':30} {'readers before (ok, median/p90)':32} {'readers during flood':32} "
            f"{'flood: started/connected/timeout/failed':40} {'max pqueue':>10} {'max effort':>10}")
    print(head)
    for o in outcomes:
        f = o.flood
        flood_text = f"{f.started}/{f.connected}/{f.timed_out}/{f.failed} in {f.seconds:.0f} s" if f else o.note
        print(f"{o.scenario:30} {summary(o.before):32} {summary(o.during):32} {flood_text:40} "
              f"{o.peaks.get('rdv_pow_pqueue_count', 0):10.0f} {o.peaks.get('pow_suggested_effort', 0):10.0f}")


def bounded(lo: float, hi: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo}..{hi}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--workers", type=bounded(1, 4), default=2)
    p.add_argument("--tor-daemons", type=bounded(1, 4), default=1)
    p.add_argument("--flood-clients", type=bounded(1, MAX_FLOOD_CLIENTS), default=2)
    p.add_argument("--flood-concurrency", type=bounded(1, MAX_CONCURRENCY), default=24,
                   help="introductions in flight per flood client")
    p.add_argument("--flood-seconds", type=bounded(10, MAX_SECONDS, float), default=120.0)
    p.add_argument("--flood-max", type=bounded(1, MAX_INTRODUCTIONS), default=6000,
                   help="introductions in all, per scenario")
    p.add_argument("--flood-timeout", type=bounded(1, 60, float), default=20.0)
    p.add_argument("--baseline-seconds", type=bounded(0, 300, float), default=40.0)
    p.add_argument("--reader-interval", type=bounded(0.5, 30, float), default=3.0)
    p.add_argument("--reader-timeout", type=bounded(5, 60, float), default=30.0)
    p.add_argument("--intro-rate", type=bounded(1, 10000), default=25)
    p.add_argument("--intro-burst", type=bounded(1, 10000), default=200)
    p.add_argument("--pow-rate", type=bounded(0, 10000), default=250)
    p.add_argument("--pow-burst", type=bounded(1, 100000), default=2500)
    p.add_argument("--state-dir", type=Path, default=Path(__file__).resolve().parent.parent / ".lab" / "flood")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for text in names:
        try:
            scenario_dos(text, args)
        except ValueError as exc:  # also the DoS values' own checks (rate <= burst)
            p.error(f"--scenarios: {exc}")

    lab = Lab.create(args.state_dir, tie_to_parent=True, voting_interval=ONIONBALANCE_VOTING_INTERVAL,
                     progress=log)
    outcomes = []
    try:
        lab.start_network()
        lab.start_origin(listeners=args.workers)
        from lab.tornet import wait_bootstrapped

        # The flood's own tor clients (many circuits in flight each), on the same network.
        flooders = [lab.net.add_tor(lab.procs, lab.ports, f"flood{i}", ["MaxClientCircuitsPending 1024"],
                                    socks=True) for i in range(args.flood_clients)]
        for node in flooders:
            wait_bootstrapped(lab.net, lab.procs, node, 120)
        flood_ports = [n.socks_port for n in flooders]
        for index, text in enumerate(names):
            outcomes.append(run_scenario(lab, index, text, args, flood_ports))
            log(f"after {outcomes[-1].scenario}: load average {os.getloadavg()[0]:.2f}")
    finally:
        lab.down()
    print_table(outcomes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
