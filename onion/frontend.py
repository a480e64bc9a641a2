"""The balancer's view of the Tor network and its crypto, over onion.hashring/onion.descriptor.

`TorOnionProtocol` is what `onion.balancer.Balancer` calls for: the hash ring from the
balancer tor's consensus, the (first, second) descriptor slots of a frontend with their
responsible HSDirs, decoding + verifying instance descriptors, and building master
descriptors. Tests substitute a fake with the same methods.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import logging
import re
from typing import Any, Sequence

from onion import descriptor as desc
from onion import hashring, keys
from onion.errors import ConsensusError, DescriptorFormatError
from onion.instances import Decoded
from onion.load import suggested_effort

log = logging.getLogger("onion.frontend")

_ED25519_LINE = re.compile(r"^id ed25519 (\S+)\s*$", re.M)
BUILDER_MAX_AGE = 3600.0  # rebuild the signing key/cert hourly (the cert lives 54 h)


def _timestamp(value: Any) -> float:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    return float(value)


def microdesc_ed25519_ids(md_all: str) -> dict[str, str]:
    """sha256 digest (unpadded base64, as in the consensus `m` line) -> `id ed25519` value,
    from the text of `GETINFO md/all`. Hand-written: stem has no digest -> id index."""
    out: dict[str, str] = {}
    text = md_all.replace("\r\n", "\n")
    # A microdescriptor's digest covers its final newline; stem strips the one at the end
    # of a control reply, so the last microdescriptor in `md/all` arrives without it (its
    # relay then dropped out of the ring: one HSDir too few, every time).
    if text and not text.endswith("\n"):
        text += "\n"
    starts = [m.start() for m in re.finditer(r"^onion-key\b", text, re.M)]
    for i, start in enumerate(starts):
        block = text[start: starts[i + 1] if i + 1 < len(starts) else len(text)]
        m = _ED25519_LINE.search(block)
        if not m:
            continue
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode().rstrip("=")
        out[digest] = m.group(1)
    return out


class TorOnionProtocol:
    def __init__(self) -> None:
        self.ring: hashring.HashRing | None = None
        self._builders: dict[tuple[str, int], tuple[float, Any]] = {}
        self._last_revision: dict[tuple[str, int], int] = {}

    # -- consensus ------------------------------------------------------------
    def refresh(self, control) -> "RingInfo":
        """The hash ring from the balancer tor's consensus and microdescriptors.

        One parser: `onion.hashring`'s reader of the consensus text (the one the
        benchmarks time), not stem's. It reads only the lines the ring needs, ~20x faster
        than stem's full parse, and its work is bounded by the text: stem expanded
        `pr HSDir=2-99999999999` into a list of 10^11 versions (24 GB before the kernel
        killed the process) and raised AttributeError on a short `r` line, and neither is
        ours to fix in stem. Bad entries cost their relay, not the ring."""
        from onion.balancer import RingInfo

        text = ""
        for key in ("dir/status-vote/current/consensus-microdesc", "dir/status-vote/current/consensus"):
            try:
                text = control.get_info(key)
            except ValueError:
                continue
            if text:
                break
        if not text:
            raise ConsensusError("tor has no consensus yet")
        try:
            md_ids = microdesc_ed25519_ids(control.get_info("md/all"))
        except ValueError:
            md_ids = {}
        testing = None
        try:
            testing = str(control.get_conf("TestingTorNetwork")).strip() == "1"
        except (ValueError, AttributeError):
            testing = None
        ring = hashring.ring_for(text, {}, testing_network=testing, ed25519_ids_by_digest=md_ids)
        if ring.skipped_malformed:
            log.warning("consensus: %d router entries unreadable, left out of the hash ring",
                        ring.skipped_malformed)
        if not ring.hsdirs:
            raise ConsensusError("no HSDir with a known ed25519 identity yet (microdescriptors missing)")
        self.ring = ring
        t = ring.timing
        return RingInfo(valid_after=float(t.valid_after), current_period=t.time_period_number(),
                        period_length=t.period_length, voting_interval=float(t.voting_interval),
                        complete=ring.skipped_without_ed25519 == 0, hsdirs=len(ring.hsdirs),
                        hsdirs_without_ed25519=ring.skipped_without_ed25519,
                        skipped_malformed=ring.skipped_malformed)

    def _need_ring(self) -> hashring.HashRing:
        if self.ring is None:
            raise ConsensusError("no hash ring yet")
        return self.ring

    # -- frontends --------------------------------------------------------------
    def slots(self, identity, now: float) -> list:
        from onion.balancer import Slot

        ring = self._need_ring()
        out = []
        for slot in ring.descriptor_slots():
            blinded = identity.blind(slot.time_period_number, slot.period_length)
            hsdirs = ring.responsible_hsdirs(blinded.public_key, slot)
            out.append(Slot(period=slot.time_period_number,
                            hsdirs=tuple(dict.fromkeys(h.fingerprint for h in hsdirs)),
                            role="current" if slot.which == "first" else "next"))
        return out

    def _slot(self, period: int):
        ring = self._need_ring()
        for slot in ring.descriptor_slots():
            if slot.time_period_number == period:
                return slot
        raise ConsensusError(f"time period {period} is neither of the descriptors published now")

    def build(self, identity, period: int, intro_points: Sequence[Any], now: float) -> tuple[str, int]:
        slot = self._slot(period)
        key = (identity.address, period)
        cached = self._builders.get(key)
        if cached is None or now - cached[0] > BUILDER_MAX_AGE:
            builder = desc.MasterDescriptorBuilder(identity, time_period_number=period,
                                                   period_length=slot.period_length, now=now)
            self._builders = {k: v for k, v in self._builders.items() if k[1] >= period - 1}
            self._builders[key] = (now, builder)
        builder = self._builders[key][1]
        revision = desc.revision_counter(builder.blinded_key, slot.revision_base, now)
        # HSDirs keep a descriptor only if its revision is higher than the one they hold,
        # and the OPE counter has one-second resolution: two builds in the same second
        # (instances' descriptors arriving one after the other) must still increase.
        revision = max(revision, self._last_revision.get(key, -1) + 1)
        built = builder.build(list(intro_points), revision_counter=revision,
                              max_size=self.ring.max_descriptor_size if self.ring else desc.MAX_DESCRIPTOR_SIZE)
        self._last_revision[key] = revision
        if len(self._last_revision) > 64:
            self._last_revision = {k: v for k, v in self._last_revision.items() if k[1] >= period - 1}
        return built.text, built.revision_counter

    def built_at(self, identity, period: int, revision: int, now: float) -> float | None:
        """The wall time (to the second) a descriptor of `period` with this revision counter
        was built, read back from tor's OPE counter with the blinded key (any holder of the
        master key can), or None when it is not one of ours or the period is not published
        now. Binary search over the strictly increasing counter: ~18 OPE evaluations."""
        try:
            slot = self._slot(period)
        except ConsensusError:
            return None
        blinded = identity.blind(period, slot.period_length)
        lo, hi = int(slot.revision_base), int(now) + 3600
        if desc.revision_counter(blinded, slot.revision_base, lo) > revision:
            return None
        while lo < hi:  # the last second whose counter is <= revision
            mid = (lo + hi + 1) // 2
            if desc.revision_counter(blinded, slot.revision_base, mid) <= revision:
                lo = mid
            else:
                hi = mid - 1
        return float(lo)

    # -- instances --------------------------------------------------------------
    def decode(self, text: str, address: str, periods: Sequence[int], now: float) -> Decoded:
        ring = self._need_ring()
        d = desc.decrypt_descriptor(text, address, time_period_numbers=tuple(periods) or
                                    (ring.timing.time_period_number(),),
                                    period_length=ring.timing.period_length, now=now)
        for n, ip in enumerate(d.intro_points, 1):
            problem = desc.intro_point_problem(ip)
            if problem is not None:
                # tor's own decoder keeps such intro points (and clients skip unknown link
                # specifiers), but no tor service makes them: the descriptor is forged or
                # broken, and its intro points would bloat every master descriptor.
                raise DescriptorFormatError(f"introduction point {n} has {problem}: not a "
                                            "descriptor a tor instance makes, refused")
        return Decoded(intro_points=tuple(d.intro_points), revision=d.revision_counter,
                       period=d.time_period_number, blinded_key=d.blinded_key,
                       signing_key_expiry=_timestamp(d.signing_key_expiry),
                       pow_effort=suggested_effort(d.extra_lines))

    def fetch_hsdirs(self, address: str, now: float) -> list[str]:
        """HSDirs a client would fetch the instance's current descriptor from (tor's fetch
        index, `hsdir_spread_fetch` per replica), in an order that rotates over time so
        successive fetches ask different ones."""
        ring = self._need_ring()
        slot = ring.fetch_slot()
        blinded = keys.blind_public_key(keys.parse_address(address), slot.time_period_number,
                                        slot.period_length)
        fetchable = list(dict.fromkeys(
            h.fingerprint for h in ring.responsible_hsdirs(blinded, slot, spread=ring.spread_fetch)))
        if not fetchable:
            return []
        shift = int(now // 10) % len(fetchable)
        return fetchable[shift:] + fetchable[:shift]
