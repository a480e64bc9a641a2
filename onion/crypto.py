"""Ed25519 primitives for v3 onion services, on libsodium's group operations (PyNaCl).

Why hand-written: no library signs with a tor *expanded* secret key (64 bytes: scalar |
prefix) or blinds keys as rend-spec-v3 [KEYBLIND] requires. PyNaCl exposes libsodium's
scalar and point operations, so only the composition lives here; stem's pure-Python curve
code (~100x slower) is never used. Scalars are reduced mod l before every `*_noclamp`
call: tor's expanded keys (and vanity-generated ones) may hold unreduced scalars, and
libsodium only treats reduced scalars canonically.
"""
from __future__ import annotations

import array
import functools
import hashlib
import os
import struct

import sys

import nacl.bindings as sodium
import nacl.exceptions
from nacl._sodium import ffi as _ffi, lib as _sodium_lib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from onion.errors import KeyFormatError

try:  # optional (see onion/descriptor.py): OPE sums in C; the standard library otherwise
    import numpy as _np
except ImportError:  # pragma: no cover - exercised by the optional-deps tests in a child
    _np = None

# Order of the ed25519 base point.
L = 2**252 + 27742317777372353535851937790883648493
# Prime of curve25519's field (for the Montgomery -> Edwards conversion of enc keys).
P = 2**255 - 19

# rend-spec-v3 [KEYBLIND]: B is the base point written as in the spec, as a string.
ED25519_BASEPOINT = (
    b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
    b"46316835694926478169428394003475163141307993866256225615783033603165251855960)"
)
BLIND_STRING = b"Derive temporary signing key\x00"
BLIND_PREFIX_STRING = b"Derive temporary signing key hash input"

_ZERO32 = bytes(32)
# Ed25519 clamping (RFC 8032) as integer masks: clear the 3 low bits and bit 255, set bit 254.
_CLAMP_MASK = (1 << 254) - 8
_CLAMP_BIT = 1 << 254
_new = _ffi.new
_buffer = _ffi.buffer
_scalar_reduce = _sodium_lib.crypto_core_ed25519_scalar_reduce
_scalar_mul = _sodium_lib.crypto_core_ed25519_scalar_mul
_scalar_add = _sodium_lib.crypto_core_ed25519_scalar_add
_base_noclamp = _sodium_lib.crypto_scalarmult_ed25519_base_noclamp


def x25519_public(secret: bytes) -> bytes:
    """The x25519 public key of a 32-byte secret (crypto_scalarmult_base, called directly)."""
    out = _new("unsigned char[32]")
    if _sodium_lib.crypto_scalarmult_base(out, secret) != 0:
        raise RuntimeError("libsodium crypto_scalarmult_base failed")
    return _buffer(out, 32)[:]


