"""The v3 HSDir hash ring: time periods, shared random values, responsible HSDirs.

Everything follows tor's code (hs_common.c, shared_random_state.c, nodelist.c) rather
than hard-coded production numbers, so a private test network works without a flag:

* voting interval = consensus fresh-until - valid-after;
* time-period length = `hsdir_interval` consensus param (default 1440 minutes; tor's
  code reads `hsdir_interval`, with an underscore, clamped to 30..14400), or on a
  test network 24 x voting interval (one SRV protocol run), as tor does under
  `TestingTorNetwork`;
* rotation offset = 12 x voting interval (one SRV phase);
* "now" is the consensus valid-after, as in tor.

Typical balancer use::

    ring = ring_for(consensus, ed25519_ids)        # cached per consensus
    for slot in ring.descriptor_slots():           # first and second descriptor
        blinded = identity.blind(slot.time_period_number, slot.period_length)
        hsdirs = ring.responsible_hsdirs(blinded.public_key, slot)
"""
from __future__ import annotations

import base64
import binascii
import bisect
import calendar
import datetime as _dt
import functools
import hashlib
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from onion.errors import ConsensusError

try:  # optional (see onion/descriptor.py): C base64 with the same validation
    from pybase64 import b64decode as _b64decode
except ImportError:  # pragma: no cover - exercised by the optional-deps tests in a child
    from base64 import b64decode as _b64decode

__all__ = [
    "NetworkTiming", "DescriptorSlot", "HSDir", "HashRing", "ring_for",
    "disaster_srv", "hs_index", "hsdir_index", "ConsensusError",
    "DEFAULT_PERIOD_LENGTH", "DEFAULT_N_REPLICAS", "DEFAULT_SPREAD_STORE", "DEFAULT_SPREAD_FETCH",
]

DEFAULT_PERIOD_LENGTH = 1440   # minutes; tor HS_TIME_PERIOD_LENGTH_DEFAULT
DEFAULT_N_REPLICAS = 2         # hsdir_n_replicas
DEFAULT_SPREAD_STORE = 4       # hsdir_spread_store
DEFAULT_SPREAD_FETCH = 3       # hsdir_spread_fetch
DEFAULT_MAX_DESCRIPTOR_SIZE = 50000  # HSV3MaxDescriptorSize (tor: HS_DESC_MAX_LEN)
SRV_ROUNDS_PER_PHASE = 12      # SHARED_RANDOM_N_ROUNDS
SRV_PHASES = 2                 # SHARED_RANDOM_N_PHASES


VOTING_INTERVAL_PRODUCTION = 3600  # seconds; any other interval means a test network
_PERIOD_LENGTH_BOUNDS = (30, 60 * 24 * 10)   # tor HS_TIME_PERIOD_LENGTH_MIN/MAX
_N_REPLICAS_BOUNDS = (1, 16)
_SPREAD_STORE_BOUNDS = (1, 128)
_SPREAD_FETCH_BOUNDS = (1, 128)
_MAX_DESCRIPTOR_SIZE_BOUNDS = (1, 2**31 - 1)  # hs_cache.c: 1..INT32_MAX


def _unix(when) -> int:
    if isinstance(when, (int, float)):
        return int(when)
    if isinstance(when, _dt.datetime):
        if when.tzinfo is not None:
            return int(when.timestamp())
        return calendar.timegm(when.utctimetuple())  # stem's datetimes are naive UTC
    raise ConsensusError(f"expected a datetime or unix time, got {type(when).__name__}")


def _param(params: Mapping[str, int], name: str, default: int, bounds: tuple[int, int]) -> int:
    """tor's networkstatus_get_param: default when absent, clamped into bounds."""
    value = params.get(name, default) if params else default
    return min(max(int(value), bounds[0]), bounds[1])


