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

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import hmac
import ipaddress
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# numpy and pybase64 are optional: the balancer's install needs neither. With them a
# descriptor build is faster (bench/optional_deps.py prints by how much); without them the
# standard library builds byte-for-byte the same descriptors (tests/test_onion_optional_deps.py).
try:
    import numpy as _np
except ImportError:  # pragma: no cover - exercised by the optional-deps tests in a child
    _np = None
try:
    import pybase64
    _b64encode = pybase64.b64encode
except ImportError:  # pragma: no cover - idem
    pybase64 = None

    def _b64encode(data) -> bytes:
        return binascii.b2a_base64(data, newline=False)

from onion import crypto
from onion.errors import (
    BlindedKeyMismatchError, CertificateError, CertificateExpiredError, DescriptorDecryptionError,
    DescriptorError, DescriptorFormatError, DescriptorSignatureError, DescriptorTooLargeError,
    RevisionCounterError, TooManyIntroPointsError,
)
from onion.keys import BlindedKey, IdentityKey, parse_address, onion_address

__all__ = [
    "LinkSpecifier", "IntroPoint", "MasterDescriptor", "MasterDescriptorBuilder",
    "DecryptedDescriptor", "build_master_descriptor", "decrypt_descriptor", "revision_counter",
    "MAX_INTRO_POINTS", "DEFAULT_LIFETIME_MINUTES", "MAX_DESCRIPTOR_SIZE", "intro_point_problem",
    "DescriptorError", "DescriptorFormatError", "DescriptorTooLargeError",
    "TooManyIntroPointsError", "CertificateError", "CertificateExpiredError",
    "BlindedKeyMismatchError", "DescriptorSignatureError", "DescriptorDecryptionError",
    "RevisionCounterError",
]

MAX_INTRO_POINTS = 20               # tor: HS_CONFIG_V3_MAX_INTRO_POINTS; clients reject more
DEFAULT_LIFETIME_MINUTES = 180      # tor: HS_DESC_DEFAULT_LIFETIME
MAX_LIFETIME_MINUTES = 720          # tor: HS_DESC_MAX_LIFETIME
SIGNING_CERT_LIFETIME_HOURS = 54    # tor: HS_DESC_CERT_LIFETIME
MAX_DESCRIPTOR_SIZE = 50000         # tor: HS_DESC_MAX_LEN (consensus HSV3MaxDescriptorSize)
SUPERENCRYPTED_PAD_MULTIPLE = 10000  # tor: HS_DESC_SUPERENC_PLAINTEXT_PAD_MULTIPLE
FAKE_AUTH_CLIENTS = 16              # tor: HS_DESC_AUTH_CLIENT_MULTIPLE
DEFAULT_FLOW_CONTROL = "1-2 31"     # tor 0.4.8+: protover FlowCtrl=1-2, sendme_inc 31

CERT_TYPE_DESC_SIGNING = 0x08       # CERT_TYPE_SIGNING_HS_DESC
CERT_TYPE_INTRO_AUTH = 0x09         # CERT_TYPE_AUTH_HS_IP_KEY
CERT_TYPE_INTRO_ENC = 0x0B          # CERT_TYPE_CROSS_HS_IP_KEYS
_CERT_KEY_TYPE_ED25519 = 1
_CERTEXT_SIGNED_WITH_KEY = 4
_CERTEXT_FLAG_AFFECTS_VALIDATION = 1

_SIG_PREFIX = b"Tor onion service descriptor sig v3"
_END_MESSAGE = b"-----END MESSAGE-----"
_END_MESSAGE_LINE = b"-----END MESSAGE-----\n"
_SIGNATURE_LINE_SIZE = len(b"signature \n") + 86  # an ed25519 signature: 86 base64 characters
_SUPERENC_CONSTANT = b"hsdir-superencrypted-data"
_ENC_CONSTANT = b"hsdir-encrypted-data"
_SALT_LEN, _MAC_LEN, _KEY_LEN, _IV_LEN = 16, 32, 32, 16

LS_IPV4, LS_IPV6, LS_LEGACY_ID, LS_ED25519_ID = 0, 1, 2, 3
_LS_LENGTHS = {LS_IPV4: 6, LS_IPV6: 18, LS_LEGACY_ID: 20, LS_ED25519_ID: 32}


# --- data ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkSpecifier:
    """One link specifier of an introduction point (tor-spec [EXTEND2]).

    type 0: IPv4 (4-byte address + 2-byte port), 1: IPv6 (16 + 2), 2: legacy RSA identity
    (20 bytes), 3: ed25519 identity (32 bytes). Unknown types are kept verbatim.
    """

    type: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 255:
            raise DescriptorFormatError(f"link specifier type {self.type} is not a byte")
        if len(self.data) > 255:
            raise DescriptorFormatError(f"link specifier of type {self.type} is {len(self.data)} "
                                        "bytes, at most 255 fit")
        want = _LS_LENGTHS.get(self.type)
        if want is not None and len(self.data) != want:
            raise DescriptorFormatError(f"link specifier of type {self.type} must be {want} bytes, "
                                        f"got {len(self.data)}")

    @classmethod
    def ipv4(cls, address: str, port: int) -> "LinkSpecifier":
        return cls(LS_IPV4, ipaddress.IPv4Address(address).packed + struct.pack(">H", port))

    @classmethod
    def ipv6(cls, address: str, port: int) -> "LinkSpecifier":
        return cls(LS_IPV6, ipaddress.IPv6Address(address).packed + struct.pack(">H", port))

    @classmethod
    def legacy_id(cls, fingerprint: str | bytes) -> "LinkSpecifier":
        raw = bytes.fromhex(fingerprint.lstrip("$")) if isinstance(fingerprint, str) else fingerprint
        return cls(LS_LEGACY_ID, raw)

    @classmethod
    def ed25519_id(cls, key: bytes) -> "LinkSpecifier":
        return cls(LS_ED25519_ID, key)

    def encode(self) -> bytes:
        return bytes([self.type, len(self.data)]) + self.data

    def __repr__(self) -> str:
        if self.type == LS_IPV4:
            return f"LinkSpecifier.ipv4({str(ipaddress.IPv4Address(self.data[:4]))!r}, {int.from_bytes(self.data[4:], 'big')})"
        if self.type == LS_IPV6:
            return f"LinkSpecifier.ipv6({str(ipaddress.IPv6Address(self.data[:16]))!r}, {int.from_bytes(self.data[16:], 'big')})"
        if self.type == LS_LEGACY_ID:
            return f"LinkSpecifier.legacy_id({self.data.hex().upper()!r})"
        return f"LinkSpecifier(type={self.type}, data={self.data.hex()})"


