"""Load-aware introduction slots: an overloaded instance gets fewer intro points in the
frontend's descriptors, and its full share back once it has been calm for a while.

Two signals, both from the instances themselves:

- the **suggested PoW effort** an instance publishes in its own descriptor (`pow-params v1
  <seed> <effort> <expiry>`; tor raises it when its PoW queue cannot keep up), which the
  balancer already fetches and verifies; and
- the **PoW queue depth** its tor reports on its MetricsPort
  (`tor_hs_rdv_pow_pqueue_count{onion="<address>"}`), when the balancer config gives the
  instance a `metrics` URL.

An instance at or above either threshold counts as overloaded: it keeps `overloaded_share`
intro points (at least one, so it still serves readers who reach it), the others fill the
freed slots (onion.publisher.fair_windows spreads what remains). Its full share returns
after `recover_seconds` without a reading above the thresholds, so one calm sample does
not flap the descriptors. When every instance is overloaded nothing is trimmed: moving
slots between equally loaded instances helps no one.

Pure functions over plain values (the balancer keeps an `InstanceLoad` per instance), so
every decision is unit-tested without tor; `read_metrics` is the only I/O (the balancer
runs it in a thread).
"""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")

_POW_PARAMS_RE = re.compile(r"^pow-params\s+v1\s+\S+\s+(\d{1,10})\s+\S+")
_PQUEUE_RE = re.compile(r'^tor_hs_rdv_pow_pqueue_count\{([^}]*)\}\s+([0-9.eE+]+)\s*$')
_ONION_LABEL_RE = re.compile(r'onion="([a-z2-7]{56})(?:\.onion)?"')
MAX_METRICS_BYTES = 2_000_000  # a MetricsPort page is a few kB per service; more is not tor's


@dataclass(frozen=True)
class LoadPolicy:
    """When an instance counts as overloaded, and what it keeps (balancer config `load:`)."""
    enabled: bool = True
    effort_threshold: int = 1        # suggested PoW effort at/above which an instance is overloaded
    queue_threshold: int = 64        # PoW queue depth at/above which an instance is overloaded
    overloaded_share: int = 1        # intro points an overloaded instance keeps in each descriptor
    recover_seconds: float = 300.0   # calm this long before its full share returns
    metrics_interval: float = 30.0   # seconds between MetricsPort readings of one instance
    max_age: float = 900.0           # a reading older than this is ignored


@dataclass
class InstanceLoad:
    """What the balancer knows of one instance's load, and what it decided (for status)."""
    queue: int | None = None
    queue_at: float | None = None          # monotonic time of the reading
    metrics_error: str = ""
    metrics_in_flight: bool = False
    next_metrics_at: float = 0.0
    overloaded_since: float | None = None  # monotonic; None: not overloaded
    calm_since: float | None = None        # overloaded before, calm since
    slots: int | None = None               # intro points it got in the last selection (None: all)
    reason: str = ""


def suggested_effort(lines: Iterable[str]) -> int | None:
    """The suggested effort of a descriptor's `pow-params v1` line, or None without one."""
    for line in lines:
        m = _POW_PARAMS_RE.match(line)
        if m:
            return int(m.group(1))
    return None


def queue_depth(metrics_text: str, address: str) -> int | None:
    """The PoW queue depth tor reports for the service `address` (56 chars) in a MetricsPort
    page, or None when the page does not list that service."""
    found = None
    for line in metrics_text.splitlines():
        m = _PQUEUE_RE.match(line.strip())
        if not m:
            continue
        label = _ONION_LABEL_RE.search(m.group(1))
        if label and label.group(1) == address:
            found = (found or 0) + int(float(m.group(2)))
    return found


def read_metrics(url: str, timeout: float = 5.0) -> str:
    """One MetricsPort page (plain HTTP; tor's MetricsPort has no TLS). Raises OSError."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only, checked in config
        data = response.read(MAX_METRICS_BYTES + 1)
    if len(data) > MAX_METRICS_BYTES:
        raise OSError(f"more than {MAX_METRICS_BYTES} bytes: not a tor MetricsPort")
    return data.decode("utf-8", errors="replace")


def _overload_reason(effort: int | None, effort_age: float | None, load: InstanceLoad, policy: LoadPolicy,
                     now: float) -> str:
    """Why the instance is overloaded now ("" when it is not), from fresh readings only."""
    reasons = []
    if effort is not None and effort_age is not None and effort_age <= policy.max_age \
            and effort >= policy.effort_threshold:
        reasons.append(f"suggested PoW effort {effort} >= {policy.effort_threshold}")
    if load.queue is not None and load.queue_at is not None and now - load.queue_at <= policy.max_age \
            and load.queue >= policy.queue_threshold:
        reasons.append(f"PoW queue {load.queue} >= {policy.queue_threshold}")
    return " and ".join(reasons)


def assess(load: InstanceLoad, effort: int | None, effort_age: float | None, points: int,
           policy: LoadPolicy, now: float) -> int:
    """How many of its `points` intro points the instance gets now; records the decision
    and its reason in `load` (hysteresis: overloaded, then calm for `recover_seconds`)."""
    why = _overload_reason(effort, effort_age, load, policy, now) if policy.enabled else ""
    share = max(1, min(policy.overloaded_share, points))
    if why:
        if load.overloaded_since is None:
            load.overloaded_since = now
        load.calm_since = None
        load.slots, load.reason = share, f"overloaded ({why}): {share} of {points} intro points"
        return share
    if load.overloaded_since is not None:
        if load.calm_since is None:
            load.calm_since = now
        calm = now - load.calm_since
        if calm < policy.recover_seconds:
            load.slots = share
            load.reason = (f"recovering: calm for {calm:.0f} of {policy.recover_seconds:.0f} s: "
                           f"{share} of {points} intro points")
            return share
        load.overloaded_since = load.calm_since = None
    load.slots, load.reason = None, ""
    return points


def weigh(groups: Sequence[Sequence[T]], loads: Sequence[InstanceLoad], efforts: Sequence[int | None],
          effort_ages: Sequence[float | None], policy: LoadPolicy, now: float) -> list[list[T]]:
    """Each instance's intro points (`groups`, instances in a fixed order) trimmed to what
    its load allows. Every instance is assessed (its hysteresis advances); if all of them
    come out overloaded, none is trimmed and each says so."""
    shares = [assess(load, e, age, len(g), policy, now) for g, load, e, age in zip(groups, loads, efforts, effort_ages)]
    trimmed = [i for i, (g, s) in enumerate(zip(groups, shares)) if s < len(g)]
    if trimmed and len(trimmed) == len(groups):
        for load, g in zip(loads, groups):
            load.slots = None
            load.reason = f"{load.reason.split(':', 1)[0]}, like every instance: keeps all {len(g)} intro points"
        return [list(g) for g in groups]
    return [list(g[:s]) for g, s in zip(groups, shares)]


@dataclass(frozen=True)
class LoadReading:
    """A MetricsPort reading of one instance, posted to the balancer by the reader thread."""
    address: str
    queue: int | None
    error: str = ""


__all__ = ["InstanceLoad", "LoadPolicy", "LoadReading", "assess", "queue_depth", "read_metrics",
           "suggested_effort", "weigh"]
