"""Intro point selection, distinct descriptors per HSDir, upload bookkeeping and backoff."""
from __future__ import annotations

from dataclasses import dataclass

from onion.publisher import UploadBook, backoff, fair_windows


@dataclass(frozen=True)
class IP:
    auth_key: bytes


def ips(prefix: str, n: int) -> list[IP]:
    return [IP(f"{prefix}{i}".encode()) for i in range(n)]


def names(points) -> list[str]:
    return [p.auth_key.decode() for p in points]


def counts(window) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in window:
        out[p.auth_key[:1].decode()] = out.get(p.auth_key[:1].decode(), 0) + 1
    return out


def test_one_window_round_robin_and_dedup():
    a, b, c = ips("a", 3), ips("b", 1), ips("c", 2)
    out = fair_windows([a, b, c], ["H1"])
    assert names(out["H1"]) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    # the same auth key seen twice (e.g. an instance listed under two names) is kept once
    assert names(fair_windows([a, a[:1]], ["H1"])["H1"]) == ["a0", "a1", "a2"]
    assert fair_windows([], ["H1"]) == {"H1": ()}
    assert fair_windows([a], []) == {}


def test_windows_are_deterministic():
    groups = [ips("a", 15), ips("b", 5), ips("c", 9)]
    hsdirs = [f"H{i}" for i in range(8)]
    assert fair_windows(groups, hsdirs) == fair_windows([list(g) for g in groups], list(hsdirs))


def test_all_hsdirs_same_descriptor_when_it_fits():
    out = fair_windows([ips("a", 10), ips("b", 10)], ["H1", "H2", "H3"])
    assert len(set(out.values())) == 1 and len(out) == 3 and len(out["H1"]) == 20


def test_one_instance_cannot_take_more_than_its_fair_share_of_a_descriptor():
    """Six instances with 3 intro points and one advertising 20: a window holds 20, a fair
    share of it is ceil(20 / 7) = 3. Before, the 20-intro instance filled 25-80% of each
    descriptor (the round-robin ran out of honest points and its tail filled the rest)."""
    honest = [ips(x, 3) for x in "abcdef"]
    hog = ips("z", 20)
    hsdirs = [f"H{i}" for i in range(8)]
    for order in (honest + [hog], [hog] + honest):   # wherever its address sorts
        out = fair_windows(order, hsdirs)
        for window in set(out.values()):
            assert len(window) == 20 and len(set(window)) == 20
            assert counts(window).get("z", 0) <= 3                  # <= 15 % of the descriptor
            # every honest instance keeps its place: all 3 of its points, or 2 when the
            # round that does not fit (7 x 3 = 21 > 20) ends on it
            assert all(counts(window).get(x, 0) >= 2 for x in "abcdef")
            assert sum(counts(window).get(x, 0) for x in "abcdef") >= 17
        # the hog's surplus is spread over the other descriptors, not dropped on the floor
        union = set().union(*out.values())
        assert set(sum(honest, [])) <= union and len(union & set(hog)) >= 16


def test_more_than_20_gives_distinct_fair_descriptors():
    groups = [ips(x, 3) for x in "abcdefghijkl"]  # 12 instances x 3 = 36 intro points
    hsdirs = [f"H{i}" for i in range(8)]
    out = fair_windows(groups, hsdirs)
    assert all(len(v) == 20 for v in out.values())          # never more than tor accepts
    assert all(len(set(v)) == 20 for v in out.values())     # no duplicates inside one
    union = set().union(*out.values())
    assert union == set(sum(groups, []))                    # every intro point published
    distinct = {v for v in out.values()}
    assert len(distinct) == 2
    # each window is fair: every instance has 1 or 2 of the 20 slots
    for window in distinct:
        assert set(counts(window).values()) <= {1, 2} and len(counts(window)) == 12
    # the first HSDirs of the list already cover both windows (clients try those)
    assert out["H0"] != out["H1"]


def test_more_points_than_hsdirs_can_carry():
    out = fair_windows([ips(x, 20) for x in "abc"], ["H1", "H2"])  # 60 points, 2 x 20 slots
    assert [len(v) for v in out.values()] == [20, 20]
    assert set(out["H1"]).isdisjoint(out["H2"])
    # each descriptor is fair: 7, 7 and 6 of 20 (ceil(20 / 3) = 7)
    assert sorted(counts(out["H1"]).values()) == [6, 7, 7] == sorted(counts(out["H2"]).values())


def test_more_instances_than_slots_rotate_through_the_windows():
    groups = [ips(f"{i:02d}", 1) for i in range(30)]   # 30 instances, 1 intro point each
    out = fair_windows(groups, [f"H{i}" for i in range(4)])
    assert len(set(out.values())) == 2 and set().union(*out.values()) == set(sum(groups, []))


