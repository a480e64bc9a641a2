"""argparse helpers shared by the `onion` command modules (servicecli, keycli, tconf)."""
from __future__ import annotations

import argparse
import textwrap


def command_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                   examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows `description` and an `examples:` block, verbatim.

    `examples` is one or more command lines (with `# comments`), written for the installed
    `onion` command (`python -m onion` takes the same arguments)."""
    lines = [line for line in examples.strip("\n").splitlines()]
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 88, break_on_hyphens=False),
                          epilog="examples:\n" + "\n".join("  " + line for line in lines),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
