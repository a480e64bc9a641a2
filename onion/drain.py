"""`python -m onion drained ADDRESS...`: has the balancer stopped publishing these instances?

The scale-in step of a deploy (removing a worker) waits on this before the worker's
machine goes: the worker's instances must be gone from what the balancer publishes, or
clients would still be sent to introduction points that are about to disappear.

It reads the status file the running balancer writes (onion.status) and, with `--config`,
the balancer's config. Exit status and one line on stdout:

  0  drained: the balancer, running the current config, publishes without the instances
     on every responsible HSDir (current and next time period);
  1  not yet, and why (status stale or older than the config, an instance still listed
     or its introduction points still published, an HSDir without the new descriptor);
  3  the config still lists an instance: nothing will drain it (a whole-stack teardown,
     or the balancer was not re-rendered), so waiting is pointless;
  2  the status or the config cannot be read (the message says which).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Iterable, Mapping, Optional

from onion.cli import command_parser
from onion.config import DEFAULT_STATE_DIR, load_config, normalize_address
from onion.status import read_status

DRAINED, NOT_YET, STILL_CONFIGURED = 0, 1, 3
# The balancer rewrites its status at least this often while it runs; an older file means
# its process is gone and nothing it says is current.
STATUS_FRESH_SECONDS = 180
# Upload states that mean "this HSDir holds the descriptor we built last" (a standby
# balancer builds but never uploads: blue/green).
DONE_STATES = ("uploaded", "standby")


def not_drained_reason(status: Mapping[str, Any], addresses: Iterable[str], *, now: float,
                       config_mtime: Optional[float] = None,
                       fresh_seconds: float = STATUS_FRESH_SECONDS) -> Optional[str]:
    """Why the balancer's `status` (onion.status's dict) still publishes any of `addresses`
    (56 characters, with or without ".onion"), or None when it publishes without them.

    Conservative: an introduction point the status cannot attribute to an instance ("?")
    counts as possibly theirs, and one HSDir still holding an older descriptor is enough
    to wait (clients that ask it would get the removed instances' introduction points)."""
    gone = {a.lower().removesuffix(".onion") for a in addresses}
    written = status.get("written_at")
    written = float(written) if isinstance(written, (int, float)) else 0.0
    if now - written > fresh_seconds:
        return f"status file is stale (written {now - written:.0f} s ago): is the balancer core running?"
    if config_mtime is not None and written < config_mtime:
        return "status predates the current config: the balancer has not reloaded it yet"
    frontends = status.get("frontends") or []
    if not frontends:
        return "the status lists no frontends yet"
    for fe in frontends:
        name = fe.get("name", "?")
        listed = gone & {i.get("address") for i in fe.get("instances") or []}
        if listed:
            return f"frontend {name} still lists {', '.join(sorted(listed))}"
        owners = {p.get("instance") for p in fe.get("published_intro_points") or []}
        if owners & gone or "?" in owners:
            return f"frontend {name}: descriptors with the instances' introduction points are still published"
        uploads = [u for d in fe.get("descriptors") or [] for u in d.get("hsdirs") or []]
        waiting = [u.get("hsdir", "?") for u in uploads if u.get("state") not in DONE_STATES]
        if not uploads or waiting:
            return (f"frontend {name}: not every HSDir has the new descriptor yet "
                    f"({len(waiting) if uploads else 'no'} of {len(uploads)} pending)")
    return None


def add_commands(sub: argparse._SubParsersAction) -> None:
    drained = command_parser(
        sub, "drained", help="exit 0 once the balancer publishes without the given instances",
        description="Say whether the running balancer core publishes without the given instance "
                    "addresses: exit 0 when none of them is listed or published and every responsible "
                    "HSDir holds a descriptor built after the config changed; 1 (not yet), 3 (the config "
                    "still lists one: nothing will drain it) or 2 (unreadable), with one line saying why. "
                    "A deploy's scale-in waits on it before a worker goes.",
        examples="""\
onion drained -c /etc/onionstack/balancer.yaml abcd...xyz.onion efgh...uvw.onion
onion drained --state-dir /var/lib/onion-balancer abcd...xyz.onion      # no config: no reload check""")
    drained.add_argument("addresses", nargs="+", metavar="ADDRESS", help="instance onion addresses")
    drained.add_argument("-c", "--config", metavar="FILE",
                         help="the balancer's config: its mtime (the status must be newer) and instances")
    drained.add_argument("--state-dir", metavar="DIR",
                         help=f"status file directory (default: the config's state_dir, else {DEFAULT_STATE_DIR})")
    drained.set_defaults(func=cmd_drained)


def cmd_drained(args) -> int:
    addresses = sorted({normalize_address(a, "ADDRESS") for a in args.addresses})
    config_mtime = None
    state_dir = args.state_dir
    if args.config:
        cfg = load_config(args.config, load_keys=False)
        config_mtime = os.stat(args.config).st_mtime
        state_dir = state_dir or cfg.state_dir
        listed = sorted({i.address for fe in cfg.frontends for i in fe.instances} & set(addresses))
        if listed:
            print(f"the balancer config still lists {', '.join(listed)}: nothing will drain "
                  f"{'it' if len(listed) == 1 else 'them'} (whole-stack destroy?)")
            return STILL_CONFIGURED
    status = read_status(state_dir or DEFAULT_STATE_DIR)
    reason = not_drained_reason(status, addresses, now=time.time(), config_mtime=config_mtime)
    if reason is not None:
        print(reason)
        return NOT_YET
    print(f"the balancer publishes without {' '.join(addresses)}")
    return DRAINED
