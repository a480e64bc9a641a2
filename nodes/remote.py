"""How onionstack reaches a machine and runs something on it with pulumi-command.

- `SshTarget`: a machine as an SSH client sees it (address, user, the host key it must
  present, the jump host in front of it). Each node declares its own; the steps read it.
- `connection(target, private_key)`: the `remote.ConnectionArgs` of a step, the private key
  only ever as a Pulumi secret, and a bounded dial (`DIAL_ERROR_LIMIT`).
- `command(...)`: a `remote.Command` with onionstack's fixed policy: `update` = `create`
  (every script is idempotent), `add_previous_output_in_env=False`, `custom_timeouts`,
  logging off and stdout/stderr/stdin secret for secret-bearing steps, and no `delete`
  unless the caller gives one (a delete that must reach a terminated host cannot succeed;
  see docs/bootstrap.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
from pulumi_command import remote

SSH_USER = "ubuntu"  # Canonical's Ubuntu images

# Booting EC2 instances refuse SSH for a minute or two: pulumi-command retries the dial.
# It gives up after 10 dial errors by default; -1 retries forever (a blocked connection
# then waits out the step's whole timeout).
UNLIMITED_DIALS = -1
PER_DIAL_TIMEOUT = 30  # seconds
STEP_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m", delete="20m")
DIAL_ERROR_LIMIT = UNLIMITED_DIALS
# The drain step talks to a host that is already up (it ran its create there); a host that
# has gone must fail the delete in bounded time with a clear error, not hang for 20 min.
DRAIN_DIAL_LIMIT = 20


@dataclass(frozen=True)
class SshTarget:
    """A machine as a step's SSH client reaches it: `host` (an address), `user`, and
    `proxy`, the jump host in front of it (the balancer, for the private machines)."""

    host: pulumi.Input[str]
    user: str = SSH_USER
    host_key: Optional[pulumi.Input[str]] = None
    proxy: Optional["SshTarget"] = None


def connection(target: SshTarget, private_key: pulumi.Input[str], *,
               dial_error_limit: int = DIAL_ERROR_LIMIT) -> remote.ConnectionArgs:
    """SSH settings of a step reaching `target` (through its proxy, same key).

    `private_key` must be a secret Output (config.ssh_private_key.output()): pulumi-command
    marks the whole connection secret anyway, but the key must not be plain even briefly.
    """
    proxy = None
    if target.proxy is not None:
        if target.proxy.proxy is not None:
            raise ValueError("pulumi-command reaches a machine through at most one jump host")
        proxy = remote.ProxyConnectionArgs(
            host=target.proxy.host, user=target.proxy.user, private_key=private_key,
            host_key=target.proxy.host_key, dial_error_limit=dial_error_limit,
            per_dial_timeout=PER_DIAL_TIMEOUT)
    return remote.ConnectionArgs(
        host=target.host, user=target.user, private_key=private_key, host_key=target.host_key,
        dial_error_limit=dial_error_limit, per_dial_timeout=PER_DIAL_TIMEOUT, proxy=proxy)


def command(
    name: str,
    *,
    connection: remote.ConnectionArgs,
    create: pulumi.Input[str],
    triggers: Sequence[pulumi.Input],
    opts: pulumi.ResourceOptions,
    stdin: Optional[pulumi.Input[str]] = None,
    delete: Optional[pulumi.Input[str]] = None,
    secret: bool = False,
    log_stderr: bool = False,
) -> remote.Command:
    """A remote step with onionstack's policy (module docstring).

    `secret=True` for steps whose stdin carries key material or passwords, or whose stdout
    is for the operator only: logging off, and stdout/stderr/stdin marked secret in the
    state whatever they contain. `log_stderr=True` (with `secret`) still logs stderr, for a
    script whose stderr never carries a secret (the worker's: tool errors only).
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
        logging=(remote.Logging.STDERR if log_stderr else remote.Logging.NONE) if secret
        else remote.Logging.STDOUT_AND_STDERR,
        opts=pulumi.ResourceOptions.merge(opts, extra),
    )
