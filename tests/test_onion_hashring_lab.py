"""Real tor agrees with onion.hashring and onion.descriptor, on the lab's private network.

A tor hosting three onion services (keys made by onion.keys) uploads its descriptors; its
HS_DESC UPLOAD events name each HSDir in upload order with the hsdir index tor computed.
From the same tor's consensus and microdescriptors our ring must give the same HSDirs in
the same order, with the same indexes: this checks the test-network time period and
rotation offset, the (possibly disaster) SRVs, the slot rules, node and service indexes.
Then a client fetches each descriptor (HSFETCH): we must verify and decrypt what tor 0.4.9
built, and find its revision counter on tor's OPE curve for its blinded key.
"""
from __future__ import annotations

import base64
import queue
import threading
import time
from pathlib import Path

import pytest

from onion import crypto
from onion.descriptor import decrypt_descriptor
from onion.hashring import HashRing
from onion.keys import IdentityKey

pytestmark = pytest.mark.lab

N_SERVICES = 3


def _ring_from(ctl) -> HashRing:
    from stem.descriptor.networkstatus import NetworkStatusDocumentV3

    text = ""
    for key in ("dir/status-vote/current/consensus-microdesc", "dir/status-vote/current/consensus"):
        try:
            text = ctl.get_info(key)
        except Exception:  # noqa: BLE001 - older tors lack the microdesc key
            continue
        if text:
            break
    consensus = NetworkStatusDocumentV3(text.encode(), validate=False)
    ids = {}
    for fp in consensus.routers:
        # md/id/FP is the microdescriptor tor itself uses for that relay (node->md)
        md = ctl.get_info(f"md/id/{fp}", "")
        for line in md.splitlines():
            if line.startswith("id ed25519 "):
                ids[fp] = line.split()[2]
    testing = ctl.get_conf("TestingTorNetwork") == "1"
    ring = HashRing.from_consensus(consensus, ids, testing_network=testing)
    # the fast text path reads the same real consensus to the same ring
    assert HashRing.from_consensus(text, ids, testing_network=testing)._key() == ring._key()
    # the balancer's path (one GETINFO md/all, matched by microdescriptor digest) finds
    # every relay this one does (it once lost the relay whose microdescriptor came last)
    from onion.frontend import TorOnionProtocol

    balancer = TorOnionProtocol()
    info = balancer.refresh(ctl)
    assert {h.fingerprint for h in balancer.ring.hsdirs} == {h.fingerprint for h in ring.hsdirs}
    assert info.complete and info.hsdirs == len(ring.hsdirs)
    return ring


@pytest.fixture(scope="module")
def services(lab):
    """(tor node, controller, {address: IdentityKey}, HS_DESC events as (time, event))."""
    from lab.tornet import controller
    from stem.control import EventType

    keys = {}
    options = []
    base = Path(lab.net.net_dir) / "ringcheck"
    for i in range(N_SERVICES):
        key = IdentityKey.generate()
        hs_dir = key.write_hs_dir(base / f"hs{i}")
        keys[key.address] = key
        options += [("HiddenServiceDir", str(hs_dir)), ("HiddenServicePort", f"80 127.0.0.1:{9 + i}")]
    events: "queue.Queue" = queue.Queue()
    node = lab.net.add_tor(lab.procs, lab.ports, "ringcheck", [])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with controller(node):
                    break
            except Exception:  # noqa: BLE001 - control port not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with controller(node) as ctl:
            ctl.add_event_listener(lambda e: events.put((time.time(), e)), EventType.HS_DESC)
            # Services are added only now, so their first builds and uploads are all seen.
            ctl.set_options(options)
            yield node, ctl, keys, events
    finally:
        lab.procs.stop(node.process_name)


def _collect_uploads(events, keys, timeout=180.0, per_address=2):
    """{(address, blinded key b64): [(time, event), ...]} once every service's two
    descriptors have one complete upload round (as many UPLOADs as the round had)."""
    uploads: dict[tuple[str, str], list] = {}
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            when, ev = events.get(timeout=1)
        except queue.Empty:
            ev = None
        if ev is not None:
            seen.append(f"{ev.action} {ev.address[:8]} {str(ev.descriptor_id)[:8]} {ev.directory_fingerprint} {ev.reason}")
        if ev is not None and ev.action == "UPLOAD" and ev.address in keys:
            uploads.setdefault((ev.address, ev.descriptor_id), []).append((when, ev))
        counts: dict[str, int] = {}
        for (address, _), got in uploads.items():
            counts[address] = counts.get(address, 0) + 1
        if len(counts) == len(keys) and all(n >= per_address for n in counts.values()):
            time.sleep(2)  # let the rounds finish
            while not events.empty():
                when, ev = events.get()
                if ev.action == "UPLOAD" and ev.address in keys:
                    uploads.setdefault((ev.address, ev.descriptor_id), []).append((when, ev))
            return uploads
    import collections
    summary = collections.Counter(" ".join(x.split()[:3]) for x in seen)
    pytest.fail(f"tor uploaded only {sorted(uploads)} within {timeout:.0f} s; events: {summary}")


