"""The balancer's decisions, driven by a fake tor controller and a fake crypto/hash ring.

No tor, no crypto: the fakes record what the balancer asks tor to do (HSFETCH, HSPOST), and
the tests feed it the events tor would send (HS_DESC_CONTENT, HS_DESC, NEWCONSENSUS, probe
results) with a controlled clock.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass

import pytest

from onion.balancer import PERIOD_HOLD, STARTUP_HOLD, Balancer, RingInfo, Slot
from onion.config import BalancerConfig, ControlEndpoint, FrontendConfig, InstanceConfig, ProbeSettings
from onion.control import ControlError, DescContent, DescEvent, Disconnected, NewConsensus
from onion.errors import DescriptorSignatureError
from onion.instances import Decoded
from onion.probe import ProbeResult

A = "a" * 56
B = "b" * 56
C = "c" * 56
FRONT = "f" * 56
HSDIRS_1 = ("H1", "H2", "H3", "H4")
HSDIRS_2 = ("H3", "H5", "H6", "H7")


@dataclass(frozen=True)
class IP:
    auth_key: bytes


class FakeIdentity:
    address = FRONT


class FakeControl:
    def __init__(self):
        self.fetches: list[tuple[str, tuple]] = []
        self.posts: list[tuple[str, str, str]] = []  # (text, address, hsdir)
        self.connect_failures = 0
        self.connects = 0
        self.closed = 0

    def connect(self):
        if self.connect_failures:
            self.connect_failures -= 1
            raise ControlError("connection refused")
        self.connects += 1

    def close(self):
        self.closed += 1

    def fetch_descriptor(self, address, servers=()):
        self.fetches.append((address, tuple(servers)))

    def post_descriptor(self, text, address, server):
        self.posts.append((text, address, server))

    def signal_active(self):
        pass


class FakeProtocol:
    """Descriptor text format: 'DESC <address> <period> <revision> <key,key,...> [expiry]'."""

    def __init__(self, period=100):
        self.period = period
        self.builds = 0

    def refresh(self, control):
        return RingInfo(valid_after=0.0, current_period=self.period, period_length=1440, voting_interval=3600)

    def slots(self, identity, now):
        return [Slot(self.period, HSDIRS_1, "current"), Slot(self.period + 1, HSDIRS_2, "next")]

    def decode(self, text, address, periods, now):
        parts = text.split()
        if parts[0] != "DESC":
            raise DescriptorSignatureError("descriptor signature does not verify")
        if parts[0] == "DESC" and parts[1] == "CRASH":
            raise RuntimeError("decoder bug")
        _, addr, period, rev, ips = parts[:5]
        expiry = float(parts[5]) if len(parts) > 5 else 4e9
        if addr != address:
            raise DescriptorSignatureError("not signed by this instance")
        return Decoded(intro_points=tuple(IP(k.encode()) for k in ips.split(",")), revision=int(rev),
                       period=int(period), blinded_key=f"{addr}-{period}".encode(), signing_key_expiry=expiry)

    def build(self, identity, period, intro_points, now):
        self.builds += 1
        keys = ",".join(ip.auth_key.decode() for ip in intro_points)
        return f"MASTER {period} {keys}", 1000 + int(now)

    def fetch_hsdirs(self, address, now):
        return ["H1", "H2", "H3"]


class FakeProber:
    def __init__(self):
        self.started: list[str] = []

    def start(self, address):
        self.started.append(address)

    def close(self):
        pass


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def make(tmp_path, *, publish=True, instances=(A, B), probe=ProbeSettings(interval=20, timeout=30, failures=3)):
    cfg = BalancerConfig(publish=publish, control=ControlEndpoint(port=9051), socks_port=9050,
                         state_dir=str(tmp_path / "state"),
                         frontends=(FrontendConfig(name="news", key_file="unused",
                                                   instances=tuple(InstanceConfig(a) for a in instances)),),
                         probe=probe, path=str(tmp_path / "cfg.yaml"))
    control, proto, prober, clock = FakeControl(), FakeProtocol(), FakeProber(), Clock()
    bal = Balancer(cfg, {"news": FakeIdentity()}, control, proto, prober, clock=clock, monotonic=clock)
    return bal, control, proto, prober, clock


def content(address, period, rev, keys, hsdir="H1"):
    return DescContent(address=address, hsdir=hsdir, descriptor_id=None,
                       text=f"DESC {address} {period} {rev} {','.join(keys)}\n")


def posted_keys(control, hsdir=None):
    out = []
    for text, _addr, h in control.posts:
        if hsdir is None or h == hsdir:
            out.append((text.split()[1], h, tuple(text.split()[2].split(","))))
    return out


def start_with_descriptors(bal, control, *, a_keys=("a1", "a2", "a3"), b_keys=("b1", "b2", "b3")):
    bal.tick()
    assert control.connects == 1
    bal.handle(content(A, 100, 1, a_keys))
    bal.handle(content(B, 100, 1, b_keys))
    bal.tick()


def confirm_all(bal, control):
    for _text, addr, hsdir in control.posts:
        bal.handle(DescEvent("UPLOADED", addr, hsdir))


# ----------------------------------------------------------------------------- tests

def test_start_fetches_instances_then_publishes_interleaved_to_every_hsdir(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    bal.tick()
    assert {a for a, _ in control.fetches} == {A, B}
    assert control.fetches[0][1] == ("H1", "H2")  # responsible HSDirs asked directly
    assert control.posts == []                    # nothing to publish without descriptors
    bal.handle(content(A, 100, 1, ["a1", "a2", "a3"]))
    bal.handle(content(B, 100, 1, ["b1", "b2", "b3"]))
    bal.tick()
    posts = posted_keys(control)
    # one upload per (period, HSDir); H3 is responsible for both periods: only one in flight
    assert sorted((p, h) for p, h, _ in posts) == sorted(
        [("100", h) for h in HSDIRS_1] + [("101", h) for h in ("H5", "H6", "H7")])
    assert all(keys == ("a1", "b1", "a2", "b2", "a3", "b3") for _, _, keys in posts)
    assert all(addr == FRONT for _, addr, _ in control.posts)
    # uploads are pending until tor confirms them
    rec = bal.book.records[(FRONT, 100, "H1")]
    assert rec.state == "pending"
    # distinct HSDirs share one built descriptor per period
    assert proto.builds == 2


def test_upload_counts_only_when_tor_confirms_and_failures_are_retried(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    bal.handle(DescEvent("UPLOADED", FRONT, "H1"))
    bal.handle(DescEvent("FAILED", FRONT, "H2", reason="UPLOAD_REJECTED"))
    assert bal.book.records[(FRONT, 100, "H1")].state == "uploaded"
    assert bal.book.records[(FRONT, 100, "H2")].state == "failed"
    # the H3 upload for period 101 waits for the period-100 one to H3 to finish
    bal.handle(DescEvent("UPLOADED", FRONT, "H3"))
    n = len(control.posts)
    bal.tick()
    assert [(p, h) for p, h, _ in posted_keys(control)[n:]] == [("101", "H3")]
    # H2 is retried only after its backoff
    n = len(control.posts)
    clock.t += 4.9
    bal.tick()
    assert all(h != "H2" for _, _, h in control.posts[n:])
    clock.t += 0.2
    bal.tick()
    assert [h for _, _, h in control.posts[n:]] == ["H2"]
    st = bal.status()["frontends"][0]
    up = {u["hsdir"]: u for u in st["descriptors"][0]["hsdirs"]}
    assert up["H1"]["state"] == "uploaded" and up["H1"]["result"] == "UPLOADED"
    assert up["H2"]["state"] == "pending"


def test_unanswered_upload_times_out_and_is_retried(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    # one more (H3 for period 101) went out after H3's first confirmation; leave it unanswered
    assert posted_keys(control)[-1][:2] == ("101", "H3")
    clock.t += bal.book.upload_timeout
    bal.tick()
    rec = bal.book.records[(FRONT, 101, "H3")]
    assert rec.state == "failed" and "TIMEOUT" in rec.result
    n = len(control.posts)
    clock.t += 5
    bal.tick()
    assert [h for _, _, h in control.posts[n:]] == ["H3"]


def test_no_republish_without_change_then_periodic_republish(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    n = len(control.posts)
    clock.t += 60
    bal.handle(content(A, 100, 2, ["a1", "a2", "a3"]))  # new revision, same intro points
    bal.tick()
    assert len(control.posts) == n
    clock.t += bal.book.republish_interval
    for inst in bal.instances.values():  # keep descriptors fresh, probes passing
        inst.current.received_at = clock.t
    bal.tick()
    assert len(control.posts) > n


def test_intro_point_change_by_auth_key_triggers_republish(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    n = len(control.posts)
    bal.handle(content(A, 100, 2, ["a1", "a2", "a9"]))
    bal.tick()
    new = posted_keys(control)[n:]
    assert new and all("a9" in keys and "a3" not in keys for _, _, keys in new)


def test_failed_probes_drop_instance_at_once_and_passing_probes_take_it_back(tmp_path, caplog):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    assert sorted(prober.started) == [A, B]
    bal.handle(ProbeResult(A, True, "connected", 1.0))
    n = len(control.posts)
    caplog.set_level(logging.INFO, logger="onion.balancer")
    for i in range(2):
        bal.handle(ProbeResult(B, False, "onion introduction failed", 1.0 + i))
        clock.t += 4
        bal.tick()
    assert len(control.posts) == n  # two failures: still in
    # each failure on the way down is logged with how long the probe took
    assert [r.getMessage().split(": probe ")[1] for r in caplog.records if "probe failed" in r.getMessage()] == [
        "failed after 1.0 s (1 of 3 before it counts as down): onion introduction failed",
        "failed after 2.0 s (2 of 3 before it counts as down): onion introduction failed"]
    assert bal.instances[B].probe.consecutive_failures == 2
    # probes of a failing instance are repeated quickly, not after the full interval
    assert prober.started.count(B) == 3
    bal.handle(ProbeResult(B, False, "onion introduction failed", 1.0))
    bal.tick()
    new = posted_keys(control)[n:]
    assert new and all(keys == ("a1", "a2", "a3") for _, _, keys in new)
    assert bal.status()["frontends"][0]["instances"][1]["healthy"] is False
    confirm_all(bal, control)
    n = len(control.posts)
    bal.handle(ProbeResult(B, True, "connected", 1.0))
    bal.tick()
    back = posted_keys(control)[n:]
    assert back and all(keys == ("a1", "b1", "a2", "b2", "a3", "b3") for _, _, keys in back)


def test_all_instances_failing_probes_keeps_them_rather_than_nothing(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    for _ in range(3):
        bal.handle(ProbeResult(A, False, "general failure", 1.0))
        bal.handle(ProbeResult(B, False, "general failure", 1.0))
    bal.tick()
    fe = bal.frontends[0]
    assert len(fe.selected) == 6 and "every instance fails its probes" in fe.note


def test_period_change_fetches_new_descriptors_before_republishing(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    fetches, posts = len(control.fetches), len(control.posts)
    proto.period = 101
    clock.t += 30
    bal.handle(NewConsensus())
    bal.tick()
    # every instance is fetched at once (beside read-backs of the frontend's own descriptor),
    # and nothing is uploaded with the old intro points
    assert {a for a, _ in control.fetches[fetches:] if a != FRONT} == {A, B}
    assert len(control.posts) == posts
    bal.handle(content(A, 101, 5, ["a4", "a5", "a6"]))
    bal.tick()
    assert len(control.posts) == posts  # B's new descriptor still missing
    clock.t += 4
    bal.tick()
    assert B in [a for a, _ in control.fetches[fetches + 2:]]  # missing one refetched quickly
    bal.handle(content(B, 101, 5, ["b4", "b5", "b6"]))
    bal.tick()
    new = posted_keys(control)[posts:]
    assert {p for p, _, _ in new} == {"101", "102"}
    assert all(keys == ("a4", "b4", "a5", "b5", "a6", "b6") for _, _, keys in new)


def test_period_change_publishes_after_hold_even_if_an_instance_is_silent(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    posts = len(control.posts)
    proto.period = 101
    bal.handle(NewConsensus())
    bal.handle(content(A, 101, 5, ["a4"]))
    bal.tick()
    assert len(control.posts) == posts
    clock.t += PERIOD_HOLD
    bal.tick()
    new = posted_keys(control)[posts:]
    assert new and all(keys[0] == "a4" for _, _, keys in new)


def test_more_than_20_intro_points_distinct_descriptors_each_at_most_20(tmp_path):
    addrs = [chr(ord("g") + i) * 56 for i in range(8)]  # not "f"*56: that is the frontend
    bal, control, *_ = make(tmp_path, instances=addrs)
    bal.tick()
    for addr in addrs:
        bal.handle(content(addr, 100, 1, [f"{addr[0]}{j}" for j in range(3)]))
    bal.tick()
    per_hsdir = {h: keys for p, h, keys in posted_keys(control) if p == "100"}
    assert all(len(k) == 20 for k in per_hsdir.values())
    assert len(set(per_hsdir.values())) == 2
    assert set().union(*map(set, per_hsdir.values())) == {f"{a[0]}{j}" for a in addrs for j in range(3)}


def test_publish_false_does_everything_but_hspost(tmp_path):
    bal, control, proto, *_ = make(tmp_path, publish=False)
    start_with_descriptors(bal, control)
    assert control.posts == [] and proto.builds == 2
    st = bal.status()
    assert st["publish"] is False
    states = {u["state"] for d in st["frontends"][0]["descriptors"] for u in d["hsdirs"]}
    assert states == {"standby"}
    assert len(st["frontends"][0]["published_intro_points"]) == 6


def test_reconnects_with_growing_backoff_and_refetches(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    control.connect_failures = 3
    times = []
    for _ in range(40):
        before = control.connect_failures
        bal.tick()
        if control.connect_failures != before or control.connects:
            times.append(clock.t)
        if control.connects:
            break
        clock.t += 0.5
    assert control.connects == 1
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == [1.0, 2.0, 4.0]
    # tor restarts: pending uploads fail, we reconnect and fetch everything again
    bal.handle(content(A, 100, 1, ["a1"]))
    clock.t += STARTUP_HOLD  # B never answers: publish A alone after the start-up hold
    bal.tick()
    assert bal.book.inflight
    bal.handle(Disconnected("control connection closed"))
    assert not bal.book.inflight and not bal.connected
    assert bal.book.records[(FRONT, 100, "H1")].result == "FAILED control connection lost"
    fetches = len(control.fetches)
    clock.t += 30
    bal.tick()
    assert bal.connected and control.connects == 2
    assert {a for a, _ in control.fetches[fetches:]} == {A, B}


def test_control_error_during_command_means_reconnect_not_crash(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    bal.tick()

    def broken(*a, **k):
        raise ControlError("control connection closed")

    control.post_descriptor = broken
    bal.handle(content(A, 100, 1, ["a1"]))
    bal.handle(content(B, 100, 1, ["b1"]))
    bal.tick()
    assert not bal.connected and "closed" in bal.last_error


def test_bad_descriptors_never_crash_and_never_replace_good_one(tmp_path):
    bal, control, proto, *_ = make(tmp_path)
    start_with_descriptors(bal, control)
    good = bal.instances[A].current
    bad = [
        DescContent(A, "H1", None, "garbage that is no descriptor\n"),
        DescContent(A, "H1", None, "DESC CRASH 1 1 x\n"),
        DescContent(A, "H1", None, "DESC " + "x" * 60_000),
        DescContent(A, "H1", None, f"DESC {B} 100 9 evil\n"),          # someone else's
        content(A, 100, 0, ["old"]),                                    # replayed older revision
        content(A, 100, 7, [f"k{i}" for i in range(21)]),              # > 20 intro points
        DescContent(A, "H1", None, f"DESC {A} 100 8 late 5\n"),        # expired certificate
    ]
    for msg in bad:
        bal.handle(msg)
        bal.tick()
        assert bal.instances[A].current is good
    assert bal.instances[A].rejected == len(bad)
    assert all("evil" not in t and "old" not in t and "k20" not in t for t, _, _ in control.posts)
    st = bal.status()["frontends"][0]["instances"][0]
    assert st["rejected_descriptors"] == len(bad) and st["last_error"]
    # an empty answer (HSDir has nothing) is not an error
    bal.handle(DescContent(A, "H1", None, ""))
    assert bal.instances[A].rejected == len(bad)
    # the same revision again with other intro points: the first one seen is kept
    bal.handle(content(A, 100, 1, ["other"]))
    assert bal.instances[A].current is good and bal.instances[A].rejected == len(bad)


def test_same_revision_from_another_hsdir_refreshes_the_descriptor(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    clock.t += 100
    # tor encrypts every upload afresh: same revision, other bytes, same intro points
    bal.handle(DescContent(A, "H2", None, f"DESC {A} 100 1 a1,a2,a3 4000000000\n"))
    assert bal.instances[A].current.received_at == clock.t and bal.instances[A].rejected == 0


def test_status_file_is_atomic_public_and_complete(tmp_path):
    bal, control, *_ , clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    bal.handle(ProbeResult(A, True, "connected", 1.2))
    clock.t += 2
    bal.tick()
    path = tmp_path / "state" / "status.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    data = json.loads(path.read_text())
    fe = data["frontends"][0]
    assert fe["address"] == FRONT and fe["name"] == "news"
    inst = {i["address"]: i for i in fe["instances"]}
    assert inst[A]["descriptor"]["intro_points"] == [b"a1".hex(), b"a2".hex(), b"a3".hex()]
    assert inst[A]["descriptor"]["age_seconds"] == 2.0
    assert inst[A]["healthy"] is True and inst[B]["healthy"] is None
    assert len(fe["published_intro_points"]) == 6
    assert fe["next_publish_at"] is not None
    assert [f for f in os.listdir(tmp_path / "state") if f != "status.json"] == []
    from onion.status import format_status
    text = format_status(data, now=clock.t)
    assert "frontend news" in text and "UPLOADED" in text and "next planned publish" in text


def test_sighup_reload_applies_new_config_and_keeps_old_on_error(tmp_path):
    from onion.config import load_config, load_keys
    from onion.keys import IdentityKey

    front, a, b = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
    key = tmp_path / "front.key"
    key.write_bytes(front.to_tor_secret_key())
    os.chmod(key, 0o600)
    path = tmp_path / "balancer.yaml"

    def write(instances):
        lines = "".join(f"      - address: {i.address}\n" for i in instances)
        path.write_text(f"state_dir: state\nprobe: false\nfrontends:\n  - name: news\n    key_file: {key}\n"
                        f"    instances:\n{lines}")

    write([a, b])
    cfg = load_config(str(path))
    control, proto, clock = FakeControl(), FakeProtocol(), Clock()
    bal = Balancer(cfg, load_keys(cfg), control, proto, None, clock=clock, monotonic=clock)
    bal.tick()
    bal.handle(content(a.address, 100, 1, ["a1"]))
    bal.handle(content(b.address, 100, 1, ["b1"]))
    bal.tick()
    confirm_all(bal, control)
    bal.tick()
    confirm_all(bal, control)
    n = len(control.posts)
    write([a])
    bal.reload_requested = True  # what the SIGHUP handler sets
    bal.step()
    assert set(bal.instances) == {a.address}
    new = posted_keys(control)[n:]
    assert new and all(keys == ("a1",) for _, _, keys in new)
    path.write_text("frontends: [\n")
    bal.reload_requested = True
    bal.step()
    assert "reload failed, old config kept" in bal.last_error and "not valid YAML" in bal.last_error
    assert set(bal.instances) == {a.address} and bal.frontends[0].address == front.address


def test_instance_down_does_not_hold_up_a_period_change(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path)
    start_with_descriptors(bal, control)
    confirm_all(bal, control)
    for _ in range(3):
        bal.handle(ProbeResult(B, False, "host unreachable", 1.0))
    bal.tick()
    confirm_all(bal, control)
    posts = len(control.posts)
    proto.period = 101
    bal.handle(NewConsensus())
    bal.handle(content(A, 101, 5, ["a4"]))
    bal.tick()
    new = posted_keys(control)[posts:]
    assert new and all(keys == ("a4",) for _, _, keys in new)


def test_late_close_event_of_an_old_connection_is_ignored(monkeypatch):
    import stem.control

    from onion.control import TorControl

    class FakeStem:
        def __init__(self):
            self.status_listeners = []
            self.closed = False

        def authenticate(self):
            pass

        def add_status_listener(self, fn):
            self.status_listeners.append(fn)

        def add_event_listener(self, fn, *types):
            pass

        def get_version(self):
            return "0.4.9"

        def close(self):
            self.closed = True

        def fire_closed(self):
            for fn in self.status_listeners:
                fn(self, stem.control.State.CLOSED, 0)

    made = []
    monkeypatch.setattr(stem.control.Controller, "from_port",
                        staticmethod(lambda address, port: made.append(FakeStem()) or made[-1]))
    got = []
    tc = TorControl(ControlEndpoint(port=9051), got.append)
    tc.connect()
    tc.close()
    made[0].fire_closed()          # our own close(): not news
    tc.connect()
    made[0].fire_closed()          # late event of the old connection
    assert got == [] and made[0].closed
    made[1].fire_closed()          # the live connection closing is
    assert [type(m).__name__ for m in got] == ["Disconnected"]


def test_failed_fetches_retry_with_backoff_and_alternate_hsdir_choice(tmp_path):
    bal, control, proto, prober, clock = make(tmp_path, instances=(A,))
    bal.tick()
    waits = []
    for attempt in range(4):
        addr, servers = control.fetches[-1]
        assert addr == A
        # tor picks the HSDirs itself every other attempt, in case our ring view is off
        assert bool(servers) == (attempt % 2 == 0)
        n = len(control.fetches)
        for hsdir in servers or ("H9",):
            bal.handle(DescEvent("FAILED", A, hsdir, reason="NOT_FOUND"))
        start = clock.t
        while len(control.fetches) == n:
            clock.t += 1
            bal.tick()
        waits.append(clock.t - start)
    assert waits == [4, 8, 16, 32]
    assert bal.instances[A].fetch_failures == 4
    bal.handle(content(A, 100, 1, ["a1"]))
    assert bal.instances[A].fetch_failures == 0


def test_reload_keeps_command_line_overrides(tmp_path):
    from onion.config import load_config, load_keys
    from onion.keys import IdentityKey

    front, a = IdentityKey.generate(), IdentityKey.generate()
    key = tmp_path / "front.key"
    key.write_bytes(front.to_tor_secret_key())
    os.chmod(key, 0o600)
    path = tmp_path / "balancer.yaml"
    path.write_text(f"control: {{port: 9051}}\nfrontends:\n  - name: n\n    key_file: {key}\n"
                    f"    instances: [{a.address}]\n")
    overrides = {"control_port": 7777, "control_socket": None, "state_dir": str(tmp_path / "st")}
    cfg = load_config(str(path), **overrides)
    control = FakeControl()
    bal = Balancer(cfg, load_keys(cfg), control, FakeProtocol(), None, clock=Clock(), monotonic=Clock(), load_overrides=overrides)
    bal.reload_requested = True
    bal.step()
    assert bal.cfg.control.port == 7777 and bal.cfg.state_dir == str(tmp_path / "st")
    assert control.closed == 0  # same endpoint: no reconnect


def test_start_waits_briefly_for_every_instance_then_publishes_once(tmp_path):
    bal, control, proto, *_ , clock = make(tmp_path)
    bal.tick()
    bal.handle(content(A, 100, 1, ["a1"]))
    bal.tick()
    assert control.posts == []                   # B has not answered yet
    bal.handle(content(B, 100, 1, ["b1"]))
    bal.tick()
    assert control.posts and all(keys == ("a1", "b1") for _, _, keys in posted_keys(control))
    assert proto.builds == 2                      # one build per period, not one per arrival


def test_unusable_or_incomplete_consensus_is_retried_without_waiting_for_the_next(tmp_path):
    from onion.balancer import RING_RETRY
    from onion.errors import ConsensusError

    bal, control, proto, *_ , clock = make(tmp_path)
    calls = []
    answers = [ConsensusError("tor has no consensus yet"),
               RingInfo(0.0, 100, 1440, 3600, complete=False),
               RingInfo(0.0, 100, 1440, 3600, complete=True)]

    def refresh(_control):
        calls.append(clock.t)
        answer = answers[min(len(calls) - 1, 2)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    proto.refresh = refresh
    bal.tick()
    assert bal.ring is None and "no consensus" in bal.last_error
    for _ in range(int(RING_RETRY * 4)):
        clock.t += 1
        bal.tick()
    assert len(calls) == 3 and calls[1] - calls[0] == RING_RETRY and calls[2] - calls[1] == RING_RETRY
    assert bal.ring.complete


def test_status_shows_the_ring_and_the_hsdirs_it_still_lacks(tmp_path):
    from onion.status import format_status

    bal, control, proto, *_, clock = make(tmp_path)
    proto.refresh = lambda _control: RingInfo(0.0, 100, 1440, 3600, complete=False, hsdirs=7,
                                              hsdirs_without_ed25519=1)
    bal.tick()
    data = bal.status()
    assert data["tor"]["hsdirs"] == 7 and data["tor"]["hsdirs_without_ed25519_id"] == 1
    assert "hash ring: 7 HSDirs (+1 without a microdescriptor yet)" in format_status(data, now=clock.t)


def test_a_bug_in_one_message_does_not_stop_the_loop(tmp_path):
    bal, control, proto, *_ , clock = make(tmp_path)
    bal.tick()

    def broken(*a):
        raise KeyError("bug")

    proto.decode = broken
    bal.handle(content(A, 100, 1, ["a1"]))   # decoder bugs are refusals, not crashes
    assert bal.instances[A].rejected == 1
    bal._on_probe = broken
    bal.handle(ProbeResult(A, True, "connected", 1.0))  # logged, loop continues
    bal.tick()
    assert bal.connected


def test_a_first_probe_failure_brings_the_other_instances_probes_forward(tmp_path):
    from onion.balancer import PROBE_RETRY

    bal, control, proto, prober, clock = make(tmp_path, instances=(A, B, C))
    bal.tick()
    for addr in (A, B, C):
        bal.handle(content(addr, 100, 1, [addr[0] + "1"]))
    bal.tick()
    for addr in (A, B, C):
        bal.handle(ProbeResult(addr, True, "connected", 1.0))
    assert all(bal.instances[a].probe.next_at == clock.t + 20 for a in (A, B, C))
    clock.t += 5
    bal.handle(ProbeResult(A, False, "host unreachable", 1.0))
    # B and C (maybe on the same dead worker) are probed within PROBE_RETRY, not after 20 s
    assert bal.instances[B].probe.next_at == clock.t + PROBE_RETRY
    assert bal.instances[C].probe.next_at == clock.t + PROBE_RETRY
    started = len(prober.started)
    clock.t += PROBE_RETRY
    bal.tick()
    assert sorted(prober.started[started:]) == sorted([A, B, C])