def test_duplicate_hsdirs_collapse():
    out = fair_windows([ips("a", 2)], ["H1", "H1", "H2"])
    assert list(out) == ["H1", "H2"]


def test_a_standby_record_is_no_upload_once_publishing():
    book = UploadBook()
    content = frozenset({b"a0"})
    book.standby("fe", 7, "H1", content, 0)
    assert book.needs_upload("fe", 7, "H1", content, 1, publishing=False) is None
    assert book.needs_upload("fe", 7, "H1", content, 1, publishing=True).startswith("publish switched on")


def test_upload_counts_only_on_uploaded():
    book = UploadBook()
    content = frozenset({b"a0"})
    assert book.needs_upload("fe", 7, "H1", content, 0) == "never uploaded"
    book.sent("fe", 7, "H1", content, 0)
    rec = book.records[("fe", 7, "H1")]
    assert rec.state == "pending" and rec.confirmed_at is None
    # in flight: no second upload to the same HSDir, even for another period
    assert book.needs_upload("fe", 7, "H1", content, 1) is None
    assert book.needs_upload("fe", 8, "H1", content, 1) is None
    assert book.needs_upload("fe", 8, "H2", content, 1) == "never uploaded"
    assert book.confirm("fe", "H1", 2) is rec
    assert rec.state == "uploaded" and rec.confirmed_at == 2
    assert book.needs_upload("fe", 7, "H1", content, 3) is None
    assert book.needs_upload("fe", 7, "H1", content, 2 + book.republish_interval) == "periodic republish"
    assert book.needs_upload("fe", 7, "H1", frozenset({b"b0"}), 3) == "intro points changed"
    # an UPLOADED for something we never sent changes nothing
    assert book.confirm("fe", "H9", 4) is None


def test_failed_upload_retried_with_exponential_backoff():
    book = UploadBook(backoff_base=5, backoff_max=60)
    content = frozenset({b"a0"})
    now = 0.0
    waits = []
    for _ in range(6):
        assert book.needs_upload("fe", 1, "H1", content, now)
        book.sent("fe", 1, "H1", content, now)
        rec = book.fail("fe", "H1", "UPLOAD_REJECTED", now)
        assert rec.state == "failed" and rec.result == "FAILED UPLOAD_REJECTED"
        wait = rec.next_retry_at - now
        assert book.needs_upload("fe", 1, "H1", content, now + wait - 0.01) is None
        assert book.needs_upload("fe", 1, "H1", content, now + wait) == "retry after failure"
        waits.append(wait)
        now += wait
    assert waits == [5, 10, 20, 40, 60, 60]
    # success resets the failure count
    book.sent("fe", 1, "H1", content, now)
    assert book.confirm("fe", "H1", now).failures == 0
    assert backoff(1) == 5 and backoff(3) == 20


def test_changed_content_is_uploaded_without_waiting_for_backoff():
    book = UploadBook()
    book.sent("fe", 1, "H1", frozenset({b"a"}), 0)
    book.fail("fe", "H1", "UNEXPECTED", 0)
    assert book.needs_upload("fe", 1, "H1", frozenset({b"b"}), 0.1) == "intro points changed"


def test_unanswered_upload_times_out_as_failure():
    book = UploadBook(upload_timeout=30)
    book.sent("fe", 1, "H1", frozenset(), 0)
    assert book.expire(29) == []
    assert book.expire(30) == [("fe", "H1")]
    rec = book.records[("fe", 1, "H1")]
    assert rec.state == "failed" and "TIMEOUT" in rec.result
    assert ("fe", "H1") not in book.inflight


def test_standby_records_without_inflight():
    book = UploadBook()
    book.standby("fe", 1, "H1", frozenset({b"a"}), 0)
    assert book.inflight == {}
    assert book.records[("fe", 1, "H1")].state == "standby"
    assert book.needs_upload("fe", 1, "H1", frozenset({b"a"}), 1, publishing=False) is None
    assert book.needs_upload("fe", 1, "H1", frozenset({b"b"}), 1, publishing=False) == "intro points changed"


def test_next_due_and_forget_periods():
    book = UploadBook(republish_interval=100, upload_timeout=30)
    book.sent("fe", 1, "H1", frozenset(), 0)
    book.confirm("fe", "H1", 10)
    book.sent("fe", 2, "H2", frozenset(), 20)
    assert book.next_due("fe", [1, 2], {1: ["H1"], 2: ["H2"]}) == 50  # H2's timeout
    book.confirm("fe", "H2", 25)
    assert book.next_due("fe", [1, 2], {1: ["H1"], 2: ["H2"]}) == 110
    book.forget_periods("fe", [2])
    assert ("fe", 1, "H1") not in book.records and ("fe", 2, "H2") in book.records
