"""v3 onion service descriptors: build master descriptors, decrypt and verify instance ones.

Layers (rend-spec-v3 [DESC-OUTER], [HS-DESC-FIRST-LAYER], [HS-DESC-SECOND-LAYER]):
outer plaintext signed by the descriptor-signing key, whose certificate is signed by the
blinded key; a superencrypted middle layer (padded to a multiple of 10000 bytes as tor
does); an encrypted inner layer with `create2-formats`, `flow-control` and the
introduction points.

Typical balancer use::

    desc = decrypt_descriptor(text, instance_address, time_period_numbers=(tp1, tp2),
                              period_length=ring.timing.period_length,
                              last_revision_counter=seen.get(instance_address))
    ...
    builder = MasterDescriptorBuilder(identity, time_period_number=slot.time_period_number,
                                      period_length=slot.period_length)
    text = builder.build(intro_points, revision_counter=revision_counter(
        builder.blinded_key, slot.revision_base, now)).text
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from onion.errors import (
    BlindedKeyMismatchError, CertificateError, CertificateExpiredError, DescriptorDecryptionError,
    DescriptorError, DescriptorFormatError, DescriptorSignatureError, DescriptorTooLargeError,
    RevisionCounterError, TooManyIntroPointsError,
)
from onion.keys import BlindedKey, IdentityKey

__all__ = [
    "LinkSpecifier", "IntroPoint", "MasterDescriptor", "MasterDescriptorBuilder",
    "DecryptedDescriptor", "build_master_descriptor", "decrypt_descriptor", "revision_counter",
    "MAX_INTRO_POINTS", "DEFAULT_LIFETIME_MINUTES", "MAX_DESCRIPTOR_SIZE",
    "DescriptorError", "DescriptorFormatError", "DescriptorTooLargeError",
    "TooManyIntroPointsError", "CertificateError", "CertificateExpiredError",
    "BlindedKeyMismatchError", "DescriptorSignatureError", "DescriptorDecryptionError",
    "RevisionCounterError",
]

MAX_INTRO_POINTS = 20               # tor: HS_CONFIG_V3_MAX_INTRO_POINTS; clients reject more
DEFAULT_LIFETIME_MINUTES = 180      # tor: HS_DESC_DEFAULT_LIFETIME
SIGNING_CERT_LIFETIME_HOURS = 54    # tor: HS_DESC_CERT_LIFETIME
MAX_DESCRIPTOR_SIZE = 50000         # tor: HS_DESC_MAX_LEN (consensus HSV3MaxDescriptorSize)
SUPERENCRYPTED_PAD_MULTIPLE = 10000  # tor: HS_DESC_SUPERENC_PLAINTEXT_PAD_MULTIPLE


@dataclass(frozen=True)
class LinkSpecifier:
    """One link specifier of an introduction point (tor-spec [EXTEND2]).

    type 0: IPv4 (4-byte address + 2-byte port), 1: IPv6 (16 + 2), 2: legacy RSA identity
    (20 bytes), 3: ed25519 identity (32 bytes). Unknown types are kept verbatim.
    """

    type: int
    data: bytes

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class IntroPoint:
    """An introduction point as published in a descriptor's inner layer.

    Holds everything needed to re-emit it in another (master) descriptor: the
    certificates are re-made there with the master's descriptor-signing key, as
    OnionBalance does. Identity for `==`/`hash` is `auth_key` only: an instance that
    keeps the same intro relay with a new auth key has a new introduction point.
    """

    link_specifiers: tuple[LinkSpecifier, ...]
    onion_key: bytes                 # curve25519 ntor key of the intro relay (32 bytes)
    auth_key: bytes                  # ed25519 intro-point authentication key (32 bytes)
    enc_key: bytes                   # curve25519 encryption key (32 bytes)
    legacy_key: bytes | None = None       # DER RSA-1024 key, only for pre-0.3.2 intro relays
    legacy_key_cert: bytes | None = None  # its cross-certificate (not re-emittable: see docs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntroPoint) and other.auth_key == self.auth_key

    def __hash__(self) -> int:
        return hash(self.auth_key)


@dataclass(frozen=True)
class MasterDescriptor:
    """A built descriptor, ready for `HSPOST`."""

    text: str
    blinded_key: bytes               # the HSDir hash ring position of this descriptor
    time_period_number: int
    period_length: int
    revision_counter: int
    intro_points: tuple[IntroPoint, ...]
    signing_key_expiry: _dt.datetime


@dataclass(frozen=True)
class DecryptedDescriptor:
    """A verified, decrypted descriptor of another service (an instance)."""

    address: str                     # 56 chars, no `.onion`
    blinded_key: bytes
    time_period_number: int
    period_length: int
    revision_counter: int
    lifetime_minutes: int
    signing_key: bytes               # the descriptor-signing key (ed25519 public)
    signing_key_expiry: _dt.datetime
    intro_points: tuple[IntroPoint, ...]
    create2_formats: tuple[int, ...] = ()
    flow_control: str | None = None
    single_onion: bool = False
    extra_lines: tuple[str, ...] = field(default=())  # inner-layer lines we do not interpret


class MasterDescriptorBuilder:
    """Builds descriptors of one identity for one time period, fast enough to build a
    distinct descriptor per HSDir: the blinded key, the descriptor-signing key and its
    certificate, and each intro point's re-made certificates are computed once.
    """

    def __init__(self, identity: IdentityKey, *, time_period_number: int, period_length: int,
                 lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES, now: float | None = None,
                 single_onion: bool = False) -> None:
        raise NotImplementedError

    @property
    def blinded_key(self) -> BlindedKey:
        raise NotImplementedError

    @property
    def signing_key_expiry(self) -> _dt.datetime:
        raise NotImplementedError

    def build(self, intro_points: Sequence[IntroPoint], *, revision_counter: int) -> MasterDescriptor:
        """Build, sign and encrypt one descriptor. Raises `TooManyIntroPointsError` above 20
        and `DescriptorTooLargeError` if the result exceeds 50000 bytes."""
        raise NotImplementedError


def build_master_descriptor(identity: IdentityKey, intro_points: Sequence[IntroPoint], *,
                            time_period_number: int, period_length: int, revision_counter: int,
                            lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES,
                            now: float | None = None) -> MasterDescriptor:
    """One-shot `MasterDescriptorBuilder(...).build(...)`."""
    raise NotImplementedError


def decrypt_descriptor(text: str | bytes, address: str, *,
                       time_period_numbers: int | Iterable[int], period_length: int,
                       now: float | None = None, last_revision_counter: int | None = None,
                       max_size: int = MAX_DESCRIPTOR_SIZE) -> DecryptedDescriptor:
    """Verify and decrypt a descriptor of `address` (e.g. fetched with HSFETCH).

    Checks, in order, each with its own `DescriptorError` subclass: size
    (`DescriptorTooLargeError`), syntax (`DescriptorFormatError`), the signing-key
    certificate (type, signature by its embedded key: `CertificateError`; expiry at
    `now`: `CertificateExpiredError`), that the certifying key is the blinded key of
    `address` for one of `time_period_numbers` (`BlindedKeyMismatchError`), the outer
    signature (`DescriptorSignatureError`), the revision counter against
    `last_revision_counter` (must be greater: `RevisionCounterError`), the layers' MACs
    (`DescriptorDecryptionError`), the intro points (`DescriptorFormatError`,
    `TooManyIntroPointsError`, `CertificateError` for their certs).
    """
    raise NotImplementedError


def revision_counter(blinded_key: BlindedKey, revision_base: int, now: float) -> int:
    """Tor's revision counter: OPE-encrypt the seconds since `revision_base` (+1).

    `revision_base` is the start of the SRV protocol run the descriptor's period uses
    (`hashring.DescriptorSlot.revision_base`). The result depends only on the blinded key
    and the clock, so it grows across restarts, agrees between balancers sharing a key,
    and continues the counters of a tor that published with the same key before.
    """
    raise NotImplementedError
