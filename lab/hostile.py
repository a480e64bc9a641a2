"""A hostile lab worker: its instances' descriptors on the HSDirs replaced by oversized ones.

`python -m lab.hostile --control-port P HS_DIR...` (or `start_hostile_publisher` from a
bench) watches each instance (the tor hidden-service directories of one lab worker, whose
instance keys it reads) through a lab tor's control port: it fetches the descriptor the
HSDirs serve (HSFETCH, the HSDirs a client asks), and whenever that is tor's own, it takes
its intro points, pads each with link specifiers of an unknown type (tor's parser keeps
them, its clients skip them) until the descriptor is ~41 kB, signs it with the instance's
own key for the same time period, and uploads it (HSPOST) to every HSDir responsible for
it, with a revision counter above any tor makes (its OPE counters stay below 2^34), so the
HSDirs keep ours. What an HSDir serves for that instance is then a validly signed, ~41 kB
descriptor whose intro points are the instance's real ones: tor clients (and the
balancer's probes) still reach the instance through it, and a balancer that took those
intro points could no longer build a master descriptor under 50 000 bytes.

It only ever talks to the lab tor's control port on 127.0.0.1; everything it uploads goes
to the private network's HSDirs.
"""
from __future__ import annotations

import argparse
import logging
import queue
import sys
import time
from pathlib import Path

log = logging.getLogger("lab.hostile")

PAD_TYPE = 0x7F          # no link specifier type tor knows (0-3)
PAD_LEN = 255            # the largest a link specifier holds
REVISION_FLOOR = 2**40   # above any OPE revision counter tor makes (< 2^34)
TARGET_SIZE = 41_000     # ~41 kB: a hostile instance descriptor padded near the size limit (docs/balancer.md)


def pad(ip, n: int):
    from onion import descriptor as desc

    specs = tuple(ip.link_specifiers) + tuple(desc.LinkSpecifier(PAD_TYPE, bytes([0xA5]) * PAD_LEN)
                                              for _ in range(n))
    return desc.IntroPoint(link_specifiers=specs, onion_key=ip.onion_key, auth_key=ip.auth_key,
                           enc_key=ip.enc_key, enc_key_ed25519=ip.enc_key_ed25519)


def hostile_descriptor(identity, period: int, period_length: int, intro_points, revision: int,
                       now: float) -> str:
    """The instance's intro points, padded until the descriptor is as large as it gets
    below TARGET_SIZE (and always below tor's 50 000 bytes)."""
    from onion import descriptor as desc

    builder = desc.MasterDescriptorBuilder(identity, time_period_number=period,
                                           period_length=period_length, now=now)
    best = None
    for n in range(1, 200):
        try:
            text = builder.build([pad(ip, n) for ip in intro_points], revision_counter=revision).text
        except desc.DescriptorTooLargeError:
            break
        best = text
        if len(text) >= TARGET_SIZE:
            break
    if best is None:
        raise ValueError("even one padding link specifier makes the descriptor too large")
    return best


def is_ours(decrypted) -> bool:
    return any(spec.type == PAD_TYPE for ip in decrypted.intro_points for spec in ip.link_specifiers)


