"""`python -m lab up|status|down`: the whole onion site on a private Tor network on 127.0.0.1.

up         start the network, origin, workers and balancer; print the frontend and a curl line
status     what is running (tor bootstrap per node, workers, balancer, frontend)
down       stop every process the lab started, by pid
rehearse   the stack's own remote steps on local systemd hosts, then the checks (as root);
           `rehearse down` removes what an interrupted rehearsal left
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

from lab.balancer import KINDS

DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / ".lab"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    state_help = f"where everything lives (default {DEFAULT_STATE_DIR})"
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=state_help)
    # --state-dir also after the command (`python -m lab status --state-dir DIR`), as the
    # lines `up` prints write it; SUPPRESS keeps the one given before the command otherwise.
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=state_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start the lab and print the frontend address", parents=[state])
    up.add_argument("--workers", type=_count(1, 8, "--workers"), default=2,
                    help="number of workers (1..8, default 2)")
    up.add_argument("--tor-daemons", type=_count(1, 8, "--tor-daemons"), default=2,
                    help="tor daemons per worker (1..8, default 2)")
    up.add_argument("--balancer", choices=KINDS, default="onion",
                    help="onion: onionstack's balancer core (default); onionbalance: 0.2.4 baseline")
    up.add_argument("--https", action="store_true",
                    help="the site serves HTTPS too (a self-signed certificate for the frontend, as "
                         "`https: selfSigned` makes); the curl line then carries --cacert")
    up.add_argument("--app", action="store_true",
                    help="run the sample app site (a guestbook, apps/guestbook) on the workers against a "
                         "PostgreSQL on 127.0.0.1 instead of the proxy site; prints curl lines that write "
                         "a line through the onion address and read it back")
    up.add_argument("--voting-interval", type=_count(10, 300, "--voting-interval"), default=20,
                    help="seconds (10..300, default 20); a time period is 24 of them")
    reh = sub.add_parser("rehearse", help="rehearse a deploy on local systemd hosts (root)", parents=[state])
    reh.add_argument("action", nargs="?", choices=("down",),
                     help="down: remove the containers, mounts, links and processes of a rehearsal")
    reh.add_argument("--workers", type=_count(2, 4, "--workers"), default=2,
                     help="workers of the first deploy (2..4, default 2); the rehearsal scales in by one")
    reh.add_argument("--tor-daemons", type=_count(1, 4, "--tor-daemons"), default=2,
                     help="tor daemons per worker (1..4, default 2)")
    reh.add_argument("--keep", action="store_true",
                     help="leave everything running after the checks (remove it with `rehearse down`)")
    sub.add_parser("status", help="show what is running", parents=[state])
    sub.add_parser("down", help="stop every process of the lab", parents=[state])
    return parser


def _count(lo: int, hi: int, flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not a whole number in {lo}..{hi}")
        return value
    return parse


def cmd_up(args) -> int:
    from lab import preflight

    absent = preflight.missing()
    if absent:
        print(f"lab up: {preflight.report(absent)}", file=sys.stderr)
        return 2
    from lab.stack import Lab

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    lab = Lab.create(args.state_dir, voting_interval=args.voting_interval, progress=progress)
    # Import what `up` would import lazily before SIGTERM can interrupt it: an interrupt
    # raised inside an import may come out as another error (class creation wraps it in a
    # RuntimeError) or make CPython exit by SIGINT although it was caught.
    for module in ("lab.services", "nodes.render", "onion.keys", "onion.status", "stem.control"):
        importlib.import_module(module)

    # SIGTERM tears down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if args.app and (args.https or args.balancer != "onion"):
            raise ValueError("--app runs with onionstack's balancer core over plain HTTP (tor encrypts)")
        lab.up(workers=args.workers, balancer=args.balancer, tor_daemons=args.tor_daemons, https=args.https,
               app=args.app)
    except BaseException as exc:
        stopped = lab.down()
        interrupted = any(isinstance(e, KeyboardInterrupt) for e in (exc, exc.__cause__, exc.__context__))
        reason = "interrupted" if interrupted else f"failed: {exc}"
        print(f"lab up {reason}; stopped {len(stopped)} processes. Logs: {lab.procs.log_dir}",
              file=sys.stderr)
        return 130 if interrupted else 1
    print()
    print(f"frontend: {lab.info['frontend']}")
    if args.app:
        write, read = lab.app_curl_lines()
        print(f"write:    {write}")
        print(f"read:     {read}")
    else:
        print(f"try:      {lab.curl_line()}")
    print(f"status:   python -m lab status{_state_flag(args)}")
    print(f"stop:     python -m lab down{_state_flag(args)}")
    return 0


def _state_flag(args) -> str:
    return "" if args.state_dir == DEFAULT_STATE_DIR else f" --state-dir {args.state_dir}"


def cmd_status(args) -> int:
    from lab.stack import Lab

    lab = Lab.load(args.state_dir)
    print("\n".join(lab.status_lines(start_command=f"python -m lab up{_state_flag(args)}")))
    return 0


def cmd_down(args) -> int:
    from lab.procs import ProcessRegistry
    from lab.stack import Lab

    try:
        stopped = Lab.load(args.state_dir).down()  # also records when, for `status`
    except FileNotFoundError:  # no lab.json: whatever pids there are, stop them
        stopped = ProcessRegistry(args.state_dir).stop_all()
    print(f"stopped {len(stopped)} processes" + (f": {', '.join(stopped)}" if stopped else ""))
    return 0


def cmd_rehearse(args) -> int:
    from lab.rehearse.checks import CheckFailed, rehearse
    from lab.rehearse.hosts import Fabric
    from lab.procs import ProcessRegistry

    state = args.state_dir / "rehearse"
    if args.action == "down":
        stopped = ProcessRegistry(state / "lab").stop_all()
        undone = Fabric.load(state).teardown()
        print(f"stopped {len(stopped)} processes; undid {len(undone)} things" +
              "".join(f"\n  {u}" for u in undone))
        return 0

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        report = rehearse(state, workers=args.workers, tor_daemons=args.tor_daemons, progress=progress,
                          keep=args.keep)
    except CheckFailed:
        print(f"lab rehearse: a check failed; logs in {state}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab rehearse: interrupted; " + ("left as it was: `python -m lab rehearse down` removes it"
                                              if args.keep else "everything it made is removed"), file=sys.stderr)
        return 130
    print(f"\nall {len(report.passed)} checks passed; " +
          ", ".join(f"{k} {v:.0f} s" for k, v in report.timings.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"up": cmd_up, "status": cmd_status, "down": cmd_down,
                "rehearse": cmd_rehearse}[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
