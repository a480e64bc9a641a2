"""What the balancer knows about each instance: its verified descriptor and its liveness.

Every descriptor an HSDir hands us goes through `InstanceState.offer`, whatever its source:
size limit, decryption + verification by `onion.descriptor` (signature, certificate expiry,
blinded key of the instance for a known time period), intro point limit, and the revision
counter per blinded key (an older revision is a replay and is refused). A descriptor that
fails any check is counted and reported in the status, and never replaces a good one.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from onion.load import InstanceLoad

log = logging.getLogger("onion.instances")

# tor's default HSV3MaxDescriptorSize: HSDirs refuse bigger descriptors, so an instance that
# serves one is broken or hostile.
MAX_DESCRIPTOR_BYTES = 50_000
MAX_INTRO_POINTS = 20
# An instance descriptor we have not been able to fetch for longer than tor's descriptor
# lifetime (180 min) is gone from the HSDirs too: stop using it.
STALE_AFTER = 3 * 60 * 60.0


@dataclass(frozen=True)
class Decoded:
    """A verified instance descriptor, as the decoder returns it."""
    intro_points: tuple
    revision: int
    period: int | None           # time period whose blinded key signed it
    blinded_key: bytes
    signing_key_expiry: float    # unix time the descriptor-signing-key certificate expires
    pow_effort: int | None = None  # the suggested PoW effort of its `pow-params`, if any (onion.load)


# decoder(text, address, candidate_periods, now) -> Decoded; raises ValueError on bad input
Decoder = Callable[[str, str, Sequence[int], float], Decoded]


def reject_category(exc: Exception) -> str:
    """The metrics' bounded `reason` for a decoder error (onion.metric_names.REJECT_REASONS)."""
    from onion import errors

    for kind, category in ((errors.DescriptorTooLargeError, "oversized"),
                           (errors.TooManyIntroPointsError, "too_many_intro_points"),
                           (errors.CertificateExpiredError, "expired"),
                           (errors.BlindedKeyMismatchError, "wrong_key"),
                           (errors.DescriptorSignatureError, "bad_signature"),
                           (errors.CertificateError, "bad_signature"),
                           (errors.DescriptorDecryptionError, "wrong_key"),
                           (errors.RevisionCounterError, "replayed")):
        if isinstance(exc, kind):
            return category
    if "introduction point" in str(exc):
        return "bad_intro_point"  # onion.frontend refuses intro points tor never makes
    return "malformed"


@dataclass
class InstanceDescriptor:
    decoded: Decoded
    received_at: float
    hsdir: str | None
    digest: bytes

    @property
    def intro_keys(self) -> frozenset:
        return frozenset(ip.auth_key for ip in self.decoded.intro_points)


@dataclass
class Offer:
    accepted: bool
    changed: bool
    reason: str


@dataclass
class ProbeState:
    consecutive_failures: int = 0
    healthy: bool | None = None  # None: not probed yet
    last_at: float | None = None
    last_ok_at: float | None = None
    last_result: str = ""
    last_ok: bool | None = None          # the last probe's outcome (metrics)
    last_seconds: float | None = None    # and how long it took
    in_flight_since: float | None = None
    next_at: float = 0.0


