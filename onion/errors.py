"""Errors of the onion package.

Every error a user or a remote party can cause is a `ValueError` subclass with a message
that names the field, the bad value (never a secret) and, where there is one, the fix.
`python -m onion` prints these as one line and exits non-zero.
"""
from __future__ import annotations


class OnionError(ValueError):
    """Base class of every error the onion package raises on bad input."""


class UsageError(OnionError):
    """A command-line argument or option is wrong."""


# --- keys and addresses -------------------------------------------------------------------

class AddressError(OnionError):
    """An onion address is malformed (length, base32, checksum or version)."""


class KeyFileError(OnionError):
    """A key file or hidden-service directory is missing, truncated or of the wrong kind."""


class KeyFormatError(OnionError):
    """A key string (e.g. `ED25519-V3:<base64>`) or key bytes are malformed."""


# --- descriptors --------------------------------------------------------------------------

class DescriptorError(OnionError):
    """Base class: a v3 descriptor cannot be built, parsed, decrypted or trusted."""


class DescriptorFormatError(DescriptorError):
    """The descriptor text (outer, middle or inner layer) is malformed."""


class DescriptorTooLargeError(DescriptorError):
    """The descriptor (or one of its decrypted layers) exceeds the size tor accepts."""


class TooManyIntroPointsError(DescriptorError):
    """More introduction points than tor clients accept (20) in one descriptor."""


class CertificateError(DescriptorError):
    """An ed25519 certificate is malformed, of the wrong type or badly signed."""


class CertificateExpiredError(CertificateError):
    """The descriptor-signing-key certificate has expired."""


class BlindedKeyMismatchError(DescriptorError):
    """The descriptor was not signed by the blinded key of the expected address and period."""


class DescriptorSignatureError(DescriptorError):
    """The descriptor's outer signature does not verify with its descriptor-signing key."""


class DescriptorDecryptionError(DescriptorError):
    """A layer's MAC does not match: wrong address/period, or the data was altered."""


class RevisionCounterError(DescriptorError):
    """The revision counter is not greater than the last one seen (replay or stale copy)."""


# --- consensus / hash ring ----------------------------------------------------------------

class ConsensusError(OnionError):
    """The consensus lacks what the hash ring needs (times, HSDirs, ed25519 identities)."""

