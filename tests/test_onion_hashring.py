"""onion.hashring: tor's test vectors (hs_common.c tests, OnionBalance's ring vector),
time periods on production and test networks, descriptor slots, stem consensus input."""
from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import struct

import pytest
from stem.descriptor.networkstatus import NetworkStatusDocumentV3

from onion import hashring
from onion.errors import ConsensusError
from onion.hashring import (
    HashRing, HSDir, NetworkTiming, disaster_srv, hs_index, hsdir_index, ring_for,
)
from onion.keys import IdentityKey


def utc(text: str) -> int:
    return calendar.timegm(dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timetuple())


def hourly(valid_after: int, params=None) -> NetworkTiming:
    return NetworkTiming.from_times(valid_after, valid_after + 3600, params or {})


# --- vectors ------------------------------------------------------------------------------------

def test_hs_index_and_hsdir_index_match_tor_vectors():
    # tor test_hs_common.c test_hs_indexes: key 0x42*32, SRV 0x43*32, period 42, length 1440
    assert hs_index(b"\x42" * 32, 1, 42, 1440).hex() == \
        "37e5cbbd56a22823714f18f1623ece5983a0d64c78495a8cfab854245e5f9a8a"
    assert hsdir_index(b"\x42" * 32, b"\x43" * 32, 42, 1440).hex() == \
        "db475361014a09965e7e5e4d4a25b8f8d4b8f16cb1d8a7e95eed50249cc1a2d5"


def test_disaster_srv_is_rend_spec_formula():
    # rend-spec-v3 [SHAREDRANDOM]: H("shared-random-disaster" | INT_8(len) | INT_8(num))
    expected = hashlib.sha3_256(b"shared-random-disaster" + (1440).to_bytes(8, "big")
                                + (17000).to_bytes(8, "big")).digest()
    assert disaster_srv(17000, 1440) == expected
    assert disaster_srv(17001, 1440) != expected and disaster_srv(17000, 240) != expected


def test_responsible_hsdirs_match_onionbalance_vector():
    """OnionBalance's tests/v3/test_v3_hashring.py: 255 relays, fixed SRVs and blinded keys."""
    hsdirs = [HSDir((bytes([i]) * 20).hex().upper(), f"n{i}", bytes([i]) * 32) for i in range(1, 256)]
    ring = HashRing(hourly(10101010101), hsdirs, srv_current=bytes([41]) * 32,
                    srv_previous=bytes([42]) * 32)
    first, second = ring.descriptor_slots()
    got_first = ring.responsible_hsdirs(bytes.fromhex(
        "063AEC5E1FD3025098F2DF71EF570B28D94B463FFCCB5EC6A9C061E38F551C6A"), first)
    got_second = ring.responsible_hsdirs(bytes.fromhex(
        "5DB624F2D74F103E6E8C6FBCCD074586EF5A5572F90673C00B77DEF94EC11499"), second)
    assert [h.fingerprint[:2] for h in got_first] == ["D1", "2F", "B0", "3A", "5A", "DF", "F7", "34"]
    assert [h.fingerprint[:2] for h in got_second] == ["5D", "9A", "D1", "7A", "C3", "C6", "E9", "86"]


# --- time periods -----------------------------------------------------------------------------------

def test_time_period_numbers_match_tor():
    # tor test_hs_common.c test_time_period (prop224 [TIME-PERIODS] example)
    t = utc("2016-04-13 11:00:00")
    timing = hourly(t)
    assert timing.period_length == 1440 and timing.rotation_offset_seconds == 12 * 3600
    assert timing.time_period_number() == 16903
    assert timing.time_period_number(t + 3599) == 16903
    assert timing.time_period_start(16904) == utc("2016-04-13 12:00:00")
    assert timing.time_period_number(t + 3600) == 16904
    assert timing.time_period_start(16905) == utc("2016-04-14 12:00:00")