@dataclass
class InstanceState:
    address: str
    name: str | None = None
    current: InstanceDescriptor | None = None
    # highest revision accepted per blinded key, and the intro points (auth keys) it had
    revisions: dict[bytes, tuple[int, frozenset]] = field(default_factory=dict)
    last_error: str = ""
    last_error_at: float | None = None
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # onion.metric_names.REJECT_REASONS
    worker: str | None = None  # the machine it runs on, from the config (metrics, status)
    probe: ProbeState = field(default_factory=ProbeState)
    # fetching
    fetch_requested_at: float | None = None
    fetch_failures: int = 0
    fetch_failed_for: float | None = None  # fetch (by request time) already counted as failed
    next_fetch_at: float = 0.0
    awaiting_period: int | None = None  # a new time period began: waiting for its descriptor
    load: InstanceLoad = field(default_factory=InstanceLoad)  # onion.load: readings and the last decision

    def _reject(self, reason: str, now: float, category: str = "malformed") -> Offer:
        self.rejected += 1
        self.rejected_by_reason[category] = self.rejected_by_reason.get(category, 0) + 1
        self.last_error, self.last_error_at = reason, now
        log.warning("instance %s.onion: descriptor refused: %s", self.address, reason)
        return Offer(False, False, reason)

    def offer(self, text: str, hsdir: str | None, now: float, decoder: Decoder,
              periods: Sequence[int], wall: float | None = None) -> Offer:
        """Check a fetched descriptor and use it if it is valid and new. Never raises.

        `now`: the balancer's monotonic clock (when it arrived, for staleness); `wall`:
        the wall clock (certificate expiry), `now` when not given."""
        wall = now if wall is None else wall
        size = len(text.encode("utf-8", "surrogateescape"))
        if size < 5:  # HSDirs answer "not found" with an empty HS_DESC_CONTENT
            return Offer(False, False, "empty (HSDir has no descriptor)")
        if size > MAX_DESCRIPTOR_BYTES:
            return self._reject(f"oversized descriptor ({size} bytes > {MAX_DESCRIPTOR_BYTES})", now, "oversized")
        try:
            decoded = decoder(text, self.address, periods, wall)
        except ValueError as exc:  # DescriptorError and friends: a bad descriptor
            return self._reject(f"{type(exc).__name__}: {exc}", now, reject_category(exc))
        except Exception as exc:  # a decoder bug must not take the balancer down
            log.exception("decoder crashed on a descriptor of %s.onion", self.address)
            return self._reject(f"undecodable ({type(exc).__name__}: {exc})", now, "undecodable")
        n = len(decoded.intro_points)
        if n == 0:
            return self._reject("descriptor lists no introduction points", now, "no_intro_points")
        if n > MAX_INTRO_POINTS:
            return self._reject(f"too many introduction points ({n} > {MAX_INTRO_POINTS})", now,
                                "too_many_intro_points")
        if decoded.signing_key_expiry <= wall:
            return self._reject("descriptor-signing-key certificate expired", now, "expired")
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
        intro_keys = frozenset(ip.auth_key for ip in decoded.intro_points)
        seen = self.revisions.get(decoded.blinded_key)
        if seen is not None:
            rev, seen_keys = seen
            if decoded.revision < rev:
                return self._reject(f"replayed older revision {decoded.revision} (have {rev})", now, "replayed")
            if decoded.revision == rev:
                # The same descriptor from another HSDir. tor encrypts each upload afresh
                # (new salts), so the bytes differ; the signed content is the same.
                if (self.current is not None and self.current.decoded.blinded_key == decoded.blinded_key
                        and self.current.decoded.revision == rev):
                    self.current.received_at = now
                if seen_keys != intro_keys:
                    return Offer(False, False, f"revision {rev} seen before with other intro points: kept the first")
                return Offer(True, False, "unchanged")
        current = self.current
        if (current is not None and current.decoded.period is not None and decoded.period is not None
                and decoded.period < current.decoded.period):
            # Valid, but for an earlier time period than the descriptor in use.
            self.revisions[decoded.blinded_key] = (decoded.revision, intro_keys)
            return Offer(True, False, "older time period than the descriptor in use")
        self.revisions[decoded.blinded_key] = (decoded.revision, intro_keys)
        new = InstanceDescriptor(decoded=decoded, received_at=now, hsdir=hsdir, digest=digest)
        changed = current is None or current.intro_keys != new.intro_keys
        self.current = new
        self.fetch_failures = 0
        if self.awaiting_period is not None and decoded.period is not None and decoded.period >= self.awaiting_period:
            self.awaiting_period = None
        if self.awaiting_period is not None and decoded.period is None and changed:
            self.awaiting_period = None  # decoder cannot tell periods: a new intro set will do
        # Keep the revision memory small: blinded keys of periods long gone can go.
        if len(self.revisions) > 8:
            keep = sorted(self.revisions.items(), key=lambda kv: kv[1][0])[-8:]
            self.revisions = dict(keep)
        return Offer(True, changed, "new intro points" if changed else "new revision, same intro points")

    def has_valid_descriptor(self, now: float, wall: float | None = None) -> bool:
        """`now` monotonic (staleness), `wall` the wall clock (certificate expiry)."""
        cur = self.current
        return (cur is not None and cur.decoded.signing_key_expiry > (now if wall is None else wall)
                and now - cur.received_at < STALE_AFTER)

    def probe_down(self, max_failures: int) -> bool:
        return self.probe.consecutive_failures >= max_failures

    def probe_result(self, ok: bool, detail: str, now: float, max_failures: int) -> bool:
        """Record a probe; True if the instance's up/down state changed."""
        p = self.probe
        was_down = self.probe_down(max_failures)
        p.in_flight_since = None
        p.last_at, p.last_result = now, detail
        if ok:
            p.consecutive_failures, p.last_ok_at = 0, now
        else:
            p.consecutive_failures += 1
        before = p.healthy
        p.healthy = not self.probe_down(max_failures)
        return was_down != self.probe_down(max_failures) or (before is None and p.healthy is False)
