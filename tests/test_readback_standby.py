"""Read-back of what HSDirs serve, the end-to-end probe and the standby takeover, driven
through the real Balancer with the fake tor of test_balancer_core (events as tor sends
them), a real SOCKS5 server on 127.0.0.1 for the probe, and real keys for the revision
counter argument."""
from __future__ import annotations

import dataclasses
import queue
import socket
import struct
import threading
import time

import pytest

from onion import readback as rb
from onion import standby as sb
from onion.config import StandbySettings, ReadbackSettings
from onion.control import DescContent, DescEvent
from onion.e2e import FrontendProber, FrontendProbeResult, http_probe
from onion.probe import SocksEndpoint
from tests.test_balancer_core import (A, B, FRONT, HSDIRS_1, confirm_all, make, start_with_descriptors)

CURRENT = 100


def served_text(rev, keys, period=CURRENT, address=FRONT):
    return f"DESC {address} {period} {rev} {','.join(keys)}\n"


def fetches_of_frontend(control, since=0):
    return [servers for address, servers in control.fetches[since:] if address == FRONT]


def settle(bal, control, clock, seconds=rb.AFTER_UPLOAD + 0.1):
    clock.t += seconds
    bal.tick()


def uploaded_rev(bal, hsdir, period=CURRENT):
    return bal.book.records[(FRONT, period, hsdir)].revision


def up_keys(bal, hsdir, period=CURRENT):
    return sorted(k.decode() for k in bal.book.records[(FRONT, period, hsdir)].intro_keys)


# ----------------------------------------------------------------------------- read-back

