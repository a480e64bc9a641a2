"""Hostile instance descriptors through the balancer's real code path (issue 5, item 4e).

Real crypto (onion.descriptor) and a real hash ring over a synthetic set of HSDirs; only tor
is faked. Malformed, expired, wrongly signed, foreign, replayed, oversized and over-full
descriptors are fed to the balancer as HS_DESC_CONTENT events: it must never crash, never
drop its good descriptor for a bad one, and every descriptor it uploads must decrypt and
verify, with exactly the good intro points.
"""
from __future__ import annotations

import os
import time

import nacl.bindings as sodium
import pytest

from onion import descriptor as desc
from onion import hashring
from onion.balancer import Balancer
from onion.config import BalancerConfig, ControlEndpoint, FrontendConfig, InstanceConfig, ProbeSettings
from onion.control import DescContent, DescEvent
from onion.frontend import TorOnionProtocol, microdesc_ed25519_ids
from onion.keys import IdentityKey

from tests.test_balancer_core import FakeControl, FakeProber

VOTING = 3600


def intro_point(i: int) -> desc.IntroPoint:
    auth_pk, _ = sodium.crypto_sign_keypair()
    enc_sk = os.urandom(32)
    enc_pk = sodium.crypto_scalarmult_base(enc_sk)
    onion_pk = sodium.crypto_scalarmult_base(os.urandom(32))
    relay_ed, _ = sodium.crypto_sign_keypair()
    return desc.IntroPoint(
        link_specifiers=(desc.LinkSpecifier.ipv4("127.0.0.1", 5000 + i),
                         desc.LinkSpecifier.legacy_id(os.urandom(20)),
                         desc.LinkSpecifier.ed25519_id(relay_ed)),
        onion_key=onion_pk, auth_key=auth_pk, enc_key=enc_pk)


