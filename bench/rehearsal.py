"""Benchmark of the deploy rehearsal (docs/rehearsal.md): wall time from nothing to the
frontend answering, split into host boot, the stack's steps and first reachability; the
no-op second run; the whole rehearsal with every check. Targets (issue): the whole
rehearsal under 10 minutes on this machine, a no-op run under 60 s.

    sudo .venv/bin/python bench/rehearsal.py            # ~6-8 min; root
    sudo .venv/bin/python bench/rehearsal.py --json     # one JSON object instead of the table

Phases overlap where the rehearsal overlaps them: the hosts boot while the lab's Tor
network bootstraps, so "to frontend" is less than the sum of its parts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"whole_rehearsal": 600.0, "noop_run": 60.0}


def main(argv: list[str] | None = None) -> int:
    from lab.rehearse.checks import CheckFailed, Report, rehearse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--state-dir", type=Path, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if not args.json:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    state = args.state_dir or Path(tempfile.mkdtemp(prefix="rehearsal-bench-"))
    report = Report(print=progress)
    failed = ""
    t0 = time.monotonic()
    try:
        rehearse(state, progress=progress, report=report, tie_to_parent=True)
    except CheckFailed as exc:  # the phases measured until then are still printed
        failed = str(exc)
    whole = time.monotonic() - t0
    t = report.timings
    rows = [
        ("host boot (4 containers, cloud-init done)", t.get("host_boot"), None),
        ("Tor network bootstrap (in parallel with the boot)", t.get("network"), None),
        ("steps of the first deploy (8 remote steps)", t.get("steps"), None),
        ("first reachability (steps done -> frontend answers)", t.get("first_reachability"), None),
        ("nothing -> frontend answers", t.get("total"), None),
        ("no-op second run", t.get("noop_run"), TARGETS["noop_run"]),
        ("whole rehearsal, every check, teardown", None if failed else whole, TARGETS["whole_rehearsal"]),
    ]
    if args.json:
        print(json.dumps({**{k: round(v, 1) for k, v in t.items()}, "whole_rehearsal": round(whole, 1),
                          "checks_passed": len(report.passed), "failed": failed}))
        return 1 if failed else 0
    print()
    print(f"{'phase':55} {'seconds':>8} {'target':>8}")
    for name, seconds, target in rows:
        if seconds is None:
            print(f"{name:55} {'-':>8}")
            continue
        verdict = "" if target is None else (f"{target:8.0f}  " + ("ok" if seconds < target else "MISSED"))
        print(f"{name:55} {seconds:8.1f} {verdict}")
    print(f"\n{len(report.passed)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    return 0 if not failed and all(s < tg for _, s, tg in rows if tg and s is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
