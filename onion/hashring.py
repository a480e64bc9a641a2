"""The v3 HSDir hash ring: time periods, shared random values, responsible HSDirs.

Everything follows tor's code (hs_common.c, shared_random_state.c, nodelist.c) rather
than hard-coded production numbers, so a private test network works without a flag:

* voting interval = consensus fresh-until - valid-after;
* time-period length = `hsdir-interval` consensus param (default 1440 minutes), or on a
  test network 24 x voting interval (one SRV protocol run), as tor does under
  `TestingTorNetwork`;
* rotation offset = 12 x voting interval (one SRV phase);
* "now" is the consensus valid-after, as in tor.

Typical balancer use::

    ring = ring_for(consensus, ed25519_ids)        # cached per consensus
    for slot in ring.descriptor_slots():           # first and second descriptor
        blinded = identity.blind(slot.time_period_number, slot.period_length)
        hsdirs = ring.responsible_hsdirs(blinded.public_key, slot)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from onion.errors import ConsensusError

__all__ = [
    "NetworkTiming", "DescriptorSlot", "HSDir", "HashRing", "ring_for",
    "disaster_srv", "hs_index", "hsdir_index", "ConsensusError",
    "DEFAULT_PERIOD_LENGTH", "DEFAULT_N_REPLICAS", "DEFAULT_SPREAD_STORE",
]

DEFAULT_PERIOD_LENGTH = 1440   # minutes; tor HS_TIME_PERIOD_LENGTH_DEFAULT
DEFAULT_N_REPLICAS = 2         # hsdir_n_replicas
DEFAULT_SPREAD_STORE = 4       # hsdir_spread_store
SRV_ROUNDS_PER_PHASE = 12      # SHARED_RANDOM_N_ROUNDS
SRV_PHASES = 2                 # SHARED_RANDOM_N_PHASES


@dataclass(frozen=True)
class NetworkTiming:
    """Time parameters of a consensus, as tor derives them."""

    valid_after: int          # unix seconds; tor's "now" for HS computations
    voting_interval: int      # seconds
    period_length: int        # minutes
    rotation_offset: int      # minutes (12 voting intervals)
    testing_network: bool

    @classmethod
    def from_consensus(cls, consensus, *, testing_network: bool | None = None) -> "NetworkTiming":
        """From a stem `NetworkStatusDocumentV3`.

        `testing_network`: whether the tor using this consensus runs with
        `TestingTorNetwork 1` (then the period is one SRV run, not `hsdir-interval`).
        None = guess: a voting interval other than 3600 s means a test network.
        Pass the real value when known (`GETCONF TestingTorNetwork`).
        """
        raise NotImplementedError

    def time_period_number(self, when: int | None = None) -> int:
        """tor's hs_get_time_period_num (default: at `valid_after`)."""
        raise NotImplementedError

    def time_period_start(self, number: int) -> int:
        """Unix time at which time period `number` starts."""
        raise NotImplementedError

    def srv_run_start(self) -> int:
        """Start of the current SRV protocol run (unix seconds)."""
        raise NotImplementedError

    def in_period_between_tp_and_srv(self) -> bool:
        """tor's hs_in_period_between_tp_and_srv: after a new time period started but
        before the next SRV (production: 12:00-24:00 UTC)."""
        raise NotImplementedError


@dataclass(frozen=True)
class DescriptorSlot:
    """Which time period and SRV one of a service's two descriptors uses (tor's rules)."""

    which: str                # "first" (tor's desc_current) or "second" (desc_next)
    time_period_number: int
    period_length: int        # minutes
    srv: bytes                # the shared random value of the HSDir indexes
    revision_base: int        # unix start of the SRV run its revision counter counts from


@dataclass(frozen=True)
class HSDir:
    """A relay with the HSDir flag and a known ed25519 identity."""

    fingerprint: str          # 40 hex chars, upper case
    nickname: str
    ed25519_id: bytes         # 32 bytes, from its microdescriptor's `id ed25519`


class HashRing:
    """Responsible HSDirs for one consensus; sorted rings cached per (period, SRV)."""

    def __init__(self, timing: NetworkTiming, hsdirs: Sequence[HSDir], *,
                 srv_current: bytes | None, srv_previous: bytes | None,
                 n_replicas: int = DEFAULT_N_REPLICAS,
                 spread_store: int = DEFAULT_SPREAD_STORE) -> None:
        raise NotImplementedError

    @classmethod
    def from_consensus(cls, consensus, ed25519_ids: Mapping[str, bytes | str], *,
                       testing_network: bool | None = None) -> "HashRing":
        """From a stem consensus (full or microdesc flavour) and a mapping relay fingerprint
        -> ed25519 identity (32 bytes or unpadded base64, as in a microdescriptor's
        `id ed25519`). Relays without HSDir flag, without an ed25519 identity or without
        HSDir=2 support (when the consensus lists protocols) are not in the ring."""
        raise NotImplementedError

    @property
    def timing(self) -> NetworkTiming:
        raise NotImplementedError

    @property
    def hsdirs(self) -> tuple[HSDir, ...]:
        raise NotImplementedError

    def current_srv(self, period_number: int) -> bytes:
        """The consensus' current SRV, or the disaster SRV for `period_number`."""
        raise NotImplementedError

    def previous_srv(self, period_number: int) -> bytes:
        """The consensus' previous SRV, or the disaster SRV for `period_number`."""
        raise NotImplementedError

    def descriptor_slots(self) -> tuple[DescriptorSlot, DescriptorSlot]:
        """The (first, second) descriptors a service publishes now (hs_service.c)."""
        raise NotImplementedError

    def responsible_hsdirs(self, blinded_key: bytes, slot: DescriptorSlot) -> list[HSDir]:
        """The HSDirs that store the descriptor of `blinded_key` for `slot`, in replica order:
        for each replica, `spread_store` distinct relays from the first one whose index
        follows the replica's hs_index on the ring."""
        raise NotImplementedError


def ring_for(consensus, ed25519_ids: Mapping[str, bytes | str], *,
             testing_network: bool | None = None) -> HashRing:
    """`HashRing.from_consensus`, cached for the last few consensuses."""
    raise NotImplementedError


def disaster_srv(period_number: int, period_length: int) -> bytes:
    """SHA3-256("shared-random-disaster" | INT_8(period_length) | INT_8(period_number))."""
    raise NotImplementedError


def hs_index(blinded_key: bytes, replica: int, period_number: int, period_length: int) -> bytes:
    """SHA3-256("store-at-idx" | blinded key | INT_8(replica) | INT_8(length) | INT_8(period))."""
    raise NotImplementedError


def hsdir_index(ed25519_id: bytes, srv: bytes, period_number: int, period_length: int) -> bytes:
    """SHA3-256("node-idx" | ed25519 id | SRV | INT_8(period) | INT_8(length))."""
    raise NotImplementedError
