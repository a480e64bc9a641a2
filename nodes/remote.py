"""How onionstack reaches a machine and runs something on it with pulumi-command.

- `SshTarget`: a machine as an SSH client sees it (address, user, the host key it must
  present, the jump host in front of it). Each node declares its own; the steps read it.
- `connection(target, private_key)`: the `remote.ConnectionArgs` of a step, the private key
  only ever as a Pulumi secret, the host key pinned, and a bounded dial (`DIAL_ERROR_LIMIT`).
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

STEP_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m", delete="20m")

# How long a step keeps dialling. pulumi-command (provider/pkg/provider/remote/connection.go,
# dialWithRetry over pulumi's retry.Until) retries a failed dial after 0.1 s, each wait 1.5x
# the one before, at most 5 s, and fails the step when dial number `dial_error_limit + 1`
# fails; each dial waits up to `per_dial_timeout` for TCP to connect (-1, unlimited, would
# leave a blocked connection to the step's 30-minute timeout). A booting EC2 instance
# first drops packets (until its network is up, ~10-20 s: each such dial costs the per-dial
# timeout), then refuses briefly until sshd listens: a few dials. 22 errors of at most 10 s
# cover ~71 s of refusals or ~5 min of dropped packets (dial_give_up_after), so a booting
# machine is reached and a blocked one (a deploy runner outside adminCidrs, a security
# group in the way) fails in about 5 minutes, saying which host it could not dial.
DIAL_ERROR_LIMIT = 22
PER_DIAL_TIMEOUT = 10  # seconds
RETRY_FIRST_DELAY, RETRY_BACKOFF, RETRY_MAX_DELAY = 0.1, 1.5, 5.0  # pulumi's retry.Until defaults


def dial_give_up_after(limit: int = DIAL_ERROR_LIMIT, per_dial: float = PER_DIAL_TIMEOUT) -> tuple[float, float]:
    """(s, s): when pulumi-command gives up on a host whose every dial is refused at once,
    and on one whose packets are dropped (each dial then waits `per_dial`)."""
    waits = sum(min(RETRY_FIRST_DELAY * RETRY_BACKOFF ** k, RETRY_MAX_DELAY) for k in range(limit))
    return waits, waits + (limit + 1) * per_dial


@dataclass(frozen=True)
class SshTarget:
    """A machine as a step's SSH client reaches it: `host` (an address), `user`, and
    `proxy`, the jump host in front of it (the balancer, for the private machines)."""

    host: pulumi.Input[str]
    user: str = SSH_USER
    host_key: Optional[pulumi.Input[str]] = None
    proxy: Optional["SshTarget"] = None


def connection(target: SshTarget, private_key: pulumi.Input[str]) -> remote.ConnectionArgs:
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
            host_key=target.proxy.host_key, dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT)
    return remote.ConnectionArgs(
        host=target.host, user=target.user, private_key=private_key, host_key=target.host_key,
        dial_error_limit=DIAL_ERROR_LIMIT, per_dial_timeout=PER_DIAL_TIMEOUT, proxy=proxy)


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
