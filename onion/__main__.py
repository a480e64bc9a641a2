"""`onion …` (or `python -m onion …`): the balancer core and its operator CLI.

Each command group lives in its own module exposing `add_commands(subparsers)`; a command
sets `func` on its parser, which returns the process exit code. Errors a user can fix are
raised as `onion.errors.UsageError` (or any `ValueError`) and printed as one line.
Every command's parser is made with `onion.cli.command_parser`, so its `--help` has a
description and examples.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from onion import __version__

# Command modules, in help order. Add a module here when it gains commands.
COMMAND_MODULES: tuple[str, ...] = ("onion.servicecli", "onion.keycli", "onion.tconf", "onion.drain")

DESCRIPTION = "Load-balanced v3 onion services: the balancer core and its operator commands."
EPILOG = """\
examples:
  onion keygen --out keys/news                      # a new site key; prints its onion address
  onion run -c /etc/onionstack/balancer.yaml        # the balancer core (OnionBalance's config.yaml works too)
  onion status -c /etc/onionstack/balancer.yaml     # what the running core publishes
  onion COMMAND --help                              # each command's options and examples

`python -m onion …` is the same program."""


def _prog() -> str:
    return "python -m onion" if os.path.basename(sys.argv[0]) == "__main__.py" else "onion"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or _prog(), description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onion {__version__}")
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
