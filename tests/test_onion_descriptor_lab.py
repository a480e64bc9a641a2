"""A real tor client reaches a service through a master descriptor WE built.

On the lab's private network: an instance tor (HiddenServiceOnionBalanceInstance, its
ob_config naming our master address) serves a small HTTP server. We fetch and decrypt the
instance's descriptor, build both master descriptors (first and second period) with its
introduction points, HSPOST them to the HSDirs our hash ring picks, and curl the master
address through the client's SocksPort. Success means tor accepted every part of what we
build: layers, padding, certificates, signature, revision counter, HSDir placement.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab.services import serve_text
from onion.descriptor import MasterDescriptorBuilder, decrypt_descriptor, revision_counter
from onion.keys import IdentityKey

from tests.test_onion_hashring_lab import _ring_from

pytestmark = pytest.mark.lab

BODY = b"served through an onionstack master descriptor\n"


@pytest.fixture(scope="module")
def http_port():
    with serve_text(BODY) as port:
        yield port


def _hspost(ctl, text: str, fingerprint: str, address: str) -> None:
    # HSPOST is a multi-line control command: stem sends "+HSPOST ...", the body and "."
    reply = ctl.msg(f"HSPOST SERVER={fingerprint} HSADDRESS={address}\n{text}")
    assert reply.is_ok(), str(reply)


def test_client_reaches_the_instance_through_our_master_descriptor(lab, http_port):
    from lab.client import wait_reachable
    from lab.tornet import controller

    master = IdentityKey.generate()
    instance_dir = Path(lab.net.net_dir) / "mastercheck" / "hs"
    instance = IdentityKey.generate()
    instance.write_hs_dir(instance_dir)
    (instance_dir / "ob_config").write_text(f"MasterOnionAddress {master.hostname}\n")
    node = lab.net.add_tor(lab.procs, lab.ports, "mastercheck", [
        f"HiddenServiceDir {instance_dir}", f"HiddenServicePort 80 127.0.0.1:{http_port}",
        "HiddenServiceOnionBalanceInstance 1"])
    try:
        with controller(lab.net.client) as client:
            # the instance's descriptor, verified and decrypted by us
            text = None
            for _ in range(30):
                try:
                    text = str(client.get_hidden_service_descriptor(instance.address, timeout=20))
                    break
                except Exception:  # noqa: BLE001 - not uploaded yet
                    time.sleep(3)
            assert text, "the instance never published a descriptor"
            ring = _ring_from(client)
            slots = ring.descriptor_slots()
            got = decrypt_descriptor(text, instance.address,
                                     time_period_numbers=[s.time_period_number for s in slots],
                                     period_length=ring.timing.period_length)
            assert got.intro_points
            now = time.time()
            posted = 0
            for slot in slots:
                builder = MasterDescriptorBuilder(master, time_period_number=slot.time_period_number,
                                                  period_length=slot.period_length, now=now)
                desc = builder.build(got.intro_points, revision_counter=revision_counter(
                    builder.blinded_key, slot.revision_base, now))
                for hsdir in ring.responsible_hsdirs(desc.blinded_key, slot):
                    _hspost(client, desc.text, hsdir.fingerprint, master.address)
                    posted += 1
            assert posted >= 2
        resp, took = wait_reachable(lab.net.client.socks_port, f"http://{master.hostname}/",
                                    timeout=120, what="master address")
        assert resp.body == BODY.decode()
    finally:
        lab.procs.stop(node.process_name)
