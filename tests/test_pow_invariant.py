"""The frontend (master) descriptor never carries `pow-params`.

A client solves tor's PoW puzzle only when the descriptor it fetched has `pow-params`, and
binds the solution to that descriptor's blinded key; a worker's tor verifies against its
OWN blinded key and its own random seeds, and drops the INTRODUCE2 otherwise. A frontend
that advertised PoW would therefore make every solving client fail at every instance,
exactly when the site is under attack (docs/sites.md, "DoS controls"). Instances with PoW
on publish `pow-params` in their own descriptors; whatever the balancer takes from them,
its descriptors must not.
"""
from __future__ import annotations

import base64
import inspect
import os
import time

import pytest

from onion import descriptor as desc
from onion.descriptor import IntroPoint, LinkSpecifier, MasterDescriptorBuilder, decrypt_descriptor
from onion.keys import IdentityKey

TP, LEN = 20000, 1440
NOW = TP * LEN * 60 + 3600 * 5  # a moment the certificates and period TP agree on


def intro_point(n: int) -> IntroPoint:
    return IntroPoint((LinkSpecifier.ipv4(f"192.0.2.{n}", 9001), LinkSpecifier.legacy_id(os.urandom(20))),
                      os.urandom(32), IdentityKey.generate().public_key, os.urandom(32))


POW_LINE = "pow-params v1 {seed} {effort} 2099-01-01T00:00:00"


class PowInstanceBuilder(MasterDescriptorBuilder):
    """Builds a descriptor the way a tor instance with HiddenServicePoWDefensesEnabled does:
    `pow-params v1 <seed> <suggested effort> <expiration>` in the inner layer's header."""

    def __init__(self, *args, effort: int, **kwargs):
        super().__init__(*args, **kwargs)
        seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
        self.pow_line = POW_LINE.format(seed=seed, effort=effort).encode() + b"\n"

    def _inner_plaintext(self, intro_points):
        plain = super()._inner_plaintext(intro_points)
        head, rest = plain.split(b"\n", 1)  # "create2-formats 2" first, as tor writes it
        return head + b"\n" + self.pow_line + rest


def instance_descriptor(identity: IdentityKey, effort: int, n: int = 3):
    builder = PowInstanceBuilder(identity, time_period_number=TP, period_length=LEN, now=NOW, effort=effort)
    text = builder.build([intro_point(i) for i in range(n)], revision_counter=7).text
    return decrypt_descriptor(text, identity.address, time_period_numbers=TP, period_length=LEN, now=NOW)


def test_an_instance_descriptor_with_pow_params_is_read_with_them():
    """The premise: our parser keeps an instance's pow-params (the balancer sees them)."""
    got = instance_descriptor(IdentityKey.generate(), effort=120)
    assert [line.split()[:2] for line in got.extra_lines] == [["pow-params", "v1"]]
    assert got.extra_lines[0].split()[3] == "120"


@pytest.mark.parametrize("options", [{}, {"single_onion": True}, {"flow_control": None},
                                     {"flow_control": "1-2", "single_onion": True}])
def test_the_master_descriptor_never_carries_pow_params(options):
    """Intro points taken from PoW-enabled instances (any effort), built into the frontend's
    descriptor with every option the builder has: no pow-params, nothing unknown."""
    master = IdentityKey.generate()
    instances = [instance_descriptor(IdentityKey.generate(), effort) for effort in (0, 48, 10000)]
    intro_points = [ip for d in instances for ip in d.intro_points]
    built = MasterDescriptorBuilder(master, time_period_number=TP, period_length=LEN, now=NOW, **options).build(
        intro_points, revision_counter=int(time.time()))
    got = decrypt_descriptor(built.text, master.address, time_period_numbers=TP, period_length=LEN, now=NOW)
    assert [ip.auth_key for ip in got.intro_points] == [ip.auth_key for ip in intro_points]
    assert got.extra_lines == ()
    assert "pow-params" not in built.text  # (the outer layer; the inner ones were checked decrypted)


def test_the_builder_has_no_way_to_add_pow_params():
    """If a PoW option is ever added to the builder, this fails: it must not be, with stock
    tor instances (see the module docstring)."""
    for fn in (MasterDescriptorBuilder.__init__, MasterDescriptorBuilder.build, desc.build_master_descriptor):
        params = set(inspect.signature(fn).parameters)
        assert not {p for p in params if "pow" in p.lower() or "extra" in p.lower()}, fn.__qualname__
