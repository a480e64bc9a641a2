"""A blocked connection fails a step in minutes, not at the 30-minute step timeout, while a
booting instance is still waited for: every connection and jump-host connection dials with
a bound, and pulumi-command's retry schedule (its source, modelled here) turns that bound
into ~5 minutes for a host whose packets are dropped."""
from __future__ import annotations

import pytest

from nodes.remote import (DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT, RETRY_BACKOFF, RETRY_FIRST_DELAY, RETRY_MAX_DELAY,
                          STEP_TIMEOUTS, dial_give_up_after)
from tests.stackmocks import minimal_config, prod_config, run

REMOTE = ("command:remote:Command", "command:remote:CopyToRemote")


@pytest.mark.parametrize("config", [prod_config(), minimal_config(workers=2)], ids=["prod", "minimal"])
def test_every_connection_and_proxy_dials_with_the_bound(config):
    result = run(config)
    steps = [r for r in result.resources if r.type in REMOTE]
    assert steps
    for step in steps:
        conn = step.input("connection")
        for c in [conn] + ([conn["proxy"]] if "proxy" in conn else []):
            assert c["dialErrorLimit"] == DIAL_ERROR_LIMIT and c["perDialTimeout"] == PER_DIAL_TIMEOUT, step.name


def _simulate(limit: int, per_dial: float, dial_seconds: float) -> float:
    """The loop of pulumi-command's dialWithRetry over pulumi's retry.Until, step by step
    (provider/pkg/provider/remote/connection.go, sdk/go/common/util/retry/until.go): try,
    and on failure give up when `dials > limit`, else wait `delay` (capped), delay *= 1.5."""
    elapsed, delay, tries = 0.0, RETRY_FIRST_DELAY, 0
    while True:
        delay = min(delay, RETRY_MAX_DELAY)
        elapsed += dial_seconds  # this dial fails
        if tries + 1 > limit:  # reachedDialingErrorLimit(dials, limit)
            return elapsed
        elapsed += delay
        delay *= RETRY_BACKOFF
        tries += 1


def test_a_blocked_connection_fails_in_about_five_minutes_and_boot_is_covered():
    refused, dropped = dial_give_up_after()
    assert refused == pytest.approx(_simulate(DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT, 0.0))
    assert dropped == pytest.approx(_simulate(DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT, PER_DIAL_TIMEOUT))
    # dropped packets (a deploy runner outside adminCidrs): minutes, not the step timeout
    assert 4 * 60 <= dropped <= 6 * 60
    assert dropped < 30 * 60 and STEP_TIMEOUTS.create == "30m"
    # an instance that refuses while sshd starts is still dialled for over a minute, and one
    # that drops packets while it boots for minutes
    assert refused >= 60
    # the old setting (-1) never gave up: only the 30-minute timeout ended a blocked step
    assert _simulate(10_000, PER_DIAL_TIMEOUT, PER_DIAL_TIMEOUT) > 30 * 60
