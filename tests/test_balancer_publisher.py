"""Intro point selection, distinct descriptors per HSDir, upload bookkeeping and backoff."""
from __future__ import annotations

from dataclasses import dataclass

from onion.publisher import UploadBook, assign_windows, backoff, interleave


@dataclass(frozen=True)
class IP:
    auth_key: bytes


def ips(prefix: str, n: int) -> list[IP]:
    return [IP(f"{prefix}{i}".encode()) for i in range(n)]


def names(points) -> list[str]:
    return [p.auth_key.decode() for p in points]


def test_interleave_round_robin_and_dedup():
    a, b, c = ips("a", 3), ips("b", 1), ips("c", 2)
    assert names(interleave([a, b, c])) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    # the same auth key seen twice (e.g. an instance listed under two names) is kept once
    assert names(interleave([a, a[:1]])) == ["a0", "a1", "a2"]
    assert interleave([]) == []


def test_interleave_is_deterministic():
    groups = [ips("a", 5), ips("b", 5)]
    assert interleave(groups) == interleave([list(g) for g in groups])


def test_all_hsdirs_same_descriptor_when_it_fits():
    pts = interleave([ips("a", 10), ips("b", 10)])
    out = assign_windows(pts, ["H1", "H2", "H3"])
    assert all(v == tuple(pts) for v in out.values()) and len(out) == 3


def test_more_than_20_gives_distinct_fair_descriptors():
    groups = [ips(x, 3) for x in "abcdefghijkl"]  # 12 instances x 3 = 36 intro points
    pts = interleave(groups)
    hsdirs = [f"H{i}" for i in range(8)]
    out = assign_windows(pts, hsdirs)
    assert all(len(v) == 20 for v in out.values())          # never more than tor accepts
    assert all(len(set(v)) == 20 for v in out.values())     # no duplicates inside one
    union = set().union(*out.values())
    assert union == set(pts)                                # every intro point published
    distinct = {v for v in out.values()}
    assert len(distinct) == 2
    # each window is fair: every instance has 1 or 2 of the 20 slots
    for window in distinct:
        counts = {}
        for p in window:
            counts[p.auth_key[:1]] = counts.get(p.auth_key[:1], 0) + 1
        assert set(counts.values()) <= {1, 2} and len(counts) == 12
    # the first HSDirs of the list already cover both windows (clients try those)
    assert out["H0"] != out["H1"]


def test_more_points_than_hsdirs_can_carry():
    pts = interleave([ips(x, 20) for x in "abc"])  # 60 points, 2 HSDirs x 20 = 40 slots
    out = assign_windows(pts, ["H1", "H2"])
    assert [len(v) for v in out.values()] == [20, 20]
    assert set(out["H1"]).isdisjoint(out["H2"])
    # the fair order is kept: the first 40 interleaved points are the ones published
    assert set(out["H1"]) | set(out["H2"]) == set(pts[:40])


def test_duplicate_hsdirs_collapse():
    out = assign_windows(ips("a", 2), ["H1", "H1", "H2"])
    assert list(out) == ["H1", "H2"]


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
    assert book.needs_upload("fe", 1, "H1", frozenset({b"a"}), 1) is None
    assert book.needs_upload("fe", 1, "H1", frozenset({b"b"}), 1) == "intro points changed"


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
