"""v3 onion identity keys: generate, import/export tor's key files, onion addresses.

An identity key is held as tor holds it: the 64-byte *expanded* secret (scalar | prefix),
the form of `hs_ed25519_secret_key` and of `ADD_ONION ED25519-V3:`. Keys made from a
32-byte seed (PKCS#8 PEM, `generate()`) keep their seed so they can be written back as
PEM. Keys from tor (or vanity generators, whose scalars may be unreduced or unclamped)
work the same way in the same process: nothing global is patched.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from onion import crypto
from onion.errors import AddressError, KeyFileError, KeyFormatError

__all__ = [
    "IdentityKey", "BlindedKey", "AddressError", "KeyFileError", "KeyFormatError",
    "onion_address", "parse_address", "blind_public_key", "read_public_key_file",
    "SECRET_KEY_FILE", "PUBLIC_KEY_FILE", "HOSTNAME_FILE", "CONFIG_PREFIX",
]

ADDRESS_VERSION = 3
ADDRESS_LENGTH = 56
CHECKSUM_CONSTANT = b".onion checksum"
CONFIG_PREFIX = "ED25519-V3:"

SECRET_KEY_FILE = "hs_ed25519_secret_key"
PUBLIC_KEY_FILE = "hs_ed25519_public_key"
HOSTNAME_FILE = "hostname"
# tor's key file headers: 29 characters of tag, zero-padded to 32 bytes.
SECRET_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
PUBLIC_KEY_HEADER = b"== ed25519v1-public: type0 ==\x00\x00\x00"

_BASE32_ALPHABET = set("abcdefghijklmnopqrstuvwxyz234567")


# --- addresses ----------------------------------------------------------------------------

def _checksum(public_key: bytes, version: int = ADDRESS_VERSION) -> bytes:
    return crypto.sha3_256(CHECKSUM_CONSTANT, public_key, bytes([version]))[:2]


def onion_address(public_key: bytes) -> str:
    """base32(PUBKEY | CHECKSUM | VERSION), lower case, 56 characters, no `.onion`."""
    if len(public_key) != 32:
        raise KeyFormatError(f"ed25519 public key must be 32 bytes, got {len(public_key)}")
    raw = public_key + _checksum(public_key) + bytes([ADDRESS_VERSION])
    return base64.b32encode(raw).decode("ascii").lower()


def parse_address(address: str) -> bytes:
    """Validate a v3 onion address (with or without `.onion`); return its public key.

    Each defect has its own `AddressError`: length, base32 alphabet, version, checksum.
    """
    if not isinstance(address, str):
        raise AddressError(f"onion address must be a string, got {type(address).__name__}")
    text = address.strip().lower()
    if text.endswith(".onion"):
        text = text[: -len(".onion")]
    # Subdomains (`www.<addr>.onion`) name the same service: keep the last label.
    text = text.rsplit(".", 1)[-1]
    if len(text) != ADDRESS_LENGTH:
        hint = " (a v2 address? v2 onion services no longer exist)" if len(text) == 16 else ""
        raise AddressError(
            f"onion address {address!r} has {len(text)} characters, a v3 address has "
            f"{ADDRESS_LENGTH}{hint}")
    bad = sorted(set(text) - _BASE32_ALPHABET)
    if bad:
        raise AddressError(
            f"onion address {address!r} is not base32: bad characters {''.join(bad)!r} "
            "(allowed: a-z and 2-7)")
    raw = base64.b32decode(text.upper())
    public_key, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != ADDRESS_VERSION:
        raise AddressError(
            f"onion address {address!r} has version {version}, expected {ADDRESS_VERSION}")
    expected = _checksum(public_key, version)
    if checksum != expected:
        raise AddressError(
            f"onion address {address!r} has a wrong checksum ({checksum.hex()}, expected "
            f"{expected.hex()}): it was mistyped or truncated")
    return public_key


def blind_public_key(public_key: bytes, period_number: int, period_length: int) -> bytes:
    """The blinded public key of a service for a time period (what HSDirs index)."""
    return crypto.blind_public_key(public_key, period_number, period_length)


# --- identity keys --------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class BlindedKey:
    """A service's blinded key pair for one time period (signs descriptor-signing certs)."""

    public_key: bytes
    period_number: int
    period_length: int
    _expanded: bytes

    def sign(self, message: bytes) -> bytes:
        return crypto.sign_expanded(self._expanded, self.public_key, message)

    @property
    def ope_key(self) -> bytes:
        """tor's OPE key: SHA3-256("rev-counter-generation" NUL | blinded secret key)."""
        # sizeof() of the C string in hs_service.c: the prefix includes its NUL byte.
        return crypto.sha3_256(b"rev-counter-generation\x00", self._expanded)

    def __repr__(self) -> str:
        return (f"BlindedKey(public_key={self.public_key.hex()}, "
                f"period_number={self.period_number}, period_length={self.period_length})")


