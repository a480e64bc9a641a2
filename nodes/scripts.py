"""The shell programs the remote steps run, rendered from nodes/templates/steps/.

Each step's `create` (or `delete`) is `sudo -n /bin/bash -c '<script>'` with one of these
scripts; the role's own files and scripts (install-packages.sh, apply.sh) arrive in the
step's payload (nodes/payload.py). No secret is ever part of a script.
"""
from __future__ import annotations

import shlex
from typing import Optional, Sequence

from nodes.payload import ONION_DISTRIBUTION
from nodes.render import BALANCER_UNIT, WorkerSpec, render_template
from nodes.roles import BALANCER_CONFIG, BALANCER_STATE_DIR, LAYOUT, PACKAGE_LIB, VENV, VENV_PYTHON
from onion.keys import parse_address

# tmpfs: the staged payload (master keys, the database password) and apply.sh's backups of
# the live files never touch a disk, and a run cut short leaves nothing past a reboot.
STAGING_PREFIX = "/run/onionstack-stage."
STAGING_TMPDIR = "/run"

# The worker's addresses: how long its step waits for tor to write every hostname file.
HOSTNAME_WAIT_SECONDS = 180
ADDRESS_LINE = "onionstack-instance"  # stdout lines: "onionstack-instance <site> <daemon> <address>"

# Scale-in: a removed worker's drain waits (bounded) for the balancer to publish without it.
DRAIN_WAIT_SECONDS = 900
DRAIN_POLL_SECONDS = 15

# The balancer's lock inside the package (bash scripts/lock): what its venv is built from.
ONION_LOCK = "onion/requirements.lock"
# Where the balancer's `onion` command is linked (to the venv's console script): on root's PATH.
ONION_COMMAND_LINK = "/usr/local/bin/onion"
# What the package step imports from the new package before it swaps it in.
PACKAGE_IMPORT_CHECK = ("onion.balancer", "onion.servicecli", "onion.status", "onion.drain")
# An image's own wheels (the rehearsal's hosts, which have no internet): when this directory
# exists, the balancer's pip installs from it only.
WHEELHOUSE = "/var/cache/onionstack/wheels"


def as_root(script: str) -> str:
    """The command line that runs `script` as root: the script text is quoted as one
    argument, so it is shown in the Pulumi diff and the tests can shellcheck it."""
    return f"sudo -n /bin/bash -c {shlex.quote(script)}"


def runner_script(script_dir: str = LAYOUT.script_dir) -> str:
    """Unpack the payload from stdin and run the role's install-packages.sh and apply.sh
    (`script_dir` relative to /: where the payload puts them)."""
    return render_template("steps/runner.sh.j2", script_dir=script_dir.strip("/"),
                           staging_prefix=STAGING_PREFIX, staging_tmpdir=STAGING_TMPDIR)


def worker_setup_script(spec: WorkerSpec, *, hostname_wait: int = HOSTNAME_WAIT_SECONDS) -> str:
    """The runner, then print every instance address once tor has written it."""
    return render_template("steps/worker-setup.sh.j2", spec=spec, hostname_wait=int(hostname_wait),
                           address_line=ADDRESS_LINE, script_dir=spec.layout.script_dir.strip("/"),
                           staging_prefix=STAGING_PREFIX, staging_tmpdir=STAGING_TMPDIR)


def package_script(package_path: str, *, venv: str = VENV, venvs: Optional[str] = None, package_lib: str = PACKAGE_LIB,
                   imports: Sequence[str] = PACKAGE_IMPORT_CHECK, command_link: str = ONION_COMMAND_LINK) -> str:
    """Install the copied `onion` package and a venv built from exactly its lock
    (onion/requirements.lock, hash-checked and verified on the machine; see the template),
    then the package into that venv from its pyproject.toml (the `onion` command, linked as
    `command_link`). `venv` is the path the units use (a symlink to `venvs`/<lock digest>)."""
    return render_template("steps/balancer-package.sh.j2", package_path=package_path, venv=venv,
                           venvs=venvs or f"{venv}s", package_lib=package_lib, lock=ONION_LOCK,
                           imports=tuple(imports), unit=BALANCER_UNIT, command_link=command_link,
                           dist_name=ONION_DISTRIBUTION["name"], wheelhouse=WHEELHOUSE)


def drain_script(addresses: Sequence[str], *, wait: int = DRAIN_WAIT_SECONDS, poll: int = DRAIN_POLL_SECONDS,
                 config: str = BALANCER_CONFIG, python: str = VENV_PYTHON, state_dir: str = BALANCER_STATE_DIR,
                 package_lib: str = PACKAGE_LIB) -> str:
    """A drain's delete: wait (bounded) until `python -m onion drained` says the balancer
    publishes without `addresses` (see the template for the cases)."""
    return render_template("steps/worker-drain.sh.j2", addresses=[a.removesuffix(".onion") for a in addresses],
                           wait=int(wait), poll=int(poll), config=config, python=python, state_dir=state_dir,
                           package_lib=package_lib)


def parse_instance_addresses(stdout: Optional[str], sites: Sequence[str],
                             daemons: Sequence[str]) -> Optional[dict[str, list[str]]]:
    """site -> the worker's instance addresses (56 chars, daemon order) from a step's stdout.

    Every (site, daemon) must be reported exactly once with a valid v3 address, else the
    balancer would be rendered from a wrong list: raise naming what is missing or bad.
    `None` (no stdout at all) only happens under Pulumi mocks that do not emulate commands;
    the provider always sets stdout. It stays None ("not known").
    """
    if stdout is None:
        return None
    found: dict[tuple[str, str], str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] != ADDRESS_LINE:
            continue
        _, site, daemon, address = parts
        try:
            parse_address(address)
        except ValueError:
            raise ValueError(f"worker step reported {address!r} for site {site} daemon {daemon}: "
                             f"not a v3 onion address; check that daemon's hostname file") from None
        found[(site, daemon)] = address.removesuffix(".onion")
    missing = [f"{s}/{d}" for s in sites for d in daemons if (s, d) not in found]
    if missing:
        raise ValueError(f"worker step reported no instance address for {', '.join(missing)}; "
                         f"re-run `pulumi up` (the step waits {HOSTNAME_WAIT_SECONDS} s for tor)")
    return {s: [found[(s, d)] for d in daemons] for s in sites}