# What a tor onion service puts in an intro point's link specifiers: hs_service.c takes
# them from nodelist.c node_get_link_specifier_smartlist(): IPv4 and the legacy RSA
# identity always, the ed25519 identity when the relay has one, IPv6 when it has one. Each
# type once, so at most 4, every one of a known type and fixed length (tor's trunnel parser,
# ed25519_cert.trunnel `struct link_specifier`, enforces the lengths of known types and
# keeps unknown types as opaque bytes, which clients then ignore: hs_common.c
# hs_get_extend_info_from_lspecs). A client cannot use an intro point without IPv4 and
# legacy id (ibid.).
TOR_MAX_LINK_SPECIFIERS = 4


def intro_point_problem(ip: "IntroPoint") -> str | None:
    """Why tor would never have produced this intro point, or None. An instance whose
    descriptor has one is broken or hostile: padded link specifiers of unknown types are
    how one ~41 kB instance descriptor made every master descriptor too large to publish."""
    specs = ip.link_specifiers
    types = [spec.type for spec in specs]
    if len(specs) > TOR_MAX_LINK_SPECIFIERS:
        return (f"{len(specs)} link specifiers; tor services make at most "
                f"{TOR_MAX_LINK_SPECIFIERS} (IPv4, legacy id, ed25519 id, IPv6)")
    unknown = sorted({t for t in types if t not in _LS_LENGTHS})
    if unknown:
        return (f"link specifier type(s) {', '.join(map(str, unknown))} that tor services never "
                "make (they make types 0-3)")
    if len(set(types)) != len(types):
        return "a link specifier type appears twice; tor services list each once"
    if LS_IPV4 not in types or LS_LEGACY_ID not in types:
        return "no IPv4 or no legacy-id link specifier; tor clients cannot use such an intro point"
    return None


def encode_link_specifiers(specs: Sequence[LinkSpecifier]) -> bytes:
    if not 1 <= len(specs) <= 255:
        raise DescriptorFormatError(f"an introduction point needs 1..255 link specifiers, got {len(specs)}")
    out = bytearray((len(specs),))
    for spec in specs:
        data = spec.data
        out.append(spec.type)
        out.append(len(data))
        out += data
    return bytes(out)