class IdentityKey:
    """A v3 onion service identity key (the master key of a frontend)."""

    __slots__ = ("_expanded", "_seed", "_public_key", "_blind_cache")

    def __init__(self, expanded: bytes, *, seed: bytes | None = None) -> None:
        if len(expanded) != 64:
            raise KeyFormatError(f"expanded ed25519 secret key must be 64 bytes, got {len(expanded)}")
        self._expanded = bytes(expanded)
        self._seed = seed
        self._public_key = crypto.public_from_expanded(self._expanded)
        self._blind_cache: dict[tuple[int, int], BlindedKey] = {}

    # constructors -------------------------------------------------------------------
    @classmethod
    def generate(cls) -> "IdentityKey":
        return cls.from_seed(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> "IdentityKey":
        return cls(crypto.expand_seed(seed), seed=bytes(seed))

    @classmethod
    def from_expanded(cls, expanded: bytes) -> "IdentityKey":
        return cls(expanded)

    @classmethod
    def from_config_string(cls, text: str) -> "IdentityKey":
        """Parse `ED25519-V3:<base64 of the 64-byte expanded key>` (tor's ADD_ONION form)."""
        if not isinstance(text, str) or not text.startswith(CONFIG_PREFIX):
            # never quote the value: it may be key material in another form
            shown = f"{len(text)} characters" if isinstance(text, str) else type(text).__name__
            raise KeyFormatError(
                f"master key must start with {CONFIG_PREFIX!r} (got {shown} without it): "
                "produce it with `python -m onion import DIR` (after `python -m onion keygen --out DIR`)")
        body = text[len(CONFIG_PREFIX):].strip()
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError(f"master key after {CONFIG_PREFIX!r} is not valid base64") from None
        if len(raw) != 64:
            raise KeyFormatError(
                f"master key after {CONFIG_PREFIX!r} decodes to {len(raw)} bytes, expected 64 "
                "(tor's expanded ed25519 secret key)")
        return cls(raw)

    @classmethod
    def from_tor_secret_key(cls, data: bytes, *, source: str = "key data") -> "IdentityKey":
        """Parse the bytes of tor's `hs_ed25519_secret_key` (32-byte header + 64-byte key)."""
        if len(data) < 32 or not data.startswith(b"== ed25519v1-"):
            raise KeyFileError(
                f"{source} is not a tor ed25519 secret key file (expected the header "
                f"{SECRET_KEY_HEADER[:29].decode()!r})")
        if data[:32] != SECRET_KEY_HEADER:
            found = data[:29].decode("ascii", "replace")
            raise KeyFileError(
                f"{source} has header {found!r}, expected {SECRET_KEY_HEADER[:29].decode()!r}"
                " (is it the public key file?)")
        if len(data) != 96:
            raise KeyFileError(
                f"{source} is {len(data)} bytes, a tor ed25519 secret key file is 96 "
                "(truncated or corrupted)")
        return cls(data[32:])

    @classmethod
    def from_tor_secret_file(cls, path: str | os.PathLike) -> "IdentityKey":
        return cls.from_tor_secret_key(_read_bytes(path), source=str(path))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "PEM data") -> "IdentityKey":
        """Parse an unencrypted PKCS#8 PEM ed25519 private key."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except UnsupportedAlgorithm as exc:
            # e.g. an EC key on a curve OpenSSL does not build (sect163k1, brainpool...):
            # not a ValueError, so it escaped every caller before
            raise KeyFileError(f"{source} holds a key of a kind this system cannot load ({exc}); "
                               "an onion identity must be an ed25519 key") from None
        except TypeError:
            raise KeyFileError(f"{source} is an encrypted PEM key; decrypt it first "
                               "(openssl pkey -in FILE -out PLAIN.pem)") from None
        except ValueError:
            raise KeyFileError(f"{source} is not a valid PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} holds a {type(key).__name__.removesuffix('PrivateKey') or 'non'}"
                               " key, an onion identity must be ed25519")
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return cls.from_seed(seed)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "IdentityKey":
        """Load a key from a hidden-service directory, a tor secret key file or a PEM file."""
        p = Path(path)
        if p.is_dir():
            return cls.from_hs_dir(p)
        data = _read_bytes(p)
        if data.lstrip().startswith(b"-----BEGIN"):
            return cls.from_pem(data, source=str(p))
        return cls.from_tor_secret_key(data, source=str(p))

    @classmethod
    def from_hs_dir(cls, path: str | os.PathLike) -> "IdentityKey":
        """Import a tor hidden-service directory; check its public key and hostname agree."""
        d = Path(path)
        if not d.is_dir():
            raise KeyFileError(f"{d} is not a directory")
        secret = d / SECRET_KEY_FILE
        if not secret.exists():
            raise KeyFileError(f"{d} has no {SECRET_KEY_FILE}: not a v3 hidden-service directory")
        key = cls.from_tor_secret_file(secret)
        public = d / PUBLIC_KEY_FILE
        if public.exists():
            if read_public_key_file(public) != key.public_key:
                raise KeyFileError(f"{public} does not match {secret}: the directory mixes two keys")
        hostname = d / HOSTNAME_FILE
        if hostname.exists():
            text = _read_bytes(hostname).decode("ascii", "replace").strip()
            if text != key.hostname:
                raise KeyFileError(f"{hostname} says {text!r} but {secret} is the key of "
                                   f"{key.hostname}: the directory mixes two keys")
        return key

    # properties ---------------------------------------------------------------------
    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def address(self) -> str:
        return onion_address(self._public_key)

    @property
    def hostname(self) -> str:
        return self.address + ".onion"

    @property
    def has_seed(self) -> bool:
        return self._seed is not None

    # serialisation ------------------------------------------------------------------
    def to_config_string(self) -> str:
        return CONFIG_PREFIX + base64.b64encode(self._expanded).decode("ascii")

    def to_tor_secret_key(self) -> bytes:
        return SECRET_KEY_HEADER + self._expanded

    def to_tor_public_key(self) -> bytes:
        return PUBLIC_KEY_HEADER + self._public_key

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM. Only keys with a seed (PKCS#8 stores the seed)."""
        if self._seed is None:
            raise KeyFormatError(
                f"key of {self.hostname} came from tor's expanded form and has no seed; "
                "PKCS#8 PEM cannot hold it (use tor's hs_ed25519_secret_key instead)")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        key = Ed25519PrivateKey.from_private_bytes(self._seed)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def write_hs_dir(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a tor hidden-service directory (mode 0700; secret 0600, others 0600).

        Refuses to replace an existing secret key of a different identity unless
        `overwrite`: losing a key loses its onion address for good.
        """
        d = Path(path)
        secret = d / SECRET_KEY_FILE
        if secret.exists() and not overwrite:
            try:
                same = IdentityKey.from_tor_secret_file(secret).public_key == self.public_key
            except KeyFileError:
                same = False
            if not same:
                raise KeyFileError(f"{secret} already exists and holds another key; refusing to "
                                   "overwrite it (move it away first)")
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # tor refuses group/world-accessible hidden-service dirs
        _write_private(secret, self.to_tor_secret_key())
        _write_private(d / PUBLIC_KEY_FILE, self.to_tor_public_key())
        _write_private(d / HOSTNAME_FILE, (self.hostname + "\n").encode("ascii"))
        return d

    def write_pem(self, path: str | os.PathLike) -> None:
        _write_private(Path(path), self.to_pem())

    # crypto ---------------------------------------------------------------------------
    def sign(self, message: bytes) -> bytes:
        return crypto.sign_expanded(self._expanded, self._public_key, message)

    def blind(self, period_number: int, period_length: int) -> BlindedKey:
        """The blinded key pair for time period `period_number` (`period_length` minutes)."""
        key = (period_number, period_length)
        cached = self._blind_cache.get(key)
        if cached is None:
            secret = crypto.blind_expanded_secret(self._expanded, self._public_key,
                                                  period_number, period_length)
            # h*A == (h*a mod l)*B: a fixed-base multiplication is ~6x cheaper than
            # blinding the public point (libsodium also checks that point's subgroup).
            public = crypto.public_from_scalar(secret[:32])  # already reduced mod l
            cached = BlindedKey(public, period_number, period_length, secret)
            if len(self._blind_cache) > 8:
                self._blind_cache.clear()
            self._blind_cache[key] = cached
        return cached

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityKey) and other._public_key == self._public_key

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __repr__(self) -> str:  # never the secret
        return f"IdentityKey({self.hostname})"


def read_public_key_file(path: str | os.PathLike) -> bytes:
    """The 32-byte public key of tor's `hs_ed25519_public_key`."""
    data = _read_bytes(path)
    if data[:32] != PUBLIC_KEY_HEADER:
        # quote only a tor-style header, never arbitrary (possibly secret) bytes
        found = repr(data[:29].decode("ascii", "replace")) if data.startswith(b"== ") else "no tor header"
        raise KeyFileError(f"{path} has {found}, expected "
                           f"{PUBLIC_KEY_HEADER[:29].decode()!r}")
    if len(data) != 64:
        raise KeyFileError(f"{path} is {len(data)} bytes, a tor ed25519 public key file is 64 "
                           "(truncated or corrupted)")
    return data[32:]


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory, expected a key file") from None
    except PermissionError:
        raise KeyFileError(f"{path} is not readable by this user") from None


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the start (no world-readable window)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