def test_tor_uploads_to_the_hsdirs_our_ring_computes(services):
    node, ctl, keys, events = services
    uploads = _collect_uploads(events, keys)
    compared = 0
    for attempt in range(3):
        ring = _ring_from(ctl)
        slots = ring.descriptor_slots()
        for (address, blinded_b64), rows in uploads.items():
            blinded = base64.b64decode(blinded_b64 + "=" * (-len(blinded_b64) % 4))
            slot = next((s for s in slots if keys[address].blind(
                s.time_period_number, s.period_length).public_key == blinded), None)
            if slot is None:
                continue  # uploaded for a period our (newer) consensus no longer uses
            # the first round: one UPLOAD per responsible HSDir, in tor's order
            first_round = [ev for _, ev in rows][:len(ring.responsible_hsdirs(blinded, slot))]
            ours = ring.responsible_hsdirs(blinded, slot)
            assert [ev.directory_fingerprint.upper() for ev in first_round] == \
                [h.fingerprint for h in ours], (address, slot)
            for ev, hsdir in zip(first_round, ours):
                if ev.index:
                    assert ev.index.lower() == crypto.sha3_256(  # our hsdir_index
                        b"node-idx", hsdir.ed25519_id, slot.srv,
                        slot.time_period_number.to_bytes(8, "big"),
                        slot.period_length.to_bytes(8, "big")).hex()
            compared += 1
        if compared >= N_SERVICES:
            break
        # a period rolled over meanwhile: tor builds (and uploads) one new descriptor each
        uploads = _collect_uploads(events, keys, per_address=1)
    if compared < N_SERVICES:
        t = ring.timing
        cur = t.time_period_number()
        found = {}
        for (address, b64), _ in uploads.items():
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
            found[(address[:8], b64[:8])] = [(tp, ln) for tp in range(cur - 3, cur + 4)
                                             for ln in (t.period_length, 1440, 8, 4, 2)
                                             if keys[address].blind(tp, ln).public_key == raw]
        pytest.fail(f"only {compared} compared; timing {t}; cur {cur}; slots "
                    f"{[(x.which, x.time_period_number) for x in slots]}; uploads match {found}")
    assert ring.timing.testing_network and ring.timing.period_length == \
        24 * ring.timing.voting_interval // 60


def test_we_decrypt_tor_descriptors_and_match_tors_revision_counters(lab, services):
    from lab.tornet import controller

    _, _, keys, _ = services
    with controller(lab.net.client) as client:
        ring = _ring_from(client)
        periods = [s.time_period_number for s in ring.descriptor_slots()]
        for address, key in keys.items():
            desc = None
            for _ in range(20):  # until the service has uploaded (the first test may not have run)
                try:
                    desc = client.get_hidden_service_descriptor(address, timeout=30)
                    break
                except Exception:  # noqa: BLE001 - not on the HSDirs yet
                    time.sleep(3)
            assert desc is not None, f"could not fetch the descriptor of {address}"
            text = str(desc)
            got = decrypt_descriptor(text, address, time_period_numbers=periods,
                                     period_length=ring.timing.period_length)
            assert got.flow_control and got.flow_control.startswith("1-2")  # tor 0.4.8+
            assert 1 <= len(got.intro_points) <= 20
            # The revision counter is tor's OPE of "seconds since the SRV run start + 1"
            # under SHA3("rev-counter-generation\0" | blinded secret key): find it exactly.
            blinded = key.blind(got.time_period_number, got.period_length)
            cipher = crypto.OrderPreservingCipher(blinded.ope_key)
            lo, hi = 1, crypto.OPE_INPUT_MAX
            while lo < hi:
                mid = (lo + hi) // 2
                if cipher.encrypt(mid) < got.revision_counter:
                    lo = mid + 1
                else:
                    hi = mid
            assert cipher.encrypt(lo) == got.revision_counter, "not on our OPE curve"
            slot = next(s for s in ring.descriptor_slots()
                        if s.time_period_number == got.time_period_number)
            built_at = slot.revision_base + lo - 1
            assert abs(built_at - time.time()) < 15 * 60, (built_at, time.time())
