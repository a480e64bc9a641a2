"""Benchmark: what numpy and pybase64 buy the balancer, against the standard library's path.

Both are optional in `onion` (the balancer installs neither; tests/test_onion_optional_deps.py
checks the bytes are the same). This prints, in one run, the CPU time of the balancer's
costly operations with both installed and with neither (each in a child process where the
missing ones cannot be imported, rounds alternated so a machine that changes speed affects
both alike), the ratio, and what it comes to at the balancer's scale:

(a) a master descriptor with 20 intro points from a warm builder (a distinct descriptor
    per HSDir, the steady state), (b) the same from a new builder (a new time period:
    every certificate made afresh), (c) a publish cycle of 60 frontends x 2 periods x
    8 HSDirs with distinct descriptors (bench/descriptor.py's scale), (d) the first
    revision counter of a fresh blinded key at the end of an SRV window (OPE), (e) a hash
    ring from an 8000-relay consensus text, (f) the core's resident memory after import.

    .venv/bin/python bench/optional_deps.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, random, sys, time
for name in BLOCKED:
    sys.modules[name] = None
sys.path.insert(0, REPO)
import onion.balancer, onion.frontend, onion.servicecli   # what `onion run` imports
rss_import = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
from onion import crypto, descriptor as desc, hashring
from onion.keys import IdentityKey
import nacl.bindings as sodium

def cpu(fn, n):
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n

def intro(r):
    return desc.IntroPoint(
        link_specifiers=(desc.LinkSpecifier.ipv4("10.1.2.3", 9001), desc.LinkSpecifier.legacy_id(r.randbytes(20)),
                         desc.LinkSpecifier.ed25519_id(r.randbytes(32))),
        onion_key=sodium.crypto_scalarmult_base(r.randbytes(32)),
        auth_key=crypto.SeedSigningKey(r.randbytes(32)).public_key,
        enc_key=sodium.crypto_scalarmult_base(r.randbytes(32)))

r = random.Random(1)
ident = IdentityKey.generate()
ips = [intro(r) for _ in range(40)]
out = {"numpy": desc._np is not None, "pybase64": desc.pybase64 is not None, "rss_import_mib": rss_import}
warm = desc.MasterDescriptorBuilder(ident, time_period_number=20000, period_length=1440)
warm.build(ips[:20], revision_counter=1)
out["a_warm_build_ms"] = 1e3 * cpu(lambda: warm.build(ips[:20], revision_counter=2), 200)

def cold():
    desc.MasterDescriptorBuilder(ident, time_period_number=20000, period_length=1440).build(ips[:20], revision_counter=3)
out["b_new_builder_ms"] = 1e3 * cpu(cold, 50)

frontends = [IdentityKey.generate() for _ in range(60)]
builders = [(desc.MasterDescriptorBuilder(f, time_period_number=20000 + p, period_length=1440))
            for f in frontends for p in (0, 1)]
for b in builders:
    b.build(ips[:20], revision_counter=1)
def cycle():
    for b in builders:
        for h in range(8):
            window = ips[h % 2 * 20:h % 2 * 20 + 20]
            b.build(window, revision_counter=10 + h)
cycle()
out["c_cycle_ms"] = 1e3 * cpu(cycle, 2)

def ope():
    crypto.OrderPreservingCipher(os.urandom(32)).encrypt(crypto.OPE_INPUT_MAX)
out["d_ope_first_ms"] = 1e3 * cpu(ope, 30)

sys.path.insert(0, os.path.join(REPO, "tests"))
from test_onion_hashring import make_consensus_text
text, ids = make_consensus_text(8000)
out["e_ring_ms"] = 1e3 * cpu(lambda: hashring.HashRing.from_consensus(text, ids), 5)
out["rss_end_mib"] = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(json.dumps(out))
"""

ROWS = [
    ("a_warm_build_ms", "(a) descriptor, 20 intro points, warm builder", "ms"),
    ("b_new_builder_ms", "(b) descriptor from a new builder (new period)", "ms"),
    ("c_cycle_ms", "(c) publish cycle: 60 frontends x 2 periods x 8 HSDirs", "ms"),
    ("d_ope_first_ms", "(d) first revision counter of a fresh key (OPE)", "ms"),
    ("e_ring_ms", "(e) hash ring from an 8000-relay consensus", "ms"),
    ("rss_import_mib", "(f) resident memory after importing the core", "MiB"),
]


def child(blocked: tuple[str, ...]) -> dict:
    script = CHILD.replace("BLOCKED", repr(blocked)).replace("REPO", repr(str(REPO)))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"with": [], "without": []}
    for i in range(args.rounds):
        for label, blocked in (("with", ()), ("without", ("numpy", "pybase64"))):
            runs[label].append(child(blocked))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    assert all(r["numpy"] and r["pybase64"] for r in runs["with"]), "install numpy and pybase64 to compare"
    assert not any(r["numpy"] or r["pybase64"] for r in runs["without"])
    med = {label: {k: statistics.median(r[k] for r in rs) for k, _, _ in ROWS} for label, rs in runs.items()}
    print(f"{'operation (CPU per call, median of ' + str(args.rounds) + ' rounds)':58} "
          f"{'with':>9} {'without':>9} {'without/with':>13}")
    for key, what, unit in ROWS:
        w, wo = med["with"][key], med["without"][key]
        print(f"{what:58} {w:8.3f}{unit[0]} {wo:8.3f}{unit[0]} {wo / w:12.2f}x")
    w, wo = med["with"]["c_cycle_ms"], med["without"]["c_cycle_ms"]
    # The balancer rebuilds a frontend's descriptors when its intro points change, when the
    # HSDir set changes and hourly: a handful of cycles an hour, not a stream of them.
    per_hour = 10  # cycles an hour: a generous count of intro point changes plus the republish
    print(f"at the balancer's scale: one publish cycle of 60 frontends costs {w:.0f} ms of CPU with "
          f"numpy and pybase64, {wo:.0f} ms without ({wo - w:+.0f} ms); at {per_hour} cycles an hour the "
          f"difference is {(wo - w) * per_hour / 3_600_000 * 100:.3f}% of one core")
    print(f"memory: the core's resident size after import is {med['with']['rss_import_mib']:.1f} MiB with, "
          f"{med['without']['rss_import_mib']:.1f} MiB without (MemoryMax=256M)")
    print(f"speedup_with_optional_deps_cycle: {wo / w:.2f}  "
          f"rss_ratio_with_optional_deps: {med['with']['rss_import_mib'] / med['without']['rss_import_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
