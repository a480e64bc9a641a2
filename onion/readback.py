"""Read-back: what each responsible HSDir serves for a frontend, checked against what the
balancer uploaded there.

An `UPLOADED` event says the HSDir took the descriptor; it does not say the HSDir still
serves it (a relay restarted with a wiped cache, a clock trouble, a descriptor replaced by
one with a higher revision). So a few seconds after every confirmed upload, and then every
`readback.interval`, the balancer fetches the frontend's descriptor from each responsible
HSDir itself (`HSFETCH <frontend> SERVER=<hsdir>`; the answer comes as HS_DESC_CONTENT /
HS_DESC FAILED for that HSDir), decrypts and verifies it like any descriptor, and compares
its revision counter and introduction points with the upload record of that HSDir:

    serving   the revision we uploaded, with the intro points of that HSDir's window
    old       an older revision (our newer upload did not stick)      -> re-upload
    window    our revision but another window's intro points          -> re-upload
    missing   the HSDir has no descriptor (NOT_FOUND, empty answer)   -> re-upload
    newer     a higher revision than ours: another balancer with the same key uploaded
              (a standby that took over, or the primary back): not fought over
    unreadable the descriptor does not verify                         -> re-upload
    failed    the fetch failed for another reason (retried later)

tor's HSFETCH fetches the time period clients use now (tor computes the blinded key from
its own consensus), so read-back covers the current period's descriptor; the next
period's is read back once it becomes current.

Pure bookkeeping plus one decoder call per answer; the balancer's thread owns it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AFTER_UPLOAD = 5.0            # read back this long after an HSDir confirmed an upload
FETCH_TIMEOUT = 60.0          # a read-back tor never answered counts as failed
RETRY_FAILED = 30.0           # a failed fetch (not NOT_FOUND) is tried again this soon
MAX_IN_FLIGHT = 4             # read-back fetches in flight per frontend
REUPLOAD_STATES = ("old", "window", "missing", "unreadable")
FETCH_FAILURE_REASONS = ("NOT_FOUND", "QUERY_REJECTED", "QUERY_NO_HSDIR", "QUERY_RATE_LIMITED",
                         "BAD_DESC", "UNEXPECTED")


@dataclass
class Served:
    """The last read-back of one frontend's current descriptor from one HSDir."""
    period: int
    hsdir: str = ""
    state: str = "pending"
    revision: int | None = None
    intro_keys: frozenset = frozenset()
    built_at: float | None = None      # wall time its revision counter encodes, when known
    checked_at: float | None = None    # monotonic
    requested_at: float | None = None  # monotonic, while a fetch is in flight
    next_at: float = 0.0               # monotonic
    detail: str = ""
    checks: int = 0


class Readback:
    def __init__(self, interval: float):
        self.interval = interval
        self.records: dict[tuple[str, str], Served] = {}   # (frontend, hsdir)

    def get(self, frontend: str, hsdir: str, period: int) -> Served:
        rec = self.records.get((frontend, hsdir))
        if rec is None or rec.period != period:
            rec = self.records[(frontend, hsdir)] = Served(period=period, hsdir=hsdir)
        return rec

    def forget(self, frontend: str, keep: set[str]) -> None:
        for key in [k for k in self.records if k[0] == frontend and k[1] not in keep]:
            del self.records[key]

    def in_flight(self, frontend: str) -> int:
        return sum(1 for (f, _), r in self.records.items() if f == frontend and r.requested_at is not None)

    def pending(self, frontend: str, hsdir: str) -> bool:
        rec = self.records.get((frontend, hsdir))
        return rec is not None and rec.requested_at is not None

    def due(self, frontend: str, hsdir: str, period: int, now: float) -> bool:
        rec = self.get(frontend, hsdir, period)
        if rec.requested_at is not None:
            if now - rec.requested_at < FETCH_TIMEOUT:
                return False
            self.result(frontend, hsdir, "failed", now, detail="no answer from tor")
        return now >= rec.next_at

    def requested(self, frontend: str, hsdir: str, period: int, now: float) -> None:
        self.get(frontend, hsdir, period).requested_at = now

    def confirmed_upload(self, frontend: str, hsdir: str, period: int, now: float) -> None:
        rec = self.get(frontend, hsdir, period)
        rec.next_at = min(rec.next_at, now + AFTER_UPLOAD) if rec.checked_at is not None else now + AFTER_UPLOAD

    def result(self, frontend: str, hsdir: str, state: str, now: float, *, revision: int | None = None,
               intro_keys: frozenset = frozenset(), built_at: float | None = None, detail: str = "") -> Served:
        rec = self.records.get((frontend, hsdir))
        if rec is None:
            rec = self.records[(frontend, hsdir)] = Served(period=-1, hsdir=hsdir)
        rec.state, rec.revision, rec.intro_keys, rec.built_at = state, revision, intro_keys, built_at
        rec.detail, rec.checked_at, rec.requested_at = detail, now, None
        rec.checks += 1
        rec.next_at = now + (RETRY_FAILED if state == "failed" else self.interval)
        return rec


def compare(decoded: Any, upload: Any) -> str:
    """The state of a served descriptor against our upload record for that HSDir (or None:
    we uploaded nothing there)."""
    if upload is None or upload.revision is None or upload.state == "standby":
        return "newer"  # not ours to compare: someone else's upload
    if decoded.revision > upload.revision:
        return "newer"
    if decoded.revision < upload.revision:
        return "old"
    keys = frozenset(ip.auth_key for ip in decoded.intro_points)
    return "serving" if keys == upload.intro_keys else "window"


def as_status(rec: Served | None, wall: Any) -> dict | None:
    if rec is None or (rec.checked_at is None and rec.requested_at is None):
        return None
    return {"state": rec.state, "revision": rec.revision, "checked_at": wall(rec.checked_at),
            "built_at": rec.built_at, "detail": rec.detail or None, "checks": rec.checks,
            "in_flight": rec.requested_at is not None,
            "intro_points": sorted(k.hex() if isinstance(k, bytes) else str(k) for k in rec.intro_keys)}
