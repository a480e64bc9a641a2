"""Which introduction points go into which master descriptor, and which uploads tor confirmed.

Pure bookkeeping, no tor and no crypto, so every decision is unit-tested with plain values:

- `fair_windows`: the descriptor each HSDir gets. Tor clients reject descriptors with more
  than 20 intro points, so with more there are distinct descriptors ("windows"), each
  HSDir getting one in turn. Every window is fair on its own: healthy instances are taken
  round-robin (1st intro point of each, then 2nd of each, ...) and no instance gets more
  than its fair share of a window's slots, ceil(slots / instances). An instance that
  offers more intro points than that (one advertising 20 among instances with 3) has them
  spread over the windows instead of filling them. The round-robin continues from window
  to window, so every intro point is published somewhere when there are HSDirs enough.
  Intro points are identified by their auth key (not their relay: instances keep relays
  across periods but get new auth keys, which OnionBalance 0.2.4 missed).
- `UploadBook`: an upload counts only when tor reports HS_DESC UPLOADED for that HSDir;
  FAILED (or no answer within a timeout) is retried with exponential backoff. At most one
  upload per (frontend, HSDir) is in flight, because tor's UPLOADED event names the
  address and the HSDir but not the descriptor, so two concurrent uploads would be
  indistinguishable. Times here are the balancer's monotonic clock.
"""
from __future__ import annotations

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


def wire_size(ip) -> int:
    """Bytes an intro point's own fields take in a descriptor (its link specifiers and
    keys; the certificates are the same size for every intro point). 0 if unknown."""
    head = getattr(ip, "wire_head", None)
    return len(head()) if callable(head) else 0


def fair_windows(groups: Sequence[Sequence[T]], hsdirs: Sequence[str],
                 max_per_descriptor: int = MAX_INTRO_POINTS,
                 key: Callable[[T], Hashable] = auth_key_of) -> dict[str, tuple[T, ...]]:
    """hsdir -> intro points of the descriptor that HSDir gets (see the module docstring).

    `groups`: each healthy instance's intro points, instances in a fixed (address) order.
    An auth key already seen in an earlier group is dropped from later ones. Windows are
    made until every intro point is in one, at most one per HSDir; HSDir i gets window
    i mod (number of windows), so the first HSDirs of each replica, the ones clients try
    first, cover all windows. Deterministic: the same groups give the same windows, so an
    unchanged set of intro points never looks changed."""
    hsdirs = list(dict.fromkeys(hsdirs))  # a relay responsible in both replicas: once
    seen: set = set()
    streams: list[list[T]] = []
    for group in groups:
        clean = []
        for point in group:
            k = key(point)
            if k not in seen:
                seen.add(k)
                clean.append(point)
        if clean:
            streams.append(clean)
    if not hsdirs or not streams:
        return {h: () for h in hsdirs}
    n, slots = len(streams), max_per_descriptor
    cap = -(-slots // n)                      # an instance's fair share of one descriptor
    limits = [min(cap, len(s)) for s in streams]
    pos = [0] * n                             # where each instance's cyclic stream continues
    cursor = 0                                # the round-robin continues across windows
    windows: list[tuple[T, ...]] = []
    covered: set = set()
    while len(windows) < len(hsdirs):
        counts = [0] * n
        window: list[T] = []
        i, idle = cursor, 0
        while len(window) < slots and idle < n:
            if counts[i] < limits[i]:
                stream = streams[i]
                window.append(stream[pos[i] % len(stream)])
                pos[i] += 1
                counts[i] += 1
                idle = 0
            else:
                idle += 1
            i = (i + 1) % n
        cursor = i
        windows.append(tuple(window))
        covered.update(key(p) for p in window)
        if len(covered) == len(seen):
            break
    return {h: windows[i % len(windows)] for i, h in enumerate(hsdirs)}


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
    # auth keys actually in the uploaded descriptor, when fewer than `content` fitted
    published: frozenset | None = None

    @property
    def intro_keys(self) -> frozenset:
        return self.content if self.published is None else self.published

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

    def needs_upload(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float,
                     publishing: bool = True) -> str | None:
        """Why this upload should happen now, or None. `publishing` False: a standby, which
        records what it would upload; True: a standby record means nothing was uploaded."""
        if (frontend, hsdir) in self.inflight:
            return None
        rec = self.records.get((frontend, period, hsdir))
        if rec is None:
            return "never uploaded"
        if publishing and rec.state == "standby":
            return "publish switched on (standby uploaded nothing)"
        if rec.content != content:
            return "intro points changed"
        due = rec.due_at(self.republish_interval)
        if due is not None and now >= due:
            return "retry after failure" if rec.state == "failed" else "periodic republish"
        return None

    def sent(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float,
             revision: int | None = None, published: frozenset | None = None) -> None:
        """`content`: the intro points chosen for this HSDir (what `needs_upload` compares);
        `published`: those in the descriptor, if some had to be left out to fit."""
        old = self.records.get((frontend, period, hsdir))
        failures = old.failures if old is not None and old.content == content else 0
        self.records[(frontend, period, hsdir)] = UploadRecord(
            hsdir=hsdir, content=content, attempted_at=now, failures=failures, revision=revision,
            published=published if published != content else None)
        self.inflight[(frontend, hsdir)] = (period, now)

    def standby(self, frontend: str, period: int, hsdir: str, content: frozenset, now: float,
                revision: int | None = None, published: frozenset | None = None) -> None:
        """publish: false - record what would have been uploaded, without uploading."""
        self.records[(frontend, period, hsdir)] = UploadRecord(
            hsdir=hsdir, content=content, attempted_at=now, state="standby",
            result="not uploaded (publish: false)", confirmed_at=now, revision=revision,
            published=published if published != content else None)

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

    def invalidate(self, frontend: str, period: int, hsdir: str, reason: str, now: float) -> bool:
        """Read-back found the HSDir not serving our upload: upload again at once (unless one
        is in flight). True when a re-upload is now due."""
        rec = self.records.get((frontend, period, hsdir))
        if rec is None or rec.state in ("pending", "standby") or (frontend, hsdir) in self.inflight:
            return False
        rec.state, rec.result, rec.next_retry_at = "failed", f"READ-BACK {reason}", now
        return True

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
