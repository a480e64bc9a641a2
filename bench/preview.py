"""Benchmark: evaluate the real program under mocks for 1, 10 and 30 workers.

Prints each size's best wall time of N runs (the minimum: other load on the machine only
ever adds time), the marginal cost per worker (1->10 and 10->30: about
equal when cost grows linearly, the second much larger if something loops over workers
quadratically), and, last, the 30-worker/1-worker ratio against the 1-worker baseline
measured in this same run. Target: 30 workers in under 10 s.

    .venv/bin/python -m bench.preview [--repeat N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mockrun  # noqa: E402

SIZES = (1, 10, 30)


def config(workers: int) -> dict:
    cfg, _ = mockrun.with_demo_secrets(mockrun.load_stack_file("prod"))
    cfg["onionstack:workers"] = workers
    return cfg


def measure(workers: int, repeat: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        result = mockrun.run_program(config(workers))
        times.append(result.seconds)
        count = len(result.resources)
    return min(times), count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preview")
    parser.add_argument("--repeat", type=int, default=5, help="runs per size; the fastest counts (default 5)")
    args = parser.parse_args(argv)

    mockrun.run_program(config(1))  # warm-up: imports and first-use costs are not per-worker
    results = {n: measure(n, args.repeat) for n in SIZES}
    for n, (seconds, count) in results.items():
        print(f"workers={n:2d}: {seconds:.3f} s  ({count} resources, best of {args.repeat})")
    t1, t10, t30 = (results[n][0] for n in SIZES)
    print(f"per_worker_1_to_10: {(t10 - t1) / 9 * 1000:.1f} ms")
    print(f"per_worker_10_to_30: {(t30 - t10) / 20 * 1000:.1f} ms")
    print(f"per_worker: {(t30 - t1) / 29 * 1000:.1f} ms")
    print(f"target_30_workers_under_10s: {'yes' if t30 < 10 else 'NO'}")
    print(f"scaling_30_vs_1: {t30 / t1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