def sha3_256(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def reduce_scalar(scalar: bytes) -> bytes:
    """Return `scalar` (32 or 64 bytes, little-endian) reduced mod l, as 32 bytes."""
    if len(scalar) == 32:
        scalar = scalar + _ZERO32
    elif len(scalar) != 64:
        raise TypeError(f"a scalar to reduce is 32 or 64 bytes, got {len(scalar)}")
    out = _new("unsigned char[32]")
    _scalar_reduce(out, scalar)  # libsodium directly: PyNaCl's wrapper costs ~3x the call
    return _buffer(out, 32)[:]


def clamp(scalar: bytes) -> bytes:
    """Ed25519 clamping: clear the 3 low bits and the top bit, set bit 254."""
    return (int.from_bytes(scalar[:32], "little") & _CLAMP_MASK | _CLAMP_BIT).to_bytes(32, "little")


def expand_seed(seed: bytes) -> bytes:
    """RFC 8032 key expansion: the 64-byte expanded secret (clamped scalar | prefix)."""
    if len(seed) != 32:
        raise KeyFormatError(f"ed25519 seed must be 32 bytes, got {len(seed)}")
    h = hashlib.sha512(seed).digest()
    return clamp(h[:32]) + h[32:]


def public_from_expanded(expanded: bytes) -> bytes:
    """The ed25519 public key of a 64-byte expanded secret key."""
    return public_from_scalar(reduce_scalar(expanded[:32]))


def public_from_scalar(scalar: bytes) -> bytes:
    """aB for a reduced 32-byte scalar a (one fixed-base multiplication)."""
    out = _new("unsigned char[32]")
    if _base_noclamp(out, scalar) != 0:
        # Only a scalar that is 0 mod l fails here; tor would never produce it.
        raise KeyFormatError("expanded secret key has a zero scalar (mod l); it is not a usable key")
    return _buffer(out, 32)[:]


def _sign_parts(a: bytes, nonce_hash: bytes, public_key: bytes, *message: bytes) -> bytes:
    """R | S with R = rB, r = nonce_hash mod l, S = r + SHA-512(R | A | message) a (mod l).

    `a` is the secret scalar (32 bytes, reduced or not: see sign_expanded); `message` may
    come in pieces (hashed without joining them). libsodium's cffi functions are called on one scratch buffer: PyNaCl's wrappers
    (checks, a result buffer per call) cost more than the scalar arithmetic itself.
    """
    buf = _new("unsigned char[160]")  # r | R | S | k | k*a
    _scalar_reduce(buf, nonce_hash)
    if _base_noclamp(buf + 32, buf) != 0:
        raise RuntimeError("libsodium: nonce scalar is 0 mod l")  # probability 2^-252
    h = hashlib.sha512(_buffer(buf + 32, 32))
    h.update(public_key)
    for part in message:
        h.update(part)
    _scalar_reduce(buf + 96, h.digest())
    _scalar_mul(buf + 128, buf + 96, a)
    _scalar_add(buf + 64, buf, buf + 128)
    return _buffer(buf + 32, 64)[:]


def sign_expanded(expanded: bytes, public_key: bytes, message: bytes) -> bytes:
    """Ed25519 signature with an expanded secret (what tor's ed25519_sign does).

    r = H(prefix | M) mod l, R = rB, S = r + H(R | A | M) a  (mod l)

    `a` goes unreduced to libsodium's scalar multiplication, which reduces the product of
    any two 256-bit scalars (ref10's sc_muladd, which crypto_sign runs on its unreduced
    clamped key too); only the noclamp point multiplications need reduced scalars.
    """
    return _sign_parts(expanded[:32], hashlib.sha512(expanded[32:64] + message).digest(),
                       public_key, message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid ed25519 signature of `message` by `public_key`."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError, nacl.exceptions.RuntimeError):
        return False
    return True


class SeedSigningKey:
    """A short-term ed25519 key we generate ourselves (descriptor-signing key).

    Because we hold its seed, libsodium's `crypto_sign` signs in one C call. It is called
    through PyNaCl's cffi library object directly: PyNaCl's Python wrapper (argument
    checks, result slicing) costs ~5% of a signature, and a new time period signs
    thousands of short certificates.
    """

    __slots__ = ("public_key", "_sk", "_scalar", "_prefix")

    def __init__(self, seed: bytes | None = None) -> None:
        seed = seed if seed is not None else os.urandom(32)
        if len(seed) != 32:
            raise KeyFormatError(f"ed25519 seed must be 32 bytes, got {len(seed)}")
        # What crypto_sign_seed_keypair computes, expanding the seed once (sign_large needs
        # the expanded key, and the keypair call would hash the seed a second time):
        # a = clamp(SHA-512(seed)[:32]) mod l, A = aB, libsodium's secret key = seed | A.
        expanded = hashlib.sha512(seed).digest()
        keys = _new("unsigned char[64]")  # a | A
        _scalar_reduce(keys, clamp(expanded) + _ZERO32)
        _base_noclamp(keys + 32, keys)  # never 0: a clamped scalar is not a multiple of l
        keys = _buffer(keys, 64)[:]
        self._scalar, self._prefix, self.public_key = keys[:32], expanded[32:], keys[32:]
        self._sk = bytes(seed) + self.public_key

    def sign(self, message: bytes) -> bytes:
        out = _ffi.new("unsigned char[]", len(message) + 64)
        if _sodium_lib.crypto_sign(out, _ffi.NULL, message, len(message), self._sk) != 0:
            raise RuntimeError("libsodium crypto_sign failed")  # never, for a valid key
        return _ffi.buffer(out, 64)[:]

    def sign_into(self, buffer: bytearray, count: int, size: int, stride: int) -> None:
        """Sign, in place, `count` messages of `size` bytes that start every `stride`
        bytes of `buffer`: each signature (64 bytes) is written right after its message,
        and the `size` bytes after that get a copy of the message (libsodium's combined
        crypto_sign writes signature | message; here its output starts `size` bytes into
        the slot, so the slot reads message | signature | message).

        One libsodium call per message on pointers into the caller's buffer: no Python
        objects per signature, no copies (a new period's first descriptor signs 40
        certificates at once)."""
        if stride < 2 * size + 64 or len(buffer) < count * stride:
            raise ValueError(f"{count} slots of {stride} bytes (messages of {size} bytes, their "
                             f"signatures and copies) do not fit in {len(buffer)} bytes")
        base = _ffi.from_buffer(buffer, require_writable=True)
        sign, sk, null = _sodium_lib.crypto_sign, self._sk, _ffi.NULL
        for offset in range(0, count * stride, stride):
            message = base + offset
            if sign(message + size, null, message, size, sk) != 0:
                raise RuntimeError("libsodium crypto_sign failed")  # never, for a valid key

    def sign_large(self, *message: bytes, entropy: bytes | None = None) -> bytes:
        """Sign a large message (a 40-50 kB descriptor) hashing it once instead of twice.

        RFC 8032 derives the nonce r from H(prefix | M), a second pass over M. Any secret,
        never-repeated r gives a signature every verifier accepts; here r comes from the
        kernel CSPRNG mixed with the secret prefix, so it is unique and secret without
        reading M. Used only for whole descriptors, where that pass is ~10% of a build.
        The message may be passed in pieces (hashed in order, never joined). `entropy`: 32
        fresh random bytes for r, if the caller has drawn them already (else os.urandom).
        """
        if entropy is None:
            entropy = os.urandom(32)
        elif len(entropy) != 32:
            raise ValueError(f"sign_large needs 32 bytes of entropy, got {len(entropy)}")
        return _sign_parts(self._scalar, hashlib.sha512(self._prefix + entropy).digest(),
                           self.public_key, *message)

    def __repr__(self) -> str:
        return f"SeedSigningKey(public_key={self.public_key.hex()})"


# --- key blinding (rend-spec-v3 [KEYBLIND]) ---------------------------------------------

def blinding_param(public_key: bytes, period_number: int, period_length: int) -> bytes:
    """h = SHA3-256(BLIND_STRING | A | B | N), N = "key-blind" | INT_8(tp) | INT_8(len).

    (Clamped before use, as tor's ed25519_blind_* do.)
    """
    nonce = _KEYBLIND_NONCE.pack(b"key-blind", period_number, period_length)  # tor: HS_KEYBLIND_NONCE_PREFIX
    return hashlib.sha3_256(b"".join((BLIND_STRING, public_key, ED25519_BASEPOINT, nonce))).digest()


_KEYBLIND_NONCE = struct.Struct(">9sQQ")


def blind_public_key_with_param(public_key: bytes, param: bytes) -> bytes:
    """A' = clamp(param) A (tor's ed25519_public_blind)."""
    h = reduce_scalar(clamp(param))
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(h, public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError) as exc:
        raise KeyFormatError("public key is not a valid ed25519 point of prime order") from exc


def blind_expanded_secret_with_param(expanded: bytes, param: bytes) -> bytes:
    """(clamp(param) a mod l) | SHA-512(prefix string | prefix)[:32] (ed25519_keypair_blind).

    Both factors go unreduced to libsodium's scalar multiplication: it reduces the
    product of any two 256-bit scalars (see sign_expanded), and the result is reduced."""
    buf = _new("unsigned char[32]")
    _scalar_mul(buf, clamp(param), expanded[:32])
    prefix = hashlib.sha512(BLIND_PREFIX_STRING + expanded[32:64]).digest()[:32]
    return _buffer(buf, 32)[:] + prefix


@functools.lru_cache(maxsize=4096)
def blind_public_key(public_key: bytes, period_number: int, period_length: int) -> bytes:
    """The blinded public key for time period `period_number` of `period_length` minutes.

    Cached: the balancer re-verifies every instance's descriptors against the same few
    (address, period) pairs, and a variable-base multiplication costs ~0.2 ms."""
    return blind_public_key_with_param(public_key,
                                       blinding_param(public_key, period_number, period_length))


def blind_expanded_secret(expanded: bytes, public_key: bytes, period_number: int,
                          period_length: int) -> bytes:
    """The blinded expanded secret key for a time period."""
    return blind_expanded_secret_with_param(
        expanded, blinding_param(public_key, period_number, period_length))


# --- curve25519 -> ed25519 ------------------------------------------------------------

def curve25519_to_ed25519_public(u: bytes, sign_bit: int = 0) -> bytes:
    """The ed25519 point whose Montgomery form is `u`: y = (u - 1) / (u + 1).

    Tor certifies an intro point's curve25519 enc key by this ed25519 form with sign
    bit 0 (`ed25519_public_key_from_curve25519_public_key`); libsodium only converts the
    other way, so this is two field operations in Python.
    """
    x = int.from_bytes(u, "little") & ((1 << 255) - 1)
    y = ((x - 1) * pow(x + 1, -1, P)) % P  # pow(.., -1, P): extended Euclid, ~20x faster than P-2
    out = bytearray(y.to_bytes(32, "little"))
    out[31] |= (sign_bit & 1) << 7
    return bytes(out)


# --- tor's order-preserving encryption for revision counters (crypto_ope.c) -------------

OPE_INPUT_MAX = 1 << 18
_OPE_SAMPLE = 1024  # cumulative sums are cached every this many values
_OPE_ZEROS = memoryview(bytes(2 * OPE_INPUT_MAX))  # AES-CTR input (never written)


def _sum_u16le(data: bytes) -> int:
    """Exact sum of the little-endian 16-bit words of `data` (numpy, in C)."""
    # uint32 accumulator (~2x faster than int64): callers sum < 1024 words, < 2^26
    if len(data) > 2 * _OPE_SAMPLE:
        raise ValueError(f"_sum_u16le sums at most {_OPE_SAMPLE} words, got {len(data) // 2}")
    if _np is None:
        return sum(_u16le(data[:len(data) // 2 * 2]))
    return int(_np.frombuffer(data, dtype="<u2", count=len(data) // 2).sum(dtype=_np.uint32))


def _u16le(data: bytes) -> array.array:
    """The little-endian 16-bit words of `data` (the standard library's path)."""
    words = array.array("H")
    words.frombytes(data)
    if sys.byteorder == "big":
        words.byteswap()
    return words


class OrderPreservingCipher:
    """Tor's rudimentary OPE: E(n) = sum_{i<n} (LE16(AES-256-CTR(key, iv=0)[2i:2i+2]) + 1).

    Strictly increasing in n and keyed, so revision counters grow with time without
    revealing the service's clock. Cumulative sums are cached every 1024 values as
    they are first needed, so after the first call for a key every encryption costs at
    most one 2 KiB keystream chunk; the first call late in a 2-day SRV window costs
    ~0.2-0.4 ms with numpy (one AES-CTR pass and one sum over its words), a few ms without.
    """

    __slots__ = ("_key", "_sums")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyFormatError(f"OPE key must be 32 bytes, got {len(key)}")
        self._key = key
        self._sums = array.array("q", [0])  # _sums[j] = E(j * 1024); 8 bytes per sample

    def _keystream(self, first_value: int, count: int) -> bytes:
        # Value i sits at keystream bytes 2i, 2i+1; 1024 values = 128 AES blocks, so chunk
        # starts are block-aligned and the CTR counter starts at first_value * 2 / 16.
        iv = (first_value * 2 // 16).to_bytes(16, "big")
        enc = Cipher(algorithms.AES(self._key), modes.CTR(iv)).encryptor()
        # CTR over zeros is the keystream. One shared read-only zero buffer: a fresh
        # bytes(2 * count) per call (up to 512 kB) cost as much as the AES itself.
        return enc.update(_OPE_ZEROS[:2 * count])

    def encrypt(self, plaintext: int) -> int:
        if not 0 < plaintext <= OPE_INPUT_MAX:
            raise ValueError(f"OPE plaintext must be in 1..{OPE_INPUT_MAX}, got {plaintext}")
        chunk, rest = divmod(plaintext, _OPE_SAMPLE)
        sums = self._sums
        if len(sums) <= chunk:
            start = len(sums) - 1
            ks = self._keystream(start * _OPE_SAMPLE, (chunk - start) * _OPE_SAMPLE)
            n = chunk - start
            # E((start + j + 1) * 1024) = E(start * 1024) + sum of samples 0..j + 1024 (j + 1)
            if _np is None:
                words = _u16le(ks)
                total = sums[-1]
                for j in range(n):
                    total += sum(words[j * _OPE_SAMPLE:(j + 1) * _OPE_SAMPLE]) + _OPE_SAMPLE
                    sums.append(total)
            else:
                words = _np.frombuffer(ks, dtype="<u2").reshape(n, _OPE_SAMPLE)
                # uint32 lanes sum ~2x faster than int64 ones; a sample sums to < 2^26
                cumulative = words.sum(axis=1, dtype=_np.uint32).astype(_np.int64)
                cumulative += _OPE_SAMPLE
                _np.cumsum(cumulative, out=cumulative)
                cumulative += sums[-1]
                sums.frombytes(cumulative.astype("=q", copy=False).tobytes())
        value = sums[chunk]
        if rest:
            value += _sum_u16le(self._keystream(chunk * _OPE_SAMPLE, rest)) + rest
        return value
