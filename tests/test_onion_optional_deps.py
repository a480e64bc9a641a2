"""numpy and pybase64 are optional in `onion`: the balancer's install has neither, and the
standard library must give byte-for-byte the same results. Each combination runs in a
child process where the missing modules cannot be imported, with the same seeded
randomness: master descriptors (several sizes, certificates made afresh and from the
builder's cache), OPE revision counters across a whole SRV window, and a hash ring from a
consensus text must come out identical."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import hashlib, json, os, random, sys
for name in BLOCKED:
    sys.modules[name] = None          # `import name` now raises ImportError
rng = random.Random(20240607)
os.urandom = lambda n: rng.randbytes(n)

from onion import crypto, descriptor as desc, hashring
from onion.keys import IdentityKey
import nacl.bindings as sodium

out = {"numpy": desc._np is not None and crypto._np is not None,
       "pybase64": desc.pybase64 is not None}
identity = IdentityKey.from_seed(bytes(range(32)))

def intro(i):
    r = random.Random(i)
    return desc.IntroPoint(
        link_specifiers=(desc.LinkSpecifier.ipv4(f"10.0.0.{i}", 9001),
                         desc.LinkSpecifier.legacy_id(r.randbytes(20)),
                         desc.LinkSpecifier.ed25519_id(r.randbytes(32)),
                         desc.LinkSpecifier.ipv6(f"2001:db8::{i}", 9001)),
        onion_key=sodium.crypto_scalarmult_base(r.randbytes(32)),
        auth_key=crypto.SeedSigningKey(r.randbytes(32)).public_key,
        enc_key=sodium.crypto_scalarmult_base(r.randbytes(32)))

ips = [intro(i) for i in range(25)]
builder = desc.MasterDescriptorBuilder(identity, time_period_number=20000, period_length=1440,
                                       now=1_700_000_000)
texts = []
for n in (1, 3, 20):
    texts.append(builder.build(ips[:n], revision_counter=1000 + n).text)
texts.append(builder.build(ips[5:25], revision_counter=2000).text)   # half cached, half new
out["descriptors"] = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
out["sizes"] = [len(t) for t in texts]
d = desc.decrypt_descriptor(texts[2], identity.address, time_period_numbers=20000,
                            period_length=1440, now=1_700_000_000)
out["roundtrip"] = [ip.auth_key.hex() for ip in d.intro_points] == [ip.auth_key.hex() for ip in ips[:20]]

cipher = crypto.OrderPreservingCipher(bytes(range(32)))
out["ope"] = [cipher.encrypt(x) for x in (1, 2, 1023, 1024, 1025, 5000, 100_000, crypto.OPE_INPUT_MAX)]
out["ope_fresh"] = crypto.OrderPreservingCipher(bytes(range(1, 33))).encrypt(crypto.OPE_INPUT_MAX - 7)

sys.path.insert(0, "TESTS")
from test_onion_hashring import make_consensus_text
text, ids = make_consensus_text(60)
ring = hashring.HashRing.from_consensus(text, ids)
slot = ring.descriptor_slots()[0]
out["ring"] = [h.fingerprint for h in ring.responsible_hsdirs(b"\x05" * 32, slot)]
print(json.dumps(out))
"""


def run_with(blocked: tuple[str, ...]) -> dict:
    script = SCRIPT.replace("BLOCKED", repr(blocked)).replace("TESTS", str(REPO / "tests"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def with_both():
    return run_with(())


@pytest.mark.parametrize("blocked", [("numpy",), ("pybase64",), ("numpy", "pybase64")])
def test_the_standard_library_gives_the_same_bytes(with_both, blocked):
    assert with_both["numpy"] and with_both["pybase64"]
    got = run_with(blocked)
    assert got["numpy"] is ("numpy" not in blocked) and got["pybase64"] is ("pybase64" not in blocked)
    assert got["roundtrip"] and with_both["roundtrip"]
    for key in ("descriptors", "sizes", "ope", "ope_fresh", "ring"):
        assert got[key] == with_both[key], key


def test_the_balancer_installs_neither():
    reqs = (REPO / "onion" / "requirements.txt").read_text()
    names = {line.split("#")[0].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for line in reqs.splitlines() if line.split("#")[0].strip()}
    assert "numpy" not in names and "pybase64" not in names