def decode_link_specifiers(raw: bytes) -> tuple[LinkSpecifier, ...]:
    if not raw:
        raise DescriptorFormatError("introduction-point link specifiers are empty")
    count, pos, out = raw[0], 1, []
    for i in range(count):
        if pos + 2 > len(raw):
            raise DescriptorFormatError(f"introduction-point link specifier {i + 1} of {count} is truncated")
        ls_type, ls_len = raw[pos], raw[pos + 1]
        data = raw[pos + 2:pos + 2 + ls_len]
        if len(data) != ls_len:
            raise DescriptorFormatError(f"introduction-point link specifier {i + 1} of {count} is truncated")
        out.append(LinkSpecifier(ls_type, data))
        pos += 2 + ls_len
    if pos != len(raw):
        raise DescriptorFormatError(f"introduction-point link specifiers have {len(raw) - pos} "
                                    "trailing bytes")
    if not out:
        raise DescriptorFormatError("introduction-point has no link specifiers")
    return tuple(out)


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
    # The ed25519 form of enc_key that the instance's enc-key-cert certified (tor: sign bit
    # 0). Re-certified as is, like OnionBalance; derived from enc_key when None.
    enc_key_ed25519: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "link_specifiers", tuple(self.link_specifiers))
        if self.enc_key_ed25519 is None:
            object.__setattr__(self, "enc_key_ed25519",
                               crypto.curve25519_to_ed25519_public(self.enc_key))
        for name in ("onion_key", "auth_key", "enc_key", "enc_key_ed25519"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
                raise DescriptorFormatError(f"introduction point {name} must be 32 bytes, got "
                                            f"{len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntroPoint) and other.auth_key == self.auth_key

    def wire_head(self) -> bytes:
        """This intro point's text up to its auth-key certificate (`introduction-point`,
        `onion-key`, `auth-key` and the certificate's BEGIN line): the same under every
        descriptor-signing key, so computed once per IntroPoint and kept on it (a publish
        cycle puts each intro point in several distinct descriptors of several builders).
        The rest, from the certificate on, is the builder's (`_certify`)."""
        cache = self.__dict__
        head = cache.get("_wire_head")
        if head is None:
            specs = self.link_specifiers
            if not 1 <= len(specs) <= 255:
                encode_link_specifiers(specs)  # raises the precise error
            raw = bytearray((len(specs),))  # encode_link_specifiers, inlined (20 per build)
            for spec in specs:
                data = spec.data
                raw.append(spec.type)
                raw.append(len(data))
                raw += data
            b2a = binascii.b2a_base64  # each value ends its line: b2a's NL is that line's end
            head = b"".join((b"introduction-point ", b2a(raw), b"onion-key ntor ",
                             b2a(self.onion_key), b"auth-key\n-----BEGIN ED25519 CERT-----\n"))
            cache["_wire_head"] = head  # frozen dataclass: a cache, not state
        return head

    def __hash__(self) -> int:
        return hash(self.auth_key)

    def __repr__(self) -> str:
        return f"IntroPoint(auth_key={base64.b64encode(self.auth_key).decode()[:12]}..., link_specifiers={list(self.link_specifiers)})"


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


# --- encoding helpers -----------------------------------------------------------------------

def _b64_lines(data: bytes) -> bytes:
    """tor's base64_encode(..., BASE64_ENCODE_MULTILINE): 64 columns, every line ends in NL."""
    out = bytearray(_b64_lines_size(len(data)))
    _b64_lines_into(out, 0, data)
    return bytes(out)


def _b64_lines_size(n: int) -> int:
    """The length of `_b64_lines` of n bytes: 4 characters per 3 bytes (the last 3 padded),
    and a NL after every 64 characters and after the last line."""
    chars = 4 * -(-n // 3)
    return chars + -(-chars // 64)


_V64 = _np.dtype("V64") if _np is not None else None  # one 64-character line as one numpy item


def _b64_lines_into(out: bytearray, offset: int, data: bytes) -> None:
    """Write `_b64_lines(data)` into `out` at `offset` (`_b64_lines_size(len(data))` bytes):
    a layer's lines go straight into the text that holds them, with no copy to join.

    Why pybase64 and numpy: binascii's encoder (~1.4 ns/byte here) was, after SHA3 and
    SHA-512, the largest cost of a descriptor; pybase64's SIMD encoder is ~20x faster. The
    full lines are then copied as 64-byte items into rows 65 bytes apart, one numpy call
    (~15 ns a line; as a (lines, 64) uint8 grid it is ~1.3x that, a struct split + join
    ~2x), and the NLs set by one strided assignment.
    """
    encoded = _b64encode(data)
    full, rest = divmod(len(encoded), 64)
    end = offset + full * 65
    if _np is not None:
        _np.ndarray((full,), _V64, out, offset, (65,))[...] = _np.frombuffer(encoded, _V64, full)
        _np.frombuffer(out, _np.uint8)[offset + 64:end:65] = 10
    elif full:  # the standard library: the same bytes, a join of 64-character slices
        lines = b"\n".join([encoded[i:i + 64] for i in range(0, full * 64, 64)])
        out[offset:end - 1] = lines
        out[end - 1] = 10
    if rest:
        out[end:end + rest] = encoded[full * 64:]
        out[end + rest] = 10


def _b64_cert_lines(cert: bytes) -> bytes:
    """`_b64_lines` for a short blob (a 140-byte certificate): base64 turns every 48 input
    bytes into one full 64-column line, so three small C calls replace the split."""
    if len(cert) == 140:  # every certificate we make: 48 + 48 + 44 bytes
        b2a = binascii.b2a_base64
        return b2a(cert[:48]) + b2a(cert[48:96]) + b2a(cert[96:])
    return b"".join([binascii.b2a_base64(cert[i:i + 48]) for i in range(0, len(cert), 48)])


def _b64_multiline(data: bytes) -> str:
    return _b64_lines(data).decode("ascii")


def _b64_decode(text: str, what: str) -> bytes:
    cleaned = "".join(text.split())
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise DescriptorFormatError(f"{what} is not valid base64") from None


@functools.lru_cache(maxsize=64)  # every builder made within the same hour asks for the same
def _hours_to_datetime(hours: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(hours * 3600, _dt.timezone.utc)


# --- ed25519 certificates (cert-spec.txt) ----------------------------------------------------

_CERT_HEAD = struct.Struct(">BBIB")  # version 1, type, expiry hours, certified key type
# One extension: signed-with-ed25519-key (32 bytes, no flags), the signer's key follows.
_CERT_EXT_SIGNED_WITH_KEY = b"\x01" + struct.pack(">HBB", 32, _CERTEXT_SIGNED_WITH_KEY, 0)


def make_certificate(cert_type: int, certified_key: bytes, expiry_hours: int,
                     signer_public: bytes, sign) -> bytes:
    """An ed25519 cert with the signed-with-ed25519-key extension, as tor makes them."""
    body = b"".join((_CERT_HEAD.pack(1, cert_type, expiry_hours, _CERT_KEY_TYPE_ED25519),
                     certified_key, _CERT_EXT_SIGNED_WITH_KEY, signer_public))
    return body + sign(body)


@dataclass(frozen=True)
class Certificate:
    cert_type: int
    expiry_hours: int
    certified_key: bytes
    signing_key: bytes | None
    body: bytes
    signature: bytes

    @property
    def expiry(self) -> _dt.datetime:
        return _hours_to_datetime(self.expiry_hours)

    def check(self, expected_type: int, what: str, *, signer: bytes | None = None,
              now: float | None = None) -> None:
        """tor's cert_is_valid + tor_cert_checksig: type, embedded signer, signature, expiry."""
        if self.cert_type != expected_type:
            raise CertificateError(f"{what} certificate has type 0x{self.cert_type:02x}, "
                                   f"expected 0x{expected_type:02x}")
        if self.signing_key is None:
            raise CertificateError(f"{what} certificate does not include its signing key")
        key = self.signing_key if signer is None else signer
        if now is not None and now > self.expiry_hours * 3600:
            raise CertificateExpiredError(
                f"{what} certificate expired at {self.expiry:%Y-%m-%d %H:%M} UTC")
        if not crypto.verify(key, self.body, self.signature):
            raise CertificateError(f"{what} certificate has a bad signature")


def parse_certificate(raw: bytes, what: str) -> Certificate:
    if len(raw) < 40 + 64:
        raise CertificateError(f"{what} certificate is truncated ({len(raw)} bytes)")
    version, cert_type, expiry_hours, key_type = struct.unpack(">BBIB", raw[:7])
    if version != 1:
        raise CertificateError(f"{what} certificate has version {version}, expected 1")
    certified_key = raw[7:39]
    n_ext, pos = raw[39], 40
    signing_key = None
    for _ in range(n_ext):
        if pos + 4 > len(raw) - 64:
            raise CertificateError(f"{what} certificate extensions are truncated")
        ext_len, ext_type, ext_flags = struct.unpack(">HBB", raw[pos:pos + 4])
        data = raw[pos + 4:pos + 4 + ext_len]
        if len(data) != ext_len or pos + 4 + ext_len > len(raw) - 64:
            raise CertificateError(f"{what} certificate extensions are truncated")
        if ext_type == _CERTEXT_SIGNED_WITH_KEY:
            if ext_len != 32 or signing_key is not None:
                raise CertificateError(f"{what} certificate has a malformed signed-with-key extension")
            signing_key = data
        elif ext_flags & _CERTEXT_FLAG_AFFECTS_VALIDATION:
            raise CertificateError(f"{what} certificate has unknown extension {ext_type} that "
                                   "affects validation")
        pos += 4 + ext_len
    if len(raw) - pos != 64:
        raise CertificateError(f"{what} certificate has {len(raw) - pos - 64} stray bytes")
    return Certificate(cert_type, expiry_hours, certified_key, signing_key, raw[:pos], raw[pos:])


# --- layer encryption (rend-spec-v3 [HS-DESC-ENCRYPTION-KEYS]) -----------------------------

@functools.lru_cache(maxsize=1024)  # per identity: the same few keys, every period and build
def _credential(public_key: bytes) -> bytes:
    return hashlib.sha3_256(b"credential" + public_key).digest()


def subcredential(public_key: bytes, blinded_key: bytes) -> bytes:
    credential = _credential(public_key)
    return hashlib.sha3_256(b"".join((b"subcredential", credential, blinded_key))).digest()


_U64 = struct.Struct(">Q")


def _layer_keys(secret_data: bytes, subcred: bytes, revision: int, salt: bytes,
                constant: bytes) -> tuple[bytes, bytes, bytes]:
    keys = hashlib.shake_256(b"".join((secret_data, subcred, _U64.pack(revision), salt, constant))
                             ).digest(_KEY_LEN + _IV_LEN + _MAC_LEN)
    return keys[:_KEY_LEN], keys[_KEY_LEN:_KEY_LEN + _IV_LEN], keys[_KEY_LEN + _IV_LEN:]


def _mac(mac_key: bytes, salt: bytes, ciphertext: bytes) -> bytes:
    # update() rather than +: the ciphertext is 15-30 kB and would be copied first.
    h = hashlib.sha3_256(b"".join((_U64.pack(len(mac_key)), mac_key, _U64.pack(len(salt)), salt)))
    h.update(ciphertext)
    return h.digest()


def encrypt_layer(plaintext: bytes, constant: bytes, secret_data: bytes, subcred: bytes,
                  revision: int, *, salt: bytes | None = None) -> bytearray:
    """salt | AES-256-CTR ciphertext | SHA3 MAC, written into one buffer (no copies of
    the 15-30 kB ciphertext). `salt`: 16 fresh random bytes, if the caller has drawn them
    (else os.urandom)."""
    if salt is None:
        salt = os.urandom(_SALT_LEN)
    elif len(salt) != _SALT_LEN:
        raise ValueError(f"a layer's salt is {_SALT_LEN} bytes, got {len(salt)}")
    key, iv, mac_key = _layer_keys(secret_data, subcred, revision, salt, constant)
    n = len(plaintext)
    out = bytearray(_SALT_LEN + n + _MAC_LEN)  # update_into needs 15 spare bytes: the MAC's
    out[:_SALT_LEN] = salt
    view = memoryview(out)
    Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update_into(plaintext, view[_SALT_LEN:])
    out[_SALT_LEN + n:] = _mac(mac_key, salt, view[_SALT_LEN:_SALT_LEN + n])
    return out


def decrypt_layer(blob: bytes, constant: bytes, secret_data: bytes, subcred: bytes,
                  revision: int, what: str) -> str:
    if len(blob) <= _SALT_LEN + _MAC_LEN:
        raise DescriptorFormatError(f"{what} is too short ({len(blob)} bytes) to hold salt, data and MAC")
    salt, ciphertext, mac = blob[:_SALT_LEN], blob[_SALT_LEN:-_MAC_LEN], blob[-_MAC_LEN:]
    key, iv, mac_key = _layer_keys(secret_data, subcred, revision, salt, constant)
    if not hmac.compare_digest(_mac(mac_key, salt, ciphertext), mac):
        raise DescriptorDecryptionError(
            f"{what} MAC does not match: wrong address or time period, or altered data")
    dec = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
    plaintext = dec.update(ciphertext) + dec.finalize()
    end = plaintext.find(b"\x00")
    if end != -1:
        plaintext = plaintext[:end]
    if not plaintext:
        raise DescriptorFormatError(f"{what} is empty")
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise DescriptorFormatError(f"{what} is not text") from None


# --- tokenizer --------------------------------------------------------------------------------

@dataclass
class _Item:
    keyword: str
    args: list[str]
    obj_type: str | None = None
    obj: bytes | None = None
    line: int = 0


def _tokenize(text: str, what: str) -> list[_Item]:
    """Split a descriptor section into keyword lines with optional PEM-style objects."""
    items: list[_Item] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.startswith("-----"):
            raise DescriptorFormatError(f"{what} line {i}: object without a keyword")
        parts = line.split()
        item = _Item(parts[0], parts[1:], line=i)
        if i < len(lines) and lines[i].startswith("-----BEGIN "):
            begin = lines[i]
            if not begin.endswith("-----"):
                raise DescriptorFormatError(f"{what} line {i + 1}: malformed object header")
            kind = begin[len("-----BEGIN "):-5]
            end_line = f"-----END {kind}-----"
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i] != end_line:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise DescriptorFormatError(f"{what}: {item.keyword} object has no {end_line!r}")
            i += 1
            item.obj_type = kind
            item.obj = _b64_decode("".join(body), f"{what} {item.keyword} object")
        items.append(item)
    return items


def _one(items: list[_Item], keyword: str, what: str, *, obj_type: str | None = None,
         nargs: int | None = None) -> _Item:
    found = [it for it in items if it.keyword == keyword]
    if not found:
        raise DescriptorFormatError(f"{what} has no {keyword!r} line")
    if len(found) > 1:
        raise DescriptorFormatError(f"{what} has {len(found)} {keyword!r} lines, expected one")
    item = found[0]
    if obj_type is not None and item.obj_type != obj_type:
        raise DescriptorFormatError(f"{what} {keyword!r} needs a {obj_type} object, got "
                                    f"{item.obj_type or 'none'}")
    if nargs is not None and len(item.args) < nargs:
        raise DescriptorFormatError(f"{what} {keyword!r} needs {nargs} argument(s)")
    return item


def _int_arg(item: _Item, what: str, maximum: int) -> int:
    value = item.args[0] if item.args else ""
    if not value.isdigit() or int(value) > maximum:
        raise DescriptorFormatError(f"{what} {item.keyword} {value!r} is not an integer in 0..{maximum}")
    return int(value)


# --- building ---------------------------------------------------------------------------------

# 16 fake auth-client lines: client-id (8 bytes), iv (16), encrypted-cookie (16), each in
# unpadded base64. Base64 of n bytes + (-n % 3) zero bytes starts with the unpadded base64
# of the n bytes, so random fields with zero gaps (9 + 18 + 18 bytes a line) encode in one
# call and one struct unpack picks the 11, 22 and 22 characters out.
FAKE_AUTH_CLIENT_BYTES = FAKE_AUTH_CLIENTS * 45
_FAKE_CLIENT_FIELDS = struct.Struct("11s1x22s2x22s2x" * FAKE_AUTH_CLIENTS)
_FAKE_CLIENT_LINES = b"auth-client %s %s %s\n" * FAKE_AUTH_CLIENTS
# AND mask zeroing the gap bytes (one numpy operation; five stepped slice assignments on a
# bytearray cost ~3x as much).
_FAKE_CLIENT_MASK_BYTES = (b"\xff" * 8 + b"\0" + b"\xff" * 16 + b"\0\0" + b"\xff" * 16 + b"\0\0") * FAKE_AUTH_CLIENTS
_FAKE_CLIENT_MASK = _np.frombuffer(_FAKE_CLIENT_MASK_BYTES, _np.uint8) if _np is not None else None
_FAKE_CLIENT_MASK_INT = int.from_bytes(_FAKE_CLIENT_MASK_BYTES, "big")


def _fake_auth_clients(random: bytes | None = None) -> bytes:
    """The 16 fake auth-client lines from `FAKE_AUTH_CLIENT_BYTES` random bytes."""
    if random is None:
        random = os.urandom(FAKE_AUTH_CLIENT_BYTES)
    if _np is not None:
        raw = _np.frombuffer(random, _np.uint8, FAKE_AUTH_CLIENT_BYTES) & _FAKE_CLIENT_MASK
    else:  # the same AND, on one big integer
        raw = (int.from_bytes(random[:FAKE_AUTH_CLIENT_BYTES], "big") & _FAKE_CLIENT_MASK_INT
               ).to_bytes(FAKE_AUTH_CLIENT_BYTES, "big")
    return _FAKE_CLIENT_LINES % _FAKE_CLIENT_FIELDS.unpack(_b64encode(raw))


# An intro point's text after `IntroPoint.wire_head`, under one descriptor-signing key:
# its two certificates (140 bytes: 188 base64 characters, '=' last, in lines of 64, 64
# and 60) around its `enc-key` line. Fixed size, so `_certify` writes those of many intro
# points as the rows of one numpy grid laid over this template ('#': filled in).
_CERT_LINES = b"#" * 64 + b"\n" + b"#" * 64 + b"\n" + b"#" * 59 + b"=\n"
_INTRO_TAIL = b"".join((_CERT_LINES, b"-----END ED25519 CERT-----\nenc-key ntor ", b"#" * 43,
                        b"=\nenc-key-cert\n-----BEGIN ED25519 CERT-----\n", _CERT_LINES,
                        b"-----END ED25519 CERT-----\n"))
_INTRO_TAIL_ROW = _np.frombuffer(_INTRO_TAIL, _np.uint8) if _np is not None else None
_ENC_KEY_AT = _INTRO_TAIL.index(b"ntor ") + 5                  # 43 base64 characters
_ENC_CERT_AT = _INTRO_TAIL.index(_CERT_LINES, len(_CERT_LINES))  # the second certificate


class MasterDescriptorBuilder:
    """Builds descriptors of one identity for one time period, fast enough to build a
    distinct descriptor per HSDir: the blinded key, the descriptor-signing key and its
    certificate, and each intro point's re-made certificates are computed once.

    The descriptor-signing key is fresh per builder (tor makes one per descriptor); its
    certificate and the intro-point certificates expire 54 hours after `now`, like tor's.
    Create a new builder for every time period and at least once a day.
    """

    def __init__(self, identity: IdentityKey, *, time_period_number: int, period_length: int,
                 lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES, now: float | None = None,
                 single_onion: bool = False, flow_control: str | None = DEFAULT_FLOW_CONTROL) -> None:
        if not 1 <= lifetime_minutes <= MAX_LIFETIME_MINUTES:
            raise DescriptorError(f"descriptor lifetime {lifetime_minutes} minutes is outside "
                                  f"1..{MAX_LIFETIME_MINUTES} (tor clients reject longer)")
        if period_length <= 0 or time_period_number < 0:
            raise DescriptorError(f"time period {time_period_number} of {period_length} minutes is invalid")
        now = time.time() if now is None else now
        # All the randomness a builder needs, drawn at once: the descriptor-signing key's
        # seed, the x25519 ephemeral secret, the fake auth-client bytes.
        random = os.urandom(64 + FAKE_AUTH_CLIENT_BYTES)
        self._identity = identity
        self._blinded = blinded = identity.blind(time_period_number, period_length)
        self._subcredential = subcredential(identity.public_key, blinded.public_key)
        self._signing = signing = crypto.SeedSigningKey(random[:32])
        self.time_period_number = time_period_number
        self.period_length = period_length
        self.lifetime_minutes = lifetime_minutes
        self.single_onion = single_onion
        self.flow_control = flow_control
        # tor_cert_create_ed25519: expiry = CEIL((now + lifetime) / 1 h)
        lifetime = SIGNING_CERT_LIFETIME_HOURS * 3600
        self._cert_expiry_hours = -(-(int(now) + lifetime) // 3600)
        self._signing_key_expiry = _hours_to_datetime(self._cert_expiry_hours)
        signing_cert = make_certificate(CERT_TYPE_DESC_SIGNING, signing.public_key,
                                        self._cert_expiry_hours, blinded.public_key, blinded.sign)
        self._signing_cert_pem = b"".join((b"-----BEGIN ED25519 CERT-----\n",
                                           _b64_cert_lines(signing_cert), b"-----END ED25519 CERT-----"))
        # setup_desc_intro_point: intro certs count from the start of the hour.
        self._intro_expiry_hours = -(-((int(now) // 3600) * 3600 + lifetime) // 3600)
        self._cert_cache: dict[tuple[bytes, bytes, bytes], bytes] = {}
        self._auth_cert_head = _CERT_HEAD.pack(1, CERT_TYPE_INTRO_AUTH, self._intro_expiry_hours,
                                               _CERT_KEY_TYPE_ED25519)
        self._enc_cert_head = _CERT_HEAD.pack(1, CERT_TYPE_INTRO_ENC, self._intro_expiry_hours,
                                              _CERT_KEY_TYPE_ED25519)
        self._intro_cert_ext = _CERT_EXT_SIGNED_WITH_KEY + signing.public_key
        # Middle layer head: no client auth, so 16 fake auth-client lines and a throw-away
        # x25519 ephemeral key, hiding the number of authorised clients. Like tor, made
        # once per descriptor (per period), re-used by every encoding of it.
        self._middle_head = b"".join((
            b"desc-auth-type x25519\ndesc-auth-ephemeral-key ",
            binascii.b2a_base64(crypto.x25519_public(random[32:64])),
            _fake_auth_clients(random[64:]), b"encrypted\n-----BEGIN MESSAGE-----\n"))

    @property
    def blinded_key(self) -> BlindedKey:
        return self._blinded

    @property
    def signing_key_expiry(self) -> _dt.datetime:
        return self._signing_key_expiry

    def _certify(self, intro_points: Sequence[IntroPoint]) -> list[bytes]:
        """Make the two certificates (types 09 and 0B, by our descriptor-signing key) of
        each intro point, and return (and keep, by the keys they contain) each one's text
        from its auth-key certificate on: an intro point whose link specifiers change
        keeps it.

        All at once, with a few Python operations per intro point (a cert-by-cert loop
        needs ~10x as many): one buffer holds every certificate body in a 216-byte slot,
        then every enc key and a zero byte; libsodium signs each body in place (the slot
        then reads body | signature | body: 140 certificate bytes, then a byte whose top
        bits are 0, the certificate version, so that the base64 of the slot starts with
        the certificate's own, and 216 bytes are whole base64 groups); one base64 call
        encodes the buffer and numpy copies the lines and keys into the rows of a
        template grid."""
        n = len(intro_points)
        auth_head = self._auth_cert_head
        after_auth = self._intro_cert_ext + bytes(140) + self._enc_cert_head  # signature, copy
        after_enc = self._intro_cert_ext + bytes(140)
        buf = bytearray().join([part for ip in intro_points for part in (
            auth_head, ip.auth_key, after_auth, ip.enc_key_ed25519, after_enc)]
            + [part for ip in intro_points for part in (ip.enc_key, b"\0")])
        self._signing.sign_into(buf, 2 * n, 76, 216)
        if _np is None:
            tails = self._tails_stdlib(_b64encode(buf), n)
        else:
            tails = self._tails_numpy(_b64encode(buf), n)
        self._cert_cache.update(zip([(ip.auth_key, ip.enc_key, ip.enc_key_ed25519)
                                     for ip in intro_points], tails))
        return tails

    @staticmethod
    def _tails_stdlib(b64: bytes, n: int) -> list[bytes]:
        """`_tails_numpy` with the standard library: each intro point's template row,
        filled in by slice assignments (the same bytes)."""
        tails = []
        keys_at = 2 * n * 288
        for i in range(n):
            row = bytearray(_INTRO_TAIL)
            for k, at in ((0, 0), (1, _ENC_CERT_AT)):
                cert = b64[(2 * i + k) * 288:(2 * i + k) * 288 + 187]
                row[at:at + 64] = cert[0:64]
                row[at + 65:at + 129] = cert[64:128]
                row[at + 130:at + 189] = cert[128:187]
            row[_ENC_KEY_AT:_ENC_KEY_AT + 43] = b64[keys_at + 44 * i:keys_at + 44 * i + 43]
            tails.append(bytes(row))
        return tails

    @staticmethod
    def _tails_numpy(b64: bytes, n: int) -> list[bytes]:
        encoded = _np.frombuffer(b64, _np.uint8)
        certs = encoded[:2 * n * 288].reshape(n, 2, 288)  # 187 characters of each are the cert's
        rows = _np.empty((n, len(_INTRO_TAIL)), _np.uint8)
        rows[:] = _INTRO_TAIL_ROW
        lines = _np.ndarray((n, 2, len(_CERT_LINES)), _np.uint8, rows, 0,
                            (len(_INTRO_TAIL), _ENC_CERT_AT, 1))  # both certificates' lines
        lines[:, :, 0:64] = certs[:, :, 0:64]
        lines[:, :, 65:129] = certs[:, :, 64:128]
        lines[:, :, 130:189] = certs[:, :, 128:187]
        rows[:, _ENC_KEY_AT:_ENC_KEY_AT + 43] = encoded[2 * n * 288:].reshape(n, 44)[:, :43]
        blob, size = rows.tobytes(), len(_INTRO_TAIL)
        return [blob[i:i + size] for i in range(0, n * size, size)]

    def _inner_plaintext(self, intro_points: tuple[IntroPoint, ...]) -> bytes:
        """The inner layer (hs_descriptor.c get_inner_encrypted_layer_plaintext): the
        header lines, then each intro point's text, certifying (in one batch) the intro
        points this builder has not certified yet."""
        certs = self._cert_cache
        if not certs:  # a new builder (period): nothing to look up
            tails = self._certify(intro_points)
        else:
            if len(certs) > 4096:  # before the look-ups: a clear must not drop what they find
                certs.clear()
            tails = [certs.get((ip.auth_key, ip.enc_key, ip.enc_key_ed25519))
                     for ip in intro_points]
            if not all(tails):
                todo = [i for i, tail in enumerate(tails) if tail is None]
                for i, tail in zip(todo, self._certify([intro_points[i] for i in todo])):
                    tails[i] = tail
        parts = [b"create2-formats 2\n"]
        if self.single_onion:
            parts.append(b"single-onion-service\n")
        if self.flow_control:
            parts.append(b"flow-control %s\n" % self.flow_control.encode("ascii"))
        # Legacy keys are not re-emitted: their cross-certificate signs the instance's
        # descriptor-signing key, which the master descriptor does not use.
        for ip, tail in zip(intro_points, tails):
            parts += (ip.__dict__.get("_wire_head") or ip.wire_head(), tail)
        return b"".join(parts)

    def build(self, intro_points: Sequence[IntroPoint], *, revision_counter: int,
              max_size: int = MAX_DESCRIPTOR_SIZE) -> MasterDescriptor:
        """Build, sign and encrypt one descriptor. Raises `TooManyIntroPointsError` above 20
        and `DescriptorTooLargeError` if the result is not below `max_size` bytes (tor's
        limit: the consensus' HSV3MaxDescriptorSize, 50000 by default; hs_cache.c).

        Each layer is written into one buffer of its final size (the base64 lines of the
        layer inside it included), so the 30 kB middle layer and the 41 kB text are not
        copied to be joined."""
        intro_points = tuple(intro_points)
        if len(intro_points) > MAX_INTRO_POINTS:
            raise TooManyIntroPointsError(
                f"{len(intro_points)} introduction points for one descriptor, tor clients accept at "
                f"most {MAX_INTRO_POINTS}: spread them over distinct descriptors per HSDir")
        if len({ip.auth_key for ip in intro_points}) != len(intro_points):
            raise DescriptorError("the same introduction point (auth key) appears twice")
        if not 0 <= revision_counter < 2**64:
            raise DescriptorError(f"revision counter {revision_counter} is outside 0..2^64-1")
        blinded = self._blinded.public_key
        random = os.urandom(64)  # the two layers' salts and the signature's nonce entropy
        inner_blob = encrypt_layer(self._inner_plaintext(intro_points), _ENC_CONSTANT, blinded,
                                   self._subcredential, revision_counter, salt=random[:16])
        # Middle layer: its head, the inner layer's lines, END, NUL padding to a multiple of
        # 10000 as tor pads (stem 1.8.2 pads by len % 10000 instead, which is wrong).
        head = self._middle_head
        end = len(head) + _b64_lines_size(len(inner_blob))
        size = end + len(_END_MESSAGE)
        middle = bytearray(size + -size % SUPERENCRYPTED_PAD_MULTIPLE)
        middle[:len(head)] = head
        _b64_lines_into(middle, len(head), inner_blob)
        middle[end:size] = _END_MESSAGE
        middle_blob = encrypt_layer(middle, _SUPERENC_CONSTANT, blinded, self._subcredential,
                                    revision_counter, salt=random[16:32])
        # Outer layer: the signed text, then the signature line.
        head = (b"hs-descriptor 3\ndescriptor-lifetime %d\ndescriptor-signing-key-cert\n%s\n"
                b"revision-counter %d\nsuperencrypted\n-----BEGIN MESSAGE-----\n" % (
                    self.lifetime_minutes, self._signing_cert_pem, revision_counter))
        end = len(head) + _b64_lines_size(len(middle_blob))
        signed = end + len(_END_MESSAGE_LINE)
        if signed + _SIGNATURE_LINE_SIZE >= min(max_size, MAX_DESCRIPTOR_SIZE):
            raise DescriptorTooLargeError(
                f"descriptor with {len(intro_points)} introduction points is "
                f"{signed + _SIGNATURE_LINE_SIZE} bytes; tor accepts less than "
                f"{min(max_size, MAX_DESCRIPTOR_SIZE)}: use fewer introduction points")
        text = bytearray(signed + _SIGNATURE_LINE_SIZE)
        text[:len(head)] = head
        _b64_lines_into(text, len(head), middle_blob)
        text[end:signed] = _END_MESSAGE_LINE
        signature = self._signing.sign_large(_SIG_PREFIX, memoryview(text)[:signed],
                                             entropy=random[32:])
        text[signed:] = b"signature %s\n" % _b64encode(signature)[:86]
        # A frozen dataclass' __init__ sets each field through object.__setattr__ (~5 us
        # for these 7, 960 times a publish cycle): the same fields are set in one call.
        result = object.__new__(MasterDescriptor)
        result.__dict__.update(text=text.decode("ascii"), blinded_key=blinded,
                               time_period_number=self.time_period_number,
                               period_length=self.period_length,
                               revision_counter=revision_counter, intro_points=intro_points,
                               signing_key_expiry=self._signing_key_expiry)
        return result


def build_master_descriptor(identity: IdentityKey, intro_points: Sequence[IntroPoint], *,
                            time_period_number: int, period_length: int, revision_counter: int,
                            lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES,
                            now: float | None = None) -> MasterDescriptor:
    """One-shot `MasterDescriptorBuilder(...).build(...)`."""
    if len(intro_points) > MAX_INTRO_POINTS:  # fail before any crypto
        raise TooManyIntroPointsError(
            f"{len(intro_points)} introduction points for one descriptor, tor clients accept at "
            f"most {MAX_INTRO_POINTS}: spread them over distinct descriptors per HSDir")
    builder = MasterDescriptorBuilder(identity, time_period_number=time_period_number,
                                      period_length=period_length,
                                      lifetime_minutes=lifetime_minutes, now=now)
    return builder.build(intro_points, revision_counter=revision_counter)


# --- decrypting -------------------------------------------------------------------------------

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
    now = time.time() if now is None else now
    if isinstance(text, bytes):
        if len(text) > max_size:
            raise DescriptorTooLargeError(f"descriptor is {len(text)} bytes, at most {max_size} accepted")
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise DescriptorFormatError("descriptor is not ASCII text") from None
    if len(text) > max_size:
        raise DescriptorTooLargeError(f"descriptor is {len(text)} bytes, at most {max_size} accepted")
    if not text.isascii():  # else the signature check's encode("ascii") raised UnicodeEncodeError
        at = next(i for i, c in enumerate(text) if ord(c) > 127)
        raise DescriptorFormatError(f"descriptor is not ASCII text (character {text[at]!r} at offset {at})")
    public_key = parse_address(address)
    periods = [time_period_numbers] if isinstance(time_period_numbers, int) else list(time_period_numbers)
    if not periods:
        raise ValueError("time_period_numbers is empty: pass the periods the descriptor may be for")

    # Outer layer (desc_decode_plaintext_v3).
    items = _tokenize(text, "descriptor")
    if not items or items[0].keyword != "hs-descriptor":
        raise DescriptorFormatError("descriptor does not start with 'hs-descriptor'")
    if items[0].args != ["3"]:
        raise DescriptorFormatError(f"descriptor version {' '.join(items[0].args)!r} is not 3")
    if items[-1].keyword != "signature":
        raise DescriptorFormatError("descriptor does not end with a 'signature' line")
    lifetime = _int_arg(_one(items, "descriptor-lifetime", "descriptor", nargs=1), "descriptor",
                        2**32 - 1)
    if lifetime > MAX_LIFETIME_MINUTES:
        raise DescriptorFormatError(f"descriptor-lifetime {lifetime} minutes exceeds tor's "
                                    f"maximum of {MAX_LIFETIME_MINUTES}")
    cert_item = _one(items, "descriptor-signing-key-cert", "descriptor", obj_type="ED25519 CERT")
    revision = _int_arg(_one(items, "revision-counter", "descriptor", nargs=1), "descriptor", 2**64 - 1)
    super_item = _one(items, "superencrypted", "descriptor", obj_type="MESSAGE")
    sig_item = _one(items, "signature", "descriptor", nargs=1)

    cert = parse_certificate(cert_item.obj, "descriptor-signing-key")
    cert.check(CERT_TYPE_DESC_SIGNING, "descriptor-signing-key", now=now)
    blinded = cert.signing_key
    period = next((tp for tp in periods
                   if crypto.blind_public_key(public_key, tp, period_length) == blinded), None)
    if period is None:
        raise BlindedKeyMismatchError(
            f"descriptor is not signed by the blinded key of {onion_address(public_key)} for time "
            f"period(s) {', '.join(map(str, periods))} ({period_length} min): another service's "
            "descriptor, or one for another period")
    signature = _b64_decode(sig_item.args[0], "descriptor signature")
    sig_start = text.find("\nsignature ")
    if len(signature) != 64 or sig_start < 0 or not crypto.verify(
            cert.certified_key, _SIG_PREFIX + text[:sig_start + 1].encode("ascii"), signature):
        raise DescriptorSignatureError(
            f"descriptor of {onion_address(public_key)} has a bad signature")
    if last_revision_counter is not None and revision <= last_revision_counter:
        raise RevisionCounterError(
            f"descriptor of {onion_address(public_key)} has revision counter {revision}, not above "
            f"the last one seen ({last_revision_counter}): a replayed or stale copy")

    # Middle layer.
    subcred = subcredential(public_key, blinded)
    middle = decrypt_layer(super_item.obj, _SUPERENC_CONSTANT, blinded, subcred, revision,
                           "superencrypted layer")
    middle_items = _tokenize(middle, "superencrypted layer")
    auth_type = _one(middle_items, "desc-auth-type", "superencrypted layer", nargs=1)
    if auth_type.args[0] != "x25519":
        raise DescriptorFormatError(f"superencrypted layer desc-auth-type {auth_type.args[0]!r} "
                                    "is not x25519")
    enc_item = _one(middle_items, "encrypted", "superencrypted layer", obj_type="MESSAGE")
    try:
        inner = decrypt_layer(enc_item.obj, _ENC_CONSTANT, blinded, subcred, revision,
                              "encrypted layer")
    except DescriptorDecryptionError:
        raise DescriptorDecryptionError(
            f"inner layer of {onion_address(public_key)} does not decrypt: the service requires "
            "client authorization") from None
    return _parse_inner(inner, address=onion_address(public_key), blinded=blinded,
                        period=period, period_length=period_length, revision=revision,
                        lifetime=lifetime, cert=cert, now=now)


_INNER_HEADER_KEYWORDS = {"create2-formats", "intro-auth-required", "single-onion-service",
                          "flow-control", "pow-params"}


def _parse_inner(inner: str, *, address: str, blinded: bytes, period: int, period_length: int,
                 revision: int, lifetime: int, cert: Certificate, now: float) -> DecryptedDescriptor:
    what = "encrypted layer"
    head, sep, rest = inner.partition("\nintroduction-point ")
    if inner.startswith("introduction-point "):
        head, rest, sep = "", inner[len("introduction-point "):], "x"
    header = _tokenize(head, what)
    formats_item = _one(header, "create2-formats", what)
    try:
        formats = tuple(int(a) for a in formats_item.args)
    except ValueError:
        raise DescriptorFormatError(f"{what} create2-formats {formats_item.args!r} are not integers") from None
    if 2 not in formats:
        raise DescriptorFormatError(f"{what} create2-formats {formats} lack ntor (2)")
    flow = next((" ".join(it.args) for it in header if it.keyword == "flow-control"), None)
    single = any(it.keyword == "single-onion-service" for it in header)
    extra = tuple(" ".join([it.keyword, *it.args]) for it in header
                  if it.keyword not in ("create2-formats", "flow-control", "single-onion-service"))
    sections = ("introduction-point " + rest).split("\nintroduction-point ") if sep else []
    if len(sections) > MAX_INTRO_POINTS:
        raise TooManyIntroPointsError(f"descriptor of {address} has {len(sections)} introduction "
                                      f"points, tor accepts at most {MAX_INTRO_POINTS}")
    intro_points = []
    for n, section in enumerate(sections, 1):
        if n > 1:
            section = "introduction-point " + section
        intro_points.append(_parse_intro_point(section, n, cert.certified_key, now))
    return DecryptedDescriptor(
        address=address, blinded_key=blinded, time_period_number=period,
        period_length=period_length, revision_counter=revision, lifetime_minutes=lifetime,
        signing_key=cert.certified_key, signing_key_expiry=cert.expiry,
        intro_points=tuple(intro_points), create2_formats=formats, flow_control=flow,
        single_onion=single, extra_lines=extra)


def _curve25519_arg(item: _Item, what: str) -> bytes:
    if len(item.args) < 2 or item.args[0] != "ntor":
        raise DescriptorFormatError(f"{what} {item.keyword} is not an ntor key")
    raw = _b64_decode(item.args[1], f"{what} {item.keyword}")
    if len(raw) != 32:
        raise DescriptorFormatError(f"{what} {item.keyword} is {len(raw)} bytes, expected 32")
    return raw


def _parse_intro_point(section: str, n: int, signing_key: bytes, now: float) -> IntroPoint:
    what = f"introduction point {n}"
    items = _tokenize(section, what)
    ls_item = _one(items, "introduction-point", what, nargs=1)
    link_specifiers = decode_link_specifiers(_b64_decode(ls_item.args[0], f"{what} link specifiers"))
    onion_keys = [it for it in items if it.keyword == "onion-key" and it.args[:1] == ["ntor"]]
    if not onion_keys:
        raise DescriptorFormatError(f"{what} has no 'onion-key ntor' line")
    onion_key = _curve25519_arg(onion_keys[0], what)
    auth_item = _one(items, "auth-key", what, obj_type="ED25519 CERT")
    auth_cert = parse_certificate(auth_item.obj, f"{what} auth-key")
    auth_cert.check(CERT_TYPE_INTRO_AUTH, f"{what} auth-key", signer=signing_key, now=now)
    if auth_cert.signing_key != signing_key:
        raise CertificateError(f"{what} auth-key certificate names another signing key")
    enc_key = _curve25519_arg(_one(items, "enc-key", what, nargs=2), what)
    enc_cert_item = _one(items, "enc-key-cert", what, obj_type="ED25519 CERT")
    enc_cert = parse_certificate(enc_cert_item.obj, f"{what} enc-key-cert")
    enc_cert.check(CERT_TYPE_INTRO_ENC, f"{what} enc-key-cert", signer=signing_key, now=now)
    if enc_cert.signing_key != signing_key:
        raise CertificateError(f"{what} enc-key-cert names another signing key")
    legacy = next((it for it in items if it.keyword == "legacy-key"), None)
    legacy_cert = next((it for it in items if it.keyword == "legacy-key-cert"), None)
    return IntroPoint(link_specifiers=link_specifiers, onion_key=onion_key,
                      auth_key=auth_cert.certified_key, enc_key=enc_key,
                      enc_key_ed25519=enc_cert.certified_key,
                      legacy_key=legacy.obj if legacy else None,
                      legacy_key_cert=legacy_cert.obj if legacy_cert else None)


# --- revision counters ------------------------------------------------------------------------

_OPE_CACHE: "OrderedDict[bytes, crypto.OrderPreservingCipher]" = OrderedDict()
_OPE_CACHE_LOCK = threading.Lock()
# One cipher per blinded key (frontend x period); each holds <= 257 cached sums (~2 kB).
# Must exceed what one publish cycle uses (60 frontends x 2 periods in the benchmark), or
# the LRU evicts every table before it is reused and each cycle redoes ~1 ms per key.
_OPE_CACHE_SIZE = 1024


def revision_counter(blinded_key: BlindedKey, revision_base: int, now: float) -> int:
    """Tor's revision counter: OPE-encrypt the seconds since `revision_base` (+1).

    `revision_base` is the start of the SRV protocol run the descriptor's period uses
    (`hashring.DescriptorSlot.revision_base`). The result depends only on the blinded key
    and the clock, so it grows across restarts, agrees between balancers sharing a key,
    and continues the counters of a tor that published with the same key before.
    """
    seconds = int(now) - int(revision_base) + 1
    seconds = min(max(seconds, 1), crypto.OPE_INPUT_MAX)  # tor clamps too-large inputs
    key = blinded_key.ope_key
    with _OPE_CACHE_LOCK:
        cipher = _OPE_CACHE.get(key)
        if cipher is None:
            cipher = _OPE_CACHE[key] = crypto.OrderPreservingCipher(key)
            while len(_OPE_CACHE) > _OPE_CACHE_SIZE:
                _OPE_CACHE.popitem(last=False)
        else:
            _OPE_CACHE.move_to_end(key)
        return cipher.encrypt(seconds)
