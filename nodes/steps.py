"""Remote step helpers: how onionstack runs anything on a machine with pulumi-command.

Role-agnostic pieces (nodes/bootstrap.py composes them per role):

- `connection(...)`: SSH to a node, through the balancer as jump host for private
  machines; retries without limit while an instance boots (`dial_error_limit=-1`), the
  private key only ever as a Pulumi secret.
- `payload(files)`: a role's rendered files as ONE deterministic tar.gz, base64, fed to
  the step on stdin. stdin is the only channel that keeps secrets (master keys, the
  database password) out of command lines and process listings; it is also atomic (the
  whole file set or nothing) and byte-for-byte the same on every run, so a second
  `pulumi up` with the same config sees no change.
- `role_script(...)`: the shell program a step runs (as root, via `sudo bash -c`):
  unpack the payload into a private staging dir, then run the role's own rendered
  `install-packages.sh` and `apply.sh STAGE` (nodes/render.py: install with backups,
  check with the real tools, restore and reload nothing when a check fails, else
  reload and enable at boot).
- `command(...)`: a `remote.Command` with onionstack's fixed policy: `update` = `create`
  (every script is idempotent), `add_previous_output_in_env=False`, `custom_timeouts`,
  logging off and stdout/stderr/stdin secret for secret-bearing steps, and no `delete`
  unless the caller gives one (a delete that must reach a terminated host cannot
  succeed; see docs/bootstrap.md).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import shlex
import tarfile
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import pulumi
from pulumi_command import remote

from nodes.render import RenderedFile

# Booting EC2 instances refuse SSH for a minute or two: retry dialling without limit and
# let custom_timeouts bound the whole step instead (pulumi-command gives up after 10
# dial errors by default).
UNLIMITED_DIALS = -1
PER_DIAL_TIMEOUT = 30  # seconds
STEP_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m", delete="20m")
# The drain step talks to a host that is already up (it ran its create there); a host that
# has gone must fail the delete in bounded time with a clear error, not hang for 20 min.
DRAIN_DIAL_LIMIT = 20

# tmpfs: the staged payload (master keys, the database password) and apply.sh's backups of
# the live files never touch a disk, and a run cut short leaves nothing past a reboot.
STAGING_PREFIX = "/run/onionstack-stage."
STAGING_TMPDIR = "/run"


# ---------------------------------------------------------------- connection
def connection(
    host: pulumi.Input[str],
    user: str,
    private_key: pulumi.Input[str],
    *,
    jump_host: Optional[pulumi.Input[str]] = None,
    host_key: Optional[pulumi.Input[str]] = None,
    dial_error_limit: int = UNLIMITED_DIALS,
) -> remote.ConnectionArgs:
    """SSH settings for a step; `jump_host` routes through the balancer (same user, same key).

    `private_key` must be a secret Output (config.ssh_private_key.output()): pulumi-command
    marks the whole connection secret anyway, but the key must not be plain even briefly.
    """
    proxy = None
    if jump_host is not None:
        proxy = remote.ProxyConnectionArgs(
            host=jump_host,
            user=user,
            private_key=private_key,
            dial_error_limit=dial_error_limit,
            per_dial_timeout=PER_DIAL_TIMEOUT,
        )
    return remote.ConnectionArgs(
        host=host,
        user=user,
        private_key=private_key,
        host_key=host_key,
        dial_error_limit=dial_error_limit,
        per_dial_timeout=PER_DIAL_TIMEOUT,
        proxy=proxy,
    )


# ---------------------------------------------------------------- payload
@dataclass(frozen=True)
class BinaryFile:
    """A file whose content is bytes (tor's binary key format); same fields as RenderedFile."""

    content: bytes
    mode: int = 0o600
    owner: str = "root"


def payload(files: Mapping[str, "RenderedFile"]) -> str:
    """`files` ({path relative to /: RenderedFile}) as base64 of a reproducible tar.gz.

    A file's `content` is text (UTF-8) or bytes (tor's binary key files).

    Same files, same bytes: sorted names, mtime 0, numeric ids 0 with the owner's *name*
    recorded (GNU tar running as root restores owners by name, so `debian-tor` or
    `postgres` get their files once the package has created the user), gzip mtime 0.
    Directories are not listed: tar creates parents, and their modes are the apply
    script's business (e.g. tor's DataDirectory must be 0700 debian-tor).
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            _check_relpath(path)
            f = files[path]
            data = f.content if isinstance(f.content, bytes) else f.content.encode("utf-8")
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = f.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = f.owner
            info.gname = f.owner
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode("ascii")


def unpack(encoded: str) -> dict[str, RenderedFile]:
    """The inverse of `payload` (tests and mocks read what a step would install)."""
    out: dict[str, RenderedFile] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded))), mode="r") as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                content = data  # binary (tor key files)
            out[info.name] = RenderedFile(content, info.mode, info.uname)
    return out


def _check_relpath(path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or not path or ".." in parts or "" in parts:
        raise ValueError(f"payload path {path!r}: use a normalised path relative to / (no '..', no leading '/')")


def digest(*parts: str) -> str:
    """sha256 over length-prefixed parts: for `triggers` of inputs that are not files."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


# ---------------------------------------------------------------- scripts
def role_script(script_dir: str, *, post: Sequence[str] = ()) -> str:
    """The bash program a step runs as root, reading its payload (see `payload`) on stdin.

    The payload holds the role's rendered files, among them the templates' own
    `<script_dir>/install-packages.sh` and `<script_dir>/apply.sh` (nodes/render.py):

    1. unpack into a fresh 0700 staging dir on tmpfs (a mirror of /; owners and modes
       are apply.sh's business, it installs each file as rendered);
    2. `install-packages.sh`: idempotent apt;
    3. `apply.sh STAGE`: install with backups, check with the real tools, restore and
       exit 1 without reloading anything when a check fails, else reload + enable;
    4. `post`: e.g. print the worker's instance addresses.

    `script_dir` is relative to / (render.Layout().script_dir). No secret is ever part of
    this text: secrets arrive inside the payload.
    """
    q = shlex.quote
    scripts = "$stage/" + script_dir.strip("/")
    lines = [
        "set -euo pipefail",
        "umask 077",
        f"stage=$(mktemp -d {q(STAGING_PREFIX + 'XXXXXX')})",
        "trap 'rm -rf -- \"$stage\"' EXIT",
        # A dropped SSH session or a kill still runs the EXIT trap (the stage holds secrets).
        "trap 'exit 129' HUP",
        "trap 'exit 130' INT",
        "trap 'exit 143' TERM",
        "base64 -d | tar -xz --no-same-owner -C \"$stage\"",
        # stdin is consumed: nothing below may wait on it (apt, dpkg prompts).
        f"bash \"{scripts}/install-packages.sh\" </dev/null",
        f"TMPDIR={q(STAGING_TMPDIR)} bash \"{scripts}/apply.sh\" \"$stage\" </dev/null",
        *post,
    ]
    return "\n".join(lines) + "\n"


def as_root(script: str) -> str:
    """The command line that runs `script` as root: the script text is quoted as one
    argument, so it is shown in the Pulumi diff and the tests can shellcheck it."""
    return f"sudo -n /bin/bash -c {shlex.quote(script)}"


# ---------------------------------------------------------------- the Command
def command(
    name: str,
    *,
    connection: remote.ConnectionArgs,
    create: pulumi.Input[str],
    triggers: Sequence[pulumi.Input],
    opts: pulumi.ResourceOptions,
    stdin: Optional[pulumi.Input[str]] = None,
    delete: Optional[str] = None,
    secret: bool = False,
) -> remote.Command:
    """A remote step with onionstack's policy (module docstring).

    `secret=True` for steps whose stdin carries key material or passwords: logging off,
    and stdout/stderr/stdin marked secret in the state whatever they contain.
    """
    extra = pulumi.ResourceOptions(
        custom_timeouts=STEP_TIMEOUTS,
        additional_secret_outputs=["stdout", "stderr", "stdin"] if secret else None,
    )
    return remote.Command(
        name,
        connection=connection,
        create=create,
        update=create,  # idempotent: re-running create is the update
        delete=delete,
        stdin=stdin,
        triggers=list(triggers),
        add_previous_output_in_env=False,
        logging=remote.Logging.NONE if secret else remote.Logging.STDOUT_AND_STDERR,
        opts=pulumi.ResourceOptions.merge(opts, extra),
    )


def quoted_list(values: Iterable[str]) -> str:
    return " ".join(shlex.quote(v) for v in values)