def make_ring(now: float) -> hashring.HashRing:
    valid_after = int(now // VOTING * VOTING)
    timing = hashring.NetworkTiming.from_times(valid_after, valid_after + VOTING, {}, testing_network=False)
    hsdirs = [hashring.HSDir(os.urandom(20).hex().upper(), f"relay{i}", sodium.crypto_sign_keypair()[0])
              for i in range(10)]
    return hashring.HashRing(timing, hsdirs, srv_current=os.urandom(32), srv_previous=os.urandom(32))


class Env:
    def __init__(self, tmp_path, now):
        self.now = now
        self.frontend = IdentityKey.generate()
        self.instance = IdentityKey.generate()
        self.other = IdentityKey.generate()
        self.proto = TorOnionProtocol()
        self.proto.ring = make_ring(now)
        self.proto.refresh = lambda control: self._ring_info()
        self.period = self.proto.ring.timing.time_period_number()
        self.length = self.proto.ring.timing.period_length
        cfg = BalancerConfig(publish=True, control=ControlEndpoint(port=9051), socks_port=9050,
                             state_dir=str(tmp_path / "state"),
                             frontends=(FrontendConfig("site", "unused", (InstanceConfig(self.instance.address),)),),
                             probe=ProbeSettings(enabled=False), path=str(tmp_path / "c.yaml"))
        self.control = FakeControl()
        self.bal = Balancer(cfg, {"site": self.frontend}, self.control, self.proto, FakeProber(),
                            clock=lambda: self.now, monotonic=lambda: self.now)

    def _ring_info(self):
        from onion.balancer import RingInfo
        t = self.proto.ring.timing
        return RingInfo(float(t.valid_after), t.time_period_number(), t.period_length, float(t.voting_interval))

    def instance_desc(self, ips, *, revision=100, identity=None, period=None, now=None) -> str:
        return desc.MasterDescriptorBuilder(
            identity or self.instance, time_period_number=self.period if period is None else period,
            period_length=self.length, now=self.now if now is None else now,
        ).build(ips, revision_counter=revision).text

    def feed(self, text: str) -> None:
        self.bal.handle(DescContent(self.instance.address, "AB" * 20, None, text))
        self.bal.tick()

    def posted_intro_keys(self, start=0) -> list[set[bytes]]:
        out = []
        for text, address, _hsdir in self.control.posts[start:]:
            assert address == self.frontend.address
            d = desc.decrypt_descriptor(text, self.frontend.address, time_period_numbers=(self.period, self.period + 1, self.period - 1),
                                        period_length=self.length, now=self.now)
            out.append({ip.auth_key for ip in d.intro_points})
        return out


@pytest.fixture()
def env(tmp_path):
    return Env(tmp_path, time.time())


def tamper_signature(text: str) -> str:
    head, sig = text.rstrip("\n").rsplit("signature ", 1)
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    return f"{head}signature {flipped}\n"


def tamper_revision(text: str, revision: int) -> str:
    import re
    return re.sub(r"^revision-counter \d+$", f"revision-counter {revision}", text, flags=re.M)


def test_good_descriptor_is_republished_in_a_verifiable_master_descriptor(env):
    good = [intro_point(i) for i in range(3)]
    env.bal.tick()
    env.feed(env.instance_desc(good))
    assert env.bal.instances[env.instance.address].rejected == 0
    posted = env.posted_intro_keys()
    assert posted and all(keys == {ip.auth_key for ip in good} for keys in posted)
    # one upload per responsible HSDir of each of the two descriptors (minus shared ones)
    slots = env.proto.slots(env.frontend, env.now)
    hsdirs = {h for s in slots for h in s.hsdirs}
    assert {h for _, _, h in env.control.posts} <= hsdirs
    assert len(env.control.posts) >= len(slots[0].hsdirs)


def test_hostile_descriptors_are_refused_and_never_published(env, monkeypatch):
    good_ips = [intro_point(i) for i in range(3)]
    env.bal.tick()
    env.feed(env.instance_desc(good_ips, revision=1000))
    good_keys = {ip.auth_key for ip in good_ips}
    state = env.bal.instances[env.instance.address]
    current = state.current
    evil = [intro_point(100 + i) for i in range(3)]

    valid_evil = env.instance_desc(evil, revision=2000)
    with monkeypatch.context() as m:  # tor's builder refuses > 20: lift the limit to craft one
        m.setattr(desc, "MAX_INTRO_POINTS", 40)
        too_many = env.instance_desc([intro_point(200 + i) for i in range(21)], revision=3000)
    hostile = {
        "malformed": "hs-descriptor 3\nthis is not a descriptor\n",
        "binary junk": os.urandom(3000).decode("latin-1"),
        "truncated": valid_evil[: len(valid_evil) // 2],
        "wrong signature": tamper_signature(valid_evil),
        "altered revision (signature no longer matches)": tamper_revision(valid_evil, 5000),
        "expired certificate": env.instance_desc(evil, revision=2500, now=env.now - 60 * 3600),
        "another service's descriptor": env.instance_desc(evil, revision=2600, identity=env.other),
        "wrong time period": env.instance_desc(evil, revision=2700, period=env.period - 5),
        "replayed older revision": env.instance_desc(evil, revision=999),
        "oversized": valid_evil.replace("signature ", "x" * 60_000 + "\nsignature "),
        "too many intro points": too_many,
    }
    posts_before = len(env.control.posts)
    reasons = {}
    for name, text in hostile.items():
        rejected = state.rejected
        env.feed(text)
        assert state.rejected == rejected + 1, f"{name} was not refused"
        assert state.current is current, f"{name} replaced the good descriptor"
        reasons[name] = state.last_error
    # each refusal says why (shown in `status`)
    assert "Expired" in reasons["expired certificate"]
    assert "Signature" in reasons["wrong signature"]
    assert "oversized" in reasons["oversized"] or "TooLarge" in reasons["oversized"]
    assert "replayed older revision" in reasons["replayed older revision"]
    assert "BlindedKeyMismatch" in reasons["another service's descriptor"]
    assert "BlindedKeyMismatch" in reasons["wrong time period"]
    assert "TooManyIntroPoints" in reasons["too many intro points"] or "too many" in reasons["too many intro points"]
    # nothing new was published, and whatever was published carries only good intro points
    assert len(env.control.posts) == posts_before
    assert all(keys == good_keys for keys in env.posted_intro_keys())
    # the balancer is still fully working: a genuinely newer descriptor is taken
    newer = [intro_point(300 + i) for i in range(2)]
    for _t, addr, hsdir in list(env.control.posts):
        env.bal.handle(DescEvent("UPLOADED", addr, hsdir))
    env.feed(env.instance_desc(newer, revision=4000))
    after = env.posted_intro_keys(posts_before)
    assert after and all(keys == {ip.auth_key for ip in newer} for keys in after)


def test_same_descriptor_twice_is_not_an_error(env):
    text = env.instance_desc([intro_point(1)], revision=5)
    env.bal.tick()
    env.feed(text)
    env.feed(text)
    state = env.bal.instances[env.instance.address]
    assert state.rejected == 0 and state.current is not None


def test_more_than_20_intro_points_across_instances_give_valid_distinct_descriptors(tmp_path):
    env = Env(tmp_path, time.time())
    instances = [IdentityKey.generate() for _ in range(6)]
    cfg = env.bal.cfg
    from dataclasses import replace
    cfg = replace(cfg, frontends=(FrontendConfig("site", "unused", tuple(InstanceConfig(i.address) for i in instances)),))
    env.bal = Balancer(cfg, {"site": env.frontend}, env.control, env.proto, FakeProber(), clock=lambda: env.now, monotonic=lambda: env.now)
    env.bal.tick()
    all_keys = set()
    for inst in instances:
        ips = [intro_point(i) for i in range(5)]
        all_keys |= {ip.auth_key for ip in ips}
        env.instance = inst
        env.feed(env.instance_desc(ips, identity=inst))
    for _t, addr, hsdir in list(env.control.posts):
        env.bal.handle(DescEvent("UPLOADED", addr, hsdir))
    env.bal.tick()
    posted = env.posted_intro_keys()
    # the last round: every descriptor holds 20 of the 30 intro points, together all 30
    latest = {}
    for (_, _, hsdir), keys in zip(env.control.posts, posted):
        latest[hsdir] = keys
    assert all(len(k) == 20 for k in latest.values())
    assert set().union(*latest.values()) == all_keys
    assert len({frozenset(k) for k in latest.values()}) == 2


def test_microdesc_ed25519_index():
    md = ("onion-key\n-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n"
          "ntor-onion-key abc=\nid ed25519 QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY\n")
    other = "onion-key\n-----BEGIN RSA PUBLIC KEY-----\nBBBB\n-----END RSA PUBLIC KEY-----\nntor-onion-key x=\n"
    import base64
    import hashlib
    digest = base64.b64encode(hashlib.sha256(md.encode()).digest()).decode().rstrip("=")
    ids = microdesc_ed25519_ids(md + other)
    assert ids == {digest: "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY"}
    # Last in the reply, as stem returns `GETINFO md/all`: without its final newline, which
    # the digest covers (the balancer once dropped that relay from its ring).
    assert microdesc_ed25519_ids(other + md.rstrip("\n")) == ids


def test_fetch_hsdirs_are_the_clients_fetch_set_in_rotating_order(env):
    ring = env.proto.ring
    slot = ring.fetch_slot()
    from onion import keys
    blinded = keys.blind_public_key(env.instance.public_key, slot.time_period_number, slot.period_length)
    store = [h.fingerprint for h in ring.responsible_hsdirs(blinded, slot)]
    first = env.proto.fetch_hsdirs(env.instance.address, 1000.0)
    assert 1 < len(first) <= ring.n_replicas * ring.spread_fetch
    assert set(first) <= set(store)
    later = env.proto.fetch_hsdirs(env.instance.address, 1010.0)
    assert set(later) == set(first) and later != first


def test_reencrypted_copy_of_the_same_revision_is_accepted(env):
    ips = [intro_point(1), intro_point(2)]
    builder = desc.MasterDescriptorBuilder(env.instance, time_period_number=env.period,
                                           period_length=env.length, now=env.now)
    one, two = (builder.build(ips, revision_counter=77).text for _ in range(2))
    assert one != two  # fresh salts each time, as tor does per HSDir
    env.bal.tick()
    env.feed(one)
    env.feed(two)
    assert env.bal.instances[env.instance.address].rejected == 0


def test_builds_in_the_same_second_get_increasing_revisions(env):
    ips = [intro_point(1)]
    period = env.proto.ring.descriptor_slots()[0].time_period_number
    revs = [env.proto.build(env.frontend, period, ips, env.now)[1] for _ in range(3)]
    assert revs[0] < revs[1] < revs[2]  # HSDirs refuse a revision that is not higher


# ----------------------------------------------------------------------------- one instance
# against the frontend: descriptors validly signed with the instance's own key, whose intro
# points no tor makes (item 1) or which advertise far more than their share (item 2).

def padded_intro_point(i: int, *, pad: int = 16, pad_type: int = 0x7F, pad_len: int = 255,
                       extra: tuple = ()) -> desc.IntroPoint:
    """A real intro point with `pad` link specifiers of an unknown type appended (tor's
    trunnel parser keeps unknown types as opaque bytes; clients skip them)."""
    base = intro_point(i)
    specs = base.link_specifiers + tuple(extra) + tuple(
        desc.LinkSpecifier(pad_type, bytes([i % 256]) * pad_len) for _ in range(pad))
    return desc.IntroPoint(link_specifiers=specs, onion_key=base.onion_key, auth_key=base.auth_key,
                           enc_key=base.enc_key)


class Site:
    """A frontend with several instances, each publishing a real descriptor signed with its
    own key; the balancer's real crypto and hash ring, only tor faked."""

    def __init__(self, tmp_path, n_instances: int):
        self.env = Env(tmp_path, time.time())
        self.keys = [IdentityKey.generate() for _ in range(n_instances)]
        from dataclasses import replace
        cfg = replace(self.env.bal.cfg, frontends=(FrontendConfig(
            "site", "unused", tuple(InstanceConfig(k.address) for k in self.keys)),))
        env = self.env
        env.bal = Balancer(cfg, {"site": env.frontend}, env.control, env.proto, FakeProber(),
                           clock=lambda: env.now, monotonic=lambda: env.now)
        env.bal.tick()

    def offer(self, key: IdentityKey, ips, revision=100) -> None:
        self.env.instance = key
        self.env.feed(self.env.instance_desc(ips, identity=key, revision=revision))

    def posted(self, start=0) -> list[tuple[str, set[bytes], int]]:
        env = self.env
        out = []
        for text, _address, hsdir in env.control.posts[start:]:
            d = desc.decrypt_descriptor(text, env.frontend.address,
                                        time_period_numbers=(env.period, env.period + 1, env.period - 1),
                                        period_length=env.length, now=env.now)
            out.append((hsdir, {ip.auth_key for ip in d.intro_points}, len(text)))
        return out


@pytest.mark.parametrize("variant", ["padded unknown-type specifiers (41 kB)", "one unknown type",
                                     "five specifiers", "no legacy id"])
def test_an_instance_offering_intro_points_tor_never_makes_cannot_take_the_site_offline(tmp_path, variant):
    """A validly signed ~41 kB instance descriptor whose intro points carry padded link
    specifiers of unknown type was accepted; every master descriptor built with them
    exceeded 50 000 bytes and nothing was uploaded, every tick."""
    site = Site(tmp_path, 3)
    honest = {k.address: [intro_point(10 * n + j) for j in range(3)] for n, k in enumerate(site.keys[:2])}
    hostile_key = site.keys[2]
    if variant.startswith("padded"):
        bad = [padded_intro_point(90 + j) for j in range(3)]
    elif variant == "one unknown type":
        bad = [padded_intro_point(90 + j, pad=1) for j in range(3)]
    elif variant == "five specifiers":
        bad = [padded_intro_point(90 + j, pad=0, extra=(desc.LinkSpecifier.ipv4("127.0.0.2", 1),
                                                        desc.LinkSpecifier.ipv6("::1", 1)))
               for j in range(3)]
    else:
        bad = [desc.IntroPoint(link_specifiers=tuple(s for s in ip.link_specifiers if s.type != desc.LS_LEGACY_ID),
                               onion_key=ip.onion_key, auth_key=ip.auth_key, enc_key=ip.enc_key)
               for ip in (intro_point(90 + j) for j in range(3))]
    hostile_text = site.env.instance_desc(bad, identity=hostile_key, revision=100)
    if variant.startswith("padded"):
        assert 40_000 < len(hostile_text) < 50_000       # what an HSDir accepts and serves
    site.offer(hostile_key, bad)
    for key in site.keys[:2]:
        site.offer(key, honest[key.address])
    env = site.env
    state = env.bal.instances[hostile_key.address]
    assert state.current is None and state.rejected == 1
    assert "tor instance makes" in state.last_error
    posted = site.posted()
    slots = env.proto.slots(env.frontend, env.now)
    assert {h for h, _, _ in posted} == {h for s in slots for h in s.hsdirs}  # every HSDir got one
    good = set().union(*({ip.auth_key for ip in v} for v in honest.values()))
    assert all(keys == good and size < 50_000 for _, keys, size in posted)
    st = env.bal.status()["frontends"][0]
    shown = {i["address"]: i for i in st["instances"]}[hostile_key.address]
    assert shown["rejected_descriptors"] == 1 and "link specifier" in shown["last_error"]


def test_a_descriptor_still_too_large_drops_intro_points_instead_of_publishing_nothing(tmp_path):
    """HSDirs refuse descriptors of HSV3MaxDescriptorSize bytes or more (a consensus param,
    50 000 by default, hs_cache.c). With a lower limit, 20 intro points no longer fit: the
    balancer leaves out intro points (the largest instance's first), builds again, and
    names the instance(s) - it used to catch the error and upload nothing."""
    site = Site(tmp_path, 7)
    env = site.env
    env.proto.ring.max_descriptor_size = 35_000
    big = site.keys[3]
    offered = {}
    for n, key in enumerate(site.keys):
        extra = (desc.LinkSpecifier.ipv6(f"2001:db8::{n}", 9001),) if key is big else ()
        offered[key.address] = [padded_intro_point(10 * n + j, pad=0, extra=extra) for j in range(3)]
        site.offer(key, offered[key.address])
    posted = site.posted()
    slots = env.proto.slots(env.frontend, env.now)
    assert {h for h, _, _ in posted} == {h for s in slots for h in s.hsdirs}
    assert all(size < 35_000 and 8 <= len(keys) < 20 for _, keys, size in posted)
    note = env.bal.status()["frontends"][0]["note"]
    assert "too large" in note and f"{big.address}.onion" in note
    st = {i["address"]: i for i in env.bal.status()["frontends"][0]["instances"]}
    assert st[big.address]["intro_points_left_out"] >= 1
    # what was published is what the status says was published
    published = {bytes.fromhex(p["auth_key"]) for p in env.bal.status()["frontends"][0]["published_intro_points"]}
    for _ in range(2):                                     # confirm, let the H3-style queued ones go
        for _t, addr, hsdir in list(env.control.posts):
            env.bal.handle(DescEvent("UPLOADED", addr, hsdir))
        env.bal.tick()
    published = {bytes.fromhex(p["auth_key"]) for p in env.bal.status()["frontends"][0]["published_intro_points"]}
    assert published == set().union(*(keys for _, keys, _ in site.posted()))


def test_the_instance_with_the_largest_intro_points_pays_even_with_fewer_slots(tmp_path):
    """The instance with the largest intro points loses them first, also when it holds
    fewer slots than the others: ranked by bytes in total, 2 slightly larger intro points
    weigh less than 3 ordinary ones, and an honest instance paid instead (this made the
    test above fail whenever fair windows gave the large instance one slot fewer)."""
    site = Site(tmp_path, 7)
    env = site.env
    env.proto.ring.max_descriptor_size = 35_000
    big = site.keys[3]
    for n, key in enumerate(site.keys):
        if key is big:
            ips = [padded_intro_point(10 * n + j, pad=0, extra=(desc.LinkSpecifier.ipv6(f"2001:db8::{n}", 9001),))
                   for j in range(2)]
        else:
            ips = [padded_intro_point(10 * n + j, pad=0) for j in range(3)]
        site.offer(key, ips)
    posted = site.posted()
    assert posted and all(size < 35_000 for _, _, size in posted)
    st = {i["address"]: i for i in env.bal.status()["frontends"][0]["instances"]}
    assert st[big.address]["intro_points_left_out"] == 2
    note = env.bal.status()["frontends"][0]["note"]
    assert note.split(": left out ")[1].startswith(f"2 intro point(s) of {big.address}.onion")


def test_an_instance_advertising_20_intro_points_gets_no_more_than_its_fair_share(tmp_path):
    """Among 6 instances with 3 intro points, one with 20 got 25-80% of each descriptor."""
    site = Site(tmp_path, 7)
    hog = site.keys[0]
    hog_points = [intro_point(500 + j) for j in range(20)]
    site.offer(hog, hog_points)
    honest = set()
    for n, key in enumerate(site.keys[1:], 1):
        ips = [intro_point(10 * n + j) for j in range(3)]
        honest |= {ip.auth_key for ip in ips}
        site.offer(key, ips)
    env = site.env
    for _ in range(3):
        for _t, addr, hsdir in list(env.control.posts):
            env.bal.handle(DescEvent("UPLOADED", addr, hsdir))
        env.bal.tick()
    latest = {}
    for hsdir, keys, _size in site.posted():
        latest[hsdir] = keys
    hog_keys = {ip.auth_key for ip in hog_points}
    for keys in latest.values():
        assert len(keys) == 20
        assert len(keys & hog_keys) <= 3                     # ceil(20 / 7): 15 % of the slots
        assert len(keys & honest) >= 17                      # the honest ones keep their places
    assert honest <= set().union(*latest.values())


def test_revision_counters_keep_rising_when_the_wall_clock_steps_back(env):
    ips = [intro_point(1)]
    period = env.proto.ring.descriptor_slots()[0].time_period_number
    first = env.proto.build(env.frontend, period, ips, env.now)[1]
    second = env.proto.build(env.frontend, period, ips, env.now - 3 * 3600)[1]
    assert second > first  # HSDirs keep only a higher revision


def test_the_lab_hostile_worker_makes_the_descriptor_the_balancer_refuses(env):
    """lab/hostile.py (the soak's hostile worker) turns an instance's own descriptor into
    the ~41 kB one with padded link specifiers: valid for an HSDir (signed by the
    instance, < 50 000 bytes), the same intro points, and refused by the balancer."""
    from lab.hostile import REVISION_FLOOR, hostile_descriptor, is_ours

    ips = [intro_point(i) for i in range(3)]
    text = hostile_descriptor(env.instance, env.period, env.length, ips, REVISION_FLOOR + 1, env.now)
    assert 40_000 <= len(text) < 50_000
    d = desc.decrypt_descriptor(text, env.instance.address, time_period_numbers=(env.period,),
                                period_length=env.length, now=env.now)
    assert is_ours(d) and [ip.auth_key for ip in d.intro_points] == [ip.auth_key for ip in ips]
    assert d.revision_counter > 2**34  # above any OPE revision tor makes: HSDirs keep it
    env.bal.tick()
    env.feed(text)
    state = env.bal.instances[env.instance.address]
    assert state.rejected == 1 and "link specifier" in state.last_error
