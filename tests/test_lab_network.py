"""End-to-end: the lab's private Tor network carries onion-service traffic (issue 5)."""
from __future__ import annotations

import pytest

from lab.client import fetch, wait_reachable
from lab.services import serve_text, start_plain_service
from lab.tornet import bootstrap_progress, consensus_fingerprints, controller

pytestmark = pytest.mark.lab


def test_network_bootstrapped_with_every_relay_voted_hsdir(lab):
    net = lab.net
    assert bootstrap_progress(net.client) == 100
    assert consensus_fingerprints(net.client) == {n.fingerprint for n in net.relays}
    with controller(net.client) as ctl:
        statuses = list(ctl.get_network_statuses())
    assert len(statuses) == 8
    assert all("HSDir" in s.flags for s in statuses)
    # TestingDirAuthVoteExit flags every relay Exit; the policies say which really exit.
    with controller(net.authorities[0]) as ctl:
        descs = list(ctl.get_server_descriptors())
    exits = sorted(d.nickname for d in descs if d.exit_policy.can_exit_to("127.0.0.1", 80))
    assert exits == ["relay0", "relay1", "relay2"]


def test_network_consensus_uses_the_lab_voting_interval(lab):
    with controller(lab.net.authorities[0]) as ctl:
        text = ctl.get_info("dir/status-vote/current/consensus")
    valid_after = fresh_until = None
    import datetime
    for line in text.splitlines():
        if line.startswith("valid-after "):
            valid_after = datetime.datetime.fromisoformat(line.split(" ", 1)[1])
        if line.startswith("fresh-until "):
            fresh_until = datetime.datetime.fromisoformat(line.split(" ", 1)[1])
    assert (fresh_until - valid_after).total_seconds() == lab.voting_interval


@pytest.fixture(scope="module")
def plain_http_server():
    with serve_text(b"plain onion service says hello\n") as port:
        yield port


def test_plain_onion_service_reachable_through_client_socks(lab, plain_http_server):
    node, hostname = start_plain_service(lab.net, lab.procs, lab.ports, "plainhs",
                                         plain_http_server)
    try:
        assert hostname.endswith(".onion") and len(hostname) == 62
        resp, took = wait_reachable(lab.net.client.socks_port, f"http://{hostname}/",
                                    timeout=120, what="plain onion service")
        assert resp.body == "plain onion service says hello\n"
        # A name nobody publishes must fail, or the check above proves nothing.
        bogus = "a" * 52 + "bcdd.onion"
        assert not fetch(lab.net.client.socks_port, f"http://{bogus}/", timeout=20).ok
    finally:
        lab.procs.stop(node.process_name)