class HostilePublisher:
    def __init__(self, control_port: int, hs_dirs: list[Path]):
        from onion.config import ControlEndpoint
        from onion.control import TorControl
        from onion.frontend import TorOnionProtocol
        from onion.keys import IdentityKey

        self.events: "queue.Queue[object]" = queue.Queue()
        self.control = TorControl(ControlEndpoint(port=control_port), self.events.put)
        self.protocol = TorOnionProtocol()
        self.identities = [IdentityKey.from_hs_dir(d) for d in hs_dirs]
        self.addresses = {i.address for i in self.identities}
        self.uploads = 0
        self.counter = 0
        self.confirmed = 0   # HS_DESC UPLOADED: an HSDir stored one of ours
        self.rejected = 0    # HS_DESC FAILED for an upload

    def _note(self, msg) -> None:
        from onion.control import DescEvent

        if isinstance(msg, DescEvent) and msg.address in self.addresses:
            if msg.action == "UPLOADED":
                self.confirmed += 1
            elif msg.action == "FAILED" and msg.reason and "UPLOAD" in msg.reason:
                self.rejected += 1

    def _wait_content(self, address: str, timeout: float) -> str | None:
        from onion.control import DescContent, DescEvent

        deadline = time.monotonic() + timeout
        failed = 0
        while time.monotonic() < deadline:
            try:
                msg = self.events.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                return None
            self._note(msg)
            if isinstance(msg, DescContent) and msg.address == address and msg.text.strip():
                return msg.text
            if isinstance(msg, DescEvent) and msg.address == address and msg.action == "FAILED":
                failed += 1
                if failed >= 2:
                    return None
        return None

    def round(self) -> None:
        from onion import descriptor as desc

        now = time.time()
        self.protocol.refresh(self.control)
        ring = self.protocol.ring
        period = ring.timing.time_period_number()
        for identity in self.identities:
            address = identity.address
            servers = self.protocol.fetch_hsdirs(address, now)
            self.control.fetch_descriptor(address, servers[:2])
            text = self._wait_content(address, 15)
            if text is None:
                continue
            try:
                found = desc.decrypt_descriptor(text, address, time_period_numbers=(period, period + 1, period - 1),
                                                period_length=ring.timing.period_length, now=now)
            except desc.DescriptorError as exc:
                log.warning("%s.onion: cannot read what the HSDirs serve: %s", address, exc)
                continue
            if is_ours(found):
                continue
            self.counter += 1
            hostile = hostile_descriptor(identity, found.time_period_number, found.period_length,
                                         found.intro_points, REVISION_FLOOR + self.counter, now)
            slot = next((s for s in ring.descriptor_slots() if s.time_period_number == found.time_period_number),
                        None)
            if slot is None:
                continue
            blinded = identity.blind(slot.time_period_number, slot.period_length).public_key
            hsdirs = list(dict.fromkeys(h.fingerprint for h in ring.responsible_hsdirs(blinded, slot)))
            for hsdir in hsdirs:
                try:
                    self.control.post_descriptor(hostile, address, hsdir)
                except ValueError as exc:
                    log.warning("HSPOST to %s refused: %s", hsdir, exc)
            self.uploads += 1
            log.info("%s.onion: replaced tor's descriptor (period %d, %d intro points) on %d HSDirs "
                     "by a %d-byte one with padded link specifiers (upload %d; so far the HSDirs "
                     "stored %d and refused %d of ours)", address, found.time_period_number,
                     len(found.intro_points), len(hsdirs), len(hostile), self.uploads,
                     self.confirmed, self.rejected)

    def run(self, interval: float = 5.0) -> None:
        self.control.connect()
        while True:
            try:
                self.round()
            except Exception:  # noqa: BLE001 - a lab helper: log, go on
                log.exception("round failed")
            time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-port", type=int, required=True, help="a lab tor's control port")
    parser.add_argument("hs_dirs", nargs="+", type=Path, help="the worker's tor hidden-service dirs")
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import stem.util.log  # noqa: F401 - sets the "stem" logger's level on import: set ours after

    logging.getLogger("stem").setLevel(logging.WARNING)
    HostilePublisher(args.control_port, args.hs_dirs).run(args.interval)
    return 0


def worker_hs_dirs(worker) -> list[Path]:
    """The hidden-service dirs (instance keys) of a lab worker."""
    return sorted(p.parent for p in Path(worker.root).glob("**/hs/*/hs_ed25519_secret_key"))


def start_hostile_publisher(lab, worker, name: str = "hostile") -> str:
    """A tor of its own on the lab network and the publisher for `worker`'s instances, as
    lab processes (stopped with the lab). Returns the publisher's process name."""
    import os

    from lab.tornet import wait_bootstrapped

    node = lab.net.add_tor(lab.procs, lab.ports, f"tor{name}"[:19], [])  # started by add_tor

    wait_bootstrapped(lab.net, lab.procs, node, 180)
    repo = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "lab.hostile", "--control-port", str(node.control_port),
            *map(str, worker_hs_dirs(worker))]
    lab.procs.start(name, argv, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    return name


if __name__ == "__main__":
    sys.exit(main())
