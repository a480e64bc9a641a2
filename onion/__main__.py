"""`python -m onion …`: the balancer-side CLI.

Each command group lives in its own module exposing `add_commands(subparsers)`; a command
sets `func` on its parser, which returns the process exit code. Errors a user can fix are
raised as `onion.errors.UsageError` (or any `ValueError`) and printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Command modules, in help order. Add a module here when it gains commands.
COMMAND_MODULES: tuple[str, ...] = ("onion.servicecli", "onion.keycli", "onion.tconf", "onion.drain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m onion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"onion {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