def test_test_network_timing_matches_tor():
    # tor test_start_time_of_next_time_period with TestingTorNetwork and a 10 s voting
    # interval: 4-minute periods, 120 s rotation offset.
    t = utc("2016-04-13 00:00:00")
    timing = NetworkTiming.from_times(t, t + 10, {"hsdir_interval": 60})
    assert timing.testing_network and timing.period_length == 4
    assert timing.rotation_offset_seconds == 120
    assert timing.time_period_start(timing.time_period_number(t) + 1) == utc("2016-04-13 00:02:00")
    t2 = utc("2016-04-13 00:02:00")
    assert timing.time_period_start(timing.time_period_number(t2) + 1) == utc("2016-04-13 00:06:00")
    # 20 s voting (the lab's old default): 8-minute periods, 4-minute offset
    assert NetworkTiming.from_times(t, t + 20).period_length == 8


def test_period_length_comes_from_the_consensus_param_and_is_clamped():
    t = utc("2016-04-13 11:00:00")
    assert hourly(t, {"hsdir_interval": 720}).period_length == 720
    assert hourly(t, {"hsdir_interval": 5}).period_length == 30
    assert hourly(t, {"hsdir_interval": 10**6}).period_length == 14400
    # an explicit TestingTorNetwork overrides the guess either way
    assert NetworkTiming.from_times(t, t + 3600, testing_network=True).period_length == 1440
    assert NetworkTiming.from_times(t, t + 600, {"hsdir_interval": 120},
                                    testing_network=False).period_length == 120


@pytest.mark.parametrize("valid_after, between", [
    # tor test_hs_common.c test_time_between_tp_and_srv
    ("1985-10-26 00:00:00", False), ("1985-10-26 11:00:00", False),
    ("1985-10-26 12:00:00", True), ("1985-10-26 23:00:00", True), ("1985-10-27 00:00:00", False),
])
def test_between_tp_and_srv_matches_tor(valid_after, between):
    assert hourly(utc(valid_after)).in_period_between_tp_and_srv() is between


def test_descriptor_slots_follow_tors_four_cases():
    hsdirs = [HSDir("AA" * 20, "a", b"\x01" * 32)]
    cur, prev = b"C" * 32, b"P" * 32
    # 00:00-12:00: first = (tp, previous SRV), second = (tp+1, current SRV)
    morning = HashRing(hourly(utc("2016-04-14 03:00:00")), hsdirs, srv_current=cur, srv_previous=prev)
    first, second = morning.descriptor_slots()
    tp = morning.timing.time_period_number()
    assert tp == 16904
    assert (first.time_period_number, first.srv) == (tp, prev)
    assert (second.time_period_number, second.srv) == (tp + 1, cur)
    assert first.revision_base == utc("2016-04-13 00:00:00")     # previous SRV run
    assert second.revision_base == utc("2016-04-14 00:00:00")    # current SRV run
    # 12:00-24:00: first = (tp-1, previous SRV), second = (tp, current SRV)
    evening = HashRing(hourly(utc("2016-04-14 15:00:00")), hsdirs, srv_current=cur, srv_previous=prev)
    first, second = evening.descriptor_slots()
    tp = evening.timing.time_period_number()
    assert tp == 16905
    assert (first.time_period_number, first.srv) == (tp - 1, prev)
    assert (second.time_period_number, second.srv) == (tp, cur)
    # the second descriptor of the evening is the first one of the next morning: same
    # period, same SRV, same revision base (so its counters keep growing)
    next_morning = HashRing(hourly(utc("2016-04-15 03:00:00")), hsdirs, srv_current=b"N" * 32,
                            srv_previous=cur).descriptor_slots()[0]
    assert (next_morning.time_period_number, next_morning.srv, next_morning.revision_base) == \
        (second.time_period_number, second.srv, second.revision_base)


def test_disaster_fallback_per_slot():
    hsdirs = [HSDir("AA" * 20, "a", b"\x01" * 32)]
    ring = HashRing(hourly(utc("2016-04-14 03:00:00")), hsdirs, srv_current=None, srv_previous=None)
    first, second = ring.descriptor_slots()
    assert first.srv == disaster_srv(first.time_period_number, 1440)
    assert second.srv == disaster_srv(second.time_period_number, 1440)
    assert first.srv != second.srv


