"""Which introduction points go into which master descriptor, and which uploads tor confirmed.

Pure bookkeeping, no tor and no crypto, so every decision is unit-tested with plain values:

- `interleave`: round-robin across healthy instances (first intro point of each instance,
  then the second of each, …), deterministic for the same inputs. Intro points are
  identified by their auth key (not their relay: instances keep relays across periods but
  get new auth keys, which OnionBalance 0.2.4 missed).
- `assign_windows`: tor clients reject descriptors with more than 20 intro points, so when
  there are more, HSDirs get distinct descriptors, each a window of 20 consecutive points
  of the interleaved list (so each window is itself fair across instances).
- `UploadBook`: an upload counts only when tor reports HS_DESC UPLOADED for that HSDir;
  FAILED (or no answer within a timeout) is retried with exponential backoff. At most one
  upload per (frontend, HSDir) is in flight, because tor's UPLOADED event names the
  address and the HSDir but not the descriptor, so two concurrent uploads would be
  indistinguishable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")

MAX_INTRO_POINTS = 20
REPUBLISH_INTERVAL = 60 * 60.0   # tor services re-upload every 60-120 min; lifetime is 180 min
UPLOAD_TIMEOUT = 90.0            # tor sends no event when an HSDir connection just dies
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0


def auth_key_of(ip) -> bytes:
    return ip.auth_key


def interleave(groups: Sequence[Sequence[T]], key: Callable[[T], Hashable] = auth_key_of) -> list[T]:
    """Round-robin merge; duplicates (same key) are kept once, at their first position."""
    out: list[T] = []
    seen: set = set()
    depth = max((len(g) for g in groups), default=0)
    for i in range(depth):
        for group in groups:
            if i < len(group):
                k = key(group[i])
                if k not in seen:
                    seen.add(k)
                    out.append(group[i])
    return out


def assign_windows(points: Sequence[T], hsdirs: Sequence[str],
                   max_per_descriptor: int = MAX_INTRO_POINTS) -> dict[str, tuple[T, ...]]:
    """hsdir -> intro points of the descriptor that HSDir gets.

    With ≤ max points every HSDir gets all of them. Otherwise k = ceil(n / max) windows (at
    most one per HSDir): window j is `max` consecutive points starting at j*max, wrapping
    around, so every point is published somewhere and each window is full. HSDirs get
    windows in turn (i mod k), so each replica's first HSDirs - the ones clients try -
    cover all windows. If even one window per HSDir cannot hold every point, the first
    `len(hsdirs) * max` points of the fair order are used."""
    hsdirs = list(dict.fromkeys(hsdirs))  # a relay responsible in both replicas: once
    if not hsdirs or not points:
        return {h: () for h in hsdirs}
    n = len(points)
    if n <= max_per_descriptor:
        return {h: tuple(points) for h in hsdirs}
    k = min(math.ceil(n / max_per_descriptor), len(hsdirs))
    usable = list(points[: k * max_per_descriptor])
    m = len(usable)
    windows = [tuple(usable[(j * max_per_descriptor + i) % m] for i in range(max_per_descriptor))
               for j in range(k)]
    return {h: windows[i % k] for i, h in enumerate(hsdirs)}


# ----------------------------------------------------------------------------- uploads

@dataclass
class UploadRecord:
    """The last upload of one frontend's descriptor for one time period to one HSDir."""
    hsdir: str
    content: frozenset          # auth keys of the intro points in that descriptor
    attempted_at: float
    state: str = "pending"      # pending | uploaded | failed | standby (publish: false)
    result: str = ""
    confirmed_at: float | None = None
    failures: int = 0           # consecutive
    next_retry_at: float = 0.0
    revision: int | None = None

    def due_at(self, republish_interval: float) -> float | None:
        if self.state == "pending":
            return None
        if self.state == "failed":
            return self.next_retry_at
        base = self.confirmed_at if self.confirmed_at is not None else self.attempted_at
        return base + republish_interval