@dataclass(frozen=True)
class NetworkTiming:
    """Time parameters of a consensus, as tor derives them."""

    valid_after: int               # unix seconds; tor's "now" for HS computations
    voting_interval: int           # seconds (fresh-until - valid-after)
    period_length: int             # minutes
    rotation_offset_seconds: int   # one SRV phase: 12 voting intervals
    testing_network: bool

    @classmethod
    def from_consensus(cls, consensus, *, testing_network: bool | None = None) -> "NetworkTiming":
        """From a stem `NetworkStatusDocumentV3`.

        `testing_network`: whether the tor using this consensus runs with
        `TestingTorNetwork 1` (then the period is one SRV run, not `hsdir_interval`).
        None = guess: a voting interval other than 3600 s means a test network (the
        public network has always voted hourly; a test network voting hourly gets the
        same 1440-minute period either way). Pass the real value when known
        (`GETCONF TestingTorNetwork` on the balancer's tor).
        """
        try:
            valid_after = _unix(consensus.valid_after)
            fresh_until = _unix(consensus.fresh_until)
        except AttributeError:
            raise ConsensusError("consensus has no valid-after/fresh-until times "
                                 "(is it a NetworkStatusDocumentV3?)") from None
        return cls.from_times(valid_after, fresh_until, getattr(consensus, "params", None) or {},
                              testing_network=testing_network)

    @classmethod
    def from_times(cls, valid_after: int, fresh_until: int, params: Mapping[str, int] | None = None,
                   *, testing_network: bool | None = None) -> "NetworkTiming":
        voting_interval = int(fresh_until) - int(valid_after)
        if voting_interval <= 0:
            raise ConsensusError(
                f"consensus fresh-until ({fresh_until}) is not after valid-after ({valid_after})")
        testing = (voting_interval != VOTING_INTERVAL_PRODUCTION
                   if testing_network is None else bool(testing_network))
        if testing:
            # hs_common.c get_time_period_length(): one SRV protocol run, in minutes.
            period_length = (SRV_PHASES * SRV_ROUNDS_PER_PHASE * voting_interval) // 60
            if period_length <= 0:
                raise ConsensusError(
                    f"voting interval {voting_interval}s is too short for a test network "
                    "(tor needs 24 voting intervals > 60 s)")
        else:
            period_length = _param(params or {}, "hsdir_interval", DEFAULT_PERIOD_LENGTH,
                                   _PERIOD_LENGTH_BOUNDS)
        return cls(valid_after=int(valid_after), voting_interval=voting_interval,
                   period_length=period_length,
                   rotation_offset_seconds=SRV_ROUNDS_PER_PHASE * voting_interval,
                   testing_network=testing)

    @property
    def srv_run_duration(self) -> int:
        """Seconds in one SRV protocol run (24 voting intervals)."""
        return SRV_PHASES * SRV_ROUNDS_PER_PHASE * self.voting_interval

    def time_period_number(self, when: int | None = None) -> int:
        """tor's hs_get_time_period_num (default: at `valid_after`)."""
        now = self.valid_after if when is None else int(when)
        minutes = now // 60 - self.rotation_offset_seconds // 60
        return minutes // self.period_length

    def time_period_start(self, number: int) -> int:
        """Unix time at which time period `number` starts (tor's rotation offset applied)."""
        return number * self.period_length * 60 + self.rotation_offset_seconds

    def srv_run_start(self) -> int:
        """Start of the current SRV protocol run (unix seconds), from `valid_after`."""
        slot = (self.valid_after // self.voting_interval) % (SRV_PHASES * SRV_ROUNDS_PER_PHASE)
        return self.valid_after - slot * self.voting_interval

    def in_period_between_tp_and_srv(self) -> bool:
        """tor's hs_in_period_between_tp_and_srv: a new time period has started but the
        next SRV has not (production: 12:00-24:00 UTC)."""
        srv_start = self.srv_run_start()
        next_tp_start = self.time_period_start(self.time_period_number(srv_start) + 1)
        return not (srv_start <= self.valid_after < next_tp_start)


@dataclass(frozen=True)
class DescriptorSlot:
    """Which time period and SRV one of a service's two descriptors uses (tor's rules)."""

    which: str                # "first" (tor's desc_current) or "second" (desc_next)
    time_period_number: int
    period_length: int        # minutes
    srv: bytes                # the shared random value of the HSDir indexes
    revision_base: int        # unix start of the SRV run its revision counter counts from


class HSDir(NamedTuple):
    """A relay with the HSDir flag and a known ed25519 identity (a NamedTuple: a ring
    makes ~5000 of them per consensus, ~3x cheaper than a frozen dataclass)."""

    fingerprint: str          # 40 hex chars, upper case
    nickname: str
    ed25519_id: bytes         # 32 bytes, from its microdescriptor's `id ed25519`


def disaster_srv(period_number: int, period_length: int) -> bytes:
    """SHA3-256("shared-random-disaster" | INT_8(period_length) | INT_8(period_number))."""
    return hashlib.sha3_256(b"shared-random-disaster"
                            + struct.pack(">QQ", period_length, period_number)).digest()


def hs_index(blinded_key: bytes, replica: int, period_number: int, period_length: int) -> bytes:
    """SHA3-256("store-at-idx" | blinded key | INT_8(replica) | INT_8(length) | INT_8(period))."""
    return hashlib.sha3_256(b"store-at-idx" + blinded_key
                            + struct.pack(">QQQ", replica, period_length, period_number)).digest()


def hsdir_index(ed25519_id: bytes, srv: bytes, period_number: int, period_length: int) -> bytes:
    """SHA3-256("node-idx" | ed25519 id | SRV | INT_8(period) | INT_8(length)).

    (Period number before length here, the other way round from hs_index: as tor's
    hs_build_hsdir_index and rend-spec-v3 [HASHRING] have it.)
    """
    return hashlib.sha3_256(b"node-idx" + ed25519_id + srv
                            + struct.pack(">QQ", period_number, period_length)).digest()


def _decode_ed25519_id(fingerprint: str, value: bytes | str) -> bytes:
    if type(value) is str and len(value) == 43:  # unpadded, as microdescriptors have it
        try:
            return _b64decode(value + "=", validate=True)  # always 32 bytes
        except (binascii.Error, ValueError):
            pass  # the general path below names the error
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        text = value.strip()
        try:
            # pybase64: the same validation as base64.b64decode(validate=True) in C, ~5x
            # cheaper (4800 identities per consensus)
            raw = _b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConsensusError(f"ed25519 identity of relay {fingerprint} is not base64: "
                                 f"{text!r}") from None
    if len(raw) != 32:
        raise ConsensusError(f"ed25519 identity of relay {fingerprint} is {len(raw)} bytes, "
                             "expected 32")
    return raw


def _parse_time(text: str) -> int:
    try:
        return calendar.timegm(_dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timetuple())
    except ValueError:
        raise ConsensusError(f"consensus time {text!r} is not 'YYYY-MM-DD HH:MM:SS'") from None


# One router entry of a consensus (dir-spec: r, then a lines, the m line of the microdesc
# flavour, s, v, pr, w, p, in that order): nickname, identity, the microdescriptor digest
# ("" in the full flavour), the flags of its s line and its whole pr line ("" if none).
# The skipped lines never start with r, so a match never runs into the next entry; an
# entry without an s line does not match (it has no flags: not an HSDir), nor does one
# whose r line lacks a field the ring reads: such an entry is skipped and counted.
_ROUTER_ENTRY = re.compile(
    r"^r (\S+) (\S+)[^\n]*\n"   # r nickname identity ...
    r"(?:a [^\n]*\n)*"           # a lines
    r"(?:m (\S+)[^\n]*\n)?"      # m line (microdesc consensus)
    r"(?:[^rs\n][^\n]*\n)*"      # anything else before s
    r"s ([^\n]*)\n"               # s flags
    r"(?:[^rp\n][^\n]*\n)*"      # v line
    r"(?:(pr [^\n]*)\n)?",        # pr line, if any
    re.M)
# An r line with fewer than the two fields the ring reads (nickname, identity). Anchored on
# "\n", not on ^ with re.M: the regex engine then jumps between "\nr " literals (~3 ms for
# 8000 relays instead of ~17 ms).
_MALFORMED_ROUTER_LINE = re.compile(r"\nr (?!\S+ \S+)[^\n]*")

# tor's protover.c: versions are 0..MAX_PROTOCOL_VERSION (63), kept as a 64-bit mask, and a
# protocol list with any malformed entry (a version above 63, a range low > high, a stray
# character) is "unparseable: treat it as if it defines no protocols"
# (protocol_list_supports_protocol). Parsing here follows that and is bounded by the line's
# length: `HSDir=2-99999999999` once made stem and an earlier version of this parser
# allocate a list of 10^11 versions (24 GB before the kernel killed the process).
MAX_PROTOCOL_VERSION = 63
_PROTOCOL_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_VERSION_RANGE = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")
_PARAM_VALUE = re.compile(r"^-?[0-9]{1,10}$")


def _version_mask(ranges: str) -> int | None:
    """'1-2' / '2' / '1,3-4' -> bitmask of the versions, None if malformed (tor's rules)."""
    mask = 0
    for part in ranges.split(","):
        m = _VERSION_RANGE.match(part)
        if not m or len(part) > 20:
            return None
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if low > high or high > MAX_PROTOCOL_VERSION:
            return None
        mask |= ((1 << (high - low + 1)) - 1) << low
    return mask


@functools.lru_cache(maxsize=256)  # a consensus has a handful of distinct pr lines, 8000 times
def _supports_hsdir_v3(pr_line: str) -> bool:
    """Whether a relay's `pr` line lists HSDir=2 (tor: node_supports_v3_hsdir via
    protocol_list_supports_protocol); an unparseable line lists nothing."""
    hsdir = 0
    for entry in pr_line.split(" ")[1:]:
        if not entry:
            continue
        name, eq, ranges = entry.partition("=")
        if not eq or not _PROTOCOL_NAME.match(name) or len(name) > 63:
            return False
        mask = _version_mask(ranges) if ranges else 0
        if mask is None:
            return False
        if name == "HSDir":
            hsdir |= mask
    return bool(hsdir & (1 << 2))


def _decode_srv(value, which: str) -> bytes | None:
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConsensusError(f"consensus shared-rand-{which}-value is not base64: {value!r}") from None
    if len(raw) != 32:
        raise ConsensusError(f"consensus shared-rand-{which}-value is {len(raw)} bytes, expected 32")
    return raw


class HashRing:
    """Responsible HSDirs for one consensus; sorted rings cached per (period, SRV)."""

    def __init__(self, timing: NetworkTiming, hsdirs: Sequence[HSDir], *,
                 srv_current: bytes | None, srv_previous: bytes | None,
                 n_replicas: int = DEFAULT_N_REPLICAS,
                 spread_store: int = DEFAULT_SPREAD_STORE,
                 spread_fetch: int = DEFAULT_SPREAD_FETCH,
                 skipped_without_ed25519: int = 0,
                 max_descriptor_size: int = DEFAULT_MAX_DESCRIPTOR_SIZE,
                 skipped_malformed: int = 0) -> None:
        self._timing = timing
        self._hsdirs = tuple(hsdirs)
        self._srv_current = srv_current
        self._srv_previous = srv_previous
        self.n_replicas = n_replicas
        self.spread_store = spread_store
        self.spread_fetch = spread_fetch
        self.skipped_without_ed25519 = skipped_without_ed25519
        # HSDirs refuse larger descriptors (hs_cache.c hs_cache_get_max_descriptor_size)
        self.max_descriptor_size = max_descriptor_size
        self.skipped_malformed = skipped_malformed  # entries left out as unreadable
        self._rings: dict[tuple[int, int, bytes], tuple[list[bytes], list[HSDir]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_consensus(cls, consensus, ed25519_ids: Mapping[str, bytes | str], *,
                       testing_network: bool | None = None,
                       ed25519_ids_by_digest: Mapping[str, bytes | str] | None = None) -> "HashRing":
        """From a consensus (full or microdesc flavour) and a mapping relay fingerprint ->
        ed25519 identity (32 bytes or unpadded base64, as in a microdescriptor's
        `id ed25519`). Relays without HSDir flag, without an ed25519 identity or without
        HSDir=2 support (when the consensus lists protocols) are not in the ring: tor
        leaves them out the same way (node_has_hsdir_index, node_supports_v3_hsdir).

        `consensus` is a stem `NetworkStatusDocumentV3`, or the consensus text itself
        (str/bytes, e.g. `GETINFO dir/status-vote/current/consensus-microdesc`): for text
        only the lines the ring needs are read, ~20x faster than stem's full parse of an
        8000-relay consensus (which the ring does not need). The balancer daemon reads text
        only: it is the parser whose work is bounded by the text (stem allocated every
        version of `pr HSDir=2-99999999999`, and raised AttributeError on a short `r` line).

        `ed25519_ids_by_digest` (text only): microdescriptor digest (unpadded base64, as
        in the `m` line) -> ed25519 identity, for relays not in `ed25519_ids`: what the
        balancer has from `GETINFO md/all`."""
        if isinstance(consensus, (str, bytes)):
            return cls._from_text(consensus, ed25519_ids, testing_network, ed25519_ids_by_digest or {})
        timing = NetworkTiming.from_consensus(consensus, testing_network=testing_network)
        routers = getattr(consensus, "routers", None)
        if routers is None:
            raise ConsensusError("consensus has no router entries (is it a NetworkStatusDocumentV3?)")
        entries = routers.values() if isinstance(routers, Mapping) else routers
        relays = ((e.fingerprint, e.nickname, e.flags or (),
                   None if not getattr(e, "protocols", None) else 2 in e.protocols.get("HSDir", ()))
                  for e in entries)
        return cls._build(timing, relays, ed25519_ids, getattr(consensus, "params", None) or {},
                          getattr(consensus, "shared_randomness_current_value", None),
                          getattr(consensus, "shared_randomness_previous_value", None))

    @classmethod
    def _build(cls, timing, relays, ed25519_ids, params, srv_current, srv_previous, *,
               by_digest: Mapping[str, bytes | str] | None = None, strict: bool = True,
               malformed: int = 0) -> "HashRing":
        # Keys as given are tried first; a mapping keyed "$abcd..."/lower case is
        # normalised only when needed (saves a copy of 8000 keys per consensus).
        ids = None
        by_digest = by_digest or {}
        hsdirs: list[HSDir] = []
        skipped = 0
        for entry in relays:
            fingerprint, nickname, flags, hsdir_v3 = entry[:4]
            if "HSDir" not in flags:
                continue
            if hsdir_v3 is False:  # None: the consensus lists no protocols for it
                continue
            fingerprint = fingerprint.upper()
            ed = ed25519_ids.get(fingerprint)
            if ed is None:
                if ids is None:
                    ids = {k.lstrip("$").upper(): v for k, v in ed25519_ids.items()}
                ed = ids.get(fingerprint)
            if ed is None and len(entry) > 4 and entry[4]:
                ed = by_digest.get(entry[4].rstrip("="))
            if ed is None:
                skipped += 1
                continue
            try:
                hsdirs.append(HSDir(fingerprint, nickname, _decode_ed25519_id(fingerprint, ed)))
            except ConsensusError:
                if strict:
                    raise
                malformed += 1  # one bad identity leaves that relay out, not the ring
        return cls(
            timing, hsdirs,
            srv_current=_decode_srv(srv_current, "current"),
            srv_previous=_decode_srv(srv_previous, "previous"),
            n_replicas=_param(params, "hsdir_n_replicas", DEFAULT_N_REPLICAS, _N_REPLICAS_BOUNDS),
            spread_store=_param(params, "hsdir_spread_store", DEFAULT_SPREAD_STORE, _SPREAD_STORE_BOUNDS),
            spread_fetch=_param(params, "hsdir_spread_fetch", DEFAULT_SPREAD_FETCH, _SPREAD_FETCH_BOUNDS),
            skipped_without_ed25519=skipped,
            max_descriptor_size=_param(params, "HSV3MaxDescriptorSize", DEFAULT_MAX_DESCRIPTOR_SIZE,
                                       _MAX_DESCRIPTOR_SIZE_BOUNDS),
            skipped_malformed=malformed,
        )

    @classmethod
    def _from_text(cls, text: str | bytes, ed25519_ids, testing_network,
                   by_digest: Mapping[str, bytes | str]) -> "HashRing":
        """Read valid-after, fresh-until, params, the SRVs and each relay's r/m/s/pr lines.

        Hand-written because stem parses every field of every router entry (~0.3 s for
        8000 relays, on every new consensus) and the ring needs four of them. Every step is
        bounded by the text's length (regexes without backtracking blow-ups, no ranges
        expanded), and an entry the ring cannot read (a short `r` line, an identity that is
        not 20 bytes of base64, a malformed `pr` line, which tor reads as "no protocols")
        leaves that relay out and is counted, rather than failing the whole ring. (tor
        itself rejects a consensus with a malformed entry, ns_parse.c; the text here comes
        from the balancer's tor, which has accepted it, so a bad entry means our reading
        differs from tor's, and one relay is all it may cost.)"""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        header: dict[str, str] = {}
        relays: list[tuple] = []
        # Router entries are read by one regex pass (_ROUTER_ENTRY, in C) instead of
        # cutting and searching each of 8000 entries in Python: ~2x cheaper.
        if text.startswith("r "):
            head, body = "", text
        else:
            at = text.find("\nr ")
            head, body = (text, "") if at < 0 else (text[:at + 1], text[at + 1:])
        footer = body.find("\ndirectory-footer")
        if footer >= 0:
            body = body[:footer + 1]
        for line in head.split("\n"):
            kw, _, rest = line.partition(" ")
            if kw in ("valid-after", "fresh-until", "params", "shared-rand-current-value",
                      "shared-rand-previous-value"):
                header[kw] = rest.strip()
        if "\r" in body:
            body = body.replace("\r\n", "\n")
        malformed = len(_MALFORMED_ROUTER_LINE.findall("\n" + body))
        a2b = binascii.a2b_base64
        for nickname, ident, md_digest, flags, pr_line in _ROUTER_ENTRY.findall(body):
            if "HSDir" not in flags or "HSDir" not in flags.split():
                continue  # not in the ring; skip decoding its identity
            try:
                # binascii directly: base64.b64decode's argument checks cost more than
                # the decoding, thousands of times per consensus
                raw = a2b(ident + "=" * (-len(ident) % 4))
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 20:
                malformed += 1
                continue
            relays.append((raw.hex().upper(), nickname, ("HSDir",),  # _build reads only HSDir
                           _supports_hsdir_v3(pr_line) if pr_line else None, md_digest))
        for needed in ("valid-after", "fresh-until"):
            if needed not in header:
                raise ConsensusError(f"consensus text has no {needed} line")
        params: dict[str, int] = {}
        for item in header.get("params", "").split():
            name, _, value = item.partition("=")
            # tor keeps params in int32; one it cannot read is left at its default
            if _PARAM_VALUE.match(value) and -2**31 <= int(value) < 2**31:
                params[name] = int(value)
        timing = NetworkTiming.from_times(_parse_time(header["valid-after"]),
                                          _parse_time(header["fresh-until"]), params,
                                          testing_network=testing_network)
        srv = {k: (header[k].split() + [None, None])[1] for k in
               ("shared-rand-current-value", "shared-rand-previous-value") if k in header}
        return cls._build(timing, relays, ed25519_ids, params,
                          srv.get("shared-rand-current-value"), srv.get("shared-rand-previous-value"),
                          by_digest=by_digest, strict=False, malformed=malformed)

    @property
    def timing(self) -> NetworkTiming:
        return self._timing

    @property
    def hsdirs(self) -> tuple[HSDir, ...]:
        return self._hsdirs

    def _key(self) -> tuple:
        return (self._timing, self._srv_current, self._srv_previous, self.n_replicas,
                self.spread_store, self.spread_fetch, self._hsdirs, self.max_descriptor_size)

    def current_srv(self, period_number: int) -> bytes:
        """The consensus' current SRV, or the disaster SRV for `period_number`."""
        if self._srv_current is not None:
            return self._srv_current
        return disaster_srv(period_number, self._timing.period_length)

    def previous_srv(self, period_number: int) -> bytes:
        """The consensus' previous SRV, or the disaster SRV for `period_number`."""
        if self._srv_previous is not None:
            return self._srv_previous
        return disaster_srv(period_number, self._timing.period_length)

    def descriptor_slots(self) -> tuple[DescriptorSlot, DescriptorSlot]:
        """The (first, second) descriptors a service publishes now.

        hs_service.c / nodelist.c node_set_hsdir_index: the first descriptor is stored
        with the *previous* SRV, the second with the *current* one; between a new time
        period and the next SRV they are for periods (n-1, n), otherwise (n, n+1).
        Their revision counters count from the start of the previous / current SRV run.
        """
        t = self._timing
        current = t.time_period_number()
        if t.in_period_between_tp_and_srv():
            first_tp, second_tp = current - 1, current
        else:
            first_tp, second_tp = current, current + 1
        run_start = t.srv_run_start()
        return (
            DescriptorSlot("first", first_tp, t.period_length, self.previous_srv(first_tp),
                           run_start - t.srv_run_duration),
            DescriptorSlot("second", second_tp, t.period_length, self.current_srv(second_tp),
                           run_start),
        )

    def fetch_slot(self) -> DescriptorSlot:
        """The period and SRV a client fetching now uses (node_set_hsdir_index's fetch
        index): the current period, with the current SRV between a new time period and
        the next SRV, else the previous SRV. It is always one of `descriptor_slots()`.
        Pass it to `responsible_hsdirs(..., spread=self.spread_fetch)` for the HSDirs a
        client would ask for an instance's descriptor."""
        first, second = self.descriptor_slots()
        return second if self._timing.in_period_between_tp_and_srv() else first

    def _ring(self, period_number: int, period_length: int, srv: bytes) -> tuple[list[bytes], list[HSDir]]:
        key = (period_number, period_length, srv)
        ring = self._rings.get(key)
        if ring is None:
            with self._lock:
                ring = self._rings.get(key)
                if ring is None:
                    # hsdir_index inlined (same bytes, tested against it): the SRV/period
                    # tail is packed once, and the sort keys on a list in C, for ~5000
                    # relays per (period, SRV)
                    tail = srv + struct.pack(">QQ", period_number, period_length)
                    sha3 = hashlib.sha3_256
                    hsdirs = self._hsdirs
                    indices = [sha3(b"node-idx" + h.ed25519_id + tail).digest() for h in hsdirs]
                    order = sorted(range(len(hsdirs)), key=indices.__getitem__)
                    ring = ([indices[i] for i in order], [hsdirs[i] for i in order])
                    if len(self._rings) >= 8:
                        self._rings.clear()
                    self._rings[key] = ring
        return ring

    def responsible_hsdirs(self, blinded_key: bytes, slot: DescriptorSlot, *,
                           spread: int | None = None) -> list[HSDir]:
        """The HSDirs that store the descriptor of `blinded_key` for `slot`, in replica order:
        for each replica, `spread` (default `spread_store`; clients use `spread_fetch`)
        distinct relays from the first one whose index is >= the replica's hs_index on the
        ring (hs_get_responsible_hsdirs)."""
        spread = self.spread_store if spread is None else spread
        if len(blinded_key) != 32:
            raise ValueError(f"blinded key must be 32 bytes, got {len(blinded_key)}")
        if not self._hsdirs:
            raise ConsensusError(
                "consensus lists no usable HSDir relays"
                + (f" ({self.skipped_without_ed25519} HSDir relays have no known ed25519 "
                   "identity: fetch their microdescriptors)" if self.skipped_without_ed25519 else ""))
        indices, nodes = self._ring(slot.time_period_number, slot.period_length, slot.srv)
        chosen: list[HSDir] = []
        seen: set[str] = set()
        n = len(nodes)
        for replica in range(1, self.n_replicas + 1):
            target = hs_index(blinded_key, replica, slot.time_period_number, slot.period_length)
            idx = bisect.bisect_left(indices, target)
            if idx == n:
                idx = 0
            start, added = idx, 0
            while added < spread:
                node = nodes[idx]
                if node.fingerprint not in seen:
                    seen.add(node.fingerprint)
                    chosen.append(node)
                    added += 1
                idx = (idx + 1) % n
                if idx == start:
                    break
        return chosen


_RING_CACHE: "OrderedDict[tuple, HashRing]" = OrderedDict()
_RING_CACHE_SIZE = 4
_RING_CACHE_LOCK = threading.Lock()


def ring_for(consensus, ed25519_ids: Mapping[str, bytes | str], *,
             testing_network: bool | None = None,
             ed25519_ids_by_digest: Mapping[str, bytes | str] | None = None) -> HashRing:
    """`HashRing.from_consensus`, cached for the last few consensuses: a ring equal in
    timing, SRVs, parameters and HSDirs is reused with its sorted-index cache."""
    fresh = HashRing.from_consensus(consensus, ed25519_ids, testing_network=testing_network,
                                    ed25519_ids_by_digest=ed25519_ids_by_digest)
    key = fresh._key()
    with _RING_CACHE_LOCK:
        cached = _RING_CACHE.get(key)
        if cached is not None:
            _RING_CACHE.move_to_end(key)
            return cached
        _RING_CACHE[key] = fresh
        while len(_RING_CACHE) > _RING_CACHE_SIZE:
            _RING_CACHE.popitem(last=False)
    return fresh