def test_read_back_after_a_confirmed_upload_and_a_wiped_hsdir_is_reuploaded(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    n = len(control.fetches)
    bal.tick()
    assert fetches_of_frontend(control, n) == []          # not before AFTER_UPLOAD
    confirm_all(bal, control)                             # H3's upload of period 101 too
    settle(bal, control, clock)
    asked = fetches_of_frontend(control, n)
    assert sorted(s[0] for s in asked) == sorted(HSDIRS_1)[:rb.MAX_IN_FLIGHT]  # one HSDir per HSFETCH
    # H1 serves what we uploaded; H2 answers NOT_FOUND (its cache was wiped)
    bal.handle(DescContent(FRONT, "H1", None, served_text(uploaded_rev(bal, "H1"), up_keys(bal, "H1"))))
    posts = len(control.posts)
    bal.handle(DescEvent("FAILED", FRONT, "H2", reason="NOT_FOUND"))
    st = {u["hsdir"]: u for u in bal.status()["frontends"][0]["descriptors"][0]["hsdirs"]}
    assert st["H1"]["served"]["state"] == "serving" and st["H1"]["served"]["revision"] == uploaded_rev(bal, "H1")
    assert st["H2"]["served"]["state"] == "missing"
    assert st["H2"]["state"] == "failed" and "READ-BACK missing" in st["H2"]["result"]
    bal.tick()
    assert [h for _, _, h in control.posts[posts:]] == ["H2"]  # re-uploaded at once, only there
    # an HSDir serving an older revision (our newer upload did not stick) is re-uploaded too
    bal.handle(DescContent(FRONT, "H3", None, served_text(uploaded_rev(bal, "H3") - 5, up_keys(bal, "H3"))))
    bal.tick()
    assert [h for _, _, h in control.posts[posts:]] == ["H2", "H3"]


def test_a_hostile_or_broken_served_descriptor_never_crashes_and_is_replaced(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    settle(bal, control, clock)
    posts = len(control.posts)
    bal.handle(DescContent(FRONT, "H1", None, "garbage \x00\xff" * 1000))
    bal.handle(DescContent(FRONT, "H4", None, served_text(uploaded_rev(bal, "H4"), ["zz"])))  # wrong window
    bal.tick()
    st = {u["hsdir"]: u for u in bal.status()["frontends"][0]["descriptors"][0]["hsdirs"]}
    assert st["H1"]["served"]["state"] == "unreadable" and st["H4"]["served"]["state"] == "window"
    assert sorted(h for _, _, h in control.posts[posts:]) == ["H1", "H4"]


def test_an_unanswered_read_back_is_retried_and_never_confused_with_an_upload(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    settle(bal, control, clock)
    # a FAILED UPLOAD_REJECTED for an HSDir being read back is an upload's, not the read-back's
    bal.handle(DescEvent("FAILED", FRONT, "H1", reason="UPLOAD_REJECTED"))
    assert bal.readback.pending(FRONT, "H1")
    clock.t += rb.FETCH_TIMEOUT + 1
    n = len(control.fetches)
    bal.tick()
    st = {u["hsdir"]: u for u in bal.status()["frontends"][0]["descriptors"][0]["hsdirs"]}
    assert st["H1"]["served"]["state"] in ("failed", "pending") and st["H1"]["state"] == "uploaded"
    clock.t += rb.RETRY_FAILED + 1
    bal.tick()
    assert any(s == ("H1",) for s in fetches_of_frontend(control, n))


# ----------------------------------------------------------------------------- e2e probe

class FakeSocks:
    """A SOCKS5 server on 127.0.0.1 (username auth, CONNECT by name): replies `code`; on
    success it answers like an HTTP server."""

    def __init__(self, code=0, answer=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=0.0):
        self.code, self.answer, self.delay = code, answer, delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.usernames: list[str] = []
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(3)
                conn.sendall(b"\x05\x02")
                head = conn.recv(2)
                user = conn.recv(head[1])
                plen = conn.recv(1)[0]
                conn.recv(plen)
                self.usernames.append(user.decode())
                conn.sendall(b"\x01\x00")
                req = conn.recv(5)
                conn.recv(req[4] + 2)
                time.sleep(self.delay)
                conn.sendall(bytes([5, self.code, 0, 1]) + b"\x00" * 6)
                if self.code == 0:
                    self.requests.append(conn.recv(4096))
                    conn.sendall(self.answer)

    def close(self):
        self.sock.close()


def test_e2e_probe_gets_an_http_answer_on_fresh_circuits():
    socks = FakeSocks(delay=0.2)
    try:
        endpoint = SocksEndpoint(port=socks.port)
        ok, detail, code, err, local = http_probe(endpoint, f"{FRONT}.onion", 80, "/healthz", username="u1", timeout=10)
        assert (ok, detail, code, err, local) == (True, "HTTP 200", 200, None, False)
        assert socks.requests[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: " + FRONT.encode() + b".onion\r\n")
        results: queue.Queue = queue.Queue()
        prober = FrontendProber(results.put)
        assert prober.start(endpoint, FRONT, 80, "/", 10)
        assert not prober.start(endpoint, FRONT, 80, "/", 10)  # one at a time per frontend
        r = results.get(timeout=10)
        assert r.ok and r.seconds >= 0.2 and r.status_code == 200
        assert prober.start(endpoint, FRONT, 80, "/", 10)
        results.get(timeout=10)
        assert len(set(socks.usernames[1:])) == 2  # a new SOCKS username each time: new circuits
    finally:
        socks.close()


@pytest.mark.parametrize("code,text", [(0xF0, "onion descriptor not found (SOCKS 0xf0)"),
                                       (0xF2, "onion introduction failed (SOCKS 0xf2)"),
                                       (0xF7, "onion introduction timed out (SOCKS 0xf7)")])
def test_e2e_probe_failure_carries_tors_extended_socks_error(code, text):
    socks = FakeSocks(code=code)
    try:
        ok, detail, _, err, local = http_probe(SocksEndpoint(port=socks.port), f"{FRONT}.onion", 80, "/",
                                               username="u", timeout=10)
        assert (ok, detail, err, local) == (False, text, code, False)
    finally:
        socks.close()


def test_e2e_results_reach_status_and_metrics(tmp_path):
    from onion.metrics import samples
    from onion.status import check

    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    bal.handle(FrontendProbeResult(FRONT, False, "onion introduction failed (SOCKS 0xf2)", 12.0, socks_error=0xF2))
    st = bal.status()
    reach = st["frontends"][0]["reachability"]
    assert reach["ok"] is False and reach["socks_error"] == 0xF2 and "0xf2" in reach["error"]
    code, lines = check(st, now=clock.t)
    assert code == 2 and "end-to-end probe failed: onion introduction failed (SOCKS 0xf2)" in "\n".join(lines)
    got = [(n, v) for n, _, v in samples(st, clock.t) if n == "onion_service_reachable"]
    assert got == [("onion_service_reachable", 0.0)]
    bal.handle(FrontendProbeResult(FRONT, True, "HTTP 200", 2.5, status_code=200))
    st = bal.status()
    assert [v for n, _, v in samples(st, clock.t) if n == "onion_service_latency_seconds"] == [2.5]


# ----------------------------------------------------------------------------- standby

def standby_balancer(tmp_path, takeover_after=60.0):
    bal, control, proto, prober, clock = make(tmp_path)
    bal.cfg = dataclasses.replace(bal.cfg, standby=StandbySettings(enabled=True, takeover_after=takeover_after),
                                  readback=ReadbackSettings(interval=10.0))
    bal.readback.interval = 10.0
    return bal, control, proto, prober, clock


def answer_all(bal, control, since, text_for):
    """Answer every read-back fetch in flight, as tor would (content, or FAILED NOT_FOUND)."""
    for (address, hsdir), rec in list(bal.readback.records.items()):
        if address != FRONT or rec.requested_at is None:
            continue
        text = text_for(hsdir)
        if text is None:
            bal.handle(DescEvent("FAILED", FRONT, hsdir, reason="NOT_FOUND"))
        else:
            bal.handle(DescContent(FRONT, hsdir, None, text))


def read_back_round(bal, control, clock, text_for, seconds=10.1):
    clock.t += seconds
    bal.tick()
    answer_all(bal, control, 0, text_for)
    bal.tick()  # the rest of the HSDirs (4 in flight at most)
    answer_all(bal, control, 0, text_for)
    bal.tick()


def test_standby_uploads_nothing_while_the_primary_serves_then_takes_over_and_gives_back(tmp_path):
    bal, control, proto, prober, clock = standby_balancer(tmp_path)
    start_with_descriptors(bal, control)
    assert control.posts == []                          # standing by: no HSPOST
    fresh = served_text(900, ["a1", "b1", "a2", "b2", "a3", "b3"])
    read_back_round(bal, control, clock, lambda h: fresh)
    fe = bal.frontends[0]
    assert fe.standby.state == sb.STANDING_BY and control.posts == []
    st = bal.status()["frontends"][0]
    assert st["publishing"] is False and st["standby"]["state"] == "standing by"
    # the primary dies and the HSDirs lose its descriptor (or keep dead intro points)
    dead = served_text(901, ["x1", "x2"])
    read_back_round(bal, control, clock, lambda h: None if h in ("H1", "H2") else dead)
    assert fe.standby.state == sb.FAILING and control.posts == []
    assert "serve none" in fe.standby.reason and "down or gone" in fe.standby.reason
    read_back_round(bal, control, clock, lambda h: None, seconds=30)
    assert fe.standby.state == sb.FAILING and control.posts == []
    read_back_round(bal, control, clock, lambda h: None, seconds=31)
    assert fe.standby.state == sb.ACTIVE
    bal.tick()
    assert {h for _, _, h in control.posts} >= set(HSDIRS_1)  # took over: every HSDir at once
    assert bal.status()["frontends"][0]["publishing"] is True
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    # read-back after our uploads: our own revision is not "the primary back"
    clock.t += rb.AFTER_UPLOAD + 0.1
    n = len(control.fetches)
    bal.tick()
    answer_all(bal, control, n, lambda h: served_text(uploaded_rev(bal, h), up_keys(bal, h)))
    bal.tick()
    assert fe.standby.state == sb.ACTIVE
    # the primary is back: an HSDir serves a newer revision we did not make
    clock.t += 10.1
    n = len(control.fetches)
    bal.tick()
    answer_all(bal, control, n, lambda h: served_text(uploaded_rev(bal, h) + 1000, up_keys(bal, h)))
    bal.tick()
    assert fe.standby.state == sb.STANDING_BY and fe.standby.takeovers == 1
    posts = len(control.posts)
    clock.t += 4000  # an hourly republish would be due: a standby uploads nothing
    bal.tick()
    assert control.posts[posts:] == []


def test_standby_judge_counts_missing_stale_and_dead_intro_points():
    recs = [rb.Served(period=1, hsdir="1", state="missing", checked_at=1.0),
            rb.Served(period=1, hsdir="2", state="serving", revision=5, built_at=0.0, checked_at=1.0,
                      intro_keys=frozenset({b"k"})),
            rb.Served(period=1, hsdir="3", state="serving", revision=5, built_at=9000.0, checked_at=1.0,
                      intro_keys=frozenset({b"gone"})),
            rb.Served(period=1, hsdir="4", state="serving", revision=5, built_at=9000.0, checked_at=1.0,
                      intro_keys=frozenset({b"k"})),
            rb.Served(period=1, hsdir="5", state="failed", checked_at=1.0)]
    fresh, checked, why = sb.judge(recs, frozenset({b"k"}), wall_now=10000.0, stale_after=7200)
    assert (fresh, checked) == (1, 4)
    assert why == "1 serve none, 1 serve a stale one, 1 list intro points of instances that are down or gone"


# ----------------------------------------------------------------------------- revision counters

def test_two_balancers_with_the_same_key_compute_the_same_rising_revision_counters(tmp_path):
    """The claim the standby relies on: tor's OPE revision counter depends only on the
    blinded key (derived from the master key) and the clock, so two balancers holding the
    key agree, and the one uploading later has the higher revision."""
    from onion import descriptor as desc
    from onion.keys import IdentityKey

    key = IdentityKey.generate()
    path = key.write_hs_dir(tmp_path / "k") / "hs_ed25519_secret_key"
    primary, standby = IdentityKey.from_file(str(path)), IdentityKey.from_file(str(path))
    base = 1_700_000_000 - 3600
    b1, b2 = primary.blind(19000, 1440), standby.blind(19000, 1440)
    assert b1.ope_key == b2.ope_key
    t = 1_700_000_000
    assert desc.revision_counter(b1, base, t) == desc.revision_counter(b2, base, t)
    assert desc.revision_counter(b2, base, t + 1) > desc.revision_counter(b1, base, t)
    # and the build time can be read back from a counter (what the standby's staleness uses)
    from onion.frontend import TorOnionProtocol
    from onion.hashring import DescriptorSlot

    proto = TorOnionProtocol()
    proto._slot = lambda period: DescriptorSlot("first", period, 1440, b"\0" * 32, base)
    rev = desc.revision_counter(b1, base, t - 1234)
    assert proto.built_at(standby, 19000, rev, float(t)) == float(t - 1234)
    other = IdentityKey.generate()
    assert proto.built_at(other, 19000, rev, float(t)) != float(t - 1234)