def backoff(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    return min(cap, base * 2 ** max(0, failures - 1))


@dataclass
class UploadBook:
    """Upload state of every (frontend, time period, HSDir); see module docstring."""
    republish_interval: float = REPUBLISH_INTERVAL
    upload_timeout: float = UPLOAD_TIMEOUT
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX
    records: dict[tuple[str, int, str], UploadRecord] = field(default_factory=dict)
    # (frontend address, hsdir) -> (time period, sent at)
    inflight: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    def needs_upload(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float) -> str | None:
        """Why this upload should happen now, or None."""
        if (frontend, hsdir) in self.inflight:
            return None
        rec = self.records.get((frontend, period, hsdir))
        if rec is None:
            return "never uploaded"
        if rec.content != content:
            return "intro points changed"
        due = rec.due_at(self.republish_interval)
        if due is not None and now >= due:
            return "retry after failure" if rec.state == "failed" else "periodic republish"
        return None

    def sent(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float,
             revision: int | None = None) -> None:
        old = self.records.get((frontend, period, hsdir))
        failures = old.failures if old is not None and old.content == content else 0
        self.records[(frontend, period, hsdir)] = UploadRecord(
            hsdir=hsdir, content=content, attempted_at=now, failures=failures, revision=revision)
        self.inflight[(frontend, hsdir)] = (period, now)

    def standby(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float,
                revision: int | None = None) -> None:
        """publish: false - record what would have been uploaded, without uploading."""
        self.records[(frontend, period, hsdir)] = UploadRecord(
            hsdir=hsdir, content=content, attempted_at=now, state="standby",
            result="not uploaded (publish: false)", confirmed_at=now, revision=revision)

    def confirm(self, frontend: str, hsdir: str, now: float) -> UploadRecord | None:
        """HS_DESC UPLOADED for (frontend, hsdir)."""
        entry = self.inflight.pop((frontend, hsdir), None)
        if entry is None:
            return None
        rec = self.records.get((frontend, entry[0], hsdir))
        if rec is not None:
            rec.state, rec.result, rec.confirmed_at, rec.failures = "uploaded", "UPLOADED", now, 0
        return rec

    def fail(self, frontend: str, hsdir: str, reason: str, now: float) -> UploadRecord | None:
        """HS_DESC FAILED for an upload, a refused HSPOST, or a timeout."""
        entry = self.inflight.pop((frontend, hsdir), None)
        if entry is None:
            return None
        rec = self.records.get((frontend, entry[0], hsdir))
        if rec is not None:
            rec.state, rec.result = "failed", f"FAILED {reason}"
            rec.failures += 1
            rec.next_retry_at = now + backoff(rec.failures, self.backoff_base, self.backoff_max)
        return rec

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Fail uploads tor never answered; returns the (frontend, hsdir) pairs."""
        stale = [k for k, (_, sent) in self.inflight.items() if now - sent >= self.upload_timeout]
        for frontend, hsdir in stale:
            self.fail(frontend, hsdir, "TIMEOUT (no HS_DESC answer)", now)
        return stale

    def forget_periods(self, frontend: str, keep: Iterable[int]) -> None:
        keep = set(keep)
        for key in [k for k in self.records if k[0] == frontend and k[1] not in keep]:
            del self.records[key]

    def next_due(self, frontend: str, periods: Iterable[int], hsdirs_by_period: dict[int, Sequence[str]]) -> float | None:
        """Earliest time a planned (re)upload of this frontend becomes due."""
        times = []
        for period in periods:
            for hsdir in hsdirs_by_period.get(period, ()):
                rec = self.records.get((frontend, period, hsdir))
                if rec is None:
                    continue
                due = rec.due_at(self.republish_interval)
                if due is not None:
                    times.append(due)
        for (fe, _), (_, sent) in self.inflight.items():
            if fe == frontend:
                times.append(sent + self.upload_timeout)
        return min(times) if times else None