# --- responsible HSDirs ---------------------------------------------------------------------------

def _reference_hsdirs(hsdirs, blinded, slot, replicas, spread):
    """A deliberately naive restatement of rend-spec-v3 [HASHRING] for cross-checking."""
    ring = sorted(hsdirs, key=lambda h: hsdir_index(h.ed25519_id, slot.srv, slot.time_period_number,
                                                   slot.period_length))
    idx = [hsdir_index(h.ed25519_id, slot.srv, slot.time_period_number, slot.period_length) for h in ring]
    out = []
    for replica in range(1, replicas + 1):
        target = hs_index(blinded, replica, slot.time_period_number, slot.period_length)
        start = next((i for i, v in enumerate(idx) if v >= target), 0)
        added, i = 0, start
        for _ in range(len(ring)):
            if added == spread:
                break
            if ring[i] not in out:
                out.append(ring[i])
                added += 1
            i = (i + 1) % len(ring)
    return out


@pytest.mark.parametrize("n_relays, replicas, spread", [(1, 2, 4), (3, 2, 4), (8, 2, 4), (50, 2, 4),
                                                        (300, 3, 5), (40, 1, 1)])
def test_responsible_hsdirs_small_and_large_rings(n_relays, replicas, spread):
    hsdirs = [HSDir(hashlib.sha1(bytes([i % 256, i // 256])).hexdigest().upper(), f"r{i}",
                    hashlib.sha256(bytes([i % 256, i // 256])).digest()) for i in range(n_relays)]
    ring = HashRing(hourly(utc("2016-04-14 03:00:00")), hsdirs, srv_current=b"c" * 32,
                    srv_previous=b"p" * 32, n_replicas=replicas, spread_store=spread)
    key = IdentityKey.generate()
    for slot in ring.descriptor_slots():
        blinded = key.blind(slot.time_period_number, slot.period_length).public_key
        got = ring.responsible_hsdirs(blinded, slot)
        assert got == _reference_hsdirs(hsdirs, blinded, slot, replicas, spread)
        assert len(got) == min(n_relays, replicas * spread)  # never loops, never repeats
        assert len({h.fingerprint for h in got}) == len(got)


def test_empty_ring_is_a_clear_error():
    ring = HashRing(hourly(utc("2016-04-14 03:00:00")), [], srv_current=None, srv_previous=None,
                    skipped_without_ed25519=5)
    with pytest.raises(ConsensusError, match="5 HSDir relays have no known ed25519 identity"):
        ring.responsible_hsdirs(b"\x00" * 32, ring.descriptor_slots()[0])


# --- from a stem consensus ------------------------------------------------------------------------

def make_consensus(n: int, **kwargs):
    text, ids = make_consensus_text(n, **kwargs)
    return NetworkStatusDocumentV3(text.encode(), validate=False), ids


def make_consensus_text(n: int, *, valid_after="2016-04-14 03:00:00", interval=3600, params="",
                        srv=True, extra_flags=lambda i: "HSDir", protocols=lambda i: "HSDir=1-2"):
    va = dt.datetime.strptime(valid_after, "%Y-%m-%d %H:%M:%S")
    fmt = "%Y-%m-%d %H:%M:%S"
    lines = ["network-status-version 3 microdesc", "vote-status consensus", "consensus-method 32",
             f"valid-after {va:{fmt}}", f"fresh-until {va + dt.timedelta(seconds=interval):{fmt}}",
             f"valid-until {va + dt.timedelta(seconds=3 * interval):{fmt}}",
             "voting-delay 300 300", "known-flags Fast HSDir Running Stable V2Dir Valid"]
    if params:
        lines.append(f"params {params}")
    if srv:
        lines.append("shared-rand-previous-value 9 " + base64.b64encode(b"p" * 32).decode())
        lines.append("shared-rand-current-value 9 " + base64.b64encode(b"c" * 32).decode())
    ids = {}
    for i in range(n):
        fp = hashlib.sha1(struct.pack(">I", i)).digest()
        ident = base64.b64encode(fp).decode().rstrip("=")
        lines += [f"r relay{i} {ident} 2016-04-14 02:00:00 10.{i // 65536}.{i // 256 % 256}.{i % 256} 9001 0",
                  "m " + base64.b64encode(hashlib.sha256(fp).digest()).decode().rstrip("="),
                  f"s Fast Running Stable V2Dir Valid {extra_flags(i)}".rstrip(),
                  f"pr {protocols(i)}"]
        ids[fp.hex().upper()] = base64.b64encode(hashlib.sha256(b"ed" + fp).digest()).decode().rstrip("=")
    lines.append("directory-footer")
    return "\n".join(lines) + "\n", ids


def test_ring_from_stem_consensus_filters_and_reads_params():
    doc, ids = make_consensus(12, params="hsdir_n_replicas=3 hsdir_spread_store=2",
                              extra_flags=lambda i: "" if i == 0 else "HSDir",
                              protocols=lambda i: "HSDir=1" if i == 1 else "HSDir=1-2")
    del ids[hashlib.sha1(struct.pack(">I", 5)).hexdigest().upper()]  # no microdescriptor yet
    ring = HashRing.from_consensus(doc, ids)
    assert (ring.n_replicas, ring.spread_store) == (3, 2)
    names = {h.nickname for h in ring.hsdirs}
    # relay0: no HSDir flag; relay1: no HSDir=2; relay5: no ed25519 identity
    assert names == {f"relay{i}" for i in range(12)} - {"relay0", "relay1", "relay5"}
    assert ring.skipped_without_ed25519 == 1
    assert ring.timing.period_length == 1440 and not ring.timing.testing_network
    first, second = ring.descriptor_slots()
    assert (first.srv, second.srv) == (b"p" * 32, b"c" * 32)
    assert len(ring.responsible_hsdirs(b"\x05" * 32, first)) == 6


def test_ring_from_test_network_consensus_without_srv():
    doc, ids = make_consensus(5, interval=10, srv=False)
    ring = HashRing.from_consensus(doc, ids)
    assert ring.timing.testing_network and ring.timing.period_length == 4
    first, second = ring.descriptor_slots()
    assert first.srv == disaster_srv(first.time_period_number, 4)
    assert second.srv == disaster_srv(second.time_period_number, 4)


def test_bad_ed25519_identity_is_named():
    doc, ids = make_consensus(3)
    fp = next(iter(ids))
    ids[fp] = "not base64!"
    with pytest.raises(ConsensusError, match=f"ed25519 identity of relay {fp} is not base64"):
        HashRing.from_consensus(doc, ids)


def test_ring_for_caches_per_consensus():
    hashring._RING_CACHE.clear()
    doc, ids = make_consensus(20)
    a = ring_for(doc, ids)
    slot = a.descriptor_slots()[0]
    a.responsible_hsdirs(b"\x07" * 32, slot)
    assert len(a._rings) == 1
    doc2, _ = make_consensus(20)  # same content parsed again
    assert ring_for(doc2, ids) is a
    later, _ = make_consensus(20, valid_after="2016-04-14 04:00:00")
    assert ring_for(later, ids) is not a


def test_fetch_slot_is_the_one_clients_use():
    hsdirs = [HSDir(hashlib.sha1(bytes([i])).hexdigest().upper(), f"r{i}",
                    hashlib.sha256(bytes([i])).digest()) for i in range(30)]
    for when, which in (("2016-04-14 03:00:00", "first"), ("2016-04-14 15:00:00", "second")):
        ring = HashRing(hourly(utc(when)), hsdirs, srv_current=b"c" * 32, srv_previous=b"p" * 32)
        fetch = ring.fetch_slot()
        assert fetch.which == which
        assert fetch.time_period_number == ring.timing.time_period_number()
        # tor: fetch index uses the current SRV between TP and SRV, else the previous one
        assert fetch.srv == (b"c" * 32 if which == "second" else b"p" * 32)
        blinded = IdentityKey.generate().blind(fetch.time_period_number, 1440).public_key
        fetched = ring.responsible_hsdirs(blinded, fetch, spread=ring.spread_fetch)
        assert len(fetched) == 6
        assert fetched == _reference_hsdirs(hsdirs, blinded, fetch, 2, 3)


@pytest.mark.parametrize("kwargs", [
    dict(params="hsdir_n_replicas=3 hsdir_spread_fetch=5 hsdir_spread_store=2",  # sorted, as tor writes
         extra_flags=lambda i: "" if i == 0 else "HSDir",
         protocols=lambda i: "HSDir=1" if i == 1 else ("Link=1-5" if i == 2 else "HSDir=1-2")),
    dict(interval=10, srv=False),
    dict(valid_after="2016-04-14 15:00:00", params="hsdir_interval=720"),
])
def test_consensus_text_gives_the_same_ring_as_stem(kwargs):
    doc, ids = make_consensus(40, **kwargs)
    del ids[hashlib.sha1(struct.pack(">I", 7)).hexdigest().upper()]
    from_stem = HashRing.from_consensus(doc, ids)
    from_text = HashRing.from_consensus(bytes(doc.get_bytes()), ids)
    assert from_text._key() == from_stem._key()
    assert from_text.skipped_without_ed25519 == from_stem.skipped_without_ed25519 == 1
    key = IdentityKey.generate()
    for a, b in zip(from_text.descriptor_slots(), from_stem.descriptor_slots()):
        assert a == b
        blinded = key.blind(a.time_period_number, a.period_length).public_key
        assert from_text.responsible_hsdirs(blinded, a) == from_stem.responsible_hsdirs(blinded, b)


def test_consensus_text_errors_are_named():
    with pytest.raises(ConsensusError, match="no valid-after line"):
        HashRing.from_consensus("network-status-version 3\n", {})
    # a short r line costs its relay, not the ring (counted, shown in the status)
    ring = HashRing.from_consensus("valid-after 2016-04-14 14:00:00\nfresh-until 2016-04-14 15:00:00\n"
                                   "r ok AAAA x\ns HSDir\nr lonely\ns HSDir\n", {})
    assert ring.skipped_malformed == 2 and ring.hsdirs == ()  # AAAA is 3 bytes, not 20
    with pytest.raises(ConsensusError, match="not 'YYYY-MM-DD HH:MM:SS'"):
        HashRing.from_consensus("valid-after yesterday\nfresh-until 2016-04-14 15:00:00\n", {})


@pytest.mark.parametrize("period, ed25519_id, tor_index", [
    # HS_DESC UPLOAD ... HSDIR_INDEX= from tor 0.4.9 on a fresh lab network (no SRV yet,
    # TestingTorNetwork, 10 s voting: 4-minute periods): tor's node index under the
    # disaster SRV of the period, for the first and the second descriptor.
    (7480459, "ODfRoZ50uB9AQjrqvkbwVYqiqikk/CZKiTOfx0ceANY=",
     "640835B2028A6DF66581F72A0E53C44B96A2644472D33E7ECAD27544946870D0"),
    (7480460, "wZ0dr/g4xACpTRunjP9b/xDpF1iZoGkYh4OMKgVmc3E=",
     "DE85FCD47719693E6A09958C2BD08E0D9CDDA7DDF9410AC19638F7D8F40C1DDC"),
])
def test_disaster_srv_node_index_matches_real_tor(period, ed25519_id, tor_index):
    srv = disaster_srv(period, 4)
    assert hsdir_index(base64.b64decode(ed25519_id), srv, period, 4).hex().upper() == tor_index


def test_consensus_text_parser_reads_full_flavour_entries_like_stem():
    """Entries with a/v/w/p lines, a relay without an 's' line, another whose 'pr' line
    lacks HSDir, and a footer with signatures: the text parser (which cuts entries with
    str.split/find) and stem agree on every relay that counts."""
    lines = ["network-status-version 3", "vote-status consensus", "consensus-method 32",
             "valid-after 2016-04-14 03:00:00", "fresh-until 2016-04-14 04:00:00",
             "valid-until 2016-04-14 06:00:00", "voting-delay 300 300",
             "known-flags Fast HSDir Running Stable V2Dir Valid",
             "params hsdir_n_replicas=2 hsdir_spread_store=3",
             "shared-rand-previous-value 9 " + base64.b64encode(b"p" * 32).decode(),
             "shared-rand-current-value 9 " + base64.b64encode(b"c" * 32).decode()]
    ids = {}
    for i in range(30):
        fp = hashlib.sha1(struct.pack(">I", 1000 + i)).digest()
        ident = base64.b64encode(fp).decode().rstrip("=")
        digest = base64.b64encode(hashlib.sha1(fp).digest()).decode().rstrip("=")
        lines.append(f"r relay{i} {ident} {digest} 2016-04-14 02:00:00 10.0.0.{i} 9001 9030")
        if i % 3 == 0:
            lines.append(f"a [2001:db8::{i}]:9001")
        if i != 4:  # relay4: no 's' line at all
            lines.append("s Fast Running Stable V2Dir Valid" + (" HSDir" if i % 4 else ""))
        lines.append("v Tor 0.4.8.10")
        lines.append("pr Link=1-5 " + ("Relay=1-4" if i == 9 else "HSDir=1-2 Relay=1-4"))
        lines.append(f"w Bandwidth={100 + i}")
        lines.append("p reject 1-65535")
        ids[fp.hex().upper()] = base64.b64encode(hashlib.sha256(b"ed" + fp).digest()).decode().rstrip("=")
    lines += ["directory-footer", "bandwidth-weights Wbd=0 Wbe=0",
              "directory-signature sha256 " + "A" * 40 + " " + "B" * 40,
              "-----BEGIN SIGNATURE-----", "c2lnbmF0dXJl", "-----END SIGNATURE-----"]
    text = "\n".join(lines) + "\n"
    doc = NetworkStatusDocumentV3(text.encode(), validate=False)
    from_text = HashRing.from_consensus(text, ids)
    from_stem = HashRing.from_consensus(doc, ids)
    assert from_text._key() == from_stem._key()
    names = {h.nickname for h in from_text.hsdirs}
    # no HSDir flag (i % 4 == 0, relay4 has no flags at all), relay9 lacks HSDir protocols
    assert names == {f"relay{i}" for i in range(30) if i % 4 and i != 9}
    assert (from_text.n_replicas, from_text.spread_store) == (2, 3)
    # CRLF line ends read the same
    assert HashRing.from_consensus(text.replace("\n", "\r\n"), ids)._key() == from_text._key()


# --- hostile consensus text (the balancer's only consensus parser) ---------------------------

HOSTILE_CONSENSUS_SCRIPT = r"""
import json, resource, sys
# A hard ceiling on this process' address space: a parser that allocates per protocol
# version of `HSDir=2-99999999999` hits MemoryError here instead of eating the machine.
resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
from tests.test_onion_hashring import hostile_consensus_and_microdescs
from onion.frontend import TorOnionProtocol

text, md_all, names = hostile_consensus_and_microdescs()

class Control:
    def get_info(self, key):
        if key == "md/all":
            return md_all
        if key == "dir/status-vote/current/consensus-microdesc":
            return text
        raise ValueError(key)

    def get_conf(self, key):
        return "0"

proto = TorOnionProtocol()
try:
    info = proto.refresh(Control())
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
print(json.dumps({"hsdirs": sorted(h.nickname for h in proto.ring.hsdirs),
                  "malformed": info.skipped_malformed, "names": names,
                  "max_size": proto.ring.max_descriptor_size}))
"""


def hostile_consensus_and_microdescs():
    """A microdesc consensus of 12 HSDirs, each with its microdescriptor, where
    relay3 claims `pr HSDir=2-99999999999` (tor: versions above 63 make the whole list
    unparseable, i.e. no protocols: not a v3 HSDir), relay5 has a malformed `r` line,
    relay7 a `pr` range upside down, and relay8 an identity that is not 20 bytes. A
    consensus param tor cannot read is ignored, HSV3MaxDescriptorSize is read."""
    lines = ["network-status-version 3 microdesc", "vote-status consensus", "consensus-method 32",
             "valid-after 2016-04-14 03:00:00", "fresh-until 2016-04-14 04:00:00",
             "valid-until 2016-04-14 06:00:00", "voting-delay 300 300",
             "known-flags Fast HSDir Running Stable V2Dir Valid",
             "params HSV3MaxDescriptorSize=40000 hsdir_spread_store=x9"]
    mds = []
    for i in range(12):
        fp = hashlib.sha1(struct.pack(">I", 50 + i)).digest()
        ident = base64.b64encode(fp).decode().rstrip("=")
        ed = base64.b64encode(hashlib.sha256(b"ed" + fp).digest()).decode().rstrip("=")
        md = (f"onion-key\n-----BEGIN RSA PUBLIC KEY-----\nAAAA{i}\n-----END RSA PUBLIC KEY-----\n"
              f"ntor-onion-key x{i}=\nid ed25519 {ed}\n")
        mds.append(md)
        digest = base64.b64encode(hashlib.sha256(md.encode()).digest()).decode().rstrip("=")
        if i == 5:
            lines.append(f"r relay{i}")
        elif i == 8:
            lines.append(f"r relay{i} QUJD 2016-04-14 02:00:00 10.0.0.{i} 9001 0")
        else:
            lines.append(f"r relay{i} {ident} 2016-04-14 02:00:00 10.0.0.{i} 9001 0")
        lines += [f"m {digest}", "s Fast HSDir Running Stable V2Dir Valid",
                  "pr " + {3: "Link=1-5 HSDir=2-99999999999", 7: "HSDir=2-1"}.get(i, "Link=1-5 HSDir=1-2")]
    lines.append("directory-footer")
    names = [f"relay{i}" for i in range(12) if i not in (3, 5, 7, 8)]
    return "\n".join(lines) + "\n", "".join(mds).rstrip("\n"), names


def test_a_hostile_consensus_costs_its_bad_entries_not_the_ring_nor_the_memory():
    """`pr HSDir=2-99999999999` made both consensus parsers allocate without bound (24 GB
    before the kernel killed the process) and a short `r` line raised AttributeError, so
    no ring was built. Run through the balancer's real path (TorOnionProtocol.refresh)
    in a child process whose address space is capped, so a regression fails this test
    instead of the machine."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    limit = 1024 * 1024 * 1024  # 1 GiB: the importing process itself needs ~170 MB
    env = dict(os.environ, PYTHONPATH=str(repo), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", HOSTILE_CONSENSUS_SCRIPT.replace("AS_LIMIT", str(limit))],
                          capture_output=True, text=True, timeout=120, cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["hsdirs"] == sorted(out["names"])          # the 8 good HSDirs, nothing else
    assert out["malformed"] == 2                           # the short r line, the bad identity
    assert out["max_size"] == 40000                        # HSV3MaxDescriptorSize from the consensus


def test_protocol_lists_follow_tors_parser():
    supports = hashring._supports_hsdir_v3
    assert supports("pr HSDir=1-2 Link=1-5")
    assert supports("pr HSDir=2")
    assert supports("pr HSDir=1,2,5-63")
    assert not supports("pr HSDir=1")
    assert not supports("pr Link=1-5")
    for bad in ("pr HSDir=2-64", "pr HSDir=1-2 Link=1-640", "pr HSDir=2-1", "pr HSDir=2,,3",
                "pr HSDir=x", "pr =2", "pr HSDir=2 Li!nk=1", "pr HSDir=" + "1" * 30):
        assert not supports(bad), bad   # unparseable: "no protocols" (protover.c)
